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
const REFERENCE: &str = "docs/configuration.md";

/// Where the commands are documented.
const COMMANDS: &str = "docs/cli.md";

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
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_alphanumeric())
                .to_owned()
        })
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
    let docs = read(COMMANDS);
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
    assert!(missing.is_empty(), "{COMMANDS}:\n{}", missing.join("\n"));
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of the headings of a Markdown page (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every `[text](target)` of a page outside code blocks, with its line.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    out
}

/// The pages a reader moves between: README.md links to each page of
/// docs/, and every relative link and `#anchor` on them resolves.
#[test]
fn every_doc_page_is_linked_from_the_readme_and_every_link_resolves() {
    let root = root();
    let mut pages = vec![
        root.join("README.md"),
        root.join("TESTING.md"),
        root.join("BENCHMARKS.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 9, "docs/ has too few pages: {docs:?}");
    let readme = read("README.md");
    for page in &docs {
        let name = page.file_name().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("](docs/{name})")),
            "README.md does not link docs/{name}"
        );
    }
    pages.extend(docs);
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let dir = page.parent().unwrap();
        for (line, target) in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (target.as_str(), None),
            };
            let file = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let shown = format!("{}:{line}: {target}", page.display());
            if !file.exists() {
                broken.push(format!("{shown}: no such file"));
                continue;
            }
            if let Some(fragment) = fragment {
                let target_text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&target_text).contains(fragment) {
                    broken.push(format!("{shown}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The reference's Reloads column says what `reload::RESTART_ONLY` does: a
/// key of a restart-only section needs a restart unless the section lists it
/// as reloadable.
#[test]
fn the_reloads_column_agrees_with_the_code() {
    let text = read(REFERENCE);
    let mut rows = 0;
    let mut wrong = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(&said) = cells.get(3) else { continue };
        if !matches!(said, "yes" | "restart") {
            continue;
        }
        rows += 1;
        let key = rest.split_once('`').map_or(rest, |(key, _)| key);
        let (section, leaf) = key.split_once('.').unwrap_or((key, ""));
        let restart = polytomic_gateway::reload::RESTART_ONLY
            .iter()
            .any(|(s, reloadable)| *s == section && !reloadable.contains(&leaf));
        if restart != (said == "restart") {
            wrong.push(format!("{key}: says {said}"));
        }
    }
    assert!(rows >= 70, "only {rows} reference rows have a Reloads cell");
    assert!(wrong.is_empty(), "{REFERENCE}: {wrong:?}");
}

/// The fenced blocks of `lang` in a page: (line of the fence, body).
fn blocks(text: &str, lang: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line == format!("```{lang}") => current = Some((n + 1, String::new())),
            Some(_) if line.starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

fn doc_pages() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".md"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| (read(&n), n))
        .map(|(t, n)| (n, t))
        .collect()
}

/// Every TOML example in the docs is a config the gateway loads (unknown
/// keys are errors, so a renamed key fails here), or a `policy test` cases
/// file it parses.
#[test]
fn every_toml_example_in_the_docs_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (page, text) in doc_pages() {
        for (line, body) in blocks(&text, "toml") {
            let path = dir.path().join(format!("example-{checked}.toml"));
            std::fs::write(&path, &body).unwrap();
            checked += 1;
            let loaded = if body.contains("[[case]]") {
                polytomic_gateway::policy_cases::CaseSuite::load(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                polytomic_gateway::config::load(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = loaded {
                failures.push(format!("{page}:{line}: {e}"));
            }
        }
    }
    assert!(checked >= 4, "only {checked} TOML examples found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every `polytomic-gateway` command in a `sh` example of the docs runs as
/// written, from the repository root, when it needs no network and no
/// files of a deployment (`token`, `routes`, `policy explain`, `policy
/// test`), and exits as the example says (`!` expects a failure). Any other
/// command's subcommand and flags exist.
#[test]
fn every_command_example_in_the_docs_runs_or_parses() {
    let mut ran = 0;
    let mut failures = Vec::new();
    for (page, text) in doc_pages() {
        for (line, body) in blocks(&text, "sh") {
            for command in body.lines() {
                let (negated, command) = match command.strip_prefix("! ") {
                    Some(rest) => (true, rest),
                    None => (false, command),
                };
                let Some(args) = command.strip_prefix("polytomic-gateway ") else {
                    continue;
                };
                let args: Vec<&str> = args.split_whitespace().collect();
                let runnable = matches!(args.first(), Some(&"token" | &"routes" | &"policy"));
                let where_ = format!("{page}:{line}: {command}");
                if runnable {
                    let out = Command::new(env!("CARGO_BIN_EXE_polytomic-gateway"))
                        .args(&args)
                        .current_dir(root())
                        .env_remove("GATEWAY_CONFIG")
                        .output()
                        .expect("run polytomic-gateway");
                    ran += 1;
                    if out.status.success() == negated {
                        failures.push(format!("{where_}: exited {:?}", out.status.code()));
                    }
                } else {
                    let subcommand: Vec<&str> = args
                        .iter()
                        .take_while(|a| !a.starts_with('-'))
                        .copied()
                        .collect();
                    let mut help_args = subcommand.clone();
                    help_args.push("--help");
                    let help = gateway(&help_args);
                    for flag in args.iter().filter(|a| a.starts_with("--")) {
                        let flag = flag.split('=').next().unwrap_or(flag);
                        if !help.contains(flag) {
                            failures.push(format!("{where_}: {flag} is not a flag"));
                        }
                    }
                }
            }
        }
    }
    assert!(ran >= 3, "only {ran} command examples ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The README's quickstart is two commands: the demo (which tests/binary.rs
/// runs from an empty directory) and the tests, the same command CI runs.
#[test]
fn the_readme_quickstart_is_the_demo_and_the_ci_test_command() {
    let readme = read("README.md");
    let quickstart = readme
        .split_once("## Quickstart")
        .and_then(|(_, rest)| rest.split("\n## ").next())
        .expect("README.md has a Quickstart");
    let commands: Vec<String> = blocks(quickstart, "sh")
        .into_iter()
        .flat_map(|(_, body)| body.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        commands,
        ["cargo run --release -- demo", "cargo test --release"],
        "the quickstart's commands"
    );
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "cargo test --release"),
        ".ci/run does not run the README's test command"
    );
    assert!(
        readme.lines().count() <= 260,
        "README.md is {} lines: keep it to about 250, move detail to docs/",
        readme.lines().count()
    );
}
