//! The in-memory model the queue is held to: what the trait's documents promise, kept in
//! plain vectors and sets. It makes no `seq`s of its own (a store chooses them): it learns
//! each event's from the store's answers, then checks they stay put and keep FIFO order.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use currents_heap::queue::{HeapUser, NewEvent, OpOutcome, QueueOp, ReadyRequest, ReplayItem};

/// The routes (name, Heap app id): two of them share the lane `A2`.
pub const ROUTES: [(&str, &str); 3] = [("r1", "A1"), ("r2", "A2"), ("r3", "A2")];
/// The delivery lanes (Heap app ids).
pub const LANES: [&str; 2] = ["A1", "A2"];
/// The route (and dead-letter reason) of an event no route takes.
pub const UNROUTABLE: &str = "unroutable";
pub const DELETE_REQUEST: &str = "users.UserDeleteRequest";

/// An event as the model keeps it, queued or dead-lettered.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub route: String,
    pub app_id: String,
    pub event_type: String,
    pub identity: Option<String>,
    pub event_time: i64,
    pub payload: Vec<u8>,
    pub attempts: i64,
    pub user: Option<String>,
}

impl Event {
    fn of(e: &NewEvent) -> Self {
        Event {
            id: e.event_id.clone(),
            route: e.route.to_string(),
            app_id: e.app_id.to_string(),
            event_type: e.event_type.clone(),
            identity: e.identity.clone(),
            event_time: e.event_time,
            payload: e.payload.to_vec(),
            attempts: 0,
            user: e.braze_user_id.clone(),
        }
    }

    pub fn is_deletion_request(&self) -> bool {
        self.event_type == DELETE_REQUEST
    }

    fn len(&self) -> i64 {
        self.payload.len() as i64
    }
}

/// A queued event: where it stands, and what the store said of it so far.
#[derive(Debug, Clone)]
pub struct Queued {
    pub event: Event,
    /// 0 when never parked.
    pub not_before: i64,
    /// Learned from the store's first read after it was queued.
    pub seq: Option<i64>,
    pub received_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Dead {
    pub event: Event,
    pub reason: String,
    pub seq: Option<i64>,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub route: String,
    pub user: String,
    pub event_id: String,
    /// Sorted.
    pub users: Vec<HeapUser>,
    pub purged_events: i64,
}

/// What an append does to one event, as [`currents_heap::queue::Appended`] says it; a
/// deletion's purged events are `(app_id, seq)`, the seq `None` when the model never learned
/// it (the event came in the same request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Queued,
    Duplicate,
    DeletedUser,
    Deletion {
        known_user: bool,
        purged_queued: Vec<(String, Option<i64>)>,
        purged_dead_letters: u64,
    },
}

type Subject = (String, String);

#[derive(Debug, Default)]
pub struct Model {
    /// Every lane's queued events in the order they were queued (FIFO per lane).
    pub queued: Vec<Queued>,
    /// Oldest first.
    pub dead: Vec<Dead>,
    pub ledger: Vec<Entry>,
    /// Seqs of queued events and dead letters that are gone: a change naming one changes
    /// nothing.
    pub gone_queued: Vec<i64>,
    pub gone_dead: Vec<i64>,
    /// Per lane, the highest seq it ever held.
    pub lane_high: BTreeMap<&'static str, i64>,
    /// Event ids accepted (the dedup window outlives every case).
    dedup: HashSet<String>,
    /// (route, Braze user) → the Heap users sent for it.
    identities: BTreeMap<Subject, BTreeSet<HeapUser>>,
    tombstones: HashSet<Subject>,
}

impl Model {
    pub fn lane(&self, app_id: &str) -> impl Iterator<Item = &Queued> {
        self.queued.iter().filter(move |q| q.event.app_id == app_id)
    }

    pub fn dedup_ids(&self) -> usize {
        self.dedup.len()
    }

    pub fn bytes(&self) -> u64 {
        self.queued.iter().map(|q| q.event.len() as u64).sum()
    }

    fn position(&self, seq: i64) -> Option<usize> {
        self.queued.iter().position(|q| q.seq == Some(seq))
    }

    fn dead_position(&self, seq: i64) -> Option<usize> {
        self.dead.iter().position(|d| d.seq == Some(seq))
    }

    fn take_queued(&mut self, i: usize) -> Queued {
        let q = self.queued.remove(i);
        self.gone_queued.extend(q.seq);
        q
    }

    fn take_dead(&mut self, i: usize) -> Dead {
        let d = self.dead.remove(i);
        self.gone_dead.extend(d.seq);
        d
    }

    fn enqueue(&mut self, event: Event) {
        self.queued.push(Queued {
            event,
            not_before: 0,
            seq: None,
            received_at: None,
        });
    }

    fn remember(&mut self, route: &str, event: &Event, heap_user: Option<&HeapUser>) {
        if let (Some(user), Some(heap)) = (&event.user, heap_user) {
            self.identities
                .entry((route.to_owned(), user.clone()))
                .or_default()
                .insert(heap.clone());
        }
    }

    /// Accepts a deletion of `user` on `route`: purges the user's queued events and dead
    /// letters there, forgets its Heap users, leaves a tombstone and a ledger entry.
    fn delete_user(&mut self, route: &str, user: &str, event_id: &str) -> Expected {
        let subject = (route.to_owned(), user.to_owned());
        let of_user = |e: &Event| e.route == route && e.user.as_deref() == Some(user);
        let mut purged_queued = Vec::new();
        let mut i = 0;
        while i < self.queued.len() {
            if of_user(&self.queued[i].event) {
                let q = self.take_queued(i);
                purged_queued.push((q.event.app_id, q.seq));
            } else {
                i += 1;
            }
        }
        let mut purged_dead_letters = 0;
        let mut i = 0;
        while i < self.dead.len() {
            if of_user(&self.dead[i].event) {
                self.take_dead(i);
                purged_dead_letters += 1;
            } else {
                i += 1;
            }
        }
        let users: Vec<HeapUser> = self
            .identities
            .remove(&subject)
            .unwrap_or_default()
            .into_iter()
            .collect();
        self.tombstones.insert(subject);
        self.ledger.push(Entry {
            route: route.to_owned(),
            user: user.to_owned(),
            event_id: event_id.to_owned(),
            purged_events: purged_queued.len() as i64 + purged_dead_letters as i64,
            users: users.clone(),
        });
        Expected::Deletion {
            known_user: !users.is_empty(),
            purged_queued,
            purged_dead_letters,
        }
    }

    /// An append: per event, in order, what it does.
    pub fn append(&mut self, events: &[NewEvent]) -> Vec<Expected> {
        events.iter().map(|e| self.append_one(e)).collect()
    }

    fn append_one(&mut self, e: &NewEvent) -> Expected {
        if !self.dedup.insert(e.event_id.clone()) {
            return Expected::Duplicate;
        }
        let event = Event::of(e);
        if let Some(reason) = e.dead_letter {
            self.dead.push(Dead {
                event,
                reason: reason.to_owned(),
                seq: None,
            });
            return Expected::Queued;
        }
        if let Some(user) = &e.braze_user_id {
            if e.deletion {
                return self.delete_user(&e.route, user, &e.event_id);
            }
            if self
                .tombstones
                .contains(&(e.route.to_string(), user.clone()))
            {
                return Expected::DeletedUser;
            }
        }
        self.remember(&e.route, &event, e.heap_user.as_ref());
        self.enqueue(event);
        Expected::Queued
    }

    /// One change, as [`currents_heap::queue::Queue::apply`] makes it.
    pub fn apply(&mut self, op: &QueueOp) -> OpOutcome {
        let mut out = OpOutcome::default();
        let removed = |out: &mut OpOutcome, q: &Queued| {
            out.rows += 1;
            out.queue_events_delta -= 1;
            out.queue_bytes_delta -= q.event.len();
        };
        match op {
            QueueOp::Ack { seqs, .. } => {
                for seq in seqs {
                    if let Some(i) = self.position(*seq) {
                        let q = self.take_queued(i);
                        removed(&mut out, &q);
                    }
                }
            }
            QueueOp::Park { items } => {
                for (seq, not_before) in items {
                    if let Some(i) = self.position(*seq) {
                        self.queued[i].not_before = *not_before;
                        out.rows += 1;
                    }
                }
            }
            QueueOp::Attempt { seqs, .. } => {
                for seq in seqs {
                    if let Some(i) = self.position(*seq) {
                        self.queued[i].event.attempts += 1;
                        out.rows += 1;
                    }
                }
            }
            QueueOp::DeadLetter { items } => {
                for item in items {
                    if let Some(i) = self.position(item.seq) {
                        let q = self.take_queued(i);
                        removed(&mut out, &q);
                        self.dead.push(Dead {
                            event: q.event,
                            reason: item.reason.clone(),
                            seq: None,
                        });
                    }
                }
            }
            QueueOp::DeadLetterApp { app_id, reason } => {
                let mut i = 0;
                while i < self.queued.len() {
                    if self.queued[i].event.app_id == *app_id {
                        let q = self.take_queued(i);
                        removed(&mut out, &q);
                        self.dead.push(Dead {
                            event: q.event,
                            reason: reason.clone(),
                            seq: None,
                        });
                    } else {
                        i += 1;
                    }
                }
            }
            QueueOp::Replay { items } => {
                for item in items {
                    self.replay(item, &mut out);
                }
            }
            QueueOp::Purge { reason, ids } => {
                let mut i = 0;
                while i < self.dead.len() {
                    let d = &self.dead[i];
                    let hit = reason.as_ref().is_none_or(|r| *r == d.reason)
                        && ids
                            .as_ref()
                            .is_none_or(|ids| d.seq.is_some_and(|s| ids.contains(&s)));
                    if hit {
                        self.take_dead(i);
                        out.rows += 1;
                    } else {
                        i += 1;
                    }
                }
            }
            other => panic!("the model does not know {other:?}"),
        }
        out
    }

    fn replay(&mut self, item: &ReplayItem, out: &mut OpOutcome) {
        let Some(i) = self.dead_position(item.seq) else {
            return;
        };
        let Dead { mut event, .. } = self.take_dead(i);
        out.rows += 1;
        if let Some(user) = event.user.clone() {
            if item.deletion {
                // The dead letter itself is gone already; the purge takes the rest.
                let (events, bytes) = (self.queued.len() as i64, self.bytes() as i64);
                self.delete_user(&item.route, &user, &event.id);
                out.queue_events_delta -= events - self.queued.len() as i64;
                out.queue_bytes_delta -= bytes - self.bytes() as i64;
                return;
            }
            if self.tombstones.contains(&(item.route.clone(), user)) {
                return;
            }
        }
        self.remember(&item.route, &event, item.heap_user.as_ref());
        event.route = item.route.clone();
        event.app_id = item.app_id.clone();
        // A replayed event is a fresh one: no attempts, never parked.
        event.attempts = 0;
        out.queue_events_delta += 1;
        out.queue_bytes_delta += event.len();
        self.enqueue(event);
    }

    /// The ids a bounded [`ReadyRequest`] answers with, `(due, fresh)`: due parked events
    /// (soonest first), then the events after the cursor in FIFO order, passing over held
    /// ones, together at most `max_events` and `max_bytes` (the first event always).
    pub fn ready(&self, req: &ReadyRequest) -> (Vec<String>, Vec<String>) {
        let seq = |q: &Queued| q.seq.expect("every queued event's seq is learned");
        let mut due: Vec<&Queued> = self
            .lane(&req.app_id)
            .filter(|q| q.not_before > 0 && q.not_before <= req.now)
            .collect();
        // Stable: FIFO among events parked until the same time.
        due.sort_by_key(|q| q.not_before);
        let fresh = self.lane(&req.app_id).filter(|q| seq(q) > req.after);
        let mut taken = (Vec::new(), Vec::new());
        let (mut count, mut bytes) = (0usize, 0usize);
        let candidates = due
            .into_iter()
            .map(|q| (true, q))
            .chain(fresh.map(|q| (false, q)));
        for (is_due, q) in candidates {
            if req.held.contains(&seq(q)) {
                continue;
            }
            let len = q.event.payload.len();
            if count >= req.max_events || (count > 0 && bytes + len > req.max_bytes) {
                break;
            }
            count += 1;
            bytes += len;
            let list = if is_due { &mut taken.0 } else { &mut taken.1 };
            list.push(q.event.id.clone());
        }
        taken
    }
}
