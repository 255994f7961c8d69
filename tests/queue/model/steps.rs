//! The operations of a case, as generated and as shrunk. A step names events by event id
//! ("e07, or the next one there"), never by `seq`: any subsequence of a case is still a valid
//! case and names the same events, so a failure shrinks to a short, readable one. Kept apart
//! from `QueueOp`: a step becomes a `QueueOp` only when it is run.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use currents_heap::queue::{DeadLetterItem, HeapUser, NewEvent, QueueOp, ReadyRequest, ReplayItem};
use proptest::prelude::*;

use super::state::{DELETE_REQUEST, LANES, Model, ROUTES, UNROUTABLE};

/// Reasons a step dead-letters with (`unroutable` is the append's and `DeadLetterApp`'s).
const REASONS: [&str; 3] = ["rejected", "expired", UNROUTABLE];

/// An event a request carries: `route` `None` is unroutable (straight to the dead letters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ev {
    pub id: u8,
    pub route: Option<u8>,
    pub user: Option<u8>,
    /// 0: no Heap user, 1: an identity, 2: a synthetic Heap user id.
    pub heap: u8,
    pub size: u8,
    /// A `users.UserDeleteRequest` (its user is always set).
    pub deletion: bool,
}

/// A queued event (or a dead letter): `Live(n)` the one there now whose id is `eNN` (or the
/// next one up, see [`Choice::seq`]), `Gone(i)` the i-th of those acknowledged or moved away
/// (a change naming it is stale).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Live(u8),
    Gone(u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Append(Vec<Ev>),
    /// A lane's bounded read: after the event `after` names (of the lane, or gone: a
    /// cursor past acknowledged events), or from the start; passing over the `held` ones.
    Ready {
        lane: u8,
        after: Option<Pick>,
        max_events: u8,
        max_bytes: u8,
        held: Vec<Pick>,
    },
    Ack(Vec<Pick>),
    Attempt(Vec<Pick>),
    /// Park until the model's clock plus this many seconds (in the past too).
    Park(Vec<(Pick, i8)>),
    DeadLetter(Vec<(Pick, u8)>),
    DeadLetterApp(u8),
    /// Dead letters to a route, with a Heap user or not.
    Replay(Vec<(Pick, u8, bool)>),
    Purge {
        reason: Option<u8>,
        ids: Option<Vec<Pick>>,
    },
    /// The model's clock (the `now` of reads, parking times) moves on this many seconds.
    Tick(u8),
    /// Close the queue and open it again.
    Restart,
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.event_id())?;
        match self.route {
            Some(r) => write!(f, "@{}", ROUTES[usize::from(r)].0)?,
            None => write!(f, "@{UNROUTABLE}")?,
        }
        if let Some(u) = self.user {
            write!(f, " u{u}")?;
        }
        match self.heap_user() {
            Some(HeapUser::Identity(_)) => write!(f, "/identity")?,
            Some(HeapUser::UserId(_)) => write!(f, "/user_id")?,
            None => {}
        }
        if !self.deletion {
            write!(f, " {}B", self.new_event().payload.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pick::Live(n) if *n >= 24 => write!(f, "~del{}", n - 24),
            Pick::Live(n) => write!(f, "~e{n:02}"),
            Pick::Gone(i) => write!(f, "gone#{i}"),
        }
    }
}

impl Ev {
    fn event_id(&self) -> String {
        if self.deletion {
            format!("del{}", self.id)
        } else {
            format!("e{:02}", self.id)
        }
    }

    fn user_name(&self) -> Option<String> {
        self.user.map(|u| format!("u{u}"))
    }

    fn heap_user(&self) -> Option<HeapUser> {
        let u = self.user?;
        match self.heap {
            1 => Some(HeapUser::Identity(format!("ext-u{u}"))),
            2 => Some(HeapUser::UserId(format!("42{u}"))),
            _ => None,
        }
    }

    /// As ingest stores it: an unroutable event (a deletion too) goes to the dead letters,
    /// without a Heap user.
    pub fn new_event(&self) -> NewEvent {
        let id = self.event_id();
        let (route, app_id) = match self.route {
            Some(r) => ROUTES[usize::from(r)],
            None => (UNROUTABLE, ""),
        };
        let heap_user = self.route.and(self.heap_user());
        NewEvent {
            route: Arc::from(route),
            app_id: Arc::from(app_id),
            workspace: Some(Arc::from("ws")),
            dead_letter: self.route.is_none().then_some(UNROUTABLE),
            event_type: if self.deletion {
                DELETE_REQUEST.into()
            } else {
                "users.messages.email.Send".into()
            },
            identity: match &heap_user {
                Some(HeapUser::Identity(i)) => Some(i.clone()),
                _ => None,
            },
            event_time: 1_700_000_000 + i64::from(self.id),
            payload: Bytes::from(format!("{id}{}", ".".repeat(usize::from(self.size)))),
            braze_user_id: self.user_name(),
            heap_user,
            deletion: self.deletion && self.route.is_some(),
            event_id: id,
        }
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    let route = prop::option::weighted(0.85, 0u8..3);
    prop_oneof![
        8 => (0u8..24, route.clone(), prop::option::weighted(0.8, 0u8..3), 0u8..3, 1u8..=30)
            .prop_map(|(id, route, user, heap, size)| Ev {
                id, route, user, heap, size, deletion: false,
            }),
        1 => (0u8..4, route, 0u8..3).prop_map(|(id, route, user)| Ev {
            id, route, user: Some(user), heap: 0, size: 0, deletion: true,
        }),
    ]
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![5 => (0u8..28).prop_map(Pick::Live), 1 => any::<u8>().prop_map(Pick::Gone)]
}

fn picks() -> impl Strategy<Value = Vec<Pick>> {
    prop::collection::vec(pick(), 1..=3)
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec(ev(), 1..=4).prop_map(Step::Append),
        3 => (0u8..2, prop::option::of(pick()), 1u8..=5, 1u8..=90,
              prop::collection::vec(pick(), 0..=2))
            .prop_map(|(lane, after, max_events, max_bytes, held)| Step::Ready {
                lane, after, max_events, max_bytes, held,
            }),
        3 => picks().prop_map(Step::Ack),
        2 => picks().prop_map(Step::Attempt),
        3 => prop::collection::vec((pick(), -3i8..=3), 1..=3).prop_map(Step::Park),
        2 => prop::collection::vec((pick(), 0u8..2), 1..=3).prop_map(Step::DeadLetter),
        1 => (0u8..2).prop_map(Step::DeadLetterApp),
        3 => prop::collection::vec((pick(), 0u8..3, any::<bool>()), 1..=3).prop_map(Step::Replay),
        1 => (prop::option::of(0u8..3), prop::option::weighted(0.8, picks()))
            .prop_map(|(reason, ids)| Step::Purge { reason, ids }),
        2 => (1u8..=3).prop_map(Step::Tick),
        1 => Just(Step::Restart),
    ]
}

impl Step {
    /// The step with one of its events or items left out, each way there is (none when it
    /// has one or none).
    pub fn smaller(&self) -> Vec<Step> {
        fn without<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
            if items.len() < 2 {
                return Vec::new();
            }
            (0..items.len())
                .map(|i| [&items[..i], &items[i + 1..]].concat())
                .collect()
        }
        match self {
            Step::Append(e) => without(e).into_iter().map(Step::Append).collect(),
            Step::Ack(p) => without(p).into_iter().map(Step::Ack).collect(),
            Step::Attempt(p) => without(p).into_iter().map(Step::Attempt).collect(),
            Step::Park(p) => without(p).into_iter().map(Step::Park).collect(),
            Step::DeadLetter(p) => without(p).into_iter().map(Step::DeadLetter).collect(),
            Step::Replay(p) => without(p).into_iter().map(Step::Replay).collect(),
            _ => Vec::new(),
        }
    }
}

pub fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..=max)
}

/// The number an event id names its event by in a [`Pick`]: `eNN` is NN, `delN` 24 + N.
fn key(event_id: &str) -> u8 {
    let number = |s: &str| s.parse::<u8>().unwrap_or(0);
    match event_id.strip_prefix("del") {
        Some(n) => 24 + number(n),
        None => number(event_id.trim_start_matches('e')),
    }
}

/// What a pick chooses from: the `(key, seq)` of the events there now, and the seqs gone.
struct Choice<'a> {
    live: Vec<(u8, i64)>,
    gone: &'a [i64],
}

impl Choice<'_> {
    fn queued<'a>(m: &'a Model, lane: Option<&str>) -> Choice<'a> {
        let live = m
            .queued
            .iter()
            .filter(|q| lane.is_none_or(|l| q.event.app_id == l))
            .filter_map(|q| Some((key(&q.event.id), q.seq?)))
            .collect();
        Choice {
            live,
            gone: &m.gone_queued,
        }
    }

    fn dead(m: &Model) -> Choice<'_> {
        let live = m
            .dead
            .iter()
            .filter_map(|d| Some((key(&d.event.id), d.seq?)))
            .collect();
        Choice {
            live,
            gone: &m.gone_dead,
        }
    }

    /// `Live(n)`: the event with the lowest key at or above n (else the lowest): removing an
    /// unrelated step leaves the choice alone. `Gone(i)`: the i-th gone seq, modulo.
    fn seq(&self, pick: Pick) -> Option<i64> {
        match pick {
            Pick::Live(n) => {
                let above = self.live.iter().filter(|(k, _)| *k >= n).min();
                above.or_else(|| self.live.iter().min()).map(|(_, s)| *s)
            }
            Pick::Gone(i) => {
                let gone = self.gone;
                (!gone.is_empty()).then(|| gone[usize::from(i) % gone.len()])
            }
        }
    }

    /// Each item whose pick names an event not named before, with its seq.
    fn items<'i, T>(&self, items: &'i [T], pick: impl Fn(&T) -> Pick) -> Vec<(i64, &'i T)> {
        let mut out: Vec<(i64, &T)> = Vec::new();
        for item in items {
            if let Some(seq) = self.seq(pick(item))
                && !out.iter().any(|(s, _)| *s == seq)
            {
                out.push((seq, item));
            }
        }
        out
    }

    fn seqs(&self, picks: &[Pick]) -> Vec<i64> {
        self.items(picks, |p| *p)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }
}

/// The `QueueOp` a change step is, given what the model holds now.
pub fn queue_op(step: &Step, m: &Model, now: i64) -> Option<QueueOp> {
    let queued = || Choice::queued(m, None);
    Some(match step {
        Step::Ack(p) => QueueOp::ack(queued().seqs(p)),
        Step::Attempt(p) => QueueOp::Attempt {
            seqs: queued().seqs(p),
            error: "HTTP 503".into(),
        },
        Step::Park(items) => QueueOp::Park {
            items: (queued().items(items, |i| i.0).into_iter())
                .map(|(seq, (_, secs))| (seq, now + 1000 * i64::from(*secs)))
                .collect(),
        },
        Step::DeadLetter(items) => QueueOp::DeadLetter {
            items: (queued().items(items, |i| i.0).into_iter())
                .map(|(seq, (_, r))| DeadLetterItem {
                    seq,
                    reason: REASONS[usize::from(*r)].into(),
                    detail: Some(format!("detail of {seq}")),
                })
                .collect(),
        },
        Step::DeadLetterApp(lane) => QueueOp::DeadLetterApp {
            app_id: LANES[usize::from(*lane)].into(),
            reason: UNROUTABLE.into(),
        },
        Step::Replay(items) => {
            let items = Choice::dead(m).items(items, |i| i.0).into_iter();
            let items = items.map(|(seq, &(_, route, heap))| {
                let (route, app_id) = ROUTES[usize::from(route)];
                // What `dlq replay` passes: the event's kind and user, as the mapping sees them.
                let dead = m.dead.iter().find(|d| d.seq == Some(seq));
                let user = dead.and_then(|d| d.event.user.clone());
                ReplayItem {
                    seq,
                    route: route.into(),
                    app_id: app_id.into(),
                    deletion: dead.is_some_and(|d| d.event.is_deletion_request()),
                    heap_user: user
                        .filter(|_| heap)
                        .map(|u| HeapUser::Identity(format!("ext-{u}"))),
                }
            });
            QueueOp::Replay {
                items: items.collect(),
            }
        }
        Step::Purge { reason, ids } => QueueOp::Purge {
            reason: reason.map(|r| REASONS[usize::from(r)].into()),
            ids: ids.as_ref().map(|p| Choice::dead(m).seqs(p)),
        },
        _ => return None,
    })
}

/// The bounded read a `Ready` step is.
pub fn ready_request(step: &Step, m: &Model, now: i64) -> Option<ReadyRequest> {
    let Step::Ready {
        lane,
        after,
        max_events,
        max_bytes,
        held,
    } = step
    else {
        return None;
    };
    let app_id = LANES[usize::from(*lane)];
    let lane = Choice::queued(m, Some(app_id));
    Some(ReadyRequest {
        app_id: app_id.into(),
        after: after.and_then(|p| lane.seq(p)).unwrap_or(0),
        now,
        max_events: usize::from(*max_events),
        max_bytes: usize::from(*max_bytes),
        held: lane.seqs(held).into_iter().collect::<HashSet<i64>>(),
    })
}
