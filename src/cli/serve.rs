//! `serve` and `check-config`: the same settings, validated the same way.

use std::process::ExitCode;

use currents_heap::app::App;
use currents_heap::config::SettingsArgs;
use currents_heap::{shutdown, telemetry};

use super::load::load_for_serve;

/// Validates the settings (the TLS files included) and prints them, secrets redacted.
pub(super) fn check_config(args: &SettingsArgs) -> ExitCode {
    let settings = match load_for_serve(args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(t) = &settings.edge.tls
        && let Err(e) = currents_heap::server::tls::CertStore::check(&t.cert, &t.key)
    {
        eprintln!("currents-heap: invalid setting `tls_cert` / `tls_key`: {e}");
        return ExitCode::from(2);
    }
    print!("{}", settings.to_redacted_toml());
    ExitCode::SUCCESS
}

/// Runs the forwarder until SIGTERM/SIGINT; SIGHUP reloads the configuration from `args`.
pub(super) fn serve(args: SettingsArgs) -> ExitCode {
    let settings = match load_for_serve(&args) {
        Ok(s) => s,
        Err(code) => return code,
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
        // SIGHUP's default action ends the process: take it over before the (possibly long)
        // start, so a reload sent early is not a kill. Once registered, the handler stays for
        // the life of the process; the app listens from its start.
        if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tracing::warn!(message = "Cannot take over SIGHUP.", error = %e);
        }
        match App::build(&settings).await {
            Ok(app) => {
                app.reload_from(args)
                    .run_until_stopped(shutdown::signal())
                    .await;
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
