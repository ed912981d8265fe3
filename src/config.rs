//! Configuration: the file format, which is a public contract, and its loading.
//!
//! Sources, later ones overriding earlier ones:
//! 1. a TOML file (`--config`, else `$GATEWAY_CONFIG`, else `config/gateway.toml`);
//! 2. environment variables with the prefix `GATEWAY` and the separator `__`,
//!    e.g. `GATEWAY__UPSTREAM__URL=http://127.0.0.1:9100`.
//!
//! These types only describe the file. Each concern builds its runtime type
//! from its section at startup (for example [`crate::proxy::Upstream`] from
//! [`UpstreamConfig`]) and reports problems as [`ConfigProblem`]s naming the
//! key; [`ConfigErrors`] then adds the file or environment variable that set it.
//!
//! Unknown keys are errors everywhere (`deny_unknown_fields`). Durations are
//! humantime strings such as `"30s"` or `"250ms"`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::AuthConfig;
pub use crate::credentials::{CredentialConfig, CredentialScheme};
pub use crate::problem::ConfigProblem;
pub use crate::proxy::UpstreamConfig;
pub use crate::secret::SecretSourceConfig;
pub use crate::version::{PolytomicConfig, VersionMode};

/// The environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "GATEWAY_CONFIG";
/// The config file used when neither `--config` nor `GATEWAY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";
/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "GATEWAY";
/// Separator between key segments in those environment variables.
pub const ENV_SEPARATOR: &str = "__";
/// Keys whose environment value is a comma-separated list.
pub const ENV_LIST_KEYS: &[&str] = &[
    "polytomic.allowed_versions",
    "auth.issuers",
    "auth.audiences",
    "auth.algorithms",
    "audit.sinks",
    "audit.redact_fields",
];

/// The whole configuration file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The listener and per-request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where requests are forwarded.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Polytomic API specifics: the version header.
    #[serde(default)]
    pub polytomic: PolytomicConfig,
    /// Named credentials injected upstream; `partner` is the default one.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Authentication of callers' internal JWTs. Required: without it the
    /// gateway refuses to start.
    pub auth: Option<AuthConfig>,
    /// The operations the gateway forwards; anything else is refused.
    #[serde(default)]
    pub routes: Vec<crate::routes::RouteConfig>,
    /// Every operation of the Polytomic API, from the generated catalog.
    pub catalog: Option<crate::catalog::CatalogConfig>,
    /// Who may perform which operation; without rules, every request is denied.
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Logs, traces and their export.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl GatewayConfig {
    /// The route table: `[[routes]]`, and the catalog's operations when
    /// `[catalog]` is enabled.
    pub fn route_table(
        &self,
    ) -> Result<(crate::routes::RouteTable, crate::catalog::CatalogSummary), Vec<ConfigProblem>>
    {
        crate::catalog::route_table(
            &self.routes,
            self.catalog.as_ref(),
            &self.polytomic.version,
            &|name| self.credentials.contains_key(name),
        )
    }

    /// The configuration in force, defaults included, for the startup log.
    /// Anything that could be a secret is `***`: the credentials and query
    /// of a URL, and strings under a key naming a secret, password or token.
    /// (Secrets themselves are never in the file: only where to read them.)
    pub fn effective(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        mask_secrets(&mut value, None);
        value
    }
}

/// Replaces possibly secret strings in `value` (found under `key`) by `***`.
fn mask_secrets(value: &mut serde_json::Value, key: Option<&str>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                mask_secrets(v, Some(k));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_secrets(v, key)),
        Value::String(s) => {
            let secret_key = key.is_some_and(|k| {
                let k = k.to_ascii_lowercase();
                ["secret", "password", "token", "authorization"]
                    .iter()
                    .any(|word| k.contains(word))
            });
            if secret_key {
                *s = "***".into();
            } else if let Ok(mut url) = url::Url::parse(s) {
                let masked = url.has_host()
                    && (!url.username().is_empty()
                        || url.password().is_some()
                        || url.query().is_some());
                if masked {
                    if !url.username().is_empty() {
                        let _ = url.set_username("***");
                    }
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    if url.query().is_some() {
                        url.set_query(Some("***"));
                    }
                    *s = url.to_string();
                }
            }
        }
        _ => {}
    }
}

/// `[server]`: the listener.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Main listener; it also serves `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// The admin listener: `/metrics`, `/healthz` and `/readyz`, unaudited,
    /// never on the proxy's port.
    pub admin_listen: SocketAddr,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: u64,
    /// A validated write body nesting arrays and objects deeper than this
    /// gets 422 `json_too_deep`; the outermost counts as 1. At most 126:
    /// serde_json refuses 128 levels itself.
    pub max_json_depth: usize,
    /// A validated write body holding more JSON values than this gets 413
    /// `json_too_many_values`; the parse stops there, which bounds the
    /// memory it takes. Every object, array, string, number, boolean and
    /// null counts; object keys do not.
    pub max_json_values: usize,
    /// Limit on a whole request, until the response headers; 504 past it.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT: how long in-flight requests may take to drain.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Open connections beyond this are answered 503 and closed.
    pub max_connections: usize,
    /// A request head must be complete this long after its first byte (a
    /// new connection's first one: after the accept; HTTP/2: its first
    /// stream), or the connection is dropped.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with a GOAWAY).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often the gateway pings an HTTP/2 peer.
    #[serde(with = "humantime_serde")]
    pub http2_ping_interval: Duration,
    /// An HTTP/2 peer that has not answered a ping within this is dropped.
    #[serde(with = "humantime_serde")]
    pub http2_ping_timeout: Duration,
    /// Requests being handled beyond this are answered 503 `overloaded`.
    pub max_inflight: usize,
    /// A request's header section (names and values) beyond this gets 431.
    pub max_header_bytes: usize,
    /// Requests with more header fields than this get 431.
    pub max_headers: usize,
    /// Request targets (path and query) longer than this get 414.
    pub max_uri_bytes: usize,
    /// Threads serving connections, each with its own single-threaded
    /// runtime; unset: one per available core.
    pub workers: Option<usize>,
    /// Peers (IP addresses or CIDR networks) whose forwarding headers are
    /// believed and extended; any other peer's are replaced.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_body_bytes: 1024 * 1024,
            max_json_depth: crate::validate::JsonLimits::DEFAULT.max_depth,
            max_json_values: crate::validate::JsonLimits::DEFAULT.max_values,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_ping_interval: Duration::from_secs(30),
            http2_ping_timeout: Duration::from_secs(10),
            max_inflight: 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            workers: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Every problem found in a configuration, each labelled with where the
/// offending key was set: the file, or the environment variable overriding it.
#[derive(Debug)]
pub struct ConfigErrors {
    problems: Vec<(String, ConfigProblem)>,
}

impl ConfigErrors {
    /// Labels `problems` with their source: `file`, or an overriding env var.
    pub fn new(file: &Path, problems: Vec<ConfigProblem>) -> Self {
        let problems = problems
            .into_iter()
            .map(|problem| (source_of(file, &problem.key), problem))
            .collect();
        Self { problems }
    }

    /// The problems, each with its source label.
    pub fn problems(&self) -> impl Iterator<Item = (&str, &ConfigProblem)> {
        self.problems.iter().map(|(source, p)| (source.as_str(), p))
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (source, problem)) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if problem.key.is_empty() {
                write!(f, "{source}: {}", problem.message)?;
            } else {
                write!(f, "{source}: `{}`: {}", problem.key, problem.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The environment variable that overrides `key`, e.g. `GATEWAY__UPSTREAM__URL`.
pub fn env_var_for(key: &str) -> String {
    let mut name = String::from(ENV_PREFIX);
    for segment in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&segment.to_ascii_uppercase());
    }
    name
}

/// Where `key` was set: an environment variable overriding it (or one of its
/// parent tables, or a key inside it), or else the file.
fn source_of(file: &Path, key: &str) -> String {
    let own = env_var_for(key);
    let inside = format!("{own}{ENV_SEPARATOR}");
    let mut overriding: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            let upper = name.to_ascii_uppercase();
            upper == own
                || upper.starts_with(&inside)
                || (own.starts_with(&upper) && own[upper.len()..].starts_with(ENV_SEPARATOR))
        })
        .collect();
    overriding.sort();
    match overriding.as_slice() {
        [] => file.display().to_string(),
        [one] => format!("environment variable {one}"),
        many => format!(
            "{} (or environment variables {})",
            file.display(),
            many.join(", ")
        ),
    }
}

/// Where the path of the config file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// `--config FILE`.
    Flag,
    /// The environment variable [`CONFIG_ENV`].
    Env,
    /// Neither: [`DEFAULT_CONFIG_PATH`].
    Default,
}

impl ConfigOrigin {
    /// How the error for a missing file says where the path came from.
    fn describe(self) -> String {
        match self {
            Self::Flag => "given with --config".to_owned(),
            Self::Env => format!("from the environment variable {CONFIG_ENV}"),
            Self::Default => {
                format!("the default, since neither --config nor {CONFIG_ENV} is set")
            }
        }
    }
}

/// A config file's path, and where that path came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// The file, as given (relative to the working directory if relative).
    pub path: PathBuf,
    /// Where it came from.
    pub origin: ConfigOrigin,
}

/// The config file to use: `--config`, else `$GATEWAY_CONFIG`, else the
/// default; with where it came from.
pub fn resolve(cli: Option<PathBuf>) -> ConfigPath {
    let (path, origin) = match cli {
        Some(path) => (path, ConfigOrigin::Flag),
        None => match std::env::var_os(CONFIG_ENV) {
            Some(path) => (PathBuf::from(path), ConfigOrigin::Env),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), ConfigOrigin::Default),
        },
    };
    ConfigPath { path, origin }
}

/// The config file to use: `--config`, else `$GATEWAY_CONFIG`, else the default.
pub fn resolve_path(cli: Option<PathBuf>) -> PathBuf {
    resolve(cli).path
}

/// Reads `path` and the `GATEWAY__*` environment into a [`GatewayConfig`].
///
/// This checks syntax, types and unknown keys. Cross-field checks happen when
/// each concern builds its runtime type (see `server::Gateway::build`).
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
    load_from(path, None)
}

/// [`load`], for a file named on the command line: when it is missing,
/// the error also says where the gateway looked, where that path came
/// from, and how to start without it (a newcomer's first run, or a
/// deployment whose config was not mounted).
pub fn load_resolved(config: &ConfigPath) -> Result<GatewayConfig, ConfigErrors> {
    load_from(&config.path, Some(config.origin))
}

/// The lines added to the error for a missing config file at `path`.
fn missing_file_hint(path: &Path, origin: ConfigOrigin) -> String {
    // The full path: a relative one is read from the working directory,
    // which is often not where the user thinks.
    let looked = std::env::current_dir()
        .map(|dir| dir.join(path))
        .unwrap_or_else(|_| path.to_owned());
    format!(
        "\n  the gateway looked for {} ({})\n  to try the gateway without a config file, run `polytomic-gateway demo`; to use another file, pass `--config FILE`",
        looked.display(),
        origin.describe()
    )
}

fn load_from(path: &Path, origin: Option<ConfigOrigin>) -> Result<GatewayConfig, ConfigErrors> {
    let fail = |key: &str, message: String| {
        ConfigErrors::new(path, vec![ConfigProblem::new(key, message)])
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut message = format!("cannot read the config file: {e}");
        if let (Some(origin), std::io::ErrorKind::NotFound) = (origin, e.kind()) {
            message.push_str(&missing_file_hint(path, origin));
        }
        fail("", message)
    })?;
    let env = ENV_LIST_KEYS.iter().fold(
        config::Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .list_separator(","),
        |env, key| env.with_list_parse_key(key),
    );
    let built = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(env)
        .build()
        .map_err(|e| fail("", e.to_string()))?;
    serde_path_to_error::deserialize::<_, GatewayConfig>(built).map_err(|e| {
        let (key, message) = describe_deserialize_error(&e);
        fail(&key, message)
    })
}

/// Names the full key of a deserialization error, including an unknown one.
fn describe_deserialize_error(
    e: &serde_path_to_error::Error<config::ConfigError>,
) -> (String, String) {
    let mut key = e.path().to_string();
    if key == "." {
        key.clear();
    }
    let message = match e.inner() {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        other => other.to_string(),
    };
    // serde reports an unknown field from inside the key, so the path stops at
    // the table; append the field so the error names the full key.
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        if !key.ends_with(field) {
            key = if key.is_empty() {
                field.to_owned()
            } else {
                format!("{key}.{field}")
            };
        }
        let expected = message.split(" for key ").next().unwrap_or(&message);
        return (
            key,
            format!("unknown key (not part of the configuration format); {expected}"),
        );
    }
    (key, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let file = write("");
        let config = load(file.path()).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.server.max_body_bytes, 1_048_576);
        assert_eq!(config.server.max_json_depth, 64);
        assert_eq!(config.server.max_json_values, 100_000);
        assert_eq!(config.server.request_timeout, Duration::from_secs(30));
        assert_eq!(config.upstream.url, "https://app.polytomic.com");
        assert_eq!(config.polytomic.version, "2025-09-18");
        assert_eq!(config.polytomic.version_mode, VersionMode::Override);
        assert_eq!(config.audit.queue_max_bytes, 64 << 20);
    }

    #[test]
    fn durations_are_humantime() {
        let file = write("[upstream]\ntimeout = \"250ms\"\nconnect_timeout = \"2s\"\n");
        let config = load(file.path()).unwrap();
        assert_eq!(config.upstream.timeout, Duration::from_millis(250));
        assert_eq!(config.upstream.connect_timeout, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_name_the_full_key_and_the_file() {
        let file = write("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n");
        let err = load(file.path()).unwrap_err().to_string();
        assert!(err.contains("`server.lisen`"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        let file = write("[sever]\n");
        let err = load(file.path()).unwrap_err().to_string();
        assert!(err.contains("`sever`"), "{err}");
        let file = write("[credentials.partner]\nenv = \"X\"\nfiel = \"y\"\n");
        let err = load(file.path()).unwrap_err().to_string();
        assert!(err.contains("`credentials.partner.fiel`"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let file = write("[server]\nrequest_timeout = \"soon\"\n");
        let err = load(file.path()).unwrap_err().to_string();
        assert!(err.contains("`server.request_timeout`"), "{err}");
        let file = write("[polytomic]\nversion_mode = \"sometimes\"\n");
        let err = load(file.path()).unwrap_err().to_string();
        assert!(err.contains("`polytomic.version_mode`"), "{err}");
    }

    #[test]
    fn env_var_names_follow_the_separator() {
        assert_eq!(env_var_for("upstream.url"), "GATEWAY__UPSTREAM__URL");
        assert_eq!(
            env_var_for("credentials.partner.file"),
            "GATEWAY__CREDENTIALS__PARTNER__FILE"
        );
    }

    #[test]
    fn the_effective_config_masks_what_could_be_secret() {
        let mut value = serde_json::json!({
            "auth": {"jwks_url": "https://idp.example/jwks?access_token=abc", "hs256_secret": {"env": "JWT_SECRET", "file": null}},
            "audit": {"otlp_endpoint": "https://user:pw@collector.example/"},
            "other": {"api_token": "t0ken", "max_token_bytes": 8192, "name": "plain"},
        });
        mask_secrets(&mut value, None);
        let text = value.to_string();
        for secret in ["abc", "pw@", "user:", "t0ken"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(value["auth"]["jwks_url"], "https://idp.example/jwks?***");
        assert_eq!(value["auth"]["hs256_secret"]["env"], "JWT_SECRET");
        assert_eq!(value["other"]["max_token_bytes"], 8192);
        assert_eq!(value["other"]["name"], "plain");
    }
}
