//! What validating a write body costs, per request.
//!
//! ```sh
//! cargo bench --bench validate
//! ```
//!
//! Each body is measured three ways, so the two halves of the work show
//! separately:
//!
//! - `parse_strict`: the strict parse alone (UTF-8, duplicate keys, the
//!   depth and value-count limits at their defaults);
//! - `validate`: the schema check alone, on a `Value` parsed beforehand;
//! - `check_body`: both, as `ValidateLayer` runs them on a buffered body.
//!
//! The bodies:
//!
//! - `typical`: a valid organization update of about 300 bytes (`name`,
//!   `client_id`, `client_secret`, an https `issuer`, `sso_domain`,
//!   `sso_org_id`), against `schemas/organization-update.json`.
//! - `invalid`: an update with four violations (a `name` of the wrong type,
//!   an `issuer` that is not a URI, an `sso_domain` that is not a hostname,
//!   an unknown field), against the same schema. `validate` and `check_body`
//!   end in the 422's list of violations.
//! - `long_name`: a valid update of 64 KiB, nearly all of it a long `name`
//!   (the update schema refuses extra fields, so this is how a body that
//!   large can pass it).
//! - `nested`: 64 KiB of valid JSON with 200 nested records (objects,
//!   arrays, `uri`, `hostname` and `uuid` formats), against a permissive
//!   schema (extra fields allowed) compiled with `CompiledSchema::compile`.
//!
//! `duplicate_keys/*` measures what refusing duplicate keys costs:
//! `parse_strict` against plain `serde_json::from_slice::<Value>` on the same
//! bodies, among them a flat object of 4,096 distinct keys, where the check
//! runs once per key.
//!
//! Only the library's public API is used.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use polytomic_gateway::validate::{check_body, parse_strict, CompiledSchema, JsonLimits};
use serde_json::{json, Value};

/// The size the large bodies are built up to.
const LARGE_BYTES: usize = 64 * 1024;
/// Keys in the flat object of `duplicate_keys/many_keys`.
const MANY_KEYS: usize = 4096;
/// Records in the `nested` body.
const RECORDS: usize = 200;

/// `schemas/organization-update.json`, compiled once as the gateway does.
fn update_schema() -> CompiledSchema {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/organization-update.json");
    CompiledSchema::load(&path).expect("the update schema compiles")
}

/// A schema for the `nested` body: typed and with formats, but allowing
/// fields it does not list.
fn permissive_schema() -> CompiledSchema {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["organizations"],
        "properties": {
            "organizations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "name", "sso"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "name": { "type": "string", "minLength": 1 },
                        "seats": { "type": "integer", "minimum": 0 },
                        "tags": { "type": "array", "items": { "type": "string" } },
                        "sso": {
                            "type": "object",
                            "properties": {
                                "issuer": { "type": "string", "format": "uri" },
                                "domain": { "type": "string", "format": "hostname" },
                                "enabled": { "type": "boolean" }
                            }
                        }
                    }
                }
            }
        }
    });
    CompiledSchema::compile("bench-permissive", schema).expect("the permissive schema compiles")
}

fn typical_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": "Acme Corporation (EMEA)",
        "client_id": "0oa1b2c3d4e5f6g7h8i9",
        "client_secret": "hY3kP9sQ2vX7zR4mN8bW1cJ6tF5gL0dA-Secret-Value-0123456789",
        "issuer": "https://acme-emea.okta.example.com/oauth2/default",
        "sso_domain": "emea.acme.example",
        "sso_org_id": "org_7f3c2a91b8d04e5f9a6c1d2e3f4a5b6c"
    }))
    .unwrap()
}

fn invalid_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": 42,
        "client_id": "0oa1b2c3d4e5f6g7h8i9",
        "client_secert": "hY3kP9sQ2vX7zR4mN8bW1cJ6tF5gL0dA-Secret-Value-0123456789",
        "issuer": "not a uri",
        "sso_domain": "-bad_host-.acme..example",
        "sso_org_id": "org_7f3c2a91b8d04e5f9a6c1d2e3f4a5b6c"
    }))
    .unwrap()
}

/// A valid update of [`LARGE_BYTES`], nearly all `name`.
fn long_name_body() -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&typical_body()).unwrap();
    let rest = serde_json::to_vec(&body).unwrap().len();
    body["name"] = Value::String("Acme ".repeat((LARGE_BYTES - rest) / 5 + 5));
    let mut bytes = serde_json::to_vec(&body).unwrap();
    // Trim the name to land on exactly LARGE_BYTES.
    let excess = bytes.len() - LARGE_BYTES;
    let mut name = body["name"].as_str().unwrap().to_owned();
    name.truncate(name.len() - excess);
    body["name"] = Value::String(name);
    bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(bytes.len(), LARGE_BYTES);
    bytes
}

/// [`RECORDS`] nested records, padded to [`LARGE_BYTES`] with each record's
/// `notes` (a field the permissive schema does not list).
fn nested_body() -> Vec<u8> {
    let record = |n: usize, notes: &str| {
        json!({
            "id": format!("248df4b7-aa70-47b8-a036-{n:012x}"),
            "name": format!("Organization {n}"),
            "seats": n % 250,
            "tags": ["sso", "emea", format!("tier-{}", n % 3)],
            "sso": {
                "issuer": format!("https://idp-{n}.example.com/oauth2/default"),
                "domain": format!("org-{n}.example.com"),
                "enabled": n.is_multiple_of(2)
            },
            "notes": notes
        })
    };
    let build = |pad: usize| {
        let notes = "x".repeat(pad);
        let records: Vec<Value> = (0..RECORDS).map(|n| record(n, &notes)).collect();
        serde_json::to_vec(&json!({ "organizations": records })).unwrap()
    };
    let bare = build(0).len();
    assert!(bare < LARGE_BYTES, "{RECORDS} records take {bare} bytes");
    build((LARGE_BYTES - bare) / RECORDS)
}

/// A flat object of [`MANY_KEYS`] distinct keys.
fn many_keys_body() -> Vec<u8> {
    let object: serde_json::Map<String, Value> = (0..MANY_KEYS)
        .map(|n| (format!("field_{n:04}"), Value::from(n)))
        .collect();
    serde_json::to_vec(&object).unwrap()
}

/// The three measurements of one body against one schema.
fn bench_body(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    schema: &CompiledSchema,
    body: &[u8],
    violations: usize,
) {
    eprintln!("{name}: {} bytes", body.len());
    // Every case must measure the outcome it names.
    let parsed = parse_strict(body, JsonLimits::DEFAULT).expect("the body is strict JSON");
    match schema.validate(&parsed) {
        Ok(()) => assert_eq!(violations, 0, "{name} should be invalid"),
        Err(found) => assert_eq!(found.len(), violations, "{name}: {found:?}"),
    }
    assert_eq!(
        check_body(schema, body, JsonLimits::DEFAULT).is_ok(),
        violations == 0
    );

    group.bench_function(format!("{name}/parse_strict"), |b| {
        b.iter(|| parse_strict(black_box(body), JsonLimits::DEFAULT).expect("parses"))
    });
    group.bench_function(format!("{name}/validate"), |b| {
        b.iter(|| schema.validate(black_box(&parsed)))
    });
    group.bench_function(format!("{name}/check_body"), |b| {
        b.iter(|| check_body(schema, black_box(body), JsonLimits::DEFAULT))
    });
}

/// `parse_strict` against serde_json's own parse of the same body.
fn bench_duplicate_keys(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    body: &[u8],
) {
    let plain: Value = serde_json::from_slice(body).expect("valid JSON");
    assert_eq!(
        parse_strict(body, JsonLimits::DEFAULT).expect("strict JSON"),
        plain
    );
    group.bench_function(format!("duplicate_keys/{name}/parse_strict"), |b| {
        b.iter(|| parse_strict(black_box(body), JsonLimits::DEFAULT).expect("parses"))
    });
    group.bench_function(format!("duplicate_keys/{name}/serde_json"), |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(body)).expect("parses"))
    });
}

fn validate(c: &mut Criterion) {
    let update = update_schema();
    let permissive = permissive_schema();
    let typical = typical_body();
    let invalid = invalid_body();
    let long_name = long_name_body();
    let nested = nested_body();
    let many_keys = many_keys_body();
    eprintln!("many_keys: {} bytes", many_keys.len());

    let mut group = c.benchmark_group("validate");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    bench_body(&mut group, "typical", &update, &typical, 0);
    bench_body(&mut group, "invalid", &update, &invalid, 4);
    bench_body(&mut group, "long_name", &update, &long_name, 0);
    bench_body(&mut group, "nested", &permissive, &nested, 0);

    bench_duplicate_keys(&mut group, "typical", &typical);
    bench_duplicate_keys(&mut group, "nested", &nested);
    bench_duplicate_keys(&mut group, "many_keys", &many_keys);

    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
