//! What every queue store promises, each check generic over a [`Backend`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use currents_heap::queue::{
    AppendError, DeadLetterItem, DeadLetterQuery, NewEvent, Queue, QueueError, QueueOp,
    QueuedEvent, ReadyRequest, ReplayItem, unix_millis,
};

/// The limits a queue is opened with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_queue_bytes: u64,
    pub dedup_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queue_bytes: 1 << 30,
            dedup_window: Duration::from_secs(3600),
        }
    }
}

/// A store under test: `fresh` makes an empty one, `open` opens its queue (again, after a
/// close: the same events).
pub trait Backend: Sized {
    /// Whether [`QueueTotals::bytes`](currents_heap::queue::QueueTotals) and the quota count
    /// payload bytes only. A store that counts what it keeps per event besides (JetStream: the
    /// message's subject and header) says false, and the checks add that overhead, measured
    /// once per check by [`overhead`].
    const PAYLOAD_BYTES: bool = true;
    /// Cases of the model test.
    const MODEL_CASES: u32 = 48;
    /// Whether the model test runs on this store. JetStream: not yet — its dedup memory is per
    /// stream (an id first dead-lettered at ingest and later routed is queued, where the model
    /// says duplicate) and it reports no `dedup_ids`; the model must learn those two first.
    const MODEL: bool = true;
    /// False when the store cannot run here (its server is not installed): the checks skip.
    fn available() -> bool {
        true
    }
    fn fresh() -> impl Future<Output = Self>;
    fn open(&self, limits: Limits) -> impl Future<Output = Arc<dyn Queue>>;
}

/// One `#[tokio::test]` per check of this file, for one backend.
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;
            $crate::conformance_suite!(@tests $backend; conformance;
                append_is_durable_and_dedups_across_a_restart,
                a_request_is_stored_whole_or_not_at_all,
                concurrent_appends_each_store_every_event_once,
                ready_reads_one_lane_in_fifo_order_within_its_bounds,
                parked_events_come_back_due_soonest_first,
                due_and_fresh_events_share_one_byte_bound,
                acks_remove_events_and_the_totals_follow,
                failed_attempts_are_counted,
                dead_letters_are_listed_counted_replayed_and_purged,
                dead_letter_pages_are_bounded_in_bytes,
                a_lane_without_a_route_is_dead_lettered_whole,
                appends_straight_to_the_dead_letters,
                the_quota_refuses_whole_requests_but_not_resends,
                dedup_forgets_ids_after_its_window,
                the_oldest_event_is_known,
                a_closed_queue_refuses_everything,
            );
            $crate::conformance_suite!(@tests $backend; deletions;
                a_deletion_purges_the_users_events_and_records_a_ledger_entry,
                late_events_of_a_deleted_user_are_dropped_across_a_restart,
                a_deletion_of_a_never_seen_user_is_unknown_user,
                the_identity_map_keeps_every_heap_user_of_a_braze_user,
                events_and_a_deletion_in_one_request_apply_in_order,
                a_resent_deletion_is_a_duplicate,
                ledger_entries_move_through_their_statuses,
                a_replayed_deletion_is_accepted_and_a_deleted_users_event_dropped,
                a_replayed_event_is_remembered_for_a_later_deletion,
            );
            $crate::conformance_suite!(@tests $backend; continuity;
                a_saved_lane_is_replaced_whole_and_survives_a_restart,
                stamps_keep_the_newest_event_time_across_a_restart,
                a_deletion_forgets_the_user_in_saved_lanes,
            );
            // Its own runtime per case (proptest's runner is synchronous).
            #[test]
            fn the_queue_follows_a_model_of_it() {
                if !<$backend as Backend>::MODEL || !<$backend as Backend>::available() {
                    return;
                }
                model::the_queue_follows_a_model_of_it::<$backend>();
            }
        }
    };
    (@tests $backend:ty; $module:ident; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                if !<$backend as Backend>::available() {
                    return;
                }
                $module::$check::<$backend>().await;
            }
        )*
    };
}

pub(crate) const APP: &str = "1111";
const OTHER_APP: &str = "2222";

pub(crate) fn event(id: &str, app_id: &str, payload: &str) -> NewEvent {
    NewEvent {
        route: Arc::from(format!("route-{app_id}").as_str()),
        app_id: Arc::from(app_id),
        workspace: Some(Arc::from("ws")),
        dead_letter: None,
        event_id: id.into(),
        event_type: "users.messages.email.Send".into(),
        identity: Some(format!("user-of-{id}")),
        event_time: 1_700_000_000,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        braze_user_id: None,
        heap_user: None,
        deletion: false,
    }
}

fn events(ids: &[&str]) -> Vec<NewEvent> {
    ids.iter()
        .map(|id| event(id, APP, &format!("{{\"id\":\"{id}\"}}")))
        .collect()
}

/// Everything ready for `app_id` now, fresh and due.
fn everything(app_id: &str) -> ReadyRequest {
    ReadyRequest {
        app_id: app_id.into(),
        after: 0,
        now: unix_millis(),
        max_events: 1_000_000,
        max_bytes: usize::MAX,
        held: HashSet::new(),
    }
}

async fn fresh_ids(q: &dyn Queue, req: ReadyRequest) -> Vec<String> {
    ids(&q.ready(req).await.expect("read ready events").fresh)
}

pub(crate) fn ids(events: &[QueuedEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.event_id.clone()).collect()
}

pub(crate) async fn queued(q: &dyn Queue) -> Vec<QueuedEvent> {
    q.ready(everything(APP)).await.expect("read").fresh
}

pub(crate) async fn open<B: Backend>() -> (B, Arc<dyn Queue>) {
    open_with::<B>(Limits::default()).await
}

/// A fresh store and its queue with `limits` (the store lives as long as the test keeps it).
async fn open_with<B: Backend>(limits: Limits) -> (B, Arc<dyn Queue>) {
    let b = B::fresh().await;
    let q = b.open(limits).await;
    (b, q)
}

/// What a store keeps per event besides a payload, in the bytes its totals and quota count: 0
/// for stores that count payloads only; else measured on one event shaped like the checks'
/// (a one-letter id on [`APP`]).
pub(crate) async fn overhead<B: Backend>() -> u64 {
    if B::PAYLOAD_BYTES {
        return 0;
    }
    let (_b, q) = open::<B>().await;
    q.append(vec![event("z", APP, "0123456789")]).await.unwrap();
    q.totals().bytes - 10
}

/// A quota that holds two of the checks' 10-byte events but not three.
async fn two_events_quota<B: Backend>() -> u64 {
    let o = overhead::<B>().await;
    25 + 2 * o + o / 2
}

pub async fn append_is_durable_and_dedups_across_a_restart<B: Backend>() {
    let o = overhead::<B>().await;
    let (b, q) = open::<B>().await;
    let r = q.append(events(&["a", "b", "a"])).await.unwrap();
    assert_eq!(
        r.fresh(),
        [true, true, false],
        "a repeat within one request"
    );
    let r = q.append(events(&["b", "c"])).await.unwrap();
    assert_eq!(r.fresh(), [false, true]);
    assert_eq!((r.accepted(), r.duplicates()), (1, 1));
    let t = q.totals();
    assert_eq!((t.events, t.bytes), (3, 3 * (10 + o)));
    assert!(t.healthy);
    q.close().await.unwrap();
    drop(q);

    let q = b.open(Limits::default()).await;
    assert_eq!(q.totals().events, 3, "totals survive a restart");
    assert_eq!(q.totals().bytes, 3 * (10 + o));
    let rows = queued(&*q).await;
    assert_eq!(ids(&rows), ["a", "b", "c"]);
    let c = &rows[2];
    assert_eq!(c.event.payload, br#"{"id":"c"}"#);
    assert_eq!(
        (
            c.event.route.as_str(),
            c.event.app_id.as_str(),
            c.event.workspace.as_deref()
        ),
        ("route-1111", APP, Some("ws"))
    );
    assert_eq!(c.event.identity.as_deref(), Some("user-of-c"));
    assert_eq!(
        (c.event.event_time, c.event.attempts, c.not_before),
        (1_700_000_000, 0, 0)
    );
    assert!(c.event.received_at > 0 && c.event.received_at <= unix_millis());
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "FIFO by seq");
    let r = q.append(events(&["a", "d"])).await.unwrap();
    assert_eq!(
        r.fresh(),
        [false, true],
        "the dedup window survives a restart"
    );
}

pub async fn a_request_is_stored_whole_or_not_at_all<B: Backend>() {
    let max = two_events_quota::<B>().await;
    let (_b, q) = open_with::<B>(Limits {
        max_queue_bytes: max,
        ..Limits::default()
    })
    .await;
    // Over the quota as a whole, although its first two events would fit.
    let err = q.append(events(&["a", "b", "c"])).await.unwrap_err();
    assert_eq!(err, AppendError::OverQuota { max });
    assert_eq!(q.totals().events, 0);
    assert!(queued(&*q).await.is_empty());
    // Refused ids were not remembered: the same request fits once it is smaller.
    let r = q.append(events(&["a", "b"])).await.unwrap();
    assert_eq!(r.fresh(), [true, true]);
}

pub async fn concurrent_appends_each_store_every_event_once<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let mut tasks = Vec::new();
    for client in 0..8 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            for round in 0..5 {
                // Every client also re-sends ids of client 0: each id is stored once.
                let ids: Vec<String> = (0..20)
                    .map(|i| format!("c{}-r{round}-{i}", if i < 5 { 0 } else { client }))
                    .collect();
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                accepted += q.append(events(&refs)).await.unwrap().accepted();
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let stored = queued(&*q).await;
    let unique: HashSet<String> = stored.iter().map(|e| e.event.event_id.clone()).collect();
    assert_eq!(stored.len(), unique.len(), "an id stored twice");
    // 8 clients x 5 rounds x 15 own ids, plus 5 rounds x 5 shared ids (client 0's own 15
    // include them).
    assert_eq!(unique.len(), 7 * 5 * 15 + 5 * 20);
    assert_eq!(accepted, unique.len(), "receipts agree with what is stored");
    assert_eq!(q.totals().events, unique.len() as u64);
}

pub async fn ready_reads_one_lane_in_fifo_order_within_its_bounds<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let big = "x".repeat(1000);
    q.append(vec![
        event("a", APP, &big),
        event("other", OTHER_APP, "{}"),
        event("b", APP, "{1}"),
        event("c", APP, "{2}"),
        event("d", APP, &big),
    ])
    .await
    .unwrap();
    let all = queued(&*q).await;
    assert_eq!(ids(&all), ["a", "b", "c", "d"], "only the lane's events");
    let seq = |id: &str| all.iter().find(|e| e.event.event_id == id).unwrap().seq;
    let req = |after, max_events, max_bytes| ReadyRequest {
        after,
        max_events,
        max_bytes,
        ..everything(APP)
    };
    assert_eq!(
        fresh_ids(&*q, req(0, 10, 10)).await,
        ["a"],
        "the first event is read even when it alone is over the bound"
    );
    assert_eq!(fresh_ids(&*q, req(0, 10, 1006)).await, ["a", "b", "c"]);
    assert_eq!(fresh_ids(&*q, req(0, 10, 1005)).await, ["a", "b"]);
    assert_eq!(fresh_ids(&*q, req(seq("a"), 10, 6)).await, ["b", "c"]);
    assert_eq!(fresh_ids(&*q, req(seq("a"), 1, 1 << 20)).await, ["b"]);
    assert_eq!(
        fresh_ids(&*q, req(seq("d"), 10, 1 << 20)).await,
        Vec::<String>::new()
    );
    // Events the lane holds count neither as events nor as bytes.
    let held = ReadyRequest {
        held: [seq("a"), seq("b")].into(),
        ..req(0, 1, 1006)
    };
    assert_eq!(fresh_ids(&*q, held.clone()).await, ["c"]);
    let held = ReadyRequest {
        max_events: 10,
        max_bytes: 1003,
        ..held
    };
    assert_eq!(fresh_ids(&*q, held).await, ["c", "d"]);
    assert_eq!(fresh_ids(&*q, everything(OTHER_APP)).await, ["other"]);
    assert_eq!(q.queued_app_ids().await.unwrap(), [APP, OTHER_APP]);
}

pub async fn parked_events_come_back_due_soonest_first<B: Backend>() {
    let (_b, q) = open::<B>().await;
    q.append(events(&["a", "b", "c"])).await.unwrap();
    let all = queued(&*q).await;
    let now = unix_millis();
    let (a, b) = (all[0].seq, all[1].seq);
    let out = q
        .apply(QueueOp::Park {
            items: vec![(a, now + 20_000), (b, now + 10_000)],
        })
        .await
        .unwrap();
    assert_eq!(out.rows, 2);
    let at = |now| ReadyRequest {
        now,
        ..everything(APP)
    };
    let ready = q.ready(at(now)).await.unwrap();
    assert!(ready.due.is_empty(), "nothing is due yet");
    // A lane starting afresh still sees parked events among the fresh ones, with their time.
    let parked: Vec<i64> = ready.fresh.iter().map(|e| e.not_before).collect();
    assert_eq!(parked, [now + 20_000, now + 10_000, 0]);
    let ready = q.ready(at(now + 15_000)).await.unwrap();
    assert_eq!(ids(&ready.due), ["b"]);
    let ready = q.ready(at(now + 30_000)).await.unwrap();
    assert_eq!(ids(&ready.due), ["b", "a"], "soonest first");
    // Due events come first and share the request's bounds with fresh ones.
    let bounded = ReadyRequest {
        max_events: 2,
        ..at(now + 30_000)
    };
    let ready = q.ready(bounded).await.unwrap();
    assert_eq!((ids(&ready.due).len(), ready.fresh.len()), (2, 0));
    let held = ReadyRequest {
        held: [b].into(),
        ..at(now + 30_000)
    };
    assert_eq!(ids(&q.ready(held).await.unwrap().due), ["a"]);
}

pub async fn due_and_fresh_events_share_one_byte_bound<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let big = "x".repeat(1000);
    q.append(vec![
        event("a", APP, "{1}"),
        event("b", APP, &big),
        event("c", APP, "{2}"),
    ])
    .await
    .unwrap();
    let all = queued(&*q).await;
    q.apply(QueueOp::Park {
        items: vec![(all[0].seq, unix_millis())],
    })
    .await
    .unwrap();
    let read = |max_bytes| ReadyRequest {
        after: all[0].seq,
        max_bytes,
        ..everything(APP)
    };
    let r = q.ready(read(10)).await.unwrap();
    assert_eq!(
        (ids(&r.due), ids(&r.fresh)),
        (vec!["a".to_owned()], vec![]),
        "the first fresh event is not read past the bound when a due one came first"
    );
    let r = q.ready(read(1003)).await.unwrap();
    assert_eq!(
        (ids(&r.due), ids(&r.fresh)),
        (vec!["a".into()], vec!["b".into()])
    );
    let r = q.ready(read(1006)).await.unwrap();
    assert_eq!(ids(&r.fresh), ["b", "c"]);
}

pub async fn acks_remove_events_and_the_totals_follow<B: Backend>() {
    let o = overhead::<B>().await as i64;
    let (_b, q) = open::<B>().await;
    q.append(events(&["a", "b", "c"])).await.unwrap();
    let all = queued(&*q).await;
    let out = q
        .apply(QueueOp::ack(vec![all[0].seq, all[2].seq]))
        .await
        .unwrap();
    assert_eq!((out.rows, out.queue_events_delta), (2, -2));
    assert_eq!(out.queue_bytes_delta, -2 * (10 + o));
    assert_eq!(ids(&queued(&*q).await), ["b"]);
    assert_eq!((q.totals().events, q.totals().bytes), (1, 10 + o as u64));
    let again = q.apply(QueueOp::ack(vec![all[0].seq])).await.unwrap();
    assert_eq!(again.rows, 0, "acknowledging twice changes nothing");
    assert_eq!(q.totals().events, 1);
    // An acknowledged id stays known to the dedup window.
    assert_eq!(q.append(events(&["a"])).await.unwrap().fresh(), [false]);
}

pub async fn failed_attempts_are_counted<B: Backend>() {
    let (_b, q) = open::<B>().await;
    q.append(events(&["a", "b"])).await.unwrap();
    let a = queued(&*q).await[0].seq;
    for _ in 0..2 {
        q.apply(QueueOp::Attempt {
            seqs: vec![a],
            error: "HTTP 503".into(),
        })
        .await
        .unwrap();
    }
    let attempts: Vec<i64> = queued(&*q).await.iter().map(|e| e.event.attempts).collect();
    assert_eq!(attempts, [2, 0]);
    assert_eq!(q.totals().events, 2, "an attempt keeps the event");
}

pub async fn dead_letters_are_listed_counted_replayed_and_purged<B: Backend>() {
    let o = overhead::<B>().await;
    let (_b, q) = open::<B>().await;
    q.append(events(&["a", "b", "c", "d"])).await.unwrap();
    let all = queued(&*q).await;
    q.apply(QueueOp::Attempt {
        seqs: vec![all[0].seq],
        error: "HTTP 500".into(),
    })
    .await
    .unwrap();
    let dead = |i: usize, reason: &str| DeadLetterItem {
        seq: all[i].seq,
        reason: reason.into(),
        detail: Some(format!("detail {i}")),
    };
    let out = q
        .apply(QueueOp::DeadLetter {
            items: vec![dead(0, "rejected"), dead(1, "expired"), dead(2, "rejected")],
        })
        .await
        .unwrap();
    assert_eq!((out.rows, out.queue_events_delta), (3, -3));
    assert_eq!((q.totals().events, q.totals().bytes), (1, 10 + o));
    assert_eq!(ids(&queued(&*q).await), ["d"]);
    let page = |reason: Option<&str>| DeadLetterQuery {
        reason: reason.map(str::to_owned),
        after: 0,
        limit: 100,
        max_bytes: usize::MAX,
    };
    let letters = q.dead_letters(page(None)).await.unwrap();
    let listed: Vec<(&str, &str)> = letters
        .iter()
        .map(|d| (d.event.event_id.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        listed,
        [("a", "rejected"), ("b", "expired"), ("c", "rejected")]
    );
    let a = &letters[0];
    assert_eq!(a.detail.as_deref(), Some("detail 0"));
    assert_eq!(a.event.attempts, 1, "attempts travel with the event");
    assert_eq!(
        (a.event.route.as_str(), a.event.app_id.as_str()),
        ("route-1111", APP)
    );
    assert_eq!(a.event.payload, br#"{"id":"a"}"#);
    assert!(a.dead_at >= a.event.received_at);
    let rejected = q.dead_letters(page(Some("rejected"))).await.unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        q.dead_letter_counts().await.unwrap(),
        [("expired".to_owned(), 1), ("rejected".to_owned(), 2)]
    );

    // Replay to another lane: fresh events there, gone from the dead letters.
    let out = q
        .apply(QueueOp::Replay {
            items: vec![ReplayItem {
                seq: rejected[0].seq,
                route: "elsewhere".into(),
                app_id: OTHER_APP.into(),
                deletion: false,
                heap_user: None,
            }],
        })
        .await
        .unwrap();
    assert_eq!((out.rows, out.queue_events_delta), (1, 1));
    let replayed = q.ready(everything(OTHER_APP)).await.unwrap().fresh;
    assert_eq!(ids(&replayed), ["a"]);
    assert_eq!(replayed[0].event.route, "elsewhere");
    assert_eq!(replayed[0].event.payload, br#"{"id":"a"}"#);
    assert_eq!(q.totals().events, 2);

    // Purge by reason, then by id.
    let out = q
        .apply(QueueOp::Purge {
            reason: Some("rejected".into()),
            ids: None,
        })
        .await
        .unwrap();
    assert_eq!(out.rows, 1);
    let b = q.dead_letters(page(None)).await.unwrap();
    assert_eq!(ids_of_dead(&b), ["b"]);
    let out = q
        .apply(QueueOp::Purge {
            reason: None,
            ids: Some(vec![b[0].seq]),
        })
        .await
        .unwrap();
    assert_eq!(out.rows, 1);
    assert!(q.dead_letters(page(None)).await.unwrap().is_empty());
    assert!(q.dead_letter_counts().await.unwrap().is_empty());
    assert_eq!(
        q.totals().events,
        2,
        "purging dead letters leaves the queue alone"
    );
}

fn ids_of_dead(d: &[currents_heap::queue::DeadLetter]) -> Vec<&str> {
    d.iter().map(|d| d.event.event_id.as_str()).collect()
}

pub async fn dead_letter_pages_are_bounded_in_bytes<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let big = "x".repeat(1000);
    q.append(vec![
        event("a", APP, &big),
        event("b", APP, "{1}"),
        event("c", APP, "{2}"),
        event("d", APP, &big),
    ])
    .await
    .unwrap();
    let items = queued(&*q)
        .await
        .iter()
        .map(|e| DeadLetterItem {
            seq: e.seq,
            reason: "rejected".into(),
            detail: None,
        })
        .collect();
    q.apply(QueueOp::DeadLetter { items }).await.unwrap();
    let page = |after, limit, max_bytes| DeadLetterQuery {
        reason: None,
        after,
        limit,
        max_bytes,
    };
    let first = q.dead_letters(page(0, 10, 10)).await.unwrap();
    assert_eq!(
        ids_of_dead(&first),
        ["a"],
        "the first is read even over the bound"
    );
    let next = q.dead_letters(page(0, 10, 1006)).await.unwrap();
    assert_eq!(ids_of_dead(&next), ["a", "b", "c"]);
    let rest = q.dead_letters(page(next[2].seq, 10, 10)).await.unwrap();
    assert_eq!(ids_of_dead(&rest), ["d"]);
    let limited = q.dead_letters(page(0, 2, usize::MAX)).await.unwrap();
    assert_eq!(ids_of_dead(&limited), ["a", "b"]);
}

pub async fn a_lane_without_a_route_is_dead_lettered_whole<B: Backend>() {
    let o = overhead::<B>().await;
    let (_b, q) = open::<B>().await;
    q.append(vec![
        event("a", APP, "{}"),
        event("x", OTHER_APP, "{12}"),
        event("y", OTHER_APP, "{123}"),
    ])
    .await
    .unwrap();
    let out = q
        .apply(QueueOp::DeadLetterApp {
            app_id: OTHER_APP.into(),
            reason: "unroutable".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        (out.rows, out.queue_events_delta, out.queue_bytes_delta),
        (2, -2, -9 - 2 * o as i64)
    );
    assert_eq!(q.queued_app_ids().await.unwrap(), [APP]);
    assert_eq!(
        q.dead_letter_counts().await.unwrap(),
        [("unroutable".to_owned(), 2)]
    );
    assert_eq!((q.totals().events, q.totals().bytes), (1, 2 + o));
}

pub async fn appends_straight_to_the_dead_letters<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let mut lost = event("lost", "", "{}");
    lost.dead_letter = Some("unroutable");
    let r = q
        .append(vec![lost.clone(), event("a", APP, "{}")])
        .await
        .unwrap();
    assert_eq!(r.fresh(), [true, true]);
    assert_eq!(q.totals().events, 1, "a dead letter is not queued");
    let d = q
        .dead_letters(DeadLetterQuery {
            reason: Some("unroutable".into()),
            after: 0,
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap();
    assert_eq!(ids_of_dead(&d), ["lost"]);
    assert_eq!(
        d[0].event.workspace.as_deref(),
        Some("ws"),
        "kept so a replay can route again"
    );
    assert_eq!(q.append(vec![lost]).await.unwrap().fresh(), [false]);
}

pub async fn the_quota_refuses_whole_requests_but_not_resends<B: Backend>() {
    let max = two_events_quota::<B>().await;
    let (_b, q) = open_with::<B>(Limits {
        max_queue_bytes: max,
        ..Limits::default()
    })
    .await;
    q.append(events(&["a", "b"])).await.unwrap();
    let err = q.append(events(&["c"])).await.unwrap_err();
    assert_eq!(err, AppendError::OverQuota { max });
    // A pure re-send adds nothing, so a full backlog still acknowledges it.
    let r = q.append(events(&["a", "b"])).await.unwrap();
    assert_eq!(r.fresh(), [false, false]);
    assert_eq!(q.totals().events, 2);
    // Room again once delivered.
    let seqs = queued(&*q).await.iter().map(|e| e.seq).collect();
    q.apply(QueueOp::ack(seqs)).await.unwrap();
    assert_eq!(q.append(events(&["c"])).await.unwrap().fresh(), [true]);
}

pub async fn dedup_forgets_ids_after_its_window<B: Backend>() {
    let (_b, q) = open_with::<B>(Limits {
        dedup_window: Duration::from_millis(1),
        ..Limits::default()
    })
    .await;
    q.append(events(&["a"])).await.unwrap();
    // JetStream's shortest duplicate window is 100 ms (a shorter one is raised to it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = q.append(events(&["a"])).await.unwrap();
    assert_eq!(
        r.fresh(),
        [true],
        "an id older than the window is new again"
    );
}

pub async fn the_oldest_event_is_known<B: Backend>() {
    let (_b, q) = open::<B>().await;
    assert_eq!(q.oldest_received_at().await.unwrap(), None);
    let before = unix_millis();
    q.append(events(&["a"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    q.append(events(&["b"])).await.unwrap();
    let oldest = q.oldest_received_at().await.unwrap().unwrap();
    let a = queued(&*q).await[0].clone();
    assert_eq!(oldest, a.event.received_at);
    assert!(oldest >= before);
    q.apply(QueueOp::ack(vec![a.seq])).await.unwrap();
    assert!(q.oldest_received_at().await.unwrap().unwrap() > oldest);
}

pub async fn a_closed_queue_refuses_everything<B: Backend>() {
    let (b, q) = open::<B>().await;
    q.append(events(&["a"])).await.unwrap();
    let seq = queued(&*q).await[0].seq;
    q.close().await.unwrap();
    assert_eq!(q.append(events(&["b"])).await, Err(AppendError::Closed));
    assert_eq!(
        q.apply(QueueOp::ack(vec![seq])).await,
        Err(QueueError::Closed)
    );
    let everything_now = everything(APP);
    assert_eq!(q.ready(everything_now).await, Err(QueueError::Closed));
    assert_eq!(q.oldest_received_at().await, Err(QueueError::Closed));
    assert_eq!(q.dead_letter_counts().await, Err(QueueError::Closed));
    drop(q);
    let q = b.open(Limits::default()).await;
    assert_eq!(
        ids(&queued(&*q).await),
        ["a"],
        "nothing refused was applied"
    );
}
