//! The `polytomic-gateway` binary: parse the command line, load the config,
//! start logging, and run the chosen command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use polytomic_gateway::{config, demo, server, telemetry, Gateway};

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
    /// Load and validate everything `serve` would; print `ok` or every problem.
    Check,
    /// Run the gateway in front of a built-in fake Polytomic API.
    Demo {
        /// Address the gateway listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config::resolve_path(cli.config)).await,
        Command::Check => check(config::resolve_path(cli.config)),
        Command::Demo { listen } => {
            let path = cli.config.unwrap_or_else(|| demo::DEMO_CONFIG_PATH.into());
            match demo::run(&path, listen).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&*e),
            }
        }
    }
}

fn build(path: &std::path::Path) -> Result<Gateway, config::ConfigErrors> {
    Gateway::build(config::load(path)?, path)
}

fn check(path: PathBuf) -> ExitCode {
    match build(&path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

async fn serve(path: PathBuf) -> ExitCode {
    let gateway = match build(&path) {
        Ok(gateway) => gateway,
        Err(e) => return fail(&e),
    };
    let listener = match tokio::net::TcpListener::bind(gateway.listen_addr()).await {
        Ok(listener) => listener,
        Err(e) => return fail(&format!("cannot listen on {}: {e}", gateway.listen_addr())),
    };
    tokio::spawn(server::reload_on_sighup(gateway.credentials().clone()));
    match gateway.serve(listener, server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{error}");
    ExitCode::FAILURE
}
