//! Caller authentication end to end: every forged or invalid token is refused
//! with 401 and never reaches the upstream; valid RS256, ES256 and EdDSA
//! tokens pass; the JWKS client rotates keys, survives an IdP outage, and
//! does not let forged `kid`s cause a fetch storm.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::Algorithm::{self, *};
use polytomic_gateway::fake::FakePolytomic;
use serde_json::{json, Value};
use tokio::sync::Notify;

const HS_SECRET: &str = "an-hs256-secret-that-is-long-enough-0123456789";

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token with any header and claims, and a raw signature.
fn forge(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(&header),
        b64(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// `claims` with `edit` applied to the JSON object.
fn claims_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut value = claims("mallory@corp", &["platform"]);
    edit(value.as_object_mut().unwrap());
    value
}

/// Signs `claims` with `header` (its alg and kid), using key `key`.
fn sign_header(
    key: &jsonwebtoken::EncodingKey,
    header: jsonwebtoken::Header,
    claims: &Value,
) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa_attacker() -> jsonwebtoken::EncodingKey {
    jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("rsa-attacker.pem")).unwrap()
}

fn header(alg: Algorithm, kid: Option<&str>) -> jsonwebtoken::Header {
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

/// A server that records whether anyone fetched from it (it must stay 0).
async fn attacker_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let addr = spawn_upstream(move |_req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { http::Response::new(upstream_body(jwks(&["rsa-attacker", "ec-attacker"]))) }
    })
    .await;
    (addr, hits)
}

async fn gateway_allowing_hs256(fake: &FakePolytomic) -> InProcess {
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    std::fs::write(dir.path("hs-secret"), HS_SECRET).unwrap();
    let auth = format!(
        "[auth]\nissuers = [{ISSUER:?}]\naudiences = [{AUDIENCE:?}]\nalgorithms = [\"RS256\", \"ES256\", \"HS256\"]\njwks_file = {:?}\nhs256_secret = {{ file = {:?} }}\n",
        dir.path("jwks.json").display().to_string(),
        dir.path("hs-secret").display().to_string(),
    );
    let path = dir.config(&format!("http://{addr}"), &auth);
    start_gateway_from(dir, &path).await
}

async fn request_with(gw: &InProcess, authorization: &[&str]) -> (http::response::Parts, Bytes) {
    let mut req = Request::get(gw.url("/api/organization"));
    for value in authorization {
        req = req.header("authorization", *value);
    }
    send(&client(), req.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn forged_and_invalid_tokens_are_refused_and_never_forwarded() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let gw = gateway_allowing_hs256(&fake).await;
    let (attacker, attacker_hits) = attacker_server().await;
    let attacker_url = format!("http://{attacker}/jwks.json");
    let valid = claims("mallory@corp", &["platform"]);
    let good = sign("rsa-a", RS256, &valid);
    let (good_head, good_rest) = good.split_once('.').unwrap();
    let (good_payload, good_sig) = good_rest.split_once('.').unwrap();
    let rsa_public_pem = fixture("rsa-a.pub.pem");
    let attacker_jwk = jwk("rsa-attacker");
    let x5c_cert = {
        let key = rcgen::KeyPair::from_pem(&String::from_utf8(fixture("ec-attacker.pem")).unwrap())
            .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["attacker".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        STANDARD.encode(cert.der())
    };
    let mut flipped_sig = good_sig.to_owned();
    flipped_sig.replace_range(
        0..1,
        if flipped_sig.starts_with('A') {
            "B"
        } else {
            "A"
        },
    );
    let ec_kid_zero = forge(json!({"alg": "ES256", "kid": "ec-a"}), &valid, &[0u8; 64]);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            forge(json!({"alg": "none", "typ": "JWT"}), &valid, b""),
            "algorithm not allowed",
        ),
        (
            "alg None",
            forge(json!({"alg": "None"}), &valid, b""),
            "algorithm not allowed",
        ),
        (
            "alg nOnE",
            forge(json!({"alg": "nOnE", "kid": "rsa-a"}), &valid, b""),
            "algorithm not allowed",
        ),
        (
            "empty signature",
            format!("{good_head}.{good_payload}."),
            "invalid signature",
        ),
        (
            "missing signature",
            format!("{good_head}.{good_payload}"),
            "malformed token",
        ),
        (
            "tampered payload",
            format!(
                "{good_head}.{}.{good_sig}",
                b64(&claims("admin@corp", &["platform"]))
            ),
            "invalid signature",
        ),
        (
            "tampered signature",
            format!("{good_head}.{good_payload}.{flipped_sig}"),
            "invalid signature",
        ),
        (
            "HS256 signed with the RSA public key, under the RSA kid",
            sign_header(
                &jsonwebtoken::EncodingKey::from_secret(&rsa_public_pem).unwrap(),
                header(HS256, Some("rsa-a")),
                &valid,
            ),
            "signing key does not match the algorithm",
        ),
        (
            "HS256 signed with the RSA public key, no kid",
            sign_header(
                &jsonwebtoken::EncodingKey::from_secret(&rsa_public_pem).unwrap(),
                header(HS256, None),
                &valid,
            ),
            "invalid signature",
        ),
        (
            "jku to an attacker JWKS",
            {
                let mut h = header(RS256, Some("rsa-attacker"));
                h.jku = Some(attacker_url.clone());
                sign_header(&rsa_attacker(), h, &valid)
            },
            "unknown signing key",
        ),
        (
            "x5u to an attacker certificate",
            {
                let mut h = header(RS256, Some("rsa-attacker"));
                h.x5u = Some(attacker_url.clone());
                sign_header(&rsa_attacker(), h, &valid)
            },
            "unknown signing key",
        ),
        (
            "embedded jwk of the attacker, no kid",
            forge(
                json!({"alg": "RS256", "jwk": attacker_jwk}),
                &valid,
                &URL_SAFE_NO_PAD
                    .decode(
                        sign_header(&rsa_attacker(), header(RS256, None), &valid)
                            .rsplit('.')
                            .next()
                            .unwrap(),
                    )
                    .unwrap(),
            ),
            "invalid signature",
        ),
        (
            "embedded x5c of the attacker",
            {
                let mut h = header(ES256, None);
                h.x5c = Some(vec![x5c_cert]);
                let key =
                    jsonwebtoken::EncodingKey::from_ec_pem(&fixture("ec-attacker.pem")).unwrap();
                sign_header(&key, h, &valid)
            },
            "invalid signature",
        ),
        (
            "kid path traversal",
            sign_header(
                &rsa_attacker(),
                header(RS256, Some("../../../../dev/null")),
                &valid,
            ),
            "unknown signing key",
        ),
        (
            "kid SQL injection",
            sign_header(&rsa_attacker(), header(RS256, Some("x' OR '1'='1")), &valid),
            "unknown signing key",
        ),
        (
            "kid as a URL",
            sign_header(&rsa_attacker(), header(RS256, Some(&attacker_url)), &valid),
            "unknown signing key",
        ),
        (
            "unknown kid",
            sign_header(&rsa_attacker(), header(RS256, Some("rsa-z")), &valid),
            "unknown signing key",
        ),
        (
            "correct kid, attacker's key",
            sign_header(&rsa_attacker(), header(RS256, Some("rsa-a")), &valid),
            "invalid signature",
        ),
        (
            "ES256 all-zero signature (CVE-2022-21449)",
            ec_kid_zero,
            "invalid signature",
        ),
        (
            "RS256 token under an EC kid",
            sign_with_kid("rsa-a", RS256, Some("ec-a"), &valid),
            "signing key does not match the algorithm",
        ),
        (
            "expired",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("exp".into(), (now() - 3600).into());
                }),
            ),
            "token expired",
        ),
        (
            "not yet valid",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("nbf".into(), (now() + 3600).into());
                }),
            ),
            "token not yet valid",
        ),
        (
            "issued in the future",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("iat".into(), (now() + 3600).into());
                }),
            ),
            "token issued in the future",
        ),
        (
            "wrong issuer",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("iss".into(), "https://evil.example".into());
                }),
            ),
            "wrong issuer",
        ),
        (
            "wrong audience",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("aud".into(), json!(["someone-else"]));
                }),
            ),
            "wrong audience",
        ),
        (
            "missing exp",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.remove("exp");
                }),
            ),
            "missing required claim",
        ),
        (
            "missing iss",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.remove("iss");
                }),
            ),
            "missing required claim",
        ),
        (
            "missing aud",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.remove("aud");
                }),
            ),
            "missing required claim",
        ),
        (
            "exp as a string",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("exp".into(), (now() + 3600).to_string().into());
                }),
            ),
            "malformed claim",
        ),
        (
            "iat as a string",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("iat".into(), "yesterday".into());
                }),
            ),
            "malformed claim",
        ),
        (
            "no subject",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.remove("sub");
                }),
            ),
            "token has no subject",
        ),
        (
            "teams of the wrong type",
            sign(
                "rsa-a",
                RS256,
                &claims_with(|c| {
                    c.insert("teams".into(), json!({"team": "platform"}));
                }),
            ),
            "malformed claim",
        ),
        (
            "RS384, not in the allowlist",
            sign("rsa-a", RS384, &valid),
            "algorithm not allowed",
        ),
        (
            "PS256, not in the allowlist",
            sign("rsa-a", PS256, &valid),
            "algorithm not allowed",
        ),
        (
            "EdDSA, not in the allowlist",
            sign("ed-a", EdDSA, &valid),
            "algorithm not allowed",
        ),
        (
            "critical header extension",
            {
                let mut h = header(RS256, Some("rsa-a"));
                h.crit = Some(vec!["exp".into()]);
                sign_header(
                    &jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("rsa-a.pem")).unwrap(),
                    h,
                    &valid,
                )
            },
            "unsupported critical header",
        ),
        ("garbage", "not-a-jwt".into(), "malformed token"),
        ("garbage with dots", "a.b.c".into(), "malformed token"),
        (
            // Over auth.max_token_bytes (8 KiB), under server.max_header_bytes
            // (16 KiB, beyond which the request is a 431 before auth).
            "a 12 KB token",
            format!("{good}{}", "A".repeat(12 * 1024)),
            "token too large",
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, token, reason) in &cases {
        let (parts, body) = request_with(&gw, &[&format!("Bearer {token}")]).await;
        assert_eq!(
            parts.status,
            401,
            "{name}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            parts.headers["www-authenticate"], r#"Bearer error="invalid_token""#,
            "{name}"
        );
        let body = json(&body);
        assert_eq!(body["key"], "unauthenticated", "{name}");
        assert_eq!(body["message"], *reason, "{name}");
        let text = body.to_string();
        assert!(
            !text.contains(&token[..token.len().min(40)]),
            "{name}: the token was echoed"
        );
    }

    let header_cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("no token", vec![], "missing bearer token"),
        (
            "two Authorization headers",
            vec![bearer(), bearer()],
            "more than one credential was sent",
        ),
        (
            "Basic credentials",
            vec!["Basic bWFsbG9yeTpwdw==".into()],
            "authorization must be a Bearer token",
        ),
        (
            "Bearer with no token",
            vec!["Bearer".into()],
            "authorization must be a Bearer token",
        ),
        (
            "Bearer with spaces inside",
            vec![format!("Bearer {} extra", token())],
            "malformed token",
        ),
    ];
    for (name, values, reason) in &header_cases {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let (parts, body) = request_with(&gw, &values).await;
        assert_eq!(parts.status, 401, "{name}");
        assert_eq!(json(&body)["message"], *reason, "{name}");
    }

    assert!(
        fake.requests().is_empty(),
        "a refused request reached the upstream"
    );
    assert_eq!(
        attacker_hits.load(Ordering::SeqCst),
        0,
        "the gateway fetched from a URL a token named"
    );
}

#[tokio::test]
async fn valid_rs256_es256_and_eddsa_tokens_pass_without_reaching_the_upstream() {
    let fake = FakePolytomic::new(PARTNER_KEY);
    let addr = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let auth = dir.auth_section("").replace(
        "algorithms = [\"RS256\", \"ES256\"]",
        "algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]",
    );
    let path = dir.config(&format!("http://{addr}"), &auth);
    let gw = start_gateway_from(dir, &path).await;
    let tokens = [
        sign("rsa-a", RS256, &claims("alice@corp", &["platform"])),
        sign("ec-a", ES256, &claims("bob@corp", &["support", "platform"])),
        sign("ed-a", EdDSA, &claims("carol@corp", &["platform"])),
        // Within the 30 s leeway.
        sign(
            "rsa-a",
            RS256,
            &claims_with(|c| {
                c.insert("exp".into(), (now() - 10).into());
            }),
        ),
        // `aud` as an array containing ours; `teams` as a string.
        sign(
            "ec-a",
            ES256,
            &claims_with(|c| {
                c.insert("aud".into(), json!(["other", AUDIENCE]));
                c.insert("teams".into(), "platform".into());
            }),
        ),
        // No kid: exactly one ES256 key is trusted.
        sign_with_kid("ec-a", ES256, None, &claims("dave@corp", &["platform"])),
    ];
    for token in &tokens {
        let (parts, body) = request_with(&gw, &[&format!("Bearer {token}")]).await;
        assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let seen = fake.requests();
    assert_eq!(seen.len(), tokens.len());
    for (request, token) in seen.iter().zip(&tokens) {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {PARTNER_KEY}")
        );
        assert!(!format!("{:?}", request.headers).contains(token.as_str()));
    }
}

/// A real JWKS endpoint whose keys, availability and fetch count the test controls.
struct JwksServer {
    addr: std::net::SocketAddr,
    keys: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    fetched: Arc<Notify>,
}

impl JwksServer {
    async fn start(keys: &[&str]) -> Self {
        let served = Arc::new(Mutex::new(jwks(keys)));
        let down = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetched = Arc::new(Notify::new());
        let (s, d, f, n) = (
            served.clone(),
            down.clone(),
            fetches.clone(),
            fetched.clone(),
        );
        let addr = spawn_upstream(move |_req| {
            let response = if d.load(Ordering::SeqCst) {
                http::Response::builder()
                    .status(503)
                    .body(upstream_body("down"))
                    .unwrap()
            } else {
                http::Response::new(upstream_body(s.lock().unwrap().clone()))
            };
            f.fetch_add(1, Ordering::SeqCst);
            n.notify_waiters();
            async { response }
        })
        .await;
        Self {
            addr,
            keys: served,
            down,
            fetches,
            fetched,
        }
    }

    fn publish(&self, keys: &[&str]) {
        *self.keys.lock().unwrap() = jwks(keys);
    }

    fn count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` fetches have been served.
    async fn wait_for_fetches(&self, n: usize) {
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                let notified = self.fetched.notified();
                if self.count() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} JWKS fetches, waited for {n}", self.count()));
    }

    /// A gateway trusting this JWKS, with `timing` extra `[auth]` lines.
    async fn gateway(&self, fake: &FakePolytomic, timing: &str) -> InProcess {
        let upstream = fake.spawn().await.unwrap();
        let dir = TestDir::new();
        let auth = format!(
            "[auth]\nissuers = [{ISSUER:?}]\naudiences = [{AUDIENCE:?}]\nalgorithms = [\"RS256\", \"ES256\"]\njwks_url = \"http://{}/jwks.json\"\n{timing}\n",
            self.addr
        );
        let path = dir.config(&format!("http://{upstream}"), &auth);
        let gw = start_gateway_from(dir, &path).await;
        wait_until_ready(&gw).await;
        gw
    }
}

/// Polls `/readyz` (bounded) until the gateway reports ready.
async fn wait_until_ready(gw: &InProcess) {
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let (parts, _) = send(
                &client(),
                Request::get(gw.url("/readyz"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            if parts.status == 200 {
                return;
            }
            // A poll over HTTP: a short pause between tries.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("gateway never became ready");
}

async fn status_with(gw: &InProcess, token: &str) -> u16 {
    request_with(gw, &[&format!("Bearer {token}")])
        .await
        .0
        .status
        .as_u16()
}

#[tokio::test]
async fn a_key_published_mid_run_is_accepted_without_a_restart() {
    let idp = JwksServer::start(&["rsa-a"]).await;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let gw = idp
        .gateway(
            &fake,
            "jwks_refresh = \"1h\"\njwks_min_refresh_interval = \"1h\"",
        )
        .await;
    assert_eq!(idp.count(), 1, "one fetch at startup");
    let new_key_token = sign("rsa-b", RS256, &claims("alice@corp", &["platform"]));
    idp.publish(&["rsa-a", "rsa-b"]);
    assert_eq!(status_with(&gw, &new_key_token).await, 200);
    assert_eq!(idp.count(), 2, "the unknown kid caused exactly one refetch");
    assert_eq!(
        status_with(
            &gw,
            &sign("rsa-a", RS256, &claims("alice@corp", &["platform"]))
        )
        .await,
        200
    );
}

#[tokio::test]
async fn a_removed_key_stops_working_after_the_next_refresh() {
    let idp = JwksServer::start(&["rsa-a", "rsa-b"]).await;
    let fake = FakePolytomic::new(PARTNER_KEY);
    // The token cache stays on: a cached verification must not outlive its key.
    let gw = idp
        .gateway(
            &fake,
            "jwks_refresh = \"50ms\"\njwks_min_refresh_interval = \"1h\"",
        )
        .await;
    let token = sign("rsa-a", RS256, &claims("alice@corp", &["platform"]));
    assert_eq!(status_with(&gw, &token).await, 200);
    assert_eq!(status_with(&gw, &token).await, 200);

    idp.publish(&["rsa-b"]);
    // Two fetches after the change: the first one's result is installed
    // before the refresh loop starts the second.
    let seen = idp.count();
    idp.wait_for_fetches(seen + 2).await;
    let (parts, body) = request_with(&gw, &[&format!("Bearer {token}")]).await;
    assert_eq!(parts.status, 401);
    assert_eq!(json(&body)["message"], "unknown signing key");
    assert_eq!(
        status_with(
            &gw,
            &sign("rsa-b", RS256, &claims("alice@corp", &["platform"]))
        )
        .await,
        200
    );
}

#[tokio::test]
async fn an_idp_outage_keeps_the_last_good_keys() {
    let idp = JwksServer::start(&["rsa-a"]).await;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let gw = idp
        .gateway(
            &fake,
            "jwks_refresh = \"50ms\"\njwks_min_refresh_interval = \"1h\"\ntoken_cache_size = 0",
        )
        .await;
    idp.down.store(true, Ordering::SeqCst);
    let seen = idp.count();
    idp.wait_for_fetches(seen + 2).await;
    let token = sign("rsa-a", RS256, &claims("alice@corp", &["platform"]));
    assert_eq!(
        status_with(&gw, &token).await,
        200,
        "old keys keep working while the IdP is down"
    );
    let (parts, _) = send(
        &client(),
        Request::get(gw.url("/readyz"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        parts.status, 200,
        "a failed refresh after a good load keeps the gateway ready"
    );
}

/// When refreshes keep failing past `auth.jwks_max_stale`, the last good
/// keys stop serving: tokens get 503 `jwks_unavailable` (nothing is
/// forwarded) and `/readyz` fails, until a refresh succeeds again.
#[tokio::test]
async fn keys_older_than_jwks_max_stale_are_refused_until_a_refresh_succeeds() {
    let idp = JwksServer::start(&["rsa-a"]).await;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let gw = idp
        .gateway(
            &fake,
            "jwks_refresh = \"50ms\"\njwks_min_refresh_interval = \"1h\"\njwks_max_stale = \"300ms\"\ntoken_cache_size = 0",
        )
        .await;
    let token = sign("rsa-a", RS256, &claims("alice@corp", &["platform"]));
    assert_eq!(status_with(&gw, &token).await, 200);
    let readyz = || async {
        let (parts, _) = send(
            &client(),
            Request::get(gw.url("/readyz"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        parts.status.as_u16()
    };
    // Each refresh attempt is a fetch the IdP sees; the keys go stale once
    // 300 ms have passed since the last good one.
    idp.down.store(true, Ordering::SeqCst);
    within("the keys to go stale", async {
        while readyz().await != 503 {
            idp.wait_for_fetches(idp.count() + 1).await;
        }
    })
    .await;
    let (parts, body) = request_with(&gw, &[&format!("Bearer {token}")]).await;
    assert_gateway_error(&parts, &body, 503, "jwks_unavailable");
    assert_eq!(
        fake.requests().len(),
        1,
        "a stale-keys refusal is not forwarded"
    );
    // The IdP recovers: the next refresh makes the keys current again.
    idp.down.store(false, Ordering::SeqCst);
    within("the keys to be refreshed", async {
        while readyz().await != 200 {
            idp.wait_for_fetches(idp.count() + 1).await;
        }
    })
    .await;
    assert_eq!(status_with(&gw, &token).await, 200);
}

#[tokio::test]
async fn concurrent_forged_kids_cause_at_most_one_fetch() {
    let idp = JwksServer::start(&["rsa-a"]).await;
    let fake = FakePolytomic::new(PARTNER_KEY);
    let gw = Arc::new(
        idp.gateway(
            &fake,
            "jwks_refresh = \"1h\"\njwks_min_refresh_interval = \"30s\"",
        )
        .await,
    );
    let before = idp.count();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let forged = sign_header(
                &rsa_attacker(),
                header(RS256, Some(&format!("forged-{i}"))),
                &claims("mallory@corp", &["platform"]),
            );
            status_with(&gw, &forged).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 401);
    }
    let extra = idp.count() - before;
    assert!(extra <= 1, "{extra} JWKS fetches for 100 forged kids");
    assert!(fake.requests().is_empty());
    // Later forged kids are refused without any fetch.
    let forged = sign_header(
        &rsa_attacker(),
        header(RS256, Some("forged-late")),
        &claims("m@corp", &[]),
    );
    assert_eq!(status_with(&gw, &forged).await, 401);
    assert_eq!(idp.count() - before, extra);
}

#[tokio::test]
async fn until_the_first_jwks_load_the_gateway_is_not_ready() {
    let idp = JwksServer::start(&["rsa-a"]).await;
    idp.down.store(true, Ordering::SeqCst);
    let fake = FakePolytomic::new(PARTNER_KEY);
    let upstream = fake.spawn().await.unwrap();
    let dir = TestDir::new();
    let auth = format!(
        "[auth]\nissuers = [{ISSUER:?}]\naudiences = [{AUDIENCE:?}]\njwks_url = \"http://{}/jwks.json\"\njwks_min_refresh_interval = \"50ms\"\n",
        idp.addr
    );
    let path = dir.config(&format!("http://{upstream}"), &auth);
    let gw = start_gateway_from(dir, &path).await;
    idp.wait_for_fetches(1).await;
    let (parts, body) = send(
        &client(),
        Request::get(gw.url("/readyz"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_gateway_error(&parts, &body, 503, "not_ready");
    let (parts, body) = request_with(&gw, &[&bearer()]).await;
    assert_gateway_error(&parts, &body, 503, "not_ready");
    assert!(fake.requests().is_empty());

    idp.down.store(false, Ordering::SeqCst);
    wait_until_ready(&gw).await;
    assert_eq!(status_with(&gw, token()).await, 200);
}
