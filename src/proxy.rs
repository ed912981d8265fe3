//! Forwarding to the Polytomic API: the innermost service of the stack.
//!
//! [`Upstream`] is built once from `[upstream]`: the parsed base URL and one
//! pooled hyper-util client, HTTPS through rustls (webpki roots plus
//! `ca_file`), HTTP/2 when ALPN offers it. [`Proxy`] forwards each request:
//!
//! - the path and query go upstream byte for byte, under the base path;
//! - `Host` is the upstream's (the client sets it from the URI);
//! - hop-by-hop headers, and those named in `Connection`, are removed in both
//!   directions; `X-Forwarded-For` and `X-Forwarded-Proto` are set;
//! - bodies stream in both directions; nothing is buffered here;
//! - no response headers within `upstream.timeout` is a 504, an unreachable
//!   upstream a 502 (see [`GatewayError`]). Upstream 4xx/5xx pass unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tower::Service;

use crate::body::{boxed, BoxError, GatewayBody};
use crate::client::{
    connector, error_chain, is_loopback_host, root_store, tls_config, JwksConnector,
};
use crate::error::GatewayError;
use crate::net::{ClientAddr, ClientAddrText, FromTrustedProxy};
use crate::notes::{ClientRequestId, RequestNotes};
use crate::problem::ConfigProblem;
use crate::trace::RequestTrace;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[upstream]`: the Polytomic API.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Scheme, host, optional port and optional base path.
    pub url: String,
    /// A connection not established within this is a 502.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Response headers not received within this are a 504.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra PEM trust roots for HTTPS upstreams, added to the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// How many times a request that never reached the upstream (the
    /// connection failed) is sent again; only idempotent methods and
    /// requests with an `Idempotency-Key`. 0: never.
    pub retries: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: "https://app.polytomic.com".to_owned(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            ca_file: None,
            retries: 0,
        }
    }
}

/// The W3C trace-state header.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (compared, not
    // hashed) settles that without a removal per hop-by-hop name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

type HttpsClient = Client<JwksConnector, GatewayBody>;

/// The upstream API: where requests go and the pooled client that sends them.
/// A clone shares the pool ([`Upstream::with_own_pool`] makes a new one).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    scheme: Scheme,
    /// Host and optional port; the client derives `Host` from it.
    authority: Authority,
    /// The URL's path without a trailing slash, prefixed to every request path.
    base_path: String,
    /// The pooled client, shared by every request this value serves.
    client: HttpsClient,
    /// The TLS settings (trust roots), shared with other clients such as JWKS.
    tls: Arc<rustls::ClientConfig>,
    /// `upstream.connect_timeout`, for other clients built on the same TLS.
    connect_timeout: Duration,
    /// No response headers within this is a 504 (all attempts together).
    timeout: Duration,
    /// `upstream.retries`: resends after a failed connection.
    retries: u32,
}

impl Upstream {
    /// Validates `[upstream]` and builds the client (no connection is made).
    pub fn from_config(config: &UpstreamConfig) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let target = parse_url(&config.url).map_err(|m| ConfigProblem::new("upstream.url", m));
        let roots = root_store(config.ca_file.as_deref())
            .map_err(|m| ConfigProblem::new("upstream.ca_file", m));
        for (key, value) in [
            ("upstream.connect_timeout", config.connect_timeout),
            ("upstream.timeout", config.timeout),
        ] {
            if value.is_zero() {
                problems.push(ConfigProblem::new(key, "must be greater than zero"));
            }
        }
        let (target, roots) = match (target, roots) {
            (Ok(target), Ok(roots)) if problems.is_empty() => (target, roots),
            (target, roots) => {
                problems.extend(target.err());
                problems.extend(roots.err());
                return Err(problems);
            }
        };
        let (scheme, authority, base_path) = target;
        let tls = tls_config(roots);
        let client = pooled_client(tls.clone(), config.connect_timeout);
        Ok(Self {
            scheme,
            authority,
            base_path,
            client,
            tls,
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            retries: config.retries,
        })
    }

    /// The same upstream with a pool of its own.
    ///
    /// A pooled connection is driven by the runtime that opened it, so each
    /// worker runtime of the server gets its own pool: a request then never
    /// wakes another thread to use a connection.
    pub fn with_own_pool(&self) -> Self {
        Self {
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            base_path: self.base_path.clone(),
            client: pooled_client(self.tls.clone(), self.connect_timeout),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            retries: self.retries,
        }
    }

    /// The upstream's port, explicit or implied by the scheme.
    fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            })
    }

    /// A new connector with the upstream's trust roots and connect timeout,
    /// for other outbound clients (the JWKS fetcher).
    pub fn https_connector(&self) -> JwksConnector {
        connector(self.tls.clone(), self.connect_timeout)
    }

    /// The URI a request for `path_and_query` is sent to.
    fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = path_and_query.map_or("/", PathAndQuery::as_str);
        let full = if self.base_path.is_empty() {
            PathAndQuery::try_from(pq)?
        } else {
            PathAndQuery::try_from(format!("{}{pq}", self.base_path))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(full)
            .build()
    }
}

/// A pooled client over [`connector`].
fn pooled_client(tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector(tls, connect_timeout))
}

/// Parses and checks `upstream.url` into scheme, authority and base path.
fn parse_url(raw: &str) -> Result<(Scheme, Authority, String), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let scheme = match url.scheme() {
        "https" => Scheme::HTTPS,
        "http" => {
            if !is_loopback_host(&url) {
                tracing::warn!(url = raw, "upstream.url is plain http to a non-loopback host: the partner key travels unencrypted");
            }
            Scheme::HTTP
        }
        other => {
            return Err(format!(
                "scheme {other:?} is not supported; use https or http"
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use [credentials.*]".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{raw:?} has no host"))?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let authority = Authority::try_from(authority).map_err(|e| format!("bad host: {e}"))?;
    let base_path = url.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority, base_path))
}

/// Forwards requests to an [`Upstream`].
#[derive(Debug, Clone)]
pub struct Proxy {
    upstream: Arc<Upstream>,
}

impl Proxy {
    /// A service forwarding to `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream: Arc::new(upstream),
        }
    }
}

/// The error a failed upstream exchange maps to.
fn classify(error: hyper_util::client::legacy::Error) -> GatewayError {
    // Our own body errors (e.g. the body limit) travel through the client.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(err) = cause {
        if let Some(GatewayError::PayloadTooLarge { limit }) = err.downcast_ref() {
            return GatewayError::PayloadTooLarge { limit: *limit };
        }
        if err.is::<crate::body::ClientBodyError>() {
            tracing::warn!(error = %error_chain(&error), "the request body failed while forwarding");
            return GatewayError::IncompleteBody;
        }
        cause = err.source();
    }
    let chain = error_chain(&error);
    if error.is_connect() {
        tracing::warn!(error = %chain, "upstream unreachable");
        GatewayError::UpstreamUnreachable(Box::new(error))
    } else {
        tracing::warn!(error = %chain, "upstream exchange failed");
        GatewayError::UpstreamFailed(Box::new(error))
    }
}

impl Service<Request<GatewayBody>> for Proxy {
    type Response = Response<GatewayBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client has no readiness of its own.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        let upstream = self.upstream.clone();
        let (mut parts, body) = req.into_parts();
        let uri = upstream.uri_for(parts.uri.path_and_query());
        let mut span =
            RequestTrace::child_of(&parts.extensions, "upstream", SpanKind::Client, || {
                vec![
                    KeyValue::new(
                        "http.request.method",
                        crate::trace::method_label(&parts.method),
                    ),
                    KeyValue::new("server.address", upstream.authority.host().to_owned()),
                    KeyValue::new("server.port", i64::from(upstream.port())),
                ]
            });
        // Polytomic (or any upstream) sees our client span as the parent. The
        // caller's own `traceparent` was continued by the server span, so
        // replacing it keeps the trace whole. Without a tracer provider the
        // context is empty, nothing is injected, and the caller's header
        // passes through.
        if let Some(span) = &span {
            inject_trace_context(&span.context(), &mut parts.headers);
        }
        // The propagator writes `tracestate` even when the state is empty,
        // and a caller may send an empty one: an empty header means nothing
        // and is not sent.
        if parts
            .headers
            .get_all(TRACESTATE)
            .iter()
            .all(|v| v.as_bytes().trim_ascii().is_empty())
        {
            parts.headers.remove(TRACESTATE);
        }
        Box::pin(async move {
            parts.uri = uri.map_err(|e| {
                tracing::error!(error = %e, "cannot build the upstream URI");
                GatewayError::Internal
            })?;
            let headers = &mut parts.headers;
            // The gateway's stack already stripped these first thing; this
            // keeps `Proxy` safe when a library user runs it on its own.
            remove_hop_by_hop(headers);
            headers.remove(header::HOST);
            let peer = match parts.extensions.get::<ClientAddrText>() {
                Some(text) => Some(text.clone()),
                None => parts
                    .extensions
                    .get::<ClientAddr>()
                    .map(|a| ClientAddrText::of(a.0.ip())),
            };
            set_forwarding_headers(
                headers,
                peer.as_ref(),
                parts.extensions.get::<FromTrustedProxy>().is_some(),
            );
            // The client's own request id, if it sent a sane one, is passed
            // on; otherwise the upstream sees the gateway's.
            if let Some(theirs) = parts.extensions.get::<ClientRequestId>() {
                headers.insert(X_REQUEST_ID, theirs.header_value().clone());
            }
            // HTTP/2 or HTTP/1.1 upstream is chosen by ALPN, not by the client.
            parts.version = http::Version::HTTP_11;
            // The notes, not a copy of every extension: the client does not
            // need them back.
            let notes = parts.extensions.get::<RequestNotes>().cloned();
            // A copy to send again if the connection fails, when that is allowed and
            // the body can be replayed.
            let replay = (upstream.retries > 0)
                .then(|| Replay::of(&parts, &body))
                .flatten();
            let mut req = Request::from_parts(parts, body);
            let deadline = tokio::time::Instant::now() + upstream.timeout;
            let started = std::time::Instant::now();
            let mut attempt = 0;
            let response = loop {
                let sent = upstream.client.request(req);
                match tokio::time::timeout_at(deadline, sent).await {
                    Ok(Ok(response)) => break response,
                    Ok(Err(error)) if error.is_connect() && attempt < upstream.retries => {
                        let Some(copy) = replay.as_ref() else {
                            return Err(classify(error).into());
                        };
                        attempt += 1;
                        crate::trace::set(&mut span, || {
                            KeyValue::new("http.request.resend_count", i64::from(attempt))
                        });
                        tracing::warn!(
                            attempt,
                            error = %error_chain(&error),
                            "upstream connection failed; sending the request again"
                        );
                        // 50 ms, 100 ms, 200 ms, ...: all within `upstream.timeout`.
                        let backoff = RETRY_BACKOFF * 2u32.saturating_pow(attempt - 1);
                        if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff))
                            .await
                            .is_err()
                        {
                            return Err(GatewayError::UpstreamTimeout(upstream.timeout).into());
                        }
                        req = copy.request();
                    }
                    Ok(Err(error)) => return Err(classify(error).into()),
                    Err(_) => {
                        tracing::warn!(timeout = ?upstream.timeout, "upstream timed out");
                        return Err(GatewayError::UpstreamTimeout(upstream.timeout).into());
                    }
                }
            };
            let (mut parts, body) = response.into_parts();
            crate::trace::set(&mut span, || {
                KeyValue::new(
                    "http.response.status_code",
                    i64::from(parts.status.as_u16()),
                )
            });
            if let Some(notes) = &notes {
                notes.update(|n| {
                    n.upstream_status = Some(parts.status.as_u16());
                    n.upstream_duration = Some(started.elapsed());
                });
            }
            remove_hop_by_hop(&mut parts.headers);
            // The caller's request id is returned on the response; the
            // upstream's own is kept under another name for support cases.
            if let Some(theirs) = parts.headers.remove(X_REQUEST_ID) {
                parts.headers.insert(X_UPSTREAM_REQUEST_ID, theirs);
            }
            Ok(Response::from_parts(parts, boxed(body)))
        })
    }
}

/// Writes `context`'s span as W3C trace context, as opentelemetry-sdk's
/// `TraceContextPropagator` does (`traceparent`, and `tracestate`, which the
/// caller drops when empty), into one stack buffer instead of three
/// `format!`ed strings a request. A test checks the two agree.
fn inject_trace_context(context: &opentelemetry::Context, headers: &mut HeaderMap) {
    use opentelemetry::trace::{TraceContextExt, TraceFlags};
    let span = context.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // "00-" trace id (32) "-" span id (16) "-" flags (2).
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let flags = (sc.trace_flags() & TraceFlags::SAMPLED).to_u8();
    let fields = [
        (3, &sc.trace_id().to_bytes()[..]),
        (36, &sc.span_id().to_bytes()[..]),
        (53, &[flags][..]),
    ];
    for (at, bytes) in fields {
        for (i, b) in bytes.iter().enumerate() {
            value[at + 2 * i] = DIGITS[usize::from(b >> 4)];
            value[at + 2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
    }
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_bytes(&value).expect("hex digits and dashes"),
    );
    let state = sc.trace_state().header();
    if state.is_empty() {
        // The propagator would write it empty, and empty is not sent.
        headers.remove(TRACESTATE);
    } else if let Ok(state) = HeaderValue::from_str(&state) {
        headers.insert(TRACESTATE, state);
    }
}

/// The first wait before a resend; it doubles with each attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// What it takes to send a request again: its head and its whole body.
struct Replay {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
    extensions: http::Extensions,
    body: bytes::Bytes,
}

impl Replay {
    /// A copy of the request, if it may be sent again: an idempotent method
    /// or an `Idempotency-Key` (Polytomic deduplicates on it), and a body
    /// that is empty or was read whole. A streamed body cannot be replayed.
    fn of(parts: &http::request::Parts, body: &GatewayBody) -> Option<Self> {
        use http::Method;
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        ) || parts.headers.contains_key("idempotency-key");
        if !idempotent {
            return None;
        }
        let body = match parts.extensions.get::<crate::body::BufferedBody>() {
            Some(buffered) => buffered.0.clone(),
            None if http_body::Body::is_end_stream(body) => bytes::Bytes::new(),
            None => return None,
        };
        Some(Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
            body,
        })
    }

    /// The request, again.
    fn request(&self) -> Request<GatewayBody> {
        let mut req = Request::new(crate::body::full(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }
}

/// Says who the gateway's peer is, in `X-Forwarded-For` and `Forwarded`
/// (RFC 7239), and by what protocol it came, in `X-Forwarded-Proto`.
///
/// Only a peer in `server.trusted_proxies` is believed: its chains are
/// extended with its own address, and its `X-Forwarded-Proto`, `X-Real-IP`
/// and `X-Forwarded-Host` pass. Any other peer's claims are replaced or
/// dropped, so a client cannot pass for another address upstream.
fn set_forwarding_headers(headers: &mut HeaderMap, peer: Option<&ClientAddrText>, trusted: bool) {
    if !trusted {
        for name in [
            X_FORWARDED_FOR,
            FORWARDED,
            X_FORWARDED_PROTO,
            X_REAL_IP,
            X_FORWARDED_HOST,
        ] {
            headers.remove(name);
        }
    }
    if let Some(peer) = peer {
        append_to_list(headers, X_FORWARDED_FOR, &peer.forwarded_for);
        append_to_list(headers, FORWARDED, &peer.forwarded);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// Appends `item` to the comma-separated list in `name`, joining the lines
/// it was sent on into one. Without a list yet, `item` is the value as is
/// (the usual case: no formatting, no copy).
fn append_to_list(headers: &mut HeaderMap, name: HeaderName, item: &HeaderValue) {
    if !headers.contains_key(&name) {
        headers.insert(name, item.clone());
        return;
    }
    let mut list = String::new();
    for value in headers.get_all(&name) {
        if let Ok(v) = value.to_str() {
            list.push_str(v);
            list.push_str(", ");
        }
    }
    list.push_str(item.to_str().unwrap_or_default());
    if let Ok(value) = HeaderValue::from_str(&list) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_context_is_written_as_the_sdk_propagator_writes_it() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry_http::HeaderInjector;
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        let state = TraceState::from_key_value([("vendor", "v1"), ("other", "x")]).unwrap();
        let contexts = [
            SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                true,
                state.clone(),
            ),
            SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::from_hex("b7ad6b7169203331").unwrap(),
                TraceFlags::default(),
                false,
                TraceState::default(),
            ),
            SpanContext::new(
                TraceId::from_hex("ffffffffffffffffffffffffffffffff").unwrap(),
                SpanId::from_hex("0000000000000001").unwrap(),
                TraceFlags::new(0xff),
                true,
                state,
            ),
            SpanContext::empty_context(),
        ];
        for sc in contexts {
            let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
            let mut caller = HeaderMap::new();
            caller.insert(TRACEPARENT, HeaderValue::from_static("00-caller-caller-01"));
            caller.insert(TRACESTATE, HeaderValue::from_static("caller=1"));
            let mut ours = caller.clone();
            inject_trace_context(&cx, &mut ours);
            let mut theirs = caller;
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut theirs));
            if theirs.get(TRACESTATE).is_some_and(|v| v.is_empty()) {
                theirs.remove(TRACESTATE);
            }
            assert_eq!(ours, theirs, "{sc:?}");
        }
    }

    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive, X-Custom-Hop".parse().unwrap());
        headers.insert("x-custom-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        headers.insert("idempotency-key", "k1".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["idempotency-key"]);
    }

    #[test]
    fn urls_are_checked() {
        let (scheme, authority, base) = parse_url("https://app.polytomic.com").unwrap();
        assert_eq!(
            (scheme.as_str(), authority.as_str(), base.as_str()),
            ("https", "app.polytomic.com", "")
        );
        let (_, authority, base) = parse_url("http://127.0.0.1:9100/prefix/").unwrap();
        assert_eq!(
            (authority.as_str(), base.as_str()),
            ("127.0.0.1:9100", "/prefix")
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("https://user:pw@host").is_err());
        assert!(parse_url("https://host/?q=1").is_err());
    }

    #[test]
    fn paths_keep_their_bytes_under_the_base_path() {
        let upstream = Upstream::from_config(&UpstreamConfig {
            url: "http://127.0.0.1:1/base".into(),
            ..UpstreamConfig::default()
        })
        .unwrap();
        let pq = PathAndQuery::from_static("/api/organizations?a=%2F&b=1&a=2");
        let uri = upstream.uri_for(Some(&pq)).unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:1/base/api/organizations?a=%2F&b=1&a=2"
        );
    }
}
