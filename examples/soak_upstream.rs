//! A stand-in Polytomic API for `bench/soak.sh`, with injected faults.
//!
//! The soak test runs the gateway for minutes under mixed load and checks
//! that it neither leaks (memory, file descriptors) nor loses or duplicates
//! audit records. It needs an upstream that is cheap, keeps no state that
//! grows, and fails now and then in a way the gateway must survive. This is
//! that upstream:
//!
//! - `GET`, `PUT` and `PATCH /api/organizations/{id}` and
//!   `GET /api/organization` answer 200 with `{"data": {...}}` (a write echoes
//!   the body's `name`). Other paths get 404, other methods 405, both as
//!   Polytomic-shaped JSON errors.
//! - Every request must carry `Authorization: Bearer <partner key>`, the key
//!   read from `--partner-key-file`; anything else gets 401. The gateway
//!   injects it, so a 401 here means the credential swap failed.
//! - Every Nth request (`--fault-every N`, a deterministic counter over all
//!   requests; `0` turns faults off) is a fault: the request is read whole,
//!   then the connection is aborted without any response, which the gateway
//!   must answer with 502 `upstream_failed` (audit outcome `upstream_error`).
//!
//! At startup it prints `listening on http://ADDR` on stdout (so
//! `--listen 127.0.0.1:0` works too). On SIGTERM or SIGINT it prints one
//! line of counts (`requests=... faults=... unauthorized=...`) and exits 0,
//! so the soak can check that the gateway's `upstream_error` records match
//! the faults injected.
//!
//! ```sh
//! cargo run --release --example soak_upstream -- \
//!     --listen 127.0.0.1:9100 --fault-every 100 --partner-key-file /tmp/key
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(about = "A fake Polytomic API with injected faults, for bench/soak.sh")]
struct Args {
    /// The address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Abort the connection of every Nth request, without a response; 0: never.
    #[arg(long, default_value_t = 100)]
    fault_every: u64,
    /// A file holding the partner key that requests must carry as a bearer token.
    #[arg(long)]
    partner_key_file: PathBuf,
}

/// Counters shared by every connection.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    faults: AtomicU64,
    unauthorized: AtomicU64,
}

/// The error that makes hyper abort a connection without answering.
#[derive(Debug)]
struct InjectedFault;

impl std::fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault: connection aborted without a response")
    }
}

impl std::error::Error for InjectedFault {}

struct Upstream {
    expected_auth: HeaderValue,
    fault_every: u64,
    stats: Stats,
}

impl Upstream {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, InjectedFault> {
        let n = self.stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let (parts, body) = req.into_parts();
        // Read the body whole first, so a fault always hits a request the
        // gateway has finished sending.
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "incomplete body",
            ));
        };
        if self.fault_every > 0 && n.is_multiple_of(self.fault_every) {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
            // A service error makes hyper drop the connection unanswered.
            return Err(InjectedFault);
        }
        if parts.headers.get(header::AUTHORIZATION) != Some(&self.expected_auth) {
            self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            return Ok(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid or missing API key",
            ));
        }
        let segments: Vec<&str> = parts
            .uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .collect();
        Ok(match (&parts.method, segments.as_slice()) {
            (&Method::GET, ["api", "organization"]) => {
                data(organization("248df4b7-aa70-47b8-a036-33ac447e668d", None))
            }
            (&Method::GET, ["api", "organizations", id]) => data(organization(id, None)),
            (&Method::PUT | &Method::PATCH, ["api", "organizations", id]) => {
                let name = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
                data(organization(id, name.as_deref()))
            }
            (_, ["api", "organization"] | ["api", "organizations", _]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found", "not found"),
        })
    }

    fn summary(&self) -> String {
        format!(
            "requests={} faults={} unauthorized={}",
            self.stats.requests.load(Ordering::Relaxed),
            self.stats.faults.load(Ordering::Relaxed),
            self.stats.unauthorized.load(Ordering::Relaxed),
        )
    }
}

/// An organization in Polytomic's shape (`client_secret` is never returned).
fn organization(id: &str, name: Option<&str>) -> Value {
    json!({
        "id": id,
        "name": name.unwrap_or("Soak Org"),
        "client_id": null,
        "issuer": "https://idp.soak.example",
        "sso_domain": "soak.example",
        "sso_org_id": null,
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn data(value: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &json!({ "data": value }))
}

fn error(status: StatusCode, key: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"status": status.as_u16(), "message": message, "key": key, "metadata": {}}),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let key = std::fs::read_to_string(&args.partner_key_file).map_err(|e| {
        format!(
            "cannot read --partner-key-file {}: {e}",
            args.partner_key_file.display()
        )
    })?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{} is empty", args.partner_key_file.display()).into());
    }
    let expected_auth = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| "the partner key is not a valid header value")?;
    let upstream = Arc::new(Upstream {
        expected_auth,
        fault_every: args.fault_every,
        stats: Stats::default(),
    });

    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let upstream = upstream.clone();
                        async move { upstream.handle(req).await }
                    });
                    // An injected fault ends the connection with an error.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
    println!("{}", upstream.summary());
    Ok(())
}
