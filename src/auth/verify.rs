//! Verifying one token: signature, claims, and the resulting [`Principal`].
//!
//! Everything that can be prepared is prepared at startup: one
//! `jsonwebtoken::Validation` per allowed algorithm, and the claim paths.
//! A request costs one signature check, or a cache lookup when the same token
//! was verified before (keyed by its SHA-256, bounded, expiring with `exp`,
//! and dropped whenever the key set changes).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;

use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::keys::{KeyChoiceError, KeySet};
use super::AuthConfig;
use super::Principal;
use crate::problem::ConfigProblem;

/// The largest `auth.max_token_bytes`.
pub const MAX_TOKEN_BYTES_LIMIT: usize = 1024 * 1024;
/// The largest `auth.leeway`.
pub const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(300);

/// The algorithms `auth.algorithms` may list.
pub const SUPPORTED_ALGORITHMS: [&str; 10] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
];

/// Why a caller was not authenticated. The text is the 401's message: short,
/// fixed, and never containing the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing bearer token")]
    MissingToken,
    /// Several `Authorization` headers.
    #[error("more than one credential was sent")]
    MultipleCredentials,
    /// `Authorization` is not `Bearer <token>`.
    #[error("authorization must be a Bearer token")]
    NotBearer,
    /// Longer than `auth.max_token_bytes`.
    #[error("token too large")]
    TooLarge,
    /// Not a JWT, or its header or claims are not valid JSON.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not allowed (or is `none`).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The header marks an extension critical (`crit`), which is not supported.
    #[error("unsupported critical header")]
    CriticalHeader,
    /// The `kid` is not in the trusted key set.
    #[error("unknown signing key")]
    UnknownKey,
    /// The `kid` names a key of another type than `alg`.
    #[error("signing key does not match the algorithm")]
    WrongKeyType,
    /// No `kid`, and not exactly one key fits.
    #[error("token has no kid and no single key fits it")]
    AmbiguousKey,
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` is not one of `auth.issuers`.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` contains none of `auth.audiences`.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp`, `iss` or `aud` is absent.
    #[error("missing required claim")]
    MissingClaim,
    /// A claim has the wrong JSON type.
    #[error("malformed claim")]
    MalformedClaim,
    /// The subject claim is absent or not a string.
    #[error("token has no subject")]
    NoSubject,
}

/// The result of verifying a token with the keys at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Refused; final.
    Refused(AuthError),
    /// The `kid` is not known: a JWKS refetch may find it.
    UnknownKid,
}

impl From<AuthError> for VerifyError {
    fn from(e: AuthError) -> Self {
        Self::Refused(e)
    }
}

/// The `Authorization: Bearer` token of a request, checked for shape only.
pub fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(AuthError::MissingToken),
        (Some(_), Some(_)) => return Err(AuthError::MultipleCredentials),
        (Some(value), None) => value,
    };
    if value.len() > max_bytes + "Bearer ".len() {
        return Err(AuthError::TooLarge);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    if token.len() > max_bytes {
        return Err(AuthError::TooLarge);
    }
    Ok(token)
}

/// A claim location: a top-level name, or else a dotted path into objects.
#[derive(Debug, Clone)]
struct ClaimPath {
    /// The configured name, tried whole first (namespaced claims such as
    /// `https://corp.example/teams` contain dots).
    whole: String,
    /// The same split on dots.
    segments: Vec<String>,
}

impl ClaimPath {
    fn new(path: &str) -> Self {
        Self {
            whole: path.to_owned(),
            segments: path.split('.').map(str::to_owned).collect(),
        }
    }

    fn find<'v>(&self, claims: &'v Value) -> Option<&'v Value> {
        claims.get(&self.whole).or_else(|| {
            self.segments
                .iter()
                .try_fold(claims, |value, segment| value.get(segment))
        })
    }
}

/// Checks tokens against a key set; built once from `[auth]`.
#[derive(Debug)]
pub struct Verifier {
    /// One prepared validation per allowed algorithm.
    validations: HashMap<Algorithm, Validation>,
    /// `auth.leeway`, in seconds, for `iat` and the cache.
    leeway: u64,
    /// Where the subject is.
    subject: ClaimPath,
    /// Where the teams are.
    teams: ClaimPath,
    /// `auth.max_token_bytes`.
    max_token_bytes: usize,
    /// Recently verified tokens, if enabled.
    cache: Option<TokenCache>,
}

impl Verifier {
    /// Prepares verification from `[auth]`.
    pub fn from_config(config: &AuthConfig) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut algorithms = Vec::new();
        for (i, name) in config.algorithms.iter().enumerate() {
            match Algorithm::from_str(name) {
                Ok(alg) if SUPPORTED_ALGORITHMS.contains(&name.as_str()) => algorithms.push(alg),
                _ => problems.push(ConfigProblem::new(
                    format!("auth.algorithms[{i}]"),
                    format!(
                        "{name:?} is not supported; use some of {}",
                        SUPPORTED_ALGORITHMS.join(", ")
                    ),
                )),
            }
        }
        if config.algorithms.is_empty() {
            problems.push(ConfigProblem::new(
                "auth.algorithms",
                "must list at least one algorithm",
            ));
        }
        for (key, list) in [
            ("auth.issuers", &config.issuers),
            ("auth.audiences", &config.audiences),
        ] {
            if list.is_empty() || list.iter().any(String::is_empty) {
                problems.push(ConfigProblem::new(
                    key,
                    "must list at least one non-empty value",
                ));
            }
        }
        for (key, claim) in [
            ("auth.subject_claim", &config.subject_claim),
            ("auth.team_claim", &config.team_claim),
        ] {
            if claim.is_empty() {
                problems.push(ConfigProblem::new(key, "must not be empty"));
            }
        }
        if config.max_token_bytes == 0 || config.max_token_bytes > MAX_TOKEN_BYTES_LIMIT {
            problems.push(ConfigProblem::new(
                "auth.max_token_bytes",
                format!("must be from 1 to {MAX_TOKEN_BYTES_LIMIT}"),
            ));
        }
        if config.leeway > MAX_LEEWAY {
            problems.push(ConfigProblem::new(
                "auth.leeway",
                "must be at most 5m: a larger skew accepts expired tokens for that long",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let leeway = config.leeway.as_secs();
        let validations = algorithms
            .into_iter()
            .map(|alg| {
                let mut validation = Validation::new(alg);
                validation.leeway = leeway;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.set_issuer(&config.issuers);
                validation.set_audience(&config.audiences);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, validation)
            })
            .collect();
        Ok(Self {
            validations,
            leeway,
            subject: ClaimPath::new(&config.subject_claim),
            teams: ClaimPath::new(&config.team_claim),
            max_token_bytes: config.max_token_bytes,
            cache: (config.token_cache_size > 0).then(|| TokenCache::new(config.token_cache_size)),
        })
    }

    /// Authenticates a request's headers against `keys` (of `generation`).
    pub fn verify_headers(
        &self,
        headers: &HeaderMap,
        keys: &KeySet,
        generation: u64,
    ) -> Result<Principal, VerifyError> {
        let token = bearer_token(headers, self.max_token_bytes)?;
        self.verify(token, keys, generation, now())
    }

    /// Verifies `token` at time `now` (Unix seconds).
    pub fn verify(
        &self,
        token: &str,
        keys: &KeySet,
        generation: u64,
        now: u64,
    ) -> Result<Principal, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge.into());
        }
        let digest = self.cache.as_ref().map(|cache| {
            let digest = TokenCache::digest(token);
            (cache, digest)
        });
        if let Some((cache, digest)) = &digest {
            if let Some(principal) = cache.get(digest, now, self.leeway, generation) {
                return Ok(principal);
            }
        }
        // Whatever jsonwebtoken calls the failure (a serde error for an
        // unknown `alg`, or InvalidAlgorithmName), a header naming an
        // algorithm it does not know is refused as that.
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            if header_names_another_alg(token) {
                AuthError::AlgorithmNotAllowed
            } else {
                AuthError::Malformed
            }
        })?;
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        if header.crit.is_some() {
            return Err(AuthError::CriticalHeader.into());
        }
        let key = keys
            .select(header.kid.as_deref(), header.alg)
            .map_err(|e| match e {
                KeyChoiceError::UnknownKid => VerifyError::UnknownKid,
                KeyChoiceError::WrongKeyType => AuthError::WrongKeyType.into(),
                KeyChoiceError::Ambiguous => AuthError::AmbiguousKey.into(),
            })?;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, validation).map_err(|e| {
            match e.kind() {
                // jsonwebtoken reports a required claim of the wrong type as
                // missing; claims are validated after the signature, so the
                // payload can be trusted to tell the two apart.
                ErrorKind::MissingRequiredClaim(claim) if payload_has_claim(token, claim) => {
                    AuthError::MalformedClaim.into()
                }
                kind => map_jwt_error(kind),
            }
        })?;
        let claims = data.claims;
        // jsonwebtoken also accepts an array `iss` with one allowed member;
        // an issuer is one string equal to one of `auth.issuers`.
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthError::MalformedClaim.into());
        }
        match claims.get("iat") {
            None => {}
            Some(Value::Number(iat))
                if iat
                    .as_f64()
                    .is_some_and(|iat| iat > (now + self.leeway) as f64) =>
            {
                return Err(AuthError::IssuedInFuture.into());
            }
            Some(Value::Number(_)) => {}
            Some(_) => return Err(AuthError::MalformedClaim.into()),
        }
        let principal = self.principal(&claims)?;
        if let Some((cache, digest)) = digest {
            if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
                cache.insert(digest, principal.clone(), exp, generation);
            }
        }
        Ok(principal)
    }

    fn principal(&self, claims: &Value) -> Result<Principal, AuthError> {
        let sub = self
            .subject
            .find(claims)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::NoSubject)?;
        let teams = match self.teams.find(claims) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(team)) => vec![team.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or(AuthError::MalformedClaim)
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(AuthError::MalformedClaim),
        };
        Ok(Principal::new(sub, teams))
    }
}

/// Whether the (already verified) payload has `claim`, of whatever type.
fn payload_has_claim(token: &str, claim: &str) -> bool {
    use base64::Engine;
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|claims| claims.get(claim).is_some_and(|v| !v.is_null()))
}

/// Whether the token's header parses as JSON naming some `alg` (e.g. `none`
/// in any case) that jsonwebtoken does not know: that is a disallowed
/// algorithm, not just a malformed token.
fn header_names_another_alg(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|h| {
            h.get("alg")
                .and_then(Value::as_str)
                .is_some_and(|alg| Algorithm::from_str(alg).is_err())
        })
}

fn map_jwt_error(kind: &ErrorKind) -> VerifyError {
    let reason = match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
        ErrorKind::InvalidClaimFormat(_) => AuthError::MalformedClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::WrongKeyType,
        ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            AuthError::AlgorithmNotAllowed
        }
        // Key-format errors here mean a signature that cannot be checked.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        _ => AuthError::Malformed,
    };
    VerifyError::Refused(reason)
}

/// The current Unix time in seconds: jsonwebtoken's own clock, the one it
/// checks `exp` and `nbf` with, so the cache and the `iat` check agree with
/// it. For callers that pass the time to [`Verifier::verify`].
pub use jsonwebtoken::get_current_timestamp as now;

/// Verified tokens by SHA-256, bounded. Entries expire with their `exp` and
/// are void once the key set's generation moves on.
///
/// When full, a random entry makes room (after dead ones, swept at most once
/// a second). Random replacement keeps a working set a little larger than
/// the cache cheap: with N + 1 tokens in rotation through N places, about
/// one lookup per rotation misses, where LRU or FIFO would miss every one.
#[derive(Debug)]
struct TokenCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug)]
struct CacheEntry {
    principal: Principal,
    exp: u64,
    generation: u64,
    /// This entry's place in `Entries::keys`.
    slot: usize,
}

/// The map, and its keys in a vector so a random one is found in O(1).
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<[u8; 32], CacheEntry>,
    keys: Vec<[u8; 32]>,
    /// The second dead entries were last swept.
    swept: u64,
}

impl Entries {
    fn remove(&mut self, key: &[u8; 32]) {
        let Some(entry) = self.map.remove(key) else {
            return;
        };
        self.keys.swap_remove(entry.slot);
        if let Some(moved) = self.keys.get(entry.slot) {
            if let Some(moved) = self.map.get_mut(moved) {
                moved.slot = entry.slot;
            }
        }
    }

    /// Drops expired and voided entries.
    fn sweep(&mut self, now: u64, generation: u64) {
        self.map
            .retain(|_, e| e.exp >= now && e.generation == generation);
        self.keys.retain(|k| self.map.contains_key(k));
        for (slot, key) in self.keys.iter().enumerate() {
            if let Some(entry) = self.map.get_mut(key) {
                entry.slot = slot;
            }
        }
        self.swept = now;
    }
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        let reserve = capacity.min(1 << 16);
        Self {
            capacity,
            entries: Mutex::new(Entries {
                map: HashMap::with_capacity(reserve),
                keys: Vec::with_capacity(reserve),
                swept: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digest(token: &str) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    fn get(&self, digest: &[u8; 32], now: u64, leeway: u64, generation: u64) -> Option<Principal> {
        let mut entries = self.lock();
        let entry = entries.map.get(digest)?;
        // The same rule as jsonwebtoken's: valid while exp >= now - leeway.
        if entry.generation == generation && entry.exp >= now.saturating_sub(leeway) {
            return Some(entry.principal.clone());
        }
        entries.remove(digest);
        None
    }

    fn insert(&self, digest: [u8; 32], principal: Principal, exp: u64, generation: u64) {
        let mut entries = self.lock();
        if let Some(entry) = entries.map.get_mut(&digest) {
            entry.principal = principal;
            entry.exp = exp;
            entry.generation = generation;
            return;
        }
        if entries.map.len() >= self.capacity {
            let now = now();
            if entries.swept < now {
                entries.sweep(now, generation);
            }
            if entries.map.len() >= self.capacity {
                let victim = entries.keys[rand::random_range(0..entries.keys.len())];
                entries.remove(&victim);
            }
        }
        let slot = entries.keys.len();
        entries.keys.push(digest);
        entries.map.insert(
            digest,
            CacheEntry {
                principal,
                exp,
                generation,
                slot,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::VerifyKey;
    use std::sync::Arc;
    use std::time::Duration;

    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret!!";

    fn config(team_claim: &str, cache: usize) -> AuthConfig {
        AuthConfig {
            issuers: vec!["iss".into()],
            audiences: vec!["aud".into()],
            algorithms: vec!["HS256".into()],
            jwks_url: None,
            jwks_file: None,
            hs256_secret: None,
            leeway: Duration::from_secs(30),
            subject_claim: "sub".into(),
            team_claim: team_claim.into(),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh_interval: Duration::from_secs(30),
            jwks_max_stale: Duration::from_secs(86400),
            max_token_bytes: 8192,
            token_cache_size: cache,
        }
    }

    fn keys() -> KeySet {
        KeySet::new([Arc::new(VerifyKey::hmac(SECRET).unwrap())])
    }

    fn token(extra: Value) -> String {
        let mut claims =
            serde_json::json!({"iss": "iss", "aud": "aud", "sub": "alice", "exp": now() + 60});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn teams(team_claim: &str, extra: Value) -> Result<Vec<String>, VerifyError> {
        let verifier = Verifier::from_config(&config(team_claim, 0)).unwrap();
        verifier
            .verify(&token(extra), &keys(), 0, now())
            .map(|p| p.teams().to_vec())
    }

    #[test]
    fn team_claims_can_be_strings_arrays_nested_or_namespaced() {
        assert_eq!(
            teams("teams", serde_json::json!({"teams": "platform"})).unwrap(),
            ["platform"]
        );
        assert_eq!(
            teams("teams", serde_json::json!({"teams": ["a", "b"]})).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            teams(
                "realm_access.roles",
                serde_json::json!({"realm_access": {"roles": ["ops"]}})
            )
            .unwrap(),
            ["ops"]
        );
        assert_eq!(
            teams(
                "https://corp.example/teams",
                serde_json::json!({"https://corp.example/teams": ["x"]})
            )
            .unwrap(),
            ["x"]
        );
        assert!(teams("teams", serde_json::json!({})).unwrap().is_empty());
        assert_eq!(
            teams("teams", serde_json::json!({"teams": [1]})).unwrap_err(),
            VerifyError::Refused(AuthError::MalformedClaim)
        );
    }

    #[test]
    fn an_issuer_is_one_string_not_an_array() {
        // Found by fuzz/fuzz_targets/token_parse.rs: jsonwebtoken accepts an
        // array `iss` when any member is allowed.
        let verifier = Verifier::from_config(&config("teams", 0)).unwrap();
        for iss in [
            serde_json::json!(["iss", "https://elsewhere"]),
            serde_json::json!(["iss"]),
        ] {
            assert_eq!(
                verifier
                    .verify(&token(serde_json::json!({ "iss": iss })), &keys(), 0, now())
                    .unwrap_err(),
                VerifyError::Refused(AuthError::MalformedClaim)
            );
        }
        assert!(verifier
            .verify(&token(serde_json::json!({})), &keys(), 0, now())
            .is_ok());
    }

    #[test]
    fn each_jsonwebtoken_failure_has_its_refusal_reason() {
        use AuthError::*;
        for (kind, reason) in [
            (ErrorKind::InvalidSignature, BadSignature),
            (ErrorKind::ExpiredSignature, Expired),
            (ErrorKind::ImmatureSignature, NotYetValid),
            (ErrorKind::InvalidIssuer, WrongIssuer),
            (ErrorKind::InvalidAudience, WrongAudience),
            (ErrorKind::MissingRequiredClaim("exp".into()), MissingClaim),
            (ErrorKind::InvalidClaimFormat("exp".into()), MalformedClaim),
            (ErrorKind::InvalidAlgorithm, WrongKeyType),
            (ErrorKind::MissingAlgorithm, WrongKeyType),
            (ErrorKind::InvalidAlgorithmName, AlgorithmNotAllowed),
            (ErrorKind::UnsupportedAlgorithm, AlgorithmNotAllowed),
            (ErrorKind::InvalidEcdsaKey, BadSignature),
            (ErrorKind::InvalidEddsaKey, BadSignature),
            (ErrorKind::InvalidRsaKey("n".into()), BadSignature),
            (ErrorKind::InvalidKeyFormat, BadSignature),
            (ErrorKind::InvalidToken, Malformed),
        ] {
            assert_eq!(
                map_jwt_error(&kind),
                VerifyError::Refused(reason),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused_past_the_leeway_only() {
        // `verify` takes the time, so the boundary is exact: the config's
        // leeway is 30 s.
        let verifier = Verifier::from_config(&config("teams", 0)).unwrap();
        let at = now();
        let issued =
            |iat: u64| verifier.verify(&token(serde_json::json!({ "iat": iat })), &keys(), 0, at);
        assert!(issued(at + 30).is_ok());
        assert_eq!(
            issued(at + 31).unwrap_err(),
            VerifyError::Refused(AuthError::IssuedInFuture)
        );
    }

    #[test]
    fn verify_itself_bounds_the_token_length() {
        // `verify` is public: a caller that skips `bearer_token` is bounded
        // by auth.max_token_bytes all the same, inclusively.
        let token = token(serde_json::json!({}));
        let with_limit = |max_token_bytes| {
            let config = AuthConfig {
                max_token_bytes,
                ..config("teams", 0)
            };
            Verifier::from_config(&config)
                .unwrap()
                .verify(&token, &keys(), 0, now())
        };
        assert!(with_limit(token.len()).is_ok());
        assert_eq!(
            with_limit(token.len() - 1).unwrap_err(),
            VerifyError::Refused(AuthError::TooLarge)
        );
    }

    #[test]
    fn the_cache_serves_a_token_until_it_expires_or_the_keys_change() {
        let verifier = Verifier::from_config(&config("teams", 16)).unwrap();
        let token = token(serde_json::json!({"teams": ["p"]}));
        let keys = keys();
        assert!(verifier.verify(&token, &keys, 1, now()).is_ok());
        // A cache hit needs no key at all.
        let empty = KeySet::default();
        assert!(verifier.verify(&token, &empty, 1, now()).is_ok());
        // A new key-set generation voids the entry.
        assert_eq!(
            verifier.verify(&token, &empty, 2, now()).unwrap_err(),
            VerifyError::Refused(AuthError::AmbiguousKey)
        );
        // Past exp + leeway the entry is not used.
        assert!(verifier.verify(&token, &keys, 2, now()).is_ok());
        assert!(verifier.verify(&token, &empty, 2, now() + 3600).is_err());
    }

    /// Valid tokens that differ only by `jti`.
    fn distinct_tokens(ids: impl Iterator<Item = usize>) -> Vec<String> {
        ids.map(|i| token(serde_json::json!({"teams": ["p"], "jti": i})))
            .collect()
    }

    /// Verifies each of `tokens` with the test key (filling the cache).
    fn verify_all(verifier: &Verifier, tokens: &[String], generation: u64) {
        let keys = keys();
        for token in tokens {
            assert!(verifier.verify(token, &keys, generation, now()).is_ok());
        }
    }

    /// How many of `tokens` verify with no key at all: from the cache.
    fn served_from_cache(verifier: &Verifier, tokens: &[String], generation: u64) -> usize {
        let empty = KeySet::default();
        tokens
            .iter()
            .filter(|t| verifier.verify(t, &empty, generation, now()).is_ok())
            .count()
    }

    #[test]
    fn a_full_cache_drops_one_token_not_all() {
        let verifier = Verifier::from_config(&config("teams", 16)).unwrap();
        let tokens = distinct_tokens(0..17);
        verify_all(&verifier, &tokens, 1);
        // The 17th evicted one of the first 16.
        assert_eq!(served_from_cache(&verifier, &tokens, 1), 16);
    }

    #[test]
    fn a_rotation_one_larger_than_the_cache_mostly_hits() {
        const CAPACITY: usize = 256;
        let verifier = Verifier::from_config(&config("teams", CAPACITY)).unwrap();
        let tokens = distinct_tokens(0..=CAPACITY);
        for _ in 0..5 {
            verify_all(&verifier, &tokens, 1);
        }
        // Every miss replaced one entry, so exactly one token is out.
        // (Dropping an eighth when full left about 32 out.)
        assert_eq!(served_from_cache(&verifier, &tokens, 1), CAPACITY);
    }

    #[test]
    fn a_full_cache_sweeps_voided_entries_before_dropping_live_ones() {
        const CAPACITY: usize = 32;
        let verifier = Verifier::from_config(&config("teams", CAPACITY)).unwrap();
        verify_all(&verifier, &distinct_tokens(0..CAPACITY), 1);
        // The key set moves on: every entry is void, and the next inserts
        // replace them, not each other (which random replacement alone
        // would, all but certainly, over 32 inserts).
        let new = distinct_tokens(CAPACITY..2 * CAPACITY);
        verify_all(&verifier, &new, 2);
        assert_eq!(served_from_cache(&verifier, &new, 2), CAPACITY);
    }

    #[test]
    fn bearer_tokens_are_extracted_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers, 100), Err(AuthError::MissingToken));
        headers.insert("authorization", "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&headers, 100), Ok("abc.def.ghi"));
        headers.insert("authorization", "Token abc".parse().unwrap());
        assert_eq!(bearer_token(&headers, 100), Err(AuthError::NotBearer));
        headers.insert(
            "authorization",
            format!("Bearer {}", "a".repeat(101)).parse().unwrap(),
        );
        assert_eq!(bearer_token(&headers, 100), Err(AuthError::TooLarge));
        // No token, or one with a space inside, is malformed.
        for malformed in ["Bearer  ", "Bearer a b"] {
            headers.insert("authorization", malformed.parse().unwrap());
            assert_eq!(
                bearer_token(&headers, 100),
                Err(AuthError::Malformed),
                "{malformed:?}"
            );
        }
        // The limit is inclusive: a token of exactly max_bytes passes.
        let longest = "a".repeat(100);
        headers.insert(
            "authorization",
            format!("Bearer {longest}").parse().unwrap(),
        );
        assert_eq!(bearer_token(&headers, 100), Ok(longest.as_str()));
        // A header past the limit is refused before it is read, even when
        // the token inside it, trimmed, would fit.
        headers.insert(
            "authorization",
            format!("Bearer {}{}", " ".repeat(10), "a".repeat(95))
                .parse()
                .unwrap(),
        );
        assert_eq!(bearer_token(&headers, 100), Err(AuthError::TooLarge));
    }

    #[test]
    fn unsupported_algorithms_are_config_problems() {
        let mut bad = config("teams", 0);
        bad.algorithms = vec!["none".into(), "HS512".into()];
        let problems = Verifier::from_config(&bad).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["auth.algorithms[0]", "auth.algorithms[1]"]);
    }
}
