//! Shipping the audit trail to a central OpenTelemetry Collector.
//!
//! With the `otlp` sink, the audit file doubles as a spool: records are
//! appended to it first (durably, per `audit.durability`), and this shipper
//! sends them on in batches as OTLP/HTTP log records (the body is the JSON
//! record; attributes carry `operation`, `outcome` and `principal.sub`).
//!
//! - Delivery is at-least-once: the shipped offset is persisted (with the
//!   file's inode) only after the collector acknowledged a batch, so after a
//!   crash or restart shipping resumes where it left off. Within one run a
//!   record is never sent twice: a failed batch is retried, an acknowledged
//!   one never.
//! - While the collector is down, records wait in the spool; past
//!   `audit.spool_max_bytes` of unshipped data, `audit.on_failure` applies.
//! - When the file is rotated (a new inode at the path), the old file is
//!   shipped to its end first.
//! - After a restart, the backlog the previous run left unshipped counts
//!   towards `spool_max_bytes` from the start ([`Shipper::new`]).
//!
//! # The shipper reads only committed batches
//!
//! The writer appends a batch with `write`, and when that fails part-way
//! (a full disk) it cuts the file back to its previous length (`set_len`),
//! so the records of the failed batch, whose write requests were refused,
//! vanish again. Were the shipper to read the file up to its current length,
//! it could in that moment ship those records, then resume at an offset
//! past the cut: the next batches would be skipped or shipped from the
//! middle of a line. So it reads only up to the length the writer has
//! published as committed for the file ([`ShipState::publish_committed`]):
//!
//! 1. The writer publishes `(inode, length)` when it opens a file, before
//!    writing to it, and again after each batch was written whole (and
//!    synced, per `durability`). It never publishes a length that a failed
//!    batch reached; it cuts the file back to the last published one.
//! 2. The shipper takes the file's length with `stat` first and reads the
//!    published pair after it (both under the same mutex as the writer's
//!    publishing). For the writer's current file it reads no further than
//!    the published length.
//! 3. For any other file it reads to the `stat` length. That is safe. A
//!    file the writer opens only after the shipper read the published pair
//!    was published before the writer wrote to it (1), so after the `stat`:
//!    the `stat` saw none of it. A file the writer has not opened in this
//!    run (the backlog of an earlier one) holds only what was committed.
//!    A file the writer left (a rotation, a reopen) it left whole: a failed
//!    batch is cut back before the next batch opens another file, and the
//!    writer never writes to it again. So the bytes there are final by the
//!    time the shipper reads them, after its look at the pair; if its
//!    `stat` caught a failed batch before the cut, the read runs into the
//!    end of the file and fails, and is tried again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::Notify;

pub use crate::client::signal_endpoint;
use crate::client::JwksConnector;

/// The most spool data sent in one export request.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// The longest record shipped whole.
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Longest wait between retries while the collector is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state between the shipper, the writer and the request path.
#[derive(Debug, Default)]
pub struct ShipState {
    /// Bytes appended to the spool but not yet acknowledged.
    pub unshipped: AtomicU64,
    /// Whether `unshipped` exceeds `spool_max_bytes`.
    pub full: AtomicBool,
    /// Export attempts that failed.
    pub failures: AtomicU64,
    /// Records acknowledged by the collector.
    pub shipped_records: AtomicU64,
    /// Woken when the writer appended records.
    pub appended: Notify,
    /// Bytes that entered the spool: the backlog found at startup plus every
    /// batch written since. Running totals, unlike file lengths and offsets,
    /// stay comparable across rotations.
    pub appended_bytes: AtomicU64,
    /// Bytes the collector acknowledged since startup.
    pub acked_bytes: AtomicU64,
    /// `audit.spool_max_bytes`.
    pub spool_max_bytes: AtomicU64,
    /// The file the writer appends to and how far whole batches reached in
    /// it; `None` until the writer first opens it. See the module docs.
    committed: Mutex<Option<Committed>>,
}

/// A spool file (by inode) and the length of it the writer has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Committed {
    inode: u64,
    len: u64,
}

impl ShipState {
    /// The writer's word that file `inode` holds whole batches up to `len`
    /// (on opening it, before writing, and after each batch written whole).
    pub(crate) fn publish_committed(&self, inode: u64, len: u64) {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Committed { inode, len });
    }

    /// How far the shipper may read file `inode`, whose length a `stat`
    /// gave as `on_disk` *before* this call: no further than the writer
    /// committed, if the writer is appending to that file.
    fn readable(&self, inode: u64, on_disk: u64) -> u64 {
        match *self.committed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(committed) if committed.inode == inode => on_disk.min(committed.len),
            _ => on_disk,
        }
    }

    /// Recomputes the unshipped size and whether it is over
    /// `spool_max_bytes`; called after every write and every acknowledgement.
    pub fn recompute(&self) {
        let appended = self.appended_bytes.load(Ordering::Acquire);
        let unshipped = appended.saturating_sub(self.acked_bytes.load(Ordering::Acquire));
        self.unshipped.store(unshipped, Ordering::Relaxed);
        let full = unshipped > self.spool_max_bytes.load(Ordering::Relaxed);
        if self.full.swap(full, Ordering::AcqRel) != full {
            if full {
                tracing::error!(unshipped, "audit spool is over audit.spool_max_bytes");
            } else {
                tracing::info!(
                    unshipped,
                    "audit spool is below audit.spool_max_bytes again"
                );
            }
        }
    }
}

/// Where shipping stands: the file (by inode) and the acknowledged offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    inode: u64,
    offset: u64,
}

/// The offset file kept next to the spool.
pub fn offset_path(spool: &Path) -> PathBuf {
    let mut name = spool.as_os_str().to_owned();
    name.push(".shipped");
    PathBuf::from(name)
}

fn load_position(path: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(path).ok()?;
    let (inode, offset) = text.trim().split_once(' ')?;
    Some(Position {
        inode: inode.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn save_position(path: &Path, position: Position) -> std::io::Result<()> {
    let temp = path.with_extension("shipped.tmp");
    std::fs::write(&temp, format!("{} {}\n", position.inode, position.offset))?;
    std::fs::rename(&temp, path)
}

/// The bytes of `spool` not yet shipped according to the saved `position`:
/// what [`Shipper::run`] will send, which is the whole file when the
/// position is missing or names another file.
fn backlog(spool: &Path, position: Option<Position>) -> u64 {
    let Ok(metadata) = std::fs::metadata(spool) else {
        return 0;
    };
    match position {
        Some(p) if p.inode == metadata.ino() => metadata.len().saturating_sub(p.offset),
        _ => metadata.len(),
    }
}

/// Ships one spool file to one collector endpoint.
pub struct Shipper {
    spool: PathBuf,
    offsets: PathBuf,
    endpoint: Uri,
    client: Client<JwksConnector, Full<Bytes>>,
    state: Arc<ShipState>,
    service_name: String,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("spool", &self.spool)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Checks `audit.otlp_endpoint` and derives the logs URL (`…/v1/logs`).
pub fn logs_endpoint(raw: &str) -> Result<Uri, String> {
    signal_endpoint(raw, "/v1/logs", "audit.otlp_endpoint")
}

impl Shipper {
    /// A shipper for `spool` to `endpoint` over `connector`.
    pub fn new(
        spool: PathBuf,
        endpoint: Uri,
        connector: JwksConnector,
        spool_max_bytes: u64,
        state: Arc<ShipState>,
    ) -> Self {
        state
            .spool_max_bytes
            .store(spool_max_bytes, Ordering::Relaxed);
        let offsets = offset_path(&spool);
        // Counted before the writer starts, so the first write request is
        // already refused when the previous run left the spool full.
        let backlog = backlog(&spool, load_position(&offsets));
        if backlog > 0 {
            state.appended_bytes.fetch_add(backlog, Ordering::AcqRel);
            state.recompute();
            tracing::info!(
                unshipped = backlog,
                "audit spool holds records an earlier run did not ship"
            );
        }
        Self {
            offsets,
            spool,
            endpoint,
            client: Client::builder(TokioExecutor::new()).build(connector),
            state,
            service_name: "polytomic-gateway".into(),
        }
    }

    /// Ships forever (until aborted).
    pub async fn run(self) {
        let mut position = load_position(&self.offsets);
        // A file kept open across rotations, so its tail is shipped too.
        let mut open: Option<(File, u64)> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let batch = self.next_batch(&mut open, &mut position);
            match batch {
                Ok(Some((lines, start, end))) => {
                    let count = lines.len() as u64;
                    match self.export(&lines).await {
                        Ok(()) => {
                            backoff = Duration::from_millis(100);
                            self.state
                                .shipped_records
                                .fetch_add(count, Ordering::Relaxed);
                            let inode = open.as_ref().map_or(0, |(_, ino)| *ino);
                            let now = Position { inode, offset: end };
                            position = Some(now);
                            self.state
                                .acked_bytes
                                .fetch_add(end - start, Ordering::AcqRel);
                            self.state.recompute();
                            if let Err(error) = save_position(&self.offsets, now) {
                                tracing::error!(%error, "cannot persist the audit shipping offset");
                            }
                            continue;
                        }
                        Err(error) => {
                            self.state.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%error, retry_in = ?backoff, "audit records not shipped; they wait in the spool");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            // Re-read the same batch: nothing was acknowledged.
                            continue;
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read the audit spool"),
            }
            // Caught up: wait for the writer, or check for rotation now and then.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.state.appended.notified()).await;
        }
    }

    /// Reads the next batch of whole lines after the acknowledged offset, as
    /// (lines, start offset, end offset); switches to a rotated file once the
    /// old one is shipped to its end.
    fn next_batch(
        &self,
        open: &mut Option<(File, u64)>,
        position: &mut Option<Position>,
    ) -> std::io::Result<Option<(Vec<Bytes>, u64, u64)>> {
        let at_path = std::fs::metadata(&self.spool).ok().map(|m| m.ino());
        if open.is_none() {
            let Ok(file) = File::open(&self.spool) else {
                return Ok(None);
            };
            let inode = file.metadata()?.ino();
            if position.is_some_and(|p| p.inode != inode) {
                *position = None; // the saved offset was for an older file
            }
            *open = Some((file, inode));
        }
        let (file, inode) = open.as_mut().expect("opened above");
        let offset = position.map_or(0, |p| p.offset);
        // The `stat` first, then the writer's committed length: see the
        // module docs for why this order is what makes it safe.
        let on_disk = file.metadata()?.len();
        let len = self.state.readable(*inode, on_disk);
        if len <= offset {
            if at_path.is_some_and(|ino| ino != *inode) {
                // Rotated, and the old file is fully shipped: follow the path.
                *open = None;
                *position = None;
            }
            return Ok(None);
        }
        let available = (len - offset) as usize;
        let mut want = available.min(MAX_BATCH_BYTES);
        let mut buffer = vec![0u8; want];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buffer)?;
        if !buffer.contains(&b'\n') && available > want {
            // One record longer than a batch: read on to its end, so it is
            // shipped whole (records are bounded by the body limit).
            want = available.min(MAX_RECORD_BYTES);
            buffer.resize(want, 0);
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut buffer)?;
        }
        // Only whole lines.
        let end = match buffer.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if want == MAX_RECORD_BYTES => {
                tracing::error!("an audit record over 16 MiB is shipped in pieces");
                want
            }
            None => return Ok(None), // a line still being written
        };
        buffer.truncate(end);
        let buffer = Bytes::from(buffer);
        let lines = buffer
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| buffer.slice_ref(l))
            .collect();
        Ok(Some((lines, offset, offset + end as u64)))
    }

    /// Sends one batch; `Ok` only when the collector acknowledged it.
    async fn export(&self, lines: &[Bytes]) -> Result<(), String> {
        let request = export_request(&self.service_name, lines);
        let body = Bytes::from(request.encode_to_vec());
        let req = Request::post(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(EXPORT_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| "the collector did not answer in time".to_owned())?
            .map_err(|e| crate::client::error_chain(&e))?;
        let status = response.status();
        // Drain the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }
}

fn string_value(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    })
}

/// The OTLP export request for some record lines.
pub fn export_request(service_name: &str, lines: &[Bytes]) -> ExportLogsServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let log_records = lines
        .iter()
        .map(|line| {
            let text = String::from_utf8_lossy(line).into_owned();
            let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let attribute = |key: &str, value: Option<&str>| {
                value.map(|v| KeyValue {
                    key: key.to_owned(),
                    value: string_value(v),
                    ..Default::default()
                })
            };
            let attributes = [
                attribute("operation", record["operation"].as_str()),
                attribute("outcome", record["outcome"].as_str()),
                attribute("principal.sub", record["principal"]["sub"].as_str()),
                attribute("stage", record["stage"].as_str()),
                attribute("request_id", record["request_id"].as_str()),
                attribute("client_request_id", record["client_request_id"].as_str()),
            ]
            .into_iter()
            .flatten()
            .collect();
            LogRecord {
                time_unix_nano: record["time"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(now, |d| d.as_nanos() as u64),
                observed_time_unix_nano: now,
                severity_number: 9, // INFO
                severity_text: "INFO".into(),
                body: string_value(&text),
                attributes,
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: string_value(service_name),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "polytomic-gateway.audit".into(),
                    ..Default::default()
                }),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn shipper(spool: &Path, spool_max_bytes: u64, state: Arc<ShipState>) -> Shipper {
        let roots = crate::client::root_store(None).expect("the webpki roots load");
        let connector =
            crate::client::connector(crate::client::tls_config(roots), Duration::from_secs(5));
        Shipper::new(
            spool.to_owned(),
            "http://127.0.0.1:9/v1/logs".parse().unwrap(),
            connector,
            spool_max_bytes,
            state,
        )
    }

    fn append(path: &Path, text: &str) -> u64 {
        let mut file = crate::audit::writer::open_append(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.metadata().unwrap().len()
    }

    fn texts(lines: &[Bytes]) -> Vec<&str> {
        lines
            .iter()
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn the_backlog_at_startup_is_what_the_saved_offset_leaves_unshipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool.jsonl");
        let first = append(&spool, "{\"n\":1}\n");
        let len = append(&spool, "{\"n\":2}\n{\"n\":3}\n");
        let inode = std::fs::metadata(&spool).unwrap().ino();
        let started = |max: u64| {
            let state = Arc::new(ShipState::default());
            drop(shipper(&spool, max, state.clone()));
            (
                state.unshipped.load(Ordering::Relaxed),
                state.full.load(Ordering::Relaxed),
            )
        };
        // No saved offset: the whole file is sent again, so all of it waits.
        assert_eq!(started(1000), (len, false));
        // Acknowledged up to the first record: the rest waits.
        let offsets = offset_path(&spool);
        save_position(
            &offsets,
            Position {
                inode,
                offset: first,
            },
        )
        .unwrap();
        assert_eq!(started(1000), (len - first, false));
        // Over the limit already: full before the first write comes in.
        assert_eq!(started(len - first - 1), (len - first, true));
        // The offset of another file (rotated away since): all of it again.
        save_position(
            &offsets,
            Position {
                inode: inode + 1,
                offset: first,
            },
        )
        .unwrap();
        assert_eq!(started(1000), (len, false));
    }

    /// The interleaving the writer's failure path makes possible, step by
    /// step on a real file: a batch that fails part-way leaves whole lines
    /// in the file until the writer cuts them off, and the shipper must not
    /// ship them, nor lose its place when they are cut.
    #[test]
    fn the_shipper_reads_no_further_than_the_writer_committed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool.jsonl");
        let state = Arc::new(ShipState::default());
        let shipper = shipper(&spool, 1 << 20, state.clone());
        let (mut open, mut position) = (None, None);

        // The writer opens the file and publishes it, then writes a batch.
        let empty = append(&spool, "");
        let inode = std::fs::metadata(&spool).unwrap().ino();
        state.publish_committed(inode, empty);
        let committed = append(&spool, "{\"id\":\"ok-1\"}\n");
        state.publish_committed(inode, committed);
        let (lines, _, end) = shipper
            .next_batch(&mut open, &mut position)
            .unwrap()
            .unwrap();
        assert_eq!(texts(&lines), ["{\"id\":\"ok-1\"}"]);
        assert_eq!(end, committed);
        position = Some(Position { inode, offset: end });

        // A batch fails part-way (the disk filled up): two whole lines and
        // a torn one are in the file, and nothing new was published.
        append(
            &spool,
            "{\"id\":\"failed-1\"}\n{\"id\":\"failed-2\"}\n{\"id\":\"fa",
        );
        assert!(shipper
            .next_batch(&mut open, &mut position)
            .unwrap()
            .is_none());

        // The writer cuts the failed batch off and writes the next whole.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&spool)
            .unwrap()
            .set_len(committed)
            .unwrap();
        let next = append(&spool, "{\"id\":\"ok-2\"}\n{\"id\":\"ok-3\"}\n");
        state.publish_committed(inode, next);
        let (lines, start, end) = shipper
            .next_batch(&mut open, &mut position)
            .unwrap()
            .unwrap();
        assert_eq!(texts(&lines), ["{\"id\":\"ok-2\"}", "{\"id\":\"ok-3\"}"]);
        assert_eq!((start, end), (committed, next));
    }

    /// The writer's side of it: a batch the file did not take whole never
    /// publishes its length; one it took does. `/dev/full` fails every write.
    #[test]
    fn the_writer_publishes_only_the_length_whole_batches_reached() {
        use crate::audit::writer::{Entry, Queue, Writer};
        for (path, expect_ok) in [
            (PathBuf::from("/dev/full"), false),
            (
                tempfile::tempdir().unwrap().keep().join("audit.jsonl"),
                true,
            ),
        ] {
            let state = Arc::new(ShipState::default());
            let queue = Arc::new(Queue::new(16, 1 << 20));
            let writer = Writer {
                file: Some(path.clone()),
                stdout: false,
                durability: crate::audit::Durability::Flush,
                reopen: Arc::default(),
                stats: Arc::default(),
                appended: Some(state.clone()),
                checkpoints: None,
            };
            let thread = {
                let queue = queue.clone();
                std::thread::spawn(move || writer.run(queue))
            };
            let line = b"{\"id\":\"one\"}\n".to_vec();
            let (ack, done) = tokio::sync::oneshot::channel();
            assert!(queue
                .push(Entry::Record {
                    line: line.clone(),
                    ack: Some(ack)
                })
                .is_ok());
            assert_eq!(done.blocking_recv().unwrap(), expect_ok, "{path:?}");
            queue.close();
            thread.join().unwrap();
            let inode = std::fs::metadata(&path).unwrap().ino();
            let published = *state.committed.lock().unwrap();
            // The whole line as written: the record with its chain fields.
            let len = if expect_ok {
                let written = std::fs::read(&path).unwrap();
                assert!(written.ends_with(&line[1..]), "{written:?}");
                written.len() as u64
            } else {
                0
            };
            assert_eq!(published, Some(Committed { inode, len }), "{path:?}");
            if expect_ok {
                std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
            }
        }
    }
}
