//! `dlq list|replay|purge`: dead letters in the queue (works whether the server runs or not).

use std::process::ExitCode;

use clap::Subcommand;
use currents_heap::config::SettingsArgs;
use currents_heap::dlq;
use currents_heap::metrics::DEAD_LETTER_REASONS;
use currents_heap::routing::Router;

use super::load::load;
use super::store::with_store;

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
    let sel = dlq::Selection {
        reason: select.reason.clone(),
        ids: select.ids.clone(),
    };
    if let DlqAction::Purge { all: false, .. } = action
        && sel.reason.is_none()
        && sel.ids.is_empty()
    {
        eprintln!(
            "currents-heap: dlq purge deletes for good; say which with --reason, --id or --all"
        );
        return ExitCode::from(2);
    }
    with_store(&settings, |queue, runtime| {
        match action {
        DlqAction::List { limit, payload, .. } => runtime
            .block_on(dlq::list(
                queue,
                &sel,
                limit,
                payload,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            ))
            .map(|_| ()),
        DlqAction::Replay { .. } => runtime
            .block_on(dlq::replay(queue, &sel, &Router::from_settings(&settings)))
            .map(|r| {
                println!("replayed {} dead letters into the queue", r.requeued);
                if r.still_unroutable > 0 {
                    eprintln!(
                        "{} dead letters stay: no route of the current configuration takes them",
                        r.still_unroutable
                    );
                }
            }),
        DlqAction::Purge { .. } => runtime
            .block_on(dlq::purge(queue, &sel))
            .map(|n| println!("purged {n} dead letters")),
    }
    .map_err(|e| e.to_string())
    })
}
