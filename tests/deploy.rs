//! The deployment files: deploy/kubernetes/ and the Dockerfile.
//!
//! CI validates the manifests against the Kubernetes schemas
//! (deploy/validate.sh). This checks what a schema cannot: that the
//! ConfigMap's gateway config passes `check` with the files the pod gives
//! it, that the rest of the manifest agrees with that config, and that the
//! Dockerfile copies what the build needs and builds what CI builds. There
//! is no Docker engine here to build the image itself.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

// ---- a reader for the manifests' YAML ---------------------------------------
//
// No YAML parser is among our dependencies, and these files need only block
// mappings and sequences nested by indentation, plain, quoted and flow
// scalars, one block scalar and comments. Anything else makes a lookup
// panic, naming the key, rather than guess.

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines that carry content: no blank lines, no comments.
fn significant(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.to_owned();
        }
    }
    value.to_owned()
}

/// `key` in the block mapping `text` (its keys are its least indented
/// lines): the rest of the key's line, unquoted, or the lines nested under
/// it. `None` if the mapping has no such key; panics if it has it twice.
fn lookup(text: &str, key: &str) -> Option<String> {
    let lines = significant(text);
    let base = lines.iter().map(|l| indent(l)).min()?;
    let mut found = None;
    for (i, line) in lines.iter().enumerate() {
        if indent(line) != base {
            continue;
        }
        let Some(rest) = line
            .trim()
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
        else {
            continue;
        };
        assert!(found.is_none(), "`{key}` twice in:\n{text}");
        found = Some(if rest.trim().is_empty() {
            let nested: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| indent(l) > base)
                .copied()
                .collect();
            assert!(!nested.is_empty(), "`{key}` has no value");
            nested.join("\n")
        } else {
            unquote(rest)
        });
    }
    found
}

fn get(text: &str, key: &str) -> String {
    lookup(text, key).unwrap_or_else(|| panic!("no `{key}` in:\n{text}"))
}

/// Follows `keys` down nested mappings.
fn at(text: &str, keys: &[&str]) -> String {
    keys.iter()
        .fold(text.to_owned(), |text, key| get(&text, key))
}

/// The keys of the block mapping `text`.
fn keys(text: &str) -> Vec<String> {
    let lines = significant(text);
    let base = lines.iter().map(|l| indent(l)).min().unwrap_or(0);
    lines
        .iter()
        .filter(|l| indent(l) == base)
        .map(|l| {
            let (key, _) = l.trim().split_once(':').expect("a mapping key");
            unquote(key)
        })
        .collect()
}

/// The items of the block sequence `text`, each as a mapping.
fn items(text: &str) -> Vec<String> {
    let lines = significant(text);
    let base = lines.iter().map(|l| indent(l)).min().unwrap_or(0);
    let mut items: Vec<Vec<String>> = Vec::new();
    for line in lines {
        if indent(line) == base {
            let rest = line
                .trim_start()
                .strip_prefix("- ")
                .unwrap_or_else(|| panic!("not a sequence item: {line:?}"));
            items.push(vec![format!("{}  {rest}", " ".repeat(base))]);
        } else {
            items.last_mut().expect("an item").push(line.to_owned());
        }
    }
    items.into_iter().map(|lines| lines.join("\n")).collect()
}

/// The item of sequence `text` whose `name` is `name`.
fn named(text: &str, name: &str) -> String {
    let mut found = items(text)
        .into_iter()
        .filter(|item| lookup(item, "name").as_deref() == Some(name));
    let item = found
        .next()
        .unwrap_or_else(|| panic!("no item named {name:?}"));
    assert!(found.next().is_none(), "two items named {name:?}");
    item
}

/// A flow sequence of scalars: `["serve", "--config", "FILE"]`.
fn flow_list(value: &str) -> Vec<String> {
    let inner = value
        .trim()
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a flow sequence: {value}"));
    inner.split(',').map(unquote).collect()
}

/// The literal block scalar under `key: |` (at any depth), as its text.
fn block_scalar(yaml: &str, key: &str) -> String {
    let header = format!("{key}: |");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != header);
    let key_indent = indent(lines.next().unwrap_or_else(|| panic!("no `{header}`")));
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
        .collect();
    let body_indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .expect("an empty block scalar");
    let mut text: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(body_indent..).unwrap_or("")))
        .collect();
    // `|` keeps one final newline.
    text.truncate(text.trim_end().len());
    text.push('\n');
    text
}

#[test]
fn the_yaml_reader_reads_what_the_manifests_use() {
    let yaml = "\
# a comment
kind: Example
spec:
  # nested comment
  list:
    - name: one
      value: \"1\"
    - name: two
      flags: [\"a\", 'b']
  text: |
    first
      indented

    # kept: it is in the block
    last
after: 'x'
";
    assert_eq!(get(yaml, "kind"), "Example");
    assert_eq!(get(yaml, "after"), "x");
    assert_eq!(lookup(yaml, "missing"), None);
    assert_eq!(keys(&get(yaml, "spec")), ["list", "text"]);
    let list = at(yaml, &["spec", "list"]);
    assert_eq!(items(&list).len(), 2);
    assert_eq!(get(&named(&list, "one"), "value"), "1");
    assert_eq!(flow_list(&get(&named(&list, "two"), "flags")), ["a", "b"]);
    assert_eq!(
        block_scalar(yaml, "text"),
        "first\n  indented\n\n# kept: it is in the block\nlast\n"
    );
}

// ---- the manifests ----------------------------------------------------------

const MANIFESTS: &str = "deploy/kubernetes";
const GATEWAY_CONTAINER: &str = "polytomic-gateway";

struct Manifests {
    config_map: String,
    secret: String,
    deployment: String,
}

impl Manifests {
    fn read() -> Self {
        Self {
            config_map: read(&format!("{MANIFESTS}/configmap.yaml")),
            secret: read(&format!("{MANIFESTS}/secret.yaml")),
            deployment: read(&format!("{MANIFESTS}/deployment.yaml")),
        }
    }

    /// The ConfigMap's gateway config, as the gateway reads it.
    fn gateway_toml(&self) -> String {
        assert_eq!(keys(&get(&self.config_map, "data")), ["gateway.toml"]);
        block_scalar(&self.config_map, "gateway.toml")
    }

    fn pod(&self) -> String {
        at(&self.deployment, &["spec", "template", "spec"])
    }

    /// The gateway: a native sidecar, so an init container.
    fn gateway(&self) -> String {
        named(&get(&self.pod(), "initContainers"), GATEWAY_CONTAINER)
    }

    /// The gateway's mounts: mount path and what the volume holds.
    fn mounts(&self) -> Vec<(String, Volume)> {
        let volumes = get(&self.pod(), "volumes");
        items(&get(&self.gateway(), "volumeMounts"))
            .iter()
            .map(|mount| {
                let volume = named(&volumes, &get(mount, "name"));
                let volume = if let Some(config_map) = lookup(&volume, "configMap") {
                    assert_eq!(
                        get(&config_map, "name"),
                        at(&self.config_map, &["metadata", "name"]),
                        "the config volume is not configmap.yaml's ConfigMap"
                    );
                    Volume::ConfigMap
                } else if let Some(secret) = lookup(&volume, "secret") {
                    assert_eq!(
                        get(&secret, "secretName"),
                        at(&self.secret, &["metadata", "name"]),
                        "the secret volume is not secret.yaml's Secret"
                    );
                    assert_eq!(lookup(&secret, "items"), None, "keys are file names");
                    Volume::Secret
                } else if lookup(&volume, "emptyDir").is_some() {
                    Volume::EmptyDir
                } else {
                    panic!("a volume of a kind this test does not know:\n{volume}")
                };
                (get(mount, "mountPath"), volume)
            })
            .collect()
    }

    /// The Secret's keys and their values as committed.
    fn secret_data(&self) -> BTreeMap<String, String> {
        let data = get(&self.secret, "stringData");
        keys(&data)
            .into_iter()
            .map(|key| {
                let value = get(&data, &key);
                (key, value)
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Volume {
    ConfigMap,
    Secret,
    EmptyDir,
}

/// The value of `key = ...` in the config's `[section]`, unquoted.
fn toml_value(toml: &str, section: &str, key: &str) -> String {
    let header = format!("[{section}]");
    toml.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| unquote(v.split('#').next().unwrap_or(v)))
        })
        .unwrap_or_else(|| panic!("no {section}.{key} in the ConfigMap's config"))
}

/// Lays out the files the pod gives the gateway under `root`: the ConfigMap
/// (its config, every absolute path moved under `root`), the Secret's keys
/// (`secret_value` says what each holds) and the empty spool. Returns the
/// config's path.
fn lay_out_pod(
    manifests: &Manifests,
    root: &Path,
    secret_value: impl Fn(&str, &str) -> Vec<u8>,
) -> PathBuf {
    let args = flow_list(&get(&manifests.gateway(), "args"));
    let [command, flag, config_path] = args.as_slice() else {
        panic!("the gateway's args: {args:?}");
    };
    assert_eq!((command.as_str(), flag.as_str()), ("serve", "--config"));

    let mut config = manifests.gateway_toml();
    let mut config_file = None;
    for (mount, volume) in manifests.mounts() {
        assert!(mount.starts_with('/'), "{mount}");
        let dir = root.join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        config = config.replace(
            &format!("\"{mount}/"),
            &format!("\"{}/", dir.to_str().unwrap()),
        );
        match volume {
            Volume::ConfigMap => {
                assert_eq!(config_path, &format!("{mount}/gateway.toml"));
                config_file = Some(dir.join("gateway.toml"));
            }
            Volume::Secret => {
                for (key, value) in manifests.secret_data() {
                    std::fs::write(dir.join(&key), secret_value(&key, &value)).unwrap();
                }
            }
            Volume::EmptyDir => {}
        }
    }
    // Every path the config names must come from a volume: anything else is
    // missing in the pod (the image has only /app and the binary).
    // (A route's `path` is an API path, not a file.)
    let root_prefix = format!("\"{}/", root.to_str().unwrap());
    let mut table = "";
    for line in config.lines() {
        if line.trim_start().starts_with('[') {
            table = line.trim();
        }
        if table == "[[routes]]" && line.trim_start().starts_with("path") {
            continue;
        }
        for (i, _) in line.match_indices("\"/") {
            assert!(
                line[i..].starts_with(&root_prefix),
                "the ConfigMap's config names {}, which no volume of the gateway provides",
                &line[i..]
            );
        }
    }
    let config_file = config_file.expect("the ConfigMap is mounted");
    std::fs::write(&config_file, config).unwrap();
    config_file
}

/// Runs `check` on `config` in the image's working directory's stead (the
/// repository holds config/ and schemas/, as /app does), with `jwks_url`
/// pointed at a loopback JWKS: the one network fetch `check` makes.
async fn check(config: &Path) -> (bool, String, String) {
    let keys = jwks(&["rsa-a", "ec-a"]);
    let jwks_addr = spawn_upstream(move |_| {
        let keys = keys.clone();
        async move {
            http::Response::builder()
                .header("content-type", "application/json")
                .body(upstream_body(keys))
                .unwrap()
        }
    })
    .await;
    let mut cmd = tokio::process::Command::new(binary_path());
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "GATEWAY__AUTH__JWKS_URL",
            format!("http://{jwks_addr}/.well-known/jwks.json"),
        );
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("GATEWAY") || text.starts_with("POLYTOMIC_") {
            cmd.env_remove(name);
        }
    }
    let out = within("polytomic-gateway check", cmd.output())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stand-in for a Secret key: an Ed25519 key for a PEM file (the audit
/// signing key), a partner key for anything else.
fn stand_in(key: &str, _committed: &str) -> Vec<u8> {
    if key.ends_with(".pem") {
        fixture("ed-a.pem")
    } else {
        b"pk_live_deploy_stand_in_3c9e1d\n".to_vec()
    }
}

#[tokio::test]
async fn the_configmaps_config_passes_check_with_the_pods_files() {
    let manifests = Manifests::read();
    let root = tempfile::tempdir().unwrap();
    let config = lay_out_pod(&manifests, root.path(), stand_in);

    let (ok, stdout, stderr) = check(&config).await;
    assert!(ok, "check failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"ok"), "{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with("catalog: ")),
        "the config routes the catalog: {stdout}"
    );
    assert!(
        stdout.contains("audit.signing_key public key:"),
        "the Secret's signing key is used: {stdout}"
    );
    // check opened the spool on the emptyDir.
    let spool = toml_value(&manifests.gateway_toml(), "audit", "path");
    assert!(
        root.path().join(spool.trim_start_matches('/')).is_file(),
        "{spool}"
    );
}

#[tokio::test]
async fn the_secret_as_committed_cannot_start_the_gateway() {
    // secret.yaml's values are empty on purpose: applied as it is, the
    // gateway must refuse to start rather than run with a placeholder.
    let manifests = Manifests::read();
    for (key, value) in manifests.secret_data() {
        assert_eq!(value, "", "secret.yaml commits a value for {key}");
    }
    let root = tempfile::tempdir().unwrap();
    let config = lay_out_pod(&manifests, root.path(), |_, committed| {
        committed.as_bytes().to_vec()
    });
    let (ok, stdout, stderr) = check(&config).await;
    assert!(!ok, "check passed with empty secrets:\n{stdout}");
    assert!(stderr.contains("`credentials.partner.file`"), "{stderr}");
    assert!(stderr.contains("`audit.signing_key.file`"), "{stderr}");
}

#[test]
fn the_deployment_agrees_with_the_config_and_the_image() {
    let manifests = Manifests::read();
    let config = manifests.gateway_toml();
    let pod = manifests.pod();
    let gateway = manifests.gateway();

    // A native sidecar: started before the app, stopped after it.
    assert_eq!(get(&gateway, "restartPolicy"), "Always");

    // The proxy listener stays on the pod's loopback; the admin listener is
    // what the kubelet and Prometheus reach, on the declared port.
    let listen = toml_value(&config, "server", "listen");
    assert!(listen.starts_with("127.0.0.1:"), "server.listen = {listen}");
    let admin_listen = toml_value(&config, "server", "admin_listen");
    let admin_port = admin_listen.rsplit_once(':').unwrap().1;
    assert!(admin_listen.starts_with("0.0.0.0:"), "{admin_listen}");
    let port = named(&get(&gateway, "ports"), "admin");
    assert_eq!(get(&port, "containerPort"), admin_port);
    let annotations = at(
        &manifests.deployment,
        &["spec", "template", "metadata", "annotations"],
    );
    assert_eq!(get(&annotations, "prometheus.io/scrape"), "true");
    assert_eq!(get(&annotations, "prometheus.io/port"), admin_port);
    assert_eq!(get(&annotations, "prometheus.io/path"), "/metrics");
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let http_get = at(&gateway, &[probe, "httpGet"]);
        assert_eq!(get(&http_get, "path"), path, "{probe}");
        assert_eq!(get(&http_get, "port"), "admin", "{probe}");
    }

    // The kubelet waits out the drain (and the audit records it writes).
    let grace: u64 = get(&pod, "terminationGracePeriodSeconds").parse().unwrap();
    let shutdown_grace = toml_value(&config, "server", "shutdown_grace");
    let shutdown_grace = humantime::parse_duration(&shutdown_grace).unwrap();
    assert!(
        grace > shutdown_grace.as_secs(),
        "terminationGracePeriodSeconds {grace} <= server.shutdown_grace {shutdown_grace:?}"
    );

    // Locked down, as the image's numeric user.
    let security = get(&gateway, "securityContext");
    assert_eq!(get(&security, "runAsNonRoot"), "true");
    assert_eq!(get(&security, "readOnlyRootFilesystem"), "true");
    assert_eq!(get(&security, "allowPrivilegeEscalation"), "false");
    assert_eq!(
        flow_list(&at(&security, &["capabilities", "drop"])),
        ["ALL"]
    );
    let pod_security = get(&pod, "securityContext");
    assert_eq!(get(&pod_security, "runAsNonRoot"), "true");
    let image_user = read("Dockerfile")
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER")
        .trim()
        .to_owned();
    assert_eq!(get(&pod_security, "runAsUser"), image_user);
    assert_eq!(get(&pod_security, "fsGroup"), image_user);

    // Requests and limits, both for CPU and memory.
    let resources = get(&gateway, "resources");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            at(&resources, &[kind, resource]);
        }
    }

    // The spool is on a volume, not the read-only root file system.
    let spool = toml_value(&config, "audit", "path");
    assert!(
        manifests
            .mounts()
            .iter()
            .any(|(mount, volume)| *volume == Volume::EmptyDir
                && spool.starts_with(&format!("{mount}/"))),
        "audit.path {spool} is not on the spool volume"
    );
}

#[test]
fn only_manifests_are_under_deploy_kubernetes() {
    // deploy/validate.sh validates *.yaml; anything else there would go
    // unchecked.
    let mut names: Vec<String> = std::fs::read_dir(repo(MANIFESTS))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["configmap.yaml", "deployment.yaml", "secret.yaml"]);
}

// ---- the Dockerfile -----------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments out.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// Whether `pattern` (`*` any run of characters but `/`, as in a COPY
/// source) matches `path`.
fn wildcard(pattern: &str, path: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == path,
        Some((head, tail)) => {
            let Some(rest) = path.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .take_while(|&i| !rest[..i].contains('/'))
                .any(|i| rest.is_char_boundary(i) && wildcard(tail, &rest[i..]))
        }
    }
}

/// Every file under the repository, as a relative path with `/`.
fn repository_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if relative == "target" || relative == ".git" || relative.ends_with("/target") {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(relative);
            }
        }
    }
    let root = repo("");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out
}

/// The build stage's `COPY` sources (from the context), which every other
/// check here is against; asserts each exists and is not .dockerignore'd.
fn build_stage_copies() -> Vec<String> {
    let ignored: Vec<String> = significant(&read(".dockerignore"))
        .iter()
        .map(|l| l.trim().trim_end_matches('/').to_owned())
        .collect();
    for pattern in &ignored {
        assert!(
            !pattern.contains(['*', '?', '!', '[']),
            ".dockerignore pattern {pattern:?}: this test handles plain paths only"
        );
    }
    let files = repository_files();
    let mut stage = 0;
    let mut sources = Vec::new();
    for instruction in dockerfile_instructions() {
        let mut words = instruction.split_whitespace();
        match words.next() {
            Some("FROM") => stage += 1,
            Some("COPY") => {
                let args: Vec<&str> = words.collect();
                if args.iter().any(|a| a.starts_with("--from")) {
                    continue;
                }
                let args: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
                let (_, from) = args.split_last().expect("COPY SRC... DEST");
                for source in from {
                    let source = source.trim_end_matches('/');
                    let matches: Vec<&String> = files
                        .iter()
                        .filter(|f| wildcard(source, f) || f.starts_with(&format!("{source}/")))
                        .collect();
                    assert!(
                        !matches.is_empty(),
                        "the Dockerfile copies {source}, which does not exist"
                    );
                    for pattern in &ignored {
                        assert!(
                            !matches
                                .iter()
                                .any(|f| *f == pattern || f.starts_with(&format!("{pattern}/"))),
                            "the Dockerfile copies {source}, which .dockerignore leaves out ({pattern})"
                        );
                    }
                    if stage == 1 {
                        sources.push(source.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    assert!(stage >= 2, "a build stage and a runtime stage");
    sources
}

/// Whether the build stage has `path` (a repository-relative file).
fn in_build_context(copies: &[String], path: &str) -> bool {
    copies
        .iter()
        .any(|source| wildcard(source, path) || path.starts_with(&format!("{source}/")))
}

/// Whether byte `at` of `source` is in code built only for tests: its
/// top-level item (`mod tests`, a helper function) is `#[cfg(test)]`.
fn test_only(source: &str, at: usize) -> bool {
    let lines: Vec<&str> = source[..at].lines().collect();
    let starts_item = |l: &&str| {
        !l.is_empty()
            && !l.starts_with(char::is_whitespace)
            && !l.starts_with('}')
            && !l.starts_with("//")
            && !l.starts_with("#[")
    };
    let Some(item) = lines.iter().rposition(starts_item) else {
        return false;
    };
    lines[..item]
        .iter()
        .rev()
        .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
        .any(|l| l.starts_with("#[cfg(test)]"))
}

/// The repository files that `include_str!`/`include_bytes!` in `file`
/// (under src/) bring into a non-test build.
fn built_includes(file: &str) -> Vec<String> {
    let source = read(file);
    let mut paths = Vec::new();
    for marker in ["include_str!(", "include_bytes!("] {
        for (i, _) in source.match_indices(marker) {
            if test_only(&source, i) {
                continue;
            }
            let argument = source[i + marker.len()..].trim_start();
            let literal = argument
                .strip_prefix('"')
                .and_then(|a| a.split_once('"'))
                .map(|(literal, _)| literal)
                .unwrap_or_else(|| {
                    let shown: String = argument.chars().take(60).collect();
                    panic!("{file}: an include this test cannot resolve: {marker}{shown}")
                });
            let mut path = PathBuf::new();
            for part in Path::new(file).parent().unwrap().join(literal).components() {
                match part {
                    std::path::Component::ParentDir => {
                        path.pop();
                    }
                    part => path.push(part),
                }
            }
            paths.push(path.to_str().unwrap().to_owned());
        }
    }
    paths
}

#[test]
fn the_dockerfile_copies_what_the_build_needs() {
    let copies = build_stage_copies();
    // What cargo reads to build the binary: the manifest and lock file, the
    // targets Cargo.toml names (benches must exist even when not built), a
    // build script, and every file the library and binary include.
    let cargo_toml = read("Cargo.toml");
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    let mut section = "";
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
        } else if let Some(value) = line.strip_prefix("path =") {
            needed.push(unquote(value));
        } else if let Some(value) = line.strip_prefix("name =") {
            if section == "[[bench]]" {
                needed.push(format!("benches/{}.rs", unquote(value)));
            }
        }
    }
    if repo("build.rs").exists() {
        needed.push("build.rs".to_owned());
    }
    for file in repository_files() {
        if file.starts_with("src/") && file.ends_with(".rs") {
            needed.extend(built_includes(&file));
        }
    }
    for path in needed {
        assert!(repo(&path).exists(), "{path} does not exist");
        assert!(
            in_build_context(&copies, &path),
            "the Dockerfile's build stage does not copy {path}, which the build needs"
        );
    }
}

#[test]
fn the_dockerfile_builds_what_ci_builds() {
    let instructions = dockerfile_instructions();
    let builds: Vec<&str> = instructions
        .iter()
        .filter_map(|i| i.strip_prefix("RUN "))
        .filter(|run| run.contains("cargo build"))
        .collect();
    let [build] = builds.as_slice() else {
        panic!("one `RUN cargo build` in the Dockerfile: {builds:?}");
    };
    let build = build.split_whitespace().collect::<Vec<_>>().join(" ");
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == build),
        ".ci/run does not run the Dockerfile's `{build}`"
    );
    // The runtime stage takes the binary from where that command puts it.
    let args: Vec<&str> = build.split_whitespace().collect();
    let profile = if args.contains(&"--release") {
        "release"
    } else if let Some(w) = args.windows(2).find(|w| w[0] == "--profile") {
        w[1]
    } else {
        "debug"
    };
    let bin = args
        .windows(2)
        .find(|w| w[0] == "--bin")
        .map(|w| w[1])
        .expect("the build names its --bin");
    let binary = format!("/src/target/{profile}/{bin}");
    assert!(
        instructions
            .iter()
            .any(|i| i.starts_with("COPY --from=build ") && i.contains(&format!("{binary} "))),
        "the runtime stage does not copy {binary}"
    );
    assert!(
        instructions.iter().any(
            |i| i.starts_with("ENTRYPOINT") && i.contains(&format!("\"/usr/local/bin/{bin}\""))
        ),
        "the entry point is not the built binary"
    );
}

#[test]
fn the_dockerfile_checks_can_fail() {
    // A pattern matching the wrong files, a file outside the build stage,
    // an include in test code taken for the build's (or the reverse).
    assert!(wildcard(
        "catalog/polytomic-*.json",
        "catalog/polytomic-2025-09-18.json"
    ));
    assert!(!wildcard(
        "catalog/polytomic-*.json",
        "catalog/sub/polytomic-x.json"
    ));
    assert!(!wildcard(
        "catalog/polytomic-*.json",
        "catalog/requirements.txt"
    ));
    let copies = build_stage_copies();
    assert!(in_build_context(&copies, "src/main.rs"));
    assert!(!in_build_context(&copies, "config/gateway.toml"));
    assert!(!in_build_context(&copies, "tests/deploy.rs"));
    assert_eq!(
        built_includes("src/catalog.rs"),
        ["catalog/polytomic-2025-09-18.json"]
    );
    // src/error.rs includes docs/security.md, in #[cfg(test)] code only.
    assert!(read("src/error.rs").contains("include_str!(\"../docs/security.md\")"));
    assert_eq!(built_includes("src/error.rs"), Vec::<String>::new());
    let source = "const A: &str = include_str!(\"a\");\n#[cfg(test)]\n/// doc\nfn f() {\n    include_str!(\"b\");\n}\n";
    assert!(!test_only(source, source.find("include_str!(\"a").unwrap()));
    assert!(test_only(source, source.find("include_str!(\"b").unwrap()));
}
