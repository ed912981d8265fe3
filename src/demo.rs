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
//!
//! The demo's config and the files it names are built into the binary
//! ([`BuiltIn`]), so `demo` runs from any directory, installed with `cargo
//! install` or in the image; `--config FILE` uses that file instead.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config;
use crate::fake::{FakePolytomic, CURRENT_ORG_ID};
use crate::server::{reload_on_sighup, shutdown_signal, Gateway};

/// The config the demo uses unless `--config` says otherwise:
/// `config/demo.toml`, as it was when the binary was built.
pub const BUILT_IN_CONFIG: &str = include_str!("../config/demo.toml");

/// The files [`BUILT_IN_CONFIG`] names, each as it names it (a path relative
/// to the working directory, like every path in a config) and its contents.
/// A file listed here that the config does not name fails the demo's start;
/// one the config names that is not listed here would be read relative to
/// the working directory: `built_in_config_names_only_built_in_files` fails.
const BUILT_IN_FILES: &[(&str, &str)] = &[
    (
        "config/demo-partner-key",
        include_str!("../config/demo-partner-key"),
    ),
    (
        "config/demo-jwt-secret",
        include_str!("../config/demo-jwt-secret"),
    ),
    (
        "schemas/organization-create.json",
        include_str!("../schemas/organization-create.json"),
    ),
    (
        "schemas/organization-update.json",
        include_str!("../schemas/organization-update.json"),
    ),
];

/// The subject of the token the demo mints.
pub const DEMO_SUBJECT: &str = "demo-user@example.com";
/// The team of the token the demo mints.
pub const DEMO_TEAM: &str = "platform";

/// The built-in config written out, with the files it names, to a private
/// directory of its own (0700, files 0600), removed when this is dropped.
///
/// The gateway reads its config, key files and schemas from files, and
/// reads the config again on SIGHUP: writing them out keeps `serve`'s code
/// and config format as they are. The written config names the written
/// files by absolute path, so it does not depend on the working directory.
#[derive(Debug)]
pub struct BuiltIn {
    /// Held for its drop, which removes the directory.
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl BuiltIn {
    /// Writes the built-in config and its files under the temporary
    /// directory (`$TMPDIR`, else `/tmp`).
    pub fn write() -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("polytomic-gateway-demo-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| {
                format!(
                    "cannot create a directory for the built-in demo config in {}: {e} (set TMPDIR to a writable directory, or pass --config FILE)",
                    std::env::temp_dir().display()
                )
            })?;
        let mut config = BUILT_IN_CONFIG.to_owned();
        for (named, contents) in BUILT_IN_FILES {
            let name = Path::new(named).file_name().expect("a file name");
            let path = dir.path().join(name);
            write_private(&path, contents)?;
            // A TOML string, exactly as the config writes it: a file named
            // elsewhere (a comment, another key) is left alone.
            let quoted = format!("\"{named}\"");
            if !config.contains(&quoted) {
                return Err(format!(
                    "the built-in demo config does not name {named} (a build mistake)"
                ));
            }
            config = config.replace(&quoted, &toml_string(&path)?);
        }
        let path = dir.path().join("demo.toml");
        write_private(&path, &config)?;
        Ok(Self {
            _dir: dir,
            config: path,
        })
    }

    /// The written config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

/// Creates `path` (which must not exist) readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `path` as a TOML basic string. A JSON string is one: TOML's escapes are
/// JSON's (serde_json writes no `\/`), so any path is quoted right.
fn toml_string(path: &Path) -> Result<String, String> {
    let path = path.to_str().ok_or_else(|| {
        format!(
            "{}: the temporary directory's path is not UTF-8 (set TMPDIR, or pass --config FILE)",
            path.display()
        )
    })?;
    serde_json::to_string(path).map_err(|e| e.to_string())
}

/// Runs the demo until SIGINT/SIGTERM, with the config at `config_file`,
/// else the built-in one. Errors are printable as they are.
pub async fn run(
    config_file: Option<&Path>,
    listen: SocketAddr,
    admin_listen: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    // Kept until the demo stops: dropping it removes the written files.
    let built_in;
    let config_path = match config_file {
        Some(path) => path,
        None => {
            built_in = BuiltIn::write()?;
            built_in.config_path()
        }
    };
    let mut config = match config_file {
        Some(path) => config::load_resolved(&config::ConfigPath {
            path: path.to_owned(),
            origin: config::ConfigOrigin::Flag,
        })?,
        None => config::load(config_path)?,
    };
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
    match config_file {
        Some(path) => writeln!(out, "  config:             {}", path.display())?,
        None => writeln!(
            out,
            "  config:             built in (config/demo.toml; --config FILE for another)"
        )?,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the written config names is one of the written files: a
    /// path left relative would resolve against the working directory,
    /// which holds the repository's copies when the tests run, and nowhere
    /// else.
    #[test]
    fn built_in_config_names_only_built_in_files() {
        use std::os::unix::fs::PermissionsExt;
        let built_in = BuiltIn::write().unwrap();
        let dir = built_in._dir.path().to_owned();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let config = config::load(built_in.config_path()).unwrap();
        let mut named: Vec<PathBuf> = config
            .routes
            .iter()
            .filter_map(|route| route.schema.clone())
            .collect();
        named.extend(config.credentials.values().filter_map(|c| c.file.clone()));
        let auth = config.auth.as_ref().unwrap();
        named.extend(auth.hs256_secret.as_ref().and_then(|s| s.file.clone()));
        assert_eq!(named.len(), BUILT_IN_FILES.len(), "{named:?}");
        for path in &named {
            assert!(path.starts_with(&dir), "{} is not built in", path.display());
            assert_eq!(mode(path), 0o600, "{}", path.display());
        }
        assert_eq!(mode(built_in.config_path()), 0o600);
        // What the repository's config says, apart from the paths.
        assert_eq!(config.policy.rules.len(), 3);
        drop(built_in);
        assert!(!dir.exists(), "the written files outlive the demo");
    }

    #[test]
    fn a_path_is_quoted_as_a_toml_string() {
        let quoted = toml_string(Path::new("/tmp/a \"b\"\\c\td")).unwrap();
        let parsed: std::collections::BTreeMap<String, String> = ::config::Config::builder()
            .add_source(::config::File::from_str(
                &format!("path = {quoted}"),
                ::config::FileFormat::Toml,
            ))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        assert_eq!(parsed["path"], "/tmp/a \"b\"\\c\td");
    }
}
