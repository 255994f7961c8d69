//! `currents-heap`: thin entry point. Parses the command line, loads the settings (exit 2 when
//! they are invalid), and hands over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use currents_heap::app::App;
use currents_heap::config::{ConfigError, Settings, SettingsArgs};
use currents_heap::delivery::BudgetShape;
use currents_heap::queue::Store;
use currents_heap::routing::Router;
use currents_heap::{dlq, shutdown, telemetry, transform};
use std::io::Write;

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
    /// Print, one JSON object per line, the Heap requests `serve` would send for a Currents
    /// payload (`{"events":[...]}`, one event, or an array of events); no network.
    Transform {
        /// The payload file; `-` reads standard input. At most --max-body-bytes (8 MiB), as in
        /// serve.
        file: std::path::PathBuf,
        /// Map with this route's app id and mapping options (`default`: the flat settings).
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Inspect, re-queue or delete dead-lettered events in the data directory.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Print dead letters as JSON lines (oldest first) and a count per reason.
    List {
        #[command(flatten)]
        select: DlqSelect,
        /// Print at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Include each event's payload.
        #[arg(long)]
        payload: bool,
    },
    /// Move dead letters back to the queue, for delivery with the current configuration.
    Replay {
        #[command(flatten)]
        select: DlqSelect,
    },
    /// Delete dead letters for good (needs --reason, --id or --all).
    Purge {
        #[command(flatten)]
        select: DlqSelect,
        /// Delete every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Args)]
struct DlqSelect {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Only dead letters of this reason (rejected, expired, anonymous, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Only this dead letter (its `seq`); repeatable.
    #[arg(long = "id")]
    ids: Vec<i64>,
}

fn run_transform(file: &std::path::Path, route: Option<&str>, args: &SettingsArgs) -> ExitCode {
    let settings = match Settings::load(args) {
        Ok(s) => s,
        Err(e) => return config_failure(&e),
    };
    let (app_id, mapping, per_minute) = match route {
        None | Some(currents_heap::config::DEFAULT_ROUTE) => (
            settings.heap_app_id.as_ref().map_or("0", |a| a.as_str()),
            &settings.mapping.options,
            settings.heap_events_per_minute,
        ),
        Some(name) => match settings.routes.iter().find(|r| r.name == name) {
            Some(r) => (
                r.heap_app_id.as_str(),
                &r.mapping.options,
                r.heap_events_per_minute,
            ),
            None => {
                let known: Vec<&str> = settings.routes.iter().map(|r| r.name.as_str()).collect();
                eprintln!(
                    "currents-heap: no route named {name:?} (configured: default{}{})",
                    if known.is_empty() { "" } else { ", " },
                    known.join(", ")
                );
                return ExitCode::from(2);
            }
        },
    };
    // Never more than serve would take in one request: `transform /dev/zero` must not grow
    // without bound.
    let limit = settings.max_body_bytes;
    let payload = if file.as_os_str() == "-" {
        read_at_most(std::io::stdin().lock(), limit)
    } else {
        std::fs::File::open(file).and_then(|f| read_at_most(f, limit))
    };
    let payload = match payload {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!(
                "currents-heap: {} is larger than {limit} bytes, the largest request body serve \
                 accepts (--max-body-bytes / CURRENTS_HEAP_MAX_BODY_BYTES / max_body_bytes); \
                 Braze would get a 413 and split such a batch",
                file.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("currents-heap: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    // The same batch size serve uses: the app budget's burst caps it.
    let batch = BudgetShape::new(
        per_minute,
        settings.heap_budget_window,
        settings.heap_batch_size as u32,
    )
    .burst as usize;
    match transform::transform_payload(&payload, mapping, app_id, batch) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            for r in &out.requests {
                let _ = writeln!(
                    stdout,
                    "{{\"endpoint\":{},\"body\":{}}}",
                    r["endpoint"], r["body"]
                );
            }
            let mapped = out
                .requests
                .iter()
                .filter(|r| r["endpoint"] == "/api/track")
                .map(|r| r["body"]["events"].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            eprintln!(
                "{mapped} events mapped, {} skipped, {} duplicates in {} requests; {} values dropped",
                out.skipped.len(),
                out.duplicates.len(),
                out.requests.len(),
                out.dropped.len()
            );
            for (index, d) in &out.dropped {
                eprintln!(
                    "dropped value {} of event {index}: {} (the rest of the event is sent)",
                    d.path,
                    d.reason.as_str()
                );
            }
            for (index, id, reason) in &out.skipped {
                eprintln!("skipped event {index} (id {id:?}): {}", reason.as_str());
            }
            for (index, id) in &out.duplicates {
                eprintln!("duplicate event {index} (id {id:?}): an earlier event has the same id");
            }
            ExitCode::SUCCESS
        }
        Err(reasons) => {
            eprintln!("{reasons}");
            ExitCode::FAILURE
        }
    }
}

/// Everything `input` holds if that is at most `limit` bytes, else `None`; reads at most
/// `limit + 1` bytes either way.
fn read_at_most(input: impl std::io::Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut input.take(limit.saturating_add(1)), &mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

fn run_dlq(action: DlqAction) -> ExitCode {
    let select = match &action {
        DlqAction::List { select, .. }
        | DlqAction::Replay { select }
        | DlqAction::Purge { select, .. } => select,
    };
    let settings = match Settings::load(&select.settings) {
        Ok(s) => s,
        Err(e) => return config_failure(&e),
    };
    if let Some(reason) = &select.reason
        && !currents_heap::metrics::DEAD_LETTER_REASONS.contains(&reason.as_str())
    {
        eprintln!(
            "currents-heap: --reason {reason:?} is not a dead-letter reason; reasons are: {}",
            currents_heap::metrics::DEAD_LETTER_REASONS.join(", ")
        );
        return ExitCode::from(2);
    }
    // A typo in --data-dir must not read as "no dead letters".
    if !settings.data_dir.join("queue.sqlite3").exists() {
        eprintln!(
            "currents-heap: no store in {} (is --data-dir / CURRENTS_HEAP_DATA_DIR right?)",
            settings.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let store = match Store::open(&settings.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("currents-heap: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sel = dlq::Selection {
        reason: select.reason.clone(),
        ids: select.ids.clone(),
    };
    let result = match action {
        DlqAction::List { limit, payload, .. } => dlq::list(
            &store,
            &sel,
            limit,
            payload,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
        .map(|_| ()),
        DlqAction::Replay { .. } => dlq::replay(&store, &sel, &Router::from_settings(&settings))
            .map(|r| {
                println!("replayed {} dead letters into the queue", r.requeued);
                if r.still_unroutable > 0 {
                    eprintln!(
                        "{} dead letters stay: no route of the current configuration takes them",
                        r.still_unroutable
                    );
                }
            }),
        DlqAction::Purge { all, .. } => {
            if !all && sel.reason.is_none() && sel.ids.is_empty() {
                eprintln!(
                    "currents-heap: dlq purge deletes for good; say which with --reason, --id or --all"
                );
                return ExitCode::from(2);
            }
            dlq::purge(&store, &sel).map(|n| println!("purged {n} dead letters"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("currents-heap: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("currents-heap: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Dlq { action } => run_dlq(action),
        Command::Transform {
            file,
            route,
            settings,
        } => run_transform(&file, route.as_deref(), &settings),
        Command::CheckConfig(args) => {
            match Settings::load(&args).and_then(|s| s.validate_for_serve().map(|()| s)) {
                Ok(s) => {
                    if let Some(t) = &s.edge.tls
                        && let Err(e) =
                            currents_heap::server::tls::CertStore::check(&t.cert, &t.key)
                    {
                        eprintln!("currents-heap: invalid setting `tls_cert` / `tls_key`: {e}");
                        return ExitCode::from(2);
                    }
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
                // SIGHUP's default action ends the process: take it over before the (possibly
                // long) start, so a reload sent early is not a kill. Once registered, the
                // handler stays for the life of the process; the app listens from its start.
                if let Err(e) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                {
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
    }
}
