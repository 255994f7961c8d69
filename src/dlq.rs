//! `currents-heap dlq list|replay|purge`: the dead-letter store, from the command line.
//!
//! Works on the data directory directly, so it runs while the server is stopped (and, thanks
//! to SQLite's locking, while it runs: replayed events get new queue positions and the running
//! delivery loop picks them up).

use std::io::Write;

use serde_json::json;

use crate::queue::{QueueOp, ReplayItem, Store, Writer};
use crate::routing::Router;

/// Payload bytes read per page of dead letters: pages are also bounded in rows, but 1000
/// Braze events of 900 KB would be 900 MB, in the same container as the server.
const PAGE_BYTES: usize = 16 * 1024 * 1024;

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
}

fn rfc3339_millis(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Prints dead letters as JSON lines on `out` (oldest first) and a count per reason on
/// `summary`. Returns how many were printed.
pub fn list(
    store: &Store,
    sel: &Selection,
    limit: usize,
    with_payload: bool,
    out: &mut dyn Write,
    summary: &mut dyn Write,
) -> Result<usize, String> {
    let reader = store.reader().map_err(|e| e.to_string())?;
    let mut printed = 0usize;
    let mut after = 0i64;
    while printed < limit {
        let page = reader
            .dead_letters_within(
                sel.reason.as_deref(),
                after,
                500.min(limit - printed),
                PAGE_BYTES,
            )
            .map_err(|e| e.to_string())?;
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
                "route": d.route,
                "event_id": d.event_id,
                "event_type": d.event_type,
                "identity": d.identity,
                "event_time": d.event_time,
                "attempts": d.attempts,
                "received_at": rfc3339_millis(d.received_at),
                "dead_at": rfc3339_millis(d.dead_at),
            });
            if with_payload {
                line["payload"] = serde_json::from_slice(&d.payload)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&d.payload)));
            }
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
            printed += 1;
        }
    }
    let counts = reader.dead_letter_counts().map_err(|e| e.to_string())?;
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
    )
    .map_err(|e| e.to_string())?;
    Ok(printed)
}

fn with_writer<T>(
    store: &Store,
    f: impl FnOnce(&Writer) -> Result<T, String>,
) -> Result<T, String> {
    let (writer, handle) = Writer::spawn_maintenance(store).map_err(|e| e.to_string())?;
    let result = f(&writer);
    drop(writer);
    handle.close();
    result
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
pub fn replay(store: &Store, sel: &Selection, router: &Router) -> Result<Replayed, String> {
    let reader = store.reader().map_err(|e| e.to_string())?;
    with_writer(store, |w| {
        let mut done = Replayed::default();
        let mut after = 0i64;
        loop {
            let page = reader
                .dead_letters_within(sel.reason.as_deref(), after, 1000, PAGE_BYTES)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.seq;
            let mut items = Vec::with_capacity(page.len());
            for d in page {
                if !sel.ids.is_empty() && !sel.ids.contains(&d.seq) {
                    continue;
                }
                let group = app_group_id(&d.payload);
                // The current configuration decides; without a route for it, an event keeps
                // the destination it had (none, if it was unroutable from the start).
                match router.route(d.workspace.as_deref(), group.as_deref()) {
                    Some(t) => items.push(ReplayItem {
                        seq: d.seq,
                        route: t.name.to_string(),
                        app_id: t.app_id.to_string(),
                    }),
                    None if router.serves(&d.app_id) => items.push(ReplayItem {
                        seq: d.seq,
                        route: d.route.clone(),
                        app_id: d.app_id.clone(),
                    }),
                    None => done.still_unroutable += 1,
                }
            }
            if !items.is_empty() {
                done.requeued += w.apply_blocking(QueueOp::Replay { items })?.rows;
            }
        }
        Ok(done)
    })
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
pub fn purge(store: &Store, sel: &Selection) -> Result<u64, String> {
    with_writer(store, |w| {
        w.apply_blocking(QueueOp::Purge {
            reason: sel.reason.clone(),
            ids: sel.ids(),
        })
        .map(|o| o.rows)
    })
}
