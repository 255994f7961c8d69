//! A model test of the queue: random interleavings of appends (duplicate ids across
//! requests, several routes and lanes, unroutable events, deletions), lane reads, acks,
//! failed attempts, parking, dead-lettering, replays, purges and restarts, each applied to
//! the store and to a simple in-memory model ([`state::Model`]); after every step the store
//! must hold what the model holds.
//!
//! Why a model: the conformance checks state each promise once, on a hand-picked sequence;
//! the bugs that lose an event or deliver a deleted one hide in the interleavings (a replay
//! after a deletion, a restart between a park and an ack, a purge of a seq that moved). The
//! model says what every interleaving must leave, and proptest shrinks a failure to the
//! shortest sequence of steps that still shows it.
//!
//! Checked after every step: each lane's events (ids, FIFO order, seqs that stay put,
//! attempts, parking times, payloads), its due events, the dead letters, their counts, the
//! totals, the lanes with events, the oldest event and the deletion ledger; checked at each
//! step: every append's receipt, every change's outcome, every bounded read. Nothing
//! acknowledged, dead-lettered or purged can come back from `ready`, and nothing stored can
//! be missing, without one of these failing.
//!
//! Generic over [`Backend`] like the rest of the suite, so every store runs it.

mod state;
mod steps;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;

use currents_heap::queue::{
    Appended, DeadLetterQuery, DeletionQuery, DeletionStatus, Queue, QueueError, ReadyRequest,
    unix_millis,
};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::conformance::{Backend, Limits};
use state::{Expected, LANES, Model};
use steps::Step;

/// Steps per case, at most.
const MAX_STEPS: usize = 40;

type Checked = Result<(), String>;

fn ensure_eq<T: PartialEq + Debug>(store: T, model: T, what: impl Fn() -> String) -> Checked {
    if store == model {
        Ok(())
    } else {
        Err(format!(
            "{}:\n  store: {store:?}\n  model: {model:?}",
            what()
        ))
    }
}

fn unavailable(e: QueueError) -> String {
    format!("the store failed: {e}")
}

/// Cases per run: [`Backend::MODEL_CASES`]; `PROPTEST_CASES` overrides it (a deeper search,
/// locally).
pub fn the_queue_follows_a_model_of_it<B: Backend>() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(B::MODEL_CASES);
    let config = Config {
        cases,
        // A failure prints its shortest sequence; the suite runs on every store, so no
        // regression files are written next to it.
        failure_persistence: None,
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps::steps(MAX_STEPS), |steps| {
        rt.block_on(run::<B>(&steps)).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, steps)) => {
            let (steps, why) = without_needless_steps::<B>(&rt, steps, why.to_string());
            let listed: Vec<String> = steps
                .iter()
                .enumerate()
                .map(|(n, s)| format!("  {n}: {s:?}"))
                .collect();
            panic!(
                "the queue left its model:\n{why}\nshortest sequence:\n{}",
                listed.join("\n")
            );
        }
        Err(e) => panic!("{e}"),
    }
}

/// Removes every step, and every event or item of a step, that the failure does not need,
/// one at a time, until none can go: proptest deletes steps only before it starts shrinking
/// them, so its shortest sequence can still carry steps that change nothing.
fn without_needless_steps<B: Backend>(
    rt: &tokio::runtime::Runtime,
    mut steps: Vec<Step>,
    mut why: String,
) -> (Vec<Step>, String) {
    let size = |steps: &[Step]| steps.iter().map(|s| s.smaller().len() + 1).sum::<usize>();
    loop {
        let before = size(&steps);
        let mut i = 0;
        while i < steps.len() {
            let mut fewer = steps.clone();
            fewer.remove(i);
            let smaller = steps[i].smaller().into_iter().map(|s| {
                let mut c = steps.clone();
                c[i] = s;
                c
            });
            let failing = std::iter::once(fewer)
                .chain(smaller)
                .find_map(|c| rt.block_on(run::<B>(&c)).err().map(|e| (c, e)));
            match failing {
                Some((c, e)) => (steps, why) = (c, e),
                None => i += 1,
            }
        }
        if size(&steps) == before {
            return (steps, why);
        }
    }
}

/// One case: every step on a fresh store and a fresh model.
async fn run<B: Backend>(steps: &[Step]) -> Checked {
    let backend = B::fresh().await;
    let mut q = backend.open(Limits::default()).await;
    let mut m = Model::default();
    let mut now = unix_millis();
    for (n, step) in steps.iter().enumerate() {
        let at = |e: String| format!("step {n} ({step:?}): {e}");
        match step {
            Step::Append(evs) => {
                let events: Vec<_> = evs.iter().map(steps::Ev::new_event).collect();
                let receipt = q
                    .append(events.clone())
                    .await
                    .map_err(|e| at(format!("the append failed: {e}")))?;
                let expected = m.append(&events);
                check_receipt(&receipt.outcomes, &expected).map_err(at)?;
            }
            Step::Ready { .. } => {
                let req = steps::ready_request(step, &m, now).expect("a read");
                let ready = q.ready(req.clone()).await.map_err(|e| at(unavailable(e)))?;
                let got = (ids(&ready.due), ids(&ready.fresh));
                ensure_eq(got, m.ready(&req), || format!("read {req:?}")).map_err(at)?;
            }
            Step::Tick(secs) => now += 1000 * i64::from(*secs),
            Step::Restart => {
                q.close().await.map_err(|e| at(unavailable(e)))?;
                drop(q);
                q = backend.open(Limits::default()).await;
                // Exact at start-up (the running count may lag a commit by a moment).
                ensure_eq(q.totals().dedup_ids, m.dedup_ids() as u64, || {
                    "event ids remembered after a restart".into()
                })
                .map_err(at)?;
            }
            change => {
                let op = steps::queue_op(change, &m, now).expect("a change");
                let mut got = q.apply(op.clone()).await.map_err(|e| at(unavailable(e)))?;
                let want = m.apply(&op);
                // A store that counts more than payloads (`Backend::PAYLOAD_BYTES`) moves its
                // bytes the same way, by at least the payloads.
                let (g, w) = (got.queue_bytes_delta, want.queue_bytes_delta);
                if !B::PAYLOAD_BYTES && g.signum() == w.signum() && g.abs() >= w.abs() {
                    got.queue_bytes_delta = w;
                }
                ensure_eq(got, want, || format!("the outcome of {op:?}")).map_err(at)?;
            }
        }
        check(&*q, &mut m, now, B::PAYLOAD_BYTES)
            .await
            .map_err(at)?;
    }
    q.close().await.map_err(unavailable)
}

fn ids(events: &[currents_heap::queue::QueuedEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.event_id.clone()).collect()
}

fn check_receipt(outcomes: &[Appended], expected: &[Expected]) -> Checked {
    ensure_eq(outcomes.len(), expected.len(), || "receipt length".into())?;
    for (i, (got, want)) in outcomes.iter().zip(expected).enumerate() {
        let what = || format!("receipt of event {i}");
        match (got, want) {
            (
                Appended::Deletion(d),
                Expected::Deletion {
                    known_user,
                    purged_queued,
                    purged_dead_letters,
                },
            ) => {
                ensure_eq(d.known_user, *known_user, || format!("{}: known", what()))?;
                ensure_eq(d.purged_dead_letters, *purged_dead_letters, || {
                    format!("{}: dead letters purged", what())
                })?;
                // Events queued by the same request have no seq the model learned.
                let mut apps: Vec<&str> = d.purged_queued.iter().map(|(a, _)| &**a).collect();
                let mut want_apps: Vec<&str> = purged_queued.iter().map(|(a, _)| &**a).collect();
                apps.sort_unstable();
                want_apps.sort_unstable();
                ensure_eq(apps, want_apps, || format!("{}: lanes purged", what()))?;
                for seq in purged_queued.iter().filter_map(|(_, s)| *s) {
                    if !d.purged_queued.iter().any(|(_, s)| *s == seq) {
                        return Err(format!("{}: seq {seq} not purged: {d:?}", what()));
                    }
                }
            }
            (got, want) => {
                let got = match got {
                    Appended::Queued => Expected::Queued,
                    Appended::Duplicate => Expected::Duplicate,
                    Appended::DeletedUser => Expected::DeletedUser,
                    Appended::Deletion(d) => return Err(format!("{}: {d:?}", what())),
                };
                ensure_eq(&got, want, what)?;
            }
        }
    }
    Ok(())
}

fn everything(app_id: &str, now: i64) -> ReadyRequest {
    ReadyRequest {
        app_id: app_id.into(),
        after: 0,
        now,
        max_events: usize::MAX,
        max_bytes: usize::MAX,
        held: HashSet::new(),
    }
}

/// The store holds what the model holds; seqs first seen are learned.
async fn check(q: &dyn Queue, m: &mut Model, now: i64, payload_bytes: bool) -> Checked {
    let mut seqs = HashSet::new();
    let mut oldest: Option<i64> = None;
    for lane in LANES {
        let ready = q.ready(everything(lane, now)).await.map_err(unavailable)?;
        let want: Vec<String> = m.lane(lane).map(|q| q.event.id.clone()).collect();
        ensure_eq(ids(&ready.fresh), want, || {
            format!("lane {lane}: its events, in FIFO order")
        })?;
        let rows = m.queued.iter_mut().filter(|q| q.event.app_id == lane);
        for (row, q) in ready.fresh.iter().zip(rows) {
            let what = || format!("lane {lane}, event {}", q.event.id);
            if !seqs.insert(row.seq) {
                return Err(format!("{}: seq {} named twice", what(), row.seq));
            }
            // A lane's cursor is the highest seq it has read: a newly queued event must come
            // after every event the lane ever held, or the lane never reads it.
            let high = m.lane_high.entry(lane).or_default();
            if q.seq.is_none() && row.seq <= *high {
                return Err(format!(
                    "{}: seq {} not after the lane's earlier {high}: a cursor skips it",
                    what(),
                    row.seq
                ));
            }
            *high = (*high).max(row.seq);
            ensure_eq(*q.seq.get_or_insert(row.seq), row.seq, || {
                format!("{}: seq", what())
            })?;
            ensure_eq(
                *q.received_at.get_or_insert(row.event.received_at),
                row.event.received_at,
                || format!("{}: received_at", what()),
            )?;
            let at = row.event.received_at;
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
            let e = &row.event;
            ensure_eq(
                (&*e.route, &*e.app_id, e.attempts, row.not_before),
                (
                    &*q.event.route,
                    &*q.event.app_id,
                    q.event.attempts,
                    q.not_before,
                ),
                || format!("{}: route, app id, attempts, parked until", what()),
            )?;
            ensure_eq(
                (
                    &e.event_type,
                    &e.identity,
                    e.event_time,
                    &e.payload,
                    e.workspace.as_deref(),
                ),
                (
                    &q.event.event_type,
                    &q.event.identity,
                    q.event.event_time,
                    &q.event.payload,
                    Some("ws"),
                ),
                || format!("{}: as appended", what()),
            )?;
        }
        if ready.fresh.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(format!("lane {lane}: seqs out of FIFO order"));
        }
        let (due, _) = m.ready(&everything(lane, now));
        ensure_eq(ids(&ready.due), due, || format!("lane {lane}: due events"))?;
    }
    let t = q.totals();
    // A store that counts more than payloads (`Backend::PAYLOAD_BYTES`) holds at least them.
    let bytes = if payload_bytes || t.bytes < m.bytes() || (t.bytes == 0) != (m.bytes() == 0) {
        t.bytes
    } else {
        m.bytes()
    };
    ensure_eq(
        (t.events, bytes, t.healthy),
        (m.queued.len() as u64, m.bytes(), true),
        || "totals (events, bytes, healthy)".into(),
    )?;
    let apps: Vec<&str> = LANES
        .into_iter()
        .filter(|l| m.lane(l).next().is_some())
        .collect();
    ensure_eq(
        q.queued_app_ids().await.map_err(unavailable)?,
        apps.iter().map(|a| a.to_string()).collect(),
        || "lanes with events".into(),
    )?;
    ensure_eq(
        q.oldest_received_at().await.map_err(unavailable)?,
        oldest,
        || "the oldest event".into(),
    )?;
    check_dead_letters(q, m).await?;
    check_ledger(q, m).await
}

async fn check_dead_letters(q: &dyn Queue, m: &mut Model) -> Checked {
    let dead = q
        .dead_letters(DeadLetterQuery {
            reason: None,
            after: 0,
            limit: 100_000,
            max_bytes: usize::MAX,
        })
        .await
        .map_err(unavailable)?;
    let got: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (&*d.event.event_id, &*d.reason))
        .collect();
    let want: Vec<(&str, &str)> = m.dead.iter().map(|d| (&*d.event.id, &*d.reason)).collect();
    ensure_eq(got, want, || {
        "dead letters (id, reason), oldest first".into()
    })?;
    for (row, d) in dead.iter().zip(m.dead.iter_mut()) {
        let what = || format!("dead letter {}", d.event.id);
        ensure_eq(*d.seq.get_or_insert(row.seq), row.seq, || {
            format!("{}: seq", what())
        })?;
        let e = &row.event;
        ensure_eq(
            (&*e.route, &*e.app_id, e.attempts, &e.event_type, &e.payload),
            (
                &*d.event.route,
                &*d.event.app_id,
                d.event.attempts,
                &d.event.event_type,
                &d.event.payload,
            ),
            || format!("{}: route, app id, attempts, type, payload", what()),
        )?;
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for d in &m.dead {
        *counts.entry(d.reason.clone()).or_default() += 1;
    }
    ensure_eq(
        q.dead_letter_counts().await.map_err(unavailable)?,
        counts.into_iter().collect(),
        || "dead letters by reason".into(),
    )
}

async fn check_ledger(q: &dyn Queue, m: &Model) -> Checked {
    let ledger = q
        .deletions(DeletionQuery {
            limit: 100_000,
            ..DeletionQuery::default()
        })
        .await
        .map_err(unavailable)?;
    let got: Vec<_> = ledger
        .iter()
        .map(|e| {
            (
                &*e.route,
                &*e.braze_user_id,
                &*e.event_id,
                &e.users,
                e.status,
                e.purged_events,
            )
        })
        .collect();
    let want: Vec<_> = m
        .ledger
        .iter()
        .map(|e| {
            let status = if e.users.is_empty() {
                DeletionStatus::UnknownUser
            } else {
                DeletionStatus::PendingSubmit
            };
            (
                &*e.route,
                &*e.user,
                &*e.event_id,
                &e.users,
                status,
                e.purged_events,
            )
        })
        .collect();
    ensure_eq(got, want, || {
        "the ledger (route, user, deletion, Heap users, status, purged)".into()
    })
}
