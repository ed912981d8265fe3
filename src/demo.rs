//! `polytomic-gateway demo`: the gateway in front of an in-process fake API.
//!
//! The fake API ([`crate::fake`]) listens on a free loopback port and accepts
//! only the partner key from the demo config; the gateway listens on
//! `127.0.0.1:8080` (or `--listen`) and forwards to it. The fake API logs each
//! request it receives, with the credential masked, so the swap is visible.
//!
//! Callers authenticate as everywhere else: the demo config trusts a
//! development HS256 secret, and the demo mints a one-hour token with it for
//! the curl command it prints.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use crate::config;
use crate::fake::{FakePolytomic, CURRENT_ORG_ID};
use crate::server::{reload_on_sighup, shutdown_signal, Gateway};

/// The config the demo uses unless `--config` says otherwise.
pub const DEMO_CONFIG_PATH: &str = "config/demo.toml";
/// The subject of the token the demo mints.
pub const DEMO_SUBJECT: &str = "demo-user@example.com";
/// The team of the token the demo mints.
pub const DEMO_TEAM: &str = "platform";

/// Runs the demo until SIGINT/SIGTERM. Errors are printable as they are.
pub async fn run(
    config_path: &Path,
    listen: SocketAddr,
    admin_listen: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = config::load(config_path)?;
    config.server.listen = listen;
    config.server.admin_listen = admin_listen;
    // The fake API is told the demo's partner key, so it can check the swap.
    let credentials = crate::credentials::CredentialSet::load(&config.credentials)
        .map_err(|problems| config::ConfigErrors::new(config_path, problems))?;
    let fake = FakePolytomic::with_authorization(credentials.default_credential().header_value())
        .with_logging();
    let fake_addr = fake.spawn().await?;
    config.upstream.url = format!("http://{fake_addr}");

    let auth = config.auth.as_ref().ok_or_else(|| {
        format!(
            "{}: the demo needs an [auth] section",
            config_path.display()
        )
    })?;
    let token = crate::auth::token::mint_dev_token(
        auth,
        DEMO_SUBJECT,
        &[DEMO_TEAM.to_owned()],
        std::time::Duration::from_secs(3600),
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;

    let support_token = crate::auth::token::mint_dev_token(
        auth,
        "support-user@example.com",
        &["support".to_owned()],
        std::time::Duration::from_secs(3600),
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;

    let telemetry = crate::server::start_telemetry(&config)
        .map_err(|problems| config::ConfigErrors::new(config_path, problems))?;
    let grace = config.server.shutdown_grace;
    // Reloads read the file again: they get the same listeners and fake API.
    let upstream_url = config.upstream.url.clone();
    let adjust: crate::server::Adjust =
        std::sync::Arc::new(move |config: &mut config::GatewayConfig| {
            config.server.listen = listen;
            config.server.admin_listen = admin_listen;
            config.upstream.url = upstream_url.clone();
        });
    let mut gateway = Gateway::build_adjusted(config, config_path, Some(adjust))?;
    gateway.watch_telemetry(&telemetry);
    let shutdown = shutdown_signal()?;
    let reload = reload_on_sighup(gateway.audit().clone(), gateway.reloader())?;
    let listener = tokio::net::TcpListener::bind(gateway.listen_addr())
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let admin_listen = gateway.admin_addr();
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {admin_listen} (server.admin_listen): {e}"))?;
    let admin_addr = admin.local_addr()?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "polytomic-gateway demo")?;
    writeln!(
        out,
        "  fake Polytomic API: http://{fake_addr} (in-process; checks the partner key)"
    )?;
    writeln!(out, "  gateway:            http://{addr}")?;
    writeln!(out, "  metrics:            http://{admin_addr}/metrics")?;
    writeln!(
        out,
        "Try it as {DEMO_SUBJECT}, team {DEMO_TEAM}, with a dev token valid for 1h."
    )?;
    writeln!(
        out,
        "The gateway verifies it, then swaps in the partner key and the version header:"
    )?;
    writeln!(
        out,
        "  curl -sS -H 'Authorization: Bearer {token}' http://{addr}/api/organization"
    )?;
    writeln!(out, "Without the token the gateway answers 401:")?;
    writeln!(out, "  curl -sS http://{addr}/api/organization")?;
    writeln!(
        out,
        "The policy lets team support read but not update organizations (403):"
    )?;
    writeln!(
        out,
        "  curl -sS -X PUT -H 'Authorization: Bearer {support_token}' -H 'Content-Type: application/json' -d '{{\"name\":\"Renamed\"}}' http://{addr}/api/organizations/{CURRENT_ORG_ID}"
    )?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()?;
    drop(out);

    tokio::spawn(reload);
    let (shutdown, signaled) = crate::server::timed(shutdown);
    let served = gateway.serve(listener, admin, shutdown).await;
    telemetry
        .shutdown(crate::server::remaining(grace, &signaled))
        .await;
    Ok(served?)
}
