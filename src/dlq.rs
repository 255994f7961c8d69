//! `currents-heap dlq list|replay|purge`: the dead-letter store, from the command line.
//!
//! Works on the queue through [`Queue`], so it runs while the server is stopped or while it
//! runs (replayed events get new queue positions and the running delivery loop picks them up).

use std::io::Write;

use serde_json::json;

use crate::currents::catalogue::USER_DELETE_REQUEST;
use crate::currents::{read_event, user_ids};
use crate::queue::{DeadLetterQuery, HeapUser, Queue, QueueError, QueueOp, ReplayItem};
use crate::routing::{RouteTarget, Router};

/// Payload bytes read per page of dead letters: pages are also bounded in rows, but 1000
/// Braze events of 900 KB would be 900 MB, in the same container as the server.
const PAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why a `dlq` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// What to act on.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only dead letters of this reason (`rejected`, `expired`, `anonymous`, ...).
    pub reason: Option<String>,
    /// Only these dead-letter sequence numbers (the `seq` printed by `list`).
    pub ids: Vec<i64>,
}

impl Selection {
    fn ids(&self) -> Option<Vec<i64>> {
        (!self.ids.is_empty()).then(|| self.ids.clone())
    }

    /// The next page of dead letters of the selected reason after `after`.
    fn page(&self, after: i64, limit: usize) -> DeadLetterQuery {
        DeadLetterQuery {
            reason: self.reason.clone(),
            after,
            limit,
            max_bytes: PAGE_BYTES,
        }
    }
}

fn rfc3339_millis(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Prints dead letters as JSON lines on `out` (oldest first) and a count per reason on
/// `summary`. Returns how many were printed.
pub async fn list(
    queue: &dyn Queue,
    sel: &Selection,
    limit: usize,
    with_payload: bool,
    out: &mut dyn Write,
    summary: &mut dyn Write,
) -> Result<usize, DlqError> {
    let mut printed = 0usize;
    let mut after = 0i64;
    while printed < limit {
        let page = queue
            .dead_letters(sel.page(after, 500.min(limit - printed)))
            .await?;
        if page.is_empty() {
            break;
        }
        for d in page {
            after = d.seq;
            if !sel.ids.is_empty() && !sel.ids.contains(&d.seq) {
                continue;
            }
            let mut line = json!({
                "seq": d.seq,
                "reason": d.reason,
                "detail": d.detail,
                "route": d.event.route,
                "event_id": d.event.event_id,
                "event_type": d.event.event_type,
                "identity": d.event.identity,
                "event_time": d.event.event_time,
                "attempts": d.event.attempts,
                "received_at": rfc3339_millis(d.event.received_at),
                "dead_at": rfc3339_millis(d.dead_at),
            });
            if with_payload {
                line["payload"] = serde_json::from_slice(&d.event.payload)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&d.event.payload)));
            }
            writeln!(out, "{line}")?;
            printed += 1;
        }
    }
    let counts = queue.dead_letter_counts().await?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let by_reason: Vec<String> = counts.iter().map(|(r, n)| format!("{r}={n}")).collect();
    writeln!(
        summary,
        "dead letters: {total} in the store ({}); {printed} listed",
        if by_reason.is_empty() {
            "none".to_owned()
        } else {
            by_reason.join(", ")
        }
    )?;
    Ok(printed)
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Moved back to the queue.
    pub requeued: u64,
    /// Left in the dead-letter store: the configuration routes them nowhere.
    pub still_unroutable: u64,
}

/// Moves the selected dead letters back to the queue, each routed again with the current
/// configuration (`router`): the route of its stored `workspace` and its `app_group_id`, or,
/// when no route takes it, the route it had if its Heap app id is still delivered to. Others
/// stay (counted in `still_unroutable`): replaying them would only send them back.
pub async fn replay(
    queue: &dyn Queue,
    sel: &Selection,
    router: &Router,
) -> Result<Replayed, DlqError> {
    let mut done = Replayed::default();
    let mut after = 0i64;
    loop {
        let page = queue.dead_letters(sel.page(after, 1000)).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.seq;
        let mut items = Vec::with_capacity(page.len());
        for d in page {
            if !sel.ids.is_empty() && !sel.ids.contains(&d.seq) {
                continue;
            }
            let group = app_group_id(&d.event.payload);
            let deletion = d.event.event_type == USER_DELETE_REQUEST;
            // The current configuration decides; without a route for it, an event keeps
            // the destination it had (none, if it was unroutable from the start).
            match router.route(d.event.workspace.as_deref(), group.as_deref()) {
                Some(t) => items.push(ReplayItem {
                    seq: d.seq,
                    route: t.name.to_string(),
                    app_id: t.app_id.to_string(),
                    deletion,
                    heap_user: heap_user(&d.event.payload, t),
                }),
                None if router.serves(&d.event.app_id) => {
                    // Its own route's mapping, else that of a route of its app id.
                    let mapping = router
                        .targets()
                        .find(|t| *t.name == d.event.route)
                        .or_else(|| router.targets().find(|t| *t.app_id == d.event.app_id));
                    items.push(ReplayItem {
                        seq: d.seq,
                        route: d.event.route.clone(),
                        app_id: d.event.app_id.clone(),
                        deletion,
                        heap_user: mapping.and_then(|t| heap_user(&d.event.payload, t)),
                    });
                }
                None => done.still_unroutable += 1,
            }
        }
        if !items.is_empty() {
            done.requeued += queue.apply(QueueOp::Replay { items }).await?.rows;
        }
    }
    Ok(done)
}

/// The Heap user `route` sends a stored event for (as ingest computes it).
fn heap_user(payload: &[u8], route: &RouteTarget) -> Option<HeapUser> {
    let text = std::str::from_utf8(payload).ok()?;
    let (external, braze) = read_event(text).ok()?.user.map(user_ids)?;
    route.heap_user(external.as_deref(), braze.as_deref())
}

/// `properties.app_group_id` of a stored event.
fn app_group_id(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("properties")?
        .get("app_group_id")?
        .as_str()
        .map(str::to_owned)
}

/// Deletes the selected dead letters for good. Returns how many.
pub async fn purge(queue: &dyn Queue, sel: &Selection) -> Result<u64, DlqError> {
    let op = QueueOp::Purge {
        reason: sel.reason.clone(),
        ids: sel.ids(),
    };
    Ok(queue.apply(op).await?.rows)
}
