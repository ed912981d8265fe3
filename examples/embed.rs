//! Composing the gateway's layers in your own tower stack.
//!
//! Another team runs its own service and wants the gateway's behaviour in
//! front of it: client credentials stripped and the partner key injected, the
//! `X-Polytomic-Version` header set, a body limit, and every failure answered
//! as Polytomic-shaped JSON. Each of those is a public `Layer`; this example
//! stacks them over a handler that prints what it received.
//!
//! Run it with `cargo run --release --example embed`. It needs no network: the
//! "partner key" is a made-up value written to a temporary file, standing in
//! for the secret file your deployment mounts.

use std::io::Write;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use polytomic_gateway::body::{full, BoxError, GatewayBody};
use polytomic_gateway::config::{CredentialScheme, PolytomicConfig, VersionMode};
use polytomic_gateway::credentials::{Credential, CredentialSet, CredentialSwapLayer};
use polytomic_gateway::error::RescueLayer;
use polytomic_gateway::limit::BodyLimitLayer;
use polytomic_gateway::secret::CredentialSource;
use polytomic_gateway::version::{PolytomicVersionLayer, VersionPolicy, X_POLYTOMIC_VERSION};
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Build each part once, up front, as the gateway itself does.
    let version = VersionPolicy::from_config(&PolytomicConfig {
        version: "2025-09-18".to_owned(),
        version_mode: VersionMode::Override,
        allowed_versions: None,
    })
    .map_err(|problems| format!("bad [polytomic] settings: {problems:?}"))?;

    // A secret file you own; in a deployment, your mounted Secret.
    let mut key_file = tempfile::NamedTempFile::new()?;
    writeln!(key_file, "pk_example_not_a_real_key")?;
    let credential = Credential::load(
        "partner",
        CredentialSource::File(key_file.path().to_owned()),
        CredentialScheme::Bearer,
    )?;
    let credentials = CredentialSet::single(credential);
    // Kept only to check the swap below; never printed.
    let injected = credentials.default_credential().header_value();

    // Your own service: it only ever sees the swapped request.
    let handler = service_fn(move |req: Request<GatewayBody>| {
        let injected = injected.clone();
        async move {
            let (parts, body) = req.into_parts();
            let names: Vec<&str> = parts.headers.keys().map(|name| name.as_str()).collect();
            println!("inner service saw: {} {}", parts.method, parts.uri);
            println!("  header names: {}", names.join(", "));
            println!(
                "  x-polytomic-version: {:?}",
                parts.headers.get(&X_POLYTOMIC_VERSION)
            );
            println!(
                "  authorization replaced: {}",
                parts.headers.get(header::AUTHORIZATION) == Some(&injected)
            );
            let body = body.collect().await?.to_bytes();
            println!("  body: {} bytes", body.len());
            Ok::<_, BoxError>(Response::new(full(r#"{"data":{}}"#)))
        }
    });

    let svc = ServiceBuilder::new()
        // Outermost: any `Err` below becomes a JSON error response.
        .layer(RescueLayer::new(Duration::from_secs(30)))
        // Before anything reads the body; 413 past 64 KiB.
        .layer(BodyLimitLayer::new(64 * 1024))
        // The caller's Authorization, Proxy-Authorization and Cookie out;
        // the partner key in.
        .layer(CredentialSwapLayer::new(credentials))
        .layer(PolytomicVersionLayer::new(version))
        .service(handler);

    let req = Request::post("/api/organizations")
        .header(header::AUTHORIZATION, "Bearer the-callers-own-token")
        .header(header::COOKIE, "session=abc")
        .header(X_POLYTOMIC_VERSION, HeaderValue::from_static("2024-02-08"))
        .header("idempotency-key", "create-acme-1")
        .header(header::CONTENT_TYPE, "application/json")
        .body(String::from(r#"{"name":"Acme Corp"}"#))?;
    // Rescue made the stack infallible: every outcome is a response.
    let Ok(response) = svc.oneshot(req).await;
    println!("response: {}", response.status());
    Ok(())
}
