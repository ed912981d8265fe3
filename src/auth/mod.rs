//! Authentication of the caller's internal JWT.
//!
//! Every proxied request must carry `Authorization: Bearer <jwt>` issued by
//! the company identity provider. [`JwtAuthLayer`] verifies it (signature by a
//! trusted key chosen by `kid`, algorithm allowlist, `exp`/`nbf`/`iat` with
//! leeway, `iss`, `aud`) and puts a [`Principal`] (subject and teams) in the
//! request extensions for the policy and audit layers. Every refusal is a 401
//! with `WWW-Authenticate: Bearer error="invalid_token"` and a short reason;
//! nothing is forwarded. The token itself is never logged or echoed, and the
//! credential swap removes it before the request goes upstream.
//!
//! Layout: [`keys`] parses JWKS documents and chooses keys; [`jwks`] keeps
//! the key set current; [`verify`] checks one token; [`token`] mints
//! development tokens.
//!
//! ```no_run
//! # async fn demo(config: &polytomic_gateway::config::AuthConfig) {
//! use std::sync::Arc;
//! use polytomic_gateway::auth::{Authenticator, JwtAuthLayer};
//! # let connector: polytomic_gateway::client::JwksConnector = unimplemented!();
//! let auth = Arc::new(Authenticator::from_config(config, Some(connector)).expect("valid [auth]"));
//! tokio::spawn(auth.keys().clone().refresh_forever());
//! let layer = JwtAuthLayer::new(auth);
//! # }
//! ```

pub mod jwks;
pub mod keys;
pub mod token;
pub mod verify;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tower::{Layer, Service};

use crate::trace::RequestTrace;

use crate::body::GatewayBody;
use crate::client::JwksConnector;
use crate::error::GatewayError;
use crate::future::ResponseFuture;
pub use crate::notes::Principal;
use crate::problem::ConfigProblem;
use crate::secret::{read_secret, CredentialSource};
use jwks::{load_jwks_file, JwksFetcher, KeyStore};
use keys::VerifyKey;
use std::path::PathBuf;
use std::time::Duration;
pub use verify::{AuthError, Verifier, VerifyError};

use crate::secret::SecretSourceConfig;
use serde::{Deserialize, Serialize};

/// `[auth]`: verifying the caller's internal JWT.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` must be one of these.
    pub issuers: Vec<String>,
    /// `aud` (a string or an array) must contain one of these.
    pub audiences: Vec<String>,
    /// Accepted signing algorithms; `none` never is.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The identity provider's JWKS; `https`, or `http` to a loopback address.
    pub jwks_url: Option<String>,
    /// A static JWKS file, instead of or as well as the URL.
    pub jwks_file: Option<PathBuf>,
    /// A shared HS256 secret, for development and the demo only.
    pub hs256_secret: Option<SecretSourceConfig>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(with = "humantime_serde", default = "default_leeway")]
    pub leeway: Duration,
    /// The claim holding the caller's identity.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the caller's teams: a string or an array of strings;
    /// a dotted path reaches a nested claim.
    #[serde(default = "default_team_claim")]
    pub team_claim: String,
    /// How often the JWKS is refetched in the background.
    #[serde(with = "humantime_serde", default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
    /// The fastest an unknown `kid` may trigger a JWKS refetch.
    #[serde(with = "humantime_serde", default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_interval: Duration,
    /// How long the last good JWKS from `jwks_url` is used while refreshes
    /// keep failing; past it, tokens are refused (503 `jwks_unavailable`)
    /// and `/readyz` fails.
    #[serde(with = "humantime_serde", default = "default_jwks_max_stale")]
    pub jwks_max_stale: Duration,
    /// Longer bearer tokens are refused unread.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered until they expire; 0 turns the cache off.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_team_claim() -> String {
    "teams".into()
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_token_cache_size() -> usize {
    10_000
}

/// Paths that are never authenticated: only those the gateway answers itself
/// (see [`crate::health`]), so nothing unauthenticated can be forwarded.
pub const UNAUTHENTICATED_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// HS256 secrets shorter than this are refused (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Verifies callers: the verifier plus the live key set. Built once.
#[derive(Debug)]
pub struct Authenticator {
    verifier: Verifier,
    keys: Arc<KeyStore>,
}

impl Authenticator {
    /// Validates `[auth]` and loads its static keys. `connector` carries the
    /// upstream's trust roots for an HTTPS `jwks_url`; without one, a
    /// `jwks_url` is a problem.
    pub fn from_config(
        config: &AuthConfig,
        connector: Option<JwksConnector>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let verifier = Verifier::from_config(config)
            .map_err(|p| problems.extend(p))
            .ok();
        let mut static_keys: Vec<VerifyKey> = Vec::new();
        if let Some(path) = &config.jwks_file {
            match load_jwks_file(path) {
                Ok(keys) => static_keys.extend(keys),
                Err(e) => problems.push(ConfigProblem::new("auth.jwks_file", e)),
            }
        }
        let hs256_listed = config.algorithms.iter().any(|a| a == "HS256");
        match (&config.hs256_secret, hs256_listed) {
            (Some(secret), true) => {
                match CredentialSource::from_parts(
                    "auth.hs256_secret",
                    secret.env.as_ref(),
                    secret.file.as_ref(),
                )
                .and_then(|source| {
                    let key = source.key_under("auth.hs256_secret");
                    read_secret(&source).map_err(|e| ConfigProblem::new(key, e))
                }) {
                    Ok(secret) if secret.len() < MIN_HS256_SECRET_BYTES => {
                        problems.push(ConfigProblem::new(
                            "auth.hs256_secret",
                            format!("must be at least {MIN_HS256_SECRET_BYTES} bytes"),
                        ))
                    }
                    Ok(secret) => match VerifyKey::hmac(secret.as_bytes()) {
                        Ok(key) => {
                            tracing::warn!("auth.hs256_secret is set: HS256 tokens signed with a shared secret are accepted; use this for development only");
                            static_keys.push(key);
                        }
                        Err(e) => problems.push(ConfigProblem::new("auth.hs256_secret", e)),
                    },
                    Err(problem) => problems.push(problem),
                }
            }
            (Some(_), false) => problems.push(ConfigProblem::new(
                "auth.hs256_secret",
                "is set but \"HS256\" is not in auth.algorithms",
            )),
            (None, true) => problems.push(ConfigProblem::new(
                "auth.algorithms",
                "lists \"HS256\" but auth.hs256_secret is not set",
            )),
            (None, false) => {}
        }
        let fetcher = match &config.jwks_url {
            None => None,
            Some(url) => match jwks_uri(url) {
                Err(e) => {
                    problems.push(ConfigProblem::new("auth.jwks_url", e));
                    None
                }
                Ok(uri) => match connector {
                    Some(connector) => {
                        let client = Client::builder(TokioExecutor::new()).build(connector);
                        Some(JwksFetcher::new(uri, client))
                    }
                    None => {
                        problems.push(ConfigProblem::new(
                            "auth.jwks_url",
                            "cannot be fetched: no HTTPS connector (fix [upstream] first)",
                        ));
                        None
                    }
                },
            },
        };
        if config.jwks_url.is_none() && config.jwks_file.is_none() && config.hs256_secret.is_none()
        {
            problems.push(ConfigProblem::new(
                "auth",
                "no key source: set jwks_url, jwks_file or (for development) hs256_secret",
            ));
        }
        for (key, value) in [
            ("auth.jwks_refresh", config.jwks_refresh),
            (
                "auth.jwks_min_refresh_interval",
                config.jwks_min_refresh_interval,
            ),
        ] {
            if value.is_zero() {
                problems.push(ConfigProblem::new(key, "must be greater than zero"));
            }
        }
        if config.jwks_max_stale < config.jwks_refresh {
            problems.push(ConfigProblem::new(
                "auth.jwks_max_stale",
                "must be at least auth.jwks_refresh, or the keys would go stale between two refreshes",
            ));
        }
        match verifier {
            Some(verifier) if problems.is_empty() => Ok(Self {
                verifier,
                keys: Arc::new(KeyStore::new(
                    static_keys,
                    fetcher,
                    config.jwks_refresh,
                    config.jwks_min_refresh_interval,
                    config.jwks_max_stale,
                )),
            }),
            _ => Err(problems),
        }
    }

    /// The live key store (to start its refresh loop, or fetch in `check`).
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Whether signing keys are loaded and not stale, for `/readyz`.
    pub fn is_ready(&self) -> bool {
        self.keys.is_loaded() && !self.keys.is_stale()
    }

    /// Authenticates with the keys at hand, without waiting.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, VerifyError> {
        let current = self.keys.current();
        let (keys, generation) = &*current;
        self.verifier.verify_headers(headers, keys, *generation)
    }
}

/// Checks `auth.jwks_url`: https, or http to a loopback address (warned);
/// no credentials in it. Neither an error nor a log line repeats the URL's
/// query or userinfo (see [`url_for_logs`]).
fn jwks_uri(raw: &str) -> Result<http::Uri, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not hold credentials (user:password@): the identity provider's JWKS is public"
                .into(),
        );
    }
    // An IP literal only: a name could resolve anywhere.
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {
            tracing::warn!(
                url = %url_for_logs(&url),
                "auth.jwks_url uses plain http to a loopback address"
            );
        }
        "http" => {
            return Err(
                "must be https (plain http is allowed only to a loopback IP such as 127.0.0.1)"
                    .into(),
            )
        }
        other => return Err(format!("scheme {other:?} is not supported; use https")),
    }
    raw.parse().map_err(|e| format!("is not a valid URI: {e}"))
}

/// A URL as logs may show it: scheme, host, port and path; a query (which
/// may carry a token) only as `?…`.
pub fn url_for_logs(url: &url::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

/// Requires a valid internal JWT on every request but the health paths.
#[derive(Debug, Clone)]
pub struct JwtAuthLayer {
    auth: Arc<Authenticator>,
}

impl JwtAuthLayer {
    /// A layer authenticating with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service built by [`JwtAuthLayer`].
#[derive(Debug, Clone)]
pub struct JwtAuth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

fn refusal(error: VerifyError) -> Response<GatewayBody> {
    let reason = match error {
        VerifyError::Refused(reason) => reason,
        VerifyError::UnknownKid => AuthError::UnknownKey,
    };
    // The request's own line (telemetry) says it at warn, with this reason.
    tracing::debug!(%reason, "request refused: not authenticated");
    GatewayError::from(reason).to_response()
}

impl From<AuthError> for GatewayError {
    /// A 401 `unauthenticated`, whose message is the reason.
    fn from(reason: AuthError) -> Self {
        GatewayError::Unauthenticated(Box::new(reason))
    }
}

impl<S, B> Service<Request<B>> for JwtAuth<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = ResponseFuture<
        Either<S::Future, BoxFuture<'static, Result<Response<GatewayBody>, S::Error>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if UNAUTHENTICATED_PATHS.contains(&req.uri().path()) {
            return ResponseFuture::inner(Either::Left(self.inner.call(req)));
        }
        if !self.auth.keys.is_loaded() {
            return ResponseFuture::early(
                GatewayError::NotReady("signing keys are not loaded yet").to_response(),
            );
        }
        if self.auth.keys.is_stale() {
            return ResponseFuture::early(GatewayError::JwksUnavailable.to_response());
        }
        // The span covers verification only: the inner call is not its child.
        let mut span =
            RequestTrace::child_of(req.extensions(), "auth", SpanKind::Internal, Vec::new);
        let verified = self.auth.authenticate(req.headers());
        if let Ok(principal) = &verified {
            crate::trace::set(&mut span, || {
                KeyValue::new("enduser.id", principal.sub().to_owned())
            });
        }
        match verified {
            Ok(principal) => {
                drop(span);
                crate::notes::record(req.extensions(), |n| n.principal = Some(principal.clone()));
                req.extensions_mut().insert(principal);
                ResponseFuture::inner(Either::Left(self.inner.call(req)))
            }
            Err(VerifyError::Refused(reason)) => {
                ResponseFuture::early(refusal(VerifyError::Refused(reason)))
            }
            Err(VerifyError::UnknownKid) => {
                let mut inner = crate::future::take_ready(&mut self.inner);
                let auth = self.auth.clone();
                ResponseFuture::inner(Either::Right(Box::pin(async move {
                    auth.keys.refetch_for_unknown_kid().await;
                    let verified = auth.authenticate(req.headers());
                    if let Ok(principal) = &verified {
                        crate::trace::set(&mut span, || {
                            KeyValue::new("enduser.id", principal.sub().to_owned())
                        });
                    }
                    drop(span);
                    match verified {
                        Ok(principal) => {
                            crate::notes::record(req.extensions(), |n| {
                                n.principal = Some(principal.clone())
                            });
                            req.extensions_mut().insert(principal);
                            inner.call(req).await
                        }
                        Err(error) => Ok(refusal(error)),
                    }
                })))
            }
        }
    }
}
