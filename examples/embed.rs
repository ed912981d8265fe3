//! Composing a few of the gateway's layers in your own tower stack.
//!
//! Another team runs its own tower service and wants only part of the
//! gateway in front of its Polytomic calls: callers authenticated by their
//! company JWT, a policy saying which team may call which operation, the
//! caller's token swapped for the partner key, and the request forwarded
//! over the gateway's pooled client. No audit trail, no telemetry, no
//! schema validation: this stack names no type from those modules, and the
//! layers it uses need nothing from them.
//!
//! What each layer needs from the ones before it travels in the request
//! extensions, as a foundation type (`polytomic_gateway::notes`): auth puts
//! the caller's `Principal` there, routing the `RouteMatch`, and policy reads
//! both. The proxy needs nothing from the others.
//!
//! Run it with `cargo run --release --example embed`. It needs no network:
//! the "Polytomic API" is a small hyper server on a loopback port, and the
//! partner key and signing secret are made-up values in temporary files,
//! standing in for the secrets your deployment mounts. It exits non-zero if
//! the stack does not behave as the comments say.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use polytomic_gateway::auth::{AuthConfig, Authenticator, JwtAuthLayer};
use polytomic_gateway::body::{full, BoxError, GatewayBody};
use polytomic_gateway::credentials::{
    Credential, CredentialScheme, CredentialSet, CredentialSwapLayer,
};
use polytomic_gateway::error::RescueLayer;
use polytomic_gateway::policy::{Policy, PolicyConfig, PolicyLayer};
use polytomic_gateway::proxy::{Proxy, Upstream, UpstreamConfig};
use polytomic_gateway::routes::{RouteConfig, RouteLayer, RouteTable};
use polytomic_gateway::secret::CredentialSource;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The made-up HS256 secret callers' tokens are signed with (at least 32 bytes).
const SIGNING_SECRET: &str = "embed-example-signing-secret-0123456789";
/// The made-up partner key the upstream must receive.
const PARTNER_KEY: &str = "pk_example_not_a_real_key";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Secrets from files you own; in a deployment, your mounted Secrets.
    let mut secret_file = tempfile::NamedTempFile::new()?;
    writeln!(secret_file, "{SIGNING_SECRET}")?;
    let mut key_file = tempfile::NamedTempFile::new()?;
    writeln!(key_file, "{PARTNER_KEY}")?;

    // Each part is built once, up front, from the same config structs the
    // gateway's TOML file fills in (`[auth]`, `[[routes]]`, `[policy]`,
    // `[upstream]`): here written as JSON, with the defaults for the rest.
    let auth: AuthConfig = serde_json::from_value(serde_json::json!({
        "issuers": ["https://idp.example.com"],
        "audiences": ["polytomic-gateway"],
        "algorithms": ["HS256"],
        "hs256_secret": {"file": secret_file.path()},
    }))?;
    let auth = Arc::new(Authenticator::from_config(&auth, None).map_err(|p| format!("{p:?}"))?);

    let routes: Vec<RouteConfig> = serde_json::from_value(serde_json::json!([
        {"operation": "organization.get", "methods": ["GET"], "path": "/api/organizations/{id}"},
        {"operation": "organization.update", "methods": ["PUT"], "path": "/api/organizations/{id}"},
    ]))?;
    let table =
        Arc::new(RouteTable::from_config(&routes, &|_| false).map_err(|p| format!("{p:?}"))?);

    let policy: PolicyConfig = serde_json::from_value(serde_json::json!({
        "rules": [
            {"name": "support-reads", "teams": ["support"], "allow": ["organization.get"]},
        ],
    }))?;
    let policy =
        Arc::new(Policy::from_config(&policy, table.operations()).map_err(|p| format!("{p:?}"))?);

    let credentials = CredentialSet::single(Credential::load(
        "partner",
        CredentialSource::File(key_file.path().to_owned()),
        CredentialScheme::Bearer,
    )?);

    // The "Polytomic API": says whether it received the partner key (never
    // the key itself), so the example can show the swap.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_url = format!("http://{}", api.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = api.accept().await {
            let answer =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let partner = req.headers().get(header::AUTHORIZATION).is_some_and(|v| {
                        v.as_bytes() == format!("Bearer {PARTNER_KEY}").as_bytes()
                    });
                    let body = serde_json::json!({"data": {"partner_key_received": partner}});
                    Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body.to_string()),
                    )))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer),
            );
        }
    });
    let upstream = Upstream::from_config(&UpstreamConfig {
        url: api_url,
        ..UpstreamConfig::default()
    })
    .map_err(|p| format!("{p:?}"))?;

    let mut svc = ServiceBuilder::new()
        // Outermost: any `Err` below (the upstream unreachable, say) becomes
        // a JSON error response in Polytomic's shape.
        .layer(RescueLayer::new(Duration::from_secs(30)))
        // Nothing unauthenticated goes further; puts the `Principal` in the
        // extensions.
        .layer(JwtAuthLayer::new(auth))
        // Unknown paths and methods stop here; puts the `RouteMatch` (the
        // operation) in the extensions.
        .layer(RouteLayer::new(table, None))
        // Reads the principal and the route; 403 unless a rule allows it.
        .layer(PolicyLayer::new(policy))
        // The caller's JWT out, the partner key in.
        .layer(CredentialSwapLayer::new(credentials))
        .service(Proxy::new(upstream));

    let org = "4b8e3ad1-9c1f-4d0e-8f55-2f4f6f3b9a10";
    let get = format!("/api/organizations/{org}");
    let support = token("alice@example.com", &["support"])?;
    let cases = [
        (
            "GET, team support",
            "GET",
            &get,
            Some(&support),
            StatusCode::OK,
        ),
        (
            "PUT, team support",
            "PUT",
            &get,
            Some(&support),
            StatusCode::FORBIDDEN,
        ),
        ("GET, no token", "GET", &get, None, StatusCode::UNAUTHORIZED),
        (
            "GET, unknown path",
            "GET",
            &"/api/nope".to_owned(),
            Some(&support),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (what, method, path, bearer, expected) in cases {
        let mut req = Request::builder().method(method).uri(path.as_str());
        if let Some(bearer) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        let req = req.body(full(if method == "PUT" {
            r#"{"name":"Acme"}"#
        } else {
            ""
        }))?;
        // Rescue made the stack infallible: every outcome is a response.
        let response: Response<GatewayBody> = svc.ready().await?.call(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body)?;
        println!("{what}: {status} {body}");
        if status != expected {
            return Err(format!("{what}: expected {expected}, got {status}").into());
        }
        if status == StatusCode::OK && body["data"]["partner_key_received"] != true {
            return Err("the upstream did not receive the partner key".into());
        }
        if status != StatusCode::OK && body.get("key").is_none() {
            return Err(format!("{what}: the refusal is not in Polytomic's error shape").into());
        }
    }
    println!(
        "ok: auth, routes, policy, the credential swap and the proxy, without audit or telemetry"
    );
    Ok(())
}

/// A token your identity provider would issue: HS256 here, for the example.
fn token(sub: &str, teams: &[&str]) -> Result<String, BoxError> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": "https://idp.example.com",
        "aud": "polytomic-gateway",
        "sub": sub,
        "teams": teams,
        "iat": now,
        "exp": now + 300,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SIGNING_SECRET.as_bytes())?,
    )?)
}
