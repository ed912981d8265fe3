//! Routes and team policy end to end: the decision matrix over real sockets,
//! the path-bypass corpus sent as raw bytes, `policy explain`, and shadow
//! mode. The fake upstream confirms that nothing refused ever reaches it.

mod common;

use std::process::Command;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use polytomic_gateway::fake::{FakePolytomic, CURRENT_ORG_ID};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORG_A: &str = CURRENT_ORG_ID; // the billing team's own organization
const ORG_B: &str = "0b7f3c1e-5d2a-4c6e-9f8a-1b2c3d4e5f60";

/// The organization routes only (no catch-all) and the example policy.
fn shipped_routes_and_policy() -> String {
    let routes = routes_with_schemas(TEST_ROUTES);
    let routes = routes
        .split("[[routes]]")
        .filter(|r| !r.contains("api.other"))
        .collect::<Vec<_>>()
        .join("[[routes]]");
    format!(
        r#"{routes}
[policy]
mode = "enforce"

[[policy.rules]]
name = "platform-admins"
teams = ["platform"]
allow = ["organizations.*", "organization.current"]

[[policy.rules]]
name = "support-read-only"
teams = ["support"]
allow = ["organizations.list", "organizations.get", "organization.current"]

[[policy.rules]]
name = "billing-own-org"
teams = ["billing"]
allow = ["organizations.update"]
organizations = ["{ORG_A}"]
"#
    )
}

fn token_for(team: &str) -> String {
    let teams: Vec<&str> = if team.is_empty() { vec![] } else { vec![team] };
    sign(
        "rsa-a",
        jsonwebtoken::Algorithm::RS256,
        &claims(&format!("{team}-user@corp"), &teams),
    )
}

fn operations() -> Vec<(&'static str, Method, String)> {
    vec![
        (
            "organization.current",
            Method::GET,
            "/api/organization".into(),
        ),
        (
            "organizations.list",
            Method::GET,
            "/api/organizations".into(),
        ),
        (
            "organizations.create",
            Method::POST,
            "/api/organizations".into(),
        ),
        (
            "organizations.get",
            Method::GET,
            format!("/api/organizations/{ORG_A}"),
        ),
        (
            "organizations.get",
            Method::GET,
            format!("/api/organizations/{ORG_B}"),
        ),
        (
            "organizations.update",
            Method::PUT,
            format!("/api/organizations/{ORG_A}"),
        ),
        (
            "organizations.update",
            Method::PATCH,
            format!("/api/organizations/{ORG_A}"),
        ),
        (
            "organizations.update",
            Method::PUT,
            format!("/api/organizations/{ORG_B}"),
        ),
        (
            "organizations.update",
            Method::PATCH,
            format!("/api/organizations/{}", ORG_B.to_uppercase()),
        ),
        (
            "organizations.delete",
            Method::DELETE,
            format!("/api/organizations/{ORG_B}"),
        ),
        (
            "organizations.delete",
            Method::DELETE,
            format!("/api/organizations/{ORG_A}"),
        ),
    ]
}

fn expected(team: &str, operation: &str, path: &str) -> bool {
    match team {
        "platform" => true,
        "support" => matches!(
            operation,
            "organization.current" | "organizations.list" | "organizations.get"
        ),
        "billing" => operation == "organizations.update" && path.to_lowercase().ends_with(ORG_A),
        _ => false,
    }
}

#[tokio::test]
async fn the_decision_matrix_holds_and_denied_requests_never_reach_the_upstream() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(&format!("http://{addr}"), &shipped_routes_and_policy()).await;
    let c = client();
    let mut allowed = Vec::new();
    // Deletes last, so earlier requests find the organizations.
    for team in ["support", "billing", "", "finance", "platform"] {
        let token = token_for(team);
        for (operation, method, path) in operations() {
            let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
                Bytes::from_static(br#"{"name":"Acme"}"#)
            } else {
                Bytes::new()
            };
            let req = Request::builder()
                .method(method.clone())
                .uri(gw.url(&path))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap();
            let (parts, body) = send(&c, req).await;
            let case = format!("team {team:?}: {method} {path} ({operation})");
            if expected(team, operation, &path) {
                assert_ne!(parts.status, 403, "{case} was denied");
                assert!(parts.status.as_u16() < 500, "{case}: {}", parts.status);
                allowed.push((method, path));
            } else {
                assert_gateway_error(&parts, &body, 403, "forbidden");
                assert_eq!(
                    json(&body)["message"],
                    format!("team may not perform {operation}"),
                    "{case}"
                );
            }
        }
    }
    let seen = fake.requests();
    assert_eq!(
        seen.len(),
        allowed.len(),
        "only allowed requests reach the upstream"
    );
    for (request, (method, path)) in seen.iter().zip(&allowed) {
        assert_eq!((&request.method, &request.target), (method, path));
    }
}

/// Sends raw bytes; returns the status code of the first response line and
/// the `key` of the gateway's JSON error body (`None` for a body that is not
/// one, such as hyper's own bare 400 for a request line it cannot parse).
async fn raw_response(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Option<String>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = within(
        "the gateway to answer and close",
        stream.read_to_end(&mut response),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let key = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|v| v["key"].as_str().map(str::to_owned));
    (status, key)
}

async fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    raw_response(addr, request).await.0
}

fn raw_get(target: &[u8], extra: &str) -> Vec<u8> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n{extra}Connection: close\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    request
}

/// Paths the gateway itself refuses as ambiguous (400 `invalid_path`)
/// before any route is matched: each would reach a catch-all route, or an
/// upstream that normalizes paths, as a different path than the one checked.
fn ambiguous_paths(id: &str) -> Vec<String> {
    vec![
        format!("/api/organizations%2F{id}"),
        format!("/api/organizations%2f{id}"),
        format!("/api/organizations/{id}%2F..%2F..%2Fadmin"),
        "/api/%2e%2e/api/organizations".into(),
        "/api/%2E/organizations".into(),
        "/api/organizations%5Cadmin".into(),
        "/api/organizations%5cadmin".into(),
        "/api/organizations%252Fadmin".into(),
        "/api/./organizations".into(),
        "/api/../api/organizations".into(),
        format!("/api/organizations/{id}/.."),
        "/api//organizations".into(),
        "//api/organizations".into(),
        "/api/organizations/".into(),
        "/api/organization/".into(),
        "/api\\organizations".into(),
        "/api/organizations%00".into(),
        "/api/organizations%0a".into(),
        "/api/organizations;jsessionid=x".into(),
        format!("/api/organizations/{id};v=1"),
        "/api/organizations%23fragment".into(),
        "/api/organizations%3Fid=1".into(),
        format!("/api/organizations/{id}%3F"),
        "/api/organizations/%".into(),
        "/api/organizations/%zz".into(),
        "/api/org%61nizations".into(),
        format!("/api/organizations/{}%2D{}", &id[..8], &id[9..]),
        format!("/api/organizations/{}", "a".repeat(2100)),
    ]
}

#[tokio::test]
async fn path_bypass_attempts_are_refused_and_never_forwarded() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    // The platform team may do everything: refusals here are routing's alone.
    let gw = start_gateway(&format!("http://{addr}"), &shipped_routes_and_policy()).await;
    let id = ORG_A;
    // Each target with the exact refusal: `invalid_path` for a path refused
    // as ambiguous or a malformed id, `no_route` for a plain path no route
    // has, and `None` for bytes hyper refuses before any layer runs.
    let invalid = Some("invalid_path");
    let targets: Vec<(Vec<u8>, u16, Option<&str>)> = ambiguous_paths(id)
        .into_iter()
        .map(|p| (p.into_bytes(), 400, invalid))
        .chain([
            (b"/api/organizations/not-a-uuid".to_vec(), 400, invalid),
            (
                format!("/api/organizations/{}", &id[..35]).into_bytes(),
                400,
                invalid,
            ),
            (b"/API/organizations".to_vec(), 404, Some("no_route")),
            (b"/api/Organizations".to_vec(), 404, Some("no_route")),
            (b"/Api/Organization".to_vec(), 404, Some("no_route")),
            (b"/api/organizations\x01".to_vec(), 400, None),
            (b"/api/organiz\xc3\xa4tions".to_vec(), 400, invalid),
            (b"/api/organizations\xff".to_vec(), 400, None),
        ])
        .collect();
    for (target, status, key) in &targets {
        let got = raw_response(gw.addr, &raw_get(target, "")).await;
        assert_eq!(
            got,
            (*status, key.map(str::to_owned)),
            "{:?}",
            String::from_utf8_lossy(target)
        );
    }
    // The method checked is the method sent.
    for header in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        let request = raw_get(b"/api/organizations", &format!("{header}: DELETE\r\n"));
        assert_eq!(raw_status(gw.addr, &request).await, 400, "{header}");
    }
    // A known path with another method is 405 with Allow.
    let req = Request::builder()
        .method(Method::POST)
        .uri(gw.url(&format!("/api/organizations/{id}")))
        .header("authorization", bearer())
        .body(Full::default())
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_gateway_error(&parts, &body, 405, "method_not_allowed");
    assert_eq!(parts.headers["allow"], "DELETE, GET, PATCH, PUT");
    assert!(
        fake.requests().is_empty(),
        "a refused path reached the upstream: {:?}",
        fake.requests()[0].target
    );

    // hyper's URI parser drops a raw `#fragment` before any layer runs, so it
    // can be neither refused nor forwarded: the path routed is the path sent.
    let status = raw_status(
        gw.addr,
        &raw_get(b"/api/organization#/../organizations", ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fake.requests()[0].target, "/api/organization");

    // The query never routes, and travels untouched.
    let target = "/api/organization?/../organizations/%2F..&x=%2e";
    let status = raw_status(gw.addr, &raw_get(target.as_bytes(), "")).await;
    assert_eq!(status, 200);
    assert_eq!(fake.requests()[1].target, target);
}

/// Behind a catch-all route (`/api/{*rest}`), an ambiguous path would be
/// routed and forwarded if the path check did not refuse it first: "refused
/// as ambiguous" and "no route" cannot look alike here.
#[tokio::test]
async fn ambiguous_paths_are_refused_even_where_a_catch_all_would_route_them() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(&format!("http://{addr}"), "").await;
    // The catch-all forwards a plain unknown path: it is really there (the
    // fake API itself answers it).
    raw_response(gw.addr, &raw_get(b"/api/anything/else", "")).await;
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(fake.requests()[0].target, "/api/anything/else");
    for target in ambiguous_paths(ORG_A) {
        let got = raw_response(gw.addr, &raw_get(target.as_bytes(), "")).await;
        assert_eq!(got, (400, Some("invalid_path".to_owned())), "{target}");
    }
    assert_eq!(
        fake.requests().len(),
        1,
        "an ambiguous path reached the upstream: {:?}",
        fake.requests().last().map(|r| r.target.clone())
    );
}

#[test]
fn policy_explain_exits_0_on_allow_and_3_on_deny() {
    let dir = TestDir::new();
    let path = dir.config("https://app.polytomic.com", &shipped_routes_and_policy());
    let explain = |args: &[&str]| {
        let out = Command::new(binary_path())
            .args(["policy", "explain", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = explain(&[
        "--team",
        "billing",
        "--method",
        "PUT",
        "--path",
        &format!("/api/organizations/{ORG_A}"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("organizations.update")
            && out.contains("decision:  allow")
            && out.contains("rule:      billing-own-org"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--team",
        "billing",
        "--method",
        "PUT",
        "--path",
        &format!("/api/organizations/{ORG_B}"),
    ]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("decision:  deny") && out.contains("no rule allows it"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--team",
        "support",
        "--sub",
        "sam@corp",
        "--method",
        "GET",
        "--path",
        "/api/organizations",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("support-read-only") && out.contains("sub=sam@corp"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--team",
        "platform",
        "--method",
        "GET",
        "--path",
        "/api/syncs",
    ]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("no_route"), "{out}");
    let (code, _) = explain(&[
        "--team",
        "platform",
        "--method",
        "GET",
        "--path",
        "/api/%2e%2e/x",
    ]);
    assert_eq!(code, Some(3));
}

/// `policy explain --method` takes the seven methods a route can list, in
/// upper case, as `--help` says: anything else (`get`, `PROPFIND`) exits 1
/// with the list, rather than being explained as a request the gateway
/// would answer 405.
#[test]
fn policy_explain_takes_only_the_methods_routes_can_list() {
    let dir = TestDir::new();
    let path = dir.config("https://app.polytomic.com", &shipped_routes_and_policy());
    let explain = |method: &str| {
        let out = Command::new(binary_path())
            .args(["policy", "explain", "--team", "platform", "--config"])
            .arg(&path)
            .args(["--method", method, "--path", "/api/organization"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for method in ["get", "PROPFIND"] {
        let (code, stdout, stderr) = explain(method);
        assert_eq!(code, Some(1), "{method}: {stdout}");
        assert!(stdout.is_empty(), "{method}: {stdout}");
        assert!(
            stderr.contains(&format!(
                "--method {method:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            )),
            "{method}: {stderr}"
        );
    }
    // A listed method the route does not take is explained: 405, exit 3.
    let (code, stdout, stderr) = explain("HEAD");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stdout.contains("decision:  deny (status 405)"), "{stdout}");
    let help = Command::new(binary_path())
        .args(["policy", "explain", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS, in upper case"),
        "{help}"
    );
}

#[tokio::test]
async fn shadow_mode_forwards_would_be_denials_and_logs_them() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let config = shipped_routes_and_policy().replace("mode = \"enforce\"", "mode = \"shadow\"");
    let path = dir.config(&format!("http://{addr}"), &config);
    let mut gw = Binary::serve(&path, &[]).await;
    let req = Request::put(gw.url(&format!("/api/organizations/{ORG_A}")))
        .header("authorization", format!("Bearer {}", token_for("support")))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"Shadowed"}"#)))
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(fake.requests().len(), 1);
    let line = gw
        .wait_for_line("policy would deny this request (shadow mode)")
        .await;
    assert!(
        line.contains("WARN")
            && line.contains("organizations.update")
            && line.contains("support-user@corp"),
        "{line}"
    );
    // Shadow mode still refuses what no policy decides: unknown routes.
    let (parts, _) = send(&client(), get(&gw.url("/api/syncs"))).await;
    assert_eq!(parts.status, 404);
    assert_eq!(fake.requests().len(), 1);
}

/// Deny by default: a `[policy]` with no rules lets nobody do anything.
#[tokio::test]
async fn a_policy_with_no_rules_denies_every_request() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(&format!("http://{addr}"), "[policy]\nmode = \"enforce\"\n").await;
    for (method, path) in [
        (Method::GET, "/api/organization".to_owned()),
        (Method::GET, "/api/organizations".to_owned()),
        (Method::GET, format!("/api/organizations/{ORG_A}")),
        (Method::DELETE, format!("/api/organizations/{ORG_A}")),
        (Method::GET, "/api/connections".to_owned()),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(gw.url(&path))
            .header("authorization", bearer())
            .body(Full::default())
            .unwrap();
        let (parts, body) = send(&client(), req).await;
        assert_gateway_error(&parts, &body, 403, "forbidden");
        let message = json(&body)["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("team may not perform"),
            "{method} {path}: {message}"
        );
    }
    assert!(fake.requests().is_empty(), "a request was forwarded");
}
