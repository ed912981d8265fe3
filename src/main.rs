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

#[derive(Parser)]
#[command(
    name = "polytomic-gateway",
    version,
    about = "Authenticating reverse proxy for the Polytomic API"
)]
struct Cli {
    /// Config file [default: $GATEWAY_CONFIG, then config/gateway.toml; for demo, config/demo.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default command).
    Serve,
    /// Load and validate everything `serve` would, fetching the JWKS once;
    /// print `ok` or every problem.
    Check,
    /// Run the gateway in front of a built-in fake Polytomic API.
    Demo {
        /// Address the gateway listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Inspect the route table and policy.
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
    /// Print a development token signed with `auth.hs256_secret`.
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
    Explain {
        /// A team of the caller (repeatable).
        #[arg(long = "team")]
        teams: Vec<String>,
        /// The caller's subject.
        #[arg(long)]
        sub: Option<String>,
        /// The request method.
        #[arg(long)]
        method: String,
        /// The request path (a query is ignored, as in routing).
        #[arg(long)]
        path: String,
    },
}

/// `policy explain`'s exit code when the request would be refused.
const EXIT_DENY: u8 = 3;

// Connections are served on `server.workers` threads of their own (see
// `Gateway::serve`); this runtime only accepts and runs background work.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` and `demo` log as `[telemetry]` says, once the config is read.
    if !matches!(
        cli.command,
        None | Some(Command::Serve | Command::Demo { .. })
    ) {
        telemetry::init_logging();
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config::resolve_path(cli.config)).await,
        Command::Check => check(config::resolve_path(cli.config)).await,
        Command::Policy {
            action:
                PolicyCommand::Explain {
                    teams,
                    sub,
                    method,
                    path,
                },
        } => explain(
            &config::resolve_path(cli.config),
            teams,
            sub,
            &method,
            &path,
        ),
        Command::Token { sub, teams, ttl } => {
            token(&config::resolve_path(cli.config), &sub, &teams, ttl)
        }
        Command::Demo { listen } => {
            let path = cli.config.unwrap_or_else(|| demo::DEMO_CONFIG_PATH.into());
            match demo::run(&path, listen).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&*e),
            }
        }
    }
}

fn build(path: &Path) -> Result<Gateway, config::ConfigErrors> {
    Gateway::build(config::load(path)?, path)
}

async fn check(path: PathBuf) -> ExitCode {
    let gateway = match build(&path) {
        Ok(gateway) => gateway,
        Err(e) => return fail(&e),
    };
    let config_problems: Vec<_> = config::load(&path)
        .ok()
        .and_then(|c| polytomic_gateway::audit::Audit::probe(&c.audit).err())
        .into_iter()
        .collect();
    if !config_problems.is_empty() {
        return fail(&config::ConfigErrors::new(&path, config_problems));
    }
    if let Err(error) = gateway.authenticator().keys().refresh().await {
        let problem = config::ConfigProblem::new(
            "auth.jwks_url",
            format!("fetching the JWKS failed: {error}"),
        );
        return fail(&config::ConfigErrors::new(&path, vec![problem]));
    }
    println!("ok");
    ExitCode::SUCCESS
}

fn explain(
    config_path: &Path,
    teams: Vec<String>,
    sub: Option<String>,
    method: &str,
    target: &str,
) -> ExitCode {
    use polytomic_gateway::policy::{self, Policy};
    use polytomic_gateway::routes::RouteTable;
    let config = match config::load(config_path) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let built = RouteTable::from_config(&config.routes, &|name| {
        config.credentials.contains_key(name)
    })
    .and_then(|table| Policy::from_config(&config.policy, table.operations()).map(|p| (table, p)));
    let (table, policy) = match built {
        Ok(built) => built,
        Err(problems) => return fail(&config::ConfigErrors::new(config_path, problems)),
    };
    let method = match http::Method::from_bytes(method.as_bytes()) {
        Ok(m) if polytomic_gateway::routes::STANDARD_METHODS.contains(&m) => m,
        _ => {
            return fail(&format!(
                "--method {method:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            ))
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    let principal = auth::Principal::new(sub.clone().unwrap_or_default(), teams.clone());
    let explanation = policy::explain(&table, &policy, &principal, &method, path);
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
            println!("route:     {} ({})", route.operation, route.template);
            if let Some(id) = &route.organization_id {
                println!("org id:    {id}");
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

fn token(path: &Path, sub: &str, teams: &[String], ttl: Duration) -> ExitCode {
    let config = match config::load(path) {
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

async fn serve(path: PathBuf) -> ExitCode {
    let config = match config::load(&path) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let telemetry = match telemetry::start(&config) {
        Ok(telemetry) => telemetry,
        Err(problems) => return fail(&config::ConfigErrors::new(&path, problems)),
    };
    let grace = config.server.shutdown_grace;
    let gateway = match Gateway::build(config, &path) {
        Ok(gateway) => gateway,
        Err(e) => return fail(&e),
    };
    gateway.metrics().watch_spans(telemetry.span_stats());
    // Signal handlers first, so a signal at any later point drains cleanly.
    let (shutdown, reload) = match (
        server::shutdown_signal(),
        server::reload_on_sighup(gateway.credentials().clone(), gateway.audit().clone()),
    ) {
        (Ok(shutdown), Ok(reload)) => (shutdown, reload),
        (Err(e), _) | (_, Err(e)) => return fail(&format!("cannot install signal handlers: {e}")),
    };
    let listener = match tokio::net::TcpListener::bind(gateway.listen_addr()).await {
        Ok(listener) => listener,
        Err(e) => return fail(&format!("cannot listen on {}: {e}", gateway.listen_addr())),
    };
    tokio::spawn(reload);
    let (shutdown, signaled) = server::timed(shutdown);
    let served = gateway.serve(listener, shutdown).await;
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
