//! The command line: one file per subcommand (`serve.rs`: `serve` and `check-config`,
//! `transform.rs`, `dlq.rs`); `load.rs` loads the settings (exit 2 when invalid). Every
//! subcommand that reads settings takes [`SettingsArgs`], the flags declared once in `config`'s
//! settings table.

mod dlq;
mod load;
mod serve;
mod transform;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use currents_heap::config::SettingsArgs;

#[derive(Parser)]
#[command(
    name = "currents-heap",
    version,
    about = "Forward Braze Currents to Heap, durably and at Heap's pace."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the forwarder.
    Serve(SettingsArgs),
    /// Validate the configuration and print the effective settings (secrets redacted).
    CheckConfig(SettingsArgs),
    /// Print, one JSON object per line, the Heap requests `serve` would send for a Currents
    /// payload (`{"events":[...]}`, one event, or an array of events); no network.
    Transform(transform::TransformArgs),
    /// Inspect, re-queue or delete dead-lettered events in the data directory.
    Dlq {
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
}

impl Cli {
    pub(crate) fn run(self) -> ExitCode {
        match self.command {
            Command::Serve(args) => serve::serve(args),
            Command::CheckConfig(args) => serve::check_config(&args),
            Command::Transform(args) => transform::run(&args),
            Command::Dlq { action } => dlq::run(action),
        }
    }
}
