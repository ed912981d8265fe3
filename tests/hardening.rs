//! Hostile clients, failing upstreams and overload, over real sockets:
//! request smuggling sent as raw bytes, slow and oversized requests, more
//! work than `server.max_inflight`, a connection flood, every way the
//! upstream can fail (each audited as `upstream_error`, none leaking the
//! partner key), retries of requests that never reached the upstream, and
//! the connection pool recovering after the upstream restarts.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const ORG_ID: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

/// An upstream answering 200 JSON that records each request's path.
async fn recording_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let addr = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(req.uri().path().to_owned());
            let _ = req.into_body().collect().await;
            http::Response::builder()
                .header("content-type", "application/json")
                .body(upstream_body(r#"{"data":{"name":"Acme"}}"#))
                .unwrap()
        }
    })
    .await;
    (addr, seen)
}

/// Writes `bytes` on a fresh connection and reads until the gateway closes
/// it (or 5 s pass); returns everything read.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_lines(response: &str) -> Vec<&str> {
    response
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1."))
        .collect()
}

#[tokio::test]
async fn smuggling_attempts_are_refused_or_framed_once_and_never_reach_the_upstream() {
    let (upstream, seen) = recording_upstream().await;
    let gw = start_gateway(&format!("http://{upstream}"), "").await;
    let auth = format!("Authorization: {}\r\n", bearer());
    let smuggled = format!("GET /api/smuggled HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    let head = format!("POST /api/things HTTP/1.1\r\nHost: x\r\n{auth}");
    let chunked_end = format!("0\r\n\r\n{smuggled}");
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "{head}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_end}",
                chunked_end.len()
            ),
        ),
        (
            "TE.CL",
            format!(
                "{head}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
        ),
        (
            "TE chunked, identity",
            format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n{chunked_end}"),
        ),
        (
            "TE xchunked",
            format!("{head}Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n{chunked_end}"),
        ),
        (
            "TE with a leading space, and CL",
            format!(
                "{head}Content-Length: {}\r\nTransfer-Encoding:  chunked\r\n\r\n{chunked_end}",
                chunked_end.len()
            ),
        ),
        (
            "TE with a trailing space, and CL",
            format!(
                "{head}Content-Length: {}\r\nTransfer-Encoding: chunked \r\n\r\n{chunked_end}",
                chunked_end.len()
            ),
        ),
        (
            "TE with a space before the colon",
            format!("{head}Transfer-Encoding : chunked\r\n\r\n{chunked_end}"),
        ),
        (
            "two Content-Lengths",
            format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{smuggled}"),
        ),
        (
            "Content-Length: +5",
            format!("{head}Content-Length: +5\r\n\r\nhello{smuggled}"),
        ),
        (
            "chunk-size overflow",
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "obs-fold",
            format!("{head}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "{}Transfer-Encoding: chunked\r\n\r\n{chunked_end}",
                head.replace("HTTP/1.1", "HTTP/1.0")
            ),
        ),
        (
            "a space in a header name",
            format!("{head}X Bad: a\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
        (
            "a control character in a header name",
            format!("{head}X\x01Bad: a\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
    ];
    for (name, bytes) in &cases {
        let response = raw_exchange(gw.addr, bytes.as_bytes()).await;
        let statuses = status_lines(&response);
        // Refused outright, or answered once with the body framed one way
        // and the connection closed: never a second response.
        assert_eq!(statuses.len(), 1, "{name}: {response}");
        assert!(
            statuses[0].starts_with("HTTP/1.1 400") || response.contains("connection: close"),
            "{name}: {response}"
        );
    }
    let paths = seen.lock().unwrap().clone();
    assert!(
        !paths.iter().any(|p| p.contains("smuggled")),
        "a smuggled request reached the upstream: {paths:?}"
    );
    // Forwarded once each, as chunked (hyper drops the Content-Length and
    // closes the connection after the response): CL.TE, TE.CL and the two
    // padded TE values sent with a Content-Length. Everything else is a 400.
    assert_eq!(paths, ["/api/things"; 4], "{paths:?}");
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_cut_off_and_holds_nothing() {
    let (upstream, _) = recording_upstream().await;
    let gw = start_gateway(
        &format!("http://{upstream}"),
        "[server]\nheader_timeout = \"1s\"",
    )
    .await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /api/organization HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // One byte every 100 ms: the whole head would take a minute.
    let dribble = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..600 {
            tick.tick().await;
            if slow.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    let normal = async {
        // Meanwhile another client is served at once.
        let (parts, _) = send(&client(), get(&gw.url("/api/organization"))).await;
        assert_eq!(parts.status, 200);
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(dribble, normal)
    })
    .await
    .expect("the slow client is cut off after header_timeout");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is closed");
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn a_body_that_stalls_midway_is_cut_off_after_request_timeout() {
    let (upstream, seen) = recording_upstream().await;
    let gw = start_gateway(
        &format!("http://{upstream}"),
        "[server]\nrequest_timeout = \"1s\"",
    )
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "PUT /api/organizations/{ORG_ID} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        bearer()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the gateway answers and closes within the request timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains(r#""key":"request_timeout""#), "{text}");
    assert!(seen.lock().unwrap().is_empty(), "nothing was forwarded");
}

#[tokio::test]
async fn oversized_heads_get_431_or_414_as_json_and_are_audited() {
    let (upstream, seen) = recording_upstream().await;
    let gw = start_gateway(&format!("http://{upstream}"), "").await;
    let client = client();
    let url = gw.url("/api/organization");

    let mut big = get(&url);
    big.headers_mut()
        .insert("x-big", "a".repeat(17 * 1024).parse().unwrap());
    let (parts, body) = send(&client, big).await;
    assert_gateway_error(&parts, &body, 431, "headers_too_large");
    assert_eq!(json(&body)["metadata"]["unit"], "bytes");

    let mut many = get(&url);
    for i in 0..101 {
        many.headers_mut().insert(
            format!("x-h{i}").parse::<http::HeaderName>().unwrap(),
            "1".parse().unwrap(),
        );
    }
    let (parts, body) = send(&client, many).await;
    assert_gateway_error(&parts, &body, 431, "headers_too_large");
    assert_eq!(json(&body)["metadata"]["limit"], 100);

    let long = gw.url(&format!("/api/organization?q={}", "a".repeat(8 * 1024)));
    let (parts, body) = send(&client, get(&long)).await;
    assert_gateway_error(&parts, &body, 414, "uri_too_long");

    // Far beyond the limits, hyper's own parser refuses before the stack
    // (a bare 431, no JSON) and the connection ends.
    let mut head = String::from("GET /api/organization HTTP/1.1\r\nHost: x\r\n");
    head.push_str(&format!("X-Huge: {}\r\n\r\n", "a".repeat(64 * 1024)));
    let response = raw_exchange(gw.addr, head.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    assert!(seen.lock().unwrap().is_empty());
    let dir = gw.shutdown().await;
    let audit = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    let refused: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(refused.len(), 3, "{audit}");
    for record in &refused {
        assert_eq!(record["outcome"], "invalid");
    }
}

/// One request on a new connection: the response's status and JSON body
/// (the body its `content-length` announces; the connection stays open).
async fn exchange(addr: std::net::SocketAddr, request: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let received = within("a whole response", async {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed early: {text}");
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let (head, body) = received.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The head limits count what the client sent, as on the wire: exactly
/// `server.max_headers` fields, or `server.max_header_bytes` bytes, pass,
/// and one more is 431. What the gateway adds (its own `x-request-id`)
/// does not count against the client.
#[tokio::test]
async fn head_limits_count_the_fields_and_bytes_the_client_sent() {
    let (upstream, seen) = recording_upstream().await;
    let gw = start_gateway(
        &format!("http://{upstream}"),
        "[server]\nmax_headers = 10\nmax_header_bytes = 4096",
    )
    .await;
    let auth = bearer();
    // No route serves /x: a request within the limits is 404 `no_route`.
    let request = |fields: &[String]| format!("GET /x HTTP/1.1\r\n{}\r\n\r\n", fields.join("\r\n"));
    let base = ["Host: x".to_owned(), format!("Authorization: {auth}")];

    for (extra, status, key) in [(8, 404, "no_route"), (9, 431, "headers_too_large")] {
        let mut fields = base.to_vec();
        fields.extend((0..extra).map(|i| format!("x-h{i}: 1")));
        let (got, body) = exchange(gw.addr, &request(&fields)).await;
        assert_eq!(
            (got, body["key"].as_str()),
            (status, Some(key)),
            "{} fields: {body}",
            fields.len()
        );
    }

    // Bytes: each field is its name, its value and 4 (`: ` and CRLF).
    let used = "host".len() + "x".len() + 4 + "authorization".len() + auth.len() + 4;
    let pad = 4096 - used - "x-pad".len() - 4;
    for (pad, status, key) in [(pad, 404, "no_route"), (pad + 1, 431, "headers_too_large")] {
        let mut fields = base.to_vec();
        fields.push(format!("x-pad: {}", "a".repeat(pad)));
        let (got, body) = exchange(gw.addr, &request(&fields)).await;
        assert_eq!(
            (got, body["key"].as_str()),
            (status, Some(key)),
            "pad {pad}: {body}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// An upstream that holds every request until released: each arrival adds
/// a permit to `arrived`; `release.notify_waiters()` answers every held one
/// with `body`.
async fn holding_upstream(
    body: &'static str,
) -> (
    std::net::SocketAddr,
    Arc<Notify>,
    Arc<tokio::sync::Semaphore>,
) {
    let release = Arc::new(Notify::new());
    let arrived = Arc::new(tokio::sync::Semaphore::new(0));
    let (r, a) = (release.clone(), arrived.clone());
    let upstream = spawn_upstream(move |_req: Request<hyper::body::Incoming>| {
        let (r, a) = (r.clone(), a.clone());
        async move {
            let released = r.notified();
            a.add_permits(1);
            released.await;
            http::Response::new(upstream_body(body))
        }
    })
    .await;
    (upstream, release, arrived)
}

#[tokio::test]
async fn requests_past_max_inflight_are_shed_with_503_and_retry_after() {
    let (upstream, release, arrived) = holding_upstream(r#"{"data":{}}"#).await;
    // Two workers: connections alternate between them, so the third request
    // lands on the worker already holding one and is refused only if the
    // limit is shared.
    let gw = start_gateway(
        &format!("http://{upstream}"),
        "[server]\nmax_inflight = 2\nworkers = 2",
    )
    .await;
    let url = gw.url("/api/organization");
    let spawn_get = |url: String| {
        tokio::spawn(async move {
            let client = client();
            send(&client, get(&url)).await
        })
    };
    let held: Vec<_> = (0..2).map(|_| spawn_get(url.clone())).collect();
    // Both are in flight once the upstream holds both.
    let _both = tokio::time::timeout(Duration::from_secs(10), arrived.acquire_many(2))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = send(&client(), get(&url)).await;
    assert_gateway_error(&parts, &body, 503, "overloaded");
    assert_eq!(parts.headers["retry-after"], "1");
    // Health is answered above the limit, so probes still work.
    let (health, _) = send(&client(), get(&gw.url("/readyz"))).await;
    assert_eq!(health.status, 200);
    release.notify_waiters();
    for request in held {
        let response = within("a held request's response", request).await;
        assert_eq!(response.unwrap().0.status, 200);
    }
    let after = spawn_get(url.clone());
    // The upstream holds every request: release the next one too.
    let _one = tokio::time::timeout(Duration::from_secs(10), arrived.acquire())
        .await
        .unwrap()
        .unwrap();
    release.notify_waiters();
    let response = within("the response after the shed one", after).await;
    assert_eq!(response.unwrap().0.status, 200);
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight_on_every_worker() {
    let (upstream, release, arrived) = holding_upstream(r#"{"data":{"drained":true}}"#).await;
    // Connections go round-robin, so three of them land on three workers.
    let gw = start_gateway(&format!("http://{upstream}"), "[server]\nworkers = 3").await;
    let addr = gw.addr;
    let held: Vec<_> = (0..3)
        .map(|_| {
            let url = gw.url("/api/organization");
            tokio::spawn(async move { send(&client(), get(&url)).await })
        })
        .collect();
    let _all = tokio::time::timeout(Duration::from_secs(10), arrived.acquire_many(3))
        .await
        .unwrap()
        .unwrap();
    let stopped = tokio::spawn(gw.shutdown());
    // Draining has begun once the listener is gone.
    tokio::time::timeout(Duration::from_secs(10), async {
        // A poll of the listener's state: a short pause between tries.
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the listener was never closed");
    release.notify_waiters();
    for request in held {
        let (parts, body) = within("a drained response", request).await.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(json(&body)["data"]["drained"], true);
    }
    let dir = tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("serve did not return after draining")
        .unwrap();
    let audit = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    let drained = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["status"] == 200 && r["path"] == "/api/organization")
        .count();
    assert_eq!(drained, 3, "{audit}");
}

#[tokio::test]
async fn a_ten_thousand_connection_flood_keeps_memory_bounded() {
    let (upstream, _) = recording_upstream().await;
    let dir = TestDir::new();
    // The default limits but a fixed worker count, so memory does not scale
    // with the machine's cores; a short grace so the flood drains quickly.
    let path = dir.config(
        &format!("http://{upstream}"),
        "[server]\nworkers = 2\nshutdown_grace = \"1s\"",
    );
    // 10,000 sockets need an open-file limit above the common default of
    // 1,024: raise ours (the gateway inherits it) as far as the hard limit
    // allows, and size the flood to what is left.
    let limit = raise_open_file_limit();
    let flood = 10_000.min(limit.saturating_sub(256) as usize);
    assert!(
        flood > 4_096 + 1_024,
        "an open-file limit of {limit} cannot get past max_connections"
    );
    let gateway = Binary::serve(&path, &[]).await;
    let before = gateway.proc_kib("VmRSS");
    let mut connections = Vec::with_capacity(flood);
    for _ in 0..flood {
        match TcpStream::connect(gateway.addr).await {
            Ok(stream) => connections.push(stream),
            Err(error) => panic!("connect {}: {error}", connections.len()),
        }
    }
    let peak = gateway.proc_kib("VmHWM");
    eprintln!("RSS idle {before} KiB; peak with {flood} connections {peak} KiB");
    assert!(
        peak < 256 * 1024,
        "peak RSS {peak} KiB with {flood} connections (idle {before} KiB)"
    );
    // Past `max_connections` (4,096) and the 1,024 shed ones, connections
    // were closed at once; the process is still there to be stopped.
    drop(connections);
    let output = {
        let mut gateway = gateway;
        gateway.signal("TERM");
        gateway.collect_output().await
    };
    assert!(output.contains("drained; exiting"), "{output}");
}

/// Raises this process's soft open-file limit to its hard limit with
/// util-linux `prlimit` (no privilege needed), and returns the soft limit
/// now in force. Children started afterwards inherit it.
fn raise_open_file_limit() -> u64 {
    let pid = std::process::id().to_string();
    let read = || {
        let out = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid,
                "--nofile",
                "--noheadings",
                "--raw",
                "--output=SOFT,HARD",
            ])
            .output()
            .expect("prlimit (util-linux) runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut values = text.split_whitespace().map(|v| match v {
            "unlimited" => u64::MAX,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("prlimit printed {text:?}")),
        });
        (values.next().unwrap(), values.next().unwrap())
    };
    let (soft, hard) = read();
    if soft < hard {
        let hard_text = if hard == u64::MAX {
            "unlimited".into()
        } else {
            hard.to_string()
        };
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard_text}:{hard_text}")])
            .status()
            .expect("prlimit (util-linux) runs");
        assert!(status.success(), "prlimit could not raise the soft limit");
    }
    read().0
}

/// A TLS server whose self-signed certificate nothing trusts.
async fn untrusted_tls_upstream() -> u16 {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(cert.der().to_vec())],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn every_upstream_failure_has_its_status_its_audit_record_and_no_key() {
    let (silent_addr, silent) = silent_upstream().await;
    let closed = closed_port();
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "refused",
            format!("http://127.0.0.1:{}", closed.port),
            "",
            502,
            "upstream_unreachable",
        ),
        (
            "DNS failure",
            "http://polytomic-gateway-test.invalid".into(),
            "",
            502,
            "upstream_unreachable",
        ),
        (
            "untrusted certificate",
            format!("https://localhost:{}", untrusted_tls_upstream().await),
            "",
            502,
            "upstream_unreachable",
        ),
        (
            "no response in time",
            format!("http://{silent_addr}"),
            "timeout = \"300ms\"",
            504,
            "upstream_timeout",
        ),
        (
            "reset after the request was sent",
            format!("http://{}", raw_upstream(b"").await),
            "",
            502,
            "upstream_failed",
        ),
    ];
    for (name, url, upstream_extra, status, key) in cases {
        let gw = start_gateway(&url, &format!("[upstream]\n{upstream_extra}")).await;
        let (parts, body) = send(&client(), get(&gw.url("/api/organization"))).await;
        assert_gateway_error(&parts, &body, status, key);
        assert!(parts.headers.contains_key("x-request-id"), "{name}");
        if key == "upstream_timeout" {
            assert_eq!(
                json(&body)["message"],
                "the upstream did not respond within 300ms"
            );
        }
        let dir = gw.shutdown().await;
        let audit = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
        let record: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
        assert_eq!(record["outcome"], "upstream_error", "{name}: {audit}");
        assert_eq!(record["error_key"], key, "{name}");
        assert!(
            !audit.contains(PARTNER_KEY),
            "{name}: key in the audit trail"
        );
    }
    silent.notify_one();

    // Cut off mid-body: the client's body aborts, and the record says so.
    let cut = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"data\":",
    )
    .await;
    let gw = start_gateway(&format!("http://{cut}"), "").await;
    let response = within(
        "the response head",
        client().request(get(&gw.url("/api/organization"))),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body = within("the cut-off body to end", response.into_body().collect()).await;
    assert!(
        body.is_err(),
        "a truncated upstream body must not look complete"
    );
    let dir = gw.shutdown().await;
    let audit = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    let record: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(record["outcome"], "upstream_error", "{audit}");
    assert_eq!(record["status"], 200);
    assert_eq!(record["error_key"], "upstream_failed");
}

#[tokio::test]
async fn only_replayable_requests_are_retried_and_only_after_a_connect_failure() {
    let dir = TestDir::new();
    // Reserved, not listening: connections are refused until it listens.
    let closed = closed_port();
    let path = dir.config(
        &format!("http://127.0.0.1:{}", closed.port),
        "[upstream]\nretries = 3",
    );
    let mut gateway = Binary::serve(&path, &[]).await;
    let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));
    let body = r#"{"name":"Acme"}"#;
    let put = |key: Option<&str>| {
        let mut req = Request::put(&org)
            .header("authorization", bearer())
            .header("content-type", "application/json");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req.body(Full::new(Bytes::from(body))).unwrap()
    };
    // A PATCH without an Idempotency-Key is not retried: one attempt, 502.
    let patch = Request::patch(&org)
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .header("x-request-id", "no-retry")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (parts, _) = send(&client(), patch).await;
    assert_eq!(parts.status, 502);

    // A PUT is idempotent: while it backs off, the upstream comes up, and
    // the next attempt gets through.
    let retried_put = put(Some("idem-7"));
    let request = tokio::spawn(async move {
        let client = client();
        send(&client, retried_put).await
    });
    gateway.wait_for_line("sending the request again").await;
    // The upstream comes up on the reserved port: each request it gets,
    // head and whole body, goes to `received`.
    let (arrived, mut received) = tokio::sync::mpsc::unbounded_channel();
    serve_upstream(
        closed.listen(),
        move |req: Request<hyper::body::Incoming>| {
            let arrived = arrived.clone();
            async move {
                let (head, sent) = req.into_parts();
                let sent = sent.collect().await.map(|b| b.to_bytes());
                let _ = arrived.send((head, sent));
                http::Response::new(upstream_body(r#"{"data":{}}"#))
            }
        },
    );
    let (parts, _) = within("the retried PUT's response", request).await.unwrap();
    assert_eq!(parts.status, 200);
    let (head, sent) = within("the retried PUT at the upstream", received.recv())
        .await
        .expect("the upstream got the PUT");
    assert_eq!(head.headers["idempotency-key"], "idem-7", "{head:?}");
    let sent = sent.expect("the upstream read the whole body");
    assert_eq!(
        &sent[..],
        body.as_bytes(),
        "the body was sent again whole: {sent:?}"
    );
    let output = {
        gateway.signal("TERM");
        gateway.collect_output().await
    };
    let retried: Vec<_> = output
        .lines()
        .filter(|l| l.contains("sending the request again"))
        .collect();
    assert!(!retried.is_empty() && retried.len() <= 3, "{output}");
    assert!(
        !retried.iter().any(|l| l.contains("no-retry")),
        "the PATCH was retried: {output}"
    );
}

#[tokio::test]
async fn the_connection_pool_recovers_after_the_upstream_restarts() {
    // One listener for both lives of the upstream: rebinding a released
    // port could race another test that is given it meanwhile.
    let listener = Arc::new(TcpListener::bind(("127.0.0.1", 0)).await.unwrap());
    let addr = listener.local_addr().unwrap();
    let serve = |listener: Arc<TcpListener>| {
        tokio::spawn(async move {
            // Aborting the accept loop drops this set, which ends every
            // connection: the upstream is gone entirely.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(upstream_body(
                        r#"{"data":{}}"#,
                    )))
                });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        })
    };
    let first = serve(listener.clone());
    let gw = start_gateway(&format!("http://{addr}"), "").await;
    let client = client();
    let url = gw.url("/api/organization");
    for _ in 0..3 {
        assert_eq!(send(&client, get(&url)).await.0.status, 200);
    }
    // The upstream goes away with the gateway's pooled connections, then
    // comes back on the same port.
    first.abort();
    let _ = first.await;
    let second = serve(listener);
    for _ in 0..3 {
        assert_eq!(send(&client, get(&url)).await.0.status, 200);
    }
    second.abort();
}
