//! The audit writer: one thread that owns the sinks and commits in groups.
//!
//! Records arrive in a bounded [`Queue`]. The thread takes every record that
//! is waiting, writes them with one `write` per sink, then flushes or
//! `fdatasync`s once for the whole batch ("group commit"), and only then
//! tells each waiting request whether its record is durable. Concurrent
//! writes therefore share fsyncs. A batch is written whole, so a crash can
//! tear at most the last line.
//!
//! A record nobody waits for (a read's, a response's) does not wake the
//! thread at once: the thread gathers such records for up to [`LINGER`]
//! first, so under load it writes hundreds per batch instead of being woken,
//! and making a syscall, for each request. A record a request waits for
//! (`durability` `flush` or `fsync`) wakes it at once.
//!
//! The queue is bounded twice: by records ([`Queue::new`]'s `capacity`) and
//! by bytes (`audit.queue_max_bytes`). The bytes of a record count from the
//! moment it is queued until the batch holding it has been written, so a
//! stalled sink (standard output nobody reads, a hung disk) holds at most
//! that much record data, however large the bodies are; past it a record is
//! refused at once (see [`Queue::push`]).
//!
//! A file that cannot be opened or written (missing directory, read-only,
//! disk full) fails the records of that batch; the next batch tries again,
//! so the trail recovers as soon as the problem is fixed. SIGHUP reopens the
//! file (logrotate's `create` mode).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::chain::{self, Chain, Checkpoints};
use super::Durability;

/// The most records written in one batch.
const MAX_BATCH: usize = 4096;

/// How long records nobody waits for may gather before they are written.
pub(crate) const LINGER: Duration = Duration::from_millis(5);

/// Queued records that wake the writer early even if nobody waits for them.
const HIGH_WATER: usize = 1024;

/// The writer's bounded queue: a mutex-guarded deque with a condition
/// variable, so a push can decide whether the writer needs waking (a
/// channel wakes its receiver on every send).
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// The most records waiting at once.
    capacity: usize,
    /// The most record bytes accepted and not yet written (`audit.queue_max_bytes`).
    max_bytes: usize,
}

#[derive(Default)]
struct QueueState {
    entries: VecDeque<Entry>,
    /// The writer is blocked on `ready`; cleared by whoever notifies it.
    waiting: bool,
    /// The writer is waiting for the first record of a batch.
    idle: bool,
    /// A queued entry is waited for (or is the shutdown).
    urgent: bool,
    /// Every `Audit` is gone: drain and stop.
    closed: bool,
    /// Records accepted and not yet written: queued, or in the batch the
    /// writer is writing. What a stalled sink holds back.
    outstanding: Outstanding,
    /// Of those, the batch the writer took last: written (or failed) once
    /// the writer asks for the next one.
    in_batch: Outstanding,
}

/// A number of records and their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outstanding {
    pub records: usize,
    pub bytes: usize,
}

impl Queue {
    /// A queue of at most `capacity` records and `max_bytes` record bytes.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            capacity,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an entry; gives it back if the queue is closed, or, for a
    /// record, if it holds `capacity` records or the record would take the
    /// bytes not yet written past `max_bytes`. A record larger than
    /// `max_bytes` on its own is taken when nothing else is outstanding, so
    /// that no record is refused forever. A shutdown is always taken.
    pub(crate) fn push(&self, entry: Entry) -> Result<(), Entry> {
        let (urgent, bytes) = match &entry {
            Entry::Record { ack, line } => (ack.is_some(), Some(line.len())),
            Entry::Shutdown(_) => (true, None),
        };
        let mut state = self.lock();
        if state.closed {
            return Err(entry);
        }
        if let Some(bytes) = bytes {
            let outstanding = state.outstanding;
            let full = state.entries.len() >= self.capacity
                || (outstanding.bytes > 0
                    && outstanding.bytes.saturating_add(bytes) > self.max_bytes);
            if full {
                return Err(entry);
            }
            state.outstanding.records += 1;
            state.outstanding.bytes += bytes;
        }
        state.entries.push_back(entry);
        state.urgent |= urgent;
        let wake =
            state.waiting && (state.urgent || state.idle || state.entries.len() >= HIGH_WATER);
        if wake {
            state.waiting = false;
        }
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Stops the writer once it has written what is queued, and refuses
    /// records from now on; returns the records still queued (none once
    /// the writer has stopped after a shutdown entry, unless some came
    /// after it).
    pub(crate) fn close(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        let left = state
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Record { .. }))
            .count();
        drop(state);
        self.ready.notify_one();
        left
    }

    /// Records (and their bytes) accepted and not yet written: queued, or
    /// in the batch the writer is writing.
    pub(crate) fn outstanding(&self) -> Outstanding {
        self.lock().outstanding
    }

    /// The next batch, at most `MAX_BATCH` entries, into `batch`: waits for
    /// a first entry (or until `wake_at`, when a checkpoint is due: then
    /// the batch is empty), then up to `LINGER` for more unless one is
    /// urgent. True when the queue is closed and this batch drains it.
    ///
    /// The writer asks for a batch only once it is done with the previous
    /// one, so that one's records stop counting as outstanding here.
    fn next_batch(&self, batch: &mut Vec<Entry>, wake_at: Option<Instant>) -> bool {
        let mut state = self.lock();
        let done = std::mem::take(&mut state.in_batch);
        state.outstanding.records -= done.records;
        state.outstanding.bytes -= done.bytes;
        while state.entries.is_empty() {
            if state.closed {
                return true;
            }
            state.idle = true;
            state.waiting = true;
            match wake_at {
                None => state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        state.idle = false;
                        state.waiting = false;
                        return false;
                    }
                    state = self
                        .ready
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        state.idle = false;
        let deadline = Instant::now() + LINGER;
        while !state.urgent && !state.closed && state.entries.len() < HIGH_WATER {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state.waiting = true;
            state = self
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.waiting = false;
        let n = state.entries.len().min(MAX_BATCH);
        let mut taken = Outstanding::default();
        for entry in state.entries.drain(..n) {
            if let Entry::Record { line, .. } = &entry {
                taken.records += 1;
                taken.bytes += line.len();
            }
            batch.push(entry);
        }
        state.in_batch = taken;
        // Urgent entries left behind make the next batch start at once.
        state.urgent = state.entries.iter().any(|e| match e {
            Entry::Record { ack, .. } => ack.is_some(),
            Entry::Shutdown(_) => true,
        });
        state.closed && state.entries.is_empty()
    }
}

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
    /// Signed checkpoints, with `audit.signing_key`.
    pub checkpoints: Option<Checkpoints>,
}

/// Opens the audit file for appending, creating it if needed.
pub(crate) fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Adds one entry to the batch; returns the shutdown acknowledgement if the
/// entry asks to stop.
fn take(
    entry: Entry,
    chain: &mut Chain,
    buffer: &mut Vec<u8>,
    acks: &mut Vec<oneshot::Sender<bool>>,
    count: &mut u64,
) -> Option<oneshot::Sender<()>> {
    match entry {
        Entry::Record { line, ack } => {
            chain.append(&line, buffer);
            acks.extend(ack);
            *count += 1;
            None
        }
        Entry::Shutdown(done) => Some(done),
    }
}

impl Writer {
    pub(crate) fn run(mut self, queue: Arc<Queue>) {
        let mut file: Option<OpenFile> = None;
        let mut healthy = true;
        let mut buffer = Vec::with_capacity(64 * 1024);
        let mut acks = Vec::new();
        let mut batch = Vec::new();
        // Made at the first batch, not before: `check` builds an `Audit`
        // too, and must not touch the trail.
        let mut chain: Option<Chain> = None;
        let mut checkpoints = self.checkpoints.take();
        loop {
            let due = chain.as_ref().and_then(Chain::checkpoint_due_at);
            let closed = queue.next_batch(&mut batch, due);
            if closed && batch.is_empty() && chain.is_none() {
                return; // nothing was ever written
            }
            let chain = chain.get_or_insert_with(|| {
                let chain = Chain::new(self.resume_chain(), checkpoints.take());
                tracing::info!(
                    instance = chain.instance(),
                    "audit trail: a new instance of the hash chain"
                );
                chain
            });
            buffer.clear();
            acks.clear();
            chain.begin();
            let mut count = 0u64;
            let mut shutdown = None;
            for entry in batch.drain(..) {
                if let Some(done) = take(entry, chain, &mut buffer, &mut acks, &mut count) {
                    shutdown = Some(done);
                }
            }
            // On the way out, whatever is not yet covered gets a checkpoint.
            let last = closed || shutdown.is_some();
            chain.checkpoint_if_due(Instant::now(), last, &mut buffer);
            let ok = buffer.is_empty() || self.commit(&mut file, &buffer, count);
            if !ok {
                chain.rollback();
            }
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
            if closed {
                return; // everything is written
            }
        }
    }

    /// Where the chain goes on in the file: the hash of its last complete
    /// line. A line torn by a crash is ended with a newline first, so it
    /// stays a line of its own (which `audit verify` reports as torn).
    fn resume_chain(&self) -> chain::Tail {
        let Some(path) = self.file.as_deref() else {
            return chain::Tail::default();
        };
        match chain::resume(path) {
            Ok(tail) => {
                if tail.torn {
                    tracing::warn!(path = %path.display(), "the audit file ends in a torn line (a crash mid-write); it is ended with a newline");
                    if let Err(error) = open_append(path).and_then(|mut f| {
                        f.write_all(b"\n")?;
                        f.sync_data()
                    }) {
                        tracing::error!(path = %path.display(), %error, "cannot end the torn line");
                    }
                }
                tail
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read the audit file to continue its chain; starting a new one");
                chain::Tail::default()
            }
        }
    }

    /// Writes one batch (of `records` records) to every sink; true when all
    /// of them took it.
    fn commit(&self, file: &mut Option<OpenFile>, batch: &[u8], records: u64) -> bool {
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
    fn commit_file(&self, path: &Path, file: &mut Option<OpenFile>, batch: &[u8]) -> bool {
        let mut ok = true;
        {
            if self.reopen.swap(false, Ordering::AcqRel) {
                *file = None;
                tracing::info!(path = %path.display(), "reopening the audit file");
            }
            if file.is_none() {
                match open_append(path).and_then(|f| {
                    let metadata = f.metadata()?;
                    Ok(OpenFile {
                        file: f,
                        len: metadata.len(),
                        inode: metadata.ino(),
                    })
                }) {
                    Ok(opened) => {
                        // Published before anything is written to it: from
                        // now on the shipper reads this file only as far as
                        // whole batches reached (see `ShipState::readable`).
                        if let Some(state) = &self.appended {
                            state.publish_committed(opened.inode, opened.len);
                        }
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
            if let Some(OpenFile {
                file: f,
                len,
                inode,
            }) = file.as_mut()
            {
                let written = f.write_all(batch).and_then(|()| match self.durability {
                    Durability::Fsync => f.sync_data(),
                    Durability::Flush | Durability::None => Ok(()),
                });
                if let Err(error) = written {
                    tracing::error!(path = %path.display(), %error, "cannot write the audit file");
                    // Cut a partial batch off, so the next one starts on a
                    // fresh line and every acknowledged record parses. The
                    // shipper never read past `len`: it was not published.
                    let _ = f.set_len(*len);
                    // Reopen next time: the file may have been replaced or fixed.
                    *file = None;
                    ok = false;
                } else {
                    *len += batch.len() as u64;
                    if let Some(state) = &self.appended {
                        state.publish_committed(*inode, *len);
                    }
                }
            }
        }
        ok
    }
}

/// The audit file and its length, known without a `stat` per batch: only
/// this thread appends to it (a rotation reopens it on SIGHUP).
struct OpenFile {
    file: File,
    /// The length up to which whole batches were written.
    len: u64,
    /// Its inode, to tell the shipper which file `len` is about.
    inode: u64,
}
