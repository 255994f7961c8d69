//! `dlq list|replay|purge`: dead letters in the queue (works whether the server runs or not).

use std::process::ExitCode;

use clap::Subcommand;
use currents_heap::config::SettingsArgs;
use currents_heap::dlq;
use currents_heap::metrics::DEAD_LETTER_REASONS;
use currents_heap::queue::Queue;
use currents_heap::queue::sqlite::SqliteQueue;
use currents_heap::routing::Router;

use super::load::load;

#[derive(Subcommand)]
pub(super) enum DlqAction {
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
pub(super) struct DlqSelect {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Only dead letters of this reason (rejected, expired, anonymous, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Only this dead letter (its `seq`); repeatable.
    #[arg(long = "id")]
    ids: Vec<i64>,
}

pub(super) fn run(action: DlqAction) -> ExitCode {
    let select = match &action {
        DlqAction::List { select, .. }
        | DlqAction::Replay { select }
        | DlqAction::Purge { select, .. } => select,
    };
    let settings = match load(&select.settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(reason) = &select.reason
        && !DEAD_LETTER_REASONS.contains(&reason.as_str())
    {
        eprintln!(
            "currents-heap: --reason {reason:?} is not a dead-letter reason; reasons are: {}",
            DEAD_LETTER_REASONS.join(", ")
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
    let queue = match SqliteQueue::open_maintenance(&settings.data_dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("currents-heap: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("currents-heap: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sel = dlq::Selection {
        reason: select.reason.clone(),
        ids: select.ids.clone(),
    };
    let result = match action {
        DlqAction::List { limit, payload, .. } => runtime
            .block_on(dlq::list(
                &queue,
                &sel,
                limit,
                payload,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            ))
            .map(|_| ()),
        DlqAction::Replay { .. } => runtime
            .block_on(dlq::replay(&queue, &sel, &Router::from_settings(&settings)))
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
            runtime
                .block_on(dlq::purge(&queue, &sel))
                .map(|n| println!("purged {n} dead letters"))
        }
    };
    if let Err(e) = runtime.block_on(queue.close()) {
        eprintln!("currents-heap: {e}");
        return ExitCode::FAILURE;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("currents-heap: {e}");
            ExitCode::FAILURE
        }
    }
}
