//! The request's OpenTelemetry spans, made with the OpenTelemetry API.
//!
//! Foundation: the telemetry layer
//! (`telemetry::TelemetryLayer`) starts the server
//! span and puts a [`RequestTrace`] (and a [`TraceId`]) in the request's
//! extensions; each layer below opens its child span (`auth`, `policy`,
//! `validate`, `audit.write`, `upstream`) from it, without importing the
//! telemetry layer. Spans come from the global tracer provider, which
//! `telemetry::init` sets; a library user sets their own, or none (then
//! every span is a no-op: no trace id is made, though a caller's
//! `traceparent` is still carried through to the upstream and the audit).
//!
//! These are not `tracing` spans bridged to OpenTelemetry: that bridge costs
//! a registry entry, per-layer filtering and an OpenTelemetry context switch
//! on every enter and exit of every span, which measured as a large share
//! of the gateway's per-request CPU (BENCHMARKS.md). Logs keep one `tracing`
//! span per request, carrying the request and trace ids.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};

/// The instrumentation scope the gateway's spans are made under.
pub const TRACER_NAME: &str = "polytomic-gateway";

/// The request's trace id, for the audit record. Present when a global
/// OpenTelemetry tracer provider is installed; without one, only when the
/// caller sent a valid `traceparent` (its trace id is carried through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub opentelemetry::trace::TraceId);

/// The `method` label of metrics and span names: a standard method's name,
/// else `_OTHER` (as the OpenTelemetry HTTP conventions say), so a client
/// cannot mint labels.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// A tracer from the global provider (cheap to clone).
pub fn global_tracer() -> Arc<BoxedTracer> {
    Arc::new(opentelemetry::global::tracer(TRACER_NAME))
}

/// The server span of a request (as an OpenTelemetry context) and the
/// tracer, so the layers below can open child spans under it.
#[derive(Clone)]
pub struct RequestTrace {
    cx: Context,
    tracer: Arc<BoxedTracer>,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("span_context", self.cx.span().span_context())
            .finish_non_exhaustive()
    }
}

impl RequestTrace {
    /// The trace of a request whose server span is `cx`'s active span,
    /// its child spans made by `tracer`.
    pub fn new(cx: Context, tracer: Arc<BoxedTracer>) -> Self {
        Self { cx, tracer }
    }

    /// The server span's context.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Starts a child span of the server span; it ends when dropped.
    /// `attributes` are only built when the span records.
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> ChildSpan {
        let mut builder = self.tracer.span_builder(name).with_kind(kind);
        if self.cx.span().is_recording() {
            builder = builder.with_attributes(attributes());
        }
        ChildSpan(builder.start_with_context(&*self.tracer, &self.cx))
    }

    /// A child span of the request in `extensions`, if it has a trace.
    pub fn child_of(
        extensions: &http::Extensions,
        name: &'static str,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<ChildSpan> {
        extensions
            .get::<RequestTrace>()
            .map(|trace| trace.child(name, kind, attributes))
    }
}

/// A child span; ended when dropped.
pub struct ChildSpan(BoxedSpan);

impl std::fmt::Debug for ChildSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ChildSpan")
            .field(self.0.span_context())
            .finish()
    }
}

impl ChildSpan {
    /// Sets an attribute, if the span records.
    pub fn set(&mut self, attribute: impl FnOnce() -> KeyValue) {
        if self.0.is_recording() {
            self.0.set_attribute(attribute());
        }
    }

    /// A context whose active span is this one, to propagate it
    /// (`traceparent`).
    pub fn context(&self) -> Context {
        Context::new().with_remote_span_context(self.0.span_context().clone())
    }
}

/// Sets an attribute on an optional child span.
pub fn set(span: &mut Option<ChildSpan>, attribute: impl FnOnce() -> KeyValue) {
    if let Some(span) = span {
        span.set(attribute);
    }
}
