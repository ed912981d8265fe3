//! Every refusal the gateway makes, and how it becomes an HTTP response.
//!
//! [`GatewayError`] is the one error type for refusals and failures. Its
//! response uses Polytomic's own error shape, so the official SDKs parse the
//! gateway's errors like the API's:
//!
//! ```json
//! {"status": 502, "key": "upstream_unreachable", "message": "...", "metadata": {}}
//! ```
//!
//! Layers that refuse a request answer with [`GatewayError::to_response`]
//! directly. Failures that surface as `Err` (upstream I/O, timeouts) are turned
//! into responses by [`Rescue`], the outermost layer, which walks the error's
//! source chain (as linkerd's `errors/respond.rs` does). Nothing reaches hyper
//! as an `Err`.
//!
//! Messages are written here, never copied from a request: no header value,
//! token, key or body value can be echoed back.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{full, BoxError, GatewayBody};

/// Marks a response the gateway made itself, with its error `key`, so the
/// audit and telemetry layers can tell refusals from upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKey(pub &'static str);

/// The message of a response the gateway made itself (as in its body), for
/// the request's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage(pub std::sync::Arc<str>);

/// Why a body is not acceptable JSON; the 400's message and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column of the problem (0 when the body is empty).
    pub column: usize,
    /// What is wrong, never quoting the body.
    pub reason: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid JSON at line {} column {}: {}",
            self.line, self.column, self.reason
        )
    }
}

/// A refusal or failure, with the HTTP status and stable `key` it maps to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The request body is larger than `server.max_body_bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit, in bytes.
        limit: u64,
    },
    /// No connection to the upstream could be made (refused, DNS, TLS).
    #[error("the upstream could not be reached")]
    UpstreamUnreachable(#[source] BoxError),
    /// The upstream connection failed after the request was sent.
    #[error("the upstream connection failed before a complete response")]
    UpstreamFailed(#[source] BoxError),
    /// The upstream sent no response headers within `upstream.timeout`.
    #[error("the upstream did not respond within {}", humantime::format_duration(*.0))]
    UpstreamTimeout(Duration),
    /// The whole request took longer than `server.request_timeout`.
    #[error("the request did not complete within {}", humantime::format_duration(*.0))]
    RequestTimeout(Duration),
    /// The gateway is shutting down and takes no new requests.
    #[error("the gateway is shutting down; retry on another instance")]
    Draining,
    /// The gateway is at its connection or in-flight request limit.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// The request's header section is over `server.max_header_bytes` or
    /// has more than `server.max_headers` fields.
    #[error("the request headers exceed the limit of {limit} {unit}")]
    HeadersTooLarge {
        /// The limit exceeded.
        limit: usize,
        /// `bytes` or `fields`.
        unit: &'static str,
    },
    /// The request target is longer than `server.max_uri_bytes`.
    #[error("the request URI exceeds the limit of {limit} bytes")]
    UriTooLong {
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The gateway is not ready to forward requests (e.g. its credential is unreadable).
    #[error("the gateway is not ready: {0}")]
    NotReady(&'static str),
    /// The caller's JWT is missing or invalid; the auth layer's reason.
    #[error("{0}")]
    Unauthenticated(BoxError),
    /// The path exists but not for this method.
    #[error("{method} is not allowed here; allowed: {}", allow.to_str().unwrap_or_default())]
    MethodNotAllowed {
        /// The refused method.
        method: http::Method,
        /// The `Allow` header value: the methods that are allowed.
        allow: HeaderValue,
    },
    /// No route matches the path.
    #[error("no route for this path")]
    NoRoute,
    /// The path is ambiguous or malformed; the routes layer's reason.
    #[error("{0}")]
    InvalidPath(BoxError),
    /// A path parameter documented as a UUID (`{id}`) is not one.
    #[error("path parameter {{{param}}} must be a UUID")]
    InvalidId {
        /// The parameter's name in the route's path template.
        param: std::sync::Arc<str>,
    },
    /// A method-override header was sent.
    #[error("method-override header {0} is not allowed")]
    MethodOverride(http::HeaderName),
    /// The write body is not `application/json`.
    #[error("the body must be application/json (charset utf-8)")]
    UnsupportedMediaType,
    /// The write body is not strict, well-formed JSON.
    #[error("{0}")]
    InvalidJson(JsonError),
    /// The write body nests arrays and objects deeper than
    /// `server.max_json_depth`.
    #[error("the JSON body nests deeper than server.max_json_depth ({limit})")]
    JsonTooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// The write body holds more JSON values than `server.max_json_values`.
    #[error("the JSON body has more values than server.max_json_values ({limit})")]
    JsonTooManyValues {
        /// The configured limit.
        limit: usize,
    },
    /// The write body violates the route's schema.
    #[error("the body does not match the schema: {} problem(s), see metadata.errors", .0.len())]
    InvalidBody(Vec<crate::schema::Violation>),
    /// A body on a method that takes none (GET, DELETE) on a schema route.
    #[error("{0} requests must not have a body")]
    BodyNotAllowed(http::Method),
    /// The request body ended before it was complete.
    #[error("the request body could not be read completely")]
    IncompleteBody,
    /// The policy does not allow the caller this operation.
    #[error("team may not perform {operation}")]
    Forbidden {
        /// The operation that was refused.
        operation: std::sync::Arc<str>,
    },
    /// The audit record of a write request could not be made durable.
    #[error("the audit trail cannot record this request; it was not forwarded")]
    AuditUnavailable,
    /// The signing keys from `auth.jwks_url` are older than
    /// `auth.jwks_max_stale`: every refresh since failed.
    #[error(
        "the identity provider's signing keys could not be refreshed; tokens cannot be verified"
    )]
    JwksUnavailable,
    /// A bug or an unexpected failure inside the gateway.
    #[error("internal gateway error")]
    Internal,
    /// A layer panicked while handling the request (a bug); caught at the
    /// edge so the client still gets an answer and the audit trail a record.
    #[error("the gateway failed while handling this request")]
    Panicked,
}

impl GatewayError {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } | Self::JsonTooManyValues { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UpstreamUnreachable(_) | Self::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) | Self::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Draining
            | Self::Overloaded
            | Self::NotReady(_)
            | Self::AuditUnavailable
            | Self::JwksUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::InvalidPath(_) | Self::InvalidId { .. } | Self::MethodOverride(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidJson(_) | Self::BodyNotAllowed(_) | Self::IncompleteBody => {
                StatusCode::BAD_REQUEST
            }
            Self::InvalidBody(_) | Self::JsonTooDeep { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal | Self::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable `key` of this refusal.
    pub fn key(&self) -> &'static str {
        match self {
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamFailed(_) => "upstream_failed",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Draining => "draining",
            Self::Overloaded => "overloaded",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::NotReady(_) => "not_ready",
            Self::JwksUnavailable => "jwks_unavailable",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::NoRoute => "no_route",
            Self::InvalidPath(_) | Self::InvalidId { .. } => "invalid_path",
            Self::MethodOverride(_) => "method_override",
            Self::Forbidden { .. } => "forbidden",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidJson(_) => "invalid_json",
            Self::JsonTooDeep { .. } => "json_too_deep",
            Self::JsonTooManyValues { .. } => "json_too_many_values",
            Self::InvalidBody(_) => "invalid_body",
            Self::BodyNotAllowed(_) => "body_not_allowed",
            Self::IncompleteBody => "incomplete_body",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Internal => "internal_error",
            Self::Panicked => "internal",
        }
    }

    /// The `metadata` object of the error body.
    fn metadata(&self) -> serde_json::Value {
        match self {
            Self::PayloadTooLarge { limit } => serde_json::json!({ "limit_bytes": limit }),
            Self::UriTooLong { limit } => serde_json::json!({ "limit_bytes": limit }),
            Self::HeadersTooLarge { limit, unit } => {
                serde_json::json!({ "limit": limit, "unit": unit })
            }
            Self::InvalidJson(e) => serde_json::json!({ "line": e.line, "column": e.column }),
            Self::JsonTooDeep { limit } | Self::JsonTooManyValues { limit } => {
                serde_json::json!({ "limit": limit })
            }
            Self::InvalidBody(errors) => serde_json::json!({ "errors": errors }),
            Self::InvalidId { param } => serde_json::json!({ "parameter": &**param }),
            _ => serde_json::json!({}),
        }
    }

    /// The JSON response for this refusal, in Polytomic's error shape.
    pub fn to_response(&self) -> Response<GatewayBody> {
        let status = self.status();
        let message = self.to_string();
        let body = serde_json::json!({
            "status": status.as_u16(),
            "key": self.key(),
            "message": message,
            "metadata": self.metadata(),
        });
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = status;
        response.extensions_mut().insert(ErrorKey(self.key()));
        response
            .extensions_mut()
            .insert(ErrorMessage(message.into()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        match self {
            Self::Draining => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, allow.clone());
            }
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            _ => {}
        }
        response
    }
}

/// The response for an error that reached the edge, found by walking its
/// source chain for a [`GatewayError`].
///
/// Timeouts from `tower::timeout` carry no duration, so the caller's
/// configured `request_timeout` names the limit in their message.
pub fn error_response(error: &BoxError, request_timeout: Duration) -> Response<GatewayBody> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(err) = cause {
        if let Some(gateway) = err.downcast_ref::<GatewayError>() {
            return gateway.to_response();
        }
        if err.is::<tower::timeout::error::Elapsed>() {
            return GatewayError::RequestTimeout(request_timeout).to_response();
        }
        if err.is::<tower::load_shed::error::Overloaded>() {
            return GatewayError::Overloaded.to_response();
        }
        cause = err.source();
    }
    tracing::error!(error = %error, "unexpected error reached the edge");
    GatewayError::Internal.to_response()
}

/// Turns every `Err` from the inner service into a JSON error response, and
/// every panic below it into a 500 `internal`.
///
/// The service it builds is infallible, as hyper requires (see axum's
/// `docs/error_handling.md`). A panic in a layer's `call` or in its future is
/// caught here ([`std::panic::catch_unwind`], as tower-http's
/// `CatchPanicLayer` does), so the connection gets an answer in Polytomic's
/// error shape and the layers outside (audit, telemetry) see a response.
/// The panic is logged by [`install_panic_hook`]'s hook, without its
/// message unless that is a literal.
#[derive(Debug, Clone)]
pub struct RescueLayer {
    request_timeout: Duration,
}

impl RescueLayer {
    /// `request_timeout` names the limit in 504 messages from `tower::timeout`.
    pub fn new(request_timeout: Duration) -> Self {
        Self { request_timeout }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            request_timeout: self.request_timeout,
        }
    }
}

/// The service built by [`RescueLayer`].
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
    request_timeout: Duration,
}

impl<S, Req> Service<Req> for Rescue<S>
where
    S: Service<Req, Response = Response<GatewayBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The stack's services are always ready (no buffers or rate limits),
        // so an error here is a bug; it is answered per request below instead.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = &mut self.inner;
        let future =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.call(req))).ok();
        RescueFuture {
            future,
            request_timeout: self.request_timeout,
        }
    }
}

pin_project! {
    /// Response future of [`Rescue`].
    pub struct RescueFuture<F> {
        // `None`: the inner `call` panicked.
        #[pin]
        future: Option<F>,
        request_timeout: Duration,
    }
}

impl<F, E> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(GatewayError::Panicked.to_response()));
        };
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx)));
        match polled {
            Err(_panic) => {
                // Never poll it again; the hook has logged the panic.
                this.future.set(None);
                Poll::Ready(Ok(GatewayError::Panicked.to_response()))
            }
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => Poll::Ready(Ok(response)),
            Ok(Poll::Ready(Err(error))) => {
                let error: BoxError = error.into();
                Poll::Ready(Ok(error_response(&error, *this.request_timeout)))
            }
        }
    }
}

/// What a panic's log line says of it: its message only when that is a
/// literal (`panic!("...")`); a formatted message could hold request data,
/// such as a secret, so it is withheld. The location is always given.
pub fn describe_panic(payload: &(dyn std::any::Any + Send), location: Option<String>) -> String {
    let message = payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(formatted message withheld: it may hold request data)");
    match location {
        Some(at) => format!("{message} at {at}"),
        None => message.to_owned(),
    }
}

/// Replaces the default panic hook (which prints the whole message to
/// stderr) by one that logs an `error` line through `tracing`, as
/// [`describe_panic`] writes it. Called once by the binary.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        tracing::error!(panic = %describe_panic(info.payload(), location), "a panic was caught");
    }));
}

/// One error of each variant, for tests that hold the docs to the code.
/// The `match` stops compiling when a variant is added: add a sample here
/// too (and a row to docs/security.md's Errors table).
#[cfg(test)]
pub(crate) fn one_of_each() -> Vec<GatewayError> {
    use GatewayError as E;
    let samples = vec![
        E::PayloadTooLarge { limit: 1 },
        E::UpstreamUnreachable("refused".into()),
        E::UpstreamFailed("reset".into()),
        E::UpstreamTimeout(Duration::from_secs(1)),
        E::RequestTimeout(Duration::from_secs(1)),
        E::Draining,
        E::Overloaded,
        E::HeadersTooLarge {
            limit: 1,
            unit: "fields",
        },
        E::UriTooLong { limit: 1 },
        E::NotReady("not yet"),
        E::Unauthenticated("missing bearer token".into()),
        E::MethodNotAllowed {
            method: http::Method::POST,
            allow: HeaderValue::from_static("GET"),
        },
        E::NoRoute,
        E::InvalidPath("path too long".into()),
        E::InvalidId { param: "id".into() },
        E::MethodOverride(http::HeaderName::from_static("x-http-method")),
        E::UnsupportedMediaType,
        E::InvalidJson(JsonError {
            line: 1,
            column: 1,
            reason: "expected value".into(),
        }),
        E::JsonTooDeep { limit: 1 },
        E::JsonTooManyValues { limit: 1 },
        E::InvalidBody(Vec::new()),
        E::BodyNotAllowed(http::Method::GET),
        E::IncompleteBody,
        E::Forbidden {
            operation: "op".into(),
        },
        E::AuditUnavailable,
        E::JwksUnavailable,
        E::Internal,
        E::Panicked,
    ];
    for error in &samples {
        match error {
            E::PayloadTooLarge { .. }
            | E::UpstreamUnreachable(_)
            | E::UpstreamFailed(_)
            | E::UpstreamTimeout(_)
            | E::RequestTimeout(_)
            | E::Draining
            | E::Overloaded
            | E::HeadersTooLarge { .. }
            | E::UriTooLong { .. }
            | E::NotReady(_)
            | E::Unauthenticated(_)
            | E::MethodNotAllowed { .. }
            | E::NoRoute
            | E::InvalidPath(_)
            | E::InvalidId { .. }
            | E::MethodOverride(_)
            | E::UnsupportedMediaType
            | E::InvalidJson(_)
            | E::JsonTooDeep { .. }
            | E::JsonTooManyValues { .. }
            | E::InvalidBody(_)
            | E::BodyNotAllowed(_)
            | E::IncompleteBody
            | E::Forbidden { .. }
            | E::AuditUnavailable
            | E::JwksUnavailable
            | E::Internal
            | E::Panicked => {}
        }
    }
    samples
}

/// The rows of the first table of the page `doc` (its text) under
/// `heading` whose header line starts `| {header}`, as their cells
/// (trimmed, backticks removed).
#[cfg(test)]
pub(crate) fn doc_table(doc: &str, heading: &str, header: &str) -> Vec<Vec<String>> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("the page has no {heading:?}"));
    let section = &doc[start..];
    let table = section
        .find(&format!("\n| {header}"))
        .map(|at| &section[at + 1..])
        .unwrap_or_else(|| panic!("no table headed {header:?} under {heading:?}"));
    table
        .lines()
        .take_while(|line| line.starts_with('|'))
        .skip(2) // the header and the `|---|` line
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().replace('`', ""))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    async fn json(response: Response<GatewayBody>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_become_polytomic_shaped_json() {
        let svc = ServiceBuilder::new()
            .layer(RescueLayer::new(Duration::from_secs(30)))
            .service(service_fn(|_req: Request<()>| async {
                Err::<Response<GatewayBody>, BoxError>(Box::new(GatewayError::UpstreamTimeout(
                    Duration::from_millis(250),
                )))
            }));
        let response = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = json(response).await;
        assert_eq!(body["status"], 504);
        assert_eq!(body["key"], "upstream_timeout");
        assert_eq!(body["message"], "the upstream did not respond within 250ms");
        assert!(body["metadata"].is_object());
    }

    #[tokio::test]
    async fn tower_timeouts_name_the_request_timeout() {
        let svc = ServiceBuilder::new()
            .layer(RescueLayer::new(Duration::from_secs(3)))
            .service(service_fn(|_req: Request<()>| async {
                Err::<Response<GatewayBody>, BoxError>(Box::new(
                    tower::timeout::error::Elapsed::new(),
                ))
            }));
        let body = json(svc.oneshot(Request::new(())).await.unwrap()).await;
        assert_eq!(body["key"], "request_timeout");
        assert_eq!(body["message"], "the request did not complete within 3s");
    }

    #[tokio::test]
    async fn parse_limit_refusals_name_the_key_and_the_limit() {
        for (error, status, key, message, limit) in [
            (
                GatewayError::JsonTooDeep { limit: 64 },
                422,
                "json_too_deep",
                "the JSON body nests deeper than server.max_json_depth (64)",
                64,
            ),
            (
                GatewayError::JsonTooManyValues { limit: 100_000 },
                413,
                "json_too_many_values",
                "the JSON body has more values than server.max_json_values (100000)",
                100_000,
            ),
        ] {
            let response = error.to_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.extensions().get::<ErrorKey>(),
                Some(&ErrorKey(key))
            );
            assert_eq!(
                json(response).await,
                serde_json::json!({
                    "status": status, "key": key, "message": message,
                    "metadata": {"limit": limit},
                })
            );
        }
    }

    /// docs/security.md's Errors table lists exactly the statuses and keys the
    /// gateway answers with: every one, and no other.
    #[test]
    fn the_readme_errors_table_lists_every_key_and_status() {
        let rows: std::collections::BTreeSet<(String, String)> = doc_table(
            include_str!("../docs/security.md"),
            "## Errors",
            "Status | `key` | When |",
        )
        .into_iter()
        .map(|cells| (cells[0].clone(), cells[1].clone()))
        .collect();
        let answered: std::collections::BTreeSet<(String, String)> = one_of_each()
            .iter()
            .map(|e| (e.status().as_u16().to_string(), e.key().to_owned()))
            .collect();
        let missing: Vec<_> = answered.difference(&rows).collect();
        assert!(
            missing.is_empty(),
            "not in docs/security.md's Errors table: {missing:?}"
        );
        let unknown: Vec<_> = rows.difference(&answered).collect();
        assert!(
            unknown.is_empty(),
            "in docs/security.md's Errors table, never answered: {unknown:?}"
        );
    }

    #[tokio::test]
    async fn unknown_errors_are_500_without_their_text() {
        let svc = ServiceBuilder::new()
            .layer(RescueLayer::new(Duration::from_secs(3)))
            .service(service_fn(|_req: Request<()>| async {
                Err::<Response<GatewayBody>, BoxError>("secret-ish detail".into())
            }));
        let response = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = json(response).await;
        assert_eq!(body["key"], "internal_error");
        assert!(!body.to_string().contains("secret-ish"));
    }
}
