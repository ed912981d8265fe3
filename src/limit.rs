//! Request limits: the head ([`HeadLimitLayer`]: `server.max_uri_bytes`,
//! `server.max_header_bytes`, `server.max_headers`) and the body
//! ([`BodyLimitLayer`]: `server.max_body_bytes`).
//!
//! hyper enforces its own, looser, limits while parsing (with a bare 431 and
//! no JSON); [`HeadLimitLayer`] applies the configured ones to every request
//! hyper accepted, as JSON errors that are audited like any refusal.
//!
//! The body limit:
//! A declared `Content-Length` over the limit is refused with 413 before the
//! body is read. Otherwise the body is wrapped in `http_body_util::Limited`,
//! which still streams but fails as soon as more than the limit has passed;
//! that failure carries [`GatewayError::PayloadTooLarge`], so the edge answers
//! 413 (when no response has started) and the upstream sees an aborted
//! request, never a complete one.
//!
//! This is also where the request body is boxed into the one type the inner
//! layers and the proxy share.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service};

pub use crate::body::ClientBodyError;
use crate::body::{BoxError, GatewayBody};
use crate::error::GatewayError;
use crate::future::ResponseFuture;

/// Refuses requests whose target or header section is over the limits.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimitLayer {
    limits: HeadLimits,
}

/// The limits [`HeadLimitLayer`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// `server.max_uri_bytes`: the path and query, in bytes.
    pub uri_bytes: usize,
    /// `server.max_header_bytes`: every header's name and value, plus 4
    /// bytes each for `: ` and CRLF, as on the wire.
    pub header_bytes: usize,
    /// `server.max_headers`: header fields.
    pub headers: usize,
}

/// A request's header section as the client sent it: its fields, and its
/// bytes counted as [`HeadLimits::header_bytes`] says.
///
/// The gateway's stack measures it first thing, before hop-by-hop headers
/// are stripped and before the gateway sets its own `x-request-id`, and
/// puts it in the request's extensions, so the limits apply to what the
/// client sent: exactly `server.max_headers` fields pass. Without it,
/// [`HeadLimits::check`] measures the headers as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSize {
    /// Header fields.
    pub fields: usize,
    /// Every name and value, plus 4 bytes each for `: ` and CRLF.
    pub bytes: usize,
}

impl HeadSize {
    /// The size of `headers`.
    pub fn of(headers: &http::HeaderMap) -> Self {
        Self {
            fields: headers.len(),
            bytes: headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum(),
        }
    }
}

impl HeadLimits {
    /// The refusal for `req`'s head, if it is over a limit.
    pub fn check<B>(&self, req: &Request<B>) -> Option<GatewayError> {
        let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target > self.uri_bytes {
            return Some(GatewayError::UriTooLong {
                limit: self.uri_bytes,
            });
        }
        let size = req
            .extensions()
            .get::<HeadSize>()
            .copied()
            .unwrap_or_else(|| HeadSize::of(req.headers()));
        if size.fields > self.headers {
            return Some(GatewayError::HeadersTooLarge {
                limit: self.headers,
                unit: "fields",
            });
        }
        (size.bytes > self.header_bytes).then_some(GatewayError::HeadersTooLarge {
            limit: self.header_bytes,
            unit: "bytes",
        })
    }
}

impl HeadLimitLayer {
    /// Applies `limits` to every request.
    pub fn new(limits: HeadLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for HeadLimitLayer {
    type Service = HeadLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HeadLimit {
            inner,
            limits: self.limits,
        }
    }
}

/// The service built by [`HeadLimitLayer`].
#[derive(Debug, Clone)]
pub struct HeadLimit<S> {
    inner: S,
    limits: HeadLimits,
}

impl<S, B> Service<Request<B>> for HeadLimit<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.limits.check(&req) {
            Some(refusal) => {
                tracing::debug!(key = refusal.key(), reason = %refusal, "request head refused");
                ResponseFuture::early(refusal.to_response())
            }
            None => ResponseFuture::inner(self.inner.call(req)),
        }
    }
}

/// Refuses request bodies over a limit, without reading past it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    limit: u64,
}

impl BodyLimitLayer {
    /// Limits request bodies to `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service built by [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: u64,
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = self.limit;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return ResponseFuture::early(GatewayError::PayloadTooLarge { limit }.to_response());
        }
        let req = req.map(|body| {
            let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
            Limited::new(body, limit_usize)
                .map_err(move |e: BoxError| -> BoxError {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Box::new(GatewayError::PayloadTooLarge { limit })
                    } else {
                        Box::new(ClientBodyError(e))
                    }
                })
                .boxed_unsync()
        });
        ResponseFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;
    use http::StatusCode;
    use http_body_util::Full;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn svc(
    ) -> impl Service<Request<Full<Bytes>>, Response = Response<GatewayBody>, Error = BoxError>
    {
        ServiceBuilder::new()
            .layer(BodyLimitLayer::new(8))
            .service(service_fn(|req: Request<GatewayBody>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(Response::new(full(body)))
            }))
    }

    #[tokio::test]
    async fn declared_oversize_is_refused_before_reading() {
        let req = Request::post("/")
            .header("content-length", "9")
            .body(Full::new(Bytes::from_static(b"123456789")))
            .unwrap();
        let response = svc().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn undeclared_oversize_fails_the_stream_with_payload_too_large() {
        let req = Request::post("/")
            .body(Full::new(Bytes::from_static(b"123456789")))
            .unwrap();
        let err = svc().oneshot(req).await.unwrap_err();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        let mut found = false;
        while let Some(e) = cause {
            found |= matches!(
                e.downcast_ref(),
                Some(GatewayError::PayloadTooLarge { limit: 8 })
            );
            cause = e.source();
        }
        assert!(found, "{err}");
    }

    #[tokio::test]
    async fn bodies_within_the_limit_pass_unchanged() {
        let req = Request::post("/")
            .body(Full::new(Bytes::from_static(b"12345678")))
            .unwrap();
        let response = svc().oneshot(req).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"12345678");
    }

    #[test]
    fn heads_over_each_limit_are_refused() {
        let limits = HeadLimits {
            uri_bytes: 20,
            header_bytes: 64,
            headers: 3,
        };
        let ok = Request::get("/api/organization")
            .header("a", "1")
            .body(())
            .unwrap();
        assert!(limits.check(&ok).is_none());
        let long_uri = Request::get("/api/organization?x=1").body(()).unwrap();
        assert_eq!(limits.check(&long_uri).unwrap().key(), "uri_too_long");
        let mut many = Request::get("/").body(()).unwrap();
        for name in ["a", "b", "c", "d"] {
            many.headers_mut().insert(name, "1".parse().unwrap());
        }
        let refusal = limits.check(&many).unwrap();
        assert_eq!(
            refusal.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert!(refusal.to_string().contains("3 fields"), "{refusal}");
        let big = Request::get("/")
            .header("x", "v".repeat(60))
            .body(())
            .unwrap();
        assert!(limits.check(&big).unwrap().to_string().contains("64 bytes"));
    }
}
