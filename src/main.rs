//! `currents-heap`: thin entry point. Parses the command line and dispatches to the subcommand
//! (`cli`), which loads the settings (exit 2 when they are invalid) and hands over to the library.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Two rustls crypto providers are linked (aws-lc-rs for Heap and the TLS listener, ring by
    // the NATS client); the NATS client's TLS (`tls://` URLs) takes the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    cli::Cli::parse().run()
}
