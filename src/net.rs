//! The client's address, as the server learns it and the layers read it.
//!
//! `server` inserts these into every request's extensions when the
//! connection is accepted; `proxy` (the forwarding headers) and `audit` (the
//! record's client) read them. They live in the foundation so that neither
//! layer imports the server.

use std::net::SocketAddr;

/// The peer address of the connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Marks a request whose peer is in `server.trusted_proxies`: the
/// forwarding headers it sent are believed and extended, not replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromTrustedProxy;
