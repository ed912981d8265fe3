//! The `polytomic-gateway` binary: parse the command line, load the config,
//! start logging, and run the chosen command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use polytomic_gateway::{auth, config, demo, server, telemetry, Gateway};

// mimalloc's thread-local free lists suit a proxy's many small, short-lived
// allocations (headers, records, futures) better than glibc's malloc:
// measured in BENCHMARKS.md. The library leaves the choice to its users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory freed while the config was built (the parsed catalog,
/// schema compilation's temporaries) back to the system. mimalloc keeps
/// freed pages for reuse, and nothing at idle reuses these: with the full
/// catalog this is 1.7 MB of the idle gateway's resident memory
/// (BENCHMARKS.md).
fn return_startup_garbage() {
    // SAFETY: `mi_collect` has no preconditions; it frees and decommits
    // memory that no allocation refers to.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

// Each command's help ends with one example (`after_help`). A test runs
// every example's arguments through the parser (tests/binary.rs), so keep
// each on one line, as `polytomic-gateway ...` after any `VAR=value`, with
// no quoting or pipes.

const EXAMPLE: &str = "Example:
  # Try the gateway in front of a built-in fake Polytomic API; needs no config file
  polytomic-gateway demo";

const SERVE_EXAMPLE: &str = "Example:
  # Serve a config file; GATEWAY__SECTION__KEY variables override its keys
  GATEWAY__SERVER__LISTEN=0.0.0.0:8080 polytomic-gateway serve --config /etc/polytomic-gateway/gateway.toml";

const CHECK_EXAMPLE: &str = "Example:
  # Validate a config before deploying it: prints `ok`, or every problem and exits 1
  polytomic-gateway check --config /etc/polytomic-gateway/gateway.toml";

const DEMO_EXAMPLE: &str = "Example:
  # The demo, from any directory, on other ports than 8080 and 8081
  polytomic-gateway demo --listen 127.0.0.1:9080 --admin-listen 127.0.0.1:9081";

const ROUTES_EXAMPLE: &str = "Example:
  # What the shipped config routes (the whole API catalog), from the repository root
  polytomic-gateway routes --config config/gateway.toml";

const EXPLAIN_EXAMPLE: &str = "Example:
  # May team support rename this organization? Exits 3: no rule allows it
  polytomic-gateway policy explain --config config/gateway.toml --team support --method PUT --path /api/organizations/248df4b7-aa70-47b8-a036-33ac447e668d";

const POLICY_TEST_EXAMPLE: &str = "Example:
  # The shipped policy cases against the shipped config, as CI runs them
  polytomic-gateway policy test --config config/gateway.toml config/policy-tests.toml";

const VERIFY_EXAMPLE: &str = "Example:
  # A rotated trail, oldest file first, with the public key that `check` prints
  polytomic-gateway audit verify --public-key audit-signing.pub audit.jsonl.1 audit.jsonl";

const TOKEN_EXAMPLE: &str = "Example:
  # A 10-minute token for alice, team platform, that the demo's gateway accepts
  polytomic-gateway token --config config/demo.toml --sub alice --team platform --ttl 10m";

#[derive(Parser)]
#[command(
    name = "polytomic-gateway",
    version,
    about = "Authenticating reverse proxy for the Polytomic API",
    after_help = EXAMPLE
)]
struct Cli {
    /// Config file [default: $GATEWAY_CONFIG, then config/gateway.toml; for demo, its built-in config]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default command).
    #[command(after_help = SERVE_EXAMPLE)]
    Serve,
    /// Load and validate everything `serve` would, fetching the JWKS once;
    /// print the config version and `ok`, or every problem.
    #[command(after_help = CHECK_EXAMPLE)]
    Check,
    /// Run the gateway in front of a built-in fake Polytomic API; needs no
    /// config file.
    ///
    /// Its config, keys and schemas are built in (config/demo.toml and the
    /// files it names, as they were at build time); `--config FILE` uses
    /// that file instead.
    #[command(after_help = DEMO_EXAMPLE)]
    Demo {
        /// Address the gateway listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address `/metrics` is served on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin_listen: SocketAddr,
    },
    /// List every routed operation: its methods, path, credential, whether
    /// write bodies are validated, and where it comes from (the catalog or
    /// `[[routes]]`).
    #[command(after_help = ROUTES_EXAMPLE)]
    Routes,
    /// Inspect the route table and policy.
    #[command(after_help = EXPLAIN_EXAMPLE)]
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
    /// Work with the audit trail.
    #[command(after_help = VERIFY_EXAMPLE)]
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Print a development token signed with `auth.hs256_secret`.
    #[command(after_help = TOKEN_EXAMPLE)]
    Token {
        /// The token's subject.
        #[arg(long)]
        sub: String,
        /// A team the subject belongs to (repeatable).
        #[arg(long = "team")]
        teams: Vec<String>,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Say what the gateway would decide for a caller and a request: the
    /// route, the decision and the deciding rule. Exits 0 on allow, 3 on deny.
    #[command(after_help = EXPLAIN_EXAMPLE)]
    Explain {
        /// A team of the caller (repeatable).
        #[arg(long = "team")]
        teams: Vec<String>,
        /// The caller's subject.
        #[arg(long)]
        sub: Option<String>,
        /// The request method: GET, HEAD, POST, PUT, PATCH, DELETE or
        /// OPTIONS, in upper case (the methods routes can list); any other
        /// exits 1.
        #[arg(long)]
        method: String,
        /// The request path, with a query if the operation reads an
        /// organization from it.
        #[arg(long)]
        path: String,
        /// The JSON body, for operations that name an organization in it
        /// (`organization_id`); only the organizations in it are read.
        #[arg(long)]
        body: Option<String>,
    },
    /// Run a cases file ("policy as code"): each `[[case]]` names a caller,
    /// a request and the decision it must get. Prints one `FAIL` line per
    /// failing case, then a summary. Exits 0 when every case passes, 1 when
    /// one fails, 2 on a configuration or cases-file error.
    #[command(after_help = POLICY_TEST_EXAMPLE)]
    Test {
        /// The cases file (TOML; see docs/policy.md, "Testing a policy").
        #[arg(value_name = "CASES.toml")]
        cases: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files and every checkpoint's
    /// signature. Exits 0 when they hold, 1 at the first break (naming the
    /// line and the kind of break), 2 when a file cannot be read.
    #[command(after_help = VERIFY_EXAMPLE)]
    Verify {
        /// The public half of `audit.signing_key` (PEM, as `check` prints it
        /// or `openssl pkey -pubout` writes it).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// The audit files, oldest first (rotated files before the current
        /// one).
        #[arg(required = true, value_name = "AUDIT_FILE")]
        files: Vec<PathBuf>,
    },
}

/// `policy explain`'s exit code when the request would be refused.
const EXIT_DENY: u8 = 3;

// Connections are served on `server.workers` threads of their own (see
// `Gateway::serve`); this runtime only accepts and runs background work.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Before anything can panic: a panic's message may hold request data,
    // so it is logged without it (see `error::install_panic_hook`).
    polytomic_gateway::error::install_panic_hook();
    let cli = Cli::parse();
    // `serve` and `demo` log as `[telemetry]` says, once the config is read.
    if !matches!(
        cli.command,
        None | Some(Command::Serve | Command::Demo { .. })
    ) {
        telemetry::init_logging();
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config::resolve(cli.config)).await,
        Command::Check => check(config::resolve(cli.config)).await,
        Command::Policy {
            action:
                PolicyCommand::Explain {
                    teams,
                    sub,
                    method,
                    path,
                    body,
                },
        } => explain(
            &config::resolve(cli.config),
            teams,
            sub,
            &method,
            &path,
            body.as_deref(),
        ),
        Command::Policy {
            action: PolicyCommand::Test { cases },
        } => policy_test(&config::resolve(cli.config), &cases),
        Command::Routes => routes(&config::resolve(cli.config)),
        Command::Audit {
            action: AuditCommand::Verify { public_key, files },
        } => verify(&public_key, &files),
        Command::Token { sub, teams, ttl } => {
            token(&config::resolve(cli.config), &sub, &teams, ttl)
        }
        Command::Demo {
            listen,
            admin_listen,
        } => match demo::run(cli.config.as_deref(), listen, admin_listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&*e),
        },
    }
}

fn build(config_path: &config::ConfigPath) -> Result<Gateway, config::ConfigErrors> {
    Gateway::build(config::load_resolved(config_path)?, &config_path.path)
}

async fn check(config_path: config::ConfigPath) -> ExitCode {
    let gateway = match build(&config_path) {
        Ok(gateway) => gateway,
        Err(e) => return fail(&e),
    };
    let path = config_path.path;
    let config_problems: Vec<_> = config::load(&path)
        .ok()
        .and_then(|c| polytomic_gateway::audit::Audit::probe(&c.audit).err())
        .into_iter()
        .collect();
    if !config_problems.is_empty() {
        return fail(&config::ConfigErrors::new(&path, config_problems));
    }
    if gateway.catalog().enabled {
        println!("{}", gateway.catalog().describe());
    }
    if let Err(error) = gateway.authenticator().keys().refresh().await {
        let problem = config::ConfigProblem::new(
            "auth.jwks_url",
            format!("fetching the JWKS failed: {error}"),
        );
        return fail(&config::ConfigErrors::new(&path, vec![problem]));
    }
    if let Some(pem) = gateway.audit().signing_public_key() {
        // The public half only: what `audit verify --public-key` needs.
        print!("audit.signing_key public key:\n{pem}");
    }
    // What `serve` would record as `config_version`, for a deploy pipeline.
    println!("config version: {}", gateway.config_version());
    println!("ok");
    ExitCode::SUCCESS
}

fn verify(public_key: &Path, files: &[PathBuf]) -> ExitCode {
    use polytomic_gateway::audit::verify::{self, PublicKey};
    const UNREADABLE: u8 = 2;
    let key = match std::fs::read(public_key)
        .map_err(|e| e.to_string())
        .and_then(|pem| PublicKey::from_pem(&pem))
    {
        Ok(key) => key,
        Err(e) => {
            eprintln!("{}: {e}", public_key.display());
            return ExitCode::from(UNREADABLE);
        }
    };
    let mut trail = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read(file) {
            Ok(text) => trail.push((file.display().to_string(), text)),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                return ExitCode::from(UNREADABLE);
            }
        }
    }
    match verify::verify(&trail, &key) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(broken) => {
            println!("{broken}");
            ExitCode::FAILURE
        }
    }
}

/// The route table and policy of the config at `path`, built as `serve`
/// builds them, reading no credential or key (`policy explain`, `policy
/// test`); an error names each key and the file.
fn routes_and_policy(
    config_path: &config::ConfigPath,
) -> Result<
    (
        polytomic_gateway::routes::RouteTable,
        polytomic_gateway::policy::Policy,
    ),
    String,
> {
    let path = &config_path.path;
    let config = config::load_resolved(config_path).map_err(|e| e.to_string())?;
    config
        .route_table()
        .and_then(|(table, _)| {
            polytomic_gateway::policy::Policy::from_config(&config.policy, table.operations())
                .map(|policy| (table, policy))
        })
        .map_err(|problems| config::ConfigErrors::new(path, problems).to_string())
}

fn explain(
    config_path: &config::ConfigPath,
    teams: Vec<String>,
    sub: Option<String>,
    method: &str,
    target: &str,
    body: Option<&str>,
) -> ExitCode {
    let (table, policy) = match routes_and_policy(config_path) {
        Ok(built) => built,
        Err(e) => return fail(&e),
    };
    let body: Option<serde_json::Value> = match body.map(serde_json::from_str).transpose() {
        Ok(body) => body,
        Err(e) => return fail(&format!("--body is not JSON: {e}")),
    };
    let method = match http::Method::from_bytes(method.as_bytes()) {
        Ok(m) if polytomic_gateway::routes::STANDARD_METHODS.contains(&m) => m,
        _ => {
            return fail(&format!(
                "--method {method:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            ))
        }
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let principal = auth::Principal::new(sub.clone().unwrap_or_default(), teams.clone());
    let explanation = polytomic_gateway::policy_cases::explain(
        &table,
        &policy,
        &principal,
        &method,
        path,
        query,
        body.as_ref(),
    );
    println!("request:   {method} {target}");
    println!(
        "principal: sub={} teams=[{}]",
        sub.as_deref().unwrap_or("-"),
        teams.join(", ")
    );
    match &explanation.route {
        Err(refusal) => {
            println!("route:     none ({}: {refusal})", refusal.key());
            println!("decision:  deny (status {})", refusal.status().as_u16());
        }
        Ok(route) => {
            println!(
                "route:     {} ({}, from {})",
                route.operation,
                route.template,
                route.source.as_str()
            );
            if !route.organization_ids.is_empty() {
                let ids: Vec<&str> = route.organization_ids.iter().map(|id| &**id).collect();
                println!("org id:    {}", ids.join(", "));
            }
            if !route.body_organization_fields.is_empty() {
                let fields: Vec<&str> = route
                    .body_organization_fields
                    .iter()
                    .map(|f| &**f)
                    .collect();
                println!(
                    "body org:  {} ({})",
                    fields.join(", "),
                    if body.is_some() {
                        "read from --body"
                    } else {
                        "no --body given: a rule scoped to organizations cannot match"
                    }
                );
            }
            let decision = explanation
                .decision
                .as_ref()
                .expect("a matched route is decided");
            println!(
                "decision:  {}",
                if decision.allowed { "allow" } else { "deny" }
            );
            match &decision.rule {
                Some(rule) => println!("rule:      {rule}"),
                None => println!("rule:      no rule allows it"),
            }
            println!("mode:      {}", decision.mode.as_str());
        }
    }
    if explanation.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENY)
    }
}

/// `policy test`: runs a cases file through the routes and policy `explain`
/// builds, so it judges what `serve` would decide.
fn policy_test(config_path: &config::ConfigPath, cases_path: &Path) -> ExitCode {
    use polytomic_gateway::policy_cases::CaseSuite;
    // Apart from 1, a failing case: a CI log tells a broken policy from a
    // broken test setup.
    const INVALID: u8 = 2;
    let invalid = |error: &dyn std::fmt::Display| {
        eprintln!("{error}");
        ExitCode::from(INVALID)
    };
    let (table, policy) = match routes_and_policy(config_path) {
        Ok(built) => built,
        Err(e) => return invalid(&e),
    };
    let cases = match CaseSuite::load(cases_path) {
        Ok(cases) => cases,
        Err(e) => return invalid(&e),
    };
    let report = cases.run(&table, &policy);
    println!("{report}");
    if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `routes`: one line per routed operation.
fn routes(config_path: &config::ConfigPath) -> ExitCode {
    let config = match config::load_resolved(config_path) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    // Shown for the routes that name no credential: `partner`, or the only
    // one there is.
    let default_credential =
        polytomic_gateway::credentials::default_credential_name(&config.credentials);
    let ((table, summary), default_credential) = match (config.route_table(), default_credential) {
        (Ok(built), Ok(name)) => (built, name),
        (built, default_credential) => {
            let problems = built
                .err()
                .unwrap_or_default()
                .into_iter()
                .chain(default_credential.err())
                .collect();
            return fail(&config::ConfigErrors::new(&config_path.path, problems));
        }
    };
    let rows: Vec<[String; 6]> = table
        .summaries()
        .iter()
        .map(|r| {
            let methods: Vec<&str> = r.methods.iter().map(http::Method::as_str).collect();
            [
                r.operation.to_string(),
                methods.join(","),
                r.template.to_string(),
                r.credential
                    .as_deref()
                    .unwrap_or(default_credential)
                    .to_owned(),
                if r.has_schema { "schema" } else { "-" }.to_owned(),
                r.source.as_str().to_owned(),
            ]
        })
        .collect();
    let header = [
        "OPERATION",
        "METHODS",
        "PATH",
        "CREDENTIAL",
        "BODY",
        "SOURCE",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    // Written, not printed: `routes | head` closing the pipe ends the
    // listing quietly instead of panicking.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        if writeln!(out, "{}", cells.join("  ").trim_end()).is_err() {
            return ExitCode::SUCCESS;
        }
    }
    let _ = writeln!(out, "{} operations routed", rows.len());
    if summary.enabled {
        let _ = writeln!(out, "{}", summary.describe());
    }
    ExitCode::SUCCESS
}

fn token(config_path: &config::ConfigPath, sub: &str, teams: &[String], ttl: Duration) -> ExitCode {
    let path = &config_path.path;
    let config = match config::load_resolved(config_path) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let Some(auth) = &config.auth else {
        return fail(&format!("{}: no [auth] section", path.display()));
    };
    match auth::token::mint_dev_token(auth, sub, teams, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{}: cannot mint a token: {e}", path.display())),
    }
}

async fn serve(config_path: config::ConfigPath) -> ExitCode {
    let path = config_path.path.clone();
    let config = match config::load_resolved(&config_path) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let telemetry = match polytomic_gateway::server::start_telemetry(&config) {
        Ok(telemetry) => telemetry,
        Err(problems) => return fail(&config::ConfigErrors::new(&path, problems)),
    };
    let grace = config.server.shutdown_grace;
    let mut gateway = match Gateway::build(config, &path) {
        Ok(gateway) => gateway,
        Err(e) => return fail(&e),
    };
    return_startup_garbage();
    gateway.watch_telemetry(&telemetry);
    // Signal handlers first, so a signal at any later point drains cleanly.
    let (shutdown, reload) = match (
        server::shutdown_signal(),
        server::reload_on_sighup(gateway.audit().clone(), gateway.reloader()),
    ) {
        (Ok(shutdown), Ok(reload)) => (shutdown, reload),
        (Err(e), _) | (_, Err(e)) => return fail(&format!("cannot install signal handlers: {e}")),
    };
    let listener = match tokio::net::TcpListener::bind(gateway.listen_addr()).await {
        Ok(listener) => listener,
        Err(e) => return fail(&format!("cannot listen on {}: {e}", gateway.listen_addr())),
    };
    let admin = match tokio::net::TcpListener::bind(gateway.admin_addr()).await {
        Ok(admin) => admin,
        Err(e) => {
            return fail(&format!(
                "cannot listen on {} (server.admin_listen): {e}",
                gateway.admin_addr()
            ))
        }
    };
    tokio::spawn(reload);
    let (shutdown, signaled) = server::timed(shutdown);
    let served = gateway.serve(listener, admin, shutdown).await;
    // Spans get what is left of the grace period after the drain.
    telemetry
        .shutdown(server::remaining(grace, &signaled))
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{error}");
    ExitCode::FAILURE
}
