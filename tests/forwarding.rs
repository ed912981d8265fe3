//! What reaches the upstream: the credential swap, the version header,
//! hop-by-hop removal, byte-exact paths, pass-through headers and request ids.
//! Each test runs the gateway in process on a real socket in front of the
//! fake Polytomic API, which records every request it receives.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use polytomic_gateway::fake::{FakePolytomic, CURRENT_ORG_ID};

async fn fake_and_gateway(extra: &str) -> (FakePolytomic, InProcess) {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gateway = start_gateway(&format!("http://{addr}"), extra).await;
    (fake, gateway)
}

#[tokio::test]
async fn the_partner_key_replaces_every_caller_credential() {
    let (fake, gw) = fake_and_gateway("").await;
    let req = Request::get(gw.url("/api/organization"))
        .header("authorization", bearer())
        .header("proxy-authorization", "Basic Y2FsbGVyOnB3")
        .header("cookie", "session=caller-cookie")
        .body(Full::default())
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["data"]["id"], CURRENT_ORG_ID);

    let seen = &fake.requests()[0];
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, [format!("Bearer {PARTNER_KEY}").as_str()]);
    assert!(!seen.headers.contains_key("proxy-authorization"));
    assert!(!seen.headers.contains_key("cookie"));
    let all_headers = format!("{:?}", seen.headers);
    assert!(!all_headers.contains(token()));
    assert!(!all_headers.contains("caller-cookie"));
}

#[tokio::test]
async fn a_request_without_a_token_is_401_and_never_forwarded() {
    let (fake, gw) = fake_and_gateway("").await;
    let req = Request::get(gw.url("/api/organizations"))
        .body(Full::default())
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_gateway_error(&parts, &body, 401, "unauthenticated");
    assert_eq!(
        parts.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    // A later authenticated request is the only one the upstream saw.
    send(&client(), get(&gw.url("/api/organization"))).await;
    let seen = within("a request at the upstream", fake.wait_for_requests(1)).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/organization");
}

#[tokio::test]
async fn override_mode_always_sends_the_configured_version() {
    let (fake, gw) =
        fake_and_gateway("[polytomic]\nversion = \"2025-09-18\"\nversion_mode = \"override\"")
            .await;
    let c = client();
    send(&c, get(&gw.url("/api/organization"))).await;
    let mut req = get(&gw.url("/api/organization"));
    req.headers_mut()
        .insert("x-polytomic-version", "2024-02-08".parse().unwrap());
    send(&c, req).await;
    let seen = fake.requests();
    for r in &seen {
        let versions: Vec<_> = r.headers.get_all("x-polytomic-version").iter().collect();
        assert_eq!(versions, ["2025-09-18"]);
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn default_mode_keeps_allowed_client_versions_only() {
    let (fake, gw) = fake_and_gateway(
        "[polytomic]\nversion = \"2025-09-18\"\nversion_mode = \"default\"\nallowed_versions = [\"2024-02-08\", \"2025-09-18\"]",
    )
    .await;
    let c = client();
    for sent in [Some("2024-02-08"), Some("2023-01-01"), None] {
        let mut req = get(&gw.url("/api/organization"));
        if let Some(v) = sent {
            req.headers_mut()
                .insert("x-polytomic-version", v.parse().unwrap());
        }
        let (parts, _) = send(&c, req).await;
        assert_eq!(parts.status, 200);
    }
    let versions: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| {
            r.headers["x-polytomic-version"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(versions, ["2024-02-08", "2025-09-18", "2025-09-18"]);
}

#[tokio::test]
async fn path_and_query_arrive_byte_for_byte() {
    let (fake, gw) = fake_and_gateway("").await;
    let target = format!(
        "/api/organizations/{CURRENT_ORG_ID}?b=2&a=%2F%20x&a=1&empty=&check=%E2%9C%93&plus=a+b&%7E=~"
    );
    let (parts, _) = send(&client(), get(&gw.url(&target))).await;
    assert_eq!(parts.status, 200);
    assert_eq!(fake.requests()[0].target, target);
}

#[tokio::test]
async fn the_upstream_base_path_prefixes_the_request_path() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(&format!("http://{addr}/prefix/"), "").await;
    let (parts, _) = send(&client(), get(&gw.url("/api/organizations?x=1"))).await;
    // The fake serves /api only, so the prefixed path is its 404, passed through.
    assert_eq!(parts.status, 404);
    assert_eq!(fake.requests()[0].target, "/prefix/api/organizations?x=1");
}

#[tokio::test]
async fn host_and_forwarded_headers_are_set() {
    let (fake, gw) = fake_and_gateway("").await;
    let upstream_host = {
        // The fake's address is in the config the gateway was built from.
        send(&client(), get(&gw.url("/api/organization"))).await;
        fake.requests()[0].headers["host"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert!(upstream_host.starts_with("127.0.0.1:"), "{upstream_host}");
    assert_ne!(
        upstream_host,
        gw.addr.to_string(),
        "Host must be the upstream's"
    );

    assert_eq!(fake.requests()[0].headers["x-forwarded-for"], "127.0.0.1");
}

/// Identity headers a client made up, as a client would to pass for someone
/// else in the upstream's logs.
fn with_forged_forwarding_headers(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    for (name, value) in [
        ("x-forwarded-for", "10.9.8.7"),
        ("forwarded", "for=10.9.8.7;proto=https;host=admin.example"),
        ("x-real-ip", "10.9.8.7"),
        ("x-forwarded-host", "admin.example"),
        ("x-forwarded-proto", "https"),
    ] {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    req
}

/// By default no peer is a trusted proxy: the forwarding headers say who
/// the gateway's peer is, whatever the client claimed.
#[tokio::test]
async fn a_clients_forwarding_headers_are_replaced_or_dropped() {
    let (fake, gw) = fake_and_gateway("").await;
    let req = with_forged_forwarding_headers(get(&gw.url("/api/organization")));
    let (parts, _) = send(&client(), req).await;
    assert_eq!(parts.status, 200);
    let seen = &fake.requests()[0].headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(!seen.contains_key("x-real-ip"), "{seen:?}");
    assert!(!seen.contains_key("x-forwarded-host"), "{seen:?}");
    assert!(!format!("{seen:?}").contains("10.9.8.7"), "{seen:?}");
}

/// A peer in `server.trusted_proxies` (a load balancer in front) is
/// believed: its chain is extended with its own address, and what it says
/// about the original client passes through.
#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_extended() {
    let (fake, gw) =
        fake_and_gateway("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]").await;
    let req = with_forged_forwarding_headers(get(&gw.url("/api/organization")));
    let (parts, _) = send(&client(), req).await;
    assert_eq!(parts.status, 200);
    let seen = &fake.requests()[0].headers;
    assert_eq!(seen["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(
        seen["forwarded"],
        "for=10.9.8.7;proto=https;host=admin.example, for=127.0.0.1;proto=http"
    );
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-real-ip"], "10.9.8.7");
    assert_eq!(seen["x-forwarded-host"], "admin.example");
}

#[tokio::test]
async fn trusted_proxies_must_be_addresses_or_networks() {
    let dir = TestDir::new();
    let path = dir.config(
        "https://app.polytomic.com",
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]",
    );
    let config = polytomic_gateway::config::load(&path).unwrap();
    let error = polytomic_gateway::Gateway::build(config, &path)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`server.trusted_proxies`") && error.contains("lb.internal"),
        "{error}"
    );
    assert!(error.contains(&path.display().to_string()), "{error}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    let upstream = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
        *record.lock().unwrap() = Some(req.headers().clone());
        async {
            http::Response::builder()
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-end-to-end", "kept")
                .body(upstream_body("{}"))
                .unwrap()
        }
    })
    .await;
    let gw = start_gateway(&format!("http://{upstream}"), "").await;
    let req = Request::get(gw.url("/api/organization"))
        .header("authorization", bearer())
        .header("connection", "x-client-hop, keep-alive")
        .header("x-client-hop", "secret-ish")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("trailer", "x-checksum")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let (parts, _) = send(&client(), req).await;
    assert_eq!(parts.status, 200);
    for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!parts.headers.contains_key(gone), "response kept {gone}");
    }
    assert_eq!(parts.headers["x-end-to-end"], "kept");

    let headers = seen.lock().unwrap().clone().unwrap();
    for gone in [
        "x-client-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "trailer",
    ] {
        assert!(!headers.contains_key(gone), "upstream received {gone}");
    }
    assert_eq!(headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn idempotency_keys_and_end_to_end_headers_pass_untouched() {
    let (fake, gw) = fake_and_gateway("").await;
    let req = Request::post(gw.url("/api/organizations"))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .header("idempotency-key", "3f1c1d2e-idem-Key/with+odd=chars")
        .header("user-agent", "polytomic/25.9.2")
        .header("x-custom", "a")
        .header("x-custom", "b")
        .body(Full::new(Bytes::from_static(br#"{"name":"Initech"}"#)))
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["data"]["name"], "Initech");
    let seen = &fake.requests()[0];
    assert_eq!(
        seen.headers["idempotency-key"],
        "3f1c1d2e-idem-Key/with+odd=chars"
    );
    assert_eq!(seen.headers["user-agent"], "polytomic/25.9.2");
    let custom: Vec<_> = seen.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["a", "b"]);
    assert_eq!(&seen.body[..], br#"{"name":"Initech"}"#);
    assert_eq!(seen.headers["content-length"], "18");
}

/// The gateway always assigns its own request id: on the response, in the
/// logs and as the audit record's `request_id`. A client's own, if it is a
/// sane one, is recorded beside it as `client_request_id` and passed on
/// upstream; a malformed one is neither.
#[tokio::test]
async fn the_request_id_is_always_the_gateways_and_the_clients_is_kept_beside_it() {
    let (fake, gw) = fake_and_gateway("").await;
    let c = client();
    let with_id = |id: &str| {
        let mut req = get(&gw.url("/api/organization"));
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        req
    };
    let (parts, _) = send(&c, with_id("caller-req-42")).await;
    let first = parts.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&first).is_ok(), "{first}");

    let (parts, _) = send(&c, get(&gw.url("/api/organization"))).await;
    let second = parts.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&second).is_ok(), "{second}");

    let too_long = "x".repeat(129);
    let mut third = Vec::new();
    for bad in [too_long.as_str(), "a b", "a\"b", "{\"forged\":1}"] {
        let (parts, _) = send(&c, with_id(bad)).await;
        third.push(parts.headers["x-request-id"].to_str().unwrap().to_owned());
    }

    let seen = fake.requests();
    assert_eq!(seen[0].headers["x-request-id"], "caller-req-42");
    assert_eq!(seen[1].headers["x-request-id"], second.as_str());
    for (request, ours) in seen[2..].iter().zip(&third) {
        assert_eq!(request.headers["x-request-id"], ours.as_str());
    }

    // Refusals carry the gateway's id too.
    let (parts, _) = send(
        &c,
        Request::post(gw.url("/readyz"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(parts.headers.contains_key("x-request-id"));

    let dir = gw.shutdown().await;
    let trail = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = trail
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|r: &serde_json::Value| r["stage"] == "response")
        .collect();
    assert_eq!(records[0]["request_id"], first.as_str());
    assert_eq!(records[0]["client_request_id"], "caller-req-42");
    assert_eq!(records[1]["request_id"], second.as_str());
    assert!(records[1]["client_request_id"].is_null(), "{}", records[1]);
    for (record, ours) in records[2..].iter().zip(&third) {
        assert_eq!(record["request_id"], ours.as_str());
        assert!(record["client_request_id"].is_null(), "{record}");
    }
    assert!(!trail.contains("forged"), "{trail}");
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let (fake, gw) = fake_and_gateway("").await;
    let (parts, body) = send(
        &client(),
        get(&gw.url("/api/organizations/00000000-0000-0000-0000-000000000000")),
    )
    .await;
    assert_eq!(parts.status, 404);
    assert_eq!(
        json(&body),
        serde_json::json!({"status": 404, "message": "not found", "key": "not_found", "metadata": {}})
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn h2c_clients_are_served_and_forwarded() {
    let (fake, gw) = fake_and_gateway("").await;
    let (parts, body) = send(&h2c_client(), get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        fake.requests()[0].headers["authorization"],
        format!("Bearer {PARTNER_KEY}")
    );
}

#[tokio::test]
async fn health_endpoints_are_answered_locally() {
    let (fake, gw) = fake_and_gateway("").await;
    let c = client();
    let (parts, body) = send(&c, get(&gw.url("/healthz"))).await;
    assert_eq!(
        (parts.status.as_u16(), json(&body)["status"].clone()),
        (200, "ok".into())
    );
    let (parts, body) = send(&c, get(&gw.url("/readyz"))).await;
    assert_eq!(
        (parts.status.as_u16(), json(&body)["status"].clone()),
        (200, "ready".into())
    );
    assert!(
        fake.requests().is_empty(),
        "health checks must not be forwarded"
    );
}

#[tokio::test]
async fn the_gateways_request_id_wins_over_the_upstreams() {
    let upstream = spawn_upstream(|_req| async {
        http::Response::builder()
            .header("x-request-id", "polytomic-side-id")
            .body(upstream_body("{}"))
            .unwrap()
    })
    .await;
    let gw = start_gateway(&format!("http://{upstream}"), "").await;
    let mut req = get(&gw.url("/api/organization"));
    req.headers_mut()
        .insert("x-request-id", "caller-req-7".parse().unwrap());
    let (parts, _) = send(&client(), req).await;
    let ours = parts.headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(ours).is_ok(), "{ours}");
    assert_eq!(parts.headers["x-upstream-request-id"], "polytomic-side-id");
}

#[tokio::test]
async fn a_client_cannot_name_injected_headers_as_hop_by_hop() {
    let (fake, gw) = fake_and_gateway("").await;
    // Naming the version header hop-by-hop removes the client's copy only;
    // the gateway's own is set afterwards.
    let req = Request::get(gw.url("/api/organization"))
        .header("authorization", bearer())
        .header("connection", "x-polytomic-version, content-type")
        .header("x-polytomic-version", "2024-02-08")
        .body(Full::default())
        .unwrap();
    let (parts, _) = send(&client(), req).await;
    assert_eq!(parts.status, 200);
    let seen = &fake.requests()[0];
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {PARTNER_KEY}")
    );
    assert_eq!(seen.headers["x-polytomic-version"], "2025-09-18");
    // Naming Authorization drops the caller's own token: nothing to
    // authenticate, so the request is refused, never sent without a check.
    let req = Request::get(gw.url("/api/organization"))
        .header("authorization", bearer())
        .header("connection", "authorization")
        .body(Full::default())
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_gateway_error(&parts, &body, 401, "unauthenticated");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn each_route_gets_its_own_credential() {
    const ORG_KEY: &str = "org_live_CANARY_connections_51c2";
    let dir = TestDir::new();
    std::fs::write(dir.path("org-key"), format!("{ORG_KEY}\n")).unwrap();
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    // The partner key for organization endpoints (the default), an
    // organization key for everything else, as Polytomic requires.
    let extra = format!(
        r#"[credentials.org]
file = {:?}

[[routes]]
operation = "organization.current"
methods = ["GET"]
path = "/api/organization"

[[routes]]
operation = "connections.list"
methods = ["GET"]
path = "/api/connections"
credential = "org"
"#,
        dir.path("org-key").display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &extra);
    let gw = start_gateway_from(dir, &path).await;
    for target in ["/api/organization", "/api/connections"] {
        send(&client(), get(&gw.url(target))).await;
    }
    let seen = within("both requests at the upstream", fake.wait_for_requests(2)).await;
    let sent: Vec<(String, Vec<String>)> = seen
        .iter()
        .map(|r| {
            let auth = r.headers.get_all("authorization").iter();
            let auth = auth.map(|v| v.to_str().unwrap().to_owned()).collect();
            (r.target.clone(), auth)
        })
        .collect();
    assert_eq!(
        sent,
        [
            (
                "/api/organization".to_owned(),
                vec![format!("Bearer {PARTNER_KEY}")]
            ),
            (
                "/api/connections".to_owned(),
                vec![format!("Bearer {ORG_KEY}")]
            ),
        ]
    );
}

/// The shared error assertion's leak check can fail: it finds whatever
/// token a test sent, whole or as its signature.
#[test]
fn the_error_assertion_catches_an_echoed_token() {
    let parts = http::Response::builder()
        .status(401)
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let signature = token().rsplit('.').next().unwrap().to_owned();
    for echoed in [token().to_owned(), signature] {
        let body = serde_json::json!({
            "status": 401, "key": "unauthenticated",
            "message": format!("bad token {echoed}"), "metadata": {},
        })
        .to_string();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_gateway_error(&parts, body.as_bytes(), 401, "unauthenticated")
        }));
        let message = caught.expect_err("an echoed token passed the check");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("a caller token leaked"), "{message}");
    }
    // And a clean body passes.
    let clean = r#"{"status":401,"key":"unauthenticated","message":"invalid token","metadata":{}}"#;
    assert_gateway_error(&parts, clean.as_bytes(), 401, "unauthenticated");
}
