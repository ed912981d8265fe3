//! The real `polytomic-gateway` binary: `check`, the CLI, graceful shutdown,
//! key rotation, environment overrides, streaming memory, and the demo.

mod common;

use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use polytomic_gateway::fake::FakePolytomic;
use tokio::sync::Notify;

fn check(path: &std::path::Path, envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(binary_path());
    cmd.arg("check")
        .arg("--config")
        .arg(path)
        .env_remove("POLYTOMIC_PARTNER_KEY");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check`'s output once the config passed: the version it would run,
/// then `ok`, after any `before` lines.
fn assert_checked_ok(stdout: &str, before: &[&str]) {
    let lines: Vec<&str> = stdout.lines().collect();
    let (version, rest) = lines
        .split_last()
        .and_then(|(ok, rest)| (*ok == "ok").then_some(rest))
        .and_then(|rest| rest.split_last())
        .unwrap_or_else(|| panic!("no version and ok: {stdout}"));
    let version = version.strip_prefix("config version: ").unwrap_or("");
    assert!(
        version.len() == 64 && version.bytes().all(|b| b.is_ascii_hexdigit()),
        "{stdout}"
    );
    assert_eq!(rest, before, "{stdout}");
}

#[test]
fn check_accepts_a_good_config_and_prints_ok() {
    let dir = TestDir::new();
    let path = dir.config("https://app.polytomic.com", "");
    let (ok, stdout, stderr) = check(&path, &[]);
    assert!(ok, "{stderr}");
    assert_checked_ok(&stdout, &[]);
}

#[test]
fn check_accepts_the_shipped_configs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The shipped config's JWKS URL is a placeholder host; point it at a
    // loopback JWKS server so `check` can fetch it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let jwks_addr = rt.block_on(spawn_upstream(|_req| async {
        http::Response::new(upstream_body(jwks(&["rsa-a"])))
    }));
    let (ok, stdout, stderr) = check(
        &root.join("config/gateway.toml"),
        &[
            ("POLYTOMIC_PARTNER_KEY", "pk_x"),
            ("POLYTOMIC_ORG_KEY", "ok_x"),
            (
                "GATEWAY__AUTH__JWKS_URL",
                &format!("http://{jwks_addr}/jwks.json"),
            ),
        ],
    );
    // The shipped config routes the whole catalog.
    assert!(ok, "{stderr}");
    assert_checked_ok(
        &stdout,
        &["catalog: 198 of 198 operations of API 2025-09-18 routed"],
    );
    // Unreachable as shipped: `check` says so, naming the key.
    let (ok, _, stderr) = check(
        &root.join("config/gateway.toml"),
        &[
            ("POLYTOMIC_PARTNER_KEY", "pk_x"),
            ("POLYTOMIC_ORG_KEY", "ok_x"),
        ],
    );
    assert!(
        !ok && stderr.contains("`auth.jwks_url`: fetching the JWKS failed"),
        "{stderr}"
    );
    let out = Command::new(binary_path())
        .args(["check", "--config", "config/demo.toml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_names_an_unknown_key_and_the_file() {
    let dir = TestDir::new();
    let path = dir.config("https://app.polytomic.com", "[server]\nmax_body_byte = 10");
    let (ok, _, stderr) = check(&path, &[]);
    assert!(!ok);
    assert!(stderr.contains("`server.max_body_byte`"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
}

/// `serve` refuses a bad config the way `check` does: exit 1, the key and
/// the file named, nothing bound, and no secret shown.
#[tokio::test]
async fn serve_exits_1_on_a_bad_config_naming_the_key_and_the_file() {
    let dir = TestDir::new();
    let path = dir.config("https://app.polytomic.com", "[server]\nmax_body_byte = 10");
    let run = tokio::process::Command::new(binary_path())
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = within("serve to exit on a bad config", run).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`server.max_body_byte`"), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(!stderr.contains("gateway listening"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for output in [&*stderr, &*stdout] {
        assert!(!output.contains(PARTNER_KEY), "{output}");
    }
}

#[test]
fn check_names_each_bad_telemetry_setting_and_the_file() {
    let dir = TestDir::new();
    let path = dir.config(
        "https://app.polytomic.com",
        "[telemetry]\nsample_rate = 0.5",
    );
    let (ok, _, stderr) = check(&path, &[]);
    assert!(
        !ok && stderr.contains("`telemetry.sample_rate`"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown key") && stderr.contains(&path.display().to_string()));
    for (setting, key) in [
        ("log_format = \"xml\"", "`telemetry.log_format`"),
        ("otlp_protocol = \"thrift\"", "`telemetry.otlp_protocol`"),
    ] {
        let path = dir.config(
            "https://app.polytomic.com",
            &format!("[telemetry]\n{setting}"),
        );
        let (ok, _, stderr) = check(&path, &[]);
        assert!(!ok && stderr.contains(key), "{setting}: {stderr}");
    }
    let path = dir.config(
        "https://app.polytomic.com",
        "[telemetry]\nsample_ratio = 1.5\nlog_level = \"info,[\"\notlp_endpoint = \"ftp://collector\"\nservice_name = \"\"",
    );
    let (ok, _, stderr) = check(&path, &[]);
    assert!(!ok);
    for key in ["sample_ratio", "log_level", "otlp_endpoint", "service_name"] {
        assert!(
            stderr.contains(&format!("`telemetry.{key}`")),
            "{key}: {stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 4, "one line per problem: {stderr}");
}

#[test]
fn check_names_a_bad_worker_count_and_the_file() {
    let dir = TestDir::new();
    for (value, message) in [("0", "greater than zero"), ("100000", "at most")] {
        let path = dir.config(
            "https://app.polytomic.com",
            &format!("[server]\nworkers = {value}"),
        );
        let (ok, _, stderr) = check(&path, &[]);
        assert!(!ok, "workers = {value} accepted");
        assert!(
            stderr.contains("`server.workers`") && stderr.contains(message),
            "{stderr}"
        );
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    }
    let path = dir.config("https://app.polytomic.com", "[server]\nworkers = 3");
    let (ok, stdout, stderr) = check(&path, &[]);
    assert!(ok, "{stderr}");
    assert_checked_ok(&stdout, &[]);
}

#[test]
fn check_names_a_zero_queue_max_bytes_and_the_file() {
    let dir = TestDir::new();
    let audit = |bytes: &str| {
        format!(
            "[audit]\nsinks = [\"file\"]\npath = {:?}\nqueue_max_bytes = {bytes}\n",
            dir.path("audit.jsonl").display().to_string()
        )
    };
    let path = dir.config("https://app.polytomic.com", &audit("0"));
    let (ok, _, stderr) = check(&path, &[]);
    assert!(!ok, "queue_max_bytes = 0 accepted");
    assert!(
        stderr.contains("`audit.queue_max_bytes`") && stderr.contains("at least 1"),
        "{stderr}"
    );
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    let path = dir.config("https://app.polytomic.com", &audit("1048576"));
    let (ok, stdout, stderr) = check(&path, &[]);
    assert!(ok, "{stderr}");
    assert_checked_ok(&stdout, &[]);
}

#[test]
fn check_names_each_zero_connection_timeout() {
    let dir = TestDir::new();
    let keys = ["idle_timeout", "http2_ping_interval", "http2_ping_timeout"];
    let server: String = keys.iter().map(|k| format!("{k} = \"0s\"\n")).collect();
    let path = dir.config("https://app.polytomic.com", &format!("[server]\n{server}"));
    let (ok, _, stderr) = check(&path, &[]);
    assert!(!ok);
    for key in keys {
        assert!(
            stderr.contains(&format!("`server.{key}`")) && stderr.contains("greater than zero"),
            "{key}: {stderr}"
        );
    }
}

#[test]
fn check_names_a_missing_credential_without_showing_values() {
    let dir = TestDir::new();
    let path = dir.path("missing-cred.toml");
    std::fs::write(
        &path,
        format!(
            "[credentials.partner]\nenv = \"POLYTOMIC_GATEWAY_TEST_UNSET_KEY\"\n\n[credentials.onprem]\nfile = \"/nonexistent/partner-key\"\nscheme = \"basic\"\n\n{}",
            dir.auth_section("")
        ),
    )
    .unwrap();
    let (ok, _, stderr) = check(&path, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("`credentials.partner.env`")
            && stderr.contains("POLYTOMIC_GATEWAY_TEST_UNSET_KEY is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`credentials.onprem.file`") && stderr.contains("/nonexistent/partner-key"),
        "{stderr}"
    );
    // Every problem is reported in one run, one per line.
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn check_reports_every_problem_and_names_env_overrides() {
    let dir = TestDir::new();
    let path = dir.config(
        "https://app.polytomic.com",
        "[polytomic]\nversion = \"latest\"",
    );
    let (ok, _, stderr) = check(&path, &[("GATEWAY__UPSTREAM__URL", "not a url")]);
    assert!(!ok);
    assert!(
        stderr.contains("environment variable GATEWAY__UPSTREAM__URL: `upstream.url`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`polytomic.version`") && stderr.contains(&path.display().to_string()),
        "{stderr}"
    );
    let (ok, _, stderr) = check(&path, &[("GATEWAY__SERVER__NOPE", "1")]);
    assert!(!ok && stderr.contains("`server.nope`"), "{stderr}");
}

#[test]
fn check_refuses_a_bad_upstream_url() {
    let dir = TestDir::new();
    for url in [
        "ftp://example.com",
        "app.polytomic.com",
        "https://user:pw@example.com",
    ] {
        let path = dir.config(url, "");
        let (ok, _, stderr) = check(&path, &[]);
        assert!(!ok, "{url} accepted");
        assert!(stderr.contains("`upstream.url`"), "{stderr}");
        assert!(!stderr.contains("pw@"), "{stderr}");
    }
}

#[test]
fn version_and_help_work() {
    let out = Command::new(binary_path())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("polytomic-gateway {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(binary_path()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for command in ["serve", "check", "demo", "--config"] {
        assert!(help.contains(command), "{help}");
    }
}

/// The subcommands a `--help` output lists, bar `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.strip_prefix("  ")?.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// `polytomic-gateway COMMAND... --help`'s output.
fn help_of(command: &[String]) -> String {
    let out = Command::new(binary_path())
        .args(command)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{command:?} --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every command's `--help`, found by walking the `Commands:` lists from
/// the top, ends with one example of that command, and the parser accepts
/// the example's arguments: given before `--help`, a misspelt flag or a
/// bad value fails.
#[test]
fn every_subcommand_help_ends_with_an_example_that_parses() {
    let mut pending = vec![vec![]];
    let mut checked = Vec::new();
    while let Some(command) = pending.pop() {
        let help = help_of(&command);
        let name = command.join(" ");
        let (_, example) = help
            .split_once("\nExample:\n")
            .unwrap_or_else(|| panic!("`{name} --help` has no example:\n{help}"));
        let lines: Vec<&str> = example
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect();
        let [line] = lines[..] else {
            panic!("`{name} --help` should have one example: {example}");
        };
        // After any `VAR=value`.
        let words: Vec<&str> = line
            .split_whitespace()
            .skip_while(|word| word.contains('=') && !word.starts_with('-'))
            .collect();
        assert_eq!(words.first(), Some(&"polytomic-gateway"), "{line}");
        assert!(
            words[1..].starts_with(&command.iter().map(String::as_str).collect::<Vec<_>>()),
            "`{name} --help`'s example is of another command: {line}"
        );
        let out = Command::new(binary_path())
            .args(&words[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pending.extend(
            subcommands(&help)
                .into_iter()
                .map(|sub| [command.clone(), vec![sub]].concat()),
        );
        checked.push(name);
    }
    // The walk reached the top, the commands and the nested ones.
    for command in [
        "",
        "serve",
        "demo",
        "policy",
        "policy explain",
        "audit verify",
    ] {
        assert!(
            checked.iter().any(|c| c == command),
            "{command:?}: {checked:?}"
        );
    }
}

/// A missing config file: the error says where the gateway looked (the
/// full path) and where that path came from, and suggests `demo` and
/// `--config`; the exit code is each command's for a config error.
#[test]
fn a_missing_config_file_says_where_the_gateway_looked() {
    let cwd = tempfile::tempdir().unwrap();
    let looked = |path: &str| cwd.path().canonicalize().unwrap().join(path);
    let default = "the default, since neither --config nor GATEWAY_CONFIG is set";
    let from_env = "from the environment variable GATEWAY_CONFIG";
    let flag = "given with --config";
    let explain = [
        "policy",
        "explain",
        "--method",
        "GET",
        "--path",
        "/api/organization",
    ];
    // The arguments, GATEWAY_CONFIG, the path, where it came from, the exit code.
    type Case<'a> = (&'a [&'a str], Option<&'a str>, &'a str, &'a str, i32);
    let cases: [Case; 9] = [
        (&[], None, "config/gateway.toml", default, 1),
        (&["check"], None, "config/gateway.toml", default, 1),
        (&["serve"], Some("env.toml"), "env.toml", from_env, 1),
        (
            &["routes", "--config", "flag.toml"],
            Some("env.toml"),
            "flag.toml",
            flag,
            1,
        ),
        (
            &["token", "--sub", "alice"],
            None,
            "config/gateway.toml",
            default,
            1,
        ),
        (&explain, Some("env.toml"), "env.toml", from_env, 1),
        (
            &["policy", "test", "cases.toml"],
            None,
            "config/gateway.toml",
            default,
            2,
        ),
        (
            &["check", "--config", "/nonexistent/gateway.toml"],
            None,
            "/nonexistent/gateway.toml",
            flag,
            1,
        ),
        (
            &["demo", "--config", "flag.toml"],
            None,
            "flag.toml",
            flag,
            1,
        ),
    ];
    for (args, env, path, origin, code) in cases {
        let mut cmd = Command::new(binary_path());
        cmd.args(args)
            .current_dir(cwd.path())
            .env_remove("GATEWAY_CONFIG");
        if let Some(file) = env {
            cmd.env("GATEWAY_CONFIG", file);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 3, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with(&format!("{path}: cannot read the config file: ")),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            lines[1],
            format!(
                "  the gateway looked for {} ({origin})",
                looked(path).display()
            ),
            "{args:?}"
        );
        assert_eq!(
            lines[2],
            "  to try the gateway without a config file, run `polytomic-gateway demo`; to use another file, pass `--config FILE`",
            "{args:?}"
        );
    }
    // Reading the file failed for another reason: the error is as it was.
    let out = Command::new(binary_path())
        .args(["check", "--config"])
        .arg(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}: cannot read the config file: ",
            cwd.path().display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn env_overrides_the_file_and_a_bare_invocation_serves() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config("http://127.0.0.1:1", "");
    let mut cmd = tokio::process::Command::new(binary_path());
    cmd.arg("--config")
        .arg(&path)
        .env("GATEWAY__UPSTREAM__URL", format!("http://{addr}"))
        .env("GATEWAY__POLYTOMIC__VERSION", "2024-02-08");
    let mut gw = Binary::start(cmd, "gateway listening").await;
    let (parts, _) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        fake.requests()[0].headers["x-polytomic-version"],
        "2024-02-08"
    );
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    let output = gw.collect_output().await;
    assert!(!output.contains(PARTNER_KEY), "{output}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (a, r) = (arrived.clone(), release.clone());
    let upstream = spawn_upstream(move |_req: Request<Incoming>| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            a.notify_one();
            r.notified().await;
            http::Response::new(upstream_body(r#"{"data":{"slow":true}}"#))
        }
    })
    .await;
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{upstream}"),
        "[server]\nshutdown_grace = \"20s\"",
    );
    let mut gw = Binary::serve(&path, &[]).await;
    let url = gw.url("/api/organization");
    let in_flight = tokio::spawn(async move { send(&client(), get(&url)).await });
    within("the request to reach the upstream", arrived.notified()).await;

    gw.signal("TERM");
    gw.wait_for_line("listener closed").await;
    let refused = tokio::net::TcpStream::connect(gw.addr).await;
    assert!(
        refused.is_err(),
        "new connections must be refused while draining"
    );

    release.notify_one();
    let (parts, body) = within("the drained response", in_flight).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(json(&body)["data"]["slow"], true);
    let status = gw.exit().await;
    assert!(status.success(), "{status}");
    gw.wait_for_line("drained; exiting").await;
}

#[tokio::test]
async fn a_rotated_key_file_is_used_without_a_restart() {
    let fake = FakePolytomic::with_authorization("Bearer pk_rotated_second".parse().unwrap());
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let path = dir.config(&format!("http://{addr}"), "");
    let mut gw = Binary::serve(&path, &[]).await;
    let c = client();
    let (parts, _) = send(&c, get(&gw.url("/api/organization"))).await;
    assert_eq!(
        parts.status, 401,
        "the first key is not the one the fake accepts"
    );

    std::fs::write(dir.path("partner-key"), "pk_rotated_second\n").unwrap();
    gw.signal("HUP");
    gw.wait_for_line("config reloaded").await;
    let (parts, _) = send(&c, get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200);
    let seen = fake.requests();
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {PARTNER_KEY}")
    );
    assert_eq!(seen[1].headers["authorization"], "Bearer pk_rotated_second");
    let output = gw.stdout.join("\n");
    assert!(
        !output.contains("pk_rotated_second") && !output.contains(PARTNER_KEY),
        "{output}"
    );
}

const FIFTY_MB: u64 = 50 * 1024 * 1024;

#[tokio::test]
async fn fifty_megabytes_stream_both_ways_with_flat_memory() {
    // An upstream that counts uploads frame by frame and streams downloads.
    let upstream = spawn_upstream(|req: Request<Incoming>| async move {
        if req.method() == http::Method::POST {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                total += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
            }
            http::Response::new(upstream_body(format!(r#"{{"bytes":{total}}}"#)))
        } else {
            let body = Zeros {
                remaining: FIFTY_MB,
            }
            .boxed();
            http::Response::builder()
                .header("content-length", FIFTY_MB.to_string())
                .body(body)
                .unwrap()
        }
    })
    .await;
    let dir = TestDir::new();
    let path = dir.config(
        &format!("http://{upstream}"),
        // A fixed worker count: each worker has its own runtime and pool,
        // so the memory measured must not scale with the machine's cores.
        "[server]\nmax_body_bytes = 104857600\nworkers = 2",
    );
    let gw = Binary::serve(&path, &[]).await;
    // Warm up: one small request through the whole stack.
    let (parts, _) = send(&client(), get(&gw.url("/api/warmup"))).await;
    assert_eq!(parts.status, 200);
    let rss_before = gw.proc_kib("VmRSS");
    let hwm_before = gw.proc_kib("VmHWM");

    let upload = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Zeros>();
    let req = Request::post(gw.url("/api/upload"))
        .header("authorization", bearer())
        .header("content-length", FIFTY_MB.to_string())
        .body(Zeros {
            remaining: FIFTY_MB,
        })
        .unwrap();
    let response = within("the upload's response", upload.request(req))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = within("the upload's response body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(json(&body)["bytes"], FIFTY_MB);

    let download = Request::get(gw.url("/api/download"))
        .header("authorization", bearer())
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = within("the download's response head", client().request(download))
        .await
        .unwrap();
    let mut body = response.into_body();
    let received = within("the 50 MiB download", async {
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        }
        received
    })
    .await;
    assert_eq!(received, FIFTY_MB);

    let hwm_after = gw.proc_kib("VmHWM");
    let rss_after = gw.proc_kib("VmRSS");
    let growth_kib = hwm_after.saturating_sub(hwm_before);
    eprintln!(
        "streaming 50 MiB up + 50 MiB down: RSS {rss_before} KiB -> {rss_after} KiB, peak {hwm_before} KiB -> {hwm_after} KiB (+{growth_kib} KiB)"
    );
    assert!(
        growth_kib < 16 * 1024,
        "peak RSS grew by {growth_kib} KiB while streaming"
    );
}

/// `demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`, to run in `dir`.
fn demo_command(dir: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary_path());
    cmd.args([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .current_dir(dir);
    cmd
}

/// Runs the three commands the demo prints, as its README quickstart does,
/// then stops it with SIGINT; `partner_key` (its config's) must not be in
/// its output. Returns the fake API's line for the first request.
async fn try_the_printed_commands(demo: &mut Binary, partner_key: &str) -> String {
    let curl = demo
        .wait_for_line("curl -sS -H 'Authorization: Bearer ")
        .await;
    let url = curl.split_whitespace().last().unwrap().to_owned();
    assert!(url.starts_with(&format!("http://{}/", demo.addr)), "{curl}");
    let token = curl
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_owned();
    let req = Request::get(&url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let org = json(&body);
    assert!(org["data"]["name"].is_string());
    assert!(org["data"].get("client_secret").is_none());
    // The second printed command, without the token, is refused.
    let bare = demo.wait_for_line("curl -sS http://").await;
    let bare_url = bare.split_whitespace().last().unwrap();
    let (parts, _) = send(
        &client(),
        Request::get(bare_url).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(parts.status, 401);
    // The third, as team support, is refused by the policy.
    let put = demo.wait_for_line("curl -sS -X PUT").await;
    let support_token = put
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let put_url = put.split_whitespace().last().unwrap();
    let req = Request::put(put_url)
        .header("authorization", format!("Bearer {support_token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"Renamed"}"#)))
        .unwrap();
    let (parts, body) = send(&client(), req).await;
    assert_eq!(parts.status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["key"], "forbidden");
    // The fake API logs what it received: the partner key, masked.
    let logged = demo
        .wait_for_line("[fake polytomic] GET /api/organization")
        .await;
    assert!(logged.contains("partner key (correct, masked)"), "{logged}");
    demo.signal("INT");
    assert!(demo.exit().await.success());
    assert!(!demo.collect_output().await.contains(partner_key.trim()));
    logged
}

#[tokio::test]
async fn the_demo_prints_a_curl_that_succeeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut demo = Binary::start(demo_command(root), "gateway listening").await;
    let key = std::fs::read_to_string(root.join("config/demo-partner-key")).unwrap();
    try_the_printed_commands(&mut demo, &key).await;
}

/// `demo` needs nothing from the working directory (as installed by `cargo
/// install`, or in the image): run from an empty one, it serves its
/// built-in config, writes the files that config names only to a private
/// directory under `$TMPDIR`, and removes them when it stops.
#[tokio::test]
async fn the_demo_runs_from_an_empty_directory() {
    use std::os::unix::fs::PermissionsExt;
    let cwd = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = demo_command(cwd.path());
    cmd.env("TMPDIR", tmp.path()).env_remove("GATEWAY_CONFIG");
    let mut demo = Binary::start(cmd, "gateway listening").await;
    let config = demo.wait_for_line("  config:").await;
    assert!(config.contains("built in"), "{config}");
    for url in [demo.url("/readyz"), demo.admin_url("/readyz")] {
        let (parts, body) = send(&client(), get(&url)).await;
        assert_eq!(
            parts.status,
            200,
            "{url}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let written: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", written[0].display());
    let key = include_str!("../config/demo-partner-key");
    let logged = try_the_printed_commands(&mut demo, key).await;
    assert!(
        logged.contains("x-polytomic-version=2025-09-18"),
        "{logged}"
    );
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the demo's files outlive it"
    );
}

/// A config given with `--config` wins over the built-in one, and the
/// files it names are read relative to the working directory, as `serve`
/// reads them.
#[tokio::test]
async fn the_demo_uses_the_config_given_with_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cwd = tempfile::tempdir().unwrap();
    for dir in ["config", "schemas"] {
        std::fs::create_dir(cwd.path().join(dir)).unwrap();
    }
    for schema in [
        "schemas/organization-create.json",
        "schemas/organization-update.json",
    ] {
        std::fs::copy(root.join(schema), cwd.path().join(schema)).unwrap();
    }
    let key = "pk_the_demo_key_of_a_config_given_with_config";
    std::fs::write(cwd.path().join("config/demo-partner-key"), key).unwrap();
    std::fs::write(
        cwd.path().join("config/demo-jwt-secret"),
        "a-development-secret-of-this-test-only-0123456789",
    )
    .unwrap();
    let built_in = polytomic_gateway::demo::BUILT_IN_CONFIG;
    let config = built_in.replace("version = \"2025-09-18\"", "version = \"2024-02-08\"");
    assert_ne!(config, built_in);
    std::fs::write(cwd.path().join("my-demo.toml"), config).unwrap();
    let mut cmd = demo_command(cwd.path());
    cmd.args(["--config", "my-demo.toml"]);
    let mut demo = Binary::start(cmd, "gateway listening").await;
    let config = demo.wait_for_line("  config:").await;
    assert!(config.ends_with(" my-demo.toml"), "{config}");
    let logged = try_the_printed_commands(&mut demo, key).await;
    assert!(
        logged.contains("x-polytomic-version=2024-02-08"),
        "{logged}"
    );
}

#[tokio::test]
async fn token_mints_a_dev_token_the_gateway_accepts() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    std::fs::write(dir.path("hs"), "a-development-secret-of-at-least-32-bytes").unwrap();
    let auth = format!(
        "[auth]\nissuers = [{ISSUER:?}]\naudiences = [{AUDIENCE:?}]\nalgorithms = [\"HS256\"]\nhs256_secret = {{ file = {:?} }}\nteam_claim = \"realm_access.roles\"\n",
        dir.path("hs").display().to_string()
    );
    let path = dir.config(&format!("http://{addr}"), &auth);
    let out = Command::new(binary_path())
        .args([
            "token",
            "--sub",
            "alice@corp",
            "--team",
            "platform",
            "--team",
            "ops",
            "--ttl",
            "5m",
        ])
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(minted.split('.').count(), 3, "{minted}");
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            minted.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["realm_access"]["roles"],
        serde_json::json!(["platform", "ops"])
    );
    assert_eq!(payload["sub"], "alice@corp");
    assert!(payload["exp"].as_u64().unwrap() <= now() + 300);

    let gw = Binary::serve(&path, &[]).await;
    let req = Request::get(gw.url("/api/organization"))
        .header("authorization", format!("Bearer {minted}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client(), req).await.0.status, 200);
}

#[test]
fn token_refuses_without_a_development_secret() {
    let dir = TestDir::new();
    let path = dir.config("https://app.polytomic.com", "");
    let out = Command::new(binary_path())
        .args(["token", "--sub", "alice"])
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.hs256_secret") && stderr.contains("identity provider"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// A JWKS URL never shows its credentials or query: one with userinfo is
/// refused, naming the key but not the password; the warning about plain
/// http to loopback shows the URL without its query (which may hold a token).
#[test]
fn a_jwks_url_never_shows_its_credentials_or_query() {
    const PASSWORD: &str = "pw_CANARY_jwks_7d21";
    const QUERY_TOKEN: &str = "qt_CANARY_jwks_5e90";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let jwks_addr = rt.block_on(spawn_upstream(|_req| async {
        http::Response::new(upstream_body(jwks(&["rsa-a"])))
    }));
    let dir = TestDir::new();
    let auth = |url: &str| {
        format!("[auth]\nissuers = [{ISSUER:?}]\naudiences = [{AUDIENCE:?}]\njwks_url = {url:?}\n")
    };
    let path = dir.config(
        "https://app.polytomic.com",
        &auth(&format!("http://admin:{PASSWORD}@{jwks_addr}/jwks.json")),
    );
    let (ok, stdout, stderr) = check(&path, &[]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("`auth.jwks_url`: must not hold credentials"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    let path = dir.config(
        "https://app.polytomic.com",
        &auth(&format!("http://{jwks_addr}/jwks.json?token={QUERY_TOKEN}")),
    );
    let (ok, stdout, stderr) = check(&path, &[("RUST_LOG", "info")]);
    assert!(ok, "{stderr}");
    assert_checked_ok(&stdout, &[]);
    assert!(
        stderr.contains(&format!("http://{jwks_addr}/jwks.json?…")),
        "the warning names the URL: {stderr}"
    );
    assert!(!stderr.contains(QUERY_TOKEN), "{stderr}");
}

/// `routes` shows, for a route that names no credential, the credential the
/// gateway really sends: `partner`, or the only one when there is one (here
/// `acme`); with several and none named `partner` there is no default, and
/// `routes` says so, as `check` does.
#[test]
fn routes_names_the_default_credential_it_really_sends() {
    let routes = |path: &std::path::Path| {
        let out = Command::new(binary_path())
            .arg("routes")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The CREDENTIAL column of every listed route.
    let credentials = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .skip(1)
            .take_while(|l| !l.ends_with("operations routed"))
            .map(|l| l.split_whitespace().nth(3).unwrap().to_owned())
            .collect()
    };
    let dir = TestDir::new();
    let path = dir.config("https://app.polytomic.com", "");

    let (code, stdout, stderr) = routes(&path);
    assert_eq!(code, Some(0), "{stderr}");
    let shown = credentials(&stdout);
    assert_eq!(shown.len(), 7, "{stdout}");
    assert!(shown.iter().all(|c| c == "partner"), "{stdout}");

    // The only credential, named otherwise, is the default.
    let text = std::fs::read_to_string(&path).unwrap();
    let acme_only = text.replace("[credentials.partner]", "[credentials.acme]");
    std::fs::write(&path, &acme_only).unwrap();
    let (code, stdout, stderr) = routes(&path);
    assert_eq!(code, Some(0), "{stderr}");
    let shown = credentials(&stdout);
    assert_eq!(shown.len(), 7, "{stdout}");
    assert!(shown.iter().all(|c| c == "acme"), "{stdout}");

    // Two credentials, neither `partner`: no default, a configuration error.
    let org_key = dir.path("org-key").display().to_string();
    std::fs::write(
        &path,
        format!("{acme_only}\n[credentials.other]\nfile = {org_key:?}\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = routes(&path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains("`credentials`: several credentials and none named `partner`"),
        "{stderr}"
    );
}
