//! What the audit trail costs under load, per `audit.durability`.
//!
//! ```sh
//! cargo bench --bench audit
//! ```
//!
//! Criterion's per-iteration model does not fit throughput under
//! concurrency, so this is a plain `main` (`harness = false`). For each of
//! `durability = "none"`, `"flush"` and `"fsync"` it starts, in one tokio
//! runtime, over loopback sockets:
//!
//! - the fake Polytomic API (`polytomic_gateway::fake::FakePolytomic`);
//! - the whole gateway (`config::load`, `Gateway::build`, `Gateway::serve`),
//!   with the `file` sink writing to a temp dir under `target/tmp`, so an
//!   `fdatasync` reaches the disk (not a tmpfs);
//! - a hyper-util client with a connection pool, driving one workload at a
//!   time with a fixed number of workers, each sending its next request as
//!   soon as the previous one is answered.
//!
//! The workloads:
//!
//! - `PUT /api/organizations/{id}`, a valid ~300-byte organization update
//!   (validated against `schemas/organization-update.json`), at concurrency
//!   1 and 32. A write's `request` record must be durable, per `durability`,
//!   before it is forwarded, so this is where the modes differ.
//! - `GET /api/organizations` at concurrency 32. A read gets only a
//!   `response` record, which nothing waits for.
//!
//! Every request carries the same valid RS256 token (signed with
//! `tests/fixtures/jwt/rsa-a.pem`), so after the first request the token
//! cache answers. Before the modes are measured, one unreported 3 s round
//! (`none`, `PUT` at concurrency 32) warms up the process: without it the
//! first mode measured ran up to a third slower than the same mode run
//! later. Each workload then runs 1 s of warm-up, then 5 s measured;
//! req/s counts the requests answered in those 5 s, and p50 and p99 are
//! their latencies, from sending the request to reading the whole response.
//! Every answer must be 200, and the writer must report no failed or dropped
//! record, or the bench panics.
//!
//! The client, the gateway, the fake API and the audit writer share the
//! machine's cores, so the figures are for comparing the modes with one
//! another, not a capacity estimate. Under `cargo test --benches` (no
//! `--bench` argument) each workload runs for a fraction of a second, as a
//! smoke test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use polytomic_gateway::audit::WriterStats;
use polytomic_gateway::fake::{FakePolytomic, CURRENT_ORG_ID};
use polytomic_gateway::{config, Gateway};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const PARTNER_KEY: &str = "pk_bench_audit_partner_key";
const ISSUER: &str = "https://idp.bench.invalid";
const AUDIENCE: &str = "polytomic-gateway";
/// The durability modes compared, as written in `[audit]`.
const MODES: [&str; 3] = ["none", "flush", "fsync"];

type BenchClient = Client<HttpConnector, Full<Bytes>>;

/// How long each workload runs.
#[derive(Clone, Copy)]
struct Timing {
    warm_up: Duration,
    measure: Duration,
    /// The unreported round that warms up the process.
    process_warm_up: Duration,
}

impl Timing {
    /// The full run under `cargo bench`, a short one otherwise.
    fn from_args() -> Self {
        if std::env::args().any(|a| a == "--bench") {
            Self {
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(5),
                process_warm_up: Duration::from_secs(3),
            }
        } else {
            Self {
                warm_up: Duration::from_millis(50),
                measure: Duration::from_millis(200),
                process_warm_up: Duration::from_millis(100),
            }
        }
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = repo("tests/fixtures/jwt").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A valid RS256 token for team `platform`, valid for an hour.
fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench@example.com",
        "teams": ["platform"],
        "iat": now,
        "exp": now + 3600,
    });
    let key = EncodingKey::from_rsa_pem(&fixture("rsa-a.pem")).expect("an RSA key");
    jsonwebtoken::encode(&header, &claims, &key).expect("signing works")
}

/// A valid organization update of about 300 bytes.
fn update_body() -> Bytes {
    let body = serde_json::to_vec(&json!({
        "name": "Acme Corporation (EMEA)",
        "client_id": "0oa1b2c3d4e5f6g7h8i9",
        "client_secret": "hY3kP9sQ2vX7zR4mN8bW1cJ6tF5gL0dA-Secret-Value-0123456789",
        "issuer": "https://acme-emea.okta.example.com/oauth2/default",
        "sso_domain": "emea.acme.example",
        "sso_org_id": "org_7f3c2a91b8d04e5f9a6c1d2e3f4a5b6c"
    }))
    .unwrap();
    Bytes::from(body)
}

/// Writes the partner key, the JWKS and the gateway config into `dir`;
/// returns the config's path.
fn write_config(dir: &Path, upstream: &str, durability: &str) -> PathBuf {
    std::fs::write(dir.join("partner-key"), PARTNER_KEY).unwrap();
    let jwk: serde_json::Value = serde_json::from_slice(&fixture("rsa-a.jwk.json")).unwrap();
    std::fs::write(dir.join("jwks.json"), json!({ "keys": [jwk] }).to_string()).unwrap();
    let text = format!(
        r#"
[upstream]
url = "{upstream}"

[credentials.partner]
file = {key:?}

[auth]
issuers = [{ISSUER:?}]
audiences = [{AUDIENCE:?}]
algorithms = ["RS256"]
jwks_file = {jwks:?}

[[routes]]
operation = "organizations.list"
methods = ["GET"]
path = "/api/organizations"

[[routes]]
operation = "organizations.update"
methods = ["PUT"]
path = "/api/organizations/{{id}}"
schema = {schema:?}

[[policy.rules]]
name = "platform-all"
teams = ["platform"]
allow = ["*"]

[audit]
sinks = ["file"]
path = {audit:?}
durability = "{durability}"
"#,
        key = dir.join("partner-key").display().to_string(),
        jwks = dir.join("jwks.json").display().to_string(),
        schema = repo("schemas/organization-update.json")
            .display()
            .to_string(),
        audit = dir.join("audit.jsonl").display().to_string(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One workload: what to send and how many workers send it.
struct Workload {
    method: Method,
    path: String,
    body: Bytes,
    concurrency: usize,
}

impl Workload {
    fn label(&self) -> String {
        let template = self.path.replace(CURRENT_ORG_ID, "{id}");
        format!("{} {template}", self.method)
    }

    fn request(&self, base: &str, authorization: &str) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(format!("{base}{}", self.path))
            .header("authorization", authorization)
            .header("user-agent", "audit-bench/1");
        if !self.body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        req.body(Full::new(self.body.clone())).unwrap()
    }
}

/// What one workload measured.
struct Measured {
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `workload` against the gateway at `base` for `timing`.
async fn drive(
    client: &BenchClient,
    base: &str,
    authorization: &str,
    workload: &Arc<Workload>,
    timing: Timing,
) -> Measured {
    let start = Instant::now() + timing.warm_up;
    let end = start + timing.measure;
    let mut workers = Vec::with_capacity(workload.concurrency);
    for _ in 0..workload.concurrency {
        let (client, base, authorization, workload) = (
            client.clone(),
            base.to_owned(),
            authorization.to_owned(),
            workload.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return latencies;
                }
                let response = client
                    .request(workload.request(&base, &authorization))
                    .await
                    .expect("the gateway answers");
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "{}: {}",
                    workload.label(),
                    String::from_utf8_lossy(&body)
                );
                let done = Instant::now();
                // Only requests sent after the warm-up and answered within
                // the measured window count.
                if sent >= start && done <= end {
                    latencies.push(done - sent);
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("a worker panicked"));
    }
    latencies.sort_unstable();
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    Measured {
        requests: latencies.len(),
        per_second: latencies.len() as f64 / timing.measure.as_secs_f64(),
        p50: at(50),
        p99: at(99),
    }
}

/// Starts a fake API and a gateway with `durability`, runs every workload
/// against them, shuts both down, and returns one row per workload and the
/// number of records written.
async fn bench_mode(
    durability: &str,
    workloads: &[Arc<Workload>],
    authorization: &str,
    timing: Timing,
) -> (Vec<(String, usize, Measured)>, u64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();

    // The fake API keeps every request it receives; a fresh one per mode,
    // stopped afterwards, keeps that memory bounded.
    let fake = FakePolytomic::new(PARTNER_KEY);
    let fake_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake_listener.local_addr().unwrap();
    let fake_task = tokio::spawn(fake.serve(fake_listener));

    let path = write_config(dir.path(), &format!("http://{fake_addr}"), durability);
    let loaded = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let gateway = Gateway::build(loaded, &path).unwrap_or_else(|e| panic!("{e}"));
    let audit = gateway.audit().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(gateway.serve(listener, admin, async {
        let _ = stopped.await;
    }));

    let client: BenchClient = Client::builder(TokioExecutor::new()).build_http();
    let mut rows = Vec::new();
    for workload in workloads {
        let measured = drive(&client, &base, authorization, workload, timing).await;
        rows.push((workload.label(), workload.concurrency, measured));
    }
    drop(client);

    let _ = stop.send(());
    server.await.unwrap().expect("the gateway shuts down");
    fake_task.abort();
    let written = check_stats(durability, audit.stats(), &dir.path().join("audit.jsonl"));
    (rows, written)
}

/// Checks that every record was written (none failed or dropped, one line
/// each) and returns how many.
fn check_stats(durability: &str, stats: &WriterStats, file: &Path) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let (written, failed, dropped) = (
        stats.written.load(Relaxed),
        stats.failed.load(Relaxed),
        stats.dropped.load(Relaxed),
    );
    let lines = std::fs::read(file)
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64;
    assert!(
        failed == 0 && dropped == 0 && lines == written,
        "durability {durability}: written {written}, failed {failed}, dropped {dropped}, \
         {lines} lines in the file"
    );
    written
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let timing = Timing::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let authorization = format!("Bearer {}", token());
    let update = |concurrency| {
        Arc::new(Workload {
            method: Method::PUT,
            path: format!("/api/organizations/{CURRENT_ORG_ID}"),
            body: update_body(),
            concurrency,
        })
    };
    let list = Arc::new(Workload {
        method: Method::GET,
        path: "/api/organizations".into(),
        body: Bytes::new(),
        concurrency: 32,
    });
    let workloads = [update(1), update(32), list];
    eprintln!(
        "update body: {} bytes; {} runtime worker threads; {:?} warm-up, {:?} measured per row",
        update_body().len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        timing.warm_up,
        timing.measure,
    );

    let process_warm_up = Timing {
        warm_up: Duration::ZERO,
        measure: timing.process_warm_up,
        ..timing
    };
    runtime.block_on(bench_mode(
        "none",
        &[update(32)],
        &authorization,
        process_warm_up,
    ));

    let mut table = Vec::new();
    for durability in MODES {
        let (rows, written) =
            runtime.block_on(bench_mode(durability, &workloads, &authorization, timing));
        eprintln!("durability {durability}: {written} records written, none failed or dropped");
        table.extend(rows.into_iter().map(|row| (durability, row)));
    }

    println!(
        "{:<11} {:<30} {:>11} {:>9} {:>9} {:>10} {:>10}",
        "durability", "request", "concurrency", "requests", "req/s", "p50", "p99"
    );
    for (durability, (label, concurrency, m)) in table {
        println!(
            "{:<11} {:<30} {:>11} {:>9} {:>9.0} {:>10} {:>10}",
            durability,
            label,
            concurrency,
            m.requests,
            m.per_second,
            millis(m.p50),
            millis(m.p99)
        );
    }
}
