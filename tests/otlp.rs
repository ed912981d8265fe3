//! Shipping the audit trail to an OpenTelemetry Collector: a real OTLP/HTTP
//! receiver in the test decodes the protobuf. Records wait in the spool while
//! it is down, arrive once it is up (also after a gateway restart), and
//! none arrives twice within a run.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use polytomic_gateway::fake::{FakePolytomic, CURRENT_ORG_ID};
use prost::Message;
use serde_json::Value;
use tokio::sync::Notify;

/// One received log record: its JSON body and its string attributes.
type Received = (Value, HashMap<String, String>);

/// A test OTLP/HTTP logs receiver that can be taken down and brought back.
#[derive(Clone)]
struct Collector {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    /// Every log record body received, as JSON.
    records: Arc<Mutex<Vec<Received>>>,
    changed: Arc<Notify>,
}

impl Collector {
    async fn start() -> Self {
        let down = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let records = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (d, a, r, n) = (
            down.clone(),
            attempts.clone(),
            records.clone(),
            changed.clone(),
        );
        let addr = spawn_upstream(move |req: Request<hyper::body::Incoming>| {
            let (d, a, r, n) = (d.clone(), a.clone(), r.clone(), n.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                assert_eq!(req.uri().path(), "/v1/logs");
                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let status = if d.load(Ordering::SeqCst) {
                    503
                } else {
                    let export =
                        ExportLogsServiceRequest::decode(body).expect("valid OTLP protobuf");
                    let mut received = r.lock().unwrap();
                    for resource in export.resource_logs {
                        for scope in resource.scope_logs {
                            for log in scope.log_records {
                                let Some(AnyValue::StringValue(text)) =
                                    log.body.and_then(|b| b.value)
                                else {
                                    panic!("log body is not a string");
                                };
                                let attributes = log
                                    .attributes
                                    .into_iter()
                                    .filter_map(|kv| match kv.value.and_then(|v| v.value) {
                                        Some(AnyValue::StringValue(s)) => Some((kv.key, s)),
                                        _ => None,
                                    })
                                    .collect();
                                // A line that is not JSON (torn) is kept,
                                // for the test to find, as {"torn": text}.
                                let record = serde_json::from_str(&text)
                                    .unwrap_or_else(|_| serde_json::json!({ "torn": text }));
                                received.push((record, attributes));
                            }
                        }
                    }
                    200
                };
                n.notify_waiters();
                http::Response::builder()
                    .status(status)
                    .body(upstream_body(""))
                    .unwrap()
            }
        })
        .await;
        Self {
            addr,
            down,
            attempts,
            records,
            changed,
        }
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let changed = self.changed.notified();
                if done(self) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
    }

    fn response_ids(&self) -> Vec<String> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r["stage"] == "response")
            .map(|(r, _)| r["client_request_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn audit_section(&self, dir: &TestDir, extra: &str) -> String {
        format!(
            "[audit]\nsinks = [\"otlp\"]\npath = {:?}\notlp_endpoint = \"http://{}\"\ndurability = \"fsync\"\n{extra}\n",
            dir.path("spool.jsonl").display().to_string(),
            self.addr
        )
    }
}

/// The shipped offset the gateway persisted beside `spool` (0 before any
/// acknowledged export), and the records the spool holds.
fn spool_state_at(spool: &std::path::Path) -> (u64, Vec<Value>) {
    let mut shipped = spool.as_os_str().to_owned();
    shipped.push(".shipped");
    let offset = std::fs::read_to_string(shipped)
        .map(|text| text.split_whitespace().nth(1).unwrap().parse().unwrap())
        .unwrap_or(0);
    let spool = std::fs::read_to_string(spool).unwrap_or_default();
    let records = spool
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (offset, records)
}

fn tagged(method: Method, url: &str, id: &str) -> Request<Full<bytes::Bytes>> {
    Request::builder()
        .method(method.clone())
        .uri(url)
        .header("authorization", bearer())
        .header("x-request-id", id)
        .header("content-type", "application/json")
        .body(Full::new(if method == Method::PUT {
            r#"{"name":"Acme"}"#.into()
        } else {
            bytes::Bytes::new()
        }))
        .unwrap()
}

fn assert_once_each(ids: &[String], expected: usize) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), expected, "distinct records");
    assert!(
        counts.values().all(|n| *n == 1),
        "a record arrived twice: {counts:?}"
    );
}

#[tokio::test]
async fn records_wait_while_the_collector_is_down_and_arrive_once() {
    let collector = Collector::start().await;
    collector.down.store(true, Ordering::SeqCst);
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{addr}"),
        &collector.audit_section(&dir, ""),
    );
    let spool = dir.path("spool.jsonl");
    let gw = start_gateway_from(dir, &path).await;
    let c = client();
    let update = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    for i in 0..30 {
        let req = if i % 3 == 0 {
            tagged(Method::PUT, &update, &format!("o-{i}"))
        } else {
            tagged(
                Method::GET,
                &gw.url("/api/organizations"),
                &format!("o-{i}"),
            )
        };
        assert_eq!(send(&c, req).await.0.status, 200);
    }
    collector
        .wait_until("an export was refused", |c| {
            c.attempts.load(Ordering::SeqCst) >= 2
        })
        .await;
    // A refused export is not acknowledged: nothing counts as shipped, and
    // all 40 records (30 responses, 10 writes' requests) wait in the spool.
    let waiting = within("all 40 records in the spool", async {
        loop {
            let (offset, waiting) = spool_state_at(&spool);
            assert_eq!(offset, 0, "a refused export moved the shipped offset");
            if waiting.len() >= 40 {
                return waiting.len();
            }
            // A poll of a file: a short pause between reads.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(waiting, 40);

    collector.down.store(false, Ordering::SeqCst);
    collector
        .wait_until("all 30 response records arrived", |c| {
            c.response_ids().len() >= 30
        })
        .await;
    assert_once_each(&collector.response_ids(), 30);
    let records = collector.records.lock().unwrap();
    assert_eq!(
        records
            .iter()
            .filter(|(r, _)| r["stage"] == "request")
            .count(),
        10
    );
    let (record, attributes) = records
        .iter()
        .find(|(r, _)| r["client_request_id"] == "o-0" && r["stage"] == "response")
        .unwrap();
    assert_eq!(attributes["operation"], "organizations.update");
    assert_eq!(attributes["outcome"], "allowed");
    assert_eq!(attributes["principal.sub"], "alice@corp");
    assert_eq!(record["status"], 200);
}

#[tokio::test]
async fn unshipped_records_survive_a_gateway_restart() {
    let collector = Collector::start().await;
    collector.down.store(true, Ordering::SeqCst);
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{addr}"),
        &collector.audit_section(&dir, ""),
    );
    let mut gw = Binary::serve(&path, &[]).await;
    let c = client();
    for i in 0..20 {
        assert_eq!(
            send(
                &c,
                tagged(
                    Method::GET,
                    &gw.url("/api/organizations"),
                    &format!("r-{i}")
                )
            )
            .await
            .0
            .status,
            200
        );
    }
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    // Nothing was acknowledged before the stop: the 20 records wait, unshipped.
    let (offset, waiting) = spool_state_at(&dir.path("spool.jsonl"));
    assert_eq!(offset, 0, "a refused export moved the shipped offset");
    assert_eq!(waiting.len(), 20);

    collector.down.store(false, Ordering::SeqCst);
    let mut gw = Binary::serve(&path, &[]).await;
    collector
        .wait_until("the first run's records arrived", |c| {
            c.response_ids().len() >= 20
        })
        .await;
    send(
        &c,
        tagged(Method::GET, &gw.url("/api/organizations"), "r-after"),
    )
    .await;
    collector
        .wait_until("the new record arrived", |c| c.response_ids().len() >= 21)
        .await;
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    let mut ids = collector.response_ids();
    assert_once_each(&ids, 21);
    ids.sort();
    assert!(ids.contains(&"r-0".to_owned()) && ids.contains(&"r-after".to_owned()));
    let offset = std::fs::read_to_string(dir.path("spool.jsonl.shipped")).unwrap();
    let spool_len = std::fs::metadata(dir.path("spool.jsonl")).unwrap().len();
    assert_eq!(
        offset
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        spool_len
    );
}

#[tokio::test]
async fn a_full_spool_refuses_writes_in_reject_mode() {
    let collector = Collector::start().await;
    collector.down.store(true, Ordering::SeqCst);
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{addr}"),
        &collector.audit_section(&dir, "spool_max_bytes = 2000"),
    );
    let gw = start_gateway_from(dir, &path).await;
    let c = client();
    let update = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    for i in 0..10 {
        send(
            &c,
            tagged(
                Method::GET,
                &gw.url("/api/organizations"),
                &format!("fill-{i}"),
            ),
        )
        .await;
    }
    // The shipper notices the spool size after each write; reads go on.
    let mut refused = None;
    for i in 0..200 {
        let (parts, body) = send(&c, tagged(Method::PUT, &update, &format!("w-{i}"))).await;
        if parts.status == 503 {
            refused = Some((parts, body));
            break;
        }
        tokio::task::yield_now().await;
    }
    let (parts, body) = refused.expect("writes are refused once the spool is over its limit");
    assert_gateway_error(&parts, &body, 503, "audit_unavailable");
    assert_eq!(
        send(
            &c,
            tagged(Method::GET, &gw.url("/api/organizations"), "read")
        )
        .await
        .0
        .status,
        200
    );
}

#[tokio::test]
async fn a_full_spool_stays_full_across_rotation() {
    let collector = Collector::start().await;
    collector.down.store(true, Ordering::SeqCst);
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{addr}"),
        &collector.audit_section(&dir, "spool_max_bytes = 2000"),
    );
    let mut gw = Binary::serve(&path, &[]).await;
    let c = client();
    let update = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    // A write waits for its request record, which is counted as it is
    // written, so writes fill the spool deterministically until one is refused.
    let mut accepted = 0;
    loop {
        let (parts, body) = send(
            &c,
            tagged(Method::PUT, &update, &format!("fill-{accepted}")),
        )
        .await;
        if parts.status == 503 {
            assert_gateway_error(&parts, &body, 503, "audit_unavailable");
            break;
        }
        assert_eq!(parts.status, 200);
        accepted += 1;
        assert!(accepted < 20, "the spool limit never applied");
    }
    let forwarded = fake.requests().len();
    assert_eq!(forwarded, accepted);
    // Rotating the file does not ship anything: the unshipped data is still
    // there, in the old file, so writes stay refused.
    std::fs::rename(dir.path("spool.jsonl"), dir.path("spool.jsonl.1")).unwrap();
    gw.signal("HUP");
    gw.wait_for_line("audit file reopened").await;
    send(
        &c,
        tagged(
            Method::GET,
            &gw.url("/api/organizations"),
            "after-rotation-read",
        ),
    )
    .await;
    let (parts, body) = send(&c, tagged(Method::PUT, &update, "after-rotation")).await;
    assert_gateway_error(&parts, &body, 503, "audit_unavailable");
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.method == Method::PUT)
            .count(),
        forwarded
    );
    gw.signal("TERM");
    assert!(gw.exit().await.success());
}

/// A sample's value from a `/metrics` scrape, by its full series name; 0
/// when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn scrape(url: &str) -> String {
    let (_, body) = send(&client(), get(url)).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// Issue 18, finding 3. After a restart, the spool's size used to count
/// only what was written since the start: the backlog left by the last run
/// was ignored, so `spool_max_bytes` and `on_failure = "reject"` let writes
/// through past the limit, and `gateway_audit_spool_bytes` under-reported.
/// Now the backlog counts from the start: the gauge shows all of it before
/// any request, a write is refused at once, and both recover once the
/// collector has taken it.
#[tokio::test]
async fn after_a_restart_the_unshipped_backlog_counts_towards_the_spool_limit() {
    let collector = Collector::start().await;
    collector.down.store(true, Ordering::SeqCst);
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{addr}"),
        &collector.audit_section(&dir, "spool_max_bytes = 2000"),
    );
    let spool = dir.path("spool.jsonl");
    let gw = start_gateway_from(dir, &path).await;
    let c = client();
    let update = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    let mut accepted = 0;
    loop {
        let (parts, body) = send(
            &c,
            tagged(Method::PUT, &update, &format!("fill-{accepted}")),
        )
        .await;
        if parts.status == 503 {
            assert_gateway_error(&parts, &body, 503, "audit_unavailable");
            break;
        }
        assert_eq!(parts.status, 200);
        accepted += 1;
        assert!(accepted < 20, "the spool limit never applied");
    }
    let dir = gw.shutdown().await;
    let (offset, _) = spool_state_at(&spool);
    assert_eq!(offset, 0, "nothing was shipped");
    let backlog = std::fs::metadata(&spool).unwrap().len();
    assert!(backlog > 2000, "{backlog}");

    let gw = start_gateway_from(dir, &path).await;
    let update = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    let gauge = sample(
        &scrape(&gw.admin_url("/metrics")).await,
        "gateway_audit_spool_bytes",
    );
    assert_eq!(gauge, backlog as f64, "the gauge shows the whole backlog");
    let (parts, body) = send(&c, tagged(Method::PUT, &update, "after-restart")).await;
    assert_gateway_error(&parts, &body, 503, "audit_unavailable");
    assert_eq!(
        fake.requests().len(),
        accepted,
        "a write past the limit was forwarded"
    );

    collector.down.store(false, Ordering::SeqCst);
    within("the backlog to be shipped", async {
        loop {
            let text = scrape(&gw.admin_url("/metrics")).await;
            if sample(&text, "gateway_audit_spool_bytes") == 0.0 {
                return;
            }
            // A poll of an endpoint: a short pause between scrapes.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (parts, _) = send(&c, tagged(Method::PUT, &update, "after-shipping")).await;
    assert_eq!(parts.status, 200);
    let _dir = gw.shutdown().await;
}

/// Issue 18, finding 2, with the `otlp` sink. When standard output (a
/// second sink) stalls, SIGTERM still ends the process after the grace, and
/// the spool keeps what reached it: whole lines, nothing marked shipped,
/// and the next start ships every record in it, once.
#[tokio::test]
async fn a_stalled_sink_at_shutdown_leaves_the_spool_for_the_next_start() {
    let collector = Collector::start().await;
    collector.down.store(true, Ordering::SeqCst);
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let stdout = StalledFifo::new(dir.path("stdout.fifo"));
    let spool = dir.path("spool.jsonl");
    let audit = format!(
        "[audit]\nsinks = [\"otlp\", \"stdout\"]\npath = {:?}\notlp_endpoint = \"http://{}\"\n\n[server]\nshutdown_grace = \"1s\"\n",
        spool.display().to_string(),
        collector.addr
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    let mut gw = Binary::serve_with_stdout(&path, &[], stdout.writer()).await;
    let c = client();
    for i in 0..10 {
        let req = tagged(
            Method::GET,
            &gw.url("/api/organizations"),
            &format!("s-{i}"),
        );
        assert_eq!(send(&c, req).await.0.status, 200);
    }
    // The spool is written first: the first batch is there, then the
    // writer blocks on standard output.
    within("the first batch in the spool", async {
        while spool_state_at(&spool).1.is_empty() {
            // A poll of a file: a short pause between reads.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    gw.signal("TERM");
    let status = gw.exit().await;
    assert_eq!(status.code(), Some(1));
    let output = gw.collect_output().await;
    let line = output
        .lines()
        .find(|l| l.contains("audit sink stalled at shutdown"))
        .unwrap_or_else(|| panic!("no line about the stalled sink:\n{output}"));
    // None of the ten got to every sink, so none counts as written.
    assert!(line.contains("\"records\":10"), "{line}");
    let (offset, spooled) = spool_state_at(&spool);
    assert_eq!(offset, 0);
    let spooled: Vec<String> = spooled
        .iter()
        .map(|r| r["client_request_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!spooled.is_empty());

    // The next start ships them, with standard output flowing again.
    collector.down.store(false, Ordering::SeqCst);
    let audit = format!(
        "[audit]\nsinks = [\"otlp\"]\npath = {:?}\notlp_endpoint = \"http://{}\"\n",
        spool.display().to_string(),
        collector.addr
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    let mut gw = Binary::serve(&path, &[]).await;
    collector
        .wait_until("the spooled records arrived", |c| {
            c.response_ids().len() >= spooled.len()
        })
        .await;
    let mut ids = collector.response_ids();
    assert_once_each(&ids, spooled.len());
    ids.sort();
    let mut expected = spooled.clone();
    expected.sort();
    assert_eq!(ids, expected);
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    drop(stdout);
}

/// Issue 18, finding 5. When a batch fails part-way (here: the file hits
/// the process's file size limit, as a full disk would), its first lines
/// are in the spool until the writer cuts them off. A shipper reading the
/// file to its current length in that moment shipped records the gateway
/// then counted as failed (the `request` records of writes it refused), and
/// resumed past the cut: later records skipped, or shipped from the middle
/// of a line. This drives hundreds of such failures while the shipper
/// follows the spool: writes whose records can never fit (each larger than
/// the limit) come between reads and small writes whose records do, so
/// failing batches often start with whole lines, and others commit. The
/// collector must get exactly the records that stayed in the spool, each
/// once and whole, and no `request` record of a refused write.
#[tokio::test]
async fn lines_of_a_failed_batch_never_reach_the_collector() {
    const LIMIT_BLOCKS: u64 = 1024; // `ulimit -f` counts 512-byte blocks: 512 KiB
    const WORKERS: usize = 8;
    const ROUNDS: usize = 40;
    let collector = Collector::start().await;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let spool = dir.path("spool.jsonl");
    let audit = format!(
        "[audit]\nsinks = [\"otlp\"]\npath = {:?}\notlp_endpoint = \"http://{}\"\ndurability = \"flush\"\n",
        spool.display().to_string(),
        collector.addr
    );
    let path = dir.config(&format!("http://{addr}"), &audit);
    // SIGXFSZ ignored (kept across exec), so a write past the limit fails
    // with EFBIG instead of killing the process.
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {LIMIT_BLOCKS}; exec \"$0\" serve --config \"$1\""
        ))
        .arg(binary_path())
        .arg(&path);
    let mut gw = Binary::start(cmd, "gateway listening").await;
    let big = serde_json::json!({ "name": "n".repeat(600_000) }).to_string();
    let update = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    let list = gw.url("/api/organizations");
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (update, list, big) = (update.clone(), list.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            // The small writes that were answered 503, and 200.
            let (mut refused, mut forwarded) = (Vec::new(), Vec::new());
            for i in 0..ROUNDS {
                let read = tagged(Method::GET, &list, &format!("g-{w}-{i}"));
                assert_eq!(send(&c, read).await.0.status, 200);
                let id = format!("s-{w}-{i}");
                let (parts, body) = send(&c, tagged(Method::PUT, &update, &id)).await;
                match parts.status.as_u16() {
                    200 => forwarded.push(id),
                    _ => {
                        assert_gateway_error(&parts, &body, 503, "audit_unavailable");
                        refused.push(id);
                    }
                }
                let write = Request::put(&update)
                    .header("authorization", bearer())
                    .header("x-request-id", format!("b-{w}-{i}"))
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from(big.clone())))
                    .unwrap();
                let (parts, body) = send(&c, write).await;
                assert_gateway_error(&parts, &body, 503, "audit_unavailable");
                refused.push(format!("b-{w}-{i}"));
            }
            (refused, forwarded)
        }));
    }
    let (mut refused, mut forwarded) = (Vec::new(), Vec::new());
    for task in tasks {
        let (r, f) = within("a load task", task).await.unwrap();
        refused.extend(r);
        forwarded.extend(f);
    }
    let puts = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::PUT)
        .count();
    assert_eq!(
        puts,
        forwarded.len(),
        "a write whose record failed was forwarded"
    );
    // What stayed in the spool is what must arrive: whole lines only.
    let (_, spooled) = spool_state_at(&spool);
    let mut expected: Vec<String> = spooled
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["stage"].as_str().unwrap(),
                r["client_request_id"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        expected.len() >= WORKERS * 4,
        "hardly any record fitted: {}",
        expected.len()
    );
    // Every forwarded write's request record is among them (`flush`).
    for id in &forwarded {
        assert!(expected.contains(&format!("request/{id}")), "{id}");
    }
    collector
        .wait_until("every spooled record arrived", |c| {
            c.records.lock().unwrap().len() >= expected.len()
        })
        .await;
    // The failures happened, and were many.
    let (_, body) = send(&client(), get(&gw.admin_url("/metrics"))).await;
    let failed = sample(
        std::str::from_utf8(&body).unwrap(),
        r#"gateway_audit_records_total{result="failed",sink="otlp"}"#,
    );
    assert!(failed >= refused.len() as f64, "{failed} failed records");
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    let output = gw.collect_output().await;
    assert!(
        output.contains("File too large"),
        "no write failed:\n{output}"
    );
    let records = collector.records.lock().unwrap();
    let torn: Vec<_> = records
        .iter()
        .filter(|(r, _)| r.get("torn").is_some())
        .map(|(r, _)| {
            r["torn"]
                .as_str()
                .unwrap()
                .chars()
                .take(80)
                .collect::<String>()
        })
        .collect();
    assert!(
        torn.is_empty(),
        "torn lines reached the collector: {torn:?}"
    );
    let mut received: Vec<String> = records
        .iter()
        .map(|(r, _)| {
            format!(
                "{}/{}",
                r["stage"].as_str().unwrap(),
                r["client_request_id"].as_str().unwrap()
            )
        })
        .collect();
    for id in &refused {
        assert!(
            !received.contains(&format!("request/{id}")),
            "the request record of refused write {id} was shipped"
        );
    }
    assert_once_each(&received, expected.len());
    received.sort();
    expected.sort();
    assert_eq!(
        received, expected,
        "what arrived is not what the spool holds"
    );
}
