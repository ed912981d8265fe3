//! Signing keys: a JWKS parsed key by key, and the choice of key for a token.
//!
//! Only keys from the configured sources are ever used. A token's `jku`,
//! `x5u`, `jwk` and `x5c` headers are never read, and its `kid` is only a
//! lookup into [`KeySet`]: a path, URL or unknown id matches nothing.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// RSA keys shorter than this are refused.
pub const MIN_RSA_BITS: usize = 2048;

/// What kind of key this is, which fixes the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: RS256/384/512 and PS256/384/512.
    Rsa,
    /// EC P-256: ES256.
    EcP256,
    /// EC P-384: ES384.
    EcP384,
    /// Ed25519: EdDSA.
    Ed25519,
    /// A shared secret: HS256.
    Hmac,
}

impl KeyKind {
    /// Whether a key of this kind can verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::EcP256 => alg == ES256,
            Self::EcP384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
            Self::Hmac => alg == HS256,
        }
    }
}

/// One verification key, decoded once.
pub struct VerifyKey {
    /// The key id tokens name it by, if any.
    pub kid: Option<String>,
    /// The key type.
    pub kind: KeyKind,
    /// The one algorithm the JWK restricts it to (`alg`), if any.
    pub alg: Option<Algorithm>,
    /// The decoded key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|only| only == alg)
    }

    /// An HS256 key from a shared secret.
    pub fn hmac(secret: &[u8]) -> Result<Self, String> {
        let key = DecodingKey::from_secret(secret).map_err(|e| format!("bad secret: {e}"))?;
        Ok(Self {
            kid: None,
            kind: KeyKind::Hmac,
            alg: Some(Algorithm::HS256),
            key,
        })
    }

    /// Decodes one JWK, or says why it is skipped.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err("an encryption key (use = enc)".into());
        }
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(declared) => Some(
                Algorithm::from_str(&declared.to_string())
                    .map_err(|_| format!("algorithm {declared} is not a signing algorithm"))?,
            ),
        };
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(rsa.n.trim_end_matches('='))
                    .map_err(|_| "RSA modulus is not base64url".to_owned())?;
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < MIN_RSA_BITS {
                    return Err(format!(
                        "RSA key of about {bits} bits is shorter than {MIN_RSA_BITS}"
                    ));
                }
                KeyKind::Rsa
            }
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                ref other => return Err(format!("curve {other:?} is not supported")),
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            AlgorithmParameters::OctetKeyPair(_) => return Err("OKP curve is not Ed25519".into()),
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric keys are not accepted from a JWKS".into())
            }
            _ => return Err("unknown key type".into()),
        };
        if let Some(alg) = alg {
            if !kind.fits(alg) {
                return Err(format!("alg {alg:?} does not fit a {kind:?} key"));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("cannot decode: {e}"))?;
        Ok(Self {
            kid: jwk.common.key_id.clone(),
            kind,
            alg,
            key,
        })
    }
}

/// Parses a JWKS document. A malformed key is skipped with a warning naming
/// it; only a document that is not a JWKS at all is an error.
pub fn parse_jwks(json: &[u8], source: &str) -> Result<Vec<VerifyKey>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(json)
        .map_err(|e| format!("{source} is not a JWKS document: {e}"))?;
    let mut keys = Vec::with_capacity(document.keys.len());
    for (i, raw) in document.keys.into_iter().enumerate() {
        let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let parsed = serde_json::from_value::<Jwk>(raw)
            .map_err(|e| format!("malformed: {e}"))
            .and_then(|jwk| VerifyKey::from_jwk(&jwk));
        match parsed {
            Ok(key) => keys.push(key),
            Err(why) => {
                tracing::warn!(source, index = i, kid = ?kid, reason = %why, "skipping JWKS key")
            }
        }
    }
    Ok(keys)
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoiceError {
    /// The token's `kid` is not in the set.
    UnknownKid,
    /// The `kid` names a key of another type than the token's `alg`.
    WrongKeyType,
    /// No `kid`, and not exactly one key fits the `alg`.
    Ambiguous,
}

/// The keys a gateway trusts, by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Keys with a unique `kid`.
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Every usable key, for tokens without a `kid`.
    all: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// Builds a set. A `kid` used by more than one key is ambiguous, so all
    /// of its keys are dropped with a warning.
    pub fn new(keys: impl IntoIterator<Item = Arc<VerifyKey>>) -> Self {
        let keys: Vec<_> = keys.into_iter().collect();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for kid in keys.iter().filter_map(|k| k.kid.as_deref()) {
            *count.entry(kid).or_default() += 1;
        }
        let duplicated: Vec<String> = count
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(kid, _)| kid.to_owned())
            .collect();
        for kid in &duplicated {
            tracing::warn!(kid, "several keys share this kid; none of them is trusted");
        }
        let all: Vec<_> = keys
            .into_iter()
            .filter(|k| k.kid.as_ref().is_none_or(|kid| !duplicated.contains(kid)))
            .collect();
        let by_kid = all
            .iter()
            .filter_map(|k| k.kid.clone().map(|kid| (kid, k.clone())))
            .collect();
        Self { by_kid, all }
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Whether `kid` names a trusted key.
    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The key for a token with this `kid` and `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, KeyChoiceError> {
        match kid {
            Some(kid) => {
                let key = self.by_kid.get(kid).ok_or(KeyChoiceError::UnknownKid)?;
                if key.fits(alg) {
                    Ok(key)
                } else {
                    Err(KeyChoiceError::WrongKeyType)
                }
            }
            None => {
                let mut fitting = self.all.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Ok(only),
                    _ => Err(KeyChoiceError::Ambiguous),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/jwt/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn jwks(keys: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    fn jwk(name: &str) -> serde_json::Value {
        serde_json::from_slice(&fixture(&format!("{name}.jwk.json"))).unwrap()
    }

    #[test]
    fn a_malformed_key_is_skipped_not_fatal() {
        let mut broken = jwk("rsa-b");
        broken["n"] = "%%%".into();
        let doc = jwks(&[
            jwk("rsa-a"),
            broken,
            serde_json::json!({"kty": "EC"}),
            jwk("ec-a"),
        ]);
        let keys = parse_jwks(&doc, "test").unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["rsa-a", "ec-a"]);
        assert!(parse_jwks(b"{\"nokeys\":1}", "test").is_err());
    }

    #[test]
    fn symmetric_encryption_and_short_keys_are_refused() {
        let oct = serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"});
        let mut enc = jwk("rsa-a");
        enc["use"] = "enc".into();
        let mut short = jwk("rsa-a");
        short["n"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode([0xffu8; 128])
            .into();
        assert!(parse_jwks(&jwks(&[oct, enc, short]), "test")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn keys_are_chosen_by_kid_and_type() {
        let keys = parse_jwks(&jwks(&[jwk("rsa-a"), jwk("ec-a")]), "test").unwrap();
        let set = KeySet::new(keys.into_iter().map(Arc::new));
        assert!(set.select(Some("rsa-a"), Algorithm::RS256).is_ok());
        assert!(set.select(Some("rsa-a"), Algorithm::PS256).is_ok());
        assert_eq!(
            set.select(Some("ec-a"), Algorithm::RS256).unwrap_err(),
            KeyChoiceError::WrongKeyType
        );
        assert_eq!(
            set.select(Some("rsa-a"), Algorithm::HS256).unwrap_err(),
            KeyChoiceError::WrongKeyType
        );
        assert_eq!(
            set.select(Some("../../etc/passwd"), Algorithm::RS256)
                .unwrap_err(),
            KeyChoiceError::UnknownKid
        );
        assert_eq!(
            set.select(None, Algorithm::ES256).unwrap().kid.as_deref(),
            Some("ec-a")
        );
        assert_eq!(
            set.select(None, Algorithm::HS256).unwrap_err(),
            KeyChoiceError::Ambiguous
        );
    }

    #[test]
    fn a_kid_used_twice_is_trusted_for_neither() {
        let mut second = jwk("rsa-b");
        second["kid"] = "rsa-a".into();
        let keys = parse_jwks(&jwks(&[jwk("rsa-a"), second, jwk("ec-a")]), "test").unwrap();
        let set = KeySet::new(keys.into_iter().map(Arc::new));
        assert_eq!(set.len(), 1);
        assert!(!set.contains("rsa-a"));
    }

    #[test]
    fn a_declared_alg_restricts_the_key() {
        let mut only_ps = jwk("rsa-a");
        only_ps["alg"] = "PS256".into();
        let keys = parse_jwks(&jwks(&[only_ps]), "test").unwrap();
        let set = KeySet::new(keys.into_iter().map(Arc::new));
        assert!(set.select(Some("rsa-a"), Algorithm::PS256).is_ok());
        assert_eq!(
            set.select(Some("rsa-a"), Algorithm::RS256).unwrap_err(),
            KeyChoiceError::WrongKeyType
        );
    }
}
