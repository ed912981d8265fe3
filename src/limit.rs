//! The request body limit: `server.max_body_bytes`.
//!
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

use crate::body::{BoxError, GatewayBody};
use crate::error::GatewayError;
use crate::future::ResponseFuture;

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
                        e
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
}
