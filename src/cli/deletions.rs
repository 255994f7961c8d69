//! `deletions list|retry`: the deletion ledger in the data directory (works whether the server
//! runs or not; a running server picks up retried entries within a second).

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use currents_heap::config::SettingsArgs;
use currents_heap::queue::{DeletionQuery, DeletionRecord, DeletionStatus, Queue, QueueOp};
use serde_json::json;

use super::load::load;
use super::store::with_store;

#[derive(Subcommand)]
pub(super) enum DeletionsAction {
    /// Print the ledger as JSON lines, oldest first, then a count per status on stderr.
    List {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Only entries in this status (pending_submit, submitted, complete, failed,
        /// unconfigured, unknown_user).
        #[arg(long)]
        status: Option<String>,
    },
    /// Send `failed` deletions to Heap again (after fixing what Heap refused, e.g. the key).
    Retry {
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

/// Ledger rows read per page.
const PAGE: usize = 1000;

pub(super) fn run(action: DeletionsAction) -> ExitCode {
    let (settings, status) = match &action {
        DeletionsAction::List { settings, status } => (settings, status.as_deref()),
        DeletionsAction::Retry { settings } => (settings, None),
    };
    let status = match status.map(|s| DeletionStatus::parse(s).ok_or(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(s)) => {
            let all: Vec<&str> = DeletionStatus::ALL.iter().map(|s| s.as_str()).collect();
            eprintln!(
                "currents-heap: --status {s:?} is not a deletion status; statuses are: {}",
                all.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    let settings = match load(settings) {
        Ok(s) => s,
        Err(code) => return code,
    };
    with_store(&settings, |queue, runtime| match action {
        DeletionsAction::List { .. } => runtime.block_on(list(queue, status)),
        DeletionsAction::Retry { .. } => {
            let n = runtime
                .block_on(queue.apply(QueueOp::DeletionsMove {
                    from: DeletionStatus::Failed,
                    to: DeletionStatus::PendingSubmit,
                    ids: None,
                    routes: None,
                }))
                .map_err(|e| e.to_string())?
                .rows;
            println!("{n} failed deletions will be sent to Heap again");
            Ok(())
        }
    })
}

async fn list(queue: &dyn Queue, status: Option<DeletionStatus>) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let mut counts: std::collections::BTreeMap<(String, &'static str), u64> =
        std::collections::BTreeMap::new();
    let mut after = 0;
    loop {
        let page = queue
            .deletions(DeletionQuery {
                statuses: status.into_iter().collect(),
                routes: None,
                after,
                limit: PAGE,
            })
            .await
            .map_err(|e| e.to_string())?;
        for row in &page {
            writeln!(out, "{}", line(row)).map_err(|e| e.to_string())?;
            *counts
                .entry((row.route.clone(), row.status.as_str()))
                .or_default() += 1;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.id,
            _ => break,
        }
    }
    for ((route, status), n) in counts {
        eprintln!("{route}\t{status}\t{n}");
    }
    Ok(())
}

/// One ledger entry as a JSON line (times in RFC 3339).
fn line(row: &DeletionRecord) -> serde_json::Value {
    let users: Vec<serde_json::Value> = row
        .users
        .iter()
        .map(|u| json!({ u.kind(): u.value() }))
        .collect();
    json!({
        "id": row.id,
        "route": row.route,
        "braze_user_id": row.braze_user_id,
        "event_id": row.event_id,
        "heap_users": users,
        "status": row.status.as_str(),
        "received_at": rfc3339(row.received_at),
        "updated_at": rfc3339(row.updated_at),
        "deletion_request_id": row.request_id,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "purged_events": row.purged_events,
    })
}

fn rfc3339(unix_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
