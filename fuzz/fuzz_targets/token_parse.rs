//! Token parsing before (and instead of) the signature check.
//!
//! A `Verifier` that allows every supported algorithm, with a fixed key set:
//! an HS256 secret (no `kid`) and the test JWKS keys `rsa-a`, `ec-a` and
//! `ed-a` from tests/fixtures/jwt. The first input byte picks a mode:
//!
//! 0. the rest is an `Authorization` header value (`verify_headers`);
//! 1. the rest is the token (`verify`);
//! 2. the rest is `header JSON \0 claims JSON \0 signature`, base64url-encoded
//!    into a token by the harness, so the fuzzer reaches the header and
//!    claims parsing (`alg`, `kid`, `crit`, `none`, …);
//! 3. the same, signed with HS256 and a secret the gateway does not trust;
//! 4. the same, signed with HS256 and the trusted secret.
//!
//! Invariants: nothing panics; modes 0 to 3 are never accepted (the fuzzer
//! cannot forge a signature); in mode 4 a token is accepted only when its
//! header says HS256 without `crit`, and its claims hold an allowed `iss`, an
//! allowed `aud`, an unexpired `exp`, no future `nbf` or `iat`, and a
//! non-empty string `sub`, which is the principal's subject.
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use polytomic_gateway::auth::keys::{parse_jwks, KeySet, VerifyKey};
use polytomic_gateway::auth::verify::{bearer_token, now, SUPPORTED_ALGORITHMS};
use polytomic_gateway::auth::Verifier;
use polytomic_gateway::config::AuthConfig;
use serde_json::Value;

const SECRET: &[u8] = b"fuzz-hs256-secret-fuzz-hs256-secret!";
const ATTACKER_SECRET: &[u8] = b"attacker-secret-attacker-secret-attacker";
const ISSUER: &str = "https://idp.example.internal";
const AUDIENCE: &str = "polytomic-gateway";
const LEEWAY: u64 = 30;
const MAX_TOKEN_BYTES: usize = 8192;

struct Setup {
    verifier: Verifier,
    keys: KeySet,
    trusted: EncodingKey,
    attacker: EncodingKey,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        // Built like the configuration file, so new defaulted keys need no change here.
        let config: AuthConfig = serde_json::from_value(serde_json::json!({
            "issuers": [ISSUER],
            "audiences": [AUDIENCE],
            "algorithms": SUPPORTED_ALGORITHMS,
            "leeway": format!("{LEEWAY}s"),
            "subject_claim": "sub",
            "team_claim": "teams",
            "max_token_bytes": MAX_TOKEN_BYTES,
            "token_cache_size": 0,
        }))
        .expect("a valid [auth]");
        let verifier = Verifier::from_config(&config).expect("a valid [auth]");
        let jwk = |name: &str| -> Value {
            let path = format!(
                "{}/../tests/fixtures/jwt/{name}.jwk.json",
                env!("CARGO_MANIFEST_DIR")
            );
            serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("JSON")
        };
        let jwks = serde_json::json!({"keys": [jwk("rsa-a"), jwk("ec-a"), jwk("ed-a")]});
        let mut keys: Vec<Arc<VerifyKey>> = parse_jwks(jwks.to_string().as_bytes(), "fixtures")
            .expect("a JWKS")
            .into_iter()
            .map(Arc::new)
            .collect();
        assert_eq!(keys.len(), 3, "every fixture key loads");
        keys.push(Arc::new(VerifyKey::hmac(SECRET).expect("an HMAC key")));
        Setup {
            verifier,
            keys: KeySet::new(keys),
            trusted: EncodingKey::from_secret(SECRET).expect("a key"),
            attacker: EncodingKey::from_secret(ATTACKER_SECRET).expect("a key"),
        }
    })
}

/// Mode 0: an arbitrary `Authorization` header value.
fn header_value(s: &Setup, bytes: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(bytes) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    if let Ok(token) = bearer_token(&headers, MAX_TOKEN_BYTES) {
        assert!(!token.is_empty() && !token.contains(' '), "{token:?}");
        assert!(token.len() <= MAX_TOKEN_BYTES);
        let raw = headers[http::header::AUTHORIZATION].as_bytes();
        assert!(
            raw.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is not part of the header"
        );
    }
    let result = s.verifier.verify_headers(&headers, &s.keys, 0);
    assert!(
        result.is_err(),
        "an arbitrary Authorization header was accepted: {result:?}"
    );
}

/// Modes 2 to 4: header, claims and signature from the fuzzer.
fn structured(s: &Setup, mode: u8, bytes: &[u8]) {
    let mut parts = bytes.splitn(3, |b| *b == 0);
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = match mode {
        2 => URL_SAFE_NO_PAD.encode(signature),
        3 => jsonwebtoken::crypto::sign(message.as_bytes(), &s.attacker, Algorithm::HS256)
            .expect("HS256 signs"),
        _ => jsonwebtoken::crypto::sign(message.as_bytes(), &s.trusted, Algorithm::HS256)
            .expect("HS256 signs"),
    };
    let token = format!("{message}.{signature}");
    let at = now();
    let result = s.verifier.verify(&token, &s.keys, 0, at);
    let Ok(principal) = result else {
        return;
    };
    assert_eq!(
        mode, 4,
        "a token the gateway cannot have signed was accepted"
    );
    let header: Value = serde_json::from_slice(header).expect("an accepted header is JSON");
    assert_eq!(header["alg"], "HS256", "accepted with {header}");
    assert!(header["crit"].is_null(), "accepted with crit: {header}");
    let claims: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
    assert_eq!(claims["iss"], ISSUER, "accepted claims {claims}");
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == AUDIENCE,
        Value::Array(list) => list.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(aud_ok, "accepted claims {claims}");
    let exp = claims["exp"].as_f64().expect("an accepted exp is a number");
    // jsonwebtoken rounds a fractional `exp`.
    assert!(
        exp + (LEEWAY + 1) as f64 >= at as f64,
        "expired but accepted: {claims}"
    );
    for claim in ["nbf", "iat"] {
        if let Some(t) = claims.get(claim).filter(|v| !v.is_null()) {
            let t = t
                .as_f64()
                .unwrap_or_else(|| panic!("{claim} not a number: {claims}"));
            assert!(
                t <= (at + LEEWAY + 1) as f64,
                "{claim} in the future: {claims}"
            );
        }
    }
    assert_eq!(
        claims["sub"].as_str(),
        Some(principal.sub()),
        "accepted claims {claims}"
    );
    assert!(!principal.sub().is_empty());
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => header_value(s, rest),
        1 => {
            let token = String::from_utf8_lossy(rest);
            let result = s.verifier.verify(&token, &s.keys, 0, now());
            assert!(
                result.is_err(),
                "an arbitrary token was accepted: {result:?}"
            );
        }
        mode => structured(s, mode, rest),
    }
});
