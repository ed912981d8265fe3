//! A fake Polytomic API, in process: the `demo`'s upstream and the tests'.
//!
//! It keeps organizations in memory and serves the organization endpoints in
//! the real shapes (`{"data": ...}`; errors as `{"status","message","key",
//! "metadata"}`), never returning `client_secret`. Like the real API it
//! answers 401 unless a request carries the expected partner key and an
//! `X-Polytomic-Version` header.
//!
//! Every request is recorded ([`FakePolytomic::requests`]) so tests can check
//! exactly what reached the upstream, and can be logged on one line with the
//! credential masked, so a demo user sees the swap happen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::version::X_POLYTOMIC_VERSION;

/// One request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The request target exactly as received (path and query).
    pub target: String,
    /// The HTTP version.
    pub version: http::Version,
    /// Every header as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    organizations: BTreeMap<String, Value>,
    requests: Vec<RecordedRequest>,
}

/// The fake API; cheap to clone, all clones share state.
#[derive(Clone)]
pub struct FakePolytomic {
    expected_auth: HeaderValue,
    log: bool,
    state: Arc<Mutex<State>>,
    recorded: Arc<Notify>,
}

impl std::fmt::Debug for FakePolytomic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePolytomic").finish_non_exhaustive()
    }
}

/// The organization that `GET /api/organization` returns.
pub const CURRENT_ORG_ID: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

impl FakePolytomic {
    /// A fake API accepting only `Authorization: Bearer <partner_key>`,
    /// seeded with one organization ([`CURRENT_ORG_ID`]).
    pub fn new(partner_key: &str) -> Self {
        let expected_auth = HeaderValue::from_str(&format!("Bearer {partner_key}"))
            .expect("partner key is a valid header value");
        let fake = Self {
            expected_auth,
            log: false,
            state: Arc::default(),
            recorded: Arc::default(),
        };
        fake.insert_org(CURRENT_ORG_ID, json!({"name": "Acme Corp", "sso_domain": "acme.example", "issuer": "https://idp.acme.example"}));
        fake
    }

    /// A fake API accepting exactly this `Authorization` value.
    pub fn with_authorization(expected: HeaderValue) -> Self {
        let mut fake = Self::new("unused");
        fake.expected_auth = expected;
        fake
    }

    /// Logs one line per request to stdout, with credentials masked.
    pub fn with_logging(mut self) -> Self {
        self.log = true;
        self
    }

    fn insert_org(&self, id: &str, fields: Value) {
        let mut org = json!({"id": id, "name": "", "client_id": null, "issuer": null, "sso_domain": null, "sso_org_id": null});
        merge_public_fields(&mut org, &fields);
        self.state().organizations.insert(id.to_owned(), org);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Waits until at least `n` requests have been received, then returns them.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<RecordedRequest> {
        loop {
            let notified = self.recorded.notified();
            {
                let state = self.state();
                if state.requests.len() >= n {
                    return state.requests.clone();
                }
            }
            notified.await;
        }
    }

    /// Binds `127.0.0.1:0`, serves in the background, returns the address.
    pub async fn spawn(&self) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(self.clone().serve(listener));
        Ok(addr)
    }

    /// Serves HTTP/1.1 and h2c on `listener` forever.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let fake = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fake = fake.clone();
                    async move { Ok::<_, std::convert::Infallible>(fake.handle(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        // A request whose body never completed (an aborted upload) is not
        // processed or recorded, as a real API would not act on it.
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return error(StatusCode::BAD_REQUEST, "bad_request", "incomplete body");
        };
        let recorded = RecordedRequest {
            method: parts.method.clone(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        };
        let response = self.respond(&recorded);
        if self.log {
            println!("{}", self.log_line(&recorded, response.status()));
        }
        self.state().requests.push(recorded);
        self.recorded.notify_waiters();
        response
    }

    fn log_line(&self, req: &RecordedRequest, status: StatusCode) -> String {
        let auth = match req.headers.get(http::header::AUTHORIZATION) {
            Some(v) if *v == self.expected_auth => "partner key (correct, masked)",
            Some(_) => "WRONG credential (masked)",
            None => "none",
        };
        let version = req
            .headers
            .get(&X_POLYTOMIC_VERSION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        format!(
            "[fake polytomic] {} {} authorization={auth} x-polytomic-version={version} -> {}",
            req.method,
            req.target,
            status.as_u16()
        )
    }

    fn respond(&self, req: &RecordedRequest) -> Response<Full<Bytes>> {
        if req.headers.get(http::header::AUTHORIZATION) != Some(&self.expected_auth) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid or missing API key",
            );
        }
        if !req.headers.contains_key(&X_POLYTOMIC_VERSION) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing X-Polytomic-Version header",
            );
        }
        let path = req.target.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&req.method, segments.as_slice()) {
            (&Method::GET, ["api", "organization"]) => {
                let org = self.state().organizations.get(CURRENT_ORG_ID).cloned();
                org.map_or_else(not_found, |org| data(StatusCode::OK, org))
            }
            (&Method::GET, ["api", "organizations"]) => {
                let orgs: Vec<Value> = self.state().organizations.values().cloned().collect();
                data(StatusCode::OK, Value::Array(orgs))
            }
            (&Method::POST, ["api", "organizations"]) => match parse_named(&req.body) {
                Some(fields) => {
                    let id = uuid::Uuid::new_v4().to_string();
                    self.insert_org(&id, fields);
                    let org = self.state().organizations.get(&id).cloned();
                    data(StatusCode::OK, org.unwrap_or_default())
                }
                None => name_required(),
            },
            (method, ["api", "organizations", id]) => self.one_org(method, id, &req.body),
            _ => not_found(),
        }
    }

    fn one_org(&self, method: &Method, id: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let mut state = self.state();
        if !state.organizations.contains_key(id) {
            return not_found();
        }
        match *method {
            Method::GET => data(StatusCode::OK, state.organizations[id].clone()),
            Method::PUT | Method::PATCH => match parse_named(body) {
                Some(fields) => {
                    let org = state.organizations.get_mut(id).expect("checked above");
                    // Polytomic replaces the SSO configuration in full.
                    for key in ["client_id", "issuer", "sso_domain", "sso_org_id"] {
                        org[key] = Value::Null;
                    }
                    merge_public_fields(org, &fields);
                    data(StatusCode::OK, org.clone())
                }
                None => name_required(),
            },
            Method::DELETE => {
                state.organizations.remove(id);
                let mut response = Response::new(Full::default());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            ),
        }
    }
}

/// Copies the fields an organization returns; `client_secret` is write-only.
fn merge_public_fields(org: &mut Value, fields: &Value) {
    for key in ["name", "client_id", "issuer", "sso_domain", "sso_org_id"] {
        if let Some(value) = fields.get(key) {
            org[key] = value.clone();
        }
    }
}

/// Parses a body that must be a JSON object with a string `name`.
fn parse_named(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(|v| v.get("name").is_some_and(Value::is_string))
}

fn name_required() -> Response<Full<Bytes>> {
    error(StatusCode::BAD_REQUEST, "bad_request", "name is required")
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn data(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    json_response(status, json!({ "data": value }))
}

fn error(status: StatusCode, key: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({"status": status.as_u16(), "message": message, "key": key, "metadata": {}}),
    )
}

fn not_found() -> Response<Full<Bytes>> {
    error(StatusCode::NOT_FOUND, "not_found", "not found")
}
