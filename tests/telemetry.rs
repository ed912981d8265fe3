//! Traces, metrics and logs, end to end: the real binary exports spans over
//! OTLP to a receiver in the test, which decodes the protobuf
//! (`opentelemetry-proto`); an upstream in the test records the
//! `traceparent` it is sent; `/metrics` is parsed as Prometheus text.
//!
//! Spans are exported in batches; stopping the gateway flushes them, so the
//! span tests stop it (SIGTERM) before looking, instead of waiting on time.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

const ORG_ID: &str = "0b6c1f7e-3d2a-4c55-9a1e-2f8b7c6d5e4f";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const CANARY_SECRET: &str = "cs_CANARY_client_secret_91b2";

/// Spans received by the test collector, over OTLP/HTTP or gRPC.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    /// Every export request body, raw, for the canary search.
    raw: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    fn take(&self, body: Bytes) {
        let export = ExportTraceServiceRequest::decode(body.clone()).expect("valid OTLP protobuf");
        self.raw.lock().unwrap().push(body);
        let mut spans = self.spans.lock().unwrap();
        for resource in export.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.clone()?.value);
            assert_eq!(
                service,
                Some(AnyValue::StringValue("gateway-under-test".into()))
            );
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }

    /// An OTLP/HTTP receiver (`POST /v1/traces`).
    async fn http() -> (Self, std::net::SocketAddr) {
        let receiver = Self::default();
        let r = receiver.clone();
        let addr = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
            let r = r.clone();
            async move {
                assert_eq!(req.uri().path(), "/v1/traces");
                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                r.take(req.into_body().collect().await.unwrap().to_bytes());
                http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(upstream_body(
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    ))
                    .unwrap()
            }
        })
        .await;
        (receiver, addr)
    }

    /// A gRPC receiver: HTTP/2, length-prefixed messages, status in trailers.
    async fn grpc() -> (Self, std::net::SocketAddr) {
        let receiver = Self::default();
        let r = receiver.clone();
        let addr = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
            let r = r.clone();
            async move {
                assert_eq!(
                    req.uri().path(),
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                );
                assert_eq!(req.version(), http::Version::HTTP_2);
                let mut body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.get_u8(), 0, "uncompressed message");
                let len = body.get_u32() as usize;
                r.take(body.split_to(len));
                let reply = ExportTraceServiceResponse::default().encode_to_vec();
                let mut frame = BytesMut::new();
                frame.put_u8(0);
                frame.put_u32(reply.len() as u32);
                frame.put_slice(&reply);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames = futures_util::stream::iter([
                    Ok::<_, std::io::Error>(http_body::Frame::data(frame.freeze())),
                    Ok(http_body::Frame::trailers(trailers)),
                ]);
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(http_body_util::StreamBody::new(frames).boxed())
                    .unwrap()
            }
        })
        .await;
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span's attributes, as strings.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.clone()?.value? {
                AnyValue::StringValue(s) => s,
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// The spans of one trace, by name; panics on a repeated name.
fn trace(spans: &[Span], trace_id: &str) -> HashMap<String, Span> {
    let mut by_name = HashMap::new();
    for span in spans.iter().filter(|s| hex(&s.trace_id) == trace_id) {
        assert!(
            by_name.insert(span.name.clone(), span.clone()).is_none(),
            "two {:?} spans in trace {trace_id}",
            span.name
        );
    }
    by_name
}

/// An upstream answering 200 JSON that records each request's `traceparent`.
async fn recording_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let addr = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let traceparent = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            s.lock().unwrap().push(traceparent);
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

fn request(
    method: Method,
    url: &str,
    token: &str,
    traceparent: Option<&str>,
) -> Request<Full<Bytes>> {
    let body = if method == Method::PUT {
        format!(r#"{{"name":"Acme","client_id":"cid","client_secret":"{CANARY_SECRET}"}}"#)
    } else {
        String::new()
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", "telemetry-test/1.0")
        .header("content-type", "application/json");
    if let Some(traceparent) = traceparent {
        builder = builder
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=opaque");
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

fn support_token() -> String {
    sign(
        "rsa-a",
        jsonwebtoken::Algorithm::RS256,
        &claims("bob@corp", &["support"]),
    )
}

/// Stops the binary with SIGTERM (which flushes pending spans) and returns
/// everything it printed.
async fn stop(mut gateway: Binary) -> String {
    gateway.signal("TERM");
    tokio::time::timeout(Duration::from_secs(30), gateway.collect_output())
        .await
        .expect("the gateway exits after SIGTERM")
}

/// The JSON lines of a gateway's output (the logs; other lines skipped).
fn json_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every record of the audit file in `dir`, each a JSON line.
fn audit_records(dir: &TestDir) -> Vec<Value> {
    std::fs::read_to_string(dir.path("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn telemetry_section(endpoint: &str, extra: &str) -> String {
    format!(
        "[telemetry]\nservice_name = \"gateway-under-test\"\notlp_endpoint = {endpoint:?}\n{extra}\n"
    )
}

/// The binary, exporting to `collector` with `[telemetry]` lines `extra`, in
/// front of a recording upstream; returns it, the upstream's `traceparent`s
/// and the temp dir (which holds the audit file).
async fn start_traced(
    collector: std::net::SocketAddr,
    extra: &str,
) -> (Binary, Arc<Mutex<Vec<String>>>, TestDir) {
    let (upstream, traceparents) = recording_upstream().await;
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{upstream}"),
        &telemetry_section(&format!("http://{collector}"), extra),
    );
    (Binary::serve(&path, &[]).await, traceparents, dir)
}

#[tokio::test]
async fn spans_form_one_trace_from_the_caller_through_the_gateway_to_the_upstream() {
    let (receiver, collector) = Receiver::http().await;
    let (gateway, traceparents, dir) = start_traced(collector, "request_log = true").await;
    let client = client();
    let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));

    // 1. An allowed GET that continues the caller's sampled trace.
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (parts, _) = send(&client, request(Method::GET, &org, token(), Some(&caller))).await;
    assert_eq!(parts.status, 200);
    let get_request_id = parts.headers["x-request-id"].to_str().unwrap().to_owned();
    // 2. An allowed PUT (validation and the audit write), in a new trace.
    let (parts, _) = send(&client, request(Method::PUT, &org, token(), None)).await;
    assert_eq!(parts.status, 200);
    // 3. A PUT the policy denies.
    let denied_trace = "0af7651916cd43dd8448eb211c80319c";
    let denied_parent = format!("00-{denied_trace}-b7ad6b7169203331-01");
    let (parts, body) = send(
        &client,
        request(Method::PUT, &org, &support_token(), Some(&denied_parent)),
    )
    .await;
    assert_gateway_error(&parts, &body, 403, "forbidden");
    let output = stop(gateway).await;

    let spans = receiver.spans();
    // The allowed GET: the server span is the caller's span's child...
    let get = trace(&spans, CALLER_TRACE);
    let server = &get["GET /api/organizations/{id}"];
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    // ...and the parent of the authentication, policy and upstream spans.
    for name in ["auth", "policy", "upstream"] {
        let child = get
            .get(name)
            .unwrap_or_else(|| panic!("no {name} span: {get:?}"));
        assert_eq!(child.parent_span_id, server.span_id, "{name}'s parent");
    }
    assert_eq!(
        get.len(),
        4,
        "GET has no validation or audit-write span: {:?}",
        get.keys()
    );
    let upstream_span = &get["upstream"];
    assert_eq!(upstream_span.kind, SpanKind::Client as i32);
    let client_attrs = attributes(upstream_span);
    assert_eq!(client_attrs["server.address"], "127.0.0.1");
    assert_eq!(client_attrs["http.response.status_code"], "200");
    // The upstream was told our client span is its parent, sampled.
    let seen = traceparents.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        format!("00-{CALLER_TRACE}-{}-01", hex(&upstream_span.span_id))
    );
    let attrs = attributes(server);
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.path", &*format!("/api/organizations/{ORG_ID}")),
        ("http.route", "/api/organizations/{id}"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("user_agent.original", "telemetry-test/1.0"),
        ("polytomic.operation", "organizations.get"),
        ("polytomic.organization_id", ORG_ID),
        ("enduser.id", "alice@corp"),
        ("enduser.teams", "platform"),
        ("gateway.decision", "allow"),
        ("gateway.rule", "platform-all"),
        ("gateway.outcome", "allowed"),
        // The gateway's id, as on the response and in the audit record.
        ("request_id", &*get_request_id),
    ] {
        assert_eq!(
            attrs.get(key).map(String::as_str),
            Some(value),
            "{key} in {attrs:?}"
        );
    }
    assert_ne!(
        server.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // The allowed PUT: a new trace, with validation and the audit write too.
    let put_trace = hex(&spans
        .iter()
        .find(|s| s.name == "PUT /api/organizations/{id}" && s.parent_span_id.is_empty())
        .expect("the PUT's server span has no parent")
        .trace_id);
    let put = trace(&spans, &put_trace);
    let server_id = &put["PUT /api/organizations/{id}"].span_id;
    for name in ["auth", "policy", "validate", "audit.write", "upstream"] {
        assert_eq!(&put[name].parent_span_id, server_id, "{name}'s parent");
    }
    assert_eq!(
        seen[1],
        format!("00-{put_trace}-{}-01", hex(&put["upstream"].span_id))
    );

    // The denied PUT: an error span with the key, and nothing went upstream.
    let denied = trace(&spans, denied_trace);
    let server = &denied["PUT /api/organizations/{id}"];
    let status = server.status.as_ref().expect("a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "forbidden");
    let attrs = attributes(server);
    assert_eq!(attrs["gateway.decision"], "deny");
    assert_eq!(attrs["gateway.rule"], "_default");
    assert_eq!(attrs["http.response.status_code"], "403");
    assert_eq!(attrs["enduser.teams"], "support");
    assert!(!denied.contains_key("upstream") && !denied.contains_key("validate"));
    assert_eq!(seen.len(), 2, "the denied PUT was not forwarded");

    // No secret in any span attribute or event, nor anywhere in the exports.
    for raw in receiver.raw.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(raw);
        for secret in [CANARY_SECRET, PARTNER_KEY, token()] {
            assert!(!text.contains(secret), "a secret reached the collector");
        }
    }
    for span in &spans {
        let events: Vec<_> = span.events.iter().map(|e| format!("{e:?}")).collect();
        let all = format!("{:?} {events:?}", attributes(span));
        assert!(!all.contains(CANARY_SECRET) && !all.contains(PARTNER_KEY));
    }

    // The trace id is in the audit records and in the request's log lines.
    let records = audit_records(&dir);
    for trace_id in [CALLER_TRACE, &put_trace, denied_trace] {
        assert!(
            records
                .iter()
                .any(|r| r["trace_id"] == trace_id && r["stage"] == "response"),
            "no response record with trace_id {trace_id}"
        );
    }
    let logs = json_lines(&output);
    let in_request = |trace_id: &str| -> Vec<&Value> {
        logs.iter()
            .filter(|l| l["spans"][0]["trace_id"] == trace_id)
            .collect()
    };
    let summary = in_request(CALLER_TRACE)
        .into_iter()
        .find(|l| l["message"] == "request")
        .expect("one summary line for the GET");
    assert_eq!(summary["level"], "INFO");
    assert_eq!(summary["status"], 200);
    assert_eq!(summary["operation"], "organizations.get");
    assert!(summary["duration_ms"].is_number());
    assert!(summary["spans"][0]["request_id"].is_string());
    // The refusal: warned with its reason, under the same trace id.
    let denied_lines = in_request(denied_trace);
    assert!(denied_lines
        .iter()
        .any(|l| l["message"] == "request refused"
            && l["level"] == "WARN"
            && l["reason"] == "forbidden"));
    // One line per refusal: the layer that refused logs at debug only.
    assert_eq!(denied_lines.len(), 1, "{denied_lines:?}");
    assert_eq!(
        denied_lines[0]["detail"],
        "team may not perform organizations.update"
    );
    assert!(!output.contains(CANARY_SECRET) && !output.contains(PARTNER_KEY));
    assert!(!output.contains(token()));
}

#[tokio::test]
async fn spans_are_exported_over_grpc_too() {
    let (receiver, collector) = Receiver::grpc().await;
    let (gateway, _, _dir) = start_traced(collector, "otlp_protocol = \"grpc\"").await;
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));
    let (parts, _) = send(
        &client(),
        request(Method::GET, &org, token(), Some(&caller)),
    )
    .await;
    assert_eq!(parts.status, 200);
    stop(gateway).await;
    let spans = trace(&receiver.spans(), CALLER_TRACE);
    assert_eq!(
        hex(&spans["GET /api/organizations/{id}"].parent_span_id),
        CALLER_SPAN
    );
    assert!(spans.contains_key("upstream"));
}

#[tokio::test]
async fn sampling_honours_the_callers_flag_and_the_ratio_for_new_traces() {
    let (receiver, collector) = Receiver::http().await;
    let (gateway, traceparents, _dir) = start_traced(collector, "sample_ratio = 0.0").await;
    let client = client();
    let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));
    let unsampled = "11111111111111111111111111111111";
    for traceparent in [
        None,
        Some(format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
        Some(format!("00-{unsampled}-{CALLER_SPAN}-00")),
    ] {
        let (parts, _) = send(
            &client,
            request(Method::GET, &org, token(), traceparent.as_deref()),
        )
        .await;
        assert_eq!(parts.status, 200);
    }
    stop(gateway).await;
    let spans = receiver.spans();
    let traces: std::collections::BTreeSet<_> = spans.iter().map(|s| hex(&s.trace_id)).collect();
    assert_eq!(traces.into_iter().collect::<Vec<_>>(), [CALLER_TRACE]);
    // Unsampled traces still propagate, flagged unsampled.
    let seen = traceparents.lock().unwrap().clone();
    assert!(seen[0].ends_with("-00") && seen[0].len() == 55, "{seen:?}");
    assert!(seen[2].starts_with(&format!("00-{unsampled}-")) && seen[2].ends_with("-00"));
}

#[tokio::test]
async fn without_an_exporter_trace_ids_are_still_made_propagated_and_audited() {
    let (upstream, traceparents) = recording_upstream().await;
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{upstream}"),
        &telemetry_section("", "request_log = true"),
    );
    let gateway = Binary::serve(&path, &[]).await;
    let client = client();
    let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    for traceparent in [None, Some(caller.as_str())] {
        let (parts, _) = send(&client, request(Method::GET, &org, token(), traceparent)).await;
        assert_eq!(parts.status, 200);
    }
    let output = stop(gateway).await;

    let seen = traceparents.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A new trace: a fresh trace id, sent upstream unsampled (nothing
    // records it), with a new span id of ours.
    let fields: Vec<&str> = seen[0].split('-').collect();
    assert_eq!(fields.len(), 4, "{seen:?}");
    let new_trace = fields[1];
    assert!(
        new_trace.len() == 32 && new_trace != "0".repeat(32),
        "{seen:?}"
    );
    assert_eq!(fields[3], "00", "{seen:?}");
    // The caller's sampled trace continues, still sampled, under our span.
    assert!(
        seen[1].starts_with(&format!("00-{CALLER_TRACE}-")),
        "{seen:?}"
    );
    assert!(
        !seen[1].contains(CALLER_SPAN) && seen[1].ends_with("-01"),
        "{seen:?}"
    );
    // Both trace ids reach the audit trail and the request's log line.
    let records = audit_records(&dir);
    let logs = json_lines(&output);
    for trace_id in [new_trace, CALLER_TRACE] {
        assert!(
            records
                .iter()
                .any(|r| r["trace_id"] == trace_id && r["stage"] == "response"),
            "no response record with trace_id {trace_id}"
        );
        assert!(
            logs.iter()
                .any(|l| l["message"] == "request" && l["spans"][0]["trace_id"] == trace_id),
            "no request log line with trace_id {trace_id}"
        );
    }
}

#[tokio::test]
async fn by_default_the_audit_record_is_the_request_log_and_a_reload_turns_the_line_on() {
    let (upstream, _) = recording_upstream().await;
    let dir = TestDir::new();
    let config = |request_log: bool| {
        dir.config(
            &format!("http://{upstream}"),
            &telemetry_section("", &format!("request_log = {request_log}")),
        )
    };
    let path = config(false);
    let mut gateway = Binary::serve(&path, &[]).await;
    let client = client();
    let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));
    let get = |id: &str| {
        let mut req = request(Method::GET, &org, token(), None);
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        req
    };
    let (parts, _) = send(&client, get("quiet-get")).await;
    assert_eq!(parts.status, 200);
    let (parts, body) = send(&client, request(Method::PUT, &org, &support_token(), None)).await;
    assert_gateway_error(&parts, &body, 403, "forbidden");
    let denied_id = parts.headers["x-request-id"].to_str().unwrap().to_owned();
    // The refusal is logged at once; the allowed GET before it was not.
    let refused = gateway.wait_for_line("request refused").await;
    assert!(refused.contains(&denied_id), "{refused}");

    // Switched on by a reload, with no restart.
    assert_eq!(config(true), path, "the same file, rewritten");
    gateway.signal("HUP");
    gateway.wait_for_line("config reloaded").await;
    let (parts, _) = send(&client, get("loud-get")).await;
    assert_eq!(parts.status, 200);
    let loud_id = parts.headers["x-request-id"].to_str().unwrap().to_owned();
    let line = gateway.wait_for_line(&loud_id).await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["message"], "request");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["status"], 200);

    let output = stop(gateway).await;
    let logs = json_lines(&output);
    let requests: Vec<&Value> = logs.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(
        requests.len(),
        1,
        "only the GET after the reload: {requests:?}"
    );
    // Every request, logged or not, has its audit records: the first GET's
    // response record says what its line would have.
    let records = audit_records(&dir);
    let quiet = records
        .iter()
        .find(|r| r["client_request_id"] == "quiet-get" && r["stage"] == "response")
        .expect("a response record for the unlogged GET");
    assert_eq!(quiet["status"], 200);
    assert_eq!(quiet["outcome"], "allowed");
    assert!(quiet["duration_ms"].is_number());
    assert!(records
        .iter()
        .any(|r| r["request_id"] == denied_id.as_str() && r["outcome"] == "denied"));
}

/// A collector that accepts connections and never answers.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_collector_that_is_down_or_hangs_never_fails_requests() {
    let (upstream, _) = recording_upstream().await;
    let (hole, _task) = black_hole().await;
    let closed = closed_port();
    for endpoint in [
        format!("http://127.0.0.1:{}", closed.port),
        format!("http://{hole}"),
    ] {
        let dir = TestDir::new();
        let path = dir.config(
            &format!("http://{upstream}"),
            &format!(
                "{}\n[server]\nshutdown_grace = \"1s\"\n",
                telemetry_section(&endpoint, "")
            ),
        );
        // Export often, so requests meet exports in flight.
        let gateway = Binary::serve(&path, &[("OTEL_BSP_SCHEDULE_DELAY", "5")]).await;
        let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));
        let client = client();
        // 2,000 requests, 16 at a time: 8,000 spans, twice the export queue.
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..16 {
            let (client, org) = (client.clone(), org.clone());
            tasks.spawn(async move {
                for _ in 0..125 {
                    let (parts, _) = send(&client, request(Method::GET, &org, token(), None)).await;
                    assert_eq!(parts.status, 200, "worker {worker}");
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        })
        .await
        .expect("requests complete while the collector is unreachable");
        let (_, metrics) = send(&client, get(&gateway.admin_url("/metrics"))).await;
        let metrics = parse_prometheus(std::str::from_utf8(&metrics).unwrap());
        let dropped = metrics[r#"gateway_trace_spans_total{result="dropped"}"#];
        assert!(dropped > 0.0, "{endpoint}: dropped spans are counted");
        assert_eq!(
            metrics[r#"gateway_trace_spans_total{result="exported"}"#],
            0.0
        );
        // Shutdown gives up on the export within the grace period.
        let output = stop(gateway).await;
        assert!(output.contains("drained; exiting"), "{output}");
    }
}

/// Parses the Prometheus text format (0.0.4) strictly: every line is a
/// `# HELP`, a `# TYPE` or a sample of the family the last `# TYPE` named.
/// Returns each sample (`name{labels}` as printed) and its value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut family: Option<(String, String)> = None;
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "bad metric name in {line:?}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "bad metric name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            family = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    (name, Some(labels.strip_suffix('}').expect("closing brace")))
                }
                None => (series, None),
            };
            let (family_name, kind) = family.as_ref().expect("a sample after # TYPE");
            let allowed_suffixes: &[&str] = match kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            assert!(
                allowed_suffixes
                    .iter()
                    .any(|suffix| name == format!("{family_name}{suffix}")),
                "{name} outside its family {family_name}"
            );
            for pair in labels.into_iter().flat_map(split_labels) {
                let (key, quoted) = pair.split_once('=').expect("label=value");
                assert!(valid_name(key), "bad label name in {line:?}");
                assert!(quoted.starts_with('"') && quoted.ends_with('"') && quoted.len() >= 2);
            }
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate {series}"
            );
        }
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Splits `a="x",b="y, z"` at the commas outside quotes.
fn split_labels(labels: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    assert!(!quoted, "unterminated label value in {labels:?}");
    if start < labels.len() {
        parts.push(&labels[start..]);
    }
    parts
}

fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_requests() {
    let (upstream, traceparents) = recording_upstream().await;
    let gateway = start_gateway(&format!("http://{upstream}"), "").await;
    let client = client();
    let scrape = || async {
        let (parts, body) = send(&client, get(&gateway.admin_url("/metrics"))).await;
        assert_eq!(parts.status, 200);
        assert_eq!(
            parts.headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        parse_prometheus(std::str::from_utf8(&body).unwrap())
    };
    let before = scrape().await;
    assert_eq!(before["gateway_inflight_requests"], 0.0);
    assert_eq!(before["gateway_jwks_keys"], 3.0);
    let org = gateway.url(&format!("/api/organizations/{ORG_ID}"));
    let (ok, _) = send(&client, request(Method::PUT, &org, token(), None)).await;
    assert_eq!(ok.status, 200);
    let (denied, _) = send(&client, request(Method::PUT, &org, &support_token(), None)).await;
    assert_eq!(denied.status, 403);
    let (anonymous, _) = send(&client, Request::get(&org).body(Full::default()).unwrap()).await;
    assert_eq!(anonymous.status, 401);
    // Response records are written behind the response: scrape until the
    // writer has caught up (bounded).
    let audit_written = r#"gateway_audit_records_total{result="written",sink="file"}"#;
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let after = scrape().await;
            if value(&after, audit_written) - value(&before, audit_written) >= 4.0 {
                return after;
            }
            // A poll over HTTP: a short pause between tries.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("four audit records are written");

    let moved = |series: &str| value(&after, series) - value(&before, series);
    for (series, by) in [
        (
            r#"gateway_requests_total{method="PUT",operation="organizations.update",outcome="allowed",status="200"}"#,
            1.0,
        ),
        (
            r#"gateway_requests_total{method="PUT",operation="organizations.update",outcome="denied",status="403"}"#,
            1.0,
        ),
        (
            r#"gateway_requests_total{method="GET",operation="_none",outcome="unauthenticated",status="401"}"#,
            1.0,
        ),
        (
            r#"gateway_policy_decisions_total{decision="allow",operation="organizations.update",rule="platform-all"}"#,
            1.0,
        ),
        (
            r#"gateway_policy_decisions_total{decision="deny",operation="organizations.update",rule="_default"}"#,
            1.0,
        ),
        (
            r#"gateway_request_duration_seconds_count{operation="organizations.update",outcome="allowed"}"#,
            1.0,
        ),
        (
            r#"gateway_upstream_duration_seconds_count{operation="organizations.update"}"#,
            1.0,
        ),
        // A write has a request and a response record; a refusal only the latter.
        (
            r#"gateway_audit_records_total{result="written",sink="file"}"#,
            4.0,
        ),
    ] {
        assert_eq!(moved(series), by, "{series}");
    }
    assert_eq!(after["gateway_inflight_requests"], 0.0);
    assert_eq!(
        value(
            &after,
            r#"gateway_audit_records_total{result="failed",sink="file"}"#
        ),
        0.0
    );
    // Labels are bounded: no raw path, id or subject appears in any.
    for series in after.keys() {
        for unbounded in [ORG_ID, "alice", "bob", "/api/"] {
            assert!(!series.contains(unbounded), "{series}");
        }
    }
    // The scrape itself is answered locally: not forwarded, not counted.
    assert_eq!(traceparents.lock().unwrap().len(), 1);
    assert!(!after
        .keys()
        .any(|s| s.contains("method=\"GET\",operation=\"_none\",outcome=\"allowed\"")));
    let (parts, body) = send(
        &client,
        Request::post(gateway.admin_url("/metrics"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_gateway_error(&parts, &body, 405, "method_not_allowed");
}

/// `tracestate` goes upstream only with content: the caller's (continued)
/// state as sent, never an empty header, whether the caller sent none, an
/// empty one, or no trace context at all.
#[tokio::test]
async fn an_empty_tracestate_is_never_sent_upstream() {
    let (_receiver, collector) = Receiver::http().await;
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let upstream = spawn_upstream({
        let seen = seen.clone();
        move |req: Request<hyper::body::Incoming>| {
            let seen = seen.clone();
            async move {
                let states: Vec<String> = req
                    .headers()
                    .get_all("tracestate")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                seen.lock().unwrap().push(if states.is_empty() {
                    None
                } else {
                    Some(states.join(","))
                });
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(upstream_body(r#"{"data":{}}"#))
                    .unwrap()
            }
        }
    })
    .await;
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{upstream}"),
        &telemetry_section(&format!("http://{collector}"), ""),
    );
    let gateway = Binary::serve(&path, &[]).await;
    let client = client();
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let url = gateway.url("/api/organization");
    let cases: [(Option<&str>, Option<&str>); 4] = [
        (None, None),
        (Some(&caller), None),
        (Some(&caller), Some("")),
        (Some(&caller), Some("vendor=opaque")),
    ];
    for (traceparent, tracestate) in cases {
        let mut req = Request::builder()
            .uri(&url)
            .header("authorization", bearer());
        if let Some(traceparent) = traceparent {
            req = req.header("traceparent", traceparent);
        }
        if let Some(tracestate) = tracestate {
            req = req.header("tracestate", tracestate);
        }
        let (parts, _) = send(&client, req.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(parts.status, 200);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [None, None, None, Some("vendor=opaque".to_owned())]
    );
    stop(gateway).await;
}

/// `/metrics` is served only on `server.admin_listen`. On the proxy's port
/// it is an ordinary path: refused (401 without a token, 404 `no_route`
/// with one), audited and never answered with the metrics. The admin
/// listener serves `/metrics`, `/healthz` and `/readyz`, nothing else, and
/// none of it reaches the upstream or the audit trail.
#[tokio::test]
async fn metrics_are_served_only_on_the_admin_listener() {
    let (upstream, forwarded) = recording_upstream().await;
    let gateway = start_gateway(&format!("http://{upstream}"), "").await;
    let client = client();

    let anonymous = Request::get(gateway.url("/metrics"))
        .body(Full::default())
        .unwrap();
    let (parts, body) = send(&client, anonymous).await;
    assert_gateway_error(&parts, &body, 401, "unauthenticated");
    let (parts, body) = send(&client, get(&gateway.url("/metrics"))).await;
    assert_gateway_error(&parts, &body, 404, "no_route");
    assert!(!String::from_utf8_lossy(&body).contains("gateway_"));

    let (parts, body) = send(&client, get(&gateway.admin_url("/metrics"))).await;
    assert_eq!(parts.status, 200);
    let metrics = parse_prometheus(std::str::from_utf8(&body).unwrap());
    assert!(metrics.contains_key("gateway_inflight_requests"));
    for (path, status) in [("/healthz", 200), ("/readyz", 200)] {
        let (parts, _) = send(&client, get(&gateway.admin_url(path))).await;
        assert_eq!(parts.status, status, "{path}");
    }
    let (parts, body) = send(&client, get(&gateway.admin_url("/api/organization"))).await;
    assert_gateway_error(&parts, &body, 404, "no_route");
    assert!(
        forwarded.lock().unwrap().is_empty(),
        "nothing was forwarded"
    );

    let dir = gateway.shutdown().await;
    let records: Vec<Value> = std::fs::read_to_string(dir.path("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|r: &Value| r["stage"] == "response")
        .collect();
    let seen: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap(),
                r["error_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("/metrics", "unauthenticated"), ("/metrics", "no_route")],
        "the proxy port's two requests, and nothing from the admin port"
    );
}
