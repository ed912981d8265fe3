//! How long a connection may live without doing anything.
//!
//! Every accepted connection holds one `server.max_connections` slot until
//! it closes, so a connection that does nothing must not be able to keep
//! one. [`Activity`] follows each connection through three phases, and the
//! server's per-connection watchdog ([`Activity::check`]) closes it when a
//! phase lasts too long:
//!
//! | phase | from | closed after | how |
//! |---|---|---|---|
//! | head | accept; for HTTP/1 also the first byte read while idle | `server.header_timeout` | dropped |
//! | busy | a request head is complete (HTTP/2: a stream opens) | never by the watchdog (`server.request_timeout` bounds the request) | |
//! | idle | the last response body in flight ends | `server.idle_timeout` | gracefully: HTTP/2 with a GOAWAY |
//!
//! So a new connection of either protocol must complete its first request
//! head within `header_timeout` (three HTTP/2 sockets that only sent their
//! preface and SETTINGS once held every slot of `max_connections = 3`), an
//! HTTP/1 keep-alive connection may wait `idle_timeout` between requests but
//! must then send each head within `header_timeout`, and any connection with
//! nothing in flight for `idle_timeout` is closed. hyper's own HTTP/1
//! header timer is off: it runs while a connection waits between requests,
//! which would cut every keep-alive connection at `header_timeout`.
//!
//! The bookkeeping is a few relaxed atomics per request and per read; the
//! watchdog wakes at most once per `header_timeout`, never per request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// The deadlines a connection's phases have.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `server.header_timeout`: a request head, from its first byte (or
    /// from the accept, for the first one) to its end.
    pub header: Duration,
    /// `server.idle_timeout`: nothing in flight.
    pub idle: Duration,
}

const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// What a connection is doing, updated by its requests and its reads and
/// read by its watchdog.
///
/// Relaxed atomics suffice: a connection's requests run on the worker
/// thread that serves it, and a stale read only moves a deadline by the
/// width of a race, after which the watchdog looks again.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted; `since` counts from here.
    epoch: Instant,
    /// `HEAD`, `BUSY` or `IDLE`.
    phase: AtomicU8,
    /// When the current phase began, in milliseconds since `epoch`.
    since: AtomicU64,
    /// Requests whose response has not ended yet.
    in_flight: AtomicUsize,
    /// Set by the first HTTP/2 request: bytes read while idle are then
    /// frames (pings, window updates), not the start of a request head.
    h2: AtomicBool,
}

/// What the watchdog should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing yet; look again at this instant.
    WakeAt(Instant),
    /// A request head took longer than `header_timeout`: drop the connection.
    HeadTimedOut,
    /// Nothing in flight for `idle_timeout`: close it gracefully.
    Idle,
}

impl Activity {
    /// A connection accepted now: the head phase, with the clock running.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
        })
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A request head is complete; the connection is busy until the guard,
    /// which travels with the response body, is dropped.
    pub fn start(self: &Arc<Self>, http2: bool) -> RequestGuard {
        if http2 {
            self.h2.store(true, Relaxed);
        }
        self.in_flight.fetch_add(1, Relaxed);
        self.phase.store(BUSY, Relaxed);
        RequestGuard(self.clone())
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.since.store(self.millis(Instant::now()), Relaxed);
            self.phase.store(IDLE, Relaxed);
        }
    }

    /// Bytes arrived: on an idle HTTP/1 connection they start a request
    /// head, and its deadline.
    fn read(&self) {
        if self.phase.load(Relaxed) == IDLE && !self.h2.load(Relaxed) {
            self.since.store(self.millis(Instant::now()), Relaxed);
            self.phase.store(HEAD, Relaxed);
        }
    }

    /// What to do at `now`, given the deadlines.
    pub fn check(&self, deadlines: Deadlines, now: Instant) -> Check {
        // Never longer than a phase may last: a phase that starts while the
        // watchdog sleeps is seen in time.
        let next_look = now + deadlines.header.min(deadlines.idle);
        if self.in_flight.load(Relaxed) > 0 {
            return Check::WakeAt(next_look);
        }
        let since = self.epoch + Duration::from_millis(self.since.load(Relaxed));
        match self.phase.load(Relaxed) {
            HEAD => {
                let deadline = since + deadlines.header;
                if now >= deadline {
                    Check::HeadTimedOut
                } else {
                    Check::WakeAt(deadline.min(next_look))
                }
            }
            IDLE => {
                let deadline = since + deadlines.idle;
                if now >= deadline {
                    Check::Idle
                } else {
                    Check::WakeAt(deadline.min(next_look))
                }
            }
            _ => Check::WakeAt(next_look),
        }
    }
}

/// One request in flight on its connection, until dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project! {
    /// A connection's socket, noting every read in its [`Activity`], and
    /// holding the connection's `server.max_connections` slot.
    ///
    /// The slot is released as the socket starts to close (a shutdown, or
    /// the drop: `slot` is dropped before `io`), so it is free before the
    /// peer can see the close.
    #[derive(Debug)]
    pub struct Watched<T> {
        slot: Option<OwnedSemaphorePermit>,
        #[pin]
        io: T,
        activity: Arc<Activity>,
    }
}

impl<T> Watched<T> {
    /// Watches `io`'s reads for `activity`, holding `slot` while it is open.
    pub fn new(io: T, activity: Arc<Activity>, slot: OwnedSemaphorePermit) -> Self {
        Self {
            slot: Some(slot),
            io,
            activity,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        this.slot.take();
        this.io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

pin_project! {
    /// A response future whose request stays in flight, through its
    /// response body, until that body ends or is dropped.
    #[derive(Debug)]
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F> Tracked<F> {
    /// Tracks `inner` under `guard`.
    pub fn new(inner: F, guard: RequestGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<F, B, E> std::future::Future for Tracked<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, guard })))
    }
}

pin_project! {
    /// A response body that ends its request's time in flight when it ends.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINES: Deadlines = Deadlines {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn a_new_connection_has_header_timeout_to_start_a_request() {
        let activity = Activity::new();
        let start = activity.epoch;
        assert_eq!(
            activity.check(DEADLINES, start + Duration::from_secs(9)),
            Check::WakeAt(start + DEADLINES.header)
        );
        assert_eq!(
            activity.check(DEADLINES, start + DEADLINES.header),
            Check::HeadTimedOut
        );
        // Bytes without a complete head change nothing.
        activity.read();
        assert_eq!(
            activity.check(DEADLINES, start + DEADLINES.header),
            Check::HeadTimedOut
        );
    }

    #[test]
    fn a_busy_connection_is_never_closed_and_an_idle_one_after_idle_timeout() {
        let activity = Activity::new();
        let start = activity.epoch;
        let guard = activity.start(false);
        let much_later = start + Duration::from_secs(3600);
        assert_eq!(
            activity.check(DEADLINES, much_later),
            Check::WakeAt(much_later + DEADLINES.header)
        );
        drop(guard);
        let now = Instant::now();
        let Check::WakeAt(wake) = activity.check(DEADLINES, now) else {
            panic!("an idle connection is not closed at once");
        };
        assert!(wake <= now + DEADLINES.header, "a head is noticed in time");
        assert_eq!(
            activity.check(DEADLINES, now + DEADLINES.idle + Duration::from_secs(1)),
            Check::Idle
        );
    }

    #[test]
    fn bytes_read_while_idle_start_an_http1_head_but_not_an_http2_one() {
        let http1 = Activity::new();
        drop(http1.start(false));
        http1.read();
        let http2 = Activity::new();
        drop(http2.start(true));
        http2.read();
        let at = Instant::now() + DEADLINES.header + Duration::from_secs(1);
        assert_eq!(http1.check(DEADLINES, at), Check::HeadTimedOut);
        assert!(matches!(http2.check(DEADLINES, at), Check::WakeAt(_)));
    }

    #[test]
    fn overlapping_requests_keep_the_connection_busy_until_the_last_ends() {
        let activity = Activity::new();
        let first = activity.start(true);
        let second = activity.start(true);
        drop(first);
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(matches!(activity.check(DEADLINES, later), Check::WakeAt(_)));
        drop(second);
        assert_eq!(activity.check(DEADLINES, later), Check::Idle);
    }
}
