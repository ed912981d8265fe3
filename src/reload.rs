//! What a config reload replaces, and how a config is identified.
//!
//! A [`Generation`] is every part built from one config that a reload may
//! replace: the authenticator, routes (with the catalog and schemas), the
//! policy, the credentials, the version policy and the audit redaction
//! settings. The server builds a stack from each generation and swaps the
//! whole stack at once (see `server`), so a request is served by one
//! generation from start to end.
//!
//! A generation has a **version**: the SHA-256 of its effective content
//! (the config with its defaults, as `serve` logs it, and the content of the
//! schema and JWKS files it names), with secrets and the paths of secret
//! files left out. The same files give the same version on every start.
//!
//! Settings that need a restart ([`RESTART_ONLY`]) are not applied by a
//! reload: the running values stay in the generation's content, and the
//! reload reports them by key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::catalog::CatalogSummary;
use crate::client::JwksConnector;
use crate::config::{ConfigProblem, GatewayConfig};
use crate::credentials::CredentialSet;
use crate::notes::hex;
use crate::policy::Policy;
use crate::routes::RouteTable;
use crate::secret::{read_secret, CredentialSource};
use crate::version::VersionPolicy;

/// Sections a reload does not apply, each with the keys in it that it does
/// apply: `audit.redact_fields`, `telemetry.log_level` and
/// `telemetry.request_log`.
pub const RESTART_ONLY: &[(&str, &[&str])] = &[
    ("server", &[]),
    ("upstream", &[]),
    ("audit", &["redact_fields"]),
    ("telemetry", &["log_level", "request_log"]),
];

/// The parts built from one config that a reload may replace.
#[derive(Debug)]
pub struct Generation {
    /// The config's version (hex SHA-256).
    pub version: Arc<str>,
    /// Verifies callers' JWTs.
    pub auth: Arc<Authenticator>,
    /// The operations forwarded.
    pub routes: Arc<RouteTable>,
    /// Who may do what.
    pub policy: Arc<Policy>,
    /// The credentials injected upstream.
    pub credentials: CredentialSet,
    /// The `X-Polytomic-Version` policy.
    pub version_policy: VersionPolicy,
    /// The audit trail, with this config's redaction and version.
    pub audit: Audit,
    /// What `[catalog]` routes.
    pub catalog: CatalogSummary,
    /// `telemetry.log_level`.
    pub log_level: String,
    /// `telemetry.request_log`.
    pub request_log: bool,
    /// Whether `auth` was built for this generation (not kept from the last).
    pub new_auth: bool,
    /// Whether `credentials` were loaded for this generation.
    pub new_credentials: bool,
    /// What the auth was built from (secrets included, hashed): equal
    /// means the authenticator, its keys and its token cache are kept.
    auth_key: [u8; 32],
    /// `[credentials]` as configured: equal means the set is kept.
    credentials_config: Value,
    /// The effective content, as hashed into the version.
    content: Map<String, Value>,
    /// `[[policy.rules]]` by name, for the changes a reload reports.
    rules: BTreeMap<String, Value>,
}

/// What the running process keeps across reloads, and a generation is
/// built against.
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    /// The audit trail as started (its writer and fingerprint key). `None`
    /// only when `[audit]` itself is invalid: the build then only reports
    /// the generation's own problems.
    pub audit: Option<&'a Audit>,
    /// The running upstream's TLS settings, to reach `auth.jwks_url`.
    pub connector: Option<&'a JwksConnector>,
}

impl Generation {
    /// Builds every reloadable part of `config`, keeping from `previous`
    /// what has not changed (the authenticator with its keys and token
    /// cache; the credentials). Restart-only settings are taken from
    /// `previous`. Reads files: run it off the request workers.
    pub fn build(
        config: &GatewayConfig,
        base: Base<'_>,
        previous: Option<&Generation>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let credentials_config = serde_json::to_value(&config.credentials).unwrap_or_default();
        let kept_credentials = previous
            .filter(|p| p.credentials_config == credentials_config)
            .map(|p| p.credentials.clone());
        let new_credentials = kept_credentials.is_none();
        let credentials = match kept_credentials {
            Some(set) => Ok(set),
            None => CredentialSet::load(&config.credentials).map_err(|p| problems.extend(p)),
        };
        let version_policy =
            VersionPolicy::from_config(&config.polytomic).map_err(|p| problems.extend(p));
        let auth_key = auth_key(config);
        let (auth, new_auth) = match (&config.auth, previous) {
            (None, _) => {
                problems.push(ConfigProblem::new(
                    "auth",
                    "is required: every request must carry a verified JWT (see [auth] in docs/configuration.md)",
                ));
                (Err(()), false)
            }
            (Some(_), Some(previous)) if previous.auth_key == auth_key => {
                (Ok(previous.auth.clone()), false)
            }
            (Some(auth), _) => (
                Authenticator::from_config(auth, base.connector.cloned())
                    .map(Arc::new)
                    .map_err(|p| problems.extend(p)),
                true,
            ),
        };
        let mut catalog = CatalogSummary::default();
        let routes = config
            .route_table()
            .map(|(table, summary)| {
                catalog = summary;
                Arc::new(table)
            })
            .map_err(|p| problems.extend(p));
        let policy = match &routes {
            Ok(routes) => Policy::from_config(&config.policy, routes.operations())
                .map(Arc::new)
                .map_err(|p| problems.extend(p)),
            Err(()) => Err(()),
        };
        let (
            Ok(credentials),
            Ok(version_policy),
            Ok(auth),
            Ok(routes),
            Ok(policy),
            Some(base_audit),
            true,
        ) = (
            credentials,
            version_policy,
            auth,
            routes,
            policy,
            base.audit,
            problems.is_empty(),
        )
        else {
            return Err(problems);
        };
        let content = content(config, previous.map(|p| &p.content));
        let version: Arc<str> = digest(&content).into();
        let audit = base_audit.for_config(
            &config.audit.redact_fields,
            routes.secret_query_params(),
            version.clone(),
        );
        let rules = config
            .policy
            .rules
            .iter()
            .map(|rule| {
                (
                    rule.name.clone(),
                    serde_json::to_value(rule).unwrap_or_default(),
                )
            })
            .collect();
        Ok(Self {
            version,
            auth,
            routes,
            policy,
            credentials,
            version_policy,
            audit,
            catalog,
            log_level: config.telemetry.log_level.clone(),
            request_log: config.telemetry.request_log,
            new_auth,
            new_credentials,
            auth_key,
            credentials_config,
            content,
            rules,
        })
    }

    /// What changed from `previous` to this generation.
    pub fn changes_since(&self, previous: &Generation) -> Changes {
        // `routes.files` and `auth.jwks_file.content` count as their
        // section. (Every key of the content is there in both: the file
        // keys come and go only with a change to their section itself.)
        let mut sections: Vec<String> = self
            .content
            .iter()
            .filter(|(name, value)| previous.content.get(*name) != Some(value))
            .map(|(name, _)| name.split('.').next().unwrap_or(name).to_owned())
            .collect();
        sections.sort();
        sections.dedup();
        let mut rules = RuleChanges::default();
        for (name, rule) in &self.rules {
            match previous.rules.get(name) {
                None => rules.added.push(name.clone()),
                Some(old) if old != rule => rules.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        rules.removed = previous
            .rules
            .keys()
            .filter(|name| !self.rules.contains_key(*name))
            .cloned()
            .collect();
        Changes { sections, rules }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Top-level sections whose content changed (`policy`, `routes`, ...;
    /// `routes` and `auth` also when a file they name changed).
    pub sections: Vec<String>,
    /// The `[[policy.rules]]` added, removed and changed, by name.
    pub rules: RuleChanges,
}

/// `[[policy.rules]]` changes by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleChanges {
    /// Rules whose name is new.
    pub added: Vec<String>,
    /// Rules whose name is gone.
    pub removed: Vec<String>,
    /// Rules with the same name and other content.
    pub changed: Vec<String>,
}

/// The restart-only keys whose value in `config` differs from the running
/// generation's, such as `server.listen`.
pub fn restart_required(config: &GatewayConfig, running: &Generation) -> Vec<String> {
    let wanted = effective(config);
    let mut keys = Vec::new();
    for (section, reloadable) in RESTART_ONLY {
        let (Some(Value::Object(new)), Some(Value::Object(old))) =
            (wanted.get(*section), running.content.get(*section))
        else {
            continue;
        };
        let mut names: Vec<&String> = new.keys().chain(old.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            if !reloadable.contains(&name.as_str()) && new.get(name) != old.get(name) {
                keys.push(format!("{section}.{name}"));
            }
        }
    }
    keys
}

/// The config as `serve` logs it (secrets masked), with the paths of
/// secret files left out as well: moving a secret is not a change of
/// policy, and a path can itself say too much.
fn effective(config: &GatewayConfig) -> Map<String, Value> {
    let mut value = config.effective();
    let blank_file = |value: Option<&mut Value>| {
        if let Some(Value::Object(source)) = value {
            if let Some(file) = source.get_mut("file").filter(|f| !f.is_null()) {
                *file = "***".into();
            }
        }
    };
    if let Some(Value::Object(credentials)) = value.get_mut("credentials") {
        credentials.values_mut().for_each(|c| blank_file(Some(c)));
    }
    blank_file(value.pointer_mut("/auth/hs256_secret"));
    blank_file(value.pointer_mut("/audit/fingerprint_key"));
    blank_file(value.pointer_mut("/audit/signing_key"));
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The content a version is the hash of: [`effective`], with the running
/// restart-only settings in place of new ones, plus the digest of each
/// schema and JWKS file under the key naming it.
fn content(config: &GatewayConfig, running: Option<&Map<String, Value>>) -> Map<String, Value> {
    let mut content = effective(config);
    if let Some(running) = running {
        for (section, reloadable) in RESTART_ONLY {
            let (Some(Value::Object(new)), Some(Value::Object(old))) =
                (content.get_mut(*section), running.get(*section))
            else {
                continue;
            };
            let kept: Vec<(String, Option<Value>)> = new
                .keys()
                .chain(old.keys())
                .filter(|name| !reloadable.contains(&name.as_str()))
                .map(|name| (name.clone(), old.get(name).cloned()))
                .collect();
            for (name, value) in kept {
                match value {
                    Some(value) => new.insert(name, value),
                    None => new.remove(&name),
                };
            }
        }
    }
    let mut files = Map::new();
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(path) = &route.schema {
            files.insert(format!("routes[{i}].schema"), file_digest(path));
        }
    }
    if !files.is_empty() {
        content.insert("routes.files".into(), Value::Object(files));
    }
    if let Some(path) = config.auth.as_ref().and_then(|a| a.jwks_file.as_ref()) {
        content.insert("auth.jwks_file.content".into(), file_digest(path));
    }
    content
}

/// SHA-256 of a file's content, hex; `null` if it cannot be read (building
/// the part that reads it reports why).
fn file_digest(path: &Path) -> Value {
    std::fs::read(path).map_or(Value::Null, |bytes| sha256(&bytes).into())
}

fn sha256(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// The version of `content`: SHA-256 of its JSON (keys sorted, so stable).
fn digest(content: &Map<String, Value>) -> String {
    sha256(&serde_json::to_vec(content).unwrap_or_default())
}

/// A hash of everything the authenticator is built from, secrets included
/// (never shown: only compared), so that an unchanged `[auth]` keeps its
/// keys and token cache, and any change of keys or issuers empties it.
fn auth_key(config: &GatewayConfig) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let Some(auth) = &config.auth else {
        return [0; 32];
    };
    let mut part = |bytes: &[u8]| {
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    };
    part(&serde_json::to_vec(auth).unwrap_or_default());
    if let Some(path) = &auth.jwks_file {
        part(&std::fs::read(path).unwrap_or_default());
    }
    if let Some(secret) = &auth.hs256_secret {
        let read = CredentialSource::from_parts(
            "auth.hs256_secret",
            secret.env.as_ref(),
            secret.file.as_ref(),
        )
        .ok()
        .and_then(|source| read_secret(&source).ok())
        .unwrap_or_default();
        part(read.as_bytes());
    }
    let mut key = [0; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

/// The files a reload watches for `config` at `path`: the config file
/// itself and every file it names that a reload reads (schemas, the JWKS
/// file, the HS256 secret, credential files).
pub fn watched_files(path: &Path, config: Option<&GatewayConfig>) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let Some(config) = config {
        files.extend(config.routes.iter().filter_map(|r| r.schema.clone()));
        if let Some(auth) = &config.auth {
            files.extend(auth.jwks_file.clone());
            files.extend(auth.hs256_secret.as_ref().and_then(|s| s.file.clone()));
        }
        files.extend(config.credentials.values().filter_map(|c| c.file.clone()));
    }
    files.sort();
    files.dedup();
    files
}

/// What a file looked like at the last look: enough to notice a write, a
/// rename over it, and the symlink swap of a Kubernetes ConfigMap volume
/// (the path then resolves to another inode). `None`: missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
    device: u64,
}

fn stamp(file: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: a swapped `..data` link shows as a new
    // inode of the same path.
    std::fs::metadata(file).ok().map(|m| Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
        device: m.dev(),
    })
}

/// The files a reload depends on, as they were when last read.
#[derive(Debug, Clone, Default)]
pub struct WatchedFiles {
    files: Vec<(PathBuf, Option<Stamp>)>,
}

impl WatchedFiles {
    /// `files` as they are now.
    pub fn new(files: Vec<PathBuf>) -> Self {
        Self {
            files: files.into_iter().map(|f| (f.clone(), stamp(&f))).collect(),
        }
    }

    /// Whether any file looks different now.
    pub fn changed(&self) -> bool {
        self.files.iter().any(|(file, seen)| stamp(file) != *seen)
    }

    /// The same files, as they are now.
    pub fn now(&self) -> Self {
        Self::new(self.files.iter().map(|(f, _)| f.clone()).collect())
    }

    /// Watches `files` from now on, with the stamps taken here for those
    /// already watched (taken before a reload read them: a change made
    /// while it read them is still noticed).
    pub fn retarget(&self, files: Vec<PathBuf>) -> Self {
        let files = files
            .into_iter()
            .map(|file| {
                let seen = match self.files.iter().find(|(f, _)| *f == file) {
                    Some((_, seen)) => *seen,
                    None => stamp(&file),
                };
                (file, seen)
            })
            .collect();
        Self { files }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> (tempfile::TempDir, GatewayConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let config = crate::config::load(&path).unwrap();
        (dir, config)
    }

    const BASE: &str = r#"
[credentials.partner]
file = "/run/secrets/partner-a"
[audit]
sinks = ["stdout"]
"#;

    #[test]
    fn the_version_ignores_secret_paths_and_keeps_restart_only_settings() {
        let (_d, a) = load(BASE);
        let (_d, moved) = load(&BASE.replace("partner-a", "partner-b"));
        assert_eq!(digest(&content(&a, None)), digest(&content(&moved, None)));
        let (_d, renamed) = load(&format!("{BASE}[polytomic]\nversion = \"2024-01-01\"\n"));
        assert_ne!(digest(&content(&a, None)), digest(&content(&renamed, None)));
        // A new listen address is not in force until a restart: the running
        // one stays in the content, so the version does not move.
        let (_d, listen) = load(&format!("{BASE}[server]\nlisten = \"127.0.0.1:9\"\n"));
        let running = content(&a, None);
        assert_eq!(digest(&content(&listen, Some(&running))), digest(&running));
        assert_ne!(digest(&content(&listen, None)), digest(&running));
        // The same files give the same version.
        let (_d, again) = load(BASE);
        assert_eq!(digest(&content(&again, None)), digest(&running));
        let text = serde_json::to_string(&running).unwrap();
        assert!(!text.contains("partner-a"), "{text}");
    }

    #[test]
    fn a_schema_file_is_part_of_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("schema.json");
        std::fs::write(&schema, r#"{"type": "object"}"#).unwrap();
        let text = format!(
            "{BASE}[[routes]]\noperation = \"a\"\nmethods = [\"PUT\"]\npath = \"/a\"\nschema = {:?}\n",
            schema.display().to_string()
        );
        let (_d, config) = load(&text);
        let before = digest(&content(&config, None));
        std::fs::write(&schema, r#"{"type": "array"}"#).unwrap();
        assert_ne!(digest(&content(&config, None)), before);
    }

    #[test]
    fn watched_files_notice_a_change_made_while_a_reload_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        let watched = WatchedFiles::new(vec![a.clone()]);
        assert!(!watched.changed());
        // Stamped before the reload reads the files ...
        let seen = watched.now();
        assert!(!seen.changed());
        // ... which a write overtakes while they are read.
        std::fs::write(&a, "22").unwrap();
        assert!(seen.changed());
        std::fs::write(&b, "3").unwrap();
        let next = seen.retarget(vec![a.clone(), b.clone()]);
        assert!(next.changed(), "a's change is still to be applied");
        // A file newly named is watched from now.
        let later = next.now().retarget(vec![b.clone()]);
        assert!(!later.changed());
        std::fs::remove_file(&b).unwrap();
        assert!(later.changed(), "a file that goes missing is a change");
        assert_eq!(watched_files(&a, None), [a]);
    }
}
