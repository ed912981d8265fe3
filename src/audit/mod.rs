//! The audit trail: one redacted record for every request, durable.
//!
//! [`AuditLayer`] sits near the edge. It gives each request a
//! [`RequestNotes`] slot that the inner layers fill in (principal, route,
//! decision, body, upstream status), and when the response body has ended
//! it writes a `response` record, for allowed and refused requests alike: a
//! body cut off midway is recorded as an upstream failure, one the client
//! stopped reading as cancelled (with the status it was sent). A response
//! that has no body on the wire (to `HEAD`, or 204 and 304) is recorded
//! when its head is ready.
//!
//! [`AuditRequestLayer`] sits just before the credential swap. For write
//! requests (`POST`, `PUT`, `PATCH`, `DELETE`) it writes a `request` record
//! and, unless `durability = "none"`, waits until the writer reports it
//! durable before forwarding: no organization changes without a trace. If the
//! record cannot be made durable and `on_failure = "reject"`, the request is
//! answered 503 `audit_unavailable` and not forwarded.
//!
//! Records go to a writer thread ([`writer`]) that group-commits; no request
//! waits for a `response` record. Secrets are redacted ([`redact`]); headers
//! other than `User-Agent` and `Idempotency-Key` are never recorded.

pub mod chain;
pub mod record;
pub mod redact;
pub mod ship;
pub mod verify;
mod writer;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use http::{header, Method, Request, Response};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tower::{Layer, Service};

use crate::body::GatewayBody;
use crate::error::{ErrorKey, GatewayError};
use crate::future::{take_ready, ResponseFuture, ThenCall};
use crate::net::{ClientAddr, ClientAddrText};
use crate::notes::ClientRequestId;
pub use crate::notes::CLIENT_DISCONNECTED;
use crate::notes::{BodyDigest, RequestNotes};
use crate::problem::ConfigProblem;
use crate::secret::SecretSourceConfig;
use crate::secret::{read_secret, CredentialSource};
use crate::trace::RequestTrace;
use record::{RequestInfo, SharedInfo};
use redact::{Redactor, DEFAULT_REDACT_FIELDS};
pub use writer::{SinkCounters, WriterStats};

/// Records waiting for the writer beyond this are refused (and counted),
/// whatever their size: it bounds the per-record bookkeeping (a queue slot,
/// a waiter's channel) that `audit.queue_max_bytes` does not count.
const QUEUE_CAPACITY: usize = 65_536;

/// At shutdown, the writer gets at least this long to write what is queued,
/// even when draining the requests used up `server.shutdown_grace`: a
/// healthy sink needs milliseconds, and the records of the requests the
/// drain cut off are among them.
pub const MIN_CLOSE_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One JSON line per record on standard output.
    Stdout,
    /// Appended to `audit.path`.
    File,
    /// Spooled to `audit.path`, then shipped to an OpenTelemetry Collector.
    Otlp,
}

/// How hard a record is pushed to disk before it counts as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Written when convenient; nothing waits.
    None,
    /// Handed to the OS (`write`) before a write request is forwarded.
    Flush,
    /// On disk (`fdatasync`) before a write request is forwarded.
    #[default]
    Fsync,
}

impl Durability {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Flush => "flush",
            Self::Fsync => "fsync",
        }
    }
}

/// What happens when a record cannot be made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Write requests get 503 `audit_unavailable` and are not forwarded.
    #[default]
    Reject,
    /// Forward anyway; the failure is counted and logged.
    Continue,
}

/// `[audit]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Any of `stdout`, `file`, `otlp`.
    #[serde(default = "default_sinks")]
    pub sinks: Vec<SinkKind>,
    /// The audit file, for the `file` sink.
    pub path: Option<PathBuf>,
    /// `none`, `flush` or `fsync`.
    #[serde(default)]
    pub durability: Durability,
    /// `reject` or `continue`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Keys whose values are redacted anywhere in a body or query.
    #[serde(default = "default_redact_fields")]
    pub redact_fields: Vec<String>,
    /// A secret for fingerprinting redacted values (HMAC-SHA256).
    pub fingerprint_key: Option<SecretSourceConfig>,
    /// OTLP/HTTP logs endpoint, for the `otlp` sink.
    pub otlp_endpoint: Option<String>,
    /// The most un-shipped audit data kept on disk for `otlp`.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// A PKCS#8 Ed25519 private key (PEM) that signs checkpoints.
    pub signing_key: Option<SecretSourceConfig>,
    /// A checkpoint at most this long after a record.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: std::time::Duration,
    /// A checkpoint at most this many records apart.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
    /// The most record bytes held in memory, queued or being written; past
    /// it a record is refused (a write request per `on_failure`, any other
    /// record dropped and counted). Bounds memory when a sink stalls.
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sinks: default_sinks(),
            path: None,
            durability: Durability::default(),
            on_failure: OnFailure::default(),
            redact_fields: default_redact_fields(),
            fingerprint_key: None,
            otlp_endpoint: None,
            spool_max_bytes: default_spool_max_bytes(),
            signing_key: None,
            checkpoint_interval: default_checkpoint_interval(),
            checkpoint_records: default_checkpoint_records(),
            queue_max_bytes: default_queue_max_bytes(),
        }
    }
}

fn default_sinks() -> Vec<SinkKind> {
    vec![SinkKind::Stdout]
}
fn default_redact_fields() -> Vec<String> {
    DEFAULT_REDACT_FIELDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_checkpoint_interval() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_checkpoint_records() -> u64 {
    1000
}
/// 64 MiB: tens of thousands of typical records (a few hundred bytes to a
/// few KiB each), so seconds of a busy gateway's traffic ride out a slow
/// write, and still dozens of the largest ones (a 1 MiB body is recorded
/// in the `request` and the `response` record, and JSON escaping can grow
/// it); yet a small part of a usual container's memory limit.
fn default_queue_max_bytes() -> u64 {
    64 << 20
}

/// One sink's record counts, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkCounts {
    /// Records the sink took (for `otlp`: made durable in the spool).
    pub written: u64,
    /// Records the sink failed to take.
    pub failed: u64,
    /// Records lost before any sink because the queue was full.
    pub dropped: u64,
    /// For `otlp`: records the collector acknowledged.
    pub shipped: Option<u64>,
}

/// The audit trail: the writer, and the settings of one loaded config
/// (redaction, and the config's version that every record carries). Cheap
/// to clone.
///
/// A reload makes a new handle with [`Audit::for_config`]: records of a
/// request are made with the settings of the config that served it, and all
/// handles share one writer and one hash chain.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<AuditInner>,
    settings: Arc<Settings>,
}

/// What a reload may change about the audit trail.
#[derive(Debug)]
struct Settings {
    redactor: Redactor,
    /// Query parameters that some route marks secret (the catalog's
    /// `query_runner.run_query` `query`): redacted in every record, also of
    /// requests refused before a route matched.
    secret_query: Arc<[Box<str>]>,
    /// The version of the config in force (`config_version`).
    config_version: Arc<str>,
}

struct AuditInner {
    queue: Arc<writer::Queue>,
    /// Rate-limits the line logged for records refused by a full queue.
    drop_log: Mutex<DropLog>,
    /// How a refused body is digested (keyed with `fingerprint_key`).
    body_digest: BodyDigest,
    durability: Durability,
    on_failure: OnFailure,
    /// `audit.fingerprint_key`, which a reload does not change: a new
    /// redactor keys its fingerprints with it too.
    fingerprint: Option<Vec<u8>>,
    reopen: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
    /// `audit.sinks`, for per-sink metrics.
    sinks: Vec<SinkKind>,
    /// Spool size and shipping counters (all zero without `otlp`).
    ship_state: Arc<ship::ShipState>,
    /// The shipper, until `start_shipping` takes it.
    shipper: Mutex<Option<ship::Shipper>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The public half of `audit.signing_key`, as PEM.
    public_key: Option<String>,
}

impl Drop for AuditInner {
    /// The last `Audit` is gone: the writer writes what is queued and stops.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Records refused by a full (or closed) queue since the last line logged
/// about them: a stalled sink refuses a record per request, and must not
/// add a log line per request too.
#[derive(Debug, Default)]
struct DropLog {
    last: Option<Instant>,
    request: u64,
    response: u64,
}

impl DropLog {
    /// The shortest time between two lines.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// Notes one refused record of `stage`; `Some((request, response))`,
    /// the counts since the last line, when a line is due.
    fn note(&mut self, stage: &str, now: Instant) -> Option<(u64, u64)> {
        match stage {
            "request" => self.request += 1,
            _ => self.response += 1,
        }
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Self::EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some((
            std::mem::take(&mut self.request),
            std::mem::take(&mut self.response),
        ))
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("durability", &self.inner.durability)
            .field("on_failure", &self.inner.on_failure)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `[audit]` validated, its secrets read: what starting it needs.
struct Prepared {
    endpoint: Option<http::Uri>,
    queue_max_bytes: usize,
    fingerprint: Option<Vec<u8>>,
    signer: Option<chain::Signer>,
    file_sink: bool,
}

impl Prepared {
    /// Validates `config`; `connector`: whether the upstream's TLS
    /// settings are there to reach the OTLP collector.
    fn from_config(config: &AuditConfig, connector: bool) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let otlp = config.sinks.contains(&SinkKind::Otlp);
        let file_sink = config.sinks.contains(&SinkKind::File) || otlp;
        if file_sink && config.path.is_none() {
            problems.push(ConfigProblem::new(
                "audit.path",
                "is required for the \"file\" and \"otlp\" sinks (for otlp it is the spool)",
            ));
        }
        let endpoint = match (otlp, &config.otlp_endpoint) {
            (false, _) => None,
            (true, None) => {
                problems.push(ConfigProblem::new(
                    "audit.otlp_endpoint",
                    "is required for the \"otlp\" sink",
                ));
                None
            }
            (true, Some(raw)) => match ship::logs_endpoint(raw) {
                Ok(uri) => Some(uri),
                Err(e) => {
                    problems.push(ConfigProblem::new("audit.otlp_endpoint", e));
                    None
                }
            },
        };
        if otlp && !connector {
            problems.push(ConfigProblem::new(
                "audit.otlp_endpoint",
                "cannot be reached: fix [upstream] first",
            ));
        }
        if config.sinks.is_empty() {
            problems.push(ConfigProblem::new(
                "audit.sinks",
                "must list at least one sink",
            ));
        }
        let queue_max_bytes = match usize::try_from(config.queue_max_bytes) {
            Ok(0) => {
                problems.push(ConfigProblem::new(
                    "audit.queue_max_bytes",
                    "must be at least 1 (it bounds the memory audit records may take)",
                ));
                0
            }
            Ok(bytes) => bytes,
            Err(_) => usize::MAX,
        };
        let fingerprint = match &config.fingerprint_key {
            None => None,
            Some(source) => {
                match CredentialSource::from_parts(
                    "audit.fingerprint_key",
                    source.env.as_ref(),
                    source.file.as_ref(),
                )
                .and_then(|s| {
                    let key = s.key_under("audit.fingerprint_key");
                    read_secret(&s).map_err(|e| ConfigProblem::new(key, e))
                }) {
                    Ok(secret) => Some(secret.into_bytes()),
                    Err(problem) => {
                        problems.push(problem);
                        None
                    }
                }
            }
        };
        let signer = match &config.signing_key {
            None => None,
            Some(source) => {
                match CredentialSource::from_parts(
                    "audit.signing_key",
                    source.env.as_ref(),
                    source.file.as_ref(),
                )
                .and_then(|s| {
                    let key = s.key_under("audit.signing_key");
                    read_secret(&s)
                        .and_then(|pem| chain::Signer::from_pem(pem.as_bytes()))
                        .map_err(|e| ConfigProblem::new(key, e))
                }) {
                    Ok(signer) => Some(signer),
                    Err(problem) => {
                        problems.push(problem);
                        None
                    }
                }
            }
        };
        for (key, zero) in [
            (
                "audit.checkpoint_interval",
                config.checkpoint_interval.is_zero(),
            ),
            ("audit.checkpoint_records", config.checkpoint_records == 0),
        ] {
            if zero {
                problems.push(ConfigProblem::new(key, "must be greater than zero"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            endpoint,
            queue_max_bytes,
            fingerprint,
            signer,
            file_sink,
        })
    }
}

impl Audit {
    /// Validates `[audit]` and starts the writer thread.
    /// `connector` (the upstream's TLS settings) is used to reach the OTLP
    /// collector.
    pub fn from_config(
        config: &AuditConfig,
        connector: Option<crate::client::JwksConnector>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let prepared = Prepared::from_config(config, connector.is_some())?;
        Self::start(config, connector, prepared)
    }

    /// Every problem with `[audit]`, without starting anything (for a
    /// reload, which does not apply it but checks it as `check` does).
    pub fn validate(config: &AuditConfig, connector: bool) -> Vec<ConfigProblem> {
        Prepared::from_config(config, connector)
            .err()
            .unwrap_or_default()
    }

    fn start(
        config: &AuditConfig,
        connector: Option<crate::client::JwksConnector>,
        prepared: Prepared,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let Prepared {
            endpoint,
            queue_max_bytes,
            fingerprint,
            signer,
            file_sink,
        } = prepared;
        let public_key = signer.as_ref().map(chain::Signer::public_key_pem);
        let checkpoints = signer.map(|signer| chain::Checkpoints {
            signer,
            interval: config.checkpoint_interval,
            records: config.checkpoint_records,
        });
        let reopen = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WriterStats::default());
        let ship_state = Arc::new(ship::ShipState::default());
        let shipper = match (endpoint, connector, &config.path) {
            (Some(endpoint), Some(connector), Some(spool)) => Some(ship::Shipper::new(
                spool.clone(),
                endpoint,
                connector,
                config.spool_max_bytes,
                ship_state.clone(),
            )),
            _ => None,
        };
        let queue = Arc::new(writer::Queue::new(QUEUE_CAPACITY, queue_max_bytes));
        let rx = queue.clone();
        let writer = writer::Writer {
            file: config.path.clone().filter(|_| file_sink),
            stdout: config.sinks.contains(&SinkKind::Stdout),
            durability: config.durability,
            reopen: reopen.clone(),
            stats: stats.clone(),
            appended: shipper.as_ref().map(|_| ship_state.clone()),
            checkpoints,
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| {
                vec![ConfigProblem::new(
                    "audit",
                    format!("cannot start the writer: {e}"),
                )]
            })?;
        Ok(Self {
            settings: Arc::new(Settings {
                redactor: Redactor::new(&config.redact_fields, fingerprint.as_deref()),
                secret_query: Arc::new([]),
                config_version: Arc::from(""),
            }),
            inner: Arc::new(AuditInner {
                queue,
                drop_log: Mutex::new(DropLog::default()),
                body_digest: BodyDigest::new(fingerprint.as_deref()),
                durability: config.durability,
                on_failure: config.on_failure,
                fingerprint,
                reopen,
                stats,
                sinks: config.sinks.clone(),
                ship_state,
                public_key,
                shipper: Mutex::new(shipper),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Checks that the audit file can be opened for appending (for `check`).
    pub fn probe(config: &AuditConfig) -> Result<(), ConfigProblem> {
        let spooled =
            config.sinks.contains(&SinkKind::File) || config.sinks.contains(&SinkKind::Otlp);
        match (&config.path, spooled) {
            (Some(path), true) => writer::open_append(path).map(drop).map_err(|e| {
                ConfigProblem::new(
                    "audit.path",
                    format!("cannot append to {}: {e}", path.display()),
                )
            }),
            _ => Ok(()),
        }
    }

    /// The redaction settings.
    pub fn redactor(&self) -> &Redactor {
        &self.settings.redactor
    }

    /// A handle on the same writer and chain with the settings of a newly
    /// loaded config: `redact_fields` (`audit.redact_fields`), the query
    /// parameters some route marks secret, and the config's version.
    pub fn for_config(
        &self,
        redact_fields: &[String],
        secret_query: Vec<Box<str>>,
        config_version: Arc<str>,
    ) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: Arc::new(Settings {
                redactor: Redactor::new(redact_fields, self.inner.fingerprint.as_deref()),
                secret_query: secret_query.into(),
                config_version,
            }),
        }
    }

    /// The version of the config this handle records under.
    pub fn config_version(&self) -> &Arc<str> {
        &self.settings.config_version
    }

    /// Queues a `stage: "config"` record (a reload, or the config loaded at
    /// start): `fields` follow `time` and `stage`. Never waited for; false
    /// if the queue refused it (counted like any dropped record).
    pub fn record_config(&self, fields: serde_json::Map<String, serde_json::Value>) -> bool {
        let mut record = serde_json::Map::with_capacity(fields.len() + 2);
        record.insert(
            "time".into(),
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        record.insert("stage".into(), "config".into());
        record.extend(fields);
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        self.submit("config", line, false).is_ok()
    }

    /// Counters of written, failed and dropped records.
    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }

    /// Record counts for each configured sink, named as in `audit.sinks`.
    pub fn sink_stats(&self) -> Vec<(&'static str, SinkCounts)> {
        let stats = &self.inner.stats;
        let dropped = stats.dropped.load(Ordering::Relaxed);
        let counts = |sink: &SinkCounters, shipped| SinkCounts {
            written: sink.written.load(Ordering::Relaxed),
            failed: sink.failed.load(Ordering::Relaxed),
            dropped,
            shipped,
        };
        self.inner
            .sinks
            .iter()
            .map(|kind| match kind {
                SinkKind::Stdout => ("stdout", counts(&stats.stdout, None)),
                SinkKind::File => ("file", counts(&stats.file, None)),
                // The spool is the file; what counts beyond it is shipping.
                SinkKind::Otlp => {
                    let shipped = self
                        .inner
                        .ship_state
                        .shipped_records
                        .load(Ordering::Relaxed);
                    ("otlp", counts(&stats.file, Some(shipped)))
                }
            })
            .collect()
    }

    /// Spooled bytes the OTLP collector has not acknowledged (0 without `otlp`).
    pub fn unshipped_bytes(&self) -> u64 {
        self.inner.ship_state.unshipped.load(Ordering::Relaxed)
    }

    /// Record bytes held in memory: queued, or in the batch being written
    /// (at most `audit.queue_max_bytes`, or one record when it is larger).
    pub fn queued_bytes(&self) -> u64 {
        self.inner.queue.outstanding().bytes as u64
    }

    /// How the validation layer digests a refused body for the records:
    /// HMAC-SHA256 under `audit.fingerprint_key` when it is set.
    pub fn body_digest(&self) -> BodyDigest {
        self.inner.body_digest.clone()
    }

    /// Starts shipping to the OTLP collector, if configured; runs until the
    /// returned task is aborted. Needs a Tokio runtime.
    pub fn start_shipping(&self) -> Option<tokio::task::JoinHandle<()>> {
        let shipper = self
            .inner
            .shipper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(tokio::spawn(shipper.run()))
    }

    /// Spool size and shipping counters.
    pub fn ship_state(&self) -> &ship::ShipState {
        &self.inner.ship_state
    }

    /// The public half of `audit.signing_key` (PEM, SubjectPublicKeyInfo),
    /// for `check` to print and `audit verify --public-key` to use.
    pub fn signing_public_key(&self) -> Option<&str> {
        self.inner.public_key.as_deref()
    }

    /// Reopens the audit file before the next write (on SIGHUP).
    pub fn reopen(&self) {
        self.inner.reopen.store(true, Ordering::Release);
    }

    /// Queues a record of `stage`; with `wait`, returns a receiver told
    /// whether it was made durable. `Err` means it could not even be queued
    /// (the queue is full or closed): it is counted as dropped, and logged.
    fn submit(
        &self,
        stage: &'static str,
        line: Vec<u8>,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<bool>>, ()> {
        let (ack, done) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        match self.inner.queue.push(writer::Entry::Record { line, ack }) {
            Ok(()) => Ok(done),
            Err(_) => {
                self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                let due = self
                    .inner
                    .drop_log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .note(stage, Instant::now());
                if let Some((request, response)) = due {
                    tracing::error!(
                        request_records = request,
                        response_records = response,
                        "audit queue full (audit.queue_max_bytes) or closed: records not written (counts since the last such line)"
                    );
                }
                Err(())
            }
        }
    }

    /// Writes every queued record and stops the writer, however long that
    /// takes (see [`Audit::close_within`] for a bounded wait).
    pub async fn close(&self) {
        self.close_within(std::time::Duration::MAX).await;
    }

    /// Writes every queued record and stops the writer (at shutdown),
    /// waiting at most `limit` for it: a stalled sink (standard output
    /// nobody reads, a hung disk) must not keep the process from exiting.
    /// Returns how many records were not written; when there are any, they
    /// are logged at `error` (the spool keeps what reached it, for the next
    /// start to ship).
    pub async fn close_within(&self, limit: std::time::Duration) -> usize {
        let (tx, rx) = oneshot::channel();
        let stopped = match self.inner.queue.push(writer::Entry::Shutdown(tx)) {
            Ok(()) => tokio::time::timeout(limit, rx).await.is_ok(),
            Err(_) => true, // closed before
        };
        if !stopped {
            // The writer is stuck in a write: it is left to the process
            // exit, since joining it would wait just as long.
            let left = self.inner.queue.outstanding().records;
            self.inner.queue.close();
            tracing::error!(
                records = left,
                waited = ?limit,
                "audit sink stalled at shutdown: exiting with records not written"
            );
            return left;
        }
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // Records queued after the shutdown (by requests the drain cut off).
        let left = self.inner.queue.close();
        if left > 0 {
            tracing::error!(
                records = left,
                "audit records queued after the writer stopped were not written"
            );
        }
        left
    }

    fn redacted_body(&self, notes: &crate::notes::Notes) -> Option<serde_json::Value> {
        let schema = notes.route.as_ref().and_then(|r| r.schema.as_ref());
        record::body_value(notes.body.as_ref(), |v| {
            let secrets = schema.map(|s| s.secret_paths_for(v));
            self.settings
                .redactor
                .redact_json(v, secrets.as_deref().unwrap_or_default())
        })
    }

    /// The query, redacted: by name, and by the parameters any route marks
    /// secret (whether or not this request matched one).
    fn redacted_query(&self, info: &RequestInfo) -> Option<String> {
        let query = info.raw_query.as_deref()?;
        Some(
            self.settings
                .redactor
                .redact_query(query, &self.settings.secret_query),
        )
    }
}

/// Paths the gateway answers itself; they are not Polytomic requests and are
/// not audited (load balancers probe them constantly).
const UNAUDITED_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Writes the `response` record of every request; see the module docs.
#[derive(Debug, Clone)]
pub struct AuditLayer {
    audit: Audit,
}

impl AuditLayer {
    /// A layer writing to `audit`.
    pub fn new(audit: Audit) -> Self {
        Self { audit }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            audit: self.audit.clone(),
        }
    }
}

/// The service built by [`AuditLayer`].
#[derive(Debug, Clone)]
pub struct AuditService<S> {
    inner: S,
    audit: Audit,
}

fn header_string(req: &http::HeaderMap, name: &str) -> Option<String> {
    req.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl<S, B> Service<Request<B>> for AuditService<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = AuditFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if UNAUDITED_PATHS.contains(&req.uri().path()) {
            return AuditFuture {
                future: self.inner.call(req),
                pending: None,
            };
        }
        let headers = req.headers();
        let info = Arc::new(RequestInfo {
            request_id: header_string(headers, "x-request-id").unwrap_or_default(),
            client_request_id: req
                .extensions()
                .get::<ClientRequestId>()
                .map(|id| id.as_str().to_owned()),
            trace_id: req
                .extensions()
                .get::<crate::trace::TraceId>()
                // By table: `Display` formats the u128 digit by digit.
                .map(|t| crate::notes::hex(&t.0.to_bytes()))
                .unwrap_or_default(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            raw_query: req.uri().query().map(str::to_owned),
            // Rendered once per connection when the server gave it; else
            // from the address.
            client_ip: match req.extensions().get::<ClientAddrText>() {
                Some(text) => Some(text.ip.clone()),
                None => req
                    .extensions()
                    .get::<ClientAddr>()
                    .map(|a| a.0.ip().to_string().into()),
            },
            user_agent: header_string(headers, header::USER_AGENT.as_str()),
            idempotency_key: header_string(headers, "idempotency-key"),
            config_version: self.audit.settings.config_version.clone(),
            started: Instant::now(),
        });
        // The telemetry layer, when it sits outside, made the notes already.
        let notes = RequestNotes::get_or_insert(req.extensions_mut());
        req.extensions_mut().insert(info.clone());
        AuditFuture {
            future: self.inner.call(req),
            pending: Some(Pending {
                audit: self.audit.clone(),
                info,
                notes,
            }),
        }
    }
}

/// What the response record needs once the response is ready.
#[derive(Debug)]
struct Pending {
    audit: Audit,
    info: SharedInfo,
    notes: RequestNotes,
}

impl Pending {
    /// Queues the `response` record (never waited for).
    fn write(self, status: Option<u16>, error_key: Option<&'static str>) {
        let line = self.notes.read(|notes| {
            let body = self.audit.redacted_body(notes);
            let query = self.audit.redacted_query(&self.info);
            record::line(
                "response",
                &self.info,
                notes,
                status,
                error_key,
                query,
                body,
                Some(self.info.started.elapsed()),
            )
        });
        let _ = self.audit.submit("response", line, false);
    }
}

pin_project! {
    /// Response future of [`AuditService`].
    pub struct AuditFuture<F> {
        #[pin]
        future: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for AuditFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before a response: the client went away (or the
            // connection was cut). The request may have been forwarded, so
            // it still gets its `response` record.
            if let Some(pending) = this.project().pending.take() {
                pending.write(None, Some(CLIENT_DISCONNECTED));
            }
        }
    }
}

impl<F, E> Future for AuditFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let Some(pending) = this.pending.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(result.map(|response| {
            let status = response.status().as_u16();
            let error_key = response.extensions().get::<ErrorKey>().map(|k| k.0);
            // hyper sends no body after these heads and may drop it unread:
            // the head is the whole answer, so the record is made now (else
            // a refused HEAD would be recorded as cancelled).
            if pending.info.method == Method::HEAD.as_str() || matches!(status, 204 | 304) {
                pending.write(Some(status), error_key);
                return response;
            }
            // Otherwise the record waits for the body: a response cut off
            // midway is an upstream failure, not the success its status
            // line announced, and one the client left is cancelled.
            response.map(|body| {
                crate::body::boxed(AuditedBody {
                    body,
                    pending: Some((pending, status, error_key)),
                })
            })
        }))
    }
}

/// The `error_key` of a response whose body failed after its headers.
pub const BODY_FAILED: &str = "upstream_failed";

pin_project! {
    /// A response body that writes the request's `response` record when it
    /// ends: as answered when it completes, as an upstream failure when it
    /// fails, as cancelled when it is dropped unfinished (the client left).
    struct AuditedBody {
        #[pin]
        body: GatewayBody,
        pending: Option<(Pending, u16, Option<&'static str>)>,
    }

    impl PinnedDrop for AuditedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((pending, status, error_key)) = this.pending.take() {
                // hyper may drop a body it knows is empty without polling it.
                if http_body::Body::is_end_stream(&*this.body) {
                    pending.write(Some(status), error_key);
                } else {
                    pending.write(Some(status), Some(CLIENT_DISCONNECTED));
                }
            }
        }
    }
}

impl http_body::Body for AuditedBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        let done = match &frame {
            None => Some(None),
            Some(Err(_)) => Some(Some(BODY_FAILED)),
            Some(Ok(_)) => None,
        };
        if let Some(failure) = done {
            if let Some((pending, status, error_key)) = this.pending.take() {
                pending.write(Some(status), failure.or(error_key));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Writes the durable `request` record of write requests before forwarding.
#[derive(Debug, Clone)]
pub struct AuditRequestLayer {
    audit: Audit,
}

impl AuditRequestLayer {
    /// A layer writing to `audit`.
    pub fn new(audit: Audit) -> Self {
        Self { audit }
    }
}

impl<S> Layer<S> for AuditRequestLayer {
    type Service = AuditRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditRequest {
            inner,
            audit: self.audit.clone(),
        }
    }
}

/// The service built by [`AuditRequestLayer`].
#[derive(Debug, Clone)]
pub struct AuditRequest<S> {
    inner: S,
    audit: Audit,
}

impl<S> Service<Request<GatewayBody>> for AuditRequest<S>
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Either<S::Future, ThenCall<S, S::Future>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        let is_write = matches!(
            *req.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let (Some(info), Some(notes), true) = (
            req.extensions().get::<SharedInfo>().cloned(),
            req.extensions().get::<RequestNotes>().cloned(),
            is_write,
        ) else {
            return ResponseFuture::inner(Either::Left(self.inner.call(req)));
        };
        // Covers queueing the record and, when forwarding waits for it, the
        // wait until it is durable.
        let durability = self.audit.inner.durability;
        let span =
            RequestTrace::child_of(req.extensions(), "audit.write", SpanKind::Internal, || {
                vec![KeyValue::new("audit.durability", durability.as_str())]
            });
        let line = notes.read(|notes| {
            let body = self.audit.redacted_body(notes);
            let query = self.audit.redacted_query(&info);
            record::line("request", &info, notes, None, None, query, body, None)
        });
        let wait = self.audit.inner.durability != Durability::None;
        let reject = self.audit.inner.on_failure == OnFailure::Reject;
        if reject && self.audit.inner.ship_state.full.load(Ordering::Relaxed) {
            tracing::error!("audit spool over audit.spool_max_bytes; write request refused");
            return ResponseFuture::early(GatewayError::AuditUnavailable.to_response());
        }
        let done = match self.audit.submit("request", line, wait) {
            Ok(done) => done,
            Err(()) if reject => {
                return ResponseFuture::early(GatewayError::AuditUnavailable.to_response());
            }
            Err(()) => None,
        };
        let Some(done) = done else {
            return ResponseFuture::inner(Either::Left(self.inner.call(req)));
        };
        let inner = take_ready(&mut self.inner);
        let prepare = Box::pin(async move {
            let durable = done.await.unwrap_or(false);
            drop(span);
            if durable || !reject {
                if !durable {
                    tracing::error!(
                        "audit record not durable; forwarding (on_failure = \"continue\")"
                    );
                }
                Ok(req)
            } else {
                tracing::error!(
                    "audit record not durable; request refused (on_failure = \"reject\")"
                );
                Err(GatewayError::AuditUnavailable.to_response())
            }
        });
        ResponseFuture::inner(Either::Right(ThenCall::new(prepare, inner)))
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{Entry, Outstanding, Queue};
    use super::DropLog;
    use std::time::{Duration, Instant};

    fn record(len: usize) -> Entry {
        Entry::Record {
            line: vec![b'x'; len],
            ack: None,
        }
    }

    #[test]
    fn the_queue_takes_records_up_to_its_bytes() {
        let queue = Queue::new(100, 1000);
        assert!(queue.push(record(400)).is_ok());
        assert!(queue.push(record(400)).is_ok());
        assert!(queue.push(record(300)).is_err(), "1,100 bytes > 1,000");
        assert!(queue.push(record(200)).is_ok(), "exactly 1,000");
        assert!(queue.push(record(1)).is_err());
        assert_eq!(
            queue.outstanding(),
            Outstanding {
                records: 3,
                bytes: 1000
            }
        );
        // A shutdown is taken however full the queue is.
        let (tx, _rx) = tokio::sync::oneshot::channel();
        assert!(queue.push(Entry::Shutdown(tx)).is_ok());
        assert_eq!(queue.close(), 3);

        // One record over the bound on its own is taken, but only alone.
        let queue = Queue::new(100, 1000);
        assert!(queue.push(record(5000)).is_ok());
        assert!(queue.push(record(1)).is_err());
        // And the record count still caps tiny records.
        let queue = Queue::new(2, 1000);
        assert!(queue.push(record(1)).is_ok());
        assert!(queue.push(record(1)).is_ok());
        assert!(queue.push(record(1)).is_err());
    }

    #[test]
    fn refused_records_are_logged_once_a_second_with_their_counts() {
        let mut log = DropLog::default();
        let start = Instant::now();
        assert_eq!(log.note("response", start), Some((0, 1)));
        assert_eq!(log.note("request", start + Duration::from_millis(10)), None);
        assert_eq!(
            log.note("response", start + Duration::from_millis(20)),
            None
        );
        assert_eq!(
            log.note("response", start + Duration::from_millis(1100)),
            Some((1, 2))
        );
    }
}
