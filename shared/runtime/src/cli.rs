//! The command line every binary of this system shares (the monolith and each extracted
//! service): `serve` (the default), `migrate`, `check-config`, `healthcheck`, `token`,
//! `dead-letters` ([`crate::dead_letters_cli`]). A binary's
//! `main` is one call to [`main`] with its name and its modules.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::host::{self, Application};
use module_api::{Module, Role};

use crate::config::Settings;
use crate::{auth, telemetry};

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Create or update each enabled module's schema (and role, on PostgreSQL), then exit.
    Migrate,
    /// Load and check the settings, print them (secrets redacted), then exit.
    CheckConfig,
    /// Exit 0 when this host's `/healthz` answers 200 (for container HEALTHCHECKs, which
    /// have no curl in a minimal image).
    Healthcheck,
    /// Print a bearer token signed with the local HS256 secret, for curl and local tools.
    /// Refused in production, which verifies the identity provider's tokens only.
    Token {
        /// The role the token grants (repeat for several).
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
        /// The caller's id (`sub`): a customer's orders are those placed under it.
        #[arg(long)]
        sub: String,
        /// How long the token is valid: seconds, or a number followed by s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
    /// A module's dead letters, read and changed directly in its store.
    DeadLetters {
        #[command(subcommand)]
        action: crate::dead_letters_cli::Action,
    },
}

fn parse_role(word: &str) -> Result<Role, String> {
    Role::parse(word).ok_or_else(|| format!("{word:?} is not a role (customer, staff)"))
}

fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 900, 15m, 2h or 1d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 || secs > 30 * 86400 {
        return Err("the lifetime must be between 1 s and 30 days".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// Runs a binary: parses its command line, loads its settings (from `APP_CONFIG_DIR`,
/// default `config_dir`), installs logs named `name`, and runs the command.
pub fn main(
    name: &'static str,
    config_dir: &str,
    modules: fn() -> Vec<Arc<dyn Module>>,
) -> ExitCode {
    let cli = Cli::parse();
    let config_dir = std::env::var("APP_CONFIG_DIR").unwrap_or_else(|_| config_dir.to_owned());
    if matches!(cli.command, Some(Command::Healthcheck)) {
        return healthcheck(&config_dir);
    }
    let settings = match Settings::load_from_process_env_in(&config_dir) {
        Ok(settings) => settings,
        Err(e) => {
            // Telemetry is configured by these very settings, so this goes to stderr as is.
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Token { roles, sub, ttl }) = &cli.command {
        return match auth::mint(&settings, roles, sub, *ttl) {
            Ok(token) => {
                // The command exists to print this.
                #[allow(clippy::print_stdout)]
                {
                    println!("{token}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let subscriber = match telemetry::subscriber_with_traces(
        name.into(),
        &settings.telemetry.level,
        std::io::stdout,
        &settings.telemetry.otlp_endpoint,
        settings.telemetry.otlp_ca_file.as_deref(),
    ) {
        Ok(subscriber) => subscriber,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(subscriber) {
        eprintln!("error: cannot install the log subscriber: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(
        cli.command.unwrap_or(Command::Serve),
        settings,
        modules,
    ));
    telemetry::flush_traces();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, "{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Command,
    settings: Settings,
    modules: fn() -> Vec<Arc<dyn Module>>,
) -> anyhow::Result<()> {
    let available = modules();
    match command {
        Command::Serve => {
            host::raise_open_file_limit();
            let app = Application::build(settings, &available).await?;
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let modules = host::select_modules(&settings, &available)?;
            host::migrate(&settings, &modules).await
        }
        Command::Healthcheck | Command::Token { .. } => Ok(()),
        Command::DeadLetters { action } => {
            crate::dead_letters_cli::run(action, &settings, &available).await
        }
        Command::CheckConfig => {
            host::select_modules(&settings, &available)?;
            // The one place the binary prints to stdout: the command exists to show this.
            #[allow(clippy::print_stdout)]
            {
                println!("{settings:#?}");
            }
            Ok(())
        }
    }
}

/// GET /healthz on the configured port with a plain HTTP/1.0 request.
fn healthcheck(config_dir: &str) -> ExitCode {
    use std::io::{Read, Write};
    let port = match Settings::load_from_process_env_in(config_dir) {
        Ok(settings) => settings.server.port,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let timeout = std::time::Duration::from_secs(3);
    let answer = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    });
    match answer {
        Ok(answer) if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") => {
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!("unhealthy: {}", answer.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
