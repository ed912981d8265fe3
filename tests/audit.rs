//! The audit trail end to end: the exact record of every outcome, secrets
//! never recorded, no record lost under load (and, in tests/chain.rs, when
//! the gateway is killed), refusal when the trail cannot be written, and
//! reopening on SIGHUP.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use polytomic_gateway::fake::{FakePolytomic, CURRENT_ORG_ID};
use serde_json::{json, Value};

const ORG: &str = CURRENT_ORG_ID;

/// Every record in an audit file; every line must be whole JSON.
fn read_audit(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn or bad record ({e}): {l}"))
        })
        .collect()
}

/// A record without its time and duration, which vary; asserts their shape.
fn stable(mut record: Value) -> Value {
    let object = record.as_object_mut().unwrap();
    let time = object.remove("time").unwrap();
    assert!(
        time.as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{time}"
    );
    let duration = object.remove("duration_ms").unwrap();
    assert!(duration.is_null() || duration.as_f64().is_some_and(|d| d >= 0.0));
    // The hash chain (checked whole by tests/chain.rs).
    for field in ["instance", "seq", "prev"] {
        assert!(object.remove(field).is_some(), "{field} in every record");
    }
    object.remove("resumes");
    // The config's version (checked in tests/reload.rs).
    let version = object.remove("config_version").unwrap();
    assert!(
        version
            .as_str()
            .is_some_and(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    // The gateway's own id; the client's is `client_request_id`.
    let id = object.remove("request_id").unwrap();
    assert!(
        id.as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        "{id}"
    );
    record
}

fn request(
    method: Method,
    url: &str,
    token: Option<&str>,
    id: &str,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("x-request-id", id)
        .header("user-agent", "polytomic/25.9.2")
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// A PUT of `body` to the current organization, as alice, with request id `id`.
async fn put_org(
    addr: std::net::SocketAddr,
    id: &str,
    body: &str,
) -> (http::response::Parts, Bytes) {
    let url = format!("http://{addr}/api/organizations/{ORG}");
    send(
        &client(),
        request(Method::PUT, &url, Some(token()), id, body),
    )
    .await
}

fn team_token(sub: &str, team: &str) -> String {
    sign(
        "rsa-a",
        jsonwebtoken::Algorithm::RS256,
        &claims(sub, &[team]),
    )
}

fn base(id: &str, outcome: &str, method: &str, path: &str) -> serde_json::Map<String, Value> {
    json!({
        "stage": "response", "client_request_id": id, "trace_id": "", "outcome": outcome,
        "operation": null, "method": method, "path": path, "query": null, "organization_id": null,
        "principal": null, "rule": null, "policy_mode": null, "status": null, "upstream_status": null,
        "client_ip": "127.0.0.1", "user_agent": "polytomic/25.9.2", "idempotency_key": null,
        "request_body": null, "error_key": null
    })
    .as_object()
    .unwrap()
    .clone()
}

fn with(mut map: serde_json::Map<String, Value>, fields: Value) -> Value {
    map.extend(fields.as_object().unwrap().clone());
    Value::Object(map)
}

#[tokio::test]
async fn every_outcome_gets_its_exact_record() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let policy = "[[policy.rules]]\nname = \"platform-all\"\nteams = [\"platform\"]\nallow = [\"*\"]\n\n[[policy.rules]]\nname = \"support-read\"\nteams = [\"support\"]\nallow = [\"organizations.get\"]\n";
    let path = dir.config(&format!("http://{addr}"), policy);
    let gw = start_gateway_from(dir, &path).await;
    let c = client();
    let update = format!("/api/organizations/{ORG}");
    let alice = team_token("alice@corp", "platform");
    let sam = team_token("sam@corp", "support");

    let mut req = request(
        Method::PUT,
        &gw.url(&update),
        Some(&alice),
        "r-allowed",
        r#"{"name":"Acme","client_secret":"s3cr3t-value","issuer":"https://idp.acme.com"}"#,
    );
    req.headers_mut()
        .insert("idempotency-key", "idem-1".parse().unwrap());
    assert_eq!(send(&c, req).await.0.status, 200);
    assert_eq!(
        send(
            &c,
            request(
                Method::PUT,
                &gw.url(&update),
                Some(&sam),
                "r-denied",
                r#"{"name":"X"}"#
            )
        )
        .await
        .0
        .status,
        403
    );
    assert_eq!(
        send(
            &c,
            request(
                Method::GET,
                &gw.url("/api/organization"),
                None,
                "r-unauth",
                ""
            )
        )
        .await
        .0
        .status,
        401
    );
    assert_eq!(
        send(
            &c,
            request(
                Method::PUT,
                &gw.url(&update),
                Some(&alice),
                "r-invalid",
                r#"{"name":"A","issuer":"nope"}"#
            )
        )
        .await
        .0
        .status,
        422
    );
    assert_eq!(
        send(
            &c,
            request(
                Method::GET,
                &gw.url("/nothing-here?token=t0k3n&x=1"),
                Some(&alice),
                "r-noroute",
                ""
            )
        )
        .await
        .0
        .status,
        404
    );
    let _dir = gw.shutdown().await;

    let records: Vec<Value> = read_audit(&audit_path);
    let by_id = |id: &str, stage: &str| {
        records
            .iter()
            .find(|r| r["client_request_id"] == id && r["stage"] == stage)
            .cloned()
            .unwrap_or_else(|| panic!("no {stage} record for {id} in {records:#?}"))
    };
    let alice_principal = json!({"sub": "alice@corp", "teams": ["platform"]});
    let redacted_body =
        json!({"name": "Acme", "client_secret": "[REDACTED]", "issuer": "https://idp.acme.com"});
    let allowed = json!({
        "outcome": "allowed", "operation": "organizations.update", "organization_id": ORG,
        "principal": alice_principal, "rule": "platform-all", "policy_mode": "enforce",
        "idempotency_key": "idem-1", "request_body": redacted_body,
    });
    assert_eq!(
        stable(by_id("r-allowed", "request")),
        with(
            base("r-allowed", "allowed", "PUT", &update),
            with(
                json!({"stage": "request"}).as_object().unwrap().clone(),
                allowed.clone()
            )
        )
    );
    assert_eq!(
        stable(by_id("r-allowed", "response")),
        with(
            base("r-allowed", "allowed", "PUT", &update),
            with(
                allowed.as_object().unwrap().clone(),
                json!({"status": 200, "upstream_status": 200})
            )
        )
    );
    assert_eq!(
        stable(by_id("r-denied", "response")),
        with(
            base("r-denied", "denied", "PUT", &update),
            json!({
                "operation": "organizations.update", "organization_id": ORG,
                "principal": {"sub": "sam@corp", "teams": ["support"]}, "policy_mode": "enforce",
                "status": 403, "error_key": "forbidden",
            })
        )
    );
    assert_eq!(
        stable(by_id("r-unauth", "response")),
        with(
            base("r-unauth", "unauthenticated", "GET", "/api/organization"),
            json!({"status": 401, "error_key": "unauthenticated"})
        )
    );
    let invalid = stable(by_id("r-invalid", "response"));
    let body = r#"{"name":"A","issuer":"nope"}"#;
    let sha = polytomic_gateway::notes::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes()).as_ref(),
    );
    assert_eq!(
        invalid,
        with(
            base("r-invalid", "invalid", "PUT", &update),
            json!({
                "operation": "organizations.update", "organization_id": ORG, "principal": alice_principal,
                "rule": "platform-all", "policy_mode": "enforce", "status": 422, "error_key": "invalid_body",
                "request_body": {"bytes": body.len(), "sha256": sha},
            })
        )
    );
    assert_eq!(
        stable(by_id("r-noroute", "response")),
        with(
            base("r-noroute", "no_route", "GET", "/nothing-here"),
            json!({
                "principal": alice_principal, "status": 404, "error_key": "no_route",
                "query": "token=%5BREDACTED%5D&x=1",
            })
        )
    );
    // Refused writes were never forwarded, so they have no request record.
    assert!(!records
        .iter()
        .any(|r| r["stage"] == "request" && r["client_request_id"] != "r-allowed"));
    assert_eq!(records.len(), 6);
}

#[tokio::test]
async fn upstream_errors_and_shadow_denials_are_recorded() {
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let closed = closed_port();
    let path = dir.config(&format!("http://127.0.0.1:{}", closed.port), "");
    let gw = start_gateway_from(dir, &path).await;
    let (parts, _) = send(
        &client(),
        request(
            Method::GET,
            &gw.url("/api/organization"),
            Some(token()),
            "r-502",
            "",
        ),
    )
    .await;
    assert_eq!(parts.status, 502);
    let _dir = gw.shutdown().await;
    let record = stable(read_audit(&audit_path).pop().unwrap());
    assert_eq!(record["outcome"], "upstream_error");
    assert_eq!(record["error_key"], "upstream_unreachable");
    assert_eq!(record["status"], 502);
    assert_eq!(record["upstream_status"], Value::Null);

    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let shadow = "[policy]\nmode = \"shadow\"\n[[policy.rules]]\nname = \"only-ops\"\nteams = [\"ops\"]\nallow = [\"*\"]\n";
    let path = dir.config(&format!("http://{addr}"), shadow);
    let gw = start_gateway_from(dir, &path).await;
    let (parts, _) = send(
        &client(),
        request(
            Method::GET,
            &gw.url("/api/organization"),
            Some(token()),
            "r-shadow",
            "",
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    let _dir = gw.shutdown().await;
    let record = stable(read_audit(&audit_path).pop().unwrap());
    assert_eq!(record["outcome"], "shadow_denied");
    assert_eq!(record["policy_mode"], "shadow");
    assert_eq!(record["rule"], Value::Null);
    assert_eq!(record["status"], 200);
    assert_eq!(record["upstream_status"], 200);
    assert_eq!(fake.requests().len(), 1);
}

const CANARY: &str = "CANARY-7f0c-audit-s3cr3t";

#[tokio::test]
async fn a_canary_secret_appears_in_no_output() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    // An OTLP receiver that keeps every export's raw bytes: protobuf stores
    // strings as plain UTF-8, so a byte search covers the whole payload.
    let shipped = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (sink, wake) = (shipped.clone(), arrived.clone());
    let collector = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
        let (sink, wake) = (sink.clone(), wake.clone());
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            sink.lock().unwrap().extend_from_slice(&body);
            wake.notify_waiters();
            http::Response::new(upstream_body(""))
        }
    })
    .await;
    let audit = format!(
        "[audit]\nsinks = [\"file\", \"stdout\", \"otlp\"]\npath = {:?}\notlp_endpoint = \"http://{collector}\"\ndurability = \"fsync\"\n",
        audit_path.display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    let mut gw = Binary::serve(&path, &[("RUST_LOG", "debug")]).await;
    let c = client();
    let update = gw.url(&format!("/api/organizations/{ORG}"));
    let bodies = [
        // Accepted: escaped key spelling of a redacted field.
        format!(r#"{{"name":"Acme","client\u005fsecret":"{CANARY}"}}"#),
        format!(r#"{{"name":"Acme","client_secret":"{CANARY}"}}"#),
        // Refused: nested under an unknown field, wrongly typed, not JSON.
        json!({"name": "Acme", "extra": {"password": CANARY}}).to_string(),
        json!({"name": "Acme", "client_id": {"value": CANARY}}).to_string(),
        json!({"name": "Acme", "sso_org_id": [CANARY]}).to_string(),
        format!(r#"{{"name":"{CANARY}"#),
    ];
    // Two accepted and forwarded, three refused by the schema, one not JSON:
    // the canary must be kept out of every path a body can take.
    let expected = [200, 200, 422, 422, 422, 400];
    let mut responses = String::new();
    for (i, body) in bodies.iter().enumerate() {
        let mut req = request(Method::PUT, &update, Some(token()), &format!("c-{i}"), body);
        req.headers_mut()
            .insert("x-api-key", CANARY.parse().unwrap());
        req.headers_mut()
            .insert("cookie", format!("session={CANARY}").parse().unwrap());
        let (parts, response) = send(&c, req).await;
        assert_eq!(parts.status, expected[i], "{body}");
        let body = response;
        responses.push_str(&format!(
            "{:?}{}",
            parts.headers,
            String::from_utf8_lossy(&body)
        ));
    }
    for query in [
        format!("token={CANARY}"),
        format!("api_key={CANARY}&password={CANARY}"),
    ] {
        let req = request(
            Method::GET,
            &gw.url(&format!("/api/organizations?{query}")),
            Some(token()),
            "c-q",
            "",
        );
        let (parts, body) = send(&c, req).await;
        responses.push_str(&format!(
            "{:?}{}",
            parts.headers,
            String::from_utf8_lossy(&body)
        ));
    }
    let shipped_responses = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .matches("\"stage\":\"response\"")
            .count()
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let notified = arrived.notified();
            if shipped_responses(&shipped.lock().unwrap()) >= 8 {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("all 8 response records were shipped");
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    let output = gw.collect_output().await;
    // The leak hunt means something only if debug output was really on.
    assert!(
        output.contains("stripped client credential header")
            && output.contains("request body refused"),
        "the gateway did not log at debug:\n{output}"
    );
    let trail = std::fs::read_to_string(&audit_path).unwrap();
    let otlp = String::from_utf8_lossy(&shipped.lock().unwrap()).into_owned();
    assert_eq!(
        trail
            .lines()
            .filter(|l| l.contains("\"stage\":\"response\""))
            .count(),
        8,
        "{trail}"
    );
    for (name, text) in [
        ("responses", &responses),
        ("stdout and stderr", &output),
        ("audit file", &trail),
        ("OTLP export", &otlp),
    ] {
        for secret in [CANARY, PARTNER_KEY, token()] {
            assert!(
                !text.contains(secret),
                "{name} contains a secret ({}…):\n{text}",
                &secret[..12]
            );
        }
    }
    assert!(
        trail.contains("[REDACTED]"),
        "the accepted bodies are recorded, redacted"
    );
    // The query values were forwarded as sent (only the record is redacted).
    assert!(fake.requests().iter().any(|r| r.target.contains(CANARY)));
}

/// The schema's `writeOnly` fields are secrets whatever `redact_fields`
/// says: with the name list emptied, `client_secret` is still redacted, and
/// only because the organization update schema marks it `writeOnly`.
#[tokio::test]
async fn write_only_schema_fields_are_redacted_with_no_redact_fields() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let audit = format!(
        "[audit]\nsinks = [\"file\"]\npath = {:?}\nredact_fields = []\n",
        audit_path.display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    let gw = start_gateway_from(dir, &path).await;
    let body = json!({"name": "Acme", "client_id": "visible-id", "client_secret": CANARY});
    let (parts, response) = put_org(gw.addr, "wo", &body.to_string()).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&response));
    let _dir = gw.shutdown().await;
    let trail = std::fs::read_to_string(&audit_path).unwrap();
    assert!(!trail.contains(CANARY), "client_secret in clear: {trail}");
    let records = read_audit(&audit_path);
    let recorded = records
        .iter()
        .find(|r| r["client_request_id"] == "wo" && r["stage"] == "request")
        .unwrap_or_else(|| panic!("no request record: {trail}"));
    // Redacted in place; a field nothing marks is kept, so the list is empty.
    assert_eq!(
        recorded["request_body"],
        json!({"name": "Acme", "client_id": "visible-id", "client_secret": "[REDACTED]"})
    );
}

#[tokio::test]
async fn two_thousand_requests_at_concurrency_64_give_2000_whole_records() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let path = dir.config(&format!("http://{addr}"), "");
    let gw = Arc::new(start_gateway_from(dir, &path).await);
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let (gw, permits) = (gw.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            let req = if i % 4 == 0 {
                request(
                    Method::PATCH,
                    &gw.url(&format!("/api/organizations/{ORG}")),
                    Some(token()),
                    &format!("load-{i}"),
                    r#"{"name":"Acme"}"#,
                )
            } else {
                request(
                    Method::GET,
                    &gw.url("/api/organizations"),
                    Some(token()),
                    &format!("load-{i}"),
                    "",
                )
            };
            send(&client(), req).await.0.status.as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let _dir = Arc::into_inner(gw)
        .expect("all requests done")
        .shutdown()
        .await;
    let records = read_audit(&audit_path);
    let responses: HashSet<_> = records
        .iter()
        .filter(|r| r["stage"] == "response")
        .map(|r| r["client_request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(responses.len(), 2000);
    assert_eq!(
        records.iter().filter(|r| r["stage"] == "response").count(),
        2000
    );
    assert_eq!(
        records.iter().filter(|r| r["stage"] == "request").count(),
        500
    );
}

#[tokio::test]
async fn an_unwritable_trail_refuses_writes_in_reject_mode_only() {
    // With `durability = "none"` nothing waits for the trail, so even
    // reject mode forwards writes it cannot record.
    for (mode, durability, expect_write) in [
        ("reject", "fsync", 503),
        ("continue", "fsync", 200),
        ("reject", "none", 200),
    ] {
        let fake = FakePolytomic::new(PARTNER_KEY);
        let addr = fake.spawn().await.unwrap();
        let dir = TestDir::new();
        let audit = format!("[audit]\nsinks = [\"file\"]\npath = \"/nonexistent-dir/audit.jsonl\"\non_failure = {mode:?}\ndurability = {durability:?}\n");
        let path = dir.config(&format!("http://{addr}"), &audit);
        let gw = start_gateway_from(dir, &path).await;
        let (parts, body) = put_org(gw.addr, "w", r#"{"name":"A"}"#).await;
        assert_eq!(parts.status, expect_write, "{mode}, {durability}");
        // A DELETE is a write too: it needs its request record just the same.
        // (Another organization than the current one, which the read below
        // still needs.)
        let (deleted, deleted_body) = send(
            &client(),
            request(
                Method::DELETE,
                &gw.url("/api/organizations/0b7f3c1e-5d2a-4c6e-9f8a-1b2c3d4e5f60"),
                Some(token()),
                "d",
                "",
            ),
        )
        .await;
        if expect_write == 503 {
            assert_gateway_error(&parts, &body, 503, "audit_unavailable");
            assert_gateway_error(&deleted, &deleted_body, 503, "audit_unavailable");
            assert!(
                fake.requests().is_empty(),
                "nothing is forwarded without a durable record: {:?}",
                fake.requests()
                    .iter()
                    .map(|r| &r.method)
                    .collect::<Vec<_>>()
            );
        } else {
            assert_ne!(deleted.status, 503, "{mode}, {durability}");
            let methods: Vec<_> = fake.requests().iter().map(|r| r.method.clone()).collect();
            assert_eq!(methods, [Method::PUT, Method::DELETE]);
        }
        // Reads carry no request record and are served either way.
        let (parts, _) = send(&client(), get(&gw.url("/api/organization"))).await;
        assert_eq!(parts.status, 200, "{mode}");
        let _dir = gw.shutdown().await;
    }
}

#[tokio::test]
async fn sighup_reopens_the_audit_file_for_logrotate() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let path = dir.config(&format!("http://{addr}"), "");
    let mut gw = Binary::serve(&path, &[]).await;
    let c = client();
    let (parts, _) = send(
        &c,
        request(
            Method::PUT,
            &gw.url(&format!("/api/organizations/{ORG}")),
            Some(token()),
            "before",
            r#"{"name":"A"}"#,
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    let rotated = dir.path("audit.jsonl.1");
    std::fs::rename(&audit_path, &rotated).unwrap();
    gw.signal("HUP");
    gw.wait_for_line("audit file reopened").await;
    let (after, _) = send(
        &c,
        request(
            Method::PUT,
            &gw.url(&format!("/api/organizations/{ORG}")),
            Some(token()),
            "after",
            r#"{"name":"B"}"#,
        ),
    )
    .await;
    assert_eq!(after.status, 200);
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    // The SIGHUP also reloads the config: its `config` record has no
    // request id.
    let ids = |p: &std::path::Path| -> HashSet<String> {
        read_audit(p)
            .iter()
            .filter(|r| r["stage"] != "config")
            .map(|r| r["client_request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (old_file, new_file) = (ids(&rotated), ids(&audit_path));
    assert!(
        old_file.contains("before"),
        "rotated: {old_file:?}, new: {new_file:?}"
    );
    assert!(
        !old_file.contains("after"),
        "rotated: {old_file:?}, new: {new_file:?}"
    );
    assert!(
        new_file.contains("after"),
        "rotated: {old_file:?}, new: {new_file:?}"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_request_still_leaves_a_response_record() {
    use tokio::io::AsyncWriteExt;
    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (a, r) = (arrived.clone(), release.clone());
    let upstream = spawn_upstream(move |_req| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            a.notify_one();
            r.notified().await;
            http::Response::new(upstream_body(r#"{"data":{}}"#))
        }
    })
    .await;
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let path = dir.config(&format!("http://{upstream}"), "");
    let gw = start_gateway_from(dir, &path).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let body = r#"{"name":"ab"}"#;
    let request = format!(
        "PUT /api/organizations/{ORG} HTTP/1.1\r\nHost: g\r\nAuthorization: {}\r\nX-Request-Id: gone\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        bearer(),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    within("the request to reach the upstream", arrived.notified()).await;
    drop(stream); // the client goes away while the upstream works
                  // The upstream answers only once the gateway has given up on the client
                  // and recorded it, so the outcome cannot be a race with the upstream.
    within("a response record for the departed client", async {
        loop {
            if read_audit(&audit_path)
                .iter()
                .any(|r| r["client_request_id"] == "gone" && r["stage"] == "response")
            {
                return;
            }
            // A poll of a file: a short pause between reads.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    release.notify_one();
    let _dir = gw.shutdown().await;
    let records = read_audit(&audit_path);
    let stages: Vec<_> = records
        .iter()
        .filter(|r| r["client_request_id"] == "gone")
        .map(|r| r["stage"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stages, ["request", "response"], "{records:#?}");
    let response = records
        .iter()
        .find(|r| r["client_request_id"] == "gone" && r["stage"] == "response")
        .unwrap();
    assert_eq!(response["outcome"], "cancelled", "{response}");
    assert_eq!(response["status"], Value::Null, "{response}");
}

/// A client that leaves while the response body streams gets a `response`
/// record with `outcome` `cancelled` and the status it was sent (the head
/// went out; the body did not end).
#[tokio::test]
async fn a_client_that_leaves_mid_body_is_recorded_as_cancelled_with_its_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    type Frame = Result<http_body::Frame<Bytes>, std::io::Error>;
    // The upstream sends one chunk, then nothing; `held` is dropped with its
    // body, so the test learns when the gateway gave the response up.
    let (held, released) = tokio::sync::oneshot::channel::<()>();
    let held = Arc::new(std::sync::Mutex::new(Some(held)));
    let upstream = spawn_upstream(move |_req| {
        let held = held.lock().unwrap().take();
        async move {
            let first = futures_util::stream::iter([Ok::<_, std::io::Error>(
                http_body::Frame::data(Bytes::from_static(b"{\"data\":")),
            )]);
            let stalled = futures_util::stream::poll_fn(move |_| {
                let _held = &held;
                std::task::Poll::<Option<Frame>>::Pending
            });
            let body = futures_util::StreamExt::chain(first, stalled);
            http::Response::new(http_body_util::BodyExt::boxed(
                http_body_util::StreamBody::new(body),
            ))
        }
    })
    .await;
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let path = dir.config(&format!("http://{upstream}"), "");
    let gw = start_gateway_from(dir, &path).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /api/organization HTTP/1.1\r\nHost: g\r\nAuthorization: {}\r\nX-Request-Id: left\r\n\r\n",
        bearer()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    within("the head and the first chunk", async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&received).contains("{\"data\":") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
    drop(stream); // the client leaves mid-body
    within("the gateway to give the response up", released)
        .await
        .unwrap_err();
    let _dir = gw.shutdown().await;
    let records = read_audit(&audit_path);
    let response = records
        .iter()
        .find(|r| r["client_request_id"] == "left" && r["stage"] == "response")
        .unwrap_or_else(|| panic!("no response record: {records:#?}"));
    assert_eq!(response["outcome"], "cancelled", "{response}");
    assert_eq!(response["status"], 200, "{response}");
    assert_eq!(response["upstream_status"], 200, "{response}");
    assert_eq!(response["error_key"], "client_disconnected", "{response}");
}

/// A refused `HEAD` gets the record of its refusal: hyper sends no body
/// after the head, so the record does not wait for one (it was recorded as
/// `cancelled`, as if the client had left).
#[tokio::test]
async fn a_refused_head_request_is_recorded_with_its_own_outcome() {
    let gw = start_gateway("http://127.0.0.1:1", "").await;
    let head = |id: &str, token: Option<&str>| {
        request(Method::HEAD, &gw.url("/api/organization"), token, id, "")
    };
    let (parts, _) = send(&client(), head("head-401", None)).await;
    assert_eq!(parts.status, 401);
    // The route takes GET only: HEAD is 405.
    let (parts, _) = send(&client(), head("head-405", Some(token()))).await;
    assert_eq!(parts.status, 405);
    let dir = gw.shutdown().await;
    let records = read_audit(&dir.path("audit.jsonl"));
    for (id, outcome, status, key) in [
        ("head-401", "unauthenticated", 401, "unauthenticated"),
        ("head-405", "no_route", 405, "method_not_allowed"),
    ] {
        let record = records
            .iter()
            .find(|r| r["client_request_id"] == id)
            .unwrap_or_else(|| panic!("no record for {id}: {records:#?}"));
        assert_eq!(
            (&record["outcome"], &record["status"], &record["error_key"]),
            (&json!(outcome), &json!(status), &json!(key)),
            "{record}"
        );
    }
    assert_eq!(records.len(), 2, "{records:#?}");
}

/// An upstream that, on each request, looks in the audit file for that
/// request's `request` record, and answers whether it was already there.
async fn upstream_checking_the_trail(audit_path: std::path::PathBuf) -> std::net::SocketAddr {
    spawn_upstream(move |req: Request<hyper::body::Incoming>| {
        let audit_path = audit_path.clone();
        async move {
            let id = req.headers()["x-request-id"].to_str().unwrap().to_owned();
            let recorded = read_audit(&audit_path)
                .iter()
                .any(|r| r["client_request_id"] == *id && r["stage"] == "request");
            http::Response::new(upstream_body(
                json!({ "data": { "recorded_before_forwarding": recorded } }).to_string(),
            ))
        }
    })
    .await
}

/// `fsync` and `flush` hold a write until its record is in the file;
/// `none` holds nothing (the record is only queued: see also the unwritable
/// trail test), and its queued record still reaches the file by shutdown.
#[tokio::test]
async fn each_durability_holds_a_write_as_long_as_it_says() {
    for durability in ["fsync", "flush", "none"] {
        let dir = TestDir::new();
        let audit_path = dir.path("audit.jsonl");
        let upstream = upstream_checking_the_trail(audit_path.clone()).await;
        let audit = format!(
            "[audit]\nsinks = [\"file\"]\npath = {:?}\ndurability = {durability:?}\n",
            audit_path.display().to_string()
        );
        let path = dir.config(&format!("http://{upstream}"), &audit);
        let gw = start_gateway_from(dir, &path).await;
        let (parts, body) = put_org(gw.addr, durability, r#"{"name":"A"}"#).await;
        assert_eq!(parts.status, 200, "{durability}");
        if durability != "none" {
            assert_eq!(
                json(&body)["data"]["recorded_before_forwarding"],
                true,
                "{durability}: forwarded before its record was written"
            );
        }
        let _dir = gw.shutdown().await;
        assert!(
            read_audit(&audit_path)
                .iter()
                .any(|r| r["client_request_id"] == durability && r["stage"] == "request"),
            "{durability}: the request record never reached the file"
        );
    }
}

/// A `gateway_audit_records_total` series from a `/metrics` scrape.
fn audit_metric(scrape: &str, result: &str) -> f64 {
    let series = format!("gateway_audit_records_total{{result=\"{result}\",sink=\"file\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// When the writer cannot keep up and its queue (65,536 records) is full,
/// a read's record is dropped and counted, and a write is refused with 503
/// `audit_unavailable` and never forwarded, or forwarded all the same with
/// `on_failure = "continue"`. The audit path is a FIFO that the test opens
/// but does not read, so the writer blocks once the pipe's buffer is full
/// and the queue fills behind it.
#[tokio::test]
async fn a_full_queue_drops_read_records_and_refuses_writes_in_reject_mode_only() {
    for (mode, expect_write) in [("reject", 503), ("continue", 200)] {
        let fake = FakePolytomic::new(PARTNER_KEY);
        let addr = fake.spawn().await.unwrap();
        let dir = TestDir::new();
        let fifo = dir.path("audit.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // The read end, opened first so the gateway's open for writing succeeds.
        let mut reader = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&fifo)
            .unwrap();
        // `flush`: a write waits for write(2), which a full pipe blocks.
        let audit = format!(
            "[audit]\nsinks = [\"file\"]\npath = {:?}\ndurability = \"flush\"\non_failure = {mode:?}\n",
            fifo.display().to_string()
        );
        let path = dir.config(&format!("http://{addr}"), &audit);
        let gw = start_gateway_from(dir, &path).await;
        // One pooled client: its connections are reused across the reads.
        let c = client();
        let scrape = || async {
            let (_, body) = send(&c, get(&gw.admin_url("/metrics"))).await;
            String::from_utf8(body.to_vec()).unwrap()
        };
        // Reads, 64 at a time, until records are being dropped.
        let url = gw.url("/api/organization");
        let mut sent = 0;
        while audit_metric(&scrape().await, "dropped") == 0.0 {
            assert!(sent < 200_000, "no record was dropped after {sent} reads");
            let batch: Vec<_> = (0..64)
                .map(|_| {
                    let (c, url) = (c.clone(), url.clone());
                    tokio::spawn(async move { send(&c, get(&url)).await.0.status })
                })
                .collect();
            for request in batch {
                assert_eq!(within("a read's response", request).await.unwrap(), 200);
            }
            sent += 64;
        }
        let forwarded = fake.requests().len();
        let (parts, body) = put_org(gw.addr, "queue-full", r#"{"name":"A"}"#).await;
        if expect_write == 503 {
            assert_gateway_error(&parts, &body, 503, "audit_unavailable");
            assert_eq!(fake.requests().len(), forwarded, "the write was forwarded");
        } else {
            assert_eq!(parts.status, 200, "{mode}");
            assert_eq!(fake.requests().len(), forwarded + 1, "{mode}");
        }
        let dropped = audit_metric(&scrape().await, "dropped");
        assert!(dropped >= 1.0, "{mode}: {dropped}");
        // Unblock the writer so the gateway can drain and stop.
        let drain = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink).await;
        });
        let _dir = gw.shutdown().await;
        within("the FIFO to be closed", drain).await.unwrap();
    }
}

/// `on_failure = "continue"` forwards a write whose record could not be
/// written and says so at `error`; a write whose record was written says
/// nothing of the kind.
#[tokio::test]
async fn a_write_forwarded_without_its_record_is_logged_as_such() {
    const NOT_DURABLE: &str = "audit record not durable; forwarding";
    for (trail, expect_line) in [("/nonexistent-dir/audit.jsonl", true), ("", false)] {
        let fake = FakePolytomic::new(PARTNER_KEY);
        let addr = fake.spawn().await.unwrap();
        let dir = TestDir::new();
        let trail = match trail {
            "" => dir.path("audit.jsonl").display().to_string(),
            unwritable => unwritable.to_owned(),
        };
        let audit =
            format!("[audit]\nsinks = [\"file\"]\npath = {trail:?}\non_failure = \"continue\"\n");
        let path = dir.config(&format!("http://{addr}"), &audit);
        let mut gw = Binary::serve(&path, &[]).await;
        let (parts, _) = put_org(gw.addr, "logged", r#"{"name":"A"}"#).await;
        assert_eq!(parts.status, 200, "{trail}");
        assert_eq!(fake.requests().len(), 1, "{trail}");
        gw.signal("TERM");
        assert!(gw.exit().await.success());
        let output = gw.collect_output().await;
        let lines: Vec<_> = output.lines().filter(|l| l.contains(NOT_DURABLE)).collect();
        if expect_line {
            assert_eq!(lines.len(), 1, "{output}");
            assert!(lines[0].contains("\"level\":\"ERROR\""), "{}", lines[0]);
        } else {
            assert!(lines.is_empty(), "{output}");
        }
    }
}

/// A sample's value from a `/metrics` scrape, by its full series name
/// (`name{labels}` as printed); 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A body the organization update schema accepts, of about `len` bytes.
fn big_org_body(len: usize) -> String {
    json!({ "name": "n".repeat(len) }).to_string()
}

/// Issue 18, finding 1. With the sink stalled (the audit file is a FIFO
/// whose buffer is full and that nobody reads), write records of ~0.9 MB
/// each used to pile up in the queue until 65,536 records, ~2.4 MB of
/// memory per write, never freed. Now the records in memory stay within
/// `audit.queue_max_bytes`: the two writes that fit in 4 MiB are forwarded
/// (`durability = "none"`: nothing waits for the sink), every later one is
/// refused with 503 `audit_unavailable`, its `request` and `response`
/// records are counted as dropped and logged (rate-limited), and the
/// process's peak memory grows by far less than the writes sent.
#[tokio::test]
async fn a_stalled_sink_holds_at_most_queue_max_bytes_of_records() {
    const QUEUE_MAX: u64 = 4 << 20;
    const BODY: usize = 900_000;
    const WRITES: usize = 30;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let fifo = StalledFifo::new(dir.path("audit.fifo"));
    let audit = format!(
        "[audit]\nsinks = [\"file\"]\npath = {:?}\ndurability = \"none\"\non_failure = \"reject\"\nqueue_max_bytes = {QUEUE_MAX}\n\n[server]\nworkers = 1\nmax_body_bytes = 2097152\n",
        fifo.path.display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    let mut gw = Binary::serve(&path, &[]).await;
    let c = client();
    let scrape = || async {
        let (_, body) = send(&c, get(&gw.admin_url("/metrics"))).await;
        String::from_utf8(body.to_vec()).unwrap()
    };
    let before = gw.proc_kib("VmHWM");
    let body = big_org_body(BODY);
    let mut statuses = Vec::new();
    for i in 0..WRITES {
        let (parts, response) = put_org(gw.addr, &format!("big-{i}"), &body).await;
        if parts.status == 503 {
            assert_gateway_error(&parts, &response, 503, "audit_unavailable");
        }
        statuses.push(parts.status.as_u16());
    }
    // Each forwarded write holds two records of ~0.9 MB: two fit in 4 MiB.
    assert_eq!(&statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses[2..].iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(fake.requests().len(), 2, "a refused write was forwarded");
    let refused = (WRITES - 2) as f64;
    let dropped = r#"gateway_audit_records_total{result="dropped",sink="file"}"#;
    // A refusal's `response` record is queued (and refused) as its body ends.
    let text = within("every refused record to be counted", async {
        loop {
            let text = scrape().await;
            if sample(&text, dropped) >= 2.0 * refused {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(sample(&text, dropped), 2.0 * refused, "{text}");
    let queued = sample(&text, "gateway_audit_queue_bytes");
    assert!(
        queued >= 4.0 * BODY as f64 && queued <= QUEUE_MAX as f64,
        "queued bytes {queued} are the two writes' records, within {QUEUE_MAX}"
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_audit_records_total{result="written",sink="file"}"#
        ),
        0.0
    );
    // Before, each write added ~2 MB that stayed (64 MiB for these 30,
    // measured); now about 17 MiB, mostly the parse of each body.
    let grown_mib = (gw.proc_kib("VmHWM") - before) / 1024;
    assert!(
        grown_mib < 40,
        "peak memory grew by {grown_mib} MiB for {WRITES} writes of {BODY} bytes"
    );
    // Logged, but not once per record.
    gw.wait_for_line("audit queue full").await;
    gw.child.start_kill().unwrap();
    gw.exit().await;
    let output = gw.collect_output().await;
    let lines: Vec<_> = output
        .lines()
        .filter(|l| l.contains("audit queue full"))
        .collect();
    assert!(lines[0].contains("\"level\":\"ERROR\""), "{}", lines[0]);
    assert!(lines[0].contains("response_records"), "{}", lines[0]);
    assert!(
        (lines.len() as f64) < 2.0 * refused,
        "{} lines for {} refused records",
        lines.len(),
        2.0 * refused
    );
    drop(fifo);
}

/// Issue 18, finding 2. On SIGTERM the gateway used to wait for the audit
/// writer forever, however long `server.shutdown_grace` was, when the sink
/// had stalled. Now it waits out the grace, then exits (with status 1),
/// saying at `error` how many records it could not write.
#[tokio::test]
async fn sigterm_with_a_stalled_sink_exits_naming_the_records_not_written() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let fifo = StalledFifo::new(dir.path("audit.fifo"));
    let audit = format!(
        "[audit]\nsinks = [\"file\"]\npath = {:?}\n\n[server]\nshutdown_grace = \"1s\"\n",
        fifo.path.display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    let mut gw = Binary::serve(&path, &[]).await;
    // Reads never wait for their records: five answered, five records stuck.
    for i in 0..5 {
        let (parts, _) = send(
            &client(),
            request(
                Method::GET,
                &gw.url("/api/organization"),
                Some(token()),
                &format!("stuck-{i}"),
                "",
            ),
        )
        .await;
        assert_eq!(parts.status, 200);
    }
    gw.signal("TERM");
    // `exit` fails the test if the process is still there after PATIENCE.
    let status = gw.exit().await;
    assert_eq!(status.code(), Some(1));
    let output = gw.collect_output().await;
    let line = output
        .lines()
        .find(|l| l.contains("audit sink stalled at shutdown"))
        .unwrap_or_else(|| panic!("no line about the stalled sink:\n{output}"));
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(line.contains("\"records\":5"), "{line}");
    assert!(
        output.contains("5 audit records were not written"),
        "{output}"
    );
    drop(fifo);
}

/// Issue 18, finding 4. A refused body used to be recorded with its plain
/// SHA-256 even with `audit.fingerprint_key` set, so anyone reading the
/// trail could confirm a guess at a short secret in it. With a key, the
/// digest is the HMAC-SHA256 under it, named `hmac_sha256`, and the plain
/// SHA-256 appears nowhere.
#[tokio::test]
async fn a_refused_body_is_digested_with_the_fingerprint_key() {
    const KEY: &str = "fingerprint-key-for-tests-5e1b";
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    std::fs::write(dir.path("fingerprint-key"), format!("{KEY}\n")).unwrap();
    let audit = format!(
        "[audit]\nsinks = [\"file\"]\npath = {:?}\nfingerprint_key = {{ file = {:?} }}\n",
        audit_path.display().to_string(),
        dir.path("fingerprint-key").display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    let gw = start_gateway_from(dir, &path).await;
    // Not JSON (a weak secret in an unterminated body), and against the schema.
    let refused = [
        (
            "not-json",
            r#"{"name":"Acme","client_secret":"hunter2""#,
            400,
        ),
        ("bad-field", r#"{"name":"Acme","password":"hunter2"}"#, 422),
    ];
    for (id, body, status) in refused {
        let (parts, _) = put_org(gw.addr, id, body).await;
        assert_eq!(parts.status, status, "{id}");
    }
    assert!(fake.requests().is_empty());
    let _dir = gw.shutdown().await;
    let trail = std::fs::read_to_string(&audit_path).unwrap();
    let records = read_audit(&audit_path);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, KEY.as_bytes());
    for (id, body, _) in refused {
        let plain = polytomic_gateway::notes::hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes()).as_ref(),
        );
        assert!(!trail.contains(&plain), "{id}: plain SHA-256 in {trail}");
        let keyed =
            polytomic_gateway::notes::hex(aws_lc_rs::hmac::sign(&key, body.as_bytes()).as_ref());
        let record = records
            .iter()
            .find(|r| r["client_request_id"] == id)
            .unwrap_or_else(|| panic!("no record of {id}: {trail}"));
        assert_eq!(
            record["request_body"],
            json!({"bytes": body.len(), "hmac_sha256": keyed}),
            "{id}"
        );
    }
}
