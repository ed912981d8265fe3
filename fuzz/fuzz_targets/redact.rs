//! `audit::redact::Redactor`: no secret reaches the audit trail.
//!
//! Every input is tried as a JSON body (skipped if it is not JSON) and, when
//! it is UTF-8, as a query string.
//!
//! The required invariant, for bodies and queries alike: the redacted output
//! never contains a value found under a redacted key of the input. Secrets
//! are collected independently of the redactor, with its documented rules:
//! a key is redacted when, ignoring ASCII case, `_` and `-`, it ends with one
//! of `DEFAULT_REDACT_FIELDS`, at any depth, or when its path (object keys,
//! and `*` for an array item) is a schema secret path, where a `*` in the
//! schema path matches any segment; an array item is redacted when its path
//! is; a query parameter also when it is one of the operation's secret
//! parameters. Everything under such a key (string and number leaves, and
//! keys of nested objects) is secret. A secret
//! shorter than `MIN_SECRET` bytes is ignored (it can occur by coincidence),
//! and so is one that the output still contains when every secret of the
//! input is blanked first (it also appears outside redacted keys, or in the
//! output's own structure).
//!
//! Also checked: the output is exactly the input with each redacted value
//! replaced by `"[REDACTED]"`; with a fingerprint key, by
//! `"[REDACTED hmac:<12 hex>]"`, the same for equal values; a redacted query
//! parses back to the input's pairs with the secret values replaced.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use polytomic_gateway::audit::redact::{Redactor, DEFAULT_REDACT_FIELDS};
use polytomic_gateway::validate::CompiledSchema;
use serde_json::{Map, Value};

/// Shorter secrets are not looked for in the output.
const MIN_SECRET: usize = 4;

const REPLACEMENT: &str = "[REDACTED]";

struct Setup {
    plain: Redactor,
    fingerprinted: Redactor,
    write_only: Vec<Vec<String>>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let fields: Vec<String> = DEFAULT_REDACT_FIELDS
            .iter()
            .map(|f| f.to_string())
            .collect();
        // The real schema's writeOnly paths, plus a nested one.
        let schema = CompiledSchema::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/organization-update.json"
        )))
        .expect("the update schema compiles");
        let mut write_only = schema.write_only_paths().to_vec();
        assert!(!write_only.is_empty());
        write_only.push(vec!["sso".into(), "signing".into(), "key".into()]);
        // Array items and map values, as the catalog's schemas have them.
        write_only.push(vec!["fields".into(), "*".into(), "material".into()]);
        write_only.push(vec!["headers".into(), "*".into()]);
        Setup {
            plain: Redactor::new(&fields, None),
            fingerprinted: Redactor::new(&fields, Some(b"fuzz-fingerprint-key")),
            write_only,
        }
    })
}

/// The operation's own secret query parameters (`query_runner.run_query`'s).
const SECRET_QUERY: &[&str] = &["query"];

/// `s` lower-cased, without `_` and `-`.
fn folded(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn is_field(key: &str) -> bool {
    let key = folded(key);
    DEFAULT_REDACT_FIELDS
        .iter()
        .any(|f| key.ends_with(&folded(f)))
}

/// Whether `path` is a schema secret path (`*` there matches any segment).
fn is_secret_path(write_only: &[Vec<String>], path: &[String]) -> bool {
    write_only
        .iter()
        .any(|p| p.len() == path.len() && p.iter().zip(path).all(|(p, s)| p == "*" || p == s))
}

/// Every string and number leaf, and every object key, under `value`.
fn leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        Value::Object(object) => {
            for (k, v) in object {
                out.push(k.clone());
                leaves(v, out);
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Independently: the secrets, the expected output, and the input with
/// every secret blanked.
fn split(
    value: &Value,
    write_only: &[Vec<String>],
    path: &mut Vec<String>,
    secrets: &mut Vec<(Vec<String>, Value)>,
) -> (Value, Value) {
    match value {
        Value::Object(object) => {
            let mut expected = Map::new();
            let mut blanked = Map::new();
            for (key, child) in object {
                path.push(key.clone());
                if is_field(key) || is_secret_path(write_only, path) {
                    secrets.push((path.clone(), child.clone()));
                    expected.insert(key.clone(), Value::String(REPLACEMENT.into()));
                    blanked.insert(key.clone(), Value::Null);
                } else {
                    let (e, b) = split(child, write_only, path, secrets);
                    expected.insert(key.clone(), e);
                    blanked.insert(key.clone(), b);
                }
                path.pop();
            }
            (Value::Object(expected), Value::Object(blanked))
        }
        Value::Array(items) => {
            path.push("*".into());
            let (e, b) = if is_secret_path(write_only, path) {
                for item in items {
                    secrets.push((path.clone(), item.clone()));
                }
                let replaced = vec![Value::String(REPLACEMENT.into()); items.len()];
                (replaced, vec![Value::Null; items.len()])
            } else {
                items
                    .iter()
                    .map(|item| split(item, write_only, path, secrets))
                    .unzip()
            };
            path.pop();
            (Value::Array(e), Value::Array(b))
        }
        other => (other.clone(), other.clone()),
    }
}

/// Whether `fingerprinted` is `expected` with each `"[REDACTED]"` that
/// replaced a secret written as a well-formed fingerprint instead.
fn same_but_fingerprints(fingerprinted: &Value, expected: &Value) -> bool {
    match (fingerprinted, expected) {
        (Value::String(got), Value::String(want)) if want == REPLACEMENT && got != want => got
            .strip_prefix("[REDACTED hmac:")
            .and_then(|s| s.strip_suffix(']'))
            .is_some_and(|hex| hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
        (Value::Array(got), Value::Array(want)) => {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| same_but_fingerprints(g, w))
        }
        (Value::Object(got), Value::Object(want)) => {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|((gk, gv), (wk, wv))| gk == wk && same_but_fingerprints(gv, wv))
        }
        (got, want) => got == want,
    }
}

/// The ways a secret could show in serialized JSON.
fn json_forms(secret: &str) -> [String; 2] {
    let escaped = serde_json::to_string(secret).expect("a string serializes");
    [secret.to_owned(), escaped[1..escaped.len() - 1].to_owned()]
}

fn check_json(value: &Value) {
    let s = setup();
    let mut secrets = Vec::new();
    let (expected, blanked) = split(value, &s.write_only, &mut Vec::new(), &mut secrets);
    let out = s.plain.redact_json(value, &s.write_only);
    let text = serde_json::to_string(&out).expect("serializes");
    let baseline =
        serde_json::to_string(&s.plain.redact_json(&blanked, &s.write_only)).expect("serializes");
    for (path, secret) in &secrets {
        let mut found = Vec::new();
        leaves(secret, &mut found);
        for leaf in found.iter().filter(|l| l.len() >= MIN_SECRET) {
            for form in json_forms(leaf) {
                assert!(
                    !text.contains(&form) || baseline.contains(&form),
                    "secret {leaf:?} under {path:?} leaked into the audit body: {text}"
                );
            }
        }
    }
    assert_eq!(out, expected, "redaction differs from the documented rules");

    let fingerprinted = s.fingerprinted.redact_json(value, &s.write_only);
    assert!(
        same_but_fingerprints(&fingerprinted, &expected),
        "fingerprinting changed more than the redacted values: {fingerprinted}"
    );
    assert_eq!(
        fingerprinted,
        s.fingerprinted.redact_json(value, &s.write_only),
        "fingerprints are not deterministic"
    );
}

fn check_query(query: &str) {
    let s = setup();
    // The redactor splits pairs at `;` as well as `&`.
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.replace(';', "&").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let secret_query: Vec<Box<str>> = SECRET_QUERY.iter().map(|q| (*q).into()).collect();
    let is_secret = |k: &str| is_field(k) || SECRET_QUERY.contains(&k);
    let out = s.plain.redact_query(query, &secret_query);
    let blanked: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), if is_secret(k) { "" } else { v.as_str() })),
        )
        .finish();
    let baseline = s.plain.redact_query(&blanked, &secret_query);
    for (name, value) in pairs.iter().filter(|(k, _)| is_secret(k)) {
        if value.len() < MIN_SECRET {
            continue;
        }
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        for form in [value.as_str(), encoded.as_str()] {
            assert!(
                !out.contains(form) || baseline.contains(form),
                "secret {value:?} of query parameter {name:?} leaked: {out:?}"
            );
        }
    }
    let expected: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            let v = if is_secret(k) {
                REPLACEMENT
            } else {
                v.as_str()
            };
            (k.clone(), v.to_owned())
        })
        .collect();
    let back: Vec<(String, String)> = url::form_urlencoded::parse(out.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(back, expected, "the redacted query does not parse back");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        check_json(&value);
    }
    if let Ok(query) = std::str::from_utf8(data) {
        check_query(query);
    }
});
