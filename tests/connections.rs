//! How long a connection may live without doing anything, over real
//! sockets and with raw HTTP/2 frames where a well-behaved client library
//! would hide what is being tested:
//!
//! - a new connection of either protocol must send a complete request head
//!   (for HTTP/2: open its first stream) within `server.header_timeout`;
//! - a connection with no request in flight for `server.idle_timeout` is
//!   closed, HTTP/2 with a GOAWAY; an HTTP/1 keep-alive connection waiting
//!   between requests is bound by that, not by `header_timeout`;
//! - an HTTP/2 peer that stops answering the gateway's keep-alive pings is
//!   dropped even with a request in flight.

mod common;

use std::time::Duration;

use common::*;
use polytomic_gateway::fake::FakePolytomic;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | u8::try_from(value).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    value -= max;
    while value >= 128 {
        out.push(u8::try_from(value % 128).unwrap() | 0x80);
        value /= 128;
    }
    out.push(u8::try_from(value).unwrap());
}

/// A header field as an HPACK literal without indexing, new name, no
/// Huffman coding: nothing a decoder could read differently.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A complete GET on `stream` (END_STREAM | END_HEADERS).
fn get_request(stream: u32, path: &str, authorization: Option<&str>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "gateway.test"),
        (":path", path),
    ] {
        hpack_literal(&mut block, name, value);
    }
    if let Some(value) = authorization {
        hpack_literal(&mut block, "authorization", value);
    }
    frame(HEADERS, 0x1 | 0x4, stream, &block)
}

/// Opens a raw HTTP/2 (prior knowledge) connection: preface and an empty
/// SETTINGS frame, nothing else.
async fn h2_connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    stream
}

/// A frame as read: type, flags, stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Reads the next frame; `None` at end of stream or on a reset.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(Seen, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((
        Seen {
            kind: head[3],
            flags: head[4],
            stream: id,
        },
        payload,
    ))
}

/// Reads frames until the gateway closes the connection, answering its
/// pings (as every HTTP/2 client library does) when `pong` is set; returns
/// what was read.
async fn frames_until_closed<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    pong: bool,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Some((frame_seen, payload)) = read_frame(stream).await {
        if pong && frame_seen.kind == PING && frame_seen.flags & 0x1 == 0 {
            // A write may race the close; the read that follows ends the loop.
            let _ = stream.write_all(&frame(PING, 0x1, 0, &payload)).await;
        }
        seen.push(frame_seen);
    }
    seen
}

/// Reads one HTTP/1.1 response with a Content-Length body; its status line.
async fn read_http1_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "the connection closed mid-head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head.lines().next().unwrap().to_owned()
}

/// Awaits the peer's close (EOF or reset) and returns what came before it.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    rest
}

/// Past this, a test that waits for the gateway to close a connection
/// fails: far longer than any timeout the tests configure, far shorter
/// than the timeouts that would close it anyway if the one under test
/// did not.
const CLOSE_PATIENCE: Duration = Duration::from_secs(20);

async fn closed_within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CLOSE_PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("the gateway did not close {what}"))
}

/// The review's case: with `max_connections = 3`, three sockets that send
/// only the HTTP/2 preface and SETTINGS held every slot for as long as they
/// stayed open. Now each is closed `header_timeout` after it connected, and
/// the slots serve real clients again.
#[tokio::test]
async fn three_http2_sockets_that_never_open_a_stream_cannot_hold_every_slot() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(
        &format!("http://{addr}"),
        "[server]\nmax_connections = 3\nheader_timeout = \"2s\"\nidle_timeout = \"1h\"",
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = h2_connect(gw.addr).await;
        // The gateway's SETTINGS: the connection holds a slot and is served.
        let (first, _) = within("the gateway's SETTINGS", read_frame(&mut stream))
            .await
            .expect("a SETTINGS frame");
        assert_eq!(first.kind, SETTINGS);
        idle.push(stream);
    }
    let (parts, body) = send(&client(), get(&gw.url("/healthz"))).await;
    assert_gateway_error(&parts, &body, 503, "overloaded");

    for stream in &mut idle {
        let seen = closed_within(
            "an HTTP/2 connection that never opened a stream",
            frames_until_closed(stream, true),
        )
        .await;
        assert!(
            seen.iter().all(|f| f.kind != HEADERS),
            "nothing was answered: {seen:?}"
        );
    }
    let (parts, _) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200, "the three slots were released");
}

/// An HTTP/2 connection that has been served and then sits idle for
/// `idle_timeout` gets a GOAWAY and is closed, releasing its slot.
#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway_after_idle_timeout() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(
        &format!("http://{addr}"),
        "[server]\nmax_connections = 1\nheader_timeout = \"30s\"\nidle_timeout = \"500ms\"",
    )
    .await;
    let mut stream = h2_connect(gw.addr).await;
    stream
        .write_all(&get_request(1, "/api/organization", Some(&bearer())))
        .await
        .unwrap();
    let seen = closed_within(
        "an idle HTTP/2 connection",
        frames_until_closed(&mut stream, true),
    )
    .await;
    let answered = seen
        .iter()
        .position(|f| f.kind == HEADERS && f.stream == 1)
        .unwrap_or_else(|| panic!("the request was answered: {seen:?}"));
    let goaway = seen
        .iter()
        .position(|f| f.kind == GOAWAY)
        .unwrap_or_else(|| panic!("a GOAWAY before the close: {seen:?}"));
    assert!(answered < goaway, "{seen:?}");
    assert_eq!(fake.requests().len(), 1);
    let (parts, _) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200, "the slot was released");
}

/// An HTTP/2 peer that stops answering pings is dropped, even with a
/// request in flight (its upstream holds the answer far longer than the
/// test waits), instead of holding a slot until `request_timeout`.
#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_dropped() {
    let upstream = spawn_upstream(|_req| std::future::pending()).await;
    let gw = start_gateway(
        &format!("http://{upstream}"),
        "[server]\nrequest_timeout = \"1h\"\nheader_timeout = \"30s\"\nidle_timeout = \"1h\"\n\
         http2_ping_interval = \"300ms\"\nhttp2_ping_timeout = \"300ms\"",
    )
    .await;
    let mut stream = h2_connect(gw.addr).await;
    stream
        .write_all(&get_request(1, "/api/organization", Some(&bearer())))
        .await
        .unwrap();
    let seen = closed_within(
        "an HTTP/2 connection whose peer ignores pings",
        frames_until_closed(&mut stream, false),
    )
    .await;
    assert!(
        seen.iter().any(|f| f.kind == PING && f.flags & 0x1 == 0),
        "the gateway pinged: {seen:?}"
    );
    assert!(
        seen.iter().all(|f| f.kind != HEADERS),
        "the request was still in flight: {seen:?}"
    );
}

/// An HTTP/1 keep-alive connection idle for `idle_timeout` is closed.
#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_idle_timeout() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(
        &format!("http://{addr}"),
        "[server]\nheader_timeout = \"30s\"\nidle_timeout = \"500ms\"",
    )
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        .await
        .unwrap();
    let status = within("the /healthz response", read_http1_response(&mut stream)).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let rest = closed_within("an idle HTTP/1 connection", until_closed(&mut stream)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// Between requests an HTTP/1 connection is idle, not slow: it waits up to
/// `idle_timeout` for the next head even with a short `header_timeout`.
/// Once a head starts, `header_timeout` bounds it again.
#[tokio::test]
async fn an_http1_head_deadline_starts_with_the_heads_first_byte() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(
        &format!("http://{addr}"),
        "[server]\nheader_timeout = \"300ms\"\nidle_timeout = \"1h\"",
    )
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: gateway.test\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let status = within("the first response", read_http1_response(&mut stream)).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Proving that something does not happen takes waiting: more than three
    // header timeouts between requests.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stream.write_all(request).await.unwrap();
    let status = within("the second response", read_http1_response(&mut stream)).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "the idle connection stayed open");

    // A head that starts and never finishes is cut off after header_timeout.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gat")
        .await
        .unwrap();
    let rest = closed_within("an unfinished HTTP/1 head", until_closed(&mut stream)).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}
