//! The `polytomic-gateway` binary: parse the command line, load the config,
//! start logging, and run the chosen command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use polytomic_gateway::{auth, config, demo, server, telemetry, Gateway};

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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config::resolve_path(cli.config)).await,
        Command::Check => check(config::resolve_path(cli.config)).await,
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
    let gateway = match build(&path) {
        Ok(gateway) => gateway,
        Err(e) => return fail(&e),
    };
    // Signal handlers first, so a signal at any later point drains cleanly.
    let (shutdown, reload) = match (
        server::shutdown_signal(),
        server::reload_on_sighup(gateway.credentials().clone()),
    ) {
        (Ok(shutdown), Ok(reload)) => (shutdown, reload),
        (Err(e), _) | (_, Err(e)) => return fail(&format!("cannot install signal handlers: {e}")),
    };
    let listener = match tokio::net::TcpListener::bind(gateway.listen_addr()).await {
        Ok(listener) => listener,
        Err(e) => return fail(&format!("cannot listen on {}: {e}", gateway.listen_addr())),
    };
    tokio::spawn(reload);
    match gateway.serve(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{error}");
    ExitCode::FAILURE
}
