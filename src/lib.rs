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
//! Modules depend one way, in three tiers. `tests/module_graph.rs` reads
//! `src/` and fails on any `use` that points up a tier or across the layers,
//! and on any cycle; `scripts/module-graph.sh` prints the graph.
//!
//! **Foundation**: imports nothing of ours above it.
//!
//! - [`body`]: the one body type, and the body facts layers share (a
//!   buffered body, a client body that failed).
//! - [`error`]: [`GatewayError`], the one refusal type, its keys and JSON
//!   response, and [`error::RescueLayer`], which makes a stack infallible at
//!   the edge. Each layer converts its own errors into it (`From` impls in
//!   the layer), so it knows no layer.
//! - [`notes`]: the request facts layers share through the extensions (the
//!   [`notes::Principal`], [`notes::RouteMatch`], [`notes::PolicyDecision`],
//!   the parsed body), and the per-request notes audit, telemetry and
//!   metrics read.
//! - [`trace`]: the request's OpenTelemetry trace, for each layer's child span.
//! - [`schema`]: a JSON Schema compiled once, shared by routing and validation.
//! - [`client`]: the outbound connector every client shares (upstream, JWKS,
//!   audit shipping, trace export), its TLS roots, and error chains.
//! - [`secret`]: where a secret is read from (an environment variable or a
//!   file), and reading it.
//! - [`problem`]: [`problem::ConfigProblem`], how every part reports a
//!   problem with its configuration.
//! - [`net`]: the client's address ([`net::ClientAddr`]) and whether it is a
//!   trusted proxy, as the server records them on each request.
//! - [`future`]: the early-exit response future.
//!
//! **Layers**: each a tower `Layer` + `Service` (or the service the stack
//! ends in), importing only the foundation, never another layer. Each owns
//! its `[section]` config struct. What one needs from another it reads from
//! the request extensions (see docs/library.md for which).
//!
//! - [`auth`]: verifying callers' internal JWTs against the IdP's JWKS.
//! - [`routes`]: the operations the gateway knows; ambiguous paths, unknown
//!   routes and wrong methods are refused.
//! - [`policy`]: which teams may perform which operation on which
//!   organization; deny by default.
//! - [`limit`]: the head limits and `server.max_body_bytes`, enforced
//!   without buffering.
//! - [`validate`]: strict JSON parsing and JSON Schema validation of write
//!   bodies on routes that name a schema.
//! - [`audit`]: one redacted, durable, chained record per request.
//! - [`credentials`]: loading (and rotating) the partner key, and
//!   [`credentials::CredentialSwapLayer`], which swaps it in.
//! - [`version`]: the `X-Polytomic-Version` header.
//! - [`proxy`]: the pooled upstream client and the forwarding service.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`, and refusing work
//!   while draining.
//! - [`telemetry`]: logs, traces (OpenTelemetry, OTLP export) and
//!   [`telemetry::TelemetryLayer`], the server span of every request.
//! - [`metrics`]: the Prometheus registry and [`metrics::MetricsLayer`].
//! - [`connection`]: how long a connection may wait for a request head or
//!   sit idle.
//!
//! **Assembly**: composes the layers.
//!
//! - [`config`]: the configuration file format (a public contract), composed
//!   from each layer's config struct, and its loading from TOML and
//!   `GATEWAY__*` environment variables.
//! - [`catalog`]: the generated catalog of the Polytomic API, as routes.
//! - [`reload`]: what a config reload replaces, and config versions.
//! - [`stack`]: the one function that assembles the layers, in order.
//! - [`server`]: the listener, connection limit and graceful shutdown.
//! - [`policy_cases`]: `policy test` and `policy explain`, run through the
//!   same routing and policy as `serve`.
//! - [`fake`]: an in-memory fake Polytomic API for the demo and the tests.
//! - [`demo`]: `polytomic-gateway demo`.
//!
//! `examples/embed.rs` builds a small stack from auth, routes, policy, the
//! credential swap and the proxy alone.

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
