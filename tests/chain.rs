//! The audit trail's tamper evidence, end to end: the real binary writes a
//! chained, checkpointed trail across rotation, restarts and a SIGKILL, and
//! `polytomic-gateway audit verify` accepts it whole and names the line and
//! kind of every tampering: an edited field, a deleted, inserted or moved
//! line, a cut tail, and a trail re-signed with another key.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use polytomic_gateway::audit::chain::{checkpoint_message, line_hash, Signer};
use polytomic_gateway::fake::{FakePolytomic, CURRENT_ORG_ID};
use serde_json::Value;

/// A fresh Ed25519 key: the private PEM (PKCS#8) and the public PEM.
fn key_pair() -> (String, String) {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let private = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    let public = Signer::from_pem(private.as_bytes())
        .unwrap()
        .public_key_pem();
    (private, public)
}

/// The base64 body of a PEM: what must never be printed.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// A dir with a signing key, its public half, and a config whose trail is
/// `audit.jsonl`, fsynced, checkpointed every 5 records.
fn signed_setup(upstream: &str) -> (TestDir, PathBuf, String, String) {
    let dir = TestDir::new();
    let (private, public) = key_pair();
    std::fs::write(dir.path("signing.pem"), &private).unwrap();
    std::fs::write(dir.path("public.pem"), &public).unwrap();
    let audit = format!(
        "[audit]\nsinks = [\"file\"]\npath = {:?}\ndurability = \"fsync\"\nsigning_key = {{ file = {:?} }}\ncheckpoint_records = 5\n",
        dir.path("audit.jsonl").display().to_string(),
        dir.path("signing.pem").display().to_string(),
    );
    let path = dir.config(upstream, &audit);
    (dir, path, private, public)
}

fn put(url: &str, id: &str, name: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::PUT)
        .uri(url)
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(Full::new(Bytes::from(format!(r#"{{"name":"{name}"}}"#))))
        .unwrap()
}

/// Runs `audit verify` on `files`: exit code and stdout.
fn verify(public_key: &Path, files: &[PathBuf]) -> (i32, String) {
    let output = std::process::Command::new(binary_path())
        .args(["audit", "verify", "--public-key"])
        .arg(public_key)
        .args(files)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    (output.status.code().unwrap(), format!("{stdout}{stderr}"))
}

/// `checkpoint_records = 5` bounds every stretch of an instance's records,
/// also within one write batch.
fn assert_checkpoints_every_5<'a>(records: impl Iterator<Item = &'a Value>) {
    let mut since = 0;
    let mut instance = Value::Null;
    for record in records {
        if record["stage"] == "checkpoint" || record["instance"] != instance {
            since = 0;
            instance = record["instance"].clone();
        }
        if record["stage"] != "checkpoint" {
            since += 1;
            assert!(since <= 5, "more than 5 records without a checkpoint");
        }
    }
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes through the real binary: six PUTs, a logrotate rotation (rename,
/// SIGHUP), six more, a clean stop, then a restart with three more and a
/// clean stop. `audit verify` accepts the two files in order, every record
/// covered by a checkpoint; the second instance chains to the first's last
/// line; `check` prints the public key and no output shows the private one.
#[tokio::test]
async fn an_intact_trail_verifies_across_rotation_and_a_restart() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let (dir, path, private, public) = signed_setup(&format!("http://{addr}"));
    let audit_path = dir.path("audit.jsonl");
    let rotated = dir.path("audit.jsonl.1");
    let mut outputs = Vec::new();

    let mut gw = Binary::serve(&path, &[]).await;
    let url = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    let c = client();
    for i in 0..6 {
        let (parts, _) = send(&c, put(&url, &format!("a{i}"), "Acme")).await;
        assert_eq!(parts.status, 200);
    }
    std::fs::rename(&audit_path, &rotated).unwrap();
    gw.signal("HUP");
    gw.wait_for_line("audit file reopened").await;
    for i in 0..6 {
        let (parts, _) = send(&c, put(&url, &format!("b{i}"), "Acme")).await;
        assert_eq!(parts.status, 200);
    }
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    outputs.push(gw.collect_output().await);
    let first_instance_end = std::fs::read_to_string(&audit_path).unwrap();

    let mut gw = Binary::serve(&path, &[]).await;
    let url = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    for i in 0..3 {
        let (parts, _) = send(&client(), put(&url, &format!("c{i}"), "Acme")).await;
        assert_eq!(parts.status, 200);
    }
    gw.signal("TERM");
    assert!(gw.exit().await.success());
    outputs.push(gw.collect_output().await);

    // 15 PUTs, two records each (request, response), in two instances, and
    // the `config` record of the reload the rotation's SIGHUP also asks for.
    let (code, report) = verify(
        &dir.path("public.pem"),
        &[rotated.clone(), audit_path.clone()],
    );
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(": 25 records, 25 covered by a checkpoint"),
        "{report}"
    );
    assert!(
        report.contains(": 6 records, 6 covered by a checkpoint"),
        "{report}"
    );
    assert!(!report.contains("not yet covered"), "{report}");
    outputs.push(report);

    // Rotation kept the chain: the new file's first line names the old
    // file's last; the restart chained to the last line of the file.
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = records(&audit_path);
    assert_eq!(
        new[0]["prev"],
        line_hash(old.lines().last().unwrap().as_bytes())
    );
    assert_eq!(new[0]["instance"], records(&rotated)[0]["instance"]);
    let restart = new
        .iter()
        .position(|r| r["instance"] != new[0]["instance"])
        .expect("a second instance");
    assert_eq!(new[restart]["seq"], 1);
    assert_eq!(
        new[restart]["prev"],
        line_hash(first_instance_end.lines().last().unwrap().as_bytes())
    );
    assert_eq!(new[restart]["resumes"]["instance"], new[0]["instance"]);
    assert_eq!(
        new.last().unwrap()["stage"],
        "checkpoint",
        "a clean stop ends with a checkpoint"
    );
    assert_checkpoints_every_5(records(&rotated).iter().chain(&new));

    let check = std::process::Command::new(binary_path())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(check.stdout).unwrap();
    assert!(check.status.success(), "{stdout}");
    assert!(stdout.contains(&public), "{stdout}");
    outputs.push(stdout);
    outputs.push(old);
    outputs.push(std::fs::read_to_string(&audit_path).unwrap());
    let secret = pem_body(&private);
    for output in &outputs {
        assert!(
            !output.contains(&secret),
            "the signing key leaked: {output}"
        );
    }
}

/// An intact trail of two instances, written in process: its lines, and
/// the public key's path.
async fn intact_trail() -> (TestDir, Vec<String>) {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let (dir, path, _, _) = signed_setup(&format!("http://{addr}"));
    let mut dir = dir;
    for round in 0..2 {
        let gw = start_gateway_from(dir, &path).await;
        let url = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
        for i in 0..6 {
            let (parts, _) = send(&client(), put(&url, &format!("r{round}-{i}"), "Acme")).await;
            assert_eq!(parts.status, 200);
        }
        dir = gw.shutdown().await;
    }
    let text = std::fs::read_to_string(dir.path("audit.jsonl")).unwrap();
    let lines = text.lines().map(str::to_owned).collect();
    (dir, lines)
}

/// Replaces the value of `"field":"..."` in a line.
fn set_string_field(line: &str, field: &str, value: &str) -> String {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key).unwrap() + key.len();
    let end = start + line[start..].find('"').unwrap();
    format!("{}{value}{}", &line[..start], &line[end..])
}

/// Edits line `at` and makes the chain after it whole again, re-signing
/// every checkpoint with `key`: what someone who can write the file, but
/// does not hold the signing key, can do at best.
fn forge(lines: &[String], at: usize, key: &Ed25519KeyPair) -> Vec<String> {
    let mut forged = lines.to_vec();
    forged[at] = forged[at].replace("Acme", "Evil");
    for i in at + 1..forged.len() {
        let prev = line_hash(forged[i - 1].as_bytes());
        let mut line = set_string_field(&forged[i], "prev", &prev);
        let record: Value = serde_json::from_str(&line).unwrap();
        if record["stage"] == "checkpoint" {
            let message = checkpoint_message(
                record["instance"].as_str().unwrap(),
                record["seq"].as_u64().unwrap(),
                &prev,
            );
            let signature =
                base64::engine::general_purpose::STANDARD.encode(key.sign(&message).as_ref());
            line = set_string_field(&line, "signature", &signature);
        }
        forged[i] = line;
    }
    forged
}

#[tokio::test]
async fn verify_names_the_line_and_kind_of_every_tampering() {
    let (dir, lines) = intact_trail().await;
    let public = dir.path("public.pem");
    let trail = dir.path("trail.jsonl");
    let check = |lines: &[String]| {
        std::fs::write(&trail, lines.join("\n") + "\n").unwrap();
        verify(&public, std::slice::from_ref(&trail))
    };
    let (code, report) = check(&lines);
    assert_eq!(code, 0, "{report}");

    // A request record in the middle of the first instance.
    let at = lines
        .iter()
        .position(|l| l.contains("\"r0-3\"") && l.contains("\"stage\":\"request\""))
        .unwrap();
    let restart = lines
        .iter()
        .position(|l| l.contains("\"resumes\""))
        .unwrap();
    let name = trail.display().to_string();
    let expect = |lines: Vec<String>, line: usize, kind: &str| {
        let (code, report) = check(&lines);
        assert_eq!(code, 1, "{kind}: {report}");
        assert!(
            report.starts_with(&format!("{name}:{line}: {kind}: ")),
            "expected {kind} at line {line}: {report}"
        );
    };

    let mut edited = lines.clone();
    edited[at] = edited[at].replace("Acme", "Evil");
    expect(edited, at + 1, "changed");

    let mut deleted = lines.clone();
    deleted.remove(at);
    expect(deleted, at + 1, "deleted");

    let mut inserted = lines.clone();
    inserted.insert(at + 1, lines[at].clone());
    expect(inserted, at + 2, "inserted");

    let mut swapped = lines.clone();
    swapped.swap(at, at + 1);
    expect(swapped, at + 1, "reordered");

    // The first instance's last three lines (its last records and its final
    // checkpoint) are cut; the second instance still names what it followed.
    let mut cut = lines.clone();
    cut.drain(restart - 3..restart);
    expect(cut, restart - 3, "cut tail");

    let attacker = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let forged = forge(&lines, at, &attacker);
    let first_checkpoint_after = (at + 1..forged.len())
        .find(|&i| forged[i].contains("\"stage\":\"checkpoint\""))
        .unwrap();
    expect(forged, first_checkpoint_after + 1, "bad signature");

    // A line torn by a crash at the very end is not tampering.
    let mut torn = lines.clone();
    torn.push(lines[at][..40].to_owned());
    let (code, report) = check(&torn);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!("{name}:{}: torn", lines.len() + 1)),
        "{report}"
    );

    // Records after the last checkpoint are reported, not refused.
    let uncovered = lines[..lines.len() - 1].to_vec();
    let (code, report) = check(&uncovered);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("10 covered by a checkpoint, 2 not yet covered by a checkpoint"),
        "{report}"
    );
}

/// The review's crash test: writes under load with `durability = "fsync"`,
/// SIGKILL, restart. Every write that got a 2xx has a durable `request`
/// record, `audit verify` passes with at most a torn line, and the new
/// instance chains on.
#[tokio::test]
async fn after_sigkill_every_acknowledged_write_is_recorded_and_the_chain_holds() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let (dir, path, _, _) = signed_setup(&format!("http://{addr}"));
    let audit_path = dir.path("audit.jsonl");
    let mut gw = Binary::serve(&path, &[]).await;
    let url = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    let answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut workers = Vec::new();
    for w in 0..16 {
        let (url, answered, enough) = (url.clone(), answered.clone(), enough_tx.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            for i in 0.. {
                let id = format!("kill-{w}-{i}");
                match within("a PUT's response", c.request(put(&url, &id, "Acme"))).await {
                    Ok(response) if response.status() == 200 => {
                        let mut done = answered.lock().unwrap();
                        done.push(id);
                        if done.len() == 300 {
                            let _ = enough.try_send(());
                        }
                    }
                    _ => return, // the gateway is gone
                }
            }
        }));
    }
    drop(enough_tx);
    within("300 acknowledged writes", enough_rx.recv())
        .await
        .expect("the workers stopped before 300 writes were answered");
    gw.child.start_kill().unwrap();
    gw.exit().await;
    for worker in workers {
        within("a load worker to stop", worker).await.unwrap();
    }
    let killed_at = std::fs::read(&audit_path).unwrap().len();

    let mut gw = Binary::serve(&path, &[]).await;
    let url = gw.url(&format!("/api/organizations/{CURRENT_ORG_ID}"));
    let (parts, _) = send(&client(), put(&url, "after-restart", "Acme")).await;
    assert_eq!(parts.status, 200);
    gw.signal("TERM");
    assert!(gw.exit().await.success());

    let (code, report) = verify(&dir.path("public.pem"), std::slice::from_ref(&audit_path));
    assert_eq!(code, 0, "{report}");
    assert!(report.matches("torn").count() <= 1, "{report}");

    let text = std::fs::read(&audit_path).unwrap();
    let recorded: HashSet<String> = text
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter(|r| r["stage"] == "request")
        .filter_map(|r| r["client_request_id"].as_str().map(str::to_owned))
        .collect();
    let parsed: Vec<Value> = text
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .collect();
    assert_checkpoints_every_5(parsed.iter());
    let answered = answered.lock().unwrap();
    assert!(answered.len() >= 300);
    for id in answered.iter().chain([&"after-restart".to_owned()]) {
        assert!(
            recorded.contains(id),
            "{id} was answered but has no durable request record"
        );
    }
    // The restarted instance's first line chains to the last complete line
    // written before the kill.
    let before = &text[..killed_at];
    let last_complete = before[..before.iter().rposition(|&b| b == b'\n').unwrap()]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap();
    let after: Value = serde_json::from_slice(
        text[killed_at..]
            .split(|&b| b == b'\n')
            .find(|l| serde_json::from_slice::<Value>(l).is_ok_and(|r| r["seq"] == 1))
            .expect("the new instance's first line"),
    )
    .unwrap();
    assert_eq!(after["prev"], line_hash(last_complete));
}
