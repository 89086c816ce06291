//! `tokengate`: parse the command line, load the config, start telemetry, build, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokengate::config::{LogSettings, Settings};
use tokengate::error::CauseChain;
use tokengate::startup::{Application, StartupError};
use tokengate::{demo, telemetry};

/// sysexits.h EX_CONFIG-adjacent EX_USAGE: a configuration the operator must fix.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "Token verifier for nginx auth_request, Traefik forwardAuth and Envoy ext_authz"
)]
struct Cli {
    /// Configuration file (YAML or TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a built-in demo issuer and the verifier wired to it, on loopback.
    Demo {
        /// Auth listener of the demo verifier.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener of the demo verifier.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo {
        listen,
        admin_listen,
    }) = cli.command
    {
        let _log = telemetry::init(&LogSettings::default());
        return run(demo::run(&listen, &admin_listen));
    }
    let Some(path) = cli.config else {
        eprintln!("usage: tokengate --config FILE [--check-config] | tokengate demo");
        return ExitCode::from(EXIT_CONFIG);
    };
    let settings = match Settings::load(&path, None) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        if let Err(error) = tokengate::runtime::check(settings) {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
        println!("config ok: {}", path.display());
        return ExitCode::SUCCESS;
    }
    let _log = telemetry::init(&settings.log);
    run(async move {
        Application::build(settings)
            .await?
            .reload_from(path)
            .run_until_stopped()
            .await
            .map_err(StartupError::Serve)
    })
}

fn run(future: impl std::future::Future<Output = Result<(), StartupError>>) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(future);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartupError::Config(error)) => {
            eprintln!("{error}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            eprintln!("tokengate: {}", CauseChain(&error));
            tracing::error!(error = %CauseChain(&error), "exiting");
            ExitCode::FAILURE
        }
    }
}
