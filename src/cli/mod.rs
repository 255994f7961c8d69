//! The command line: one file per subcommand (`serve.rs`: `serve` and `check-config`,
//! `transform.rs`, `dlq.rs`, `deletions.rs`); `load.rs` loads the settings (exit 2 when
//! invalid), `store.rs` opens the store for the maintenance commands. Every
//! subcommand that reads settings takes [`SettingsArgs`], the flags declared once in `config`'s
//! settings table.

mod deletions;
mod dlq;
mod load;
mod serve;
mod store;
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
    /// Inspect the ledger of user deletions, or send failed ones to Heap again.
    Deletions {
        #[command(subcommand)]
        action: deletions::DeletionsAction,
    },
}

impl Cli {
    pub(crate) fn run(self) -> ExitCode {
        match self.command {
            Command::Serve(args) => serve::serve(args),
            Command::CheckConfig(args) => serve::check_config(&args),
            Command::Transform(args) => transform::run(&args),
            Command::Dlq { action } => dlq::run(action),
            Command::Deletions { action } => deletions::run(action),
        }
    }
}
