//! `[catalog]` end to end: the whole Polytomic API routed from the generated
//! catalog, over real sockets to an upstream that records everything it
//! receives. Secrets of every class kept out of the audit trail, the logs and
//! error bodies; organization scope from paths, bodies and queries; connection
//! configurations checked against their type; strict bodies; the SDK's real
//! paths; and the CLI (`routes`, `check`, `policy explain`) on a catalog config.

mod common;

use std::cell::RefCell;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

/// The organizations the scoped rules name (A, C) and the one they do not (B).
const ORG_A: &str = "3f2b8c1e-6a4d-4e7b-9c2a-1d5e8f0a7b61";
const ORG_B: &str = "9a7c5e3b-1f2d-4c6e-8b0a-2e4f6a8c0d13";
const ORG_C: &str = "c41d7e29-8b3a-4f15-a6e2-7d9b0c3f5a84";
/// Any other resource id (connection, sync, webhook, harbor, user).
const ID: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";
/// The API version of the embedded catalog, sent upstream on every request.
const API_VERSION: &str = "2025-09-18";

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query, exactly as received.
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> String {
        let values: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        values.join(", ")
    }

    /// Everything received, as text, for canary searches.
    fn text(&self) -> String {
        let mut text = format!("{} {}\n", self.method, self.target);
        for (name, value) in &self.headers {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        text.push_str(&String::from_utf8_lossy(&self.body));
        text
    }

    fn json(&self) -> Value {
        json(&self.body)
    }
}

/// An upstream on loopback that answers 200 `{"data":{}}` to everything and
/// records every request (method, target, headers, whole body) before it
/// answers, so a request is recorded by the time its response arrives.
struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn spawn() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let sink = seen.clone();
        let addr = spawn_upstream(move |req: Request<Incoming>| {
            let sink = sink.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let target = parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |pq| pq.as_str().to_owned());
                sink.lock().unwrap().push(Seen {
                    method: parts.method,
                    target,
                    headers: parts.headers,
                    body,
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(upstream_body(r#"{"data":{}}"#))
                    .unwrap()
            }
        })
        .await;
        Self {
            url: format!("http://{addr}"),
            seen,
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream received a request")
    }
}

/// A request as `token`'s holder, with request id `id` (to find its audit
/// records) and, when there is a body, `Content-Type: application/json`.
fn request(
    method: Method,
    url: &str,
    id: &str,
    token: &str,
    body: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("x-request-id", id);
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .unwrap()
}

/// A config for `upstream` routing the whole catalog (`catalog_section`),
/// with `catalog_keys` added under `[catalog]` and `extra` appended.
fn catalog_config(
    dir: &TestDir,
    upstream: &Upstream,
    catalog_keys: &str,
    extra: &str,
) -> std::path::PathBuf {
    let section =
        catalog_section(dir).replacen("[catalog]\n", &format!("[catalog]\n{catalog_keys}\n"), 1);
    dir.config(&upstream.url, &format!("{section}\n{extra}"))
}

async fn catalog_gateway(upstream: &Upstream, catalog_keys: &str, extra: &str) -> InProcess {
    let dir = TestDir::new();
    let path = catalog_config(&dir, upstream, catalog_keys, extra);
    start_gateway_from(dir, &path).await
}

/// Every record in an audit file; every line must be whole JSON.
fn read_audit(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn or bad record ({e}): {l}"))
        })
        .collect()
}

fn records_of<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["client_request_id"] == id)
        .collect()
}

/// `(pointer, keyword)` of every violation a 422 `invalid_body` lists.
fn violations(body: &[u8]) -> Vec<(String, String)> {
    json(body)["metadata"]["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no metadata.errors: {}", String::from_utf8_lossy(body)))
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["keyword"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `body` with the values at `pointers` replaced by `"[REDACTED]"`: what
/// the audit record must hold, neither more nor less redacted.
fn redacted(body: &Value, pointers: &[&str]) -> Value {
    let mut out = body.clone();
    for pointer in pointers {
        *out.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("the test body has no {pointer}")) = json!("[REDACTED]");
    }
    out
}

/// A token for `sub` in `team`.
fn team_token(sub: &str, team: &str) -> String {
    sign(
        "rsa-a",
        jsonwebtoken::Algorithm::RS256,
        &claims(sub, &[team]),
    )
}

/// A valid PostgreSQL connection configuration.
fn postgres_configuration() -> Value {
    json!({
        "hostname": "db.acme.internal",
        "port": 5432,
        "database": "analytics",
        "username": "reader",
        "password": "not-a-canary",
    })
}

/// One request carrying secrets, and what its audit records must hold.
struct SecretCase {
    id: &'static str,
    method: Method,
    /// Path and query.
    target: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
    /// Pointers into the body whose values the record must redact.
    redact: Vec<&'static str>,
    /// The record's `query`, when the target has one.
    query: Option<&'static str>,
}

/// A distinct canary per secret: none is a substring of another (they all
/// start with `CANARY_` and end with `_q7`), and all are URL-safe, so a
/// query carries them unencoded.
fn canary(label: &str) -> String {
    format!("CANARY_{label}_q7")
}

/// One gateway binary at `RUST_LOG=debug`: every secret class is planted
/// with its own canary, each request is sent valid (forwarded) and once made
/// invalid (refused: 422, or 400 for a body where none is allowed), and then
/// no canary may appear in the audit file, the gateway's stdout and stderr,
/// the spans it exports over OTLP, or any response; each must have reached
/// the upstream (so the test really sent it). The records hold
/// `"[REDACTED]"` exactly where the secrets were and everything else in
/// clear.
///
/// Here the canary inside an array item relies on the name net:
/// `fields[1].api_token` of model_sync.create (its items allow extra keys);
/// `api_connection_auth_values_are_redacted` has array items the schema
/// itself marks (`auth.query[].value` of the `api` connection type). The canary behind a
/// `$ref` is the proxy call's `request`, and nested objects are covered by
/// the `api` connection type's `auth.basic.password` and
/// `auth.oauth.client_secret` inside `configuration`.
#[tokio::test]
async fn every_secret_class_is_redacted_in_audit_logs_and_errors() {
    let upstream = Upstream::spawn().await;
    // An OTLP/HTTP collector keeping the raw export requests: protobuf
    // carries strings as their UTF-8 bytes, so a canary in any span
    // attribute would show up as is.
    let exported: Arc<Mutex<Vec<u8>>> = Arc::default();
    let collector = spawn_upstream({
        let exported = exported.clone();
        move |req: Request<Incoming>| {
            let exported = exported.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                exported.lock().unwrap().extend_from_slice(&body);
                Response::new(upstream_body(""))
            }
        }
    })
    .await;
    let dir = TestDir::new();
    let audit_path = dir.path("audit.jsonl");
    let path = catalog_config(
        &dir,
        &upstream,
        "",
        &format!("[telemetry]\notlp_endpoint = \"http://{collector}\"\nsample_ratio = 1.0\n"),
    );
    let mut gw = Binary::serve(&path, &[("RUST_LOG", "debug")]).await;

    let planted = RefCell::new(Vec::<String>::new());
    let c = |label: &str| {
        let value = canary(label);
        planted.borrow_mut().push(value.clone());
        value
    };
    let organization = |secret: String| {
        json!({
            "name": "Acme",
            "client_id": "acme-client",
            "issuer": "https://idp.acme.test",
            "sso_domain": "acme.test",
            "client_secret": secret,
        })
    };
    let sync = |passphrase: String, item_token: String, target_configuration: Value| {
        json!({
            "name": "contacts to crm",
            "mode": "updateOrCreate",
            "organization_id": ORG_A,
            "encryption_passphrase": passphrase,
            "schedule": {"frequency": "manual"},
            "fields": [
                {"target": "email", "source": {"field": "email", "model_id": ID}},
                {"target": "phone", "api_token": item_token},
            ],
            "target": {"connection_id": ID, "object": "Contact", "configuration": target_configuration},
        })
    };
    let cases = vec![
        SecretCase {
            id: "org-create",
            method: Method::POST,
            target: "/api/organizations".into(),
            headers: vec![],
            body: Some(organization(c("ORG_CREATE_CLIENT_SECRET"))),
            redact: vec!["/client_secret"],
            query: None,
        },
        SecretCase {
            id: "org-update",
            method: Method::PUT,
            target: format!("/api/organizations/{ORG_A}"),
            headers: vec![],
            body: Some(organization(c("ORG_UPDATE_CLIENT_SECRET"))),
            redact: vec!["/client_secret"],
            query: None,
        },
        // Sensitive fields of the postgresql type; `client_key` is on no
        // name list, so only the type's schema can redact it.
        SecretCase {
            id: "connection-postgres",
            method: Method::POST,
            target: "/api/connections".into(),
            headers: vec![],
            body: Some(json!({
                "name": "warehouse",
                "type": "postgresql",
                "organization_id": ORG_A,
                "configuration": {
                    "hostname": "db.acme.internal",
                    "port": 5432,
                    "database": "analytics",
                    "username": "reader",
                    "password": c("PG_PASSWORD"),
                    "ssh": true,
                    "ssh_host": "bastion.acme.internal",
                    "ssh_user": "tunnel",
                    "ssh_private_key": c("PG_SSH_PRIVATE_KEY"),
                    "client_certs": true,
                    "client_key": c("PG_CLIENT_KEY"),
                },
            })),
            redact: vec![
                "/configuration/password",
                "/configuration/ssh_private_key",
                "/configuration/client_key",
            ],
            query: None,
        },
        // Nested objects inside a configuration (the `api` type), through
        // connections.test_connection.
        SecretCase {
            id: "connection-api-nested",
            method: Method::POST,
            target: "/api/connections/test".into(),
            headers: vec![],
            body: Some(json!({
                "type": "api",
                "configuration": {
                    "url": "https://api.acme.test",
                    "healthcheck": "https://api.acme.test/healthz",
                    "auth": {
                        "basic": {"username": "svc", "password": c("API_BASIC_PASSWORD")},
                        "oauth": {
                            "client_id": "acme-oauth",
                            "client_secret": c("API_OAUTH_CLIENT_SECRET"),
                            "token_endpoint": "https://api.acme.test/token",
                        },
                    },
                },
            })),
            redact: vec![
                "/configuration/auth/basic/password",
                "/configuration/auth/oauth/client_secret",
            ],
            query: None,
        },
        SecretCase {
            id: "webhook-create",
            method: Method::POST,
            target: "/api/webhooks".into(),
            headers: vec![],
            body: Some(json!({
                "endpoint": "https://hooks.acme.test/polytomic",
                "organization_id": ORG_A,
                "secret": c("WEBHOOK_CREATE_SECRET"),
            })),
            redact: vec!["/secret"],
            query: None,
        },
        SecretCase {
            id: "webhook-update",
            method: Method::PUT,
            target: format!("/api/webhooks/{ID}"),
            headers: vec![],
            body: Some(json!({
                "endpoint": "https://hooks.acme.test/v2",
                "secret": c("WEBHOOK_UPDATE_SECRET"),
            })),
            redact: vec!["/secret"],
            query: None,
        },
        // The encryption passphrase, a name-net key in an array item, and
        // the name net's keys deep in a free-form object.
        SecretCase {
            id: "sync-create",
            method: Method::POST,
            target: "/api/syncs".into(),
            headers: vec![],
            body: Some(sync(
                c("SYNC_CREATE_PASSPHRASE"),
                c("ARRAY_ITEM_API_TOKEN"),
                json!({
                    "region": "eu",
                    "refresh_token": c("NET_BODY_REFRESH_TOKEN"),
                    "id_token": c("NET_BODY_ID_TOKEN"),
                    "apikey": c("NET_BODY_APIKEY"),
                    "aws_secret_access_key": c("NET_BODY_AWS_SECRET_ACCESS_KEY"),
                }),
            )),
            redact: vec![
                "/encryption_passphrase",
                "/fields/1/api_token",
                "/target/configuration/refresh_token",
                "/target/configuration/id_token",
                "/target/configuration/apikey",
                "/target/configuration/aws_secret_access_key",
            ],
            query: None,
        },
        SecretCase {
            id: "sync-update",
            method: Method::PUT,
            target: format!("/api/syncs/{ID}"),
            headers: vec![],
            body: Some(sync(
                c("SYNC_UPDATE_PASSPHRASE"),
                c("ARRAY_ITEM_API_TOKEN_UPDATE"),
                json!({"region": "us"}),
            )),
            redact: vec!["/encryption_passphrase", "/fields/1/api_token"],
            query: None,
        },
        // The proxied call: `request` is a `$ref` in the schema.
        SecretCase {
            id: "proxy",
            method: Method::POST,
            target: format!("/api/connections/{ID}/proxy"),
            headers: vec![],
            body: Some(json!({
                "async": false,
                "request": {
                    "method": "POST",
                    "path": "/v1/contacts/search",
                    "api": "rest",
                    "headers": {"X-Vendor-Auth": c("PROXY_HEADERS")},
                    "body": {"filter": c("PROXY_BODY")},
                    "query": {"cursor": c("PROXY_QUERY")},
                    "rawQuery": format!("page=2&sig={}", c("PROXY_RAW_QUERY")),
                    "access_token": c("NET_BODY_ACCESS_TOKEN"),
                },
            })),
            redact: vec![
                "/request/headers",
                "/request/body",
                "/request/query",
                "/request/rawQuery",
                "/request/access_token",
            ],
            query: None,
        },
        // A partial configuration, under a key no name list has.
        SecretCase {
            id: "parameter-values",
            method: Method::POST,
            target: "/api/connection_types/postgresql/parameter_values".into(),
            headers: vec![],
            body: Some(json!({
                "field": "database",
                "connection_id": ID,
                "parameters": {"hostname": "db.acme.internal", "lookup_hint": c("PARAMETER_VALUES_CONFIG")},
            })),
            redact: vec!["/parameters"],
            query: None,
        },
        // The SQL in the query, and a Harbor session header.
        SecretCase {
            id: "run-query",
            method: Method::POST,
            target: format!(
                "/api/connections/{ID}/query?query=SELECT+{}+FROM+users&limit=5",
                c("RUN_QUERY_SQL")
            ),
            headers: vec![(
                "x-polytomic-harbor-session",
                c("RUN_QUERY_HARBOR_SESSION"),
            )],
            body: Some(json!({})),
            redact: vec![],
            query: Some("query=%5BREDACTED%5D&limit=5"),
        },
        // The SQL a Harbor runs, in its body.
        SecretCase {
            id: "harbor-run-query",
            method: Method::POST,
            target: format!("/api/harbors/{ID}/query"),
            headers: vec![],
            body: Some(json!({"query": format!("SELECT {} FROM accounts", c("HARBOR_SQL"))})),
            redact: vec!["/query"],
            query: None,
        },
        SecretCase {
            id: "harbor-contexts",
            method: Method::GET,
            target: format!("/api/harbors/{ID}/contexts"),
            headers: vec![("x-polytomic-harbor-session", c("HARBOR_SESSION"))],
            body: None,
            redact: vec![],
            query: None,
        },
        SecretCase {
            id: "harbor-register",
            method: Method::POST,
            target: "/api/harbor/sessions".into(),
            headers: vec![
                ("x-polytomic-mcp-key-id", c("MCP_KEY_ID")),
                ("x-polytomic-mcp-timestamp", c("MCP_TIMESTAMP")),
                ("x-polytomic-mcp-nonce", c("MCP_NONCE")),
                ("x-polytomic-mcp-signature", c("MCP_SIGNATURE")),
            ],
            body: Some(json!({"client_name": "claude-code", "client_version": "2.1"})),
            redact: vec![],
            query: None,
        },
        // The name net in a query.
        SecretCase {
            id: "net-query",
            method: Method::GET,
            target: format!(
                "/api/connections?access_token={}&refresh_token={}&id_token={}&apikey={}&api_token={}&aws_secret_access_key={}&limit=10",
                c("NET_QUERY_ACCESS_TOKEN"),
                c("NET_QUERY_REFRESH_TOKEN"),
                c("NET_QUERY_ID_TOKEN"),
                c("NET_QUERY_APIKEY"),
                c("NET_QUERY_API_TOKEN"),
                c("NET_QUERY_AWS_SECRET_ACCESS_KEY"),
            ),
            headers: vec![],
            body: None,
            redact: vec![],
            query: Some(
                "access_token=%5BREDACTED%5D&refresh_token=%5BREDACTED%5D&id_token=%5BREDACTED%5D&apikey=%5BREDACTED%5D&api_token=%5BREDACTED%5D&aws_secret_access_key=%5BREDACTED%5D&limit=10",
            ),
        },
    ];
    let forwarded = planted.borrow().clone();

    let http = client();
    let mut responses = String::new();
    let mut keep = |parts: &http::response::Parts, body: &[u8]| {
        responses.push_str(&format!(
            "{:?}\n{}\n",
            parts.headers,
            String::from_utf8_lossy(body)
        ));
    };
    for case in &cases {
        // Valid: forwarded.
        let body = case.body.as_ref().map(Value::to_string);
        let mut req = request(
            case.method.clone(),
            &gw.url(&case.target),
            case.id,
            token(),
            body.as_deref(),
        );
        for (name, value) in &case.headers {
            req.headers_mut().insert(*name, value.parse().unwrap());
        }
        let before = upstream.count();
        let (parts, response) = send(&http, req).await;
        assert_eq!(
            parts.status,
            200,
            "{}: {}",
            case.id,
            String::from_utf8_lossy(&response)
        );
        assert_eq!(
            upstream.count(),
            before + 1,
            "{} was forwarded once",
            case.id
        );
        keep(&parts, &response);

        // Invalid: an unknown top-level field (whose value is a canary too),
        // or a body where the operation takes none.
        let refused = canary(&format!("REFUSED_{}", case.id.replace('-', "_")));
        let invalid = match &case.body {
            Some(body) => {
                let mut body = body.clone();
                body["unexpected_field"] = json!(refused);
                body.to_string()
            }
            None => json!({"unexpected_field": refused}).to_string(),
        };
        let invalid_id = format!("{}-invalid", case.id);
        let mut req = request(
            case.method.clone(),
            &gw.url(&case.target),
            &invalid_id,
            token(),
            Some(&invalid),
        );
        for (name, value) in &case.headers {
            req.headers_mut().insert(*name, value.parse().unwrap());
        }
        let (parts, response) = send(&http, req).await;
        if case.body.is_some() {
            assert_gateway_error(&parts, &response, 422, "invalid_body");
            assert_eq!(
                violations(&response),
                [(
                    "/unexpected_field".to_owned(),
                    "additionalProperties".to_owned()
                )],
                "{}",
                case.id
            );
        } else {
            assert_gateway_error(&parts, &response, 400, "body_not_allowed");
        }
        assert_eq!(
            upstream.count(),
            before + 1,
            "{invalid_id} was not forwarded"
        );
        keep(&parts, &response);
    }

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
    // The gateway exports its spans before it exits; they are really there.
    let traces = String::from_utf8_lossy(&exported.lock().unwrap()).into_owned();
    assert!(
        traces.contains("url.path") && traces.contains("connections.proxy.execute_proxy"),
        "no spans reached the collector"
    );

    // Every canary was really sent: the upstream has each forwarded one...
    let received: Vec<String> = upstream.requests().iter().map(Seen::text).collect();
    assert_eq!(received.len(), cases.len());
    for secret in &forwarded {
        assert!(
            received.iter().any(|r| r.contains(secret.as_str())),
            "the upstream never received {secret}"
        );
    }
    // ...and none of the refused bodies' canaries.
    for case in &cases {
        let refused = canary(&format!("REFUSED_{}", case.id.replace('-', "_")));
        assert!(
            !received.iter().any(|r| r.contains(&refused)),
            "a refused body reached the upstream: {refused}"
        );
    }
    let refused: Vec<String> = cases
        .iter()
        .map(|case| canary(&format!("REFUSED_{}", case.id.replace('-', "_"))))
        .collect();
    for (name, text) in [
        ("responses", &responses),
        ("stdout and stderr", &output),
        ("audit file", &trail),
        ("exported traces", &traces),
    ] {
        for secret in forwarded.iter().chain(&refused).map(String::as_str).chain([
            PARTNER_KEY,
            ORG_KEY,
            token(),
        ]) {
            assert!(
                !text.contains(secret),
                "{name} contains a secret ({secret:.24}…):\n{text}"
            );
        }
    }

    // The records: redacted exactly where the secrets were, and nothing else.
    let records = read_audit(&audit_path);
    for case in &cases {
        let expected_body = case
            .body
            .as_ref()
            .map_or(Value::Null, |body| redacted(body, &case.redact));
        let mine = records_of(&records, case.id);
        let stages: Vec<&str> = mine.iter().filter_map(|r| r["stage"].as_str()).collect();
        let expected_stages: &[&str] = if case.method == Method::GET {
            &["response"]
        } else {
            &["request", "response"]
        };
        assert_eq!(stages, expected_stages, "{}: {mine:?}", case.id);
        for record in &mine {
            assert_eq!(record["request_body"], expected_body, "{}", case.id);
            assert_eq!(
                record["query"],
                case.query.map_or(Value::Null, |q| json!(q)),
                "{}",
                case.id
            );
            assert_eq!(record["outcome"], "allowed", "{}", case.id);
        }
        assert_eq!(mine.last().unwrap()["status"], 200, "{}", case.id);
        // The refused body is kept only as its size and digest.
        let invalid_id = format!("{}-invalid", case.id);
        let refused_records = records_of(&records, &invalid_id);
        assert_eq!(
            refused_records.len(),
            1,
            "{invalid_id}: {refused_records:?}"
        );
        let record = refused_records[0];
        assert_eq!(record["outcome"], "invalid", "{invalid_id}");
        assert_eq!(
            record["query"],
            case.query.map_or(Value::Null, |q| json!(q)),
            "{invalid_id}"
        );
        if case.body.is_some() {
            let body = record["request_body"]
                .as_object()
                .unwrap_or_else(|| panic!("{invalid_id}: no size and digest: {record}"));
            assert!(
                body.len() == 2 && body["bytes"].is_u64() && body["sha256"].is_string(),
                "{invalid_id}: {record}"
            );
        }
    }
    // Spot checks that read as the documentation does.
    let record = |id: &str| {
        records_of(&records, id)
            .into_iter()
            .find(|r| r["stage"] == "request")
            .unwrap_or_else(|| panic!("no request record for {id}"))
            .clone()
    };
    let org = record("org-create");
    assert_eq!(org["request_body"]["client_secret"], "[REDACTED]");
    assert_eq!(org["request_body"]["name"], "Acme");
    let proxy = record("proxy");
    assert_eq!(proxy["request_body"]["request"]["headers"], "[REDACTED]");
    assert_eq!(proxy["request_body"]["request"]["method"], "POST");
    assert_eq!(
        proxy["request_body"]["request"]["path"],
        "/v1/contacts/search"
    );
    let sync = record("sync-create");
    assert_eq!(sync["request_body"]["fields"][1]["api_token"], "[REDACTED]");
    assert_eq!(sync["request_body"]["fields"][1]["target"], "phone");
}

/// The `api` connection type (and `csv`, `httpenrichment`, `webhook`, which
/// share its shape) carries credentials in `auth.header.value` (an API key
/// sent as a header), `auth.query[].value` (one sent in the query string)
/// and `headers[].value`. The published schema marks none of them
/// `sensitive` and their key, `value`, is on no name list; the catalog marks
/// them (CONNECTION_TYPE_SECRETS in catalog/generate.py), so the schema
/// redacts them, array items included, and the name beside each stays.
#[tokio::test]
async fn api_connection_auth_values_are_redacted() {
    let upstream = Upstream::spawn().await;
    let gw = catalog_gateway(&upstream, "", "").await;
    let header_key = canary("API_AUTH_HEADER_VALUE");
    let query_key = canary("API_AUTH_QUERY_VALUE");
    let body = json!({
        "type": "api",
        "configuration": {
            "url": "https://api.acme.test",
            "auth": {
                "header": {"name": "X-Api-Key", "value": header_key},
                "query": [{"name": "key", "value": query_key}],
            },
        },
    });
    let (parts, response) = send(
        &client(),
        request(
            Method::POST,
            &gw.url("/api/connections/test"),
            "api-auth",
            token(),
            Some(&body.to_string()),
        ),
    )
    .await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&response));
    assert!(upstream.last().text().contains(&header_key));
    let dir = gw.shutdown().await;
    let records = read_audit(&dir.path("audit.jsonl"));
    let recorded = records_of(&records, "api-auth");
    assert_eq!(recorded.len(), 2);
    for record in recorded {
        assert_eq!(
            record["request_body"]["configuration"]["url"], "https://api.acme.test",
            "{record}"
        );
        let auth = &record["request_body"]["configuration"]["auth"];
        assert_eq!(auth["header"]["value"], "[REDACTED]", "{record}");
        assert_eq!(auth["header"]["name"], "X-Api-Key", "{record}");
        assert_eq!(auth["query"][0]["value"], "[REDACTED]", "{record}");
        assert_eq!(auth["query"][0]["name"], "key", "{record}");
        let text = record.to_string();
        for secret in [&header_key, &query_key] {
            assert!(
                !text.contains(secret.as_str()),
                "an api connection credential is recorded in clear: {text}"
            );
        }
    }
}

/// A rule scoped to organizations A and C, for each place a request names
/// an organization: allowed for A (and C) and forwarded, 403 `forbidden` for
/// B with nothing forwarded, and 403 when the request names none. A caller
/// whose team has no rule for the operation is refused before its body is
/// read.
#[tokio::test]
async fn cross_organization_attempts_are_refused_and_never_forwarded() {
    let upstream = Upstream::spawn().await;
    let rules = format!(
        r#"
[[policy.rules]]
name = "platform-a-and-c"
teams = ["platform"]
allow = ["organization.*", "users.*", "connections.create", "connections.shared_connections.*", "webhooks.create", "permissions.roles.create", "models.create", "events.list"]
organizations = ["{ORG_A}", "{}"]

[[policy.rules]]
name = "support-reads-connections"
teams = ["support"]
allow = ["connections.list"]
"#,
        ORG_C.to_uppercase()
    );
    let gw = catalog_gateway(&upstream, "", &rules).await;
    let connection = |org: Value| {
        let mut body = json!({"name": "warehouse", "type": "postgresql", "configuration": postgres_configuration()});
        if !org.is_null() {
            body["organization_id"] = org;
        }
        body
    };
    let webhook = |org: &str| json!({"endpoint": "https://hooks.acme.test/in", "secret": "s3cr3t-value", "organization_id": org});
    let role = |org: &str| json!({"name": "analyst", "organization_id": org});
    let model = |org: &str| json!({"name": "contacts", "connection_id": ID, "configuration": {"query": "select 1"}, "organization_id": org});
    let share = |child: &str| json!({"child_organization_id": child, "name": "shared warehouse"});
    let user = json!({"email": "new@acme.test"});
    let org_update = json!({"name": "Acme"});
    let upper_a = ORG_A.to_uppercase();

    let allowed: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/organizations/{ORG_A}"), None),
        // The rule's UUIDs and the request's compare without case.
        (Method::GET, format!("/api/organizations/{upper_a}"), None),
        (Method::GET, format!("/api/organizations/{ORG_C}"), None),
        (
            Method::PUT,
            format!("/api/organizations/{ORG_A}"),
            Some(org_update.clone()),
        ),
        (
            Method::GET,
            format!("/api/organizations/{ORG_A}/users"),
            None,
        ),
        (
            Method::POST,
            format!("/api/organizations/{ORG_A}/users"),
            Some(user.clone()),
        ),
        (
            Method::POST,
            format!("/api/organizations/{ORG_A}/users/{ID}/keys"),
            None,
        ),
        (
            Method::POST,
            "/api/connections".into(),
            Some(connection(json!(ORG_A))),
        ),
        (
            Method::POST,
            "/api/connections".into(),
            Some(connection(json!(upper_a))),
        ),
        (Method::POST, "/api/webhooks".into(), Some(webhook(ORG_A))),
        (
            Method::POST,
            "/api/permissions/roles".into(),
            Some(role(ORG_C)),
        ),
        (Method::POST, "/api/models".into(), Some(model(ORG_A))),
        (
            Method::POST,
            format!("/api/organizations/{ORG_A}/connections/{ID}/shared"),
            Some(share(ORG_C)),
        ),
        (
            Method::GET,
            format!("/api/events?organization_id={ORG_A}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/events?limit=5&organization_id={ORG_C}"),
            None,
        ),
    ];
    let denied: Vec<(Method, String, Option<Value>)> = vec![
        // Path {id} of organization.*.
        (Method::GET, format!("/api/organizations/{ORG_B}"), None),
        (
            Method::PUT,
            format!("/api/organizations/{ORG_B}"),
            Some(org_update.clone()),
        ),
        (
            Method::PATCH,
            format!("/api/organizations/{ORG_B}"),
            Some(org_update.clone()),
        ),
        (Method::DELETE, format!("/api/organizations/{ORG_B}"), None),
        // Path {org_id} of users.*.
        (
            Method::GET,
            format!("/api/organizations/{ORG_B}/users"),
            None,
        ),
        (
            Method::POST,
            format!("/api/organizations/{ORG_B}/users"),
            Some(user.clone()),
        ),
        (
            Method::GET,
            format!("/api/organizations/{ORG_B}/users/{ID}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/organizations/{ORG_B}/users/{ID}/keys"),
            None,
        ),
        // The body's organization_id.
        (
            Method::POST,
            "/api/connections".into(),
            Some(connection(json!(ORG_B))),
        ),
        (Method::POST, "/api/webhooks".into(), Some(webhook(ORG_B))),
        (
            Method::POST,
            "/api/permissions/roles".into(),
            Some(role(ORG_B)),
        ),
        (Method::POST, "/api/models".into(), Some(model(ORG_B))),
        // Naming no organization: a scoped rule cannot match.
        (
            Method::POST,
            "/api/connections".into(),
            Some(connection(Value::Null)),
        ),
        (
            Method::POST,
            "/api/connections".into(),
            Some(
                json!({"name": "warehouse", "type": "postgresql", "configuration": postgres_configuration(), "organization_id": null}),
            ),
        ),
        (
            Method::POST,
            "/api/webhooks".into(),
            Some(json!({"endpoint": "https://hooks.acme.test/in", "secret": "s3cr3t-value"})),
        ),
        (Method::GET, "/api/organizations".into(), None),
        // The path's {org_id} and the body's child_organization_id, each.
        (
            Method::POST,
            format!("/api/organizations/{ORG_B}/connections/{ID}/shared"),
            Some(share(ORG_A)),
        ),
        (
            Method::POST,
            format!("/api/organizations/{ORG_A}/connections/{ID}/shared"),
            Some(share(ORG_B)),
        ),
        (
            Method::GET,
            format!("/api/organizations/{ORG_B}/connections/{ID}/shared"),
            None,
        ),
        // The organization_id query parameter.
        (
            Method::GET,
            format!("/api/events?organization_id={ORG_B}"),
            None,
        ),
        (Method::GET, "/api/events".into(), None),
        (Method::GET, "/api/events?limit=5".into(), None),
        (
            Method::GET,
            format!("/api/events?organization_id={ORG_A}&organization_id={ORG_B}"),
            None,
        ),
    ];

    let http = client();
    for (i, (method, target, body)) in allowed.iter().enumerate() {
        let body = body.as_ref().map(Value::to_string);
        let (parts, response) = send(
            &http,
            request(
                method.clone(),
                &gw.url(target),
                &format!("allowed-{i}"),
                token(),
                body.as_deref(),
            ),
        )
        .await;
        assert_eq!(
            parts.status,
            200,
            "{method} {target}: {}",
            String::from_utf8_lossy(&response)
        );
        let seen = upstream.last();
        assert_eq!((&seen.method, &seen.target), (method, target));
        assert_eq!(seen.body, body.unwrap_or_default().into_bytes());
    }
    assert_eq!(upstream.count(), allowed.len());
    for (i, (method, target, body)) in denied.iter().enumerate() {
        let body = body.as_ref().map(Value::to_string);
        let (parts, response) = send(
            &http,
            request(
                method.clone(),
                &gw.url(target),
                &format!("denied-{i}"),
                token(),
                body.as_deref(),
            ),
        )
        .await;
        assert_gateway_error(&parts, &response, 403, "forbidden");
        assert!(
            !String::from_utf8_lossy(&response).contains(ORG_B),
            "{method} {target}: the refusal echoes the organization"
        );
        assert_eq!(
            upstream.count(),
            allowed.len(),
            "{method} {target} reached the upstream"
        );
    }
    for seen in upstream.requests() {
        assert!(
            !seen.text().contains(ORG_B),
            "B reached the upstream: {}",
            seen.text()
        );
    }

    // No rule for support on connections.create: refused before the body
    // is read, so a body that is not even JSON is a 403, not a 400...
    let support = team_token("sam@corp", "support");
    let not_json = r#"{"name": "warehouse", "organization_id": "#;
    let (parts, response) = send(
        &http,
        request(
            Method::POST,
            &gw.url("/api/connections"),
            "support-create",
            &support,
            Some(not_json),
        ),
    )
    .await;
    assert_gateway_error(&parts, &response, 403, "forbidden");
    // ...while platform, which a rule lets create connections in some
    // organizations, has its body read (and refused) first.
    let (parts, response) = send(
        &http,
        request(
            Method::POST,
            &gw.url("/api/connections"),
            "platform-create",
            token(),
            Some(not_json),
        ),
    )
    .await;
    assert_gateway_error(&parts, &response, 400, "invalid_json");
    // Support's own operation is forwarded.
    let (parts, _) = send(
        &http,
        request(
            Method::GET,
            &gw.url("/api/connections"),
            "support-list",
            &support,
            None,
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(upstream.count(), allowed.len() + 1);

    // The refusals are recorded as denials, naming the rule-less operation.
    let dir = gw.shutdown().await;
    let records = read_audit(&dir.path("audit.jsonl"));
    for i in 0..denied.len() {
        let mine = records_of(&records, &format!("denied-{i}"));
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0]["outcome"], "denied");
        assert_eq!(mine[0]["status"], 403);
    }
    let support_create = records_of(&records, "support-create");
    assert_eq!(support_create[0]["operation"], "connections.create");
    assert_eq!(support_create[0]["outcome"], "denied");
}

/// A connection `configuration` is checked against the schema of its
/// `type`; an unknown type is refused (and a missing one where the body
/// requires it), unless `allow_unknown_connection_types`, which forwards it
/// and redacts the whole configuration in the audit record.
#[tokio::test]
async fn connection_configurations_are_checked_against_their_type() {
    let upstream = Upstream::spawn().await;
    let gw = catalog_gateway(&upstream, "", "").await;
    let http = client();
    let post = |path: &str, id: &str, body: &Value| {
        request(
            Method::POST,
            &gw.url(path),
            id,
            token(),
            Some(&body.to_string()),
        )
    };

    let valid = json!({"name": "warehouse", "type": "postgresql", "organization_id": ORG_A, "configuration": postgres_configuration()});
    let (parts, response) = send(&http, post("/api/connections", "valid", &valid)).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&response));
    assert_eq!(upstream.last().json(), valid, "forwarded as sent");
    assert_eq!(upstream.count(), 1);

    let mut missing = valid.clone();
    missing["configuration"]
        .as_object_mut()
        .unwrap()
        .remove("password");
    missing["configuration"]["port"] = json!("5432");
    let (parts, response) = send(&http, post("/api/connections", "missing", &missing)).await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    let found = violations(&response);
    for expected in [
        ("/configuration/password", "required"),
        ("/configuration/port", "type"),
    ] {
        assert!(
            found.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {found:?}"
        );
    }
    assert_eq!(found.len(), 2, "{found:?}");

    // The same check on the other operations that carry a configuration.
    let test_body = json!({"type": "postgresql", "configuration": missing["configuration"]});
    let (parts, response) = send(
        &http,
        post("/api/connections/test", "test-missing", &test_body),
    )
    .await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert!(violations(&response).contains(&("/configuration/password".into(), "required".into())));
    let (parts, response) = send(
        &http,
        request(
            Method::PUT,
            &gw.url(&format!("/api/connections/{ID}")),
            "update-missing",
            token(),
            Some(&missing.to_string()),
        ),
    )
    .await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert!(violations(&response).contains(&("/configuration/password".into(), "required".into())));

    let unknown_secret = canary("UNKNOWN_TYPE_SECRET");
    let unknown = json!({"name": "mystery", "type": "no_such_database", "organization_id": ORG_A, "configuration": {"dsn": unknown_secret, "region": "eu"}});
    let (parts, response) = send(&http, post("/api/connections", "unknown", &unknown)).await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert_eq!(
        violations(&response),
        [("/type".to_owned(), "connectionType".to_owned())]
    );
    let put = |id: &str, body: &Value| {
        request(
            Method::PUT,
            &gw.url(&format!("/api/connections/{ID}")),
            id,
            token(),
            Some(&body.to_string()),
        )
    };
    let (parts, response) = send(&http, put("update-unknown", &unknown)).await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert_eq!(
        violations(&response),
        [("/type".to_owned(), "connectionType".to_owned())]
    );
    // No type: connections.create requires one...
    let mut untyped = unknown.clone();
    untyped.as_object_mut().unwrap().remove("type");
    let (parts, response) = send(&http, post("/api/connections", "untyped", &untyped)).await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert_eq!(
        violations(&response),
        [("/type".to_owned(), "required".to_owned())]
    );
    assert_eq!(
        upstream.count(),
        1,
        "no refused configuration was forwarded"
    );
    // ...connections.update may leave it out (the connection keeps its
    // own): nothing to check the configuration against, so it is forwarded
    // and redacted whole in the audit record.
    let (parts, response) = send(&http, put("update-untyped", &untyped)).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&response));
    assert_eq!(upstream.last().json(), untyped);
    let dir = gw.shutdown().await;
    let trail = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    assert!(!trail.contains(&unknown_secret), "{trail}");
    let records = read_audit(&dir.path("audit.jsonl"));
    let mine = records_of(&records, "update-untyped");
    assert_eq!(mine.len(), 2, "{mine:?}");
    for record in mine {
        assert_eq!(
            record["request_body"],
            redacted(&untyped, &["/configuration"]),
            "{record}"
        );
    }
    let valid_records = records_of(&records, "valid");
    assert_eq!(
        valid_records[0]["request_body"],
        redacted(&valid, &["/configuration/password"])
    );

    // allow_unknown_connection_types: forwarded unvalidated, redacted whole.
    let gw = catalog_gateway(&upstream, "allow_unknown_connection_types = true", "").await;
    let (parts, response) = send(
        &http,
        request(
            Method::POST,
            &gw.url("/api/connections"),
            "unknown-allowed",
            token(),
            Some(&unknown.to_string()),
        ),
    )
    .await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&response));
    assert_eq!(upstream.last().json(), unknown);
    // A known type is still checked.
    let (parts, response) = send(
        &http,
        request(
            Method::POST,
            &gw.url("/api/connections"),
            "missing-allowed",
            token(),
            Some(&missing.to_string()),
        ),
    )
    .await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert_eq!(upstream.count(), 3);
    let dir = gw.shutdown().await;
    let trail = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    assert!(!trail.contains(&unknown_secret), "{trail}");
    let records = read_audit(&dir.path("audit.jsonl"));
    let mine = records_of(&records, "unknown-allowed");
    assert_eq!(mine.len(), 2, "{mine:?}");
    for record in mine {
        assert_eq!(
            record["request_body"],
            redacted(&unknown, &["/configuration"]),
            "{record}"
        );
    }
}

/// Catalog bodies are strict: an unknown top-level field and a value
/// outside an enum are 422 (and not forwarded), a body on an operation that
/// takes none is 400, and so is a GET or DELETE with a body on a catalog path.
#[tokio::test]
async fn catalog_bodies_are_strict() {
    let upstream = Upstream::spawn().await;
    let gw = catalog_gateway(&upstream, "", "").await;
    let http = client();
    let send_body = |method: Method, path: &str, body: Option<&str>| {
        request(method, &gw.url(path), "strict", token(), body)
    };

    let (parts, response) = send(
        &http,
        send_body(
            Method::POST,
            "/api/organizations",
            Some(r#"{"name":"Acme","nickname":"acme"}"#),
        ),
    )
    .await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert_eq!(
        violations(&response),
        [("/nickname".to_owned(), "additionalProperties".to_owned())]
    );
    let (parts, _) = send(
        &http,
        send_body(
            Method::POST,
            "/api/organizations",
            Some(r#"{"name":"Acme"}"#),
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(upstream.count(), 1);

    // The SDK types `mode` with a catch-all string; the API takes the enum.
    let sync = |mode: &str| {
        json!({
            "name": "contacts",
            "mode": mode,
            "schedule": {"frequency": "manual"},
            "fields": [{"target": "email", "source": {"field": "email", "model_id": ID}}],
            "target": {"connection_id": ID, "object": "Contact"},
        })
        .to_string()
    };
    let (parts, response) = send(
        &http,
        send_body(Method::POST, "/api/syncs", Some(&sync("sideways"))),
    )
    .await;
    assert_gateway_error(&parts, &response, 422, "invalid_body");
    assert_eq!(
        violations(&response),
        [("/mode".to_owned(), "enum".to_owned())]
    );
    let (parts, response) = send(
        &http,
        send_body(Method::POST, "/api/syncs", Some(&sync("updateOrCreate"))),
    )
    .await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&response));
    assert_eq!(upstream.count(), 2);

    // webhooks.disable takes no body: any body is refused, none is forwarded.
    let disable = format!("/api/webhooks/{ID}/disable");
    let (parts, response) = send(&http, send_body(Method::POST, &disable, Some("{}"))).await;
    assert_gateway_error(&parts, &response, 400, "body_not_allowed");
    let (parts, _) = send(&http, send_body(Method::POST, &disable, None)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(upstream.count(), 3);
    assert_eq!(upstream.last().target, disable);
    assert!(upstream.last().body.is_empty());

    // A GET or DELETE with a body on a catalog path.
    for (method, path) in [
        (Method::GET, "/api/connections".to_owned()),
        (Method::GET, format!("/api/organizations/{ORG_A}")),
        (Method::DELETE, format!("/api/webhooks/{ID}")),
    ] {
        let (parts, response) =
            send(&http, send_body(method.clone(), &path, Some(r#"{"q":1}"#))).await;
        assert_gateway_error(&parts, &response, 400, "body_not_allowed");
        let (parts, _) = send(&http, send_body(method.clone(), &path, None)).await;
        assert_eq!(parts.status, 200, "{method} {path} without a body");
    }
    assert_eq!(upstream.count(), 6);
    for seen in upstream.requests() {
        assert!(!String::from_utf8_lossy(&seen.body).contains("nickname"));
        assert!(!String::from_utf8_lossy(&seen.body).contains("sideways"));
    }
}

/// The SDK's paths route to their operations and are forwarded byte for
/// byte, with the operation's credential and the catalog's API version;
/// the path checks refuse what no template takes.
#[tokio::test]
async fn the_real_paths_route_as_the_sdk_sends_them() {
    let upstream = Upstream::spawn().await;
    let gw = catalog_gateway(&upstream, "", "").await;
    let http = client();
    let partner = format!("Bearer {PARTNER_KEY}");
    let organization = format!("Bearer {ORG_KEY}");
    let (partner, organization) = (partner.as_str(), organization.as_str());
    let connection =
        json!({"type": "postgresql", "configuration": postgres_configuration()}).to_string();
    let connect = json!({"name": "Acme", "redirect_url": "https://app.acme.test/done", "organization_id": ORG_A}).to_string();
    let user = json!({"email": "new@acme.test"}).to_string();
    // (method, path, body, operation, credential it must be sent with)
    let forwarded: Vec<(Method, String, Option<String>, &str, &str)> = vec![
        (
            Method::GET,
            "/api/syncs/schedules".into(),
            None,
            "model_sync.get_schedule_options",
            organization,
        ),
        (
            Method::GET,
            format!("/api/syncs/{ID}"),
            None,
            "model_sync.get",
            organization,
        ),
        (
            Method::POST,
            "/api/connections/test".into(),
            Some(connection),
            "connections.test_connection",
            organization,
        ),
        (
            Method::GET,
            "/api/connections/connect/session".into(),
            None,
            "connections.get_connect_session",
            organization,
        ),
        (
            Method::POST,
            "/api/connections/connect/".into(),
            Some(connect),
            "connections.connect",
            organization,
        ),
        (
            Method::GET,
            format!("/api/organizations/{ORG_A}/users"),
            None,
            "users.list",
            partner,
        ),
        (
            Method::POST,
            format!("/api/organizations/{ORG_A}/users"),
            Some(user),
            "users.create",
            partner,
        ),
        (
            Method::GET,
            "/api/organization/users".into(),
            None,
            "users.list_current_org_users",
            partner,
        ),
        (
            Method::GET,
            format!("/api/organizations/{ORG_A}"),
            None,
            "organization.get",
            partner,
        ),
        (
            Method::GET,
            "/api/organization".into(),
            None,
            "organization.get_current",
            partner,
        ),
        (
            Method::GET,
            format!("/api/connections/{ID}/schemas/public.users"),
            None,
            "schemas.get",
            organization,
        ),
        (
            Method::GET,
            "/api/connection_types/postgresql".into(),
            None,
            "connections.get_connection_type_schema",
            organization,
        ),
        (
            Method::GET,
            format!("/api/bulk/syncs/{ID}/executions/{ID}"),
            None,
            "bulk_sync.executions.get",
            organization,
        ),
        (
            Method::GET,
            "/api/webhooks".into(),
            None,
            "webhooks.list",
            organization,
        ),
    ];
    for (i, (method, path, body, operation, credential)) in forwarded.iter().enumerate() {
        let id = format!("path-{i}");
        let (parts, response) = send(
            &http,
            request(method.clone(), &gw.url(path), &id, token(), body.as_deref()),
        )
        .await;
        assert_eq!(
            parts.status,
            200,
            "{method} {path}: {}",
            String::from_utf8_lossy(&response)
        );
        assert_eq!(upstream.count(), i + 1);
        let seen = upstream.last();
        assert_eq!((&seen.method, &seen.target), (method, path), "{operation}");
        assert_eq!(seen.header("authorization"), *credential, "{operation}");
        assert_eq!(
            seen.header("x-polytomic-version"),
            API_VERSION,
            "{operation}"
        );
        assert_eq!(
            seen.body,
            body.clone().unwrap_or_default().into_bytes(),
            "{operation}"
        );
        assert!(
            !seen.text().contains(token()),
            "{operation}: the caller's token went upstream"
        );
    }
    let refused: Vec<(Method, String, u16, &str, Option<&str>)> = vec![
        // A trailing slash only where the template has one.
        (
            Method::POST,
            "/api/connections/test/".into(),
            400,
            "invalid_path",
            None,
        ),
        (
            Method::GET,
            format!("/api/syncs/{ID}/"),
            400,
            "invalid_path",
            None,
        ),
        (
            Method::GET,
            "/api/connections/connect/session/".into(),
            400,
            "invalid_path",
            None,
        ),
        (
            Method::POST,
            "/api/connections/connect//".into(),
            400,
            "invalid_path",
            None,
        ),
        // UUID parameters, named.
        (
            Method::GET,
            "/api/syncs/not-a-uuid".into(),
            400,
            "invalid_path",
            Some("id"),
        ),
        (
            Method::GET,
            "/api/organizations/acme/users".into(),
            400,
            "invalid_path",
            Some("org_id"),
        ),
        (
            Method::GET,
            format!("/api/organizations/{ORG_A}/users/alice"),
            400,
            "invalid_path",
            Some("id"),
        ),
        (
            Method::POST,
            format!("/api/bulk/syncs/{ID}/executions/latest/cancel"),
            400,
            "invalid_path",
            Some("exec_id"),
        ),
        (
            Method::GET,
            format!("/api/connections/{}/schemas/public.users", &ID[..35]),
            400,
            "invalid_path",
            Some("id"),
        ),
        // Routed nowhere, or not with this method.
        (Method::GET, "/api/nope".into(), 404, "no_route", None),
        (
            Method::POST,
            "/api/connections/connect".into(),
            405,
            "method_not_allowed",
            None,
        ),
    ];
    for (method, path, status, key, parameter) in &refused {
        let (parts, response) = send(
            &http,
            request(method.clone(), &gw.url(path), "refused", token(), None),
        )
        .await;
        assert_gateway_error(&parts, &response, *status, key);
        if let Some(parameter) = parameter {
            assert_eq!(
                json(&response)["metadata"]["parameter"],
                *parameter,
                "{path}"
            );
        }
    }
    assert_eq!(
        upstream.count(),
        forwarded.len(),
        "no refused path was forwarded"
    );
    // Each went as its operation: the audit records name it.
    let dir = gw.shutdown().await;
    let records = read_audit(&dir.path("audit.jsonl"));
    for (i, (.., operation, _)) in forwarded.iter().enumerate() {
        let mine = records_of(&records, &format!("path-{i}"));
        assert!(!mine.is_empty());
        for record in mine {
            assert_eq!(record["operation"], *operation);
        }
    }
}

/// The catalog file, read directly: what the CLI output is checked against.
fn catalog_operations() -> Vec<Value> {
    let path = format!(
        "{}/catalog/polytomic-{API_VERSION}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let catalog: Value = serde_json::from_str(&text).unwrap();
    catalog["operations"].as_array().unwrap().clone()
}

fn sent_with_partner_key(operation: &str) -> bool {
    operation.starts_with("organization.") || operation.starts_with("users.")
}

/// Runs the binary with `args`; returns its exit code, stdout and stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary_path())
        .args(args)
        .env_remove("POLYTOMIC_PARTNER_KEY")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A catalog config for a gateway that is never started.
fn offline_config(dir: &TestDir, extra: &str) -> String {
    dir.config("https://app.polytomic.com", extra)
        .display()
        .to_string()
}

/// `routes` lists every routed operation: a header, one line per operation
/// with its methods, path, credential, `schema` when it takes a body, and
/// its source; a `[[routes]]` entry replaces the catalog's operation.
#[test]
fn routes_lists_every_catalog_operation_and_what_replaces_one() {
    let operations = catalog_operations();
    assert_eq!(operations.len(), 198);
    let dir = TestDir::new();
    let path = offline_config(&dir, &catalog_section(&dir));
    let (code, stdout, stderr) = run(&["routes", "--config", &path]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "OPERATION",
            "METHODS",
            "PATH",
            "CREDENTIAL",
            "BODY",
            "SOURCE"
        ]
    );
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .take_while(|l| !l.ends_with("operations routed"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 198, "{stdout}");
    assert!(stdout.contains("\n198 operations routed\n"), "{stdout}");
    assert!(
        stdout.contains("catalog: 198 of 198 operations of API 2025-09-18 routed"),
        "{stdout}"
    );
    for op in &operations {
        let name = op["name"].as_str().unwrap();
        let row = rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} is not listed:\n{stdout}"));
        let methods: Vec<&str> = op["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        let expected: [&str; 6] = [
            name,
            &methods.join(","),
            op["path"].as_str().unwrap(),
            if sent_with_partner_key(name) {
                "partner"
            } else {
                "acme"
            },
            if op["body"].is_null() { "-" } else { "schema" },
            "catalog",
        ];
        assert_eq!(row, &expected, "{name}");
    }

    // organization.update replaced by a [[routes]] entry on both its methods.
    let routes = format!(
        "{}\n[[routes]]\noperation = \"organizations.update\"\nmethods = [\"PATCH\", \"PUT\"]\npath = \"/api/organizations/{{id}}\"\ncredential = \"partner\"\nschema = \"{}/schemas/organization-update.json\"\n",
        catalog_section(&dir),
        env!("CARGO_MANIFEST_DIR")
    );
    let path = offline_config(&dir, &routes);
    let (code, stdout, stderr) = run(&["routes", "--config", &path]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.ends_with("operations routed"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 198, "{stdout}");
    assert!(
        !rows.iter().any(|r| r[0] == "organization.update"),
        "{stdout}"
    );
    let replaced = rows
        .iter()
        .find(|r| r[0] == "organizations.update")
        .unwrap();
    assert_eq!(
        replaced,
        &[
            "organizations.update",
            "PATCH,PUT",
            "/api/organizations/{id}",
            "partner",
            "schema",
            "[[routes]]"
        ]
    );
    // The other operations on that path are still the catalog's.
    let get = rows.iter().find(|r| r[0] == "organization.get").unwrap();
    assert_eq!(get[5], "catalog");
    assert!(stdout.contains("1 replaced by [[routes]]"), "{stdout}");
}

/// `check` on a config whose `[[catalog.credentials]]` leave operations
/// unassigned says how many and of which resources, and passes.
#[test]
fn check_names_the_operations_no_credential_covers() {
    let operations = catalog_operations();
    let mut unrouted: std::collections::BTreeMap<&str, usize> = Default::default();
    for op in &operations {
        if !sent_with_partner_key(op["name"].as_str().unwrap()) {
            *unrouted
                .entry(op["resource"].as_str().unwrap())
                .or_default() += 1;
        }
    }
    let missing: usize = unrouted.values().sum();
    assert_eq!(missing, 179);
    let dir = TestDir::new();
    let path = offline_config(
        &dir,
        "[catalog]\n\n[[catalog.credentials]]\noperations = [\"organization.*\", \"users.*\"]\ncredential = \"partner\"\n",
    );
    let (code, stdout, stderr) = run(&["check", "--config", &path]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("not routed"))
        .unwrap_or_else(|| panic!("no line names the unrouted operations:\n{stdout}"));
    assert!(line.contains(&format!("{missing} not routed")), "{line}");
    assert!(line.contains("19 of 198"), "{line}");
    for (resource, n) in &unrouted {
        assert!(
            line.contains(&format!("{resource} ({n})")),
            "{resource}: {line}"
        );
    }
    assert!(
        !line.contains("users (") && !line.contains(" organization ("),
        "{line}"
    );
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}");
}

/// `policy explain` on a catalog config names the catalog's operation and
/// reads organizations from `--body`.
#[test]
fn policy_explain_names_catalog_operations_and_reads_the_body() {
    let dir = TestDir::new();
    let path = offline_config(&dir, &catalog_section(&dir));
    let (code, stdout, stderr) = run(&[
        "policy",
        "explain",
        "--config",
        &path,
        "--team",
        "platform",
        "--method",
        "PUT",
        "--path",
        &format!("/api/organizations/{ORG_A}"),
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("organization.update")
            && stdout.contains("from catalog")
            && stdout.contains("decision:  allow"),
        "{stdout}"
    );

    let scoped = format!(
        "{}\n[[policy.rules]]\nname = \"platform-connections-in-a\"\nteams = [\"platform\"]\nallow = [\"connections.create\"]\norganizations = [\"{ORG_A}\"]\n",
        catalog_section(&dir)
    );
    let path = offline_config(&dir, &scoped);
    let explain = |body: Option<String>| {
        let mut args = vec![
            "policy".to_owned(),
            "explain".into(),
            "--config".into(),
            path.clone(),
            "--team".into(),
            "platform".into(),
            "--method".into(),
            "POST".into(),
            "--path".into(),
            "/api/connections".into(),
        ];
        if let Some(body) = body {
            args.extend(["--body".to_owned(), body]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    };
    let (code, stdout, _) = explain(Some(format!(r#"{{"organization_id":"{ORG_A}"}}"#)));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("connections.create")
            && stdout.contains("from catalog")
            && stdout.contains("rule:      platform-connections-in-a"),
        "{stdout}"
    );
    let (code, stdout, _) = explain(Some(format!(r#"{{"organization_id":"{ORG_B}"}}"#)));
    assert_eq!(code, Some(3), "{stdout}");
    assert!(stdout.contains("decision:  deny"), "{stdout}");
    let (code, stdout, _) = explain(None);
    assert_eq!(code, Some(3), "{stdout}");
    assert!(stdout.contains("no --body given"), "{stdout}");
}

/// A `[[catalog.credentials]]` naming a credential that is not configured
/// fails `check`, `routes` and `serve` with exit 1, naming the key.
#[tokio::test]
async fn a_catalog_credential_that_is_not_configured_is_named() {
    let dir = TestDir::new();
    let path = offline_config(
        &dir,
        "[catalog]\n\n[[catalog.credentials]]\noperations = [\"*\"]\ncredential = \"nope\"\n",
    );
    for command in ["check", "routes"] {
        let (code, stdout, stderr) = run(&[command, "--config", &path]);
        assert_eq!(code, Some(1), "{command}: {stdout}{stderr}");
        assert!(
            stderr.contains("`catalog.credentials[0].credential`")
                && stderr.contains("[credentials.nope]")
                && stderr.contains(&path),
            "{command}: {stderr}"
        );
    }
    let out = within(
        "serve to refuse the config",
        tokio::process::Command::new(binary_path())
            .args(["serve", "--config", &path])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`catalog.credentials[0].credential`"));
}

/// A parameter the catalog marks secret (the SQL of `?query=`) is redacted in
/// the records of requests refused before any route matched: no token, a
/// path refused as invalid, a path no route knows.
#[tokio::test]
async fn a_secret_query_parameter_is_redacted_even_before_routing() {
    let upstream = Upstream::spawn().await;
    let gw = catalog_gateway(&upstream, "", "").await;
    let sql = canary("UNROUTED_SQL");
    let cases = [
        (
            "unrouted-401",
            format!("/api/connections/{ID}/query"),
            "",
            401,
        ),
        (
            "unrouted-400",
            "/api/connections/not-a-uuid/query".to_owned(),
            token(),
            400,
        ),
        ("unrouted-404", "/api/nothing/here".to_owned(), token(), 404),
    ];
    for (id, path, bearer_token, status) in &cases {
        let url = gw.url(&format!("{path}?query=SELECT+{sql}&limit=1"));
        let mut req = request(Method::POST, &url, id, bearer_token, Some("{}"));
        if bearer_token.is_empty() {
            req.headers_mut().remove("authorization");
        }
        let (parts, body) = send(&client(), req).await;
        assert_eq!(
            parts.status,
            *status,
            "{id}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(upstream.count(), 0);
    let dir = gw.shutdown().await;
    let trail = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    assert!(!trail.contains(&sql), "{trail}");
    let records = read_audit(&dir.path("audit.jsonl"));
    for (id, ..) in &cases {
        let mine = records_of(&records, id);
        assert_eq!(mine.len(), 1, "{id}");
        assert_eq!(mine[0]["query"], "query=%5BREDACTED%5D&limit=1", "{id}");
    }
}
