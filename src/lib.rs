//! An authenticating reverse proxy for the Polytomic REST API, built as a
//! tower service stack and meant to run as a sidecar beside internal tools.
//!
//! For every request the gateway swaps the caller's credentials for the
//! Polytomic partner key, sets `X-Polytomic-Version`, and forwards the request
//! with its body streaming. Every refusal is a JSON error in Polytomic's own
//! shape (`{"status","key","message","metadata"}`), so the official SDKs parse
//! it like an API error. Anything unknown or unparsable is refused, never
//! forwarded.
//!
//! # Layout
//!
//! Each concern is a tower `Layer` + `Service` in its own module, usable on
//! its own in another tower or hyper stack (see `examples/embed.rs`):
//!
//! - [`config`]: the configuration file format (a public contract) and its
//!   loading from TOML and `GATEWAY__*` environment variables.
//! - [`problem`]: [`problem::ConfigProblem`], how every layer reports a
//!   problem with its configuration.
//! - [`secret`]: where a secret is read from (an environment variable or a
//!   file), and reading it, for the credentials, auth and audit.
//! - [`error`]: [`GatewayError`], the one refusal type, its JSON response, and
//!   [`error::RescueLayer`], which makes the stack infallible at the edge.
//! - [`health`]: `/healthz` and `/readyz`, and refusing work while draining.
//! - [`auth`]: verifying callers' internal JWTs against the IdP's JWKS, and
//!   the [`auth::Principal`] later layers read.
//! - [`routes`]: the operations the gateway knows; ambiguous paths, unknown
//!   routes and wrong methods are refused.
//! - [`policy`]: which teams may perform which operation on which
//!   organization; deny by default.
//! - [`policy_cases`]: `policy test`, cases files that say what the policy
//!   must decide, run through the same routing and policy as `serve`.
//! - [`limit`]: the head limits (`server.max_uri_bytes`,
//!   `server.max_header_bytes`, `server.max_headers`) and
//!   `server.max_body_bytes`, enforced without buffering.
//! - [`validate`]: strict JSON parsing and JSON Schema validation of write
//!   bodies on routes that name a schema.
//! - [`credentials`]: loading (and rotating) the partner key, and
//!   [`credentials::CredentialSwapLayer`], which swaps it in.
//! - [`version`]: the `X-Polytomic-Version` header.
//! - [`proxy`]: the pooled upstream client and the forwarding service.
//! - [`client`]: the outbound connector every client shares (upstream, JWKS,
//!   audit shipping, trace export), its TLS roots, and error chains.
//! - [`stack`]: the one function that assembles the layers, in order.
//! - [`reload`]: what a config reload replaces, and config versions.
//! - [`server`]: the listener, connection limit and graceful shutdown.
//! - [`connection`]: how long a connection may wait for a request head or
//!   sit idle.
//! - [`audit`]: one redacted, durable record per request.
//! - [`notes`]: what the layers learn about a request, for audit and telemetry.
//! - [`net`]: the client's address ([`net::ClientAddr`]) and whether it is a
//!   trusted proxy, as the server records them on each request.
//! - [`fake`]: an in-memory fake Polytomic API for the demo and the tests.
//! - [`demo`]: `polytomic-gateway demo`.
//! - [`telemetry`]: logs, traces (OpenTelemetry, OTLP export) and
//!   [`telemetry::TelemetryLayer`], the server span of every request.
//! - [`metrics`]: the Prometheus metrics served on `/metrics`.
//! - [`body`], [`future`]: the shared body type and early-exit future.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod client;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod demo;
pub mod error;
pub mod fake;
pub mod future;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod net;
pub mod notes;
pub mod policy;
pub mod policy_cases;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod schema;
pub mod secret;
pub mod server;
pub mod stack;
pub mod telemetry;
pub mod trace;
pub mod validate;
pub mod version;

pub use error::GatewayError;
pub use server::Gateway;
