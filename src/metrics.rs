//! Prometheus metrics, served as text on `GET /metrics` by the health layer
//! (`health::HealthLayer::with_metrics`, given [`Metrics::encode`]).
//!
//! The request-path families are updated by [`MetricsLayer`]
//! once per request, from the request's [`crate::notes`]. The components
//! that keep their own counters (the JWKS key store, the audit writer and
//! shipper, the span exporter) are read at scrape time instead, so they stay
//! free of any metrics dependency: [`Metrics::watch_jwks`] and friends
//! register a function that copies those counters in before each scrape.
//!
//! Label values come only from bounded sets: configured operation and rule
//! names, standard methods (others are `_OTHER`), status codes and fixed
//! outcome words. Raw paths and subjects never become labels.
//!
//! ```
//! use polytomic_gateway::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! let text = String::from_utf8(metrics.encode()).unwrap();
//! assert!(text.contains("# TYPE gateway_inflight_requests gauge"));
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::GatewayBody;
use crate::error::ErrorKey;
use crate::notes::{outcome, RequestNotes, CLIENT_DISCONNECTED};
pub use crate::notes::{NO_OPERATION, NO_RULE};
pub use crate::trace::method_label;

/// The `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request latency buckets, in seconds: 250µs to 10s.
const DURATION_BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type SyncFn = Box<dyn Fn() + Send + Sync>;

/// The gateway's metrics registry and families. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    inflight: IntGauge,
    policy_decisions: IntCounterVec,
    jwks_refresh: IntCounterVec,
    jwks_keys: IntGauge,
    audit_records: IntCounterVec,
    audit_spool_bytes: IntGauge,
    audit_queue_bytes: IntGauge,
    spans: IntCounterVec,
    connections_shed: IntCounterVec,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_loaded_at: Gauge,
    /// Copy component counters into the families above, before a scrape.
    syncs: Mutex<Vec<SyncFn>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let family = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(family.clone()))
        .expect("unique metric");
    family
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    let family = HistogramVec::new(opts, labels).expect("valid metric");
    registry
        .register(Box::new(family.clone()))
        .expect("unique metric");
    family
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("unique metric");
    gauge
}

/// Raises `counter` to `total`: component counters only grow, and only the
/// scrape (under the syncs lock) writes these.
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// What one finished request contributes.
#[derive(Debug)]
pub struct RequestMetrics<'a> {
    /// The route's operation, or [`NO_OPERATION`].
    pub operation: &'a str,
    /// The method label (see [`method_label`]).
    pub method: &'static str,
    /// The response status code; `None` when the client went away first.
    pub status: Option<http::StatusCode>,
    /// The audit outcome word.
    pub outcome: &'static str,
    /// Arrival to response headers.
    pub duration: Duration,
    /// The upstream exchange, if there was one.
    pub upstream: Option<Duration>,
    /// The policy decision (`allow`, `deny`, `shadow_deny`) and its rule.
    pub decision: Option<(&'static str, &'a str)>,
}

impl Metrics {
    /// A registry with every family registered and no samples yet.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "gateway_requests_total",
            "Requests answered, by operation, method, status and outcome.",
            &["operation", "method", "status", "outcome"],
        );
        let request_duration = histogram(
            &registry,
            "gateway_request_duration_seconds",
            "Time from a request's arrival to its response headers.",
            &["operation", "outcome"],
        );
        let upstream_duration = histogram(
            &registry,
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to Polytomic's response headers.",
            &["operation"],
        );
        let inflight = gauge(
            &registry,
            "gateway_inflight_requests",
            "Requests being handled now.",
        );
        let policy_decisions = counter(
            &registry,
            "gateway_policy_decisions_total",
            "Policy decisions, by operation, decision and deciding rule.",
            &["operation", "decision", "rule"],
        );
        let jwks_refresh = counter(
            &registry,
            "gateway_jwks_refresh_total",
            "JWKS fetches, by result (ok, error).",
            &["result"],
        );
        let jwks_keys = gauge(
            &registry,
            "gateway_jwks_keys",
            "Signing keys currently trusted.",
        );
        let audit_records = counter(
            &registry,
            "gateway_audit_records_total",
            "Audit records by sink and result (written, failed, dropped; shipped for otlp).",
            &["sink", "result"],
        );
        let audit_spool_bytes = gauge(
            &registry,
            "gateway_audit_spool_bytes",
            "Bytes in the OTLP audit spool not yet acknowledged by the collector.",
        );
        let audit_queue_bytes = gauge(
            &registry,
            "gateway_audit_queue_bytes",
            "Bytes of audit records in memory, queued or being written (at most audit.queue_max_bytes).",
        );
        let spans = counter(
            &registry,
            "gateway_trace_spans_total",
            "Spans handed to the trace exporter, by result (exported, dropped).",
            &["result"],
        );
        let connections_shed = counter(
            &registry,
            "gateway_connections_shed_total",
            "Connections refused past server.max_connections, by how (answered: one 503 overloaded; closed: at once, past the cap on connections being answered).",
            &["how"],
        );
        let config_reloads = counter(
            &registry,
            "gateway_config_reloads_total",
            "Config reloads (SIGHUP or a watched file changing), by result (ok, failed: the config in force stays).",
            &["result"],
        );
        let config_info = IntGaugeVec::new(
            Opts::new(
                "gateway_config_info",
                "The config in force: 1, labelled with its version (SHA-256 of its effective content).",
            ),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(config_info.clone()))
            .expect("unique metric");
        let config_loaded_at = Gauge::new(
            "gateway_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (at start, or by the last successful reload), in Unix seconds.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(config_loaded_at.clone()))
            .expect("unique metric");
        Self {
            inner: Arc::new(Inner {
                config_reloads,
                config_info,
                config_loaded_at,
                registry,
                requests,
                request_duration,
                upstream_duration,
                inflight,
                policy_decisions,
                jwks_refresh,
                jwks_keys,
                audit_records,
                audit_spool_bytes,
                audit_queue_bytes,
                spans,
                connections_shed,
                syncs: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Counts a connection refused past `server.max_connections`: answered
    /// with a 503, or closed at once.
    pub fn connection_shed(&self, answered: bool) {
        let how = if answered { "answered" } else { "closed" };
        self.inner.connections_shed.with_label_values(&[how]).inc();
    }

    /// Counts a request as started; the guard counts it finished when dropped.
    pub fn inflight(&self) -> InflightGuard {
        self.inner.inflight.inc();
        InflightGuard(self.inner.inflight.clone())
    }

    /// Records one finished request.
    pub fn record_request(&self, request: &RequestMetrics<'_>) {
        let inner = &self.inner;
        let status = request.status.as_ref().map_or("", http::StatusCode::as_str);
        inner
            .requests
            .with_label_values(&[request.operation, request.method, status, request.outcome])
            .inc();
        inner
            .request_duration
            .with_label_values(&[request.operation, request.outcome])
            .observe(request.duration.as_secs_f64());
        if let Some(upstream) = request.upstream {
            inner
                .upstream_duration
                .with_label_values(&[request.operation])
                .observe(upstream.as_secs_f64());
        }
        if let Some((decision, rule)) = request.decision {
            inner
                .policy_decisions
                .with_label_values(&[request.operation, decision, rule])
                .inc();
        }
    }

    /// Reports the fetch results and key count of the key store `keys`
    /// returns (as `counts` reads them), at every scrape. A reload may
    /// replace the store: the counters then go on from where they were.
    pub fn watch_jwks<K: Send + Sync + 'static>(
        &self,
        keys: impl Fn() -> Arc<K> + Send + Sync + 'static,
        counts: impl Fn(&K) -> JwksCounts + Send + Sync + 'static,
    ) {
        let refresh_ok = self.inner.jwks_refresh.with_label_values(&["ok"]);
        let refresh_error = self.inner.jwks_refresh.with_label_values(&["error"]);
        let gauge = self.inner.jwks_keys.clone();
        // The store last seen, and the counts from before it.
        let seen: Mutex<Option<(Arc<K>, u64, u64)>> = Mutex::new(None);
        self.add_sync(Box::new(move || {
            let keys = keys();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let (ok_before, failed_before) = match &*seen {
                Some((store, ok, failed)) if Arc::ptr_eq(store, &keys) => (*ok, *failed),
                _ => {
                    let before = (refresh_ok.get(), refresh_error.get());
                    *seen = Some((keys.clone(), before.0, before.1));
                    before
                }
            };
            let counts = counts(&keys);
            catch_up(&refresh_ok, ok_before + counts.fetch_ok);
            catch_up(&refresh_error, failed_before + counts.fetch_failed);
            gauge.set(i64::try_from(counts.keys).unwrap_or(i64::MAX));
        }));
    }

    /// Notes the config in force: at start, and after each successful
    /// reload (`ok`, counted in `gateway_config_reloads_total`).
    pub fn config_loaded(&self, version: &str, reloaded: bool) {
        if reloaded {
            self.inner.config_reloads.with_label_values(&["ok"]).inc();
        }
        self.inner.config_info.reset();
        self.inner.config_info.with_label_values(&[version]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.inner.config_loaded_at.set(now.as_secs_f64());
    }

    /// Counts a reload that failed: the config in force stays.
    pub fn config_reload_failed(&self) {
        self.inner
            .config_reloads
            .with_label_values(&["failed"])
            .inc();
    }

    /// Reports the audit trail's per-sink record counts, spool size and
    /// queued bytes, as `audit` reads them, at every scrape.
    pub fn watch_audit(&self, audit: impl Fn() -> AuditCounts + Send + Sync + 'static) {
        let family = self.inner.audit_records.clone();
        let spool = self.inner.audit_spool_bytes.clone();
        let queue = self.inner.audit_queue_bytes.clone();
        self.add_sync(Box::new(move || {
            let audit = audit();
            for (sink, counts) in audit.sinks {
                catch_up(
                    &family.with_label_values(&[sink, "written"]),
                    counts.written,
                );
                catch_up(&family.with_label_values(&[sink, "failed"]), counts.failed);
                catch_up(
                    &family.with_label_values(&[sink, "dropped"]),
                    counts.dropped,
                );
                if let Some(shipped) = counts.shipped {
                    catch_up(&family.with_label_values(&[sink, "shipped"]), shipped);
                }
            }
            spool.set(i64::try_from(audit.unshipped_bytes).unwrap_or(i64::MAX));
            queue.set(i64::try_from(audit.queued_bytes).unwrap_or(i64::MAX));
        }));
    }

    /// Reports span export results, as `spans` reads them, at every scrape.
    pub fn watch_spans(&self, spans: impl Fn() -> SpanCounts + Send + Sync + 'static) {
        let exported = self.inner.spans.with_label_values(&["exported"]);
        let dropped = self.inner.spans.with_label_values(&["dropped"]);
        self.add_sync(Box::new(move || {
            let spans = spans();
            catch_up(&exported, spans.exported);
            catch_up(&dropped, spans.dropped);
        }));
    }

    fn add_sync(&self, sync: SyncFn) {
        self.inner
            .syncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sync);
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        {
            let syncs = self.inner.syncs.lock().unwrap_or_else(|p| p.into_inner());
            for sync in syncs.iter() {
                sync();
            }
        }
        let mut text = Vec::with_capacity(8 * 1024);
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.inner.registry.gather(), &mut text);
        text
    }
}

/// The JWKS key store's counters, as [`Metrics::watch_jwks`] reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct JwksCounts {
    /// Fetches of `auth.jwks_url` that succeeded.
    pub fetch_ok: u64,
    /// Fetches that failed.
    pub fetch_failed: u64,
    /// Keys in the store.
    pub keys: usize,
}

/// One audit sink's record counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkCounts {
    /// Records the sink took.
    pub written: u64,
    /// Records the sink failed to take.
    pub failed: u64,
    /// Records lost before any sink because the queue was full.
    pub dropped: u64,
    /// Records a collector acknowledged (shipping sinks only).
    pub shipped: Option<u64>,
}

/// The audit trail's counters, as [`Metrics::watch_audit`] reads them.
#[derive(Debug, Clone, Default)]
pub struct AuditCounts {
    /// Each sink, by its label.
    pub sinks: Vec<(&'static str, SinkCounts)>,
    /// Bytes in the shipping spool not yet acknowledged.
    pub unshipped_bytes: u64,
    /// Bytes queued for the writer.
    pub queued_bytes: u64,
}

/// The span exporter's counters, as [`Metrics::watch_spans`] reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanCounts {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost: the queue was full, or their export failed.
    pub dropped: u64,
}

/// Decrements `gateway_inflight_requests` when dropped.
#[derive(Debug)]
pub struct InflightGuard(IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records the request families (`gateway_requests_total`, the duration
/// histograms, `gateway_inflight_requests`, `gateway_policy_decisions_total`)
/// once per request, from the request's [`RequestNotes`]: the route's
/// operation, the policy decision and the upstream timing that the layers
/// inside it noted.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
    skip: &'static [&'static str],
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, skip: &[] }
    }

    /// Requests for these paths are not counted (health probes).
    pub fn skip_paths(mut self, paths: &'static [&'static str]) -> Self {
        self.skip = paths;
        self
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
            skip: self.skip,
        }
    }
}

/// The service built by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
    skip: &'static [&'static str],
}

impl<S, B> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = Either<S::Future, MetricsFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.skip.contains(&req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        let pending = Pending {
            started: Instant::now(),
            method: method_label(req.method()),
            notes: RequestNotes::get_or_insert(req.extensions_mut()),
            metrics: self.metrics.clone(),
            _inflight: self.metrics.inflight(),
        };
        Either::Right(MetricsFuture {
            future: self.inner.call(req),
            pending: Some(pending),
        })
    }
}

/// What recording a finished request needs.
struct Pending {
    started: Instant,
    method: &'static str,
    notes: RequestNotes,
    metrics: Metrics,
    /// Counts the request in flight until dropped.
    _inflight: InflightGuard,
}

impl Pending {
    /// Records the request. `status` is `None` when the client went away
    /// before the response.
    fn finish(self, status: Option<StatusCode>, error_key: Option<&'static str>) {
        let duration = self.started.elapsed();
        self.notes.read(|notes| {
            let operation = notes.route.as_ref().map_or(NO_OPERATION, |r| &*r.operation);
            self.metrics.record_request(&RequestMetrics {
                operation,
                method: self.method,
                status,
                outcome: outcome(error_key, notes.decision.as_ref()),
                duration,
                upstream: notes.upstream_duration,
                decision: notes
                    .decision
                    .as_ref()
                    .map(|d| (d.word(), d.rule.as_deref().unwrap_or(NO_RULE))),
            });
        });
    }
}

pin_project! {
    /// Response future of [`MetricsService`]: records the request when it
    /// finishes, or when it is dropped (the client went away).
    pub struct MetricsFuture<F> {
        #[pin]
        future: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for MetricsFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.finish(None, Some(CLIENT_DISCONNECTED));
            }
        }
    }
}

impl<F, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let (Some(pending), Ok(response)) = (this.pending.take(), &result) {
            let error_key = response.extensions().get::<ErrorKey>().map(|k| k.0);
            pending.finish(Some(response.status()), error_key);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn requests_are_counted_with_bounded_labels() {
        let metrics = Metrics::new();
        let guard = metrics.inflight();
        assert!(String::from_utf8(metrics.encode())
            .unwrap()
            .contains("gateway_inflight_requests 1"));
        drop(guard);
        metrics.record_request(&RequestMetrics {
            operation: "updateOrganization",
            method: method_label(&http::Method::PUT),
            status: Some(http::StatusCode::OK),
            outcome: "allowed",
            duration: Duration::from_millis(3),
            upstream: Some(Duration::from_millis(2)),
            decision: Some(("allow", "platform-admins")),
        });
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(text.contains("gateway_inflight_requests 0"), "{text}");
        assert!(text.contains(
            r#"gateway_requests_total{method="PUT",operation="updateOrganization",outcome="allowed",status="200"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"gateway_policy_decisions_total{decision="allow",operation="updateOrganization",rule="platform-admins"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"gateway_upstream_duration_seconds_count{operation="updateOrganization"} 1"#
        ));
        assert_eq!(
            method_label(&http::Method::from_bytes(b"BREW").unwrap()),
            "_OTHER"
        );
    }

    #[test]
    fn component_counters_are_caught_up_at_scrape_time() {
        let metrics = Metrics::new();
        let exported = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = exported.clone();
        metrics.watch_spans(move || SpanCounts {
            exported: counter.load(Ordering::Relaxed),
            dropped: 0,
        });
        exported.store(5, Ordering::Relaxed);
        assert!(String::from_utf8(metrics.encode())
            .unwrap()
            .contains(r#"gateway_trace_spans_total{result="exported"} 5"#));
        exported.store(7, Ordering::Relaxed);
        assert!(String::from_utf8(metrics.encode())
            .unwrap()
            .contains(r#"gateway_trace_spans_total{result="exported"} 7"#));
    }
}
