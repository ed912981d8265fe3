//! [`TelemetryLayer`]: one server span per request, and a log line for
//! every refusal (and, with `telemetry.request_log`, every request).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use http::{header, Request, Response, StatusCode};
use opentelemetry::global::BoxedTracer;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::field::Empty;

use crate::body::GatewayBody;
use crate::error::{ErrorKey, ErrorMessage};
use crate::notes::{outcome, Notes, RequestNotes, CLIENT_DISCONNECTED, NO_OPERATION, NO_RULE};
use crate::trace::method_label;
use crate::trace::{global_tracer, RequestTrace, TraceId};

/// Wraps every request in a server span (continuing the caller's W3C trace
/// context), gives the stack a [`RequestNotes`] slot, and when the response
/// is ready records the span's attributes and a log line: warn when the
/// gateway refused the request; info when it was answered upstream, if
/// [`request_log`](Self::request_log) is on.
#[derive(Clone)]
pub struct TelemetryLayer {
    tracer: Arc<BoxedTracer>,
    skip: &'static [&'static str],
    request_log: bool,
}

impl std::fmt::Debug for TelemetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryLayer").finish_non_exhaustive()
    }
}

impl TelemetryLayer {
    /// A layer with spans from the global tracer provider as it is now
    /// (install it first: [`init`](super::init)).
    pub fn new() -> Self {
        Self {
            tracer: global_tracer(),
            skip: &[],
            request_log: false,
        }
    }

    /// Whether a request answered upstream gets an info line too
    /// (`telemetry.request_log`). Off, the audit record is the request log;
    /// refusals are logged either way.
    pub fn request_log(mut self, on: bool) -> Self {
        self.request_log = on;
        self
    }

    /// Requests for these paths get no span and no log line (health probes,
    /// which come constantly).
    pub fn skip_paths(mut self, paths: &'static [&'static str]) -> Self {
        self.skip = paths;
        self
    }
}

impl Default for TelemetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            tracer: self.tracer.clone(),
            skip: self.skip,
            request_log: self.request_log,
        }
    }
}

/// The service built by [`TelemetryLayer`].
#[derive(Clone)]
pub struct TelemetryService<S> {
    inner: S,
    tracer: Arc<BoxedTracer>,
    skip: &'static [&'static str],
    request_log: bool,
}

impl<S> std::fmt::Debug for TelemetryService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryService").finish_non_exhaustive()
    }
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
        if self.skip.contains(&req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        let started = Instant::now();
        let method = method_label(req.method());
        let headers = req.headers();
        // Continue the caller's trace, if it sent a valid `traceparent`.
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let mut server = self
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .start_with_context(&*self.tracer, &parent);
        // The gateway's own id (set before this layer), as in the audit
        // record: a caller's trace may hold many requests.
        let request_id = headers.get("x-request-id").and_then(|h| h.to_str().ok());
        if server.is_recording() {
            // Attributes known now; the others when the response is ready.
            let mut attributes = Vec::with_capacity(5);
            attributes.push(KeyValue::new("http.request.method", method));
            if let Some(id) = request_id {
                attributes.push(KeyValue::new("request_id", id.to_owned()));
            }
            attributes.push(KeyValue::new("url.path", req.uri().path().to_owned()));
            if let Some(host) = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host())
            {
                attributes.push(KeyValue::new("server.address", host_name(host)));
            }
            if let Some(agent) = headers
                .get(header::USER_AGENT)
                .and_then(|h| h.to_str().ok())
            {
                attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
            }
            server.set_attributes(attributes);
        }
        let trace_id = server.span_context().trace_id();
        let traced = trace_id != opentelemetry::trace::TraceId::INVALID;
        // Only the ids are `tracing` fields, both set here (a field recorded
        // later makes the JSON formatter parse and rewrite the span's
        // fields), so every log line of the request carries them.
        let span = if traced {
            // Hex made by table (`Display` of the u128 is slower), shown as
            // `Display`, so the pretty format prints it unquoted as before.
            let trace_id = crate::notes::hex(&trace_id.to_bytes());
            tracing::info_span!(
                "request",
                request_id,
                trace_id = tracing::field::display(trace_id.as_str())
            )
        } else {
            tracing::info_span!("request", request_id, trace_id = Empty)
        };
        let otel = parent.with_span(server);
        if traced {
            req.extensions_mut().insert(TraceId(trace_id));
        }
        req.extensions_mut()
            .insert(RequestTrace::new(otel.clone(), self.tracer.clone()));
        let notes = RequestNotes::get_or_insert(req.extensions_mut());
        let future = span.in_scope(|| self.inner.call(req));
        Either::Right(TelemetryFuture {
            future,
            pending: Some(Pending {
                span,
                otel,
                notes,
                method,
                started,
                request_log: self.request_log,
            }),
        })
    }
}

/// What the finishing step needs.
struct Pending {
    span: tracing::Span,
    /// The OpenTelemetry side of `span`, for its attributes and status.
    otel: opentelemetry::Context,
    notes: RequestNotes,
    method: &'static str,
    started: Instant,
    /// Log requests answered upstream too, not only refusals.
    request_log: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// A `Host` value without its port (`server.address` is the name alone):
/// an IPv6 literal keeps its brackets. A value that is not an authority is
/// reported as sent.
fn host_name(host: &str) -> String {
    match http::uri::Authority::try_from(host) {
        Ok(authority) => authority.host().to_owned(),
        Err(_) => host.to_owned(),
    }
}

impl Pending {
    /// Records everything about the finished request. `status` is `None`
    /// when the client went away before the response.
    fn finish(
        self,
        status: Option<StatusCode>,
        error_key: Option<&'static str>,
        detail: Option<&str>,
    ) {
        // Read in place rather than copied: a copy clones the route match
        // and its organization list, an allocation a request.
        self.notes
            .read(|notes| self.record(notes, status, error_key, detail));
    }

    fn record(
        &self,
        notes: &Notes,
        status: Option<StatusCode>,
        error_key: Option<&'static str>,
        detail: Option<&str>,
    ) {
        let duration = self.started.elapsed();
        let span = &self.span;
        let outcome = outcome(error_key, notes.decision.as_ref());
        let route = notes.route.as_ref();
        let operation = route.map_or(NO_OPERATION, |r| &*r.operation);
        let decision = notes
            .decision
            .as_ref()
            .map(|d| (d.word(), d.rule.as_deref().unwrap_or(NO_RULE)));
        let server = self.otel.span();
        if server.is_recording() {
            let mut attributes = Vec::with_capacity(10);
            if let Some(route) = route {
                attributes.push(KeyValue::new("http.route", route.template.to_string()));
                attributes.push(KeyValue::new(
                    "polytomic.operation",
                    route.operation.to_string(),
                ));
                if let Some(id) = &route.organization_id {
                    attributes.push(KeyValue::new("polytomic.organization_id", id.to_string()));
                }
                server.update_name(format!("{} {}", self.method, route.template));
            }
            if let Some(principal) = &notes.principal {
                attributes.push(KeyValue::new("enduser.id", principal.sub().to_owned()));
                attributes.push(KeyValue::new("enduser.teams", principal.teams().join(",")));
            }
            if let Some((word, rule)) = decision {
                attributes.push(KeyValue::new("gateway.decision", word));
                attributes.push(KeyValue::new("gateway.rule", rule.to_owned()));
            }
            attributes.push(KeyValue::new("gateway.outcome", outcome));
            if let Some(status) = status {
                attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
            }
            server.set_attributes(attributes);
            // A refusal is an error, with its key; so is a 5xx from upstream
            // (the HTTP conventions for server spans).
            match (error_key, status) {
                (Some(key), _) => server.set_status(Status::error(key)),
                (None, Some(s)) if s.is_server_error() => {
                    server.set_status(Status::error("upstream server error"))
                }
                _ => {}
            }
        }
        if error_key.is_none() && !self.request_log {
            return;
        }
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
                detail,
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
                pending.finish(None, Some(CLIENT_DISCONNECTED), None);
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
            let detail = response
                .extensions()
                .get::<ErrorMessage>()
                .map(|m| m.0.clone());
            pending.finish(Some(response.status()), error_key, detail.as_deref());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_is_the_host_without_its_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("gateway.local"), "gateway.local");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("[2001:db8::7]:443"), "[2001:db8::7]");
        assert_eq!(host_name("[fe80::1%25eth0]:8080"), "[fe80::1%25eth0]");
        assert_eq!(host_name("gateway.local:8443"), "gateway.local");
        // Credentials in the authority are not part of the name.
        assert_eq!(host_name("user:secret@gateway.local:80"), "gateway.local");
    }

    #[test]
    fn a_host_that_is_not_an_authority_is_reported_as_sent() {
        for malformed in [
            "",
            "::1",
            "[::1",
            "::1]:80",
            "[::1]]:80",
            "a:1:2",
            "host:80:90",
            "gateway local",
            "host@",
            "ho%st:80",
        ] {
            assert!(
                http::uri::Authority::try_from(malformed).is_err(),
                "{malformed:?} parses"
            );
            assert_eq!(host_name(malformed), malformed);
        }
    }
}
