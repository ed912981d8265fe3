//! Logs and traces: `[telemetry]`, the global `tracing` subscriber, the
//! OpenTelemetry tracer provider, and [`TelemetryLayer`], the per-request
//! server span.
//!
//! - **Logs** go to stderr, one JSON object per line (`log_format = "json"`)
//!   or human-readable lines (`"pretty"`), filtered by `log_level` unless
//!   `RUST_LOG` is set. Every line logged while a request is handled lists
//!   the request's span, so it carries `request_id` and `trace_id`.
//! - **Traces**: every request is a server span with child spans for
//!   authentication, policy, validation, the audit write and the upstream
//!   call (a client span whose context goes upstream as `traceparent`). A
//!   caller's `traceparent` is continued; sampling is parent-based with
//!   `sample_ratio` for new traces. With `otlp_endpoint` set, spans are
//!   exported by a background batch processor over OTLP (HTTP/protobuf or
//!   gRPC). Without it nothing is exported, but trace ids are still made,
//!   propagated upstream and written to the audit trail.
//!
//! Exporting never holds up a request: spans are queued, and when the queue
//! is full (a collector that is down or slow) they are dropped and counted
//! (`gateway_trace_spans_total{result="dropped"}`).

mod export;
mod layer;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::problem::ConfigProblem;
pub use crate::trace::{ChildSpan, RequestTrace, TraceId, TRACER_NAME};
pub use layer::{TelemetryFuture, TelemetryLayer, TelemetryService};

/// How long one export may take, including the collector's answer.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans waiting for export beyond this are dropped (and counted).
pub const MAX_QUEUED_SPANS: usize = 4096;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`POST {otlp_endpoint}/v1/traces`), usually port 4318.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC, usually port 4317.
    #[serde(rename = "grpc")]
    Grpc,
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines (colored on a terminal).
    Pretty,
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The OTLP collector, e.g. `http://127.0.0.1:4318`; empty: no export.
    pub otlp_endpoint: String,
    /// `http/protobuf` or `grpc`.
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces sampled (0 to 1); a caller's sampled flag wins.
    pub sample_ratio: f64,
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `warn,polytomic_gateway=debug`;
    /// `RUST_LOG` overrides it.
    pub log_level: String,
    /// One info line for every request answered upstream. Off by default:
    /// the audit record is the request log, and the line would repeat it
    /// (and cost a blocking write on the request path). Refusals are always
    /// logged, at warn.
    pub request_log: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: "polytomic-gateway".into(),
            otlp_endpoint: String::new(),
            otlp_protocol: OtlpProtocol::default(),
            sample_ratio: 1.0,
            log_format: LogFormat::default(),
            log_level: "info".into(),
            request_log: false,
        }
    }
}

impl TelemetryConfig {
    /// Every problem with `[telemetry]`.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.service_name.trim().is_empty() {
            problems.push(ConfigProblem::new(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push(ConfigProblem::new(
                "telemetry.sample_ratio",
                format!("must be between 0 and 1, not {}", self.sample_ratio),
            ));
        }
        if let Err(e) = EnvFilter::builder().parse(&self.log_level) {
            problems.push(ConfigProblem::new(
                "telemetry.log_level",
                format!("{:?} is not a log filter: {e}", self.log_level),
            ));
        }
        if let Err(e) = self.traces_endpoint() {
            problems.push(ConfigProblem::new("telemetry.otlp_endpoint", e));
        }
        problems
    }

    /// The URL spans are sent to, if export is on.
    fn traces_endpoint(&self) -> Result<Option<String>, String> {
        if self.otlp_endpoint.is_empty() {
            return Ok(None);
        }
        let key = "telemetry.otlp_endpoint";
        match self.otlp_protocol {
            OtlpProtocol::HttpProtobuf => {
                crate::client::signal_endpoint(&self.otlp_endpoint, "/v1/traces", key)
                    .map(|uri| Some(uri.to_string()))
            }
            OtlpProtocol::Grpc => {
                crate::client::signal_endpoint(&self.otlp_endpoint, "", key)?;
                Ok(Some(self.otlp_endpoint.trim_end_matches('/').to_owned()))
            }
        }
    }
}

/// Span export counters, for `gateway_trace_spans_total`.
#[derive(Debug, Default)]
pub struct SpanStats {
    /// Spans taken into the export queue.
    pub queued: AtomicU64,
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans lost: the queue was full, or their export failed.
    pub dropped: AtomicU64,
    /// Spans whose export failed (a part of `dropped`).
    pub failed: AtomicU64,
}

/// The installed tracer provider; shut it down to flush pending spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    stats: Arc<SpanStats>,
    exporting: bool,
    log_filter: LogFilter,
}

/// Changes the running log filter (`telemetry.log_level`) when the config
/// is reloaded. Cheap to clone.
#[derive(Clone, Default)]
pub struct LogFilter {
    /// None: no subscriber of ours is installed (another one was first).
    handle: Option<tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFilter")
            .field("installed", &self.handle.is_some())
            .finish()
    }
}

impl LogFilter {
    /// Filters log lines by `level` from now on. `RUST_LOG`, when set,
    /// keeps winning over the config, as it does at start; then this does
    /// nothing and returns false.
    pub fn set(&self, level: &str) -> Result<bool, String> {
        let Some(handle) = &self.handle else {
            return Ok(false);
        };
        if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
            return Ok(false);
        }
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// Installs the global subscriber (logs, and spans into OpenTelemetry) as
/// `config` says. Must run inside a Tokio runtime when `otlp_endpoint` is
/// set: exports run on it. `tls` carries the trust roots for an `https`
/// HTTP/protobuf endpoint (the upstream's, including `upstream.ca_file`).
pub fn init(
    config: &TelemetryConfig,
    tls: Option<crate::client::JwksConnector>,
) -> Result<Telemetry, Vec<ConfigProblem>> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(problems);
    }
    let stats = Arc::new(SpanStats::default());
    let endpoint = config
        .traces_endpoint()
        .map_err(|e| vec![ConfigProblem::new("telemetry.otlp_endpoint", e)])?;
    // Without an exporter nothing would read a recorded span: new traces are
    // not sampled (their ids are still made, propagated and audited), and a
    // caller's sampled flag is still passed on.
    let ratio = if endpoint.is_some() {
        config.sample_ratio
    } else {
        0.0
    };
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource);
    let exporting = endpoint.is_some();
    if let Some(endpoint) = endpoint {
        let exporter = match config.otlp_protocol {
            OtlpProtocol::HttpProtobuf => {
                let Some(tls) = tls else {
                    return Err(vec![ConfigProblem::new(
                        "telemetry.otlp_endpoint",
                        "cannot be reached: fix [upstream] first (its TLS settings are used)",
                    )]);
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(export::HyperExportClient::new(tls, EXPORT_TIMEOUT))
                    .with_endpoint(endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()
            }
            OtlpProtocol::Grpc => {
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(EXPORT_TIMEOUT);
                if endpoint.starts_with("https:") {
                    exporter = exporter.with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_webpki_roots(),
                    );
                }
                exporter.build()
            }
        }
        .map_err(|e| {
            vec![ConfigProblem::new(
                "telemetry.otlp_endpoint",
                format!("cannot build the span exporter: {e}"),
            )]
        })?;
        let exporter = export::CountingExporter::new(exporter, stats.clone());
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUED_SPANS)
                    .build(),
            )
            .build();
        builder = builder.with_span_processor(export::BoundedProcessor::new(
            batch,
            stats.clone(),
            MAX_QUEUED_SPANS as u64,
        ));
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let log_filter = install_subscriber(config);
    Ok(Telemetry {
        provider,
        stats,
        exporting,
        log_filter,
    })
}

/// The server span of a request ([`TelemetryLayer`]).
fn is_request_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span()
        && metadata.name() == "request"
        && metadata.target() == "polytomic_gateway::telemetry::layer"
}

fn install_subscriber(config: &TelemetryConfig) -> LogFilter {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (subscriber, handle) = reloadable_subscriber(config, std::io::stderr, ansi);
    match subscriber.try_init() {
        Ok(()) => LogFilter {
            handle: Some(handle),
        },
        Err(_) => LogFilter::default(),
    }
}

/// The gateway's log subscriber: logs to `writer` as `config` says. [`init`]
/// installs it globally, writing to stderr; benchmarks use it with other
/// writers. (Spans go to OpenTelemetry through the global tracer provider,
/// not through `tracing`: see [`RequestTrace`].)
pub fn subscriber<W>(
    config: &TelemetryConfig,
    writer: W,
    ansi: bool,
) -> impl tracing::Subscriber + Send + Sync + for<'span> tracing_subscriber::registry::LookupSpan<'span>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    reloadable_subscriber(config, writer, ansi).0
}

/// [`subscriber`], and the handle that changes its log filter.
fn reloadable_subscriber<W>(
    config: &TelemetryConfig,
    writer: W,
    ansi: bool,
) -> (
    impl tracing::Subscriber + Send + Sync + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    };
    // Events as the log filter says. Of the spans, only a request's own
    // (its ids, nothing else) and at any level, so every line logged while
    // handling a request, a warning too, lists its request id and trace id.
    let fmt = fmt.with_filter(
        filter_fn(|metadata: &tracing::Metadata<'_>| metadata.is_event())
            .and(filter)
            .or(filter_fn(is_request_span)),
    );
    (tracing_subscriber::registry().with(fmt), handle)
}

impl Telemetry {
    /// Changes the log filter on reload.
    pub fn log_filter(&self) -> LogFilter {
        self.log_filter.clone()
    }

    /// Export counters, for metrics.
    pub fn span_stats(&self) -> Arc<SpanStats> {
        self.stats.clone()
    }

    /// Exports the spans still queued, waiting at most `grace` (at least a
    /// quarter second, so a drain that used the whole grace still flushes).
    pub async fn shutdown(self, grace: Duration) {
        let grace = grace.max(Duration::from_millis(250));
        let provider = self.provider;
        let (done, flushed) = tokio::sync::oneshot::channel();
        // A plain thread, not `spawn_blocking`: the runtime must not wait for
        // an export stuck on a collector that does not answer.
        let spawned = std::thread::Builder::new()
            .name("span-flush".into())
            .spawn(move || {
                let _ = done.send(provider.shutdown_with_timeout(grace));
            });
        let result = match spawned {
            Ok(_) => tokio::time::timeout(grace + Duration::from_millis(100), flushed).await,
            Err(_) => return,
        };
        if self.exporting && !matches!(result, Ok(Ok(Ok(())))) {
            tracing::warn!("pending spans were not all exported before shutdown");
        }
    }
}

/// Installs plain logging for one-shot commands (`check`, `token`,
/// `policy explain`): human-readable, `RUST_LOG` or `info`.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert!(TelemetryConfig::default().validate().is_empty());
        let config = TelemetryConfig {
            sample_ratio: -0.1,
            otlp_endpoint: "http://127.0.0.1:4318/?token=x".into(),
            ..TelemetryConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["telemetry.sample_ratio", "telemetry.otlp_endpoint"]);
    }

    #[test]
    fn the_traces_url_gets_the_signal_path_for_http_only() {
        let mut config = TelemetryConfig {
            otlp_endpoint: "http://127.0.0.1:4318/".into(),
            ..TelemetryConfig::default()
        };
        assert_eq!(
            config.traces_endpoint().unwrap().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        config.otlp_protocol = OtlpProtocol::Grpc;
        config.otlp_endpoint = "http://127.0.0.1:4317".into();
        assert_eq!(
            config.traces_endpoint().unwrap().as_deref(),
            Some("http://127.0.0.1:4317")
        );
        config.otlp_endpoint = String::new();
        assert_eq!(config.traces_endpoint().unwrap(), None);
    }
}
