//! Gateway errors over real sockets: each failure has its exact status and a
//! JSON body in Polytomic's error shape, and nothing leaks the partner key.
//! The ways the upstream itself fails (refused, DNS, TLS, silent, reset, cut
//! off mid-body) are one table in tests/hardening.rs, with their audit records.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use polytomic_gateway::fake::FakePolytomic;
use tokio::sync::Notify;

#[tokio::test]
async fn the_whole_request_timeout_is_504_request_timeout() {
    let (addr, stop) = silent_upstream().await;
    let gw = start_gateway(
        &format!("http://{addr}"),
        "[upstream]\ntimeout = \"30s\"\n[server]\nrequest_timeout = \"200ms\"",
    )
    .await;
    let (parts, body) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_gateway_error(&parts, &body, 504, "request_timeout");
    stop.notify_one();
}

#[tokio::test]
async fn a_declared_oversize_body_is_413_and_never_forwarded() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(&format!("http://{addr}"), "[server]\nmax_body_bytes = 1024").await;
    let req = Request::post(gw.url("/api/organizations"))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(vec![b' '; 2048])))
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_gateway_error(&parts, &body, 413, "payload_too_large");
    assert_eq!(json(&body)["metadata"]["limit_bytes"], 1024);
    // A follow-up request is forwarded, and is the only one the upstream saw.
    send(&client(), get(&gw.url("/api/organization"))).await;
    let seen = within("a request at the upstream", fake.wait_for_requests(1)).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/organization");
}

#[tokio::test]
async fn a_chunked_oversize_body_is_413_and_never_completes_upstream() {
    // An upstream that reads each body to its end before answering, and
    // keeps how each read ended: its length, or how it broke off.
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<Result<usize, String>>::new()));
    let read = Arc::new(Notify::new());
    let (b, r) = (bodies.clone(), read.clone());
    let upstream = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
        let (b, r) = (b.clone(), r.clone());
        async move {
            let body = req.into_body().collect().await;
            b.lock()
                .unwrap()
                .push(body.map(|c| c.to_bytes().len()).map_err(|e| e.to_string()));
            r.notify_one();
            http::Response::new(upstream_body(r#"{"data":{}}"#))
        }
    })
    .await;
    let gw = start_gateway(
        &format!("http://{upstream}"),
        "[server]\nmax_body_bytes = 100000",
    )
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Zeros>();
    // No Content-Length, and a route with no schema (the catch-all): the
    // body streams upstream as it arrives and is cut off at the limit.
    let req = Request::post(gw.url("/api/connections"))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(Zeros { remaining: 300_000 })
        .unwrap();
    let response = within("the chunked POST's response", client.request(req))
        .await
        .expect("gateway answers");
    let (parts, body) = response.into_parts();
    let body = within("the 413 body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_gateway_error(&parts, &body, 413, "payload_too_large");
    // The upload was forwarded as it streamed, and the upstream saw it
    // break off: never a complete request.
    within("the upstream to finish reading", async {
        while bodies.lock().unwrap().is_empty() {
            read.notified().await;
        }
    })
    .await;
    let seen = bodies.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].is_err(),
        "the truncated upload reached the upstream whole: {seen:?}"
    );
}

#[tokio::test]
async fn upstream_5xx_passes_through_and_is_not_a_gateway_error() {
    let upstream = spawn_upstream(|_req| async {
        http::Response::builder()
            .status(503)
            .header("content-type", "application/json")
            .header("retry-after", "7")
            .body(upstream_body(
                r#"{"status":503,"message":"maintenance","key":"maintenance","metadata":{}}"#,
            ))
            .unwrap()
    })
    .await;
    let gw = start_gateway(&format!("http://{upstream}"), "").await;
    let (parts, body) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 503);
    assert_eq!(parts.headers["retry-after"], "7");
    assert_eq!(json(&body)["key"], "maintenance");
}

#[tokio::test]
async fn connections_past_max_connections_get_503_overloaded() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(&format!("http://{addr}"), "[server]\nmax_connections = 1").await;
    // The first connection holds the only permit (kept alive by the client pool).
    let kept = client();
    let (parts, _) = send(&kept, get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200);
    // A second client opens a second connection, which is shed.
    let (parts, body) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_gateway_error(&parts, &body, 503, "overloaded");
    assert_eq!(parts.headers["retry-after"], "1");
    // The held connection still works.
    let (parts, _) = send(&kept, get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_silent_connection_is_cut_and_releases_its_slot() {
    use tokio::io::AsyncReadExt;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(
        &format!("http://{addr}"),
        "[server]\nmax_connections = 1\nheader_timeout = \"300ms\"",
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The gateway closes it after header_timeout: reading sees EOF.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the silent connection was never closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let (parts, _) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200, "the slot was released");
}

/// A layer that panics (a bug) still gets the client a 500 `internal` in
/// Polytomic's error shape, over a real socket, and the audit trail a record
/// with outcome `error`; the panic's formatted message, which here holds a
/// secret, is not what is reported of it.
#[tokio::test]
async fn a_panic_in_a_layer_is_a_json_500_and_an_error_record() {
    use polytomic_gateway::audit::{Audit, AuditConfig, AuditLayer, Durability, SinkKind};
    use polytomic_gateway::error::{describe_panic, RescueLayer};
    use tower::ServiceBuilder;

    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let audit = Audit::from_config(
        &AuditConfig {
            sinks: vec![SinkKind::File],
            path: Some(audit_path.clone()),
            durability: Durability::Fsync,
            ..AuditConfig::default()
        },
        None,
    )
    .unwrap();
    // The edge of the real stack (audit outside Rescue), over a layer that
    // panics: one request panics in its future, one in `call` itself.
    let svc = ServiceBuilder::new()
        .layer(AuditLayer::new(audit.clone()))
        .layer(RescueLayer::new(std::time::Duration::from_secs(5)))
        .service(PanicsOnPath);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    for (path, id) in [("/in-future", "panic-future"), ("/in-call", "panic-call")] {
        let req = http::Request::builder()
            .uri(format!("http://{addr}{path}"))
            .header("x-request-id", id)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let (parts, body) = send(&client(), req).await;
        assert_gateway_error(&parts, &body, 500, "internal");
        assert!(!String::from_utf8_lossy(&body).contains(PANIC_SECRET));
    }
    audit.close().await;
    let trail = std::fs::read_to_string(&audit_path).unwrap();
    for id in ["panic-future", "panic-call"] {
        let record: serde_json::Value = trail
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            // A stack of its own (no gateway request ids): the header as sent.
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no record for {id}: {trail}"));
        assert_eq!(record["outcome"], "error", "{record}");
        assert_eq!(record["status"], 500, "{record}");
        assert_eq!(record["error_key"], "internal", "{record}");
    }
    assert!(!trail.contains(PANIC_SECRET));
    // What the panic hook logs: a literal message, never a formatted one.
    let formatted: Box<dyn std::any::Any + Send> = Box::new(format!("key {PANIC_SECRET}"));
    let described = describe_panic(&*formatted, Some("src/x.rs:1".into()));
    assert!(!described.contains(PANIC_SECRET) && described.ends_with("at src/x.rs:1"));
    let literal: Box<dyn std::any::Any + Send> = Box::new("invariant broken");
    assert_eq!(describe_panic(&*literal, None), "invariant broken");
}

const PANIC_SECRET: &str = "sk_live_CANARY_panic_52c1";

/// A service that panics: in its future for `/in-future`, in `call` for
/// anything else.
#[derive(Clone)]
struct PanicsOnPath;

impl<B> tower::Service<http::Request<B>> for PanicsOnPath {
    type Response = http::Response<polytomic_gateway::body::GatewayBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == "/in-future" {
            return Box::pin(async { panic!("bug while holding {PANIC_SECRET}") });
        }
        panic!("bug in call while holding {PANIC_SECRET}")
    }
}

/// A flood of connections past `server.max_connections` is counted in
/// `gateway_connections_shed_total`, and logged as a few lines with counts,
/// not one warning per connection.
#[tokio::test]
async fn shed_connections_are_counted_and_their_warning_is_rate_limited() {
    const FLOOD: usize = 20;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(&format!("http://{addr}"), "[server]\nmax_connections = 1");
    let mut gw = Binary::serve(&path, &[]).await;
    // One client holds the only permit (its pool keeps the connection).
    let kept = client();
    let (parts, _) = send(&kept, get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200);
    for _ in 0..FLOOD {
        let (parts, body) = send(&client(), get(&gw.url("/api/organization"))).await;
        assert_gateway_error(&parts, &body, 503, "overloaded");
    }
    let (parts, metrics) = send(&kept, get(&gw.admin_url("/metrics"))).await;
    assert_eq!(parts.status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!(
            "gateway_connections_shed_total{{how=\"answered\"}} {FLOOD}"
        )),
        "{metrics}"
    );
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    let output = gw.collect_output().await;
    let warnings = output
        .lines()
        .filter(|l| l.contains("connection limit reached"))
        .count();
    // One line a second at most: the flood takes well under a few seconds.
    assert!(
        (1..FLOOD / 2).contains(&warnings),
        "{warnings} warnings for {FLOOD} shed connections:\n{output}"
    );
}
