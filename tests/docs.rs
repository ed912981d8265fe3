//! Docs that cannot drift (issue 22).
//!
//! - Every config key the gateway accepts is a row of the configuration
//!   reference, and every row names a key it accepts. The accepted keys come
//!   from the config structs themselves: a config setting every section and
//!   one entry of every list and map (`tests/fixtures/docs/every-section.toml`)
//!   is loaded as `serve` loads it, then serialized, so a field added to any
//!   layer's config struct shows up here without anyone listing it.
//! - Every subcommand and every flag in `--help` appears in the docs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Where the configuration reference lives.
const REFERENCE: &str = "README.md";

/// The config file's top-level sections: a reference row names a key when
/// its first cell starts with one of these and a `.` or `[`.
const SECTIONS: &[&str] = &[
    "server",
    "upstream",
    "polytomic",
    "credentials",
    "auth",
    "routes",
    "catalog",
    "policy",
    "audit",
    "telemetry",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The key of every reference row: the first cell, in backquotes, of a
/// row of a table whose header is `| Key | Type | Default | ...`.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_reference = false;
    for line in text.lines() {
        if !line.starts_with('|') {
            in_reference = false;
            continue;
        }
        if line.starts_with("| Key | Type | Default |") {
            in_reference = true;
            continue;
        }
        let key = line
            .strip_prefix("| `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, _)| key);
        if let (true, Some(key)) = (in_reference, key) {
            let in_a_section = SECTIONS.iter().any(|s| {
                key.strip_prefix(s)
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
            });
            // Other files' references (the `policy test` cases file) share
            // the header; their keys name no section.
            if in_a_section {
                keys.insert(key.to_owned());
            }
        }
    }
    keys
}

/// The keys in `value`, as the reference names them: `section.key`,
/// `list[N].key`, `credentials.NAME.key`; a secret source (`{env, file}`) is
/// one key.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if is_secret_source(map) && !prefix.is_empty() => {
            out.insert(prefix.to_owned());
        }
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix == "credentials" {
                    "NAME"
                } else {
                    key.as_str()
                };
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for item in items {
                flatten(&format!("{prefix}[N]"), item, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

/// A `SecretSourceConfig`: exactly `env` and `file`.
fn is_secret_source(map: &serde_json::Map<String, Value>) -> bool {
    map.len() == 2 && map.contains_key("env") && map.contains_key("file")
}

fn accepted_keys() -> BTreeSet<String> {
    let path = root().join("tests/fixtures/docs/every-section.toml");
    let config = polytomic_gateway::config::load(&path).expect("the fixture loads");
    let value = serde_json::to_value(&config).expect("the config serializes");
    for section in SECTIONS {
        assert!(
            !value[section].is_null(),
            "the fixture leaves [{section}] unset: set it, so its keys are checked"
        );
    }
    let mut keys = BTreeSet::new();
    flatten("", &value, &mut keys);
    keys
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let accepted = accepted_keys();
    let documented = documented_keys(&read(REFERENCE));
    let undocumented: Vec<&String> = accepted.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "the configuration reference in {REFERENCE} has drifted from the config structs:\n\
         accepted but not documented: {undocumented:?}\n\
         documented but not accepted: {unknown:?}"
    );
    // The check itself: a reference missing a key, or naming one that does
    // not exist, is caught.
    let mut short = documented.clone();
    let dropped = short.pop_first().expect("some keys are documented");
    assert!(!accepted.is_subset(&short), "{dropped} dropped unnoticed");
    assert!(!accepted.contains("server.no_such_key"));
}

fn gateway(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_polytomic-gateway"))
        .args(args)
        .env_remove("GATEWAY_CONFIG")
        .output()
        .expect("run polytomic-gateway");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The subcommands listed under `Commands:` in `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The long flags in `help`'s `Options:`.
fn flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ','))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_alphanumeric()).to_owned())
        .filter(|w| w != "--help" && w != "--version")
        .collect()
}

/// Every command path (`policy explain`) with its flags, from `--help`.
fn commands(path: &mut Vec<String>, out: &mut Vec<(String, BTreeSet<String>)>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = gateway(&args);
    let subs = subcommands(&help);
    if subs.is_empty() {
        out.push((path.join(" "), flags(&help)));
    }
    for sub in subs {
        path.push(sub);
        commands(path, out);
        path.pop();
    }
}

#[test]
fn every_subcommand_and_flag_in_help_is_documented() {
    let docs = read(REFERENCE);
    let mut found = Vec::new();
    commands(&mut Vec::new(), &mut found);
    assert!(found.len() >= 8, "too few commands found: {found:?}");
    let mut missing = Vec::new();
    for (command, flags) in &found {
        let usage = format!("polytomic-gateway {command}");
        let Some(line) = docs.lines().find(|l| l.contains(&usage)) else {
            missing.push(format!("`{usage}` is not documented"));
            continue;
        };
        for flag in flags {
            let documented = line.contains(flag.as_str())
                || docs.contains(&format!("{usage} {flag}"))
                || docs.contains(&format!("`{flag}"));
            if !documented {
                missing.push(format!("{usage}: {flag} is not documented"));
            }
        }
    }
    assert!(missing.is_empty(), "{REFERENCE}:\n{}", missing.join("\n"));
}
