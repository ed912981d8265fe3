//! Development tokens: `polytomic-gateway token` and the demo.
//!
//! Only an `auth.hs256_secret` can mint tokens; production tokens come from
//! the identity provider, whose private keys the gateway never holds.

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{Map, Value};

use super::AuthConfig;
use crate::secret::{read_secret, CredentialSource};

/// Mints an HS256 token for `sub` and `teams`, valid for `ttl`, with the
/// first configured issuer and audience.
pub fn mint_dev_token(
    config: &AuthConfig,
    sub: &str,
    teams: &[String],
    ttl: Duration,
) -> Result<String, String> {
    let Some(secret) = &config.hs256_secret else {
        return Err(
            "minting needs auth.hs256_secret, a development-only shared secret; \
             production tokens come from your identity provider"
                .into(),
        );
    };
    if !config.algorithms.iter().any(|a| a == "HS256") {
        return Err("auth.algorithms must list \"HS256\" to use development tokens".into());
    }
    let source = CredentialSource::from_parts(
        "auth.hs256_secret",
        secret.env.as_ref(),
        secret.file.as_ref(),
    )
    .map_err(|p| p.message)?;
    let secret = read_secret(&source)?;
    if secret.len() < super::MIN_HS256_SECRET_BYTES {
        return Err(format!(
            "auth.hs256_secret must be at least {} bytes",
            super::MIN_HS256_SECRET_BYTES
        ));
    }
    let (Some(iss), Some(aud)) = (config.issuers.first(), config.audiences.first()) else {
        return Err("auth.issuers and auth.audiences must each list a value".into());
    };
    let now = super::verify::now();
    let mut claims = Map::new();
    claims.insert("iss".into(), iss.clone().into());
    claims.insert("aud".into(), aud.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    insert_at_path(&mut claims, &config.subject_claim, sub.into());
    insert_at_path(
        &mut claims,
        &config.team_claim,
        Value::Array(teams.iter().cloned().map(Value::from).collect()),
    );
    let key =
        EncodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("bad secret: {e}"))?;
    encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &Value::Object(claims),
        &key,
    )
    .map_err(|e| format!("cannot sign: {e}"))
}

/// Sets `value` at a dotted path, creating objects along the way.
fn insert_at_path(claims: &mut Map<String, Value>, path: &str, value: Value) {
    let mut segments: Vec<&str> = path.split('.').collect();
    let last = segments.pop().unwrap_or(path);
    let mut map = claims;
    for segment in segments {
        let entry = map
            .entry(segment.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        map = entry.as_object_mut().expect("made an object above");
    }
    map.insert(last.to_owned(), value);
}
