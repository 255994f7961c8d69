//! `currents-heap`: thin entry point. Parses the command line, loads the settings (exit 2 when
//! they are invalid), and hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use currents_heap::app::App;
use currents_heap::config::{ConfigError, Settings, SettingsArgs};
use currents_heap::{shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "currents-heap",
    version,
    about = "Forward Braze Currents to Heap, durably and at Heap's pace."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the forwarder.
    Serve(SettingsArgs),
    /// Validate the configuration and print the effective settings (secrets redacted).
    CheckConfig(SettingsArgs),
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("currents-heap: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => {
            match Settings::load(&args).and_then(|s| s.validate_for_serve().map(|()| s)) {
                Ok(s) => {
                    print!("{}", s.to_redacted_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => config_failure(&e),
            }
        }
        Command::Serve(args) => {
            let settings =
                match Settings::load(&args).and_then(|s| s.validate_for_serve().map(|()| s)) {
                    Ok(s) => s,
                    Err(e) => return config_failure(&e),
                };
            telemetry::init(settings.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("currents-heap: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                match App::build(&settings).await {
                    Ok(app) => {
                        app.run_until_stopped(shutdown::signal()).await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        tracing::error!(message = "Cannot start.", error = %e);
                        eprintln!("currents-heap: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
