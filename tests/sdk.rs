//! The official Python SDK, driven through the gateway with the catalog on.
//!
//! `tests/sdk/drive.py` runs the documented example call of every SDK
//! operation (198, in 31 resources) against a gateway in front of a local
//! upstream that records what it receives. Each call must reach the upstream
//! with the right credential, the version header and the path exactly as
//! the SDK sent it; a caller no rule allows must get a 403 the SDK raises as
//! its own typed error; a body with an unknown field must get a 422 the SDK
//! raises as its own typed error. Neither refusal reaches the upstream.
//!
//! The SDK, pinned in catalog/requirements.txt, is installed from PyPI into
//! target/sdk-venv by `catalog/generate.sh --venv` (the venv CI's catalog
//! check uses too).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use common::*;
use http::Response;
use serde_json::Value;

/// What the upstream received for one call (by its `X-Test-Call`).
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    authorization: String,
    version: String,
}

/// Runs `catalog/generate.sh --venv`: the venv's python, with the SDK.
async fn sdk_python() -> String {
    let script = format!("{}/catalog/generate.sh", env!("CARGO_MANIFEST_DIR"));
    // Installing from PyPI on a fresh machine takes a while; bounded all the same.
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        tokio::process::Command::new(&script).arg("--venv").output(),
    )
    .await
    .expect("the SDK venv is ready within 10 minutes")
    .expect("catalog/generate.sh runs");
    assert!(
        output.status.success(),
        "catalog/generate.sh --venv failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_operation_is_forwarded_refused_and_typed_as_the_sdk_expects() {
    let python = sdk_python().await;
    let received: Arc<Mutex<HashMap<String, Vec<Received>>>> = Arc::default();
    let upstream = spawn_upstream({
        let received = received.clone();
        move |req: http::Request<hyper::body::Incoming>| {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let call = header("x-test-call");
            received
                .lock()
                .unwrap()
                .entry(call)
                .or_default()
                .push(Received {
                    method: req.method().to_string(),
                    target: req.uri().path_and_query().unwrap().to_string(),
                    authorization: header("authorization"),
                    version: header("x-polytomic-version"),
                });
            async move {
                Response::builder()
                    .header("content-type", "application/json")
                    .body(upstream_body(r#"{"data":null}"#))
                    .unwrap()
            }
        }
    })
    .await;
    let dir = TestDir::new();
    // Team platform may do everything; team outsider only one operation, on
    // an organization no example names, so every call it makes is refused.
    let extra = format!(
        "{}\n[[policy.rules]]\nname = \"platform-all\"\nteams = [\"platform\"]\nallow = [\"*\"]\n\n[[policy.rules]]\nname = \"outsider\"\nteams = [\"outsider\"]\nallow = [\"organization.get\"]\norganizations = [\"00000000-0000-4000-8000-000000000000\"]\n",
        catalog_section(&dir)
    );
    let path = dir.config(&format!("http://{upstream}"), &extra);
    let gateway = start_gateway_from(dir, &path).await;
    let outsider = sign(
        "rsa-a",
        jsonwebtoken::Algorithm::RS256,
        &claims("eve@corp", &["outsider"]),
    );

    let output = within(
        "the SDK driver to run every operation",
        tokio::process::Command::new(&python)
            .arg(format!("{}/tests/sdk/drive.py", env!("CARGO_MANIFEST_DIR")))
            .env("GATEWAY_URL", gateway.url(""))
            .env("ALLOWED_TOKEN", token())
            .env("DENIED_TOKEN", &outsider)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "drive.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();

    let received = received.lock().unwrap().clone();
    let mut operations = BTreeSet::new();
    let mut resources = BTreeSet::new();
    let mut modes: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for r in &results {
        let operation = r["operation"].as_str().unwrap();
        let mode = r["mode"].as_str().unwrap();
        let call = r["call"].as_str().unwrap();
        operations.insert(operation.to_owned());
        resources.insert(r["resource"].as_str().unwrap().to_owned());
        *modes.entry(mode.to_owned()).or_default() += 1;
        let sent = &r["sent"];
        let got = received.get(call).cloned().unwrap_or_default();
        let mut fail = |what: String| failures.push(format!("{operation} ({mode}): {what}"));
        if !sent.is_object() {
            fail("the SDK sent nothing".into());
            continue;
        }
        match mode {
            "allowed" => {
                let [got] = &got[..] else {
                    fail(format!("reached the upstream {} times: {r}", got.len()));
                    continue;
                };
                if got.method != sent["method"] || got.target != sent["target"] {
                    fail(format!(
                        "sent {} {}, upstream got {} {}",
                        sent["method"], sent["target"], got.method, got.target
                    ));
                }
                let partner =
                    operation.starts_with("organization.") || operation.starts_with("users.");
                let key = if partner { PARTNER_KEY } else { ORG_KEY };
                if got.authorization != format!("Bearer {key}") {
                    fail("the wrong credential upstream".into());
                }
                if got.version != "2025-09-18" {
                    fail(format!("X-Polytomic-Version {:?}", got.version));
                }
            }
            "denied" | "invalid" => {
                let (status, key, class) = if mode == "denied" {
                    (403, "forbidden", "ForbiddenError")
                } else {
                    (422, "invalid_body", "UnprocessableEntityError")
                };
                if !got.is_empty() {
                    fail("reached the upstream".into());
                }
                if r["status"] != status || r["body"]["key"] != key {
                    fail(format!("expected {status} {key}: {r}"));
                }
                // Where the SDK declares the status, it raises its own typed
                // error with the body parsed as its ApiError type; elsewhere
                // the generic ApiError with the status and body.
                let declared = r["typed_statuses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == status);
                let expected_class = if declared { class } else { "ApiError" };
                if r["error_class"] != expected_class || (declared && r["body_typed"] != true) {
                    fail(format!("expected the SDK's {expected_class}: {r}"));
                }
                if mode == "invalid" {
                    let pointers: Vec<&Value> = r["body"]["metadata"]["errors"]
                        .as_array()
                        .map(|errors| errors.iter().map(|e| &e["pointer"]).collect())
                        .unwrap_or_default();
                    if pointers != ["/x_gateway_test_unknown"] {
                        fail(format!("422 pointers {pointers:?}"));
                    }
                }
            }
            other => fail(format!("unknown mode {other}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(operations.len(), 198, "every SDK operation ran");
    assert_eq!(resources.len(), 31, "{resources:?}");
    assert_eq!(modes["allowed"], 198);
    assert_eq!(modes["denied"], 198);
    assert_eq!(modes["invalid"], 63, "every operation with a JSON body");
    // Nothing but the allowed calls reached the upstream.
    assert_eq!(received.values().map(Vec::len).sum::<usize>(), 198);
    gateway.shutdown().await;
}
