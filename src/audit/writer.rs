//! The audit writer: one thread that owns the sinks and commits in groups.
//!
//! Records arrive over a bounded channel. The thread takes every record that
//! is waiting, writes them with one `write` per sink, then flushes or
//! `fdatasync`s once for the whole batch ("group commit"), and only then
//! tells each waiting request whether its record is durable. Concurrent
//! writes therefore share fsyncs. A batch is written whole, so a crash can
//! tear at most the last line.
//!
//! A file that cannot be opened or written (missing directory, read-only,
//! disk full) fails the records of that batch; the next batch tries again,
//! so the trail recovers as soon as the problem is fixed. SIGHUP reopens the
//! file (logrotate's `create` mode).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvError};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Durability;

/// The most records written in one batch.
const MAX_BATCH: usize = 4096;

/// What the writer thread is sent.
pub(crate) enum Entry {
    /// One record line (ending in `\n`), and whoever waits for it.
    Record {
        line: Vec<u8>,
        ack: Option<oneshot::Sender<bool>>,
    },
    /// Flush everything and stop; acknowledged when done.
    Shutdown(oneshot::Sender<()>),
}

/// Counters the writer keeps, for logs and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records made durable (per `durability`) in every sink.
    pub written: AtomicU64,
    /// Records that at least one sink failed to take.
    pub failed: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Records the file (or OTLP spool) took, and failed to take.
    pub file: SinkCounters,
    /// Records standard output took, and failed to take.
    pub stdout: SinkCounters,
}

/// One sink's record counts.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Records the sink took.
    pub written: AtomicU64,
    /// Records the sink failed to take.
    pub failed: AtomicU64,
}

impl SinkCounters {
    fn count(&self, ok: bool, records: u64) {
        let counter = if ok { &self.written } else { &self.failed };
        counter.fetch_add(records, Ordering::Relaxed);
    }
}

pub(crate) struct Writer {
    pub file: Option<PathBuf>,
    pub stdout: bool,
    pub durability: Durability,
    pub reopen: Arc<AtomicBool>,
    pub stats: Arc<WriterStats>,
    /// Told after each batch when a shipper tails the file.
    pub appended: Option<Arc<super::ship::ShipState>>,
}

/// Opens the audit file for appending, creating it if needed.
pub(crate) fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Adds one entry to the batch; returns the shutdown acknowledgement if the
/// entry asks to stop.
fn take(
    entry: Entry,
    buffer: &mut Vec<u8>,
    acks: &mut Vec<oneshot::Sender<bool>>,
    count: &mut u64,
) -> Option<oneshot::Sender<()>> {
    match entry {
        Entry::Record { line, ack } => {
            buffer.extend_from_slice(&line);
            acks.extend(ack);
            *count += 1;
            None
        }
        Entry::Shutdown(done) => Some(done),
    }
}

impl Writer {
    pub(crate) fn run(self, rx: Receiver<Entry>) {
        let mut file: Option<File> = None;
        let mut healthy = true;
        let mut buffer = Vec::with_capacity(64 * 1024);
        let mut acks = Vec::new();
        loop {
            let first = match rx.recv() {
                Ok(entry) => entry,
                Err(RecvError) => return, // every sender is gone
            };
            buffer.clear();
            acks.clear();
            let mut count = 0u64;
            let mut shutdown = take(first, &mut buffer, &mut acks, &mut count);
            while shutdown.is_none() && (count as usize) < MAX_BATCH {
                match rx.try_recv() {
                    Ok(entry) => shutdown = take(entry, &mut buffer, &mut acks, &mut count),
                    Err(_) => break,
                }
            }
            let ok = buffer.is_empty() || self.commit(&mut file, &buffer, count);
            if ok {
                self.stats.written.fetch_add(count, Ordering::Relaxed);
                if !healthy {
                    tracing::info!("audit sink recovered");
                }
            } else {
                self.stats.failed.fetch_add(count, Ordering::Relaxed);
                if healthy {
                    tracing::error!(records = count, "audit records could not be made durable");
                }
            }
            healthy = ok;
            if let Some(state) = &self.appended {
                // The spool's growth is known here first: a full spool must
                // refuse writes even while the shipper backs off.
                if ok {
                    state
                        .appended_bytes
                        .fetch_add(buffer.len() as u64, Ordering::AcqRel);
                    state.recompute();
                }
                state.appended.notify_one();
            }
            for ack in acks.drain(..) {
                let _ = ack.send(ok);
            }
            if let Some(done) = shutdown {
                let _ = done.send(());
                return;
            }
        }
    }

    /// Writes one batch (of `records` records) to every sink; true when all
    /// of them took it.
    fn commit(&self, file: &mut Option<File>, batch: &[u8], records: u64) -> bool {
        let mut ok = true;
        if let Some(path) = &self.file {
            let file_ok = self.commit_file(path, file, batch);
            self.stats.file.count(file_ok, records);
            ok &= file_ok;
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let stdout_ok = out.write_all(batch).and_then(|()| out.flush()).is_ok();
            self.stats.stdout.count(stdout_ok, records);
            ok &= stdout_ok;
        }
        ok
    }

    /// Appends one batch to the file, opening it if needed.
    fn commit_file(&self, path: &Path, file: &mut Option<File>, batch: &[u8]) -> bool {
        let mut ok = true;
        {
            if self.reopen.swap(false, Ordering::AcqRel) {
                *file = None;
                tracing::info!(path = %path.display(), "reopening the audit file");
            }
            if file.is_none() {
                match open_append(path) {
                    Ok(opened) => {
                        if self.durability == Durability::Fsync {
                            // A new file's directory entry must be durable too.
                            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                            if let Some(Err(error)) =
                                dir.map(|d| File::open(d).and_then(|d| d.sync_all()))
                            {
                                tracing::warn!(%error, "cannot fsync the audit file's directory");
                            }
                        }
                        *file = Some(opened);
                    }
                    Err(error) => {
                        tracing::error!(path = %path.display(), %error, "cannot open the audit file");
                        ok = false;
                    }
                }
            }
            if let Some(f) = file.as_mut() {
                let before = f.metadata().map(|m| m.len());
                let written = f.write_all(batch).and_then(|()| match self.durability {
                    Durability::Fsync => f.sync_data(),
                    Durability::Flush | Durability::None => Ok(()),
                });
                if let Err(error) = written {
                    tracing::error!(path = %path.display(), %error, "cannot write the audit file");
                    // Cut a partial batch off, so the next one starts on a
                    // fresh line and every acknowledged record parses.
                    if let Ok(len) = before {
                        let _ = f.set_len(len);
                    }
                    // Reopen next time: the file may have been replaced or fixed.
                    *file = None;
                    ok = false;
                }
            }
        }
        ok
    }
}
