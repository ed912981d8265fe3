//! [`TelemetryLayer`]: one server span, one log line and one set of metric
//! samples per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use http::{header, Request, Response, StatusCode};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::audit::record::outcome;
use crate::body::GatewayBody;
use crate::error::ErrorKey;
use crate::metrics::{method_label, InflightGuard, Metrics, RequestMetrics, NO_OPERATION, NO_RULE};
use crate::notes::{Notes, RequestNotes};
use crate::policy::PolicyMode;

/// The request's trace id, for the audit record. Present only when an
/// OpenTelemetry tracing layer is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub opentelemetry::trace::TraceId);

/// Paths the gateway answers itself (health, metrics): probed constantly, so
/// they get no span, no log line and no request metrics.
const LOCAL_PATHS: [&str; 3] = [
    crate::health::HEALTHZ,
    crate::health::READYZ,
    crate::metrics::METRICS_PATH,
];

/// Wraps every request in a server span (continuing the caller's W3C trace
/// context), gives the stack a [`RequestNotes`] slot, and when the response
/// is ready records the span's attributes, the request metrics and one log
/// line: info when the request was answered upstream, warn when the gateway
/// refused it.
#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    metrics: Metrics,
}

impl TelemetryLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service built by [`TelemetryLayer`].
#[derive(Debug, Clone)]
pub struct TelemetryService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<Request<B>> for TelemetryService<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = Either<S::Future, TelemetryFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if LOCAL_PATHS.contains(&req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        let started = Instant::now();
        let method = method_label(req.method());
        let headers = req.headers();
        let span = tracing::info_span!(
            "request",
            otel.kind = "server",
            "http.request.method" = method,
            "url.path" = req.uri().path(),
            "http.route" = Empty,
            "http.response.status_code" = Empty,
            "server.address" = Empty,
            "user_agent.original" = Empty,
            "polytomic.operation" = Empty,
            "polytomic.organization_id" = Empty,
            "enduser.id" = Empty,
            "enduser.teams" = Empty,
            "gateway.decision" = Empty,
            "gateway.rule" = Empty,
            "gateway.outcome" = Empty,
            request_id = Empty,
            trace_id = Empty,
        );
        if let Some(host) = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
        {
            // `server.address` is the host name alone.
            let host = host.rsplit_once(':').map_or(host, |(name, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(']') {
                    name
                } else {
                    host
                }
            });
            span.record("server.address", host);
        }
        if let Some(agent) = headers
            .get(header::USER_AGENT)
            .and_then(|h| h.to_str().ok())
        {
            span.record("user_agent.original", agent);
        }
        if let Some(id) = headers.get("x-request-id").and_then(|h| h.to_str().ok()) {
            span.record("request_id", id);
        }
        // Continue the caller's trace, if it sent a valid `traceparent`.
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let trace_id = span.context().span().span_context().trace_id();
        if trace_id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(trace_id));
            req.extensions_mut().insert(TraceId(trace_id));
        }
        let notes = match req.extensions().get::<RequestNotes>() {
            Some(notes) => notes.clone(),
            None => {
                let notes = RequestNotes::default();
                req.extensions_mut().insert(notes.clone());
                notes
            }
        };
        let inflight = self.metrics.inflight();
        let future = span.in_scope(|| self.inner.call(req));
        Either::Right(TelemetryFuture {
            future,
            pending: Some(Pending {
                span,
                notes,
                method,
                started,
                metrics: self.metrics.clone(),
                _inflight: inflight,
            }),
        })
    }
}

/// What the finishing step needs.
struct Pending {
    span: tracing::Span,
    notes: RequestNotes,
    method: &'static str,
    started: Instant,
    metrics: Metrics,
    /// Counts the request in flight until dropped.
    _inflight: InflightGuard,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// The `gateway.decision` word of a policy decision.
fn decision_word(allowed: bool, mode: PolicyMode) -> &'static str {
    match (allowed, mode) {
        (true, _) => "allow",
        (false, PolicyMode::Enforce) => "deny",
        (false, PolicyMode::Shadow) => "shadow_deny",
    }
}

impl Pending {
    /// Records everything about the finished request. `status` is `None`
    /// when the client went away before the response.
    fn finish(self, status: Option<StatusCode>, error_key: Option<&'static str>) {
        let duration = self.started.elapsed();
        let notes: Notes = self.notes.snapshot();
        let span = &self.span;
        let outcome = outcome(error_key, notes.decision.as_ref());
        let route = notes.route.as_ref();
        let operation = route.map_or(NO_OPERATION, |r| &*r.operation);
        if let Some(route) = route {
            span.record("http.route", &*route.template);
            span.record("polytomic.operation", &*route.operation);
            if let Some(id) = &route.organization_id {
                span.record("polytomic.organization_id", &**id);
            }
            span.context()
                .span()
                .update_name(format!("{} {}", self.method, route.template));
        }
        if let Some(principal) = &notes.principal {
            span.record("enduser.id", principal.sub());
            span.record("enduser.teams", principal.teams().join(",").as_str());
        }
        let decision = notes.decision.as_ref().map(|d| {
            let word = decision_word(d.allowed, d.mode);
            let rule = d.rule.as_deref().unwrap_or(NO_RULE);
            span.record("gateway.decision", word);
            span.record("gateway.rule", rule);
            (word, rule)
        });
        span.record("gateway.outcome", outcome);
        if let Some(status) = status {
            span.record("http.response.status_code", status.as_u16());
        }
        // A refusal is an error, with its key; so is a 5xx from upstream
        // (the HTTP conventions for server spans).
        match (error_key, status) {
            (Some(key), _) => span.set_status(Status::error(key)),
            (None, Some(s)) if s.is_server_error() => {
                span.set_status(Status::error("upstream server error"))
            }
            _ => {}
        }
        self.metrics.record_request(&RequestMetrics {
            operation,
            method: self.method,
            status,
            outcome,
            duration,
            upstream: notes.upstream_duration,
            decision,
        });
        let duration_ms = (duration.as_secs_f64() * 10_000.0).round() / 10.0;
        let status = status.map(|s| s.as_u16());
        // Entered rather than named as `parent:`: the JSON formatter lists
        // the entered spans only, and the line must carry the request's ids.
        let _entered = span.enter();
        if let Some(reason) = error_key {
            tracing::warn!(
                operation,
                status,
                duration_ms,
                outcome,
                reason,
                "request refused"
            );
        } else {
            tracing::info!(
                operation,
                status,
                duration_ms,
                outcome,
                upstream_status = notes.upstream_status,
                "request"
            );
        }
    }
}

pin_project! {
    /// Response future of [`TelemetryService`]: polls the inner future in
    /// the request's span, and records the request when it finishes or is
    /// dropped (the client went away).
    pub struct TelemetryFuture<F> {
        #[pin]
        future: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for TelemetryFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.finish(None, Some(crate::audit::CLIENT_DISCONNECTED));
            }
        }
    }
}

impl<F, E> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.pending.as_ref().map(|p| p.span.enter());
            ready!(this.future.poll(cx))
        };
        if let (Some(pending), Ok(response)) = (this.pending.take(), &result) {
            let error_key = response.extensions().get::<ErrorKey>().map(|k| k.0);
            pending.finish(Some(response.status()), error_key);
        }
        Poll::Ready(result)
    }
}
