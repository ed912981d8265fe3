//! Body validation end to end: strict JSON, schema violations listed without
//! echoing values, content type and size limits. The fake upstream confirms
//! that valid bodies arrive byte for byte and refused ones never arrive.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use polytomic_gateway::fake::{FakePolytomic, CURRENT_ORG_ID};
use serde_json::{json, Value};

async fn setup(extra: &str) -> (FakePolytomic, InProcess) {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let gw = start_gateway(&format!("http://{addr}"), extra).await;
    (fake, gw)
}

fn write(
    gw: &InProcess,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(gw.url(path))
        .header("authorization", bearer());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(Full::new(body.into())).unwrap()
}

fn update_path() -> String {
    format!("/api/organizations/{CURRENT_ORG_ID}")
}

async fn put(gw: &InProcess, body: impl Into<Bytes>) -> (http::response::Parts, Bytes) {
    send(
        &client(),
        write(
            gw,
            Method::PUT,
            &update_path(),
            Some("application/json"),
            body,
        ),
    )
    .await
}

#[tokio::test]
async fn valid_bodies_are_forwarded_byte_for_byte() {
    let (fake, gw) = setup("").await;
    // Odd spacing, key order and escapes must survive untouched.
    let update = "{ \"name\" : \"Acme \\u00e9\",\n  \"issuer\":\"https://idp.acme.com/realms/main\", \"client_secret\": \"s3cr3t\",\"sso_domain\":\"acme.example\", \"client_id\":null }";
    let create = r#"{"name":"Initech","sso_org_id":"org_123"}"#;
    let cases = [
        (Method::PUT, update_path(), "application/json", update),
        (
            Method::PATCH,
            update_path(),
            "application/json; charset=utf-8",
            update,
        ),
        (
            Method::POST,
            "/api/organizations".to_owned(),
            "Application/JSON;charset=\"UTF-8\"",
            create,
        ),
    ];
    for (method, path, ct, body) in &cases {
        let (parts, response) = send(
            &client(),
            write(&gw, method.clone(), path, Some(ct), body.to_string()),
        )
        .await;
        assert_eq!(
            parts.status,
            200,
            "{method} {}",
            String::from_utf8_lossy(&response)
        );
        assert!(json(&response)["data"].get("client_secret").is_none());
    }
    let seen = fake.requests();
    assert_eq!(seen.len(), 3);
    for (request, (method, _, _, body)) in seen.iter().zip(&cases) {
        assert_eq!(&request.method, method);
        assert_eq!(&request.body[..], body.as_bytes());
        assert_eq!(
            request.headers["content-length"],
            body.len().to_string().as_str()
        );
    }
}

fn errors(body: &[u8]) -> Vec<(String, String, String)> {
    let value = json(body);
    value["metadata"]["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no metadata.errors in {value}"))
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["keyword"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn schema_violations_are_all_listed_and_never_forwarded() {
    let (fake, gw) = setup("").await;
    let e = |p: &str, k: &str, m: &str| (p.to_owned(), k.to_owned(), m.to_owned());

    let (parts, body) = put(&gw, r#"{"issuer":"https://idp.example"}"#).await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    assert_eq!(errors(&body), [e("/name", "required", "is required")]);

    let (parts, body) = put(&gw, r#"{"name":""}"#).await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    assert_eq!(
        errors(&body),
        [e("/name", "minLength", "must not be empty")]
    );

    let wrong_types = json!({"name": 5, "client_id": 1, "client_secret": true, "issuer": [], "sso_domain": {}, "sso_org_id": 1.5});
    let (parts, body) = put(&gw, wrong_types.to_string()).await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    let mut got = errors(&body);
    got.sort();
    let mut want = vec![
        e("/client_id", "type", "must be a string or null"),
        e("/client_secret", "type", "must be a string or null"),
        e("/issuer", "type", "must be a string or null"),
        e("/name", "type", "must be a string"),
        e("/sso_domain", "type", "must be a string or null"),
        e("/sso_org_id", "type", "must be a string or null"),
    ];
    want.sort();
    assert_eq!(got, want);

    let (parts, body) = put(
        &gw,
        r#"{"name":"Acme","issuer":"not a uri","sso_domain":"-bad_host-.example"}"#,
    )
    .await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    let mut got = errors(&body);
    got.sort();
    assert_eq!(
        got,
        [
            e("/issuer", "format", "must be a URI"),
            e("/issuer", "pattern", "must match the pattern ^https://"),
            e("/sso_domain", "format", "must be a hostname"),
        ]
    );

    let (parts, body) = put(&gw, r#"{"name":"Acme","clinet_secret":"x"}"#).await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    assert_eq!(
        errors(&body),
        [e(
            "/clinet_secret",
            "additionalProperties",
            "is not a known field"
        )]
    );

    // Not an object at all.
    let (parts, body) = put(&gw, r#"["name"]"#).await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    assert_eq!(errors(&body), [e("", "type", "must be an object")]);

    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn malformed_json_is_400_with_line_and_column() {
    let (fake, gw) = setup("").await;
    let deep = |n: usize| {
        format!(
            "{{\"name\":\"a\",\"x\":{}{}}}",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("duplicate key", br#"{"name":"a","name":"b"}"#.to_vec()),
        (
            "duplicate after unescaping",
            br#"{"name":"a","client_secret":"x","client\u005fsecret":"y"}"#.to_vec(),
        ),
        (
            "duplicate fully escaped",
            br#"{"\u006eame":"a","name":"b"}"#.to_vec(),
        ),
        (
            "nested duplicate",
            br#"{"name":"a","x":{"k":1,"k":2}}"#.to_vec(),
        ),
        ("bad UTF-8", b"{\"name\":\"\xff\xfe\"}".to_vec()),
        ("lone surrogate", br#"{"name":"\ud800"}"#.to_vec()),
        ("lone trailing surrogate", br#"{"name":"\udc00x"}"#.to_vec()),
        ("trailing data", br#"{"name":"a"} {"name":"b"}"#.to_vec()),
        ("trailing garbage", br#"{"name":"a"}x"#.to_vec()),
        ("empty body", Vec::new()),
        ("truncated", br#"{"name":"#.to_vec()),
        ("single quotes", br#"{'name':'a'}"#.to_vec()),
        ("comment", b"{\"name\":\"a\" /* c */}".to_vec()),
        ("NaN", br#"{"name":NaN}"#.to_vec()),
    ];
    for (name, body) in cases {
        let (parts, response) = put(&gw, body).await;
        assert_gateway_error(&parts, &response, 400, "invalid_json");
        let value = json(&response);
        assert!(
            value["metadata"]["line"].as_u64().is_some(),
            "{name}: {value}"
        );
        assert!(
            value["message"].as_str().unwrap().contains(" at line "),
            "{name}: {value}"
        );
    }
    // 63 levels inside the object (64 in all) parse; the schema then refuses
    // them. One more is past server.max_json_depth: not a syntax error.
    let (parts, body) = put(&gw, deep(63)).await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    let (parts, body) = put(&gw, deep(64)).await;
    assert_gateway_error(&parts, &body, 422, "json_too_deep");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn content_type_and_size_are_checked_first() {
    let (fake, gw) = setup("[server]\nmax_body_bytes = 1024").await;
    let body = r#"{"name":"Acme"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/json; charset=latin1"),
        Some("application/jsonx"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (parts, response) =
            send(&client(), write(&gw, Method::PUT, &update_path(), ct, body)).await;
        assert_gateway_error(&parts, &response, 415, "unsupported_media_type");
    }
    // Two Content-Type headers are ambiguous.
    let mut req = write(
        &gw,
        Method::PUT,
        &update_path(),
        Some("application/json"),
        body,
    );
    req.headers_mut()
        .append("content-type", "text/plain".parse().unwrap());
    let (parts, response) = send(&client(), req).await;
    assert_gateway_error(&parts, &response, 415, "unsupported_media_type");

    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(2000));
    let (parts, response) = put(&gw, big.clone()).await;
    assert_gateway_error(&parts, &response, 413, "payload_too_large");
    // Chunked, with no Content-Length: cut off at the limit while reading.
    let chunked = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Zeros>();
    let req = Request::put(gw.url(&update_path()))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(Zeros { remaining: 200_000 })
        .unwrap();
    let response = within("the chunked PUT's response", chunked.request(req))
        .await
        .unwrap();
    let (parts, response) = response.into_parts();
    let response = response.collect().await.unwrap().to_bytes();
    assert_gateway_error(&parts, &response, 413, "payload_too_large");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn bodies_are_refused_on_read_methods_of_schema_routes() {
    let routes = routes_with_schemas(
        "[[routes]]\noperation = \"custom.read_write\"\nmethods = [\"GET\", \"DELETE\", \"POST\"]\npath = \"/api/custom\"\nschema = \"SCHEMAS/organization-create.json\"\n",
    );
    let (fake, gw) = setup(&routes).await;
    for method in [Method::GET, Method::DELETE] {
        let (parts, body) = send(
            &client(),
            write(
                &gw,
                method.clone(),
                "/api/custom",
                Some("application/json"),
                r#"{"name":"a"}"#,
            ),
        )
        .await;
        assert_gateway_error(&parts, &body, 400, "body_not_allowed");
    }
    assert!(fake.requests().is_empty());
    // Without a body they pass (the fake answers 404 for this path), and
    // so does a DELETE that declares an empty one (`Content-Length: 0`, as
    // some clients send).
    let (parts, _) = send(&client(), write(&gw, Method::GET, "/api/custom", None, "")).await;
    assert_eq!(parts.status, 404);
    let mut empty = write(&gw, Method::DELETE, "/api/custom", None, "");
    empty
        .headers_mut()
        .insert("content-length", http::HeaderValue::from_static("0"));
    let (parts, body) = send(&client(), empty).await;
    assert_eq!(parts.status, 404, "{}", String::from_utf8_lossy(&body));
    let forwarded: Vec<_> = fake.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(forwarded, [Method::GET, Method::DELETE]);
    // Over HTTP/2 a body needs neither Content-Length nor Transfer-Encoding:
    // a GET whose body's size is unknown up front is refused all the same.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Zeros>();
    let req = Request::get(gw.url("/api/custom"))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(Zeros { remaining: 10 })
        .unwrap();
    let response = within("the h2 GET's response", h2.request(req))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let body = within("the h2 GET's body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_gateway_error(&parts, &body, 400, "body_not_allowed");
    assert_eq!(
        fake.requests().len(),
        2,
        "the h2 GET with a body was forwarded"
    );
}

#[tokio::test]
async fn routes_without_a_schema_stream_any_body() {
    let (fake, gw) = setup("").await;
    // The catch-all test route has no schema: text passes untouched.
    let (parts, _) = send(
        &client(),
        write(
            &gw,
            Method::POST,
            "/api/uploads",
            Some("text/csv"),
            "a,b\n1,2\n",
        ),
    )
    .await;
    assert_eq!(
        parts.status, 404,
        "forwarded to the fake, which has no such path"
    );
    assert_eq!(&fake.requests()[0].body[..], b"a,b\n1,2\n");
}

const CANARY: &str = "CANARY-s3cr3t-7a1f";

#[tokio::test]
async fn a_secret_in_a_wrong_field_is_never_echoed_or_logged() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(&format!("http://{addr}"), "");
    let mut gw = Binary::serve(&path, &[("RUST_LOG", "debug")]).await;
    let bodies = [
        json!({"name": "Acme", "client_id": {"secret": CANARY}}).to_string(),
        json!({"name": "Acme", "issuer": CANARY}).to_string(),
        json!({"name": "Acme", "sso_domain": format!("{CANARY} not a host")}).to_string(),
        json!({"name": "Acme", "client_secret": [CANARY]}).to_string(),
        json!({"name": {"value": CANARY}}).to_string(),
        json!({"name": "Acme", "unknown_field": CANARY}).to_string(),
        format!(r#"{{"name":"Acme","client_secret":"{CANARY}","client\u005fsecret":"{CANARY}"}}"#),
        format!(r#"{{"name":"{CANARY}"#),
    ];
    let c = client();
    for body in &bodies {
        let req = Request::put(gw.url(&update_path()))
            .header("authorization", bearer())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let (parts, response) = send(&c, req).await;
        assert!(
            matches!(parts.status.as_u16(), 400 | 422),
            "{body}: {}",
            parts.status
        );
        let text = String::from_utf8_lossy(&response);
        assert!(!text.contains(CANARY), "echoed: {text}");
        let headers = format!("{:?}", parts.headers);
        assert!(!headers.contains(CANARY));
    }
    assert!(fake.requests().is_empty());
    gw.signal("TERM");
    gw.exit().await;
    let output = gw.collect_output().await;
    assert!(
        output.contains("\"reason\":\"invalid_body\"") && output.contains("request refused"),
        "the refusals were not logged:\n{output}"
    );
    // The leak hunt means something only if debug output was really on.
    assert!(
        output.contains("request body refused"),
        "the gateway did not log at debug:\n{output}"
    );
    assert!(!output.contains(CANARY), "logged: {output}");
    assert!(!output.contains(PARTNER_KEY) && !output.contains(token()));
}

#[test]
fn a_broken_schema_fails_check_naming_the_file() {
    let dir = TestDir::new();
    std::fs::write(
        dir.path("broken.json"),
        r#"{"type": "object", "properties": {"a": {"type": "no-such-type"}}}"#,
    )
    .unwrap();
    let routes = format!(
        "[[routes]]\noperation = \"x\"\nmethods = [\"POST\"]\npath = \"/api/x\"\nschema = {:?}\n\n[[routes]]\noperation = \"y\"\nmethods = [\"POST\"]\npath = \"/api/y\"\nschema = \"/nonexistent/schema.json\"\n",
        dir.path("broken.json").display().to_string()
    );
    let path = dir.config("https://app.polytomic.com", &routes);
    let out = std::process::Command::new(binary_path())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`routes[0].schema`")
            && stderr.contains("broken.json")
            && stderr.contains("not a valid JSON Schema"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`routes[1].schema`") && stderr.contains("/nonexistent/schema.json"),
        "{stderr}"
    );
    let _: Value = Value::Null;
}

#[tokio::test]
async fn bodies_on_get_and_delete_of_the_organization_path_are_refused() {
    let (fake, gw) = setup("").await;
    for method in [Method::DELETE, Method::GET] {
        let (parts, body) = send(
            &client(),
            write(
                &gw,
                method,
                &update_path(),
                Some("application/json"),
                r#"{"name":"a"}"#,
            ),
        )
        .await;
        assert_gateway_error(&parts, &body, 400, "body_not_allowed");
    }
    assert!(
        fake.requests().is_empty(),
        "a DELETE body must not reach the upstream unvalidated"
    );
    let (parts, body) = put(&gw, r#"{"name":"Acme","issuer":"http://idp.acme.com"}"#).await;
    assert_gateway_error(&parts, &body, 422, "invalid_body");
    assert_eq!(
        errors(&body),
        [(
            "/issuer".to_owned(),
            "pattern".to_owned(),
            "must match the pattern ^https://".to_owned()
        )]
    );
}

/// A write body that ends before it is complete is 400 `incomplete_body`,
/// recorded as such, and never forwarded: a chunked body whose chunk size
/// cannot be parsed, and a body shorter than its `Content-Length` whose
/// sender then stops sending (the socket's write half is shut).
#[tokio::test]
async fn a_body_that_ends_early_is_400_incomplete_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (fake, gw) = setup("").await;
    let head = |framing: &str, id: &str| {
        format!(
            "PUT {} HTTP/1.1\r\nHost: g\r\nAuthorization: {}\r\nContent-Type: application/json\r\nX-Request-Id: {id}\r\n{framing}\r\n",
            update_path(),
            bearer()
        )
    };
    let cases = [
        (
            "chunked",
            format!(
                "{}5\r\n{{\"nam\r\nzzzzzzzzzzzzzzzzzzzzzzzzzz\r\n",
                head("Transfer-Encoding: chunked\r\n", "chunked")
            ),
        ),
        (
            "short",
            format!("{}{{\"name\":", head("Content-Length: 100\r\n", "short")),
        ),
    ];
    for (id, request) in &cases {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut response = Vec::new();
        let _ = within("the refusal", stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 400 "), "{id}: {text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(
            json(body.as_bytes())["key"],
            "incomplete_body",
            "{id}: {text}"
        );
    }
    assert!(fake.requests().is_empty(), "a cut-off body was forwarded");
    let dir = gw.shutdown().await;
    let audit = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    for (id, _) in &cases {
        let record = audit
            .lines()
            .map(|l| json(l.as_bytes()))
            .find(|r| r["client_request_id"] == *id && r["stage"] == "response")
            .unwrap_or_else(|| panic!("no record for {id}: {audit}"));
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["error_key"], "incomplete_body", "{record}");
        assert_eq!(record["outcome"], "invalid", "{record}");
    }
}

/// Planted in bodies refused by a parse limit: it must appear in no answer
/// and no audit record.
const PARSE_CANARY: &str = "CANARY-parse-limit-5c2e";

/// A gateway whose one write route (`POST /api/custom`) has a schema taking
/// any object, so that a body the parse accepts is forwarded whatever its
/// shape; `server` holds extra `[server]` lines.
async fn setup_any_object(server: &str) -> (FakePolytomic, InProcess) {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let schema = dir.path("any-object.json");
    std::fs::write(
        &schema,
        r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}"#,
    )
    .unwrap();
    let extra = format!(
        "[[routes]]\noperation = \"custom.write\"\nmethods = [\"POST\"]\npath = \"/api/custom\"\nschema = {:?}\n\n[server]\n{server}\n",
        schema.display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &extra);
    (fake, start_gateway_from(dir, &path).await)
}

/// An object nested `depth` deep in all (the object is level 1, then
/// arrays), holding `leaf` innermost.
fn nested_body(depth: usize, leaf: &str) -> String {
    format!(
        "{{\"x\":{}{leaf:?}{}}}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

/// An object holding exactly `values` JSON values: itself, the string
/// `leaf`, an array, and zeros in the array.
fn counted_body(values: usize, leaf: &str) -> String {
    format!(
        "{{\"s\":{leaf:?},\"x\":[{}]}}",
        vec!["0"; values - 3].join(",")
    )
}

/// POSTs `body` to the any-object route with request id `id`.
async fn post_any(gw: &InProcess, id: &str, body: &str) -> (http::response::Parts, Bytes) {
    let mut req = write(
        gw,
        Method::POST,
        "/api/custom",
        Some("application/json"),
        body.to_owned(),
    );
    req.headers_mut()
        .insert("x-request-id", id.parse().unwrap());
    send(&client(), req).await
}

/// Checks a parse-limit refusal: status and key, the config key and the
/// limit in the message, the limit in `metadata`, nothing of the body.
fn assert_parse_refusal(
    parts: &http::response::Parts,
    body: &[u8],
    status: u16,
    key: &str,
    config_key: &str,
    limit: usize,
) {
    assert_gateway_error(parts, body, status, key);
    let value = json(body);
    assert_eq!(
        value["message"],
        if key == "json_too_deep" {
            format!("the JSON body nests deeper than {config_key} ({limit})")
        } else {
            format!("the JSON body has more values than {config_key} ({limit})")
        },
        "{value}"
    );
    assert_eq!(value["metadata"], json!({ "limit": limit }), "{value}");
    assert!(
        !String::from_utf8_lossy(body).contains(PARSE_CANARY),
        "the refusal echoes the body: {value}"
    );
}

/// Stops the gateway and checks the audit trail: each refused request has a
/// `response` record with its status and key and the body's size and digest
/// (never the body), and no `request` record (nothing was forwarded); each
/// accepted one has both records.
async fn assert_parse_audit(gw: InProcess, refused: &[(&str, &str, u16, &str)], accepted: &[&str]) {
    let dir = gw.shutdown().await;
    let audit = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    assert!(!audit.contains(PARSE_CANARY), "a refused body was recorded");
    let records: Vec<Value> = audit.lines().map(|l| json(l.as_bytes())).collect();
    let find = |id: &str, stage: &str| {
        records
            .iter()
            .find(|r| r["client_request_id"] == id && r["stage"] == stage)
    };
    for (id, body, status, key) in refused {
        let record = find(id, "response").unwrap_or_else(|| panic!("no record for {id}: {audit}"));
        assert_eq!(record["status"], *status, "{record}");
        assert_eq!(record["error_key"], *key, "{record}");
        assert_eq!(record["outcome"], "invalid", "{record}");
        let sha = polytomic_gateway::notes::hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes()).as_ref(),
        );
        assert_eq!(
            record["request_body"],
            json!({"bytes": body.len(), "sha256": sha}),
            "{record}"
        );
        assert!(
            find(id, "request").is_none(),
            "{id} was recorded as forwarded"
        );
    }
    for id in accepted {
        assert!(find(id, "request").is_some(), "no request record for {id}");
        assert!(
            find(id, "response").is_some(),
            "no response record for {id}"
        );
    }
}

/// `server.max_json_depth` (default 64): a body nested 65 deep is 422
/// `json_too_deep`, audited and never forwarded; 64 deep is forwarded.
#[tokio::test]
async fn a_body_nested_past_max_json_depth_is_422_and_never_forwarded() {
    let (fake, gw) = setup_any_object("").await;
    let past = nested_body(65, PARSE_CANARY);
    let (parts, body) = post_any(&gw, "deep-past", &past).await;
    assert_parse_refusal(
        &parts,
        &body,
        422,
        "json_too_deep",
        "server.max_json_depth",
        64,
    );
    let at = nested_body(64, "fine");
    let (parts, body) = post_any(&gw, "deep-at", &at).await;
    assert_eq!(parts.status, 404, "{}", String::from_utf8_lossy(&body));
    let seen = fake.requests();
    assert_eq!(seen.len(), 1, "only the body at the limit is forwarded");
    assert_eq!(&seen[0].body[..], at.as_bytes());
    assert_parse_audit(
        gw,
        &[("deep-past", &past, 422, "json_too_deep")],
        &["deep-at"],
    )
    .await;
}

/// `server.max_json_values` (default 100,000): a body of 100,001 values is
/// 413 `json_too_many_values`, audited and never forwarded; 100,000 values
/// are forwarded.
#[tokio::test]
async fn a_body_past_max_json_values_is_413_and_never_forwarded() {
    let (fake, gw) = setup_any_object("").await;
    let past = counted_body(100_001, PARSE_CANARY);
    let (parts, body) = post_any(&gw, "many-past", &past).await;
    assert_parse_refusal(
        &parts,
        &body,
        413,
        "json_too_many_values",
        "server.max_json_values",
        100_000,
    );
    let at = counted_body(100_000, "fine");
    let (parts, body) = post_any(&gw, "many-at", &at).await;
    assert_eq!(parts.status, 404, "{}", String::from_utf8_lossy(&body));
    let seen = fake.requests();
    assert_eq!(seen.len(), 1, "only the body at the limit is forwarded");
    assert_eq!(&seen[0].body[..], at.as_bytes());
    assert_parse_audit(
        gw,
        &[("many-past", &past, 413, "json_too_many_values")],
        &["many-at"],
    )
    .await;
}

/// Both limits come from `[server]`: with `max_json_depth = 3` and
/// `max_json_values = 10`, bodies at them pass and one past is refused.
#[tokio::test]
async fn the_json_limits_are_configurable() {
    let (fake, gw) = setup_any_object("max_json_depth = 3\nmax_json_values = 10").await;
    let deep = nested_body(4, PARSE_CANARY);
    let (parts, body) = post_any(&gw, "deep-past", &deep).await;
    assert_parse_refusal(
        &parts,
        &body,
        422,
        "json_too_deep",
        "server.max_json_depth",
        3,
    );
    let many = counted_body(11, PARSE_CANARY);
    let (parts, body) = post_any(&gw, "many-past", &many).await;
    assert_parse_refusal(
        &parts,
        &body,
        413,
        "json_too_many_values",
        "server.max_json_values",
        10,
    );
    let accepted = [
        ("deep-at", nested_body(3, "fine")),
        ("many-at", counted_body(10, "fine")),
    ];
    for (id, at) in &accepted {
        let (parts, body) = post_any(&gw, id, at).await;
        assert_eq!(
            parts.status,
            404,
            "{id}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let forwarded: Vec<Bytes> = fake.requests().into_iter().map(|r| r.body).collect();
    let expected: Vec<Bytes> = accepted
        .iter()
        .map(|(_, b)| Bytes::from(b.clone()))
        .collect();
    assert_eq!(
        forwarded, expected,
        "only the bodies at the limits are forwarded"
    );
    assert_parse_audit(
        gw,
        &[
            ("deep-past", &deep, 422, "json_too_deep"),
            ("many-past", &many, 413, "json_too_many_values"),
        ],
        &["deep-at", "many-at"],
    )
    .await;
}

/// `check` refuses a depth of 0 or past what serde_json parses itself, and
/// a value count of 0, naming the key and the file; it accepts the largest
/// depth.
#[test]
fn json_limits_out_of_range_fail_check_naming_the_key() {
    let dir = TestDir::new();
    let check = |setting: &str| {
        let path = dir.config("https://app.polytomic.com", &format!("[server]\n{setting}"));
        let out = std::process::Command::new(binary_path())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr, path)
    };
    for (setting, key, message) in [
        (
            "max_json_depth = 0",
            "server.max_json_depth",
            "must be greater than zero",
        ),
        (
            "max_json_depth = 127",
            "server.max_json_depth",
            "must be at most 126",
        ),
        (
            "max_json_depth = 129",
            "server.max_json_depth",
            "must be at most 126",
        ),
        (
            "max_json_values = 0",
            "server.max_json_values",
            "must be greater than zero",
        ),
    ] {
        let (ok, stderr, path) = check(setting);
        assert!(!ok, "{setting} accepted");
        assert!(
            stderr.contains(&format!("`{key}`: {message}")),
            "{setting}: {stderr}"
        );
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        if message.contains("at most") {
            assert!(
                stderr.contains("serde_json"),
                "the reason is not given: {stderr}"
            );
        }
    }
    let (ok, stderr, _) = check("max_json_depth = 126\nmax_json_values = 1");
    assert!(ok, "the largest depth was refused: {stderr}");
}
