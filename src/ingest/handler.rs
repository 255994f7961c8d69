//! `POST /currents`: auth → decode → parse + validate → durable append → 200.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;

use super::body::{self, Encoding};
use super::error::IngestError;
use super::{IngestState, Routing};
use crate::currents::{self, catalogue};
use crate::queue::{Appended, DeletionReceipt, NewEvent};
use crate::transform::SkipReason;

pub use crate::metrics::UNROUTABLE;

/// What a 200 reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: usize,
    pub duplicates: usize,
}

pub(super) async fn accept(
    req: Request<Incoming>,
    state: &IngestState,
) -> Result<Accepted, IngestError> {
    if state.is_draining() {
        return Err(IngestError::Draining);
    }
    let workspace = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "workspace")
            .map(|(_, v)| Arc::<str>::from(v.as_ref()))
    });
    // One routing snapshot for the whole request, even if a reload swaps it meanwhile.
    let routing = state.routing();
    if !routing.auth.allows_for(req.headers(), workspace.as_deref()) {
        return Err(IngestError::Unauthorized);
    }
    let encoding = Encoding::from_headers(req.headers())?;
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::TooLarge { limit });
    }

    // Counted from here, so the drain waits for this request; re-checked once counted.
    let _in_flight = state.in_flight.enter();
    if state.is_draining() {
        return Err(IngestError::Draining);
    }
    // Every body byte held is reserved in the ingest memory budget as it arrives (not the
    // declared length: a client that declares 8 MiB and stalls must not hold 8 MiB).
    let mut reservation = state.buffer.reservation();
    let body = body::read(
        req.into_body(),
        encoding,
        limit,
        state.body_read_timeout,
        &mut reservation,
    )
    .await?;
    append_body(body, workspace, &routing, state).await
}

/// Parses, validates, routes and durably appends a decoded body.
async fn append_body(
    body: Bytes,
    workspace: Option<Arc<str>>,
    routing: &Routing,
    state: &IngestState,
) -> Result<Accepted, IngestError> {
    let by_group = routing.router.needs_app_group_id();
    let events = {
        let batch = match currents::parse_batch(&body) {
            Ok(batch) => batch,
            Err(e) => {
                let e = IngestError::from(e);
                if let IngestError::InvalidEvents { total, errors } = &e {
                    state.metrics.ingest.invalid_events(*total, errors.len());
                }
                return Err(e);
            }
        };
        state.metrics.ingest.received(batch.events.len());
        batch
            .events
            .iter()
            .map(|ev| {
                let group = if by_group { ev.app_group_id() } else { None };
                let target = routing.router.route(workspace.as_deref(), group.as_deref());
                let braze_user_id = ev.braze_user_id.as_deref();
                // The Heap user the route's mapping sends this event for (identity map).
                let heap_user =
                    target.and_then(|t| t.heap_user(ev.external_user_id.as_deref(), braze_user_id));
                NewEvent {
                    route: target.map_or_else(|| Arc::from(UNROUTABLE), |t| Arc::clone(&t.name)),
                    app_id: target.map_or_else(|| Arc::from(""), |t| Arc::clone(&t.app_id)),
                    workspace: workspace.clone(),
                    dead_letter: target.is_none().then_some(UNROUTABLE),
                    event_id: ev.id.clone().into_owned(),
                    event_type: ev.event_type.clone().into_owned(),
                    identity: ev.external_user_id.as_ref().map(|s| s.clone().into_owned()),
                    event_time: ev.time,
                    payload: body.slice_ref(ev.raw.get().as_bytes()),
                    deletion: ev.event_type == catalogue::USER_DELETE_REQUEST
                        && braze_user_id.is_some()
                        && target.is_some(),
                    braze_user_id: braze_user_id.map(str::to_owned),
                    heap_user,
                }
            })
            .collect::<Vec<_>>()
    };
    if events.is_empty() {
        return Ok(Accepted {
            accepted: 0,
            duplicates: 0,
        });
    }
    let n = events.len();
    let labels: Vec<(&'static str, Arc<str>, Arc<str>, bool)> = events
        .iter()
        .map(|e| {
            (
                catalogue::metric_label(&e.event_type),
                Arc::clone(&e.route),
                Arc::clone(&e.app_id),
                e.dead_letter.is_some(),
            )
        })
        .collect();
    let receipt = match state.queue.append(events).await {
        Ok(r) => r,
        Err(e) => {
            let e = IngestError::from(e);
            if let Some(reason) = e.reject_reason() {
                state.metrics.ingest.rejected(reason, n);
            }
            return Err(e);
        }
    };
    let mut unroutable = 0;
    let mut rung: Vec<&str> = Vec::new();
    for ((event_type, route, app_id, dead), outcome) in labels.iter().zip(&receipt.outcomes) {
        match outcome {
            Appended::Duplicate => continue,
            Appended::Queued => {
                unroutable += usize::from(*dead);
                if !*dead && !rung.contains(&&**app_id) {
                    rung.push(app_id);
                    if let Some(bell) = routing.bells.get(&**app_id) {
                        bell.ring();
                    }
                }
            }
            Appended::DeletedUser => {
                state
                    .metrics
                    .delivery
                    .lane(route)
                    .skipped(SkipReason::DeletedUser.as_str());
            }
            Appended::Deletion(deletion) => {
                note_deletion(route, deletion, routing, state);
            }
        }
        state.metrics.ingest.accepted(event_type, route);
    }
    if unroutable > 0 {
        state
            .metrics
            .ingest
            .unroutable(unroutable, workspace.as_deref());
    }
    let duplicates = receipt.duplicates();
    state.metrics.ingest.duplicates(duplicates);
    Ok(Accepted {
        accepted: receipt.accepted(),
        duplicates,
    })
}

/// A deletion was accepted: counted, and the lanes drop the purged events they hold.
fn note_deletion(route: &str, deletion: &DeletionReceipt, routing: &Routing, state: &IngestState) {
    let purged = deletion.purged_queued.len() + deletion.purged_dead_letters as usize;
    tracing::info!(
        message = "User deletion accepted.",
        route,
        known_user = deletion.known_user,
        purged_events = purged,
    );
    let metrics = &state.metrics.deletions;
    metrics.received(route);
    metrics.purged_events(route, purged);
    if !deletion.known_user {
        metrics.unknown_user(route);
    }
    for (app_id, seq) in &deletion.purged_queued {
        if let Some(bell) = routing.bells.get(app_id.as_str()) {
            bell.purged([*seq]);
        }
    }
}
