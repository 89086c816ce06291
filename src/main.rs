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
    /// Revoke a subject's tokens, a session or one token at a running tokengate (its
    /// admin listener's `POST /revocations`); with the Redis feed, at every replica.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["sub", "sid", "jti"])))]
    Revoke {
        /// The admin listener, e.g. `http://127.0.0.1:9090`.
        #[arg(long, value_name = "URL")]
        admin: String,
        /// File holding the bearer secret (`revocation.admin_token_file`).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The issuer, as configured (`issuers[].issuer`).
        #[arg(long)]
        issuer: String,
        /// Every token of this subject issued until now.
        #[arg(long)]
        sub: Option<String>,
        /// Every token of this session.
        #[arg(long)]
        sid: Option<String>,
        /// This one token.
        #[arg(long)]
        jti: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo {
            listen,
            admin_listen,
        }) => {
            let _log = telemetry::init(&LogSettings::default());
            return run(demo::run(&listen, &admin_listen));
        }
        Some(Command::Revoke {
            admin,
            token_file,
            issuer,
            sub,
            sid,
            jti,
        }) => return revoke(&admin, &token_file, &issuer, sub, sid, jti),
        None => {}
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

/// `tokengate revoke`: one `POST /revocations`; the answer's status decides the exit code.
fn revoke(
    admin: &str,
    token_file: &std::path::Path,
    issuer: &str,
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
) -> ExitCode {
    let secret = match std::fs::read_to_string(token_file) {
        Ok(secret) => secret.trim_end_matches(['\r', '\n']).to_owned(),
        Err(error) => {
            eprintln!("tokengate revoke: {}: {error}", token_file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut body = serde_json::json!({ "issuer": issuer });
    for (name, value) in [("sub", sub), ("sid", sid), ("jti", jti)] {
        if let Some(value) = value {
            body[name] = serde_json::Value::String(value);
        }
    }
    let url = format!("{}/revocations", admin.trim_end_matches('/'));
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let response = reqwest::Client::new()
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&body)
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|error| CauseChain(&error).to_string())?;
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                Ok((status, text))
            })
        });
    match answer {
        Ok((status, text)) if status.is_success() => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("tokengate revoke: {url} answered {status}: {text}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tokengate revoke: {url}: {error}");
            ExitCode::FAILURE
        }
    }
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
