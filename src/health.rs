//! `/healthz`, `/readyz` and `/metrics`, answered by the gateway itself,
//! never forwarded.
//!
//! - `GET /healthz` is 200 while the process runs (liveness).
//! - `GET /readyz` is 200 once everything the gateway needs is loaded and
//!   readable, and 503 while any [`Readiness`] check fails or while draining.
//! - `GET /metrics` is the metrics text, when the layer was given a way to
//!   encode it (see [`HealthLayer::with_metrics`]; the gateway gives it
//!   `metrics::Metrics::encode`).
//!
//! While draining, every other request is refused with 503 `draining` and
//! `Connection: close`, so clients move to another instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::{full, GatewayBody};
use crate::error::GatewayError;
use crate::future::ResponseFuture;

/// The liveness path.
pub const HEALTHZ: &str = "/healthz";
/// The readiness path.
pub const READYZ: &str = "/readyz";

type Check = dyn Fn() -> Result<(), &'static str> + Send + Sync;

/// Whether the gateway should receive traffic.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Set once shutdown starts; never cleared.
    draining: Arc<AtomicBool>,
    /// Each returns why the gateway is not ready, if it is not.
    checks: Arc<Vec<Box<Check>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("draining", &self.is_draining())
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Readiness {
    /// Ready unless one of `checks` says otherwise.
    pub fn new(checks: Vec<Box<Check>>) -> Self {
        Self {
            draining: Arc::default(),
            checks: Arc::new(checks),
        }
    }

    /// Starts draining: `/readyz` turns 503 and new requests are refused.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// `Ok` when ready, else the reason.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            return Err("draining");
        }
        self.checks.iter().try_for_each(|check| check())
    }
}

/// The path metrics are served on; never forwarded, never authenticated.
pub const METRICS_PATH: &str = "/metrics";

/// What `GET /metrics` serves: the text `encode` makes, as `content_type`.
#[derive(Clone)]
struct MetricsText {
    content_type: &'static str,
    encode: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
}

impl std::fmt::Debug for MetricsText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsText")
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// Answers the health paths and refuses new work while draining.
#[derive(Debug, Clone)]
pub struct HealthLayer {
    readiness: Readiness,
    metrics: Option<MetricsText>,
}

impl HealthLayer {
    /// A layer reporting `readiness`.
    pub fn new(readiness: Readiness) -> Self {
        Self {
            readiness,
            metrics: None,
        }
    }

    /// Also serves metrics on `GET /metrics`: the text `encode` makes at
    /// each scrape, as `content_type`.
    pub fn with_metrics(
        mut self,
        content_type: &'static str,
        encode: impl Fn() -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.metrics = Some(MetricsText {
            content_type,
            encode: Arc::new(encode),
        });
        self
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = Health<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Health {
            inner,
            readiness: self.readiness.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service built by [`HealthLayer`].
#[derive(Debug, Clone)]
pub struct Health<S> {
    inner: S,
    readiness: Readiness,
    metrics: Option<MetricsText>,
}

fn status_response(status: StatusCode, body: &'static str) -> Response<GatewayBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl<S, B> Service<Request<B>> for Health<S>
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
        let path = req.uri().path();
        let metrics = self.metrics.as_ref().filter(|_| path == METRICS_PATH);
        if path == HEALTHZ || path == READYZ || metrics.is_some() {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                let refusal = GatewayError::MethodNotAllowed {
                    method: req.method().clone(),
                    allow: HeaderValue::from_static("GET, HEAD"),
                };
                return ResponseFuture::early(refusal.to_response());
            }
            if let Some(metrics) = metrics {
                let mut response = Response::new(full((metrics.encode)()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(metrics.content_type),
                );
                return ResponseFuture::early(response);
            }
            if path == HEALTHZ {
                return ResponseFuture::early(status_response(
                    StatusCode::OK,
                    r#"{"status":"ok"}"#,
                ));
            }
            return ResponseFuture::early(match self.readiness.check() {
                Ok(()) => status_response(StatusCode::OK, r#"{"status":"ready"}"#),
                Err(why) => GatewayError::NotReady(why).to_response(),
            });
        }
        if self.readiness.is_draining() {
            return ResponseFuture::early(GatewayError::Draining.to_response());
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn svc(
        readiness: Readiness,
    ) -> impl Service<Request<()>, Response = Response<GatewayBody>, Error = std::convert::Infallible>
    {
        ServiceBuilder::new()
            .layer(HealthLayer::new(readiness))
            .service(service_fn(|_req: Request<()>| async {
                Ok(Response::new(full("forwarded")))
            }))
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn health_paths_are_answered_and_the_rest_forwarded() {
        let readiness = Readiness::new(vec![]);
        let ok = svc(readiness.clone())
            .oneshot(get("/healthz"))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let ready = svc(readiness.clone())
            .oneshot(get("/readyz"))
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let post = svc(readiness.clone())
            .oneshot(Request::post("/readyz").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        let other = svc(readiness)
            .oneshot(get("/api/organization"))
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn failing_checks_and_draining_turn_readyz_503() {
        let unready = Readiness::new(vec![Box::new(|| Err("credential unreadable"))]);
        let response = svc(unready).oneshot(get("/readyz")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

        let readiness = Readiness::new(vec![]);
        readiness.start_draining();
        let response = svc(readiness.clone())
            .oneshot(get("/readyz"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let live = svc(readiness.clone())
            .oneshot(get("/healthz"))
            .await
            .unwrap();
        assert_eq!(live.status(), StatusCode::OK);
        let refused = svc(readiness)
            .oneshot(get("/api/organization"))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::CONNECTION], "close");
    }
}
