//! What verifying a caller's JWT costs, per request.
//!
//! ```sh
//! cargo bench --bench jwt_verify
//! ```
//!
//! For RS256 (RSA-2048) and ES256 (P-256), with the test keys in
//! `tests/fixtures/jwt/`:
//!
//! - `cache_hit`: `token_cache_size = 10000`, the same token every time, so
//!   after the first call each verify is a SHA-256 and a cache lookup.
//! - `no_cache`: `token_cache_size = 0`, so every verify parses the token and
//!   checks its signature and claims.
//! - `rotating_10000`: the cache on, cycling through 10,000 distinct tokens.
//!   They all fit in the cache, so once warmed up this is the hit path over
//!   a full cache.
//! - `rotating_10001`: the same with one token more than the cache holds.
//!   A full cache of live tokens drops an eighth of them on the next
//!   insert, so cycling through one token too many makes a fraction of the
//!   lookups miss (a full verify each), not all of them.
//!
//! `bearer_token` is the `Authorization` header parsing that comes before
//! either.
//!
//! Only the library's public API is used. Building the token pools signs
//! 10,001 tokens per algorithm, which takes a few seconds for RSA.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use polytomic_gateway::auth::keys::{parse_jwks, KeySet};
use polytomic_gateway::auth::verify::{bearer_token, now, Verifier};
use polytomic_gateway::config::AuthConfig;
use serde_json::json;

const ISSUER: &str = "https://idp.bench.invalid";
const AUDIENCE: &str = "polytomic-gateway";
/// `auth.token_cache_size` when the cache is on.
const CACHE_SIZE: usize = 10_000;
/// `auth.max_token_bytes` (the default).
const MAX_TOKEN_BYTES: usize = 8192;
/// The key set's generation; it never changes here.
const GENERATION: u64 = 0;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The trusted keys: the public halves of `rsa-a` and `ec-a`.
fn key_set() -> KeySet {
    let jwk = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&fixture(&format!("{name}.jwk.json"))).expect("a JWK")
    };
    let jwks = serde_json::to_vec(&json!({ "keys": [jwk("rsa-a"), jwk("ec-a")] })).unwrap();
    let keys = parse_jwks(&jwks, "bench").expect("a JWKS");
    assert_eq!(keys.len(), 2, "both fixture keys parse");
    KeySet::new(keys.into_iter().map(Arc::new))
}

/// A verifier with the defaults but for the issuer, audience, algorithms and
/// cache size.
fn verifier(token_cache_size: usize) -> Verifier {
    Verifier::from_config(&AuthConfig {
        issuers: vec![ISSUER.into()],
        audiences: vec![AUDIENCE.into()],
        algorithms: vec!["RS256".into(), "ES256".into()],
        jwks_url: None,
        jwks_file: None,
        hs256_secret: None,
        leeway: Duration::from_secs(30),
        subject_claim: "sub".into(),
        team_claim: "teams".into(),
        jwks_refresh: Duration::from_secs(300),
        jwks_min_refresh_interval: Duration::from_secs(30),
        jwks_max_stale: Duration::from_secs(86400),
        max_token_bytes: MAX_TOKEN_BYTES,
        token_cache_size,
    })
    .expect("a valid [auth]")
}

/// One algorithm's signing key and the `kid` its public half is trusted under.
struct Signer {
    alg: Algorithm,
    kid: &'static str,
    key: EncodingKey,
}

impl Signer {
    fn rs256() -> Self {
        Self {
            alg: Algorithm::RS256,
            kid: "rsa-a",
            key: EncodingKey::from_rsa_pem(&fixture("rsa-a.pem")).expect("an RSA key"),
        }
    }

    fn es256() -> Self {
        Self {
            alg: Algorithm::ES256,
            kid: "ec-a",
            key: EncodingKey::from_ec_pem(&fixture("ec-a.pem")).expect("a P-256 key"),
        }
    }

    /// A token for subject number `n`, valid for an hour from `now`.
    fn sign(&self, n: usize, now: u64) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.into());
        let claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": format!("user-{n}@example.com"),
            "teams": ["platform", "data"],
            "iat": now,
            "exp": now + 3600,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).expect("signing works")
    }
}

/// The benchmarks for one algorithm, under `group/<name>/...`.
fn bench_algorithm(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    signer: &Signer,
    keys: &KeySet,
    now: u64,
) {
    let started = Instant::now();
    let pool: Vec<String> = (0..=CACHE_SIZE).map(|n| signer.sign(n, now)).collect();
    eprintln!(
        "{name}: signed {} tokens in {:.1?}",
        pool.len(),
        started.elapsed()
    );
    // Every case below must measure success, not a refusal.
    let check = verifier(0);
    for token in [&pool[0], &pool[CACHE_SIZE]] {
        let principal = check
            .verify(token, keys, GENERATION, now)
            .expect("the pool's tokens verify");
        assert_eq!(principal.teams(), ["platform", "data"]);
    }

    let one = &pool[0];
    let cached = verifier(CACHE_SIZE);
    group.bench_function(format!("{name}/cache_hit"), |b| {
        b.iter(|| {
            cached
                .verify(black_box(one), keys, GENERATION, now)
                .expect("verifies")
        })
    });

    let uncached = verifier(0);
    group.bench_function(format!("{name}/no_cache"), |b| {
        b.iter(|| {
            uncached
                .verify(black_box(one), keys, GENERATION, now)
                .expect("verifies")
        })
    });

    for count in [CACHE_SIZE, CACHE_SIZE + 1] {
        let tokens = &pool[..count];
        let rotating = verifier(CACHE_SIZE);
        // One pass first, so the measurement starts in the steady state.
        for token in tokens {
            rotating
                .verify(token, keys, GENERATION, now)
                .expect("verifies");
        }
        let mut next = 0;
        group.bench_function(format!("{name}/rotating_{count}"), |b| {
            b.iter(|| {
                let token = &tokens[next];
                next = (next + 1) % tokens.len();
                rotating
                    .verify(black_box(token), keys, GENERATION, now)
                    .expect("verifies")
            })
        });
    }
}

fn jwt_verify(c: &mut Criterion) {
    let keys = key_set();
    let now = now();
    let mut group = c.benchmark_group("jwt_verify");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    bench_algorithm(&mut group, "rs256", &Signer::rs256(), &keys, now);
    bench_algorithm(&mut group, "es256", &Signer::es256(), &keys, now);

    let mut headers = HeaderMap::new();
    let token = Signer::es256().sign(0, now);
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    group.bench_function("bearer_token", |b| {
        b.iter(|| bearer_token(black_box(&headers), MAX_TOKEN_BYTES).expect("a bearer token"))
    });

    group.finish();
}

criterion_group!(benches, jwt_verify);
criterion_main!(benches);
