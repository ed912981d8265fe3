//! The credential swap: the caller's credentials out, the partner key in.
//!
//! [`CredentialSet`] loads every `[credentials.NAME]` once at startup and
//! keeps each as a ready-made, sensitive `HeaderValue`, so a request only
//! clones it. A `file` source is re-read by [`CredentialSet::watch`] (and on
//! SIGHUP), so a rotated key is picked up without a restart; an `env` source is
//! read once.
//!
//! [`CredentialSwapLayer`] follows linkerd's `set_identity_header.rs`: it first
//! strips every client-supplied `Authorization`, `Proxy-Authorization` and
//! `Cookie`, logging which it stripped (names only), then sets
//! `Authorization` from the credential.
//!
//! No secret value ever appears in a log line, a `Debug` output or an error:
//! errors name the source (the variable or file), never its contents.
//!
//! ```
//! use polytomic_gateway::credentials::{CredentialSet, CredentialSwapLayer};
//! use tower::{ServiceBuilder, service_fn};
//! # fn demo(credentials: CredentialSet) {
//! let svc = ServiceBuilder::new()
//!     .layer(CredentialSwapLayer::new(credentials))
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(req.headers().contains_key("authorization"))
//!     }));
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use http::{header, HeaderValue, Request};
use tower::{Layer, Service};

use crate::problem::ConfigProblem;
use crate::secret::{read_secret, CredentialSource};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[credentials.NAME]`: where a secret injected upstream comes from.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Read the secret from this environment variable, once at startup.
    pub env: Option<String>,
    /// Read the secret from this file; it is re-read when it changes.
    pub file: Option<PathBuf>,
    /// How the secret is sent in `Authorization`.
    #[serde(default)]
    pub scheme: CredentialScheme,
}

/// The `Authorization` scheme a credential is sent with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialScheme {
    /// `Authorization: Bearer <secret>` (Polytomic partner and API keys).
    #[default]
    Bearer,
    /// `Authorization: Basic base64(<secret>)`, the secret being `user:password`
    /// (on-premises deployment keys).
    Basic,
}

/// How often `file` credentials are re-read to notice a rotated key.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The credential used when a request names none.
pub const DEFAULT_CREDENTIAL: &str = "partner";

/// One named credential, ready to inject.
pub struct Credential {
    /// The `[credentials.NAME]` name, for logs and errors.
    name: String,
    /// Where the secret comes from; named in errors instead of the value.
    source: CredentialSource,
    /// How the secret is encoded in `Authorization`.
    scheme: CredentialScheme,
    /// The current `Authorization` value, marked sensitive.
    header: RwLock<HeaderValue>,
    /// Whether the last read of the source succeeded (for `/readyz`).
    readable: AtomicBool,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("scheme", &self.scheme)
            .field("header", &"***")
            .finish()
    }
}

impl Credential {
    /// Reads the secret from `source` now.
    pub fn load(
        name: impl Into<String>,
        source: CredentialSource,
        scheme: CredentialScheme,
    ) -> Result<Self, String> {
        let header = read_header(&source, scheme)?;
        Ok(Self {
            name: name.into(),
            source,
            scheme,
            header: RwLock::new(header),
            readable: AtomicBool::new(true),
        })
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current `Authorization` header value (sensitive).
    pub fn header_value(&self) -> HeaderValue {
        self.header
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the secret's source was readable at the last look.
    pub fn is_readable(&self) -> bool {
        self.readable.load(Ordering::Relaxed)
    }

    /// Re-reads a `file` source; returns true when the secret changed.
    ///
    /// A failed read keeps the last good secret and marks the credential
    /// unreadable until a read succeeds again.
    pub fn refresh(&self) -> bool {
        if !matches!(self.source, CredentialSource::File(_)) {
            return false;
        }
        match read_header(&self.source, self.scheme) {
            Ok(header) => {
                let was_readable = self.readable.swap(true, Ordering::Relaxed);
                if !was_readable {
                    tracing::info!(credential = %self.name, source = %self.source, "credential readable again");
                }
                let mut current = self
                    .header
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if *current == header {
                    return false;
                }
                *current = header;
                tracing::info!(credential = %self.name, source = %self.source, "credential rotated");
                true
            }
            Err(problem) => {
                if self.readable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(credential = %self.name, %problem, "keeping the last good credential");
                }
                false
            }
        }
    }
}

/// Reads a secret and encodes it as a sensitive `Authorization` value.
fn read_header(source: &CredentialSource, scheme: CredentialScheme) -> Result<HeaderValue, String> {
    let secret = read_secret(source)?;
    let secret = secret.as_str();
    let value = match scheme {
        CredentialScheme::Bearer => format!("Bearer {secret}"),
        CredentialScheme::Basic => {
            if !secret.contains(':') {
                return Err(format!(
                    "{source} must hold `user:password` for scheme = \"basic\""
                ));
            }
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(secret)
            )
        }
    };
    let mut header = HeaderValue::from_str(&value)
        .map_err(|_| format!("{source} holds characters that are not allowed in an HTTP header"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// The name of the default credential of `configs`, the one injected for
/// routes that name none: `partner`, or the only one when there is one.
/// Reads no secret (for `routes`, which shows it).
pub fn default_credential_name(
    configs: &BTreeMap<String, CredentialConfig>,
) -> Result<&str, ConfigProblem> {
    if configs.contains_key(DEFAULT_CREDENTIAL) {
        return Ok(DEFAULT_CREDENTIAL);
    }
    let mut names = configs.keys();
    match (names.next(), names.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(ConfigProblem::new(
            "credentials.partner",
            "no credential is configured: add [credentials.partner] with `env` or `file`",
        )),
        (Some(_), Some(_)) => Err(ConfigProblem::new(
            "credentials",
            "several credentials and none named `partner`: name the default one `partner`",
        )),
    }
}

/// Every configured credential, and the default one.
#[derive(Debug, Clone)]
pub struct CredentialSet {
    /// Used when a request names no credential.
    default: Arc<Credential>,
    /// All credentials by name.
    by_name: Arc<BTreeMap<String, Arc<Credential>>>,
}

impl CredentialSet {
    /// Loads every credential, reporting each unreadable one under its key.
    ///
    /// The default is `partner`, or the only credential when there is one.
    pub fn load(configs: &BTreeMap<String, CredentialConfig>) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut by_name = BTreeMap::new();
        for (name, config) in configs {
            let key = format!("credentials.{name}");
            let source =
                match CredentialSource::from_parts(&key, config.env.as_ref(), config.file.as_ref())
                {
                    Ok(source) => source,
                    Err(problem) => {
                        problems.push(problem);
                        continue;
                    }
                };
            let source_key = source.key_under(&key);
            match Credential::load(name.clone(), source, config.scheme) {
                Ok(credential) => {
                    by_name.insert(name.clone(), Arc::new(credential));
                }
                Err(problem) => problems.push(ConfigProblem::new(source_key, problem)),
            }
        }
        let default = match default_credential_name(configs) {
            Ok(name) => by_name.get(name).cloned(),
            Err(problem) => {
                // A credential that failed to load is reported already.
                if configs.is_empty() || problems.is_empty() {
                    problems.push(problem);
                }
                None
            }
        };
        match default {
            Some(default) if problems.is_empty() => Ok(Self {
                default,
                by_name: Arc::new(by_name),
            }),
            _ => Err(problems),
        }
    }

    /// A set holding one credential, which is the default.
    pub fn single(credential: Credential) -> Self {
        let credential = Arc::new(credential);
        let by_name = BTreeMap::from([(credential.name().to_owned(), credential.clone())]);
        Self {
            default: credential,
            by_name: Arc::new(by_name),
        }
    }

    /// The credential injected when a request names none.
    pub fn default_credential(&self) -> &Arc<Credential> {
        &self.default
    }

    /// The credential called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Credential>> {
        self.by_name.get(name)
    }

    /// Whether every credential's source was readable at the last look.
    pub fn all_readable(&self) -> bool {
        self.by_name.values().all(|c| c.is_readable())
    }

    /// Re-reads every `file` credential now; returns how many changed.
    pub fn refresh(&self) -> usize {
        self.by_name.values().filter(|c| c.refresh()).count()
    }

    /// Re-reads `file` credentials every [`FILE_POLL_INTERVAL`] until dropped.
    ///
    /// The file is compared by content, so Kubernetes' symlink-swapped secret
    /// volumes and same-second rewrites are both noticed.
    pub fn watch(&self) -> Option<tokio::task::JoinHandle<()>> {
        let watched = self
            .by_name
            .values()
            .any(|c| matches!(c.source, CredentialSource::File(_)));
        if !watched {
            return None;
        }
        let set = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(FILE_POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let set = set.clone();
                // File reads block; keep them off the request workers.
                let _ = tokio::task::spawn_blocking(move || set.refresh()).await;
            }
        }))
    }
}

/// Marks which credential a request is sent with; set by routing.
#[derive(Debug, Clone)]
pub struct SelectedCredential(pub Arc<Credential>);

impl CredentialSet {
    /// Marks a request with the credential `name` (see
    /// [`SelectedCredential`]), for routing to call on each match; `false`
    /// when there is none.
    pub fn select(&self, name: &str, extensions: &mut http::Extensions) -> bool {
        match self.get(name) {
            Some(credential) => {
                extensions.insert(SelectedCredential(credential.clone()));
                true
            }
            None => false,
        }
    }
}

/// Replaces the caller's credentials with a configured one.
#[derive(Debug, Clone)]
pub struct CredentialSwapLayer {
    credentials: CredentialSet,
}

impl CredentialSwapLayer {
    /// Injects `credentials`' default, or the request's [`SelectedCredential`].
    pub fn new(credentials: CredentialSet) -> Self {
        Self { credentials }
    }
}

impl<S> Layer<S> for CredentialSwapLayer {
    type Service = CredentialSwap<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CredentialSwap {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// The service built by [`CredentialSwapLayer`].
#[derive(Debug, Clone)]
pub struct CredentialSwap<S> {
    inner: S,
    credentials: CredentialSet,
}

/// Client headers that carry credentials and must never reach the upstream.
const STRIPPED: [header::HeaderName; 3] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
];

impl<S, B> Service<Request<B>> for CredentialSwap<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let headers = req.headers_mut();
        for name in &STRIPPED {
            if headers.remove(name).is_some() {
                tracing::debug!(header = %name, "stripped client credential header");
            }
        }
        let header = match req.extensions().get::<SelectedCredential>() {
            Some(SelectedCredential(credential)) => credential.header_value(),
            None => self.credentials.default.header_value(),
        };
        req.headers_mut().insert(header::AUTHORIZATION, header);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn file_credential(
        secret: &str,
        scheme: CredentialScheme,
    ) -> (tempfile::NamedTempFile, Credential) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{secret}").unwrap();
        let source = CredentialSource::File(file.path().to_owned());
        let credential = Credential::load("partner", source, scheme).unwrap();
        (file, credential)
    }

    #[tokio::test]
    async fn strips_client_credentials_and_sets_the_partner_key() {
        let (_file, credential) = file_credential("pk_canary_123", CredentialScheme::Bearer);
        let svc = ServiceBuilder::new()
            .layer(CredentialSwapLayer::new(CredentialSet::single(credential)))
            .service(service_fn(|req: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(req.headers().clone())
            }));
        let req = Request::builder()
            .header("authorization", "Bearer caller-jwt")
            .header("authorization", "Basic second")
            .header("proxy-authorization", "Basic x")
            .header("cookie", "session=abc")
            .body(())
            .unwrap();
        let headers = svc.oneshot(req).await.unwrap();
        let auth: Vec<_> = headers.get_all("authorization").iter().collect();
        assert_eq!(auth, ["Bearer pk_canary_123"]);
        assert!(auth[0].is_sensitive());
        assert!(!headers.contains_key("proxy-authorization"));
        assert!(!headers.contains_key("cookie"));
    }

    #[test]
    fn basic_scheme_encodes_user_and_password() {
        let (_file, credential) = file_credential("deploy:hunter2", CredentialScheme::Basic);
        assert_eq!(credential.header_value(), "Basic ZGVwbG95Omh1bnRlcjI=");
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let (file, credential) = file_credential("pk_canary_456", CredentialScheme::Bearer);
        assert!(!format!("{credential:?}").contains("pk_canary_456"));
        std::fs::write(file.path(), "pk canary\u{7f}bad").unwrap();
        let err = Credential::load(
            "partner",
            CredentialSource::File(file.path().to_owned()),
            CredentialScheme::Bearer,
        )
        .unwrap_err();
        assert!(!err.contains("canary"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
    }

    #[test]
    fn a_rotated_file_is_picked_up_and_a_broken_one_keeps_the_last_key() {
        let (file, credential) = file_credential("key-one", CredentialScheme::Bearer);
        assert!(!credential.refresh());
        std::fs::write(file.path(), "key-two\n").unwrap();
        assert!(credential.refresh());
        assert_eq!(credential.header_value(), "Bearer key-two");
        std::fs::write(file.path(), "").unwrap();
        assert!(!credential.refresh());
        assert!(!credential.is_readable());
        assert_eq!(credential.header_value(), "Bearer key-two");
    }

    #[test]
    fn missing_and_ambiguous_credentials_are_config_problems() {
        let problems = CredentialSet::load(&BTreeMap::new()).unwrap_err();
        assert_eq!(problems[0].key, "credentials.partner");
        let configs = BTreeMap::from([(
            "partner".to_owned(),
            CredentialConfig {
                env: Some("POLYTOMIC_GATEWAY_TEST_SURELY_UNSET".into()),
                file: None,
                scheme: CredentialScheme::Bearer,
            },
        )]);
        let problems = CredentialSet::load(&configs).unwrap_err();
        assert_eq!(problems[0].key, "credentials.partner.env");
        assert!(problems[0]
            .message
            .contains("POLYTOMIC_GATEWAY_TEST_SURELY_UNSET is not set"));
    }
}
