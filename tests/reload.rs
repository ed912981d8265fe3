//! Live reload: SIGHUP and file changes (a ConfigMap-style symlink swap
//! too) apply a new config atomically; a bad one is refused whole; the
//! `config` audit record, `config_version` on every record, and the token
//! cache emptied on a key change. The no-drop load case is here as well.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const ORG: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

/// Platform may do everything; support may only read organizations.
const SUPPORT_READS: &str = r#"
[[policy.rules]]
name = "platform-all"
teams = ["platform"]
allow = ["*"]

[[policy.rules]]
name = "support-read"
teams = ["support"]
allow = ["organizations.get"]
"#;

/// [`SUPPORT_READS`] with support's rule changed to allow updates, and a
/// rule added that allows them too.
fn support_writes() -> String {
    SUPPORT_READS.replace(
        r#"allow = ["organizations.get"]"#,
        r#"allow = ["organizations.get", "organizations.update"]"#,
    ) + "\n[[policy.rules]]\nname = \"support-write\"\nteams = [\"support\"]\nallow = [\"organizations.update\"]\n"
}

fn support_bearer() -> String {
    let token = sign(
        "rsa-a",
        jsonwebtoken::Algorithm::RS256,
        &claims("sam@corp", &["support"]),
    );
    format!("Bearer {token}")
}

fn put_org(base: &str, bearer: &str) -> Request<Full<Bytes>> {
    Request::put(format!("{base}/api/organizations/{ORG}"))
        .header("authorization", bearer)
        .header("content-type", "application/json")
        .body(Full::from(r#"{"name":"Acme"}"#))
        .unwrap()
}

async fn ok_upstream() -> String {
    let addr = spawn_upstream(|_req| async {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(upstream_body(r#"{"data":{}}"#))
            .unwrap()
    })
    .await;
    format!("http://{addr}")
}

/// Room left at the end of a config, so that [`write_unnoticed`] can
/// replace it with a different policy of the same length.
const ROOM: usize = 2048;

/// Rewrites `path` in place with `text` padded to its current length with
/// whitespace (which TOML and JSON ignore), and puts its modification time
/// back: the file watcher cannot tell it changed, so the reload the test
/// asks for (SIGHUP, or the reloader) is the one that applies it. (A poll
/// landing between the write and the restored time still sees it: the
/// tests allow for one more reload, by `file`, in that case.)
fn write_unnoticed(path: &Path, text: &str) {
    let before = std::fs::metadata(path).unwrap();
    let len = usize::try_from(before.len()).unwrap();
    assert!(
        text.len() < len,
        "no room for {} bytes in {len}",
        text.len()
    );
    let padded = format!("{text}{}\n", " ".repeat(len - text.len() - 1));
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut file, padded.as_bytes()).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
}

/// A config for `upstream` with `extra`, and room for [`write_unnoticed`].
fn roomy_config(dir: &TestDir, upstream: &str, extra: &str) -> PathBuf {
    let path = dir.config(upstream, extra);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n{}\n", " ".repeat(ROOM))).unwrap();
    path
}

/// The audit file's records, once the gateway wrote them.
fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A metric's value from a `/metrics` text, by its full series name.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn metrics(client: &TestClient, url: &str) -> String {
    let (_, body) = send(client, Request::get(url).body(Full::default()).unwrap()).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// `check`'s `config version:` line for `path`.
fn checked_version(path: &Path) -> String {
    let out = std::process::Command::new(binary_path())
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("config version: "))
        .unwrap_or_else(|| panic!("no version in {stdout}"))
        .to_owned()
}

/// A gateway binary serving `extra` (with room for [`write_unnoticed`]),
/// and the version `check` gave its config first.
async fn serve_checked(extra: &str) -> (TestDir, PathBuf, String, Binary) {
    let upstream = ok_upstream().await;
    let dir = TestDir::new();
    let path = roomy_config(&dir, &upstream, extra);
    let version = checked_version(&path);
    let gateway = Binary::serve(&path, &[]).await;
    (dir, path, version, gateway)
}

#[tokio::test]
async fn sighup_applies_a_new_policy_records_it_and_versions_every_record() {
    let (dir, path, first_version, mut gateway) = serve_checked(SUPPORT_READS).await;
    let client = client();
    let support = support_bearer();

    let (parts, body) = send(&client, put_org(&gateway.url(""), &support)).await;
    assert_gateway_error(&parts, &body, 403, "forbidden");

    // The same files give the same version on every start and in `check`.
    let text = std::fs::read_to_string(&path).unwrap();
    write_unnoticed(
        &path,
        text.trim_end()
            .replace(SUPPORT_READS, &support_writes())
            .as_str(),
    );
    let second_version = checked_version(&path);
    assert_ne!(first_version, second_version);
    gateway.signal("HUP");
    gateway.wait_for_line("config reloaded").await;

    let (parts, body) = send(&client, put_org(&gateway.url(""), &support)).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));

    let text = metrics(&client, &gateway.admin_url("/metrics")).await;
    let applied = metric(&text, "gateway_config_reloads_total{result=\"ok\"}");
    assert!(matches!(applied, Some(n) if n >= 1.0), "{text}");
    assert_eq!(
        metric(
            &text,
            &format!("gateway_config_info{{version=\"{second_version}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains(&first_version), "the old version is gone");
    assert!(metric(
        &text,
        "gateway_config_last_reload_success_timestamp_seconds"
    )
    .is_some_and(|t| t > 1.7e9));

    gateway.signal("TERM");
    assert!(gateway.exit().await.success());
    // The partner key is in no reload's log line or record.
    let output = gateway.collect_output().await;
    let trail = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    for text in [&output, &trail] {
        assert!(!text.contains(PARTNER_KEY), "{text}");
    }
    let records = records(&dir.path("audit.jsonl"));
    let config: Vec<_> = records.iter().filter(|r| r["stage"] == "config").collect();
    assert!(
        config.iter().any(|r| r["trigger"] == "sighup") && config.len() <= 2,
        "{records:?}"
    );
    assert!(
        config.iter().all(|r| r["result"] == "applied"),
        "{config:?}"
    );
    // The reload that changed something (the SIGHUP's, unless a poll saw
    // the write first; then the SIGHUP's found nothing to change).
    let changing: Vec<_> = config
        .iter()
        .filter(|r| r["old_version"] != r["new_version"])
        .collect();
    assert_eq!(changing.len(), 1, "{config:?}");
    let reload = changing[0];
    assert_eq!(reload["result"], "applied");
    assert_eq!(reload["old_version"], first_version.as_str());
    assert_eq!(reload["new_version"], second_version.as_str());
    assert_eq!(reload["sections_changed"], serde_json::json!(["policy"]));
    assert_eq!(
        reload["rules"],
        serde_json::json!({"added": ["support-write"], "removed": [], "changed": ["support-read"]})
    );
    assert_eq!(reload["restart_required"], serde_json::json!([]));
    assert!(reload["error"].is_null());
    // Every request record names the config that decided it: the denial
    // the first, the allowed write the second.
    let requests: Vec<_> = records.iter().filter(|r| r["stage"] != "config").collect();
    assert!(requests.len() >= 3, "{records:?}");
    for record in &requests {
        let version = record["config_version"].as_str().unwrap();
        let expected = if record["outcome"] == "denied" {
            &first_version
        } else {
            &second_version
        };
        assert_eq!(version, expected, "{record}");
    }
    assert!(requests
        .iter()
        .any(|r| r["outcome"] == "allowed" && r["rule"] == "support-read"));
}

#[tokio::test]
async fn a_rejected_reload_keeps_the_running_config_whole() {
    let (dir, path, version, mut gateway) = serve_checked(SUPPORT_READS).await;
    let client = client();

    // Valid TOML, and a policy that would let support write, but one rule
    // names no operation: nothing of it may apply.
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.trim_end().replace(
        SUPPORT_READS,
        &format!("{}\n[[policy.rules]]\nname = \"typo\"\nteams = [\"support\"]\nallow = [\"organisations.get\"]\n", support_writes()),
    );
    write_unnoticed(&path, &broken);
    gateway.signal("HUP");
    let line = gateway.wait_for_line("config reload failed").await;
    let path_text = path.display().to_string();
    assert!(line.contains(&path_text), "{line}");
    assert!(line.contains("policy.rules[3].allow"), "{line}");

    let support = support_bearer();
    let (parts, body) = send(&client, put_org(&gateway.url(""), &support)).await;
    assert_gateway_error(&parts, &body, 403, "forbidden");
    let (parts, _) = send(&client, put_org(&gateway.url(""), &bearer())).await;
    assert_eq!(parts.status, 200);
    let (parts, _) = send(
        &client,
        Request::get(gateway.admin_url("/readyz"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    let text = metrics(&client, &gateway.admin_url("/metrics")).await;
    let failed = metric(&text, "gateway_config_reloads_total{result=\"failed\"}");
    assert!(matches!(failed, Some(n) if n >= 1.0), "{text}");
    assert_eq!(
        metric(&text, "gateway_config_reloads_total{result=\"ok\"}"),
        None,
        "nothing was applied"
    );
    assert_eq!(
        metric(
            &text,
            &format!("gateway_config_info{{version=\"{version}\"}}")
        ),
        Some(1.0)
    );

    gateway.signal("TERM");
    assert!(gateway.exit().await.success());
    let records = records(&dir.path("audit.jsonl"));
    let reloads: Vec<_> = records.iter().filter(|r| r["stage"] == "config").collect();
    assert!(
        reloads.iter().any(|r| r["trigger"] == "sighup"),
        "{reloads:?}"
    );
    assert!(
        reloads.iter().all(|r| r["result"] == "failed"),
        "{reloads:?}"
    );
    let failed = reloads[0];
    assert_eq!(failed["old_version"], version.as_str());
    assert!(failed["new_version"].is_null());
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("`policy.rules[3].allow`"), "{error}");
    assert!(error.contains(&path_text), "{error}");
    for record in records.iter().filter(|r| r["stage"] != "config") {
        assert_eq!(record["config_version"], version.as_str(), "{record}");
    }
}

/// Lays out `dir` as Kubernetes mounts a ConfigMap: the file is a symlink
/// through `..data`, itself a symlink to a timestamped directory.
fn configmap_publish(dir: &Path, generation: &str, text: &str) -> PathBuf {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("gateway.toml"), text).unwrap();
    // The swap: a new `..data` link renamed over the old one, atomically.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let file = dir.join("gateway.toml");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/gateway.toml", &file).unwrap();
    }
    file
}

#[tokio::test]
async fn a_configmap_symlink_swap_and_a_write_in_place_are_applied_within_five_seconds() {
    let upstream = ok_upstream().await;
    let dir = TestDir::new();
    let written = dir.config(&upstream, SUPPORT_READS);
    let text = std::fs::read_to_string(&written).unwrap();
    let mount = dir.path("configmap");
    std::fs::create_dir(&mount).unwrap();
    let path = configmap_publish(&mount, "2026_12_01_a", &text);
    let mut gateway = Binary::serve(&path, &[]).await;
    let client = client();
    let support = support_bearer();
    let (parts, body) = send(&client, put_org(&gateway.url(""), &support)).await;
    assert_gateway_error(&parts, &body, 403, "forbidden");

    // The file itself is never written: only the directory link changes.
    let swapped = Instant::now();
    configmap_publish(
        &mount,
        "2026_12_01_b",
        &text.replace(SUPPORT_READS, &support_writes()),
    );
    let line = gateway.wait_for_line("config reloaded").await;
    let took = swapped.elapsed();
    eprintln!("the swap was applied after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        line.contains(r#""trigger":"file""#) || line.contains("trigger=\"file\""),
        "the trigger is named: {line}"
    );
    let (parts, body) = send(&client, put_org(&gateway.url(""), &support)).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));

    // An editor's write in place (same path, same inode) is noticed too:
    // back to the first policy, whose version the start already had.
    let first_version = checked_version(&written);
    std::fs::write(mount.join("..2026_12_01_b/gateway.toml"), &text).unwrap();
    gateway
        .wait_for_line(&format!(r#""new_version":"{first_version}""#))
        .await;
    let (parts, body) = send(&client, put_org(&gateway.url(""), &support)).await;
    assert_gateway_error(&parts, &body, 403, "forbidden");
}

#[tokio::test]
async fn a_key_change_empties_the_token_cache_and_a_restart_only_change_is_named() {
    let upstream = ok_upstream().await;
    let dir = TestDir::new();
    let path = roomy_config(&dir, &upstream, "");
    let gateway = start_gateway_from(dir, &path).await;
    let client = client();
    // Verified once, then served from the token cache.
    for _ in 0..2 {
        let (parts, _) = send(&client, get(&gateway.url("/api/organizations"))).await;
        assert_eq!(parts.status, 200);
    }
    let started = gateway.reloader.reload().await.expect("serving");
    assert_eq!(started.error, None, "a reload of the same files applies");

    // The IdP rotated: rsa-a is no longer trusted. The cached verification
    // of a token it signed must not outlive the key.
    let jwks = path.with_file_name("jwks.json");
    write_unnoticed(&jwks, &common::jwks(&["ec-a"]));
    let text = std::fs::read_to_string(&path).unwrap();
    write_unnoticed(
        &path,
        text.trim_end()
            .replacen(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nmax_connections = 7",
                1,
            )
            .as_str(),
    );
    let outcome = gateway.reloader.reload().await.expect("serving");
    assert_eq!(outcome.error, None);
    assert_ne!(outcome.version, started.version, "the JWKS file is content");
    assert_eq!(outcome.restart_required, ["server.max_connections"]);
    let (parts, body) = send(&client, get(&gateway.url("/api/organizations"))).await;
    assert_gateway_error(&parts, &body, 401, "unauthenticated");
    let ec = sign(
        "ec-a",
        jsonwebtoken::Algorithm::ES256,
        &claims("alice@corp", &["platform"]),
    );
    let (parts, _) = send(
        &client,
        Request::get(gateway.url("/api/organizations"))
            .header("authorization", format!("Bearer {ec}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);

    let dir = gateway.shutdown().await;
    let records = records(&dir.path("audit.jsonl"));
    let reloads: Vec<_> = records.iter().filter(|r| r["stage"] == "config").collect();
    assert!((2..=3).contains(&reloads.len()), "{records:?}");
    assert_eq!(reloads[0]["sections_changed"], serde_json::json!([]));
    let changing: Vec<_> = reloads
        .iter()
        .filter(|r| r["old_version"] != r["new_version"])
        .collect();
    assert_eq!(changing.len(), 1, "{reloads:?}");
    assert_eq!(changing[0]["sections_changed"], serde_json::json!(["auth"]));
    for reload in &reloads[1..] {
        assert_eq!(
            reload["restart_required"],
            serde_json::json!(["server.max_connections"])
        );
    }
}

/// Counts over the load: responses that were not 200, and connections
/// that failed or closed.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
}

/// Sends GET and PUT alternately as platform on one kept-alive HTTP/1.1
/// connection until `stop`.
async fn keep_sending(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, load: Arc<Load>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let base = format!("http://{addr}");
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let req = if i.is_multiple_of(2) {
            put_org(&base, &bearer())
        } else {
            get(&format!("{base}/api/organizations/{ORG}"))
        };
        if sender.ready().await.is_err() {
            load.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match sender.send_request(req).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await;
                if status == 200 && body.is_ok() {
                    load.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                load.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    if conn.is_finished() {
        load.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Both policies allow platform, under rules of different names, so every
/// record shows which generation decided it; only the second lets support
/// write.
fn policy(generation: char, support_writes: bool) -> String {
    let mut text = format!(
        "\n[[policy.rules]]\nname = \"platform-{generation}\"\nteams = [\"platform\"]\nallow = [\"*\"]\n"
    );
    if support_writes {
        text.push_str(
            "\n[[policy.rules]]\nname = \"support-write\"\nteams = [\"support\"]\nallow = [\"organizations.update\"]\n",
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_drop_nothing_and_never_mix_two_configs() {
    const CONNECTIONS: usize = 32;
    const RELOADS: usize = 100;
    let upstream = ok_upstream().await;
    let dir = TestDir::new();
    let audit = dir.path("audit.jsonl");
    let extra = |g: char, writes: bool| {
        format!(
            "{}\n[audit]\nsinks = [\"file\"]\npath = {:?}\ndurability = \"flush\"\n",
            policy(g, writes),
            audit.display().to_string()
        )
    };
    // Both texts, then the first written with room for either.
    let texts = [
        std::fs::read_to_string(dir.config(&upstream, &extra('a', false))).unwrap(),
        std::fs::read_to_string(dir.config(&upstream, &extra('b', true))).unwrap(),
    ];
    let path = roomy_config(&dir, &upstream, &extra('a', false));
    let gateway = start_gateway_from(dir, &path).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(keep_sending(gateway.addr, stop.clone(), load.clone())))
        .collect();
    let client = client();
    let support = support_bearer();
    let mut versions = [String::new(), String::new()];
    for n in 1..=RELOADS {
        let which = n % 2;
        write_unnoticed(&path, &texts[which]);
        let outcome = within("a reload", gateway.reloader.reload())
            .await
            .expect("serving");
        assert_eq!(outcome.error, None);
        versions[which] = outcome.version.to_string();
        // The first request after the swap is decided by the new policy.
        let (parts, _) = send(&client, put_org(&gateway.url(""), &support)).await;
        let expected = if which == 1 { 200 } else { 403 };
        assert_eq!(parts.status, expected, "after reload {n}");
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        within("a sender to stop", sender).await.unwrap();
    }
    let (ok, failed, closed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.closed.load(Ordering::Relaxed),
    );
    eprintln!("{RELOADS} reloads under {CONNECTIONS} connections: {ok} requests ok, {failed} failed, {closed} connections closed");
    assert!(ok > RELOADS as u64, "the load ran throughout: {ok}");
    assert_eq!((failed, closed), (0, 0));

    let dir = gateway.shutdown().await;
    let records = records(&dir.path("audit.jsonl"));
    let reloads = records.iter().filter(|r| r["stage"] == "config").count();
    // A poll may have applied a write before the reloader did.
    assert!(reloads >= RELOADS, "{reloads}");
    // The version comes from the outermost layer, the rule from the policy
    // layer: a request that saw two configs would pair them wrongly.
    let mut checked = 0;
    for record in records.iter().filter(|r| r["stage"] != "config") {
        let version = record["config_version"].as_str().unwrap();
        let Some(rule) = record["rule"].as_str() else {
            continue;
        };
        let expected = match rule {
            "platform-a" => &versions[0],
            "platform-b" | "support-write" => &versions[1],
            other => panic!("unexpected rule {other}"),
        };
        // The start's version is a's too (the same file).
        assert_eq!(version, expected, "{record}");
        checked += 1;
    }
    assert!(checked as u64 >= ok, "{checked} records checked");
}

/// Waits (bounded) until the gateway's `/readyz` answers 200.
async fn ready(client: &TestClient, url: &str) {
    within("/readyz to answer 200", async {
        loop {
            let req = Request::get(url).body(Full::default()).unwrap();
            if client.request(req).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_jwks_url_is_fetched_again_only_when_auth_changes_and_must_answer() {
    let upstream = ok_upstream().await;
    let fetches = Arc::new(AtomicU64::new(0));
    let counted = fetches.clone();
    let idp = spawn_upstream(move |_req| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            http::Response::builder()
                .header("content-type", "application/json")
                .body(upstream_body(common::jwks(&["rsa-a"])))
                .unwrap()
        }
    })
    .await;
    let dir = TestDir::new();
    let auth = |audiences: &str, url: &str| {
        format!("[auth]\nissuers = [{ISSUER:?}]\naudiences = [{audiences}]\nalgorithms = [\"RS256\"]\njwks_url = {url:?}\n")
    };
    let jwks_url = format!("http://{idp}/jwks.json");
    let path = roomy_config(&dir, &upstream, &auth(&format!("{AUDIENCE:?}"), &jwks_url));
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.trim_end();
    let gateway = start_gateway_from(dir, &path).await;
    let client = client();
    ready(&client, &gateway.url("/readyz")).await;
    let (parts, _) = send(&client, get(&gateway.url("/api/organizations"))).await;
    assert_eq!(parts.status, 200);
    let at_start = fetches.load(Ordering::SeqCst);

    // The same [auth]: its key store (and token cache) is kept, unfetched.
    let outcome = gateway.reloader.reload().await.expect("serving");
    assert_eq!(outcome.error, None);
    assert_eq!(fetches.load(Ordering::SeqCst), at_start);

    // Another audience: a new authenticator, fetched before the swap.
    let audiences = format!("{AUDIENCE:?}, \"other\"");
    write_unnoticed(
        &path,
        &text.replace(
            &auth(&format!("{AUDIENCE:?}"), &jwks_url),
            &auth(&audiences, &jwks_url),
        ),
    );
    let outcome = gateway.reloader.reload().await.expect("serving");
    assert_eq!(outcome.error, None);
    assert_eq!(fetches.load(Ordering::SeqCst), at_start + 1);
    let (parts, _) = send(&client, get(&gateway.url("/api/organizations"))).await;
    assert_eq!(parts.status, 200);

    // A JWKS URL that does not answer is refused, as `check` refuses it.
    let closed = closed_port();
    let dead = format!("http://127.0.0.1:{}/jwks.json", closed.port);
    write_unnoticed(
        &path,
        &text.replace(
            &auth(&format!("{AUDIENCE:?}"), &jwks_url),
            &auth(&audiences, &dead),
        ),
    );
    let refused = gateway.reloader.reload().await.expect("serving");
    let error = refused.error.expect("refused");
    assert!(error.contains("`auth.jwks_url`"), "{error}");
    assert_eq!(refused.version, outcome.version);
    let (parts, _) = send(&client, get(&gateway.url("/api/organizations"))).await;
    assert_eq!(parts.status, 200, "the running config still serves");
}

#[tokio::test]
async fn unchanged_credentials_are_kept_and_an_invalid_server_key_refuses_the_reload() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let addr = spawn_upstream(move |req| {
        let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
        record.lock().unwrap().push(auth);
        async { http::Response::new(upstream_body(r#"{"data":{}}"#)) }
    })
    .await;
    let dir = TestDir::new();
    let path = roomy_config(&dir, &format!("http://{addr}"), "");
    let key = dir.path("partner-key");
    let gateway = start_gateway_from(dir, &path).await;
    let client = client();

    // A Secret volume mid-swap: the key file is briefly missing. A reload
    // then keeps the loaded credential (and its last good key) instead of
    // failing, and /readyz says the source is unreadable.
    std::fs::remove_file(&key).unwrap();
    let outcome = gateway.reloader.reload().await.expect("serving");
    assert_eq!(outcome.error, None);
    let (parts, _) = send(&client, get(&gateway.url("/readyz"))).await;
    assert_eq!(parts.status, 503);
    let (parts, _) = send(&client, get(&gateway.url("/api/organizations"))).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &format!("Bearer {PARTNER_KEY}")
    );
    // The rotated key is there: a reload reads it at once.
    std::fs::write(&key, "pk_rotated_by_reload\n").unwrap();
    assert_eq!(gateway.reloader.reload().await.unwrap().error, None);
    let (parts, _) = send(&client, get(&gateway.url("/api/organizations"))).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        "Bearer pk_rotated_by_reload"
    );

    // A restart-only key is still checked: an invalid one refuses it all.
    let text = std::fs::read_to_string(&path).unwrap();
    write_unnoticed(
        &path,
        text.trim_end()
            .replacen(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nmax_connections = 0",
                1,
            )
            .as_str(),
    );
    let refused = gateway.reloader.reload().await.expect("serving");
    let error = refused.error.expect("refused");
    assert!(error.contains("`server.max_connections`"), "{error}");
    assert_eq!(refused.version, outcome.version);
}

#[tokio::test]
async fn the_log_level_reloads_and_restart_only_keys_are_logged_by_key() {
    let upstream = ok_upstream().await;
    let dir = TestDir::new();
    let path = roomy_config(
        &dir,
        &upstream,
        &format!("{SUPPORT_READS}\n[telemetry]\nlog_level = \"info\"\n"),
    );
    let mut cmd = tokio::process::Command::new(binary_path());
    cmd.arg("serve").arg("--config").arg(&path);
    // RUST_LOG would win over telemetry.log_level.
    cmd.env_remove("RUST_LOG");
    let mut gateway = Binary::start(cmd, "gateway listening").await;
    let text = std::fs::read_to_string(&path).unwrap();
    write_unnoticed(
        &path,
        text.trim_end()
            .replace("log_level = \"info\"", "log_level = \"debug\"")
            .replacen(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nmax_connections = 7",
                1,
            )
            .as_str(),
    );
    gateway.signal("HUP");
    let line = gateway.wait_for_line("apply only after a restart").await;
    assert!(line.contains("server.max_connections"), "{line}");
    // A denial is logged at debug: only under the new level.
    let (parts, body) = send(&client(), put_org(&gateway.url(""), &support_bearer())).await;
    assert_gateway_error(&parts, &body, 403, "forbidden");
    gateway.wait_for_line("request denied by policy").await;
}

#[tokio::test]
async fn the_version_header_and_audit_redaction_follow_a_reload() {
    let versions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = versions.clone();
    let addr = spawn_upstream(move |req| {
        let version = req.headers()["x-polytomic-version"]
            .to_str()
            .unwrap()
            .to_owned();
        record.lock().unwrap().push(version);
        async { http::Response::new(upstream_body(r#"{"data":[]}"#)) }
    })
    .await;
    let dir = TestDir::new();
    let path = roomy_config(&dir, &format!("http://{addr}"), "");
    let gateway = start_gateway_from(dir, &path).await;
    let client = client();
    let url = gateway.url("/api/organizations?nickname=blue-falcon");
    let (parts, _) = send(&client, get(&url)).await;
    assert_eq!(parts.status, 200);

    let text = std::fs::read_to_string(&path).unwrap();
    write_unnoticed(
        &path,
        &format!(
            "{}\n[polytomic]\nversion = \"2024-01-01\"\n",
            text.trim_end().replace(
                "durability = \"fsync\"",
                "durability = \"fsync\"\nredact_fields = [\"nickname\"]"
            )
        ),
    );
    let outcome = gateway.reloader.reload().await.expect("serving");
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.restart_required, Vec::<String>::new());
    let (parts, _) = send(&client, get(&url)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(*versions.lock().unwrap(), ["2025-09-18", "2024-01-01"]);

    let dir = gateway.shutdown().await;
    let queries: Vec<_> = records(&dir.path("audit.jsonl"))
        .into_iter()
        .filter(|r| r["stage"] == "response")
        .map(|r| r["query"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(queries, ["nickname=blue-falcon", "nickname=%5BREDACTED%5D"]);
}
