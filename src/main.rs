//! `currents-heap`: thin entry point. Parses the command line and dispatches to the subcommand
//! (`cli`), which loads the settings (exit 2 when they are invalid) and hands over to the library.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::Cli::parse().run()
}
