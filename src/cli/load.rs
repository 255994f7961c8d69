//! Loading the settings for a subcommand: an invalid configuration is exit code 2.

use std::process::ExitCode;

use currents_heap::config::{ConfigError, Settings, SettingsArgs};

/// The settings, or exit code 2 with the reason on stderr.
pub(super) fn load(args: &SettingsArgs) -> Result<Settings, ExitCode> {
    Settings::load(args).map_err(|e| config_failure(&e))
}

/// The settings `serve` (and `check-config`) needs, or exit code 2.
pub(super) fn load_for_serve(args: &SettingsArgs) -> Result<Settings, ExitCode> {
    let settings = load(args)?;
    settings
        .validate_for_serve()
        .map_err(|e| config_failure(&e))?;
    Ok(settings)
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("currents-heap: {e}");
    ExitCode::from(2)
}
