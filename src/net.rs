//! The client's address, as the server learns it and the layers read it.
//!
//! `server` inserts these into every request's extensions when the
//! connection is accepted; `proxy` (the forwarding headers) and `audit` (the
//! record's client) read them. They live in the foundation so that neither
//! layer imports the server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;

/// The peer address of the connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The peer's IP as text, rendered once when the connection is accepted, so
/// that no request formats an address: the audit record's `client_ip` and
/// the node the proxy appends to `X-Forwarded-For` and `Forwarded`.
#[derive(Debug, Clone)]
pub struct ClientAddrText {
    /// The IP as the peer address has it (the audit record's `client_ip`).
    pub ip: Arc<str>,
    /// The canonical IP (an IPv4-mapped IPv6 address as IPv4), for
    /// `X-Forwarded-For`.
    pub forwarded_for: HeaderValue,
    /// The RFC 7239 node for `Forwarded`: `for=192.0.2.7;proto=http`, or
    /// `for="[2001:db8::7]";proto=http` (§6: bracketed and quoted).
    pub forwarded: HeaderValue,
}

impl ClientAddrText {
    /// The texts of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        let canonical = ip.to_canonical();
        let node = match canonical {
            IpAddr::V4(v4) => format!("for={v4};proto=http"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
        };
        // An IP address and the node made of it are visible ASCII.
        let value = |text: String| {
            HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .expect("an IP address is a valid header value")
        };
        Self {
            ip: ip.to_string().into(),
            forwarded_for: value(canonical.to_string()),
            forwarded: value(node),
        }
    }
}

/// Marks a request whose peer is in `server.trusted_proxies`: the
/// forwarding headers it sent are believed and extended, not replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromTrustedProxy;
