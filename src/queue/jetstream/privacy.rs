//! Deletions on JetStream (product.md §7): the identity map, the tombstones and the deletion
//! ledger, with the semantics of the SQLite store (`sqlite/privacy.rs`), on streams.
//!
//! | stream | subjects | holds |
//! |---|---|---|
//! | `P-ids` | `P.id.<user>.<heap>` | the identity map: one record per (route, Braze user, Heap user), kept for `--identity-map-retention` from its last write (`max_age`) |
//! | `P-deletions` | `P.del.<user>` | one record per accepted `users.UserDeleteRequest`, never changed: its stream sequence is the ledger id, it is the tombstone while younger than the tombstone life, and its message id (the event id) dedups the deletion |
//! | `P-ledger` | `P.ledger.<id>` | the current state of a ledger entry once it changed (status, request id, attempts, purged events), one per subject |
//! | `P-drops` | `P.drop` | the ids of events dropped for a deleted user, kept for the dedup window only (their message ids are the dedup memory of those ids) |
//!
//! `<user>` is the [`user_token`] of (route, Braze user id), `<heap>` a hash of the Heap user;
//! each record holds the ids in clear, and the ids decide (a hash collision only makes a
//! candidate that the record's own ids refuse).
//!
//! Why the tombstone *is* the ledger's first record: JetStream has no transaction across
//! messages, and one message can be both. Accepting a deletion writes that one record first
//! (with the deletion's event id as `Nats-Msg-Id`); from then on, events of the user are
//! refused and the ledger owes Heap the deletion, whatever happens next. Everything after it is
//! idempotent and may run again: the purge of the user's queued events and dead letters, the
//! removal of the user's identity-map records and of its identities in the saved lanes, and
//! the ledger state that counts what was purged. A crash in between leaves a deletion whose
//! purge is unfinished; Braze sends the request again (no 200 was sent), JetStream answers
//! `duplicate` with the sequence of the first record, and the purge runs again to its end
//! (answered `Duplicate`, or [`Appended::Deletion`] when that run purged events a lane may
//! hold). A repeat after the dedup window is a new ledger entry, as on SQLite.
//!
//! Why the ledger id is a stream sequence: several forwarder replicas accept deletions at
//! once, and JetStream's sequence is the one counter they share without a lock: increasing,
//! never reused. The entry's later states go into `P.ledger.<id>` written with
//! `Nats-Expected-Last-Subject-Sequence` (compare and set), so two replicas (or the purge and
//! the deletion sender) changing one entry never lose each other's change. Pages of the ledger
//! by id are reads of `P-deletions` from a sequence on; the states are read beside them.
//!
//! Tombstones are mirrored in memory: read at open (the records younger than the tombstone
//! life: the dedup window, at least 7 days), then kept fresh by an ordered consumer tailing
//! `P-deletions`, so a deletion accepted by another replica reaches this one within the
//! tail's delay, and one accepted here is in the mirror before its append returns. An event
//! that another replica checked just before the tombstone was written, and stored just after
//! the purge scanned its lane, can stay queued: the window is the tail's delay plus one
//! publish. The identity map is written after an event's `PubAck` (a duplicate does not change
//! it), through a memo that skips a mapping written within the last day; a crash between the
//! two is covered by the purge, which adds the Heap users of the events it removes to the
//! ledger entry.
//!
//! A re-sent event of a deleted user is a duplicate when its id is in the queue's or the dead
//! letters' window, and a drop is remembered in `P-drops` so its own re-send is a duplicate
//! too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::header;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::{Config, StorageType, Stream};
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use crate::queue::{
    AppendError, AppendReceipt, Appended, DeletionQuery, DeletionReceipt, DeletionRecord,
    DeletionStatus, DeletionSummary, HeapUser, NewEvent, OpOutcome, QueueError, QueueOp,
    ReplayItem, unix_millis,
};

use super::layout::{Layout, Shape, user_token};
use super::read::{CONCURRENCY, Msg, SavedLaneRecord, Scanner, get};
use super::record;
use super::{Inner, JetStreamError, in_process, unavailable};

/// A mapping is written again at most this often (UNIX ms): a day, against a retention
/// counted in hundreds of days.
const LAST_SEEN_STEP: i64 = 24 * 3600 * 1000;
/// Mappings the memo holds; past it, it starts over (it only saves writes).
const MEMO_CAPACITY: usize = 200_000;
/// A tombstone lives at least this long, whatever the dedup window (Braze retries for up to
/// 5 days and keeps events 7).
const TOMBSTONE_MIN_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);
/// JetStream's shortest duplicate window.
const MIN_WINDOW: Duration = Duration::from_millis(100);
/// Compare-and-set retries of one ledger or saved-lane change.
const CAS_TRIES: usize = 20;

impl Layout {
    pub(crate) fn ids_stream(&self) -> String {
        format!("{}-ids", self.prefix())
    }
    pub(crate) fn deletions_stream(&self) -> String {
        format!("{}-deletions", self.prefix())
    }
    pub(crate) fn ledger_stream(&self) -> String {
        format!("{}-ledger", self.prefix())
    }
    pub(crate) fn drops_stream(&self) -> String {
        format!("{}-drops", self.prefix())
    }
    fn identity(&self, user: &str, heap: &HeapUser) -> String {
        format!("{}.id.{user}.{}", self.prefix(), heap_token(heap))
    }
    fn identities(&self, user: &str) -> String {
        format!("{}.id.{user}.*", self.prefix())
    }
    fn deletion(&self, user: &str) -> String {
        format!("{}.del.{user}", self.prefix())
    }
    fn all_deletions(&self) -> String {
        format!("{}.del.>", self.prefix())
    }
    fn ledger_state(&self, id: u64) -> String {
        format!("{}.ledger.{id}", self.prefix())
    }
    fn all_ledger_states(&self) -> String {
        format!("{}.ledger.*", self.prefix())
    }
    fn drop_subject(&self) -> String {
        format!("{}.drop", self.prefix())
    }
    /// Every queued event of a user, in any lane.
    fn queued_of_user(&self, user: &str) -> String {
        format!("{}.q.*.{user}", self.prefix())
    }
    fn all_saved_lanes(&self) -> String {
        format!("{}.lane.*", self.prefix())
    }

    /// The streams of this module, created (or updated) at start after the others.
    pub(crate) fn privacy_streams(&self, shape: &Shape) -> Vec<Config> {
        let p = self.prefix();
        let base = |name: String, subjects: Vec<String>| Config {
            name,
            subjects,
            storage: StorageType::File,
            num_replicas: shape.replicas,
            duplicate_window: Duration::from_secs(60),
            ..Config::default()
        };
        let window = shape.dedup_window.max(MIN_WINDOW);
        vec![
            Config {
                max_messages_per_subject: 1,
                max_age: shape.stamp_retention,
                ..base(self.ids_stream(), vec![format!("{p}.id.>")])
            },
            Config {
                // The ledger is kept: no age limit. The window dedups deletions.
                duplicate_window: window,
                ..base(self.deletions_stream(), vec![format!("{p}.del.>")])
            },
            Config {
                max_messages_per_subject: 1,
                ..base(self.ledger_stream(), vec![format!("{p}.ledger.>")])
            },
            Config {
                max_age: window,
                duplicate_window: window,
                ..base(self.drops_stream(), vec![format!("{p}.drop")])
            },
        ]
    }
}

/// The subject token of a Heap user: FNV-1a (64 bits, hex) of its kind and value.
fn heap_token(heap: &HeapUser) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in heap
        .kind()
        .bytes()
        .chain([0xff])
        .chain(heap.value().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One identity-map record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mapping {
    #[serde(rename = "r")]
    route: String,
    #[serde(rename = "b")]
    braze_user_id: String,
    #[serde(rename = "k")]
    kind: String,
    #[serde(rename = "v")]
    value: String,
    #[serde(rename = "at")]
    seen_at: i64,
}

/// The first record of a ledger entry (and the tombstone).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "r")]
    route: String,
    #[serde(rename = "b")]
    braze_user_id: String,
    #[serde(rename = "e")]
    event_id: String,
    #[serde(rename = "u", default)]
    users: Vec<(String, String)>,
    #[serde(rename = "ra")]
    received_at: i64,
}

/// A ledger entry's state once it changed: the whole record but its id and first record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    #[serde(rename = "s")]
    status: String,
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(rename = "ua")]
    updated_at: i64,
    #[serde(rename = "at", default)]
    attempts: i64,
    #[serde(rename = "le", default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(rename = "p", default)]
    purged_events: i64,
    #[serde(rename = "u", default)]
    users: Vec<(String, String)>,
}

fn users_of(pairs: &[(String, String)]) -> Vec<HeapUser> {
    pairs
        .iter()
        .filter_map(|(k, v)| HeapUser::from_parts(k, v.clone()))
        .collect()
}

fn pairs_of(users: &[HeapUser]) -> Vec<(String, String)> {
    users
        .iter()
        .map(|u| (u.kind().to_owned(), u.value().to_owned()))
        .collect()
}

impl Entry {
    /// The record as first written.
    fn record(&self, id: u64) -> DeletionRecord {
        let users = users_of(&self.users);
        DeletionRecord {
            id: id as i64,
            route: self.route.clone(),
            braze_user_id: self.braze_user_id.clone(),
            event_id: self.event_id.clone(),
            status: if users.is_empty() {
                DeletionStatus::UnknownUser
            } else {
                DeletionStatus::PendingSubmit
            },
            users,
            received_at: self.received_at,
            request_id: None,
            updated_at: self.received_at,
            attempts: 0,
            last_error: None,
            purged_events: 0,
        }
    }

    /// The record with its latest state.
    fn with_state(&self, id: u64, state: Option<&State>) -> DeletionRecord {
        let mut r = self.record(id);
        if let Some(s) = state {
            // Written by this module only; an unknown value reads as still owed.
            r.status = DeletionStatus::parse(&s.status).unwrap_or(DeletionStatus::PendingSubmit);
            r.request_id = s.request_id.clone();
            r.updated_at = s.updated_at;
            r.attempts = s.attempts;
            r.last_error = s.last_error.clone();
            r.purged_events = s.purged_events;
            r.users = users_of(&s.users);
        }
        r
    }
}

impl State {
    fn of(r: &DeletionRecord) -> Self {
        State {
            status: r.status.as_str().to_owned(),
            request_id: r.request_id.clone(),
            updated_at: r.updated_at,
            attempts: r.attempts,
            last_error: r.last_error.clone(),
            purged_events: r.purged_events,
            users: pairs_of(&r.users),
        }
    }
}

/// The deleted users, by [`user_token`]: (route, Braze user id, deleted at).
#[derive(Debug, Default)]
struct Tombstones {
    by_user: HashMap<String, Vec<(String, String, i64)>>,
}

impl Tombstones {
    fn insert(&mut self, route: &str, braze_user_id: &str, at: i64) {
        let held = self
            .by_user
            .entry(user_token(route, Some(braze_user_id)))
            .or_default();
        match held
            .iter_mut()
            .find(|(r, b, _)| r == route && b == braze_user_id)
        {
            Some(h) => h.2 = h.2.max(at),
            None => held.push((route.to_owned(), braze_user_id.to_owned(), at)),
        }
    }

    fn contains(&self, route: &str, braze_user_id: &str, cutoff: i64) -> bool {
        self.by_user
            .get(&user_token(route, Some(braze_user_id)))
            .is_some_and(|held| {
                held.iter()
                    .any(|(r, b, at)| r == route && b == braze_user_id && *at >= cutoff)
            })
    }

    fn prune(&mut self, cutoff: i64) {
        self.by_user.retain(|_, held| {
            held.retain(|(_, _, at)| *at >= cutoff);
            !held.is_empty()
        });
    }
}

/// What this module keeps in a [`JetStreamQueue`](super::JetStreamQueue).
#[derive(Debug)]
pub(crate) struct Privacy {
    ids: Stream,
    deletions: Stream,
    ledger: Stream,
    /// Mappings written lately: (route, Braze user id, Heap user) → when.
    memo: Mutex<HashMap<(String, String, HeapUser), i64>>,
    tombstones: Arc<Mutex<Tombstones>>,
    tombstone_life: i64,
    /// The tail of the tombstones ends once this is dropped.
    _alive: Arc<()>,
}

impl Privacy {
    /// Takes the streams of [`Layout::privacy_streams`] (in that order), reads the tombstones
    /// and starts the tail that keeps them fresh (it ends with this).
    pub(crate) async fn open(
        client: &async_nats::Client,
        layout: &Layout,
        streams: Vec<Stream>,
        dedup_window: Duration,
    ) -> Result<Self, JetStreamError> {
        let [ids, deletions, ledger, _drops]: [Stream; 4] =
            streams.try_into().map_err(|_| JetStreamError::Stream {
                stream: layout.deletions_stream(),
                detail: "four privacy streams expected".into(),
            })?;
        let life = dedup_window.max(TOMBSTONE_MIN_LIFE);
        let tombstone_life = i64::try_from(life.as_millis()).unwrap_or(i64::MAX);
        let tombstones = Arc::new(Mutex::new(Tombstones::default()));
        let alive = Arc::new(());
        tail_tombstones(
            client,
            layout,
            &deletions,
            life,
            &tombstones,
            Arc::downgrade(&alive),
        )
        .await
        .map_err(|detail| JetStreamError::Stream {
            stream: layout.deletions_stream(),
            detail,
        })?;
        Ok(Self {
            ids,
            deletions,
            ledger,
            memo: Mutex::new(HashMap::new()),
            tombstones,
            tombstone_life,
            _alive: alive,
        })
    }

    fn cutoff(&self) -> i64 {
        unix_millis().saturating_sub(self.tombstone_life)
    }

    fn is_deleted(&self, route: &str, braze_user_id: &str) -> bool {
        self.tombstones.lock().expect("tombstones lock").contains(
            route,
            braze_user_id,
            self.cutoff(),
        )
    }
}

/// Reads the tombstones younger than `life`, then follows the stream in the background.
async fn tail_tombstones(
    client: &async_nats::Client,
    layout: &Layout,
    deletions: &Stream,
    life: Duration,
    tombstones: &Arc<Mutex<Tombstones>>,
    owner: Weak<()>,
) -> Result<(), String> {
    let since_ms =
        unix_millis().saturating_sub(i64::try_from(life.as_millis()).unwrap_or(i64::MAX));
    let since = async_nats::datetime::from_nanos(i128::from(since_ms.max(0)) * 1_000_000)
        .map_err(|e| e.to_string())?;
    let consumer = deletions
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: layout.all_deletions(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
            ..push::OrderedConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let take = |m: &async_nats::jetstream::Message| {
        if let Ok(entry) = serde_json::from_slice::<Entry>(&m.payload) {
            tombstones.lock().expect("tombstones lock").insert(
                &entry.route,
                &entry.braze_user_id,
                entry.received_at,
            );
        }
    };
    while pending > 0 {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| "the tombstones did not arrive in 10 s".to_owned())?
            .ok_or("the tombstones' consumer ended")?
            .map_err(|e| e.to_string())?;
        take(&m);
        pending = m.info().map(|i| i.pending).unwrap_or(0);
    }
    let tombstones = Arc::clone(tombstones);
    let life_ms = i64::try_from(life.as_millis()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut pruned = unix_millis();
        loop {
            match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                Ok(Some(Ok(m))) => {
                    if let Ok(entry) = serde_json::from_slice::<Entry>(&m.payload) {
                        tombstones.lock().expect("tombstones lock").insert(
                            &entry.route,
                            &entry.braze_user_id,
                            entry.received_at,
                        );
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(message = "The tail of the tombstones failed; it resumes.", error = %e);
                }
                Ok(None) => return,
                Err(_) => {}
            }
            if owner.upgrade().is_none() {
                return;
            }
            let now = unix_millis();
            if now - pruned > 60_000 {
                pruned = now;
                tombstones
                    .lock()
                    .expect("tombstones lock")
                    .prune(now.saturating_sub(life_ms));
            }
        }
    });
    Ok(())
}

/// What accepting one deletion did.
#[derive(Debug, Default)]
struct Accepted {
    duplicate: bool,
    receipt: DeletionReceipt,
}

fn store_error(e: QueueError) -> AppendError {
    match e {
        QueueError::Closed => AppendError::Closed,
        QueueError::Unavailable(s) => AppendError::Unavailable(s),
    }
}

impl Inner {
    /// Whether an append needs this module's ordered path: a deletion, or an event of a
    /// deleted user.
    pub(crate) fn append_needs_privacy(&self, events: &[NewEvent]) -> bool {
        events.iter().any(|e| self.privacy_kind(e) != Kind::Plain)
    }

    fn privacy_kind(&self, e: &NewEvent) -> Kind {
        let Some(user) = e.braze_user_id.as_deref() else {
            return Kind::Plain;
        };
        if e.dead_letter.is_some() {
            return Kind::Plain;
        }
        if e.deletion {
            Kind::Deletion
        } else if self.privacy.is_deleted(&e.route, user) {
            Kind::DeletedUser
        } else {
            Kind::Plain
        }
    }

    /// An append with deletions or events of deleted users: in order, the plain events in
    /// runs through the usual path, each deletion and drop on its own.
    pub(crate) async fn append_in_order(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<AppendReceipt, AppendError> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut run: Vec<NewEvent> = Vec::new();
        for e in events {
            let kind = self.privacy_kind(&e);
            if kind == Kind::Plain {
                run.push(e);
                continue;
            }
            if !run.is_empty() {
                let receipt = Box::pin(self.append(std::mem::take(&mut run))).await?;
                outcomes.extend(receipt.outcomes);
            }
            let user = e.braze_user_id.as_deref().unwrap_or_default();
            let outcome = match kind {
                Kind::Deletion => {
                    if self.is_duplicate_elsewhere(&e).await.map_err(store_error)? {
                        Appended::Duplicate
                    } else {
                        let a = self
                            .accept_deletion(&e.route, user, &e.event_id, None)
                            .await
                            .map_err(store_error)?;
                        if a.duplicate && a.receipt.purged_queued.is_empty() {
                            Appended::Duplicate
                        } else {
                            Appended::Deletion(a.receipt)
                        }
                    }
                }
                _ => self.drop_event(&e).await.map_err(store_error)?,
            };
            outcomes.push(outcome);
        }
        if !run.is_empty() {
            let receipt = Box::pin(self.append(run)).await?;
            outcomes.extend(receipt.outcomes);
        }
        let _ = self.refresh_totals().await;
        Ok(AppendReceipt { outcomes })
    }

    /// Whether an event id was accepted within the queue's or the dead letters' window: asked
    /// without storing anything (a publish expecting a last sequence no stream has, which
    /// JetStream checks after the duplicate window).
    async fn is_duplicate_elsewhere(&self, e: &NewEvent) -> Result<bool, QueueError> {
        let user = user_token(&e.route, e.braze_user_id.as_deref());
        let queued = self.layout.queued(&e.app_id, &user);
        let dead = self.layout.dead("unroutable");
        for subject in [queued, dead] {
            if self.probe(&subject, &e.event_id).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn probe(&self, subject: &str, msg_id: &str) -> Result<bool, QueueError> {
        for tries in 0..50u64 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(header::NATS_MESSAGE_ID, msg_id);
            headers.insert(header::NATS_EXPECTED_LAST_SEQUENCE, "18446744073709551615");
            let ack = match self
                .js
                .publish_with_headers(subject.to_owned(), headers, Bytes::new())
                .await
            {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) if ack.duplicate => return Ok(true),
                Ok(_) => {
                    return Err(QueueError::Unavailable(
                        "JetStream stored a message it was asked only to check".into(),
                    ));
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Ok(false),
                Err(e) if in_process(&e) => {
                    tokio::time::sleep(Duration::from_millis(2 * (tries + 1))).await;
                }
                Err(e) => return Err(unavailable(self, e)),
            }
        }
        Err(QueueError::Unavailable(
            "an event id stayed in process".into(),
        ))
    }

    /// Publishes with a message id, publishing again while JetStream says the id is in
    /// process (then it is a duplicate).
    async fn publish_once(
        &self,
        subject: String,
        msg_id: &str,
        body: Bytes,
    ) -> Result<jetstream::publish::PublishAck, QueueError> {
        let mut tries = 0u64;
        loop {
            match self.publish(subject.clone(), msg_id, body.clone()).await {
                Err(e) if in_process(&e) && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(2 * tries)).await;
                }
                other => return other.map_err(|e| unavailable(self, e)),
            }
        }
    }

    /// An event of a deleted user: acknowledged and dropped; its id is remembered for the
    /// dedup window, so its re-send is a duplicate.
    async fn drop_event(&self, e: &NewEvent) -> Result<Appended, QueueError> {
        if self.is_duplicate_elsewhere(e).await? {
            return Ok(Appended::Duplicate);
        }
        let ack = self
            .publish_once(self.layout.drop_subject(), &e.event_id, Bytes::new())
            .await?;
        Ok(if ack.duplicate {
            Appended::Duplicate
        } else {
            Appended::DeletedUser
        })
    }

    /// Remembers the Heap users of the events an append stored (not of its duplicates).
    pub(crate) async fn remember_appended(
        &self,
        events: &[NewEvent],
        outcomes: &[Appended],
    ) -> Result<(), AppendError> {
        let fresh = events
            .iter()
            .zip(outcomes)
            .filter(|(e, o)| **o == Appended::Queued && e.dead_letter.is_none())
            .filter_map(|(e, _)| {
                Some((
                    e.route.to_string(),
                    e.braze_user_id.clone()?,
                    e.heap_user.clone()?,
                ))
            })
            .collect();
        self.remember(fresh).await.map_err(store_error)
    }

    /// Writes the mappings the memo does not know as written within the last day.
    async fn remember(&self, mappings: Vec<(String, String, HeapUser)>) -> Result<(), QueueError> {
        let now = unix_millis();
        let mut todo: Vec<(String, String, HeapUser)> = {
            let memo = self.privacy.memo.lock().expect("memo lock");
            mappings
                .into_iter()
                .filter(|k| memo.get(k).is_none_or(|at| now - at >= LAST_SEEN_STEP))
                .collect()
        };
        todo.sort();
        todo.dedup();
        if todo.is_empty() {
            return Ok(());
        }
        stream::iter(todo.clone())
            .map(|(route, braze, heap)| async move {
                let subject = self
                    .layout
                    .identity(&user_token(&route, Some(&braze)), &heap);
                let body = serde_json::to_vec(&Mapping {
                    route,
                    braze_user_id: braze,
                    kind: heap.kind().to_owned(),
                    value: heap.value().to_owned(),
                    seen_at: now,
                })
                .expect("a mapping always serializes");
                self.js
                    .publish(subject, body.into())
                    .await
                    .map_err(|e| unavailable(self, e))?
                    .await
                    .map_err(|e| unavailable(self, e))?;
                Ok::<(), QueueError>(())
            })
            .buffered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let mut memo = self.privacy.memo.lock().expect("memo lock");
        if memo.len() + todo.len() > MEMO_CAPACITY {
            memo.clear();
        }
        memo.extend(todo.into_iter().map(|k| (k, now)));
        Ok(())
    }

    /// The identity-map records of a user: its Heap users (sorted) and their sequences.
    async fn mapped_users(
        &self,
        route: &str,
        braze_user_id: &str,
    ) -> Result<(Vec<HeapUser>, Vec<u64>), QueueError> {
        let user = user_token(route, Some(braze_user_id));
        let mut scanner =
            Scanner::open(self, &self.privacy.ids, self.layout.identities(&user), 1).await?;
        let mut users = Vec::new();
        let mut seqs = Vec::new();
        loop {
            let page = scanner.next_page(self, 500).await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                let Ok(mapping) = serde_json::from_slice::<Mapping>(&m.body) else {
                    continue;
                };
                if mapping.route != route || mapping.braze_user_id != braze_user_id {
                    continue;
                }
                if let Some(u) = HeapUser::from_parts(&mapping.kind, mapping.value) {
                    users.push(u);
                }
                seqs.push(m.seq);
            }
        }
        scanner.close();
        users.sort();
        users.dedup();
        Ok((users, seqs))
    }

    /// Accepts a deletion of a user on a route: the ledger entry and tombstone first (its
    /// message id is `event_id`), then the purge, the identity map, the saved lanes and the
    /// entry's count. A repeat (duplicate) runs everything after the first record again.
    /// `exclude_dead` is a dead letter the purge leaves alone (a replayed deletion itself).
    async fn accept_deletion(
        &self,
        route: &str,
        braze_user_id: &str,
        event_id: &str,
        exclude_dead: Option<u64>,
    ) -> Result<Accepted, QueueError> {
        let now = unix_millis();
        let (users, mapping_seqs) = self.mapped_users(route, braze_user_id).await?;
        let user = user_token(route, Some(braze_user_id));
        let entry = Entry {
            route: route.to_owned(),
            braze_user_id: braze_user_id.to_owned(),
            event_id: event_id.to_owned(),
            users: pairs_of(&users),
            received_at: now,
        };
        let body = serde_json::to_vec(&entry).expect("an entry always serializes");
        let ack = self
            .publish_once(self.layout.deletion(&user), event_id, body.into())
            .await?;
        let id = ack.sequence;
        // A repeat finishes the deletion it repeats: the user of the first record (a re-sent
        // id may come with another route or user; the first one stands).
        let first = if ack.duplicate {
            let Some(m) = get(self, &self.privacy.deletions, id).await? else {
                return Ok(Accepted {
                    duplicate: true,
                    ..Accepted::default()
                });
            };
            let Ok(first) = serde_json::from_slice::<Entry>(&m.body) else {
                return Ok(Accepted {
                    duplicate: true,
                    ..Accepted::default()
                });
            };
            Some(first)
        } else {
            None
        };
        let (route, braze_user_id, users, mapping_seqs, at) = match &first {
            Some(f) => {
                let (_, seqs) = self.mapped_users(&f.route, &f.braze_user_id).await?;
                (
                    f.route.as_str(),
                    f.braze_user_id.as_str(),
                    users_of(&f.users),
                    seqs,
                    f.received_at,
                )
            }
            None => (route, braze_user_id, users, mapping_seqs, now),
        };
        let user = user_token(route, Some(braze_user_id));
        self.privacy
            .tombstones
            .lock()
            .expect("tombstones lock")
            .insert(route, braze_user_id, at);
        {
            let mut memo = self.privacy.memo.lock().expect("memo lock");
            memo.retain(|(r, b, _), _| r != route || b != braze_user_id);
        }
        // Everything below is idempotent.
        let (purged_queued, purged_dead, seen) = self
            .purge_user(route, braze_user_id, &user, exclude_dead)
            .await?;
        stream::iter(mapping_seqs)
            .map(|seq| async move { self.delete(&self.privacy.ids, seq).await })
            .buffered(CONCURRENCY)
            .try_collect::<Vec<bool>>()
            .await?;
        let mut forget: Vec<HeapUser> = users.clone();
        forget.extend(seen.iter().cloned());
        self.forget_in_saved_lanes(&forget).await?;
        let purged = purged_queued.len() as i64 + purged_dead as i64;
        let mut added = false;
        if !ack.duplicate || purged > 0 || !seen.is_empty() {
            let seen = &seen;
            self.change_entry(id, |r| {
                r.purged_events += purged;
                for u in seen {
                    if !r.users.contains(u) {
                        r.users.push(u.clone());
                        added = true;
                    }
                }
                r.users.sort();
                if added && r.status == DeletionStatus::UnknownUser {
                    r.status = DeletionStatus::PendingSubmit;
                }
                true
            })
            .await?;
        }
        Ok(Accepted {
            duplicate: ack.duplicate,
            receipt: DeletionReceipt {
                known_user: !users.is_empty() || added,
                purged_queued,
                purged_dead_letters: purged_dead,
            },
        })
    }

    /// Removes a user's queued events (any lane) and dead letters on the route. Returns the
    /// removed `(app_id, seq)`s, how many dead letters, and the Heap users of the removed
    /// queued events.
    async fn purge_user(
        &self,
        route: &str,
        braze_user_id: &str,
        user: &str,
        exclude_dead: Option<u64>,
    ) -> Result<(Vec<(String, i64)>, u64, Vec<HeapUser>), QueueError> {
        let of_user = |meta: &record::Meta| {
            meta.route == route && meta.braze_user_id.as_deref() == Some(braze_user_id)
        };
        let mut found: Vec<(String, u64)> = Vec::new();
        let mut seen: Vec<HeapUser> = Vec::new();
        let mut scanner =
            Scanner::open(self, &self.queue, self.layout.queued_of_user(user), 1).await?;
        loop {
            let page = scanner.next_page(self, 500).await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                let (Some((meta, _)), Some(app)) =
                    (record::decode(&m.body), self.layout.app_of(&m.subject))
                else {
                    continue;
                };
                if of_user(&meta) {
                    if let Some(u) = meta.heap_user()
                        && !seen.contains(&u)
                    {
                        seen.push(u);
                    }
                    found.push((app, m.seq));
                }
            }
        }
        scanner.close();
        let removed: Vec<Option<(String, i64)>> = stream::iter(found)
            .map(|(app, seq)| async move {
                let gone = self.delete(&self.queue, seq).await?;
                self.state
                    .purge()
                    .filter(self.layout.event_state(&app, seq))
                    .await
                    .map_err(|e| unavailable(self, e))?;
                self.forget_states(&[seq]);
                Ok::<_, QueueError>(gone.then_some((app, seq as i64)))
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let purged_queued: Vec<(String, i64)> = removed.into_iter().flatten().collect();

        let mut dead: Vec<u64> = Vec::new();
        let mut scanner = Scanner::open(self, &self.dead, self.layout.all_dead(), 1).await?;
        loop {
            let page: Vec<Msg> = scanner.next_page(self, 500).await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                if Some(m.seq) == exclude_dead {
                    continue;
                }
                if record::decode(&m.body).is_some_and(|(meta, _)| of_user(&meta)) {
                    dead.push(m.seq);
                }
            }
        }
        scanner.close();
        let gone: Vec<bool> = stream::iter(dead)
            .map(|seq| async move { self.delete(&self.dead, seq).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let purged_dead = gone.iter().filter(|g| **g).count() as u64;
        seen.sort();
        Ok((purged_queued, purged_dead, seen))
    }

    /// Removes the identities of these Heap users from every saved lane (compare and set
    /// against the lane's own saves).
    async fn forget_in_saved_lanes(&self, users: &[HeapUser]) -> Result<(), QueueError> {
        if users.is_empty() {
            return Ok(());
        }
        let values: HashSet<&str> = users.iter().map(HeapUser::value).collect();
        let mut scanner =
            Scanner::open(self, &self.state, self.layout.all_saved_lanes(), 1).await?;
        let mut lanes: Vec<String> = Vec::new();
        loop {
            let page = scanner.next_page(self, 500).await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                let holds = serde_json::from_slice::<SavedLaneRecord>(&m.body)
                    .is_ok_and(|r| r.identities.iter().any(|i| values.contains(&*i.0)));
                if holds {
                    lanes.push(m.subject);
                }
            }
        }
        scanner.close();
        for subject in lanes {
            for _ in 0..CAS_TRIES {
                let Some(m) = last_with_seq(self, &self.state, &subject).await? else {
                    break;
                };
                let Ok(mut saved) = serde_json::from_slice::<SavedLaneRecord>(&m.payload) else {
                    break;
                };
                let before = saved.identities.len();
                saved.identities.retain(|i| !values.contains(&*i.0));
                if saved.identities.len() == before {
                    break;
                }
                let body = serde_json::to_vec(&saved).expect("a saved lane always serializes");
                if self
                    .publish_expecting(&subject, m.sequence, body.into())
                    .await?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Publishes a one-per-subject record if the subject's last message is still `last`
    /// (0: none); false when it moved meanwhile.
    async fn publish_expecting(
        &self,
        subject: &str,
        last: u64,
        body: Bytes,
    ) -> Result<bool, QueueError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            last.to_string().as_str(),
        );
        let ack = match self
            .js
            .publish_with_headers(subject.to_owned(), headers, body)
            .await
        {
            Ok(f) => f.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(unavailable(self, e)),
        }
    }

    /// Changes one ledger entry: `change` gets its current record and says whether to write
    /// it. Returns whether it wrote.
    async fn change_entry(
        &self,
        id: u64,
        mut change: impl FnMut(&mut DeletionRecord) -> bool,
    ) -> Result<bool, QueueError> {
        let Some(first) = get(self, &self.privacy.deletions, id).await? else {
            return Ok(false);
        };
        let Ok(entry) = serde_json::from_slice::<Entry>(&first.body) else {
            return Ok(false);
        };
        let subject = self.layout.ledger_state(id);
        for _ in 0..CAS_TRIES {
            let last = last_with_seq(self, &self.privacy.ledger, &subject).await?;
            let state = last
                .as_ref()
                .and_then(|m| serde_json::from_slice::<State>(&m.payload).ok());
            let mut record = entry.with_state(id, state.as_ref());
            if !change(&mut record) {
                return Ok(false);
            }
            let body = serde_json::to_vec(&State::of(&record)).expect("a state always serializes");
            let expected = last.map_or(0, |m| m.sequence);
            if self
                .publish_expecting(&subject, expected, body.into())
                .await?
            {
                return Ok(true);
            }
        }
        Err(QueueError::Unavailable(format!(
            "ledger entry {id} kept changing"
        )))
    }

    /// Every ledger state, by id.
    async fn ledger_states(&self) -> Result<HashMap<u64, State>, QueueError> {
        let mut scanner = Scanner::open(
            self,
            &self.privacy.ledger,
            self.layout.all_ledger_states(),
            1,
        )
        .await?;
        let mut states = HashMap::new();
        loop {
            let page = scanner.next_page(self, 500).await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                let id = m.subject.rsplit('.').next().and_then(|s| s.parse().ok());
                if let (Some(id), Ok(state)) = (id, serde_json::from_slice::<State>(&m.body)) {
                    states.insert(id, state);
                }
            }
        }
        scanner.close();
        Ok(states)
    }

    /// The ledger by id from `after` on, each record passing `keep`, at most `limit`.
    async fn ledger_page(
        &self,
        after: i64,
        limit: usize,
        keep: impl Fn(&DeletionRecord) -> bool,
    ) -> Result<Vec<DeletionRecord>, QueueError> {
        let states = self.ledger_states().await?;
        let start = u64::try_from(after).unwrap_or(0) + 1;
        let mut scanner = Scanner::open(
            self,
            &self.privacy.deletions,
            self.layout.all_deletions(),
            start,
        )
        .await?;
        let mut out = Vec::new();
        'pages: while out.len() < limit {
            let page = scanner.next_page(self, 500).await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                let Ok(entry) = serde_json::from_slice::<Entry>(&m.body) else {
                    continue;
                };
                let record = entry.with_state(m.seq, states.get(&m.seq));
                if keep(&record) {
                    out.push(record);
                    if out.len() >= limit {
                        break 'pages;
                    }
                }
            }
        }
        scanner.close();
        Ok(out)
    }

    pub(crate) async fn deletions(
        &self,
        q: DeletionQuery,
    ) -> Result<Vec<DeletionRecord>, QueueError> {
        self.check_open()?;
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        self.ledger_page(q.after, q.limit, |r| {
            (q.statuses.is_empty() || q.statuses.contains(&r.status))
                && q.routes
                    .as_ref()
                    .is_none_or(|routes| routes.contains(&r.route))
        })
        .await
    }

    pub(crate) async fn deletion_summary(
        &self,
        overdue_before: i64,
    ) -> Result<Vec<DeletionSummary>, QueueError> {
        self.check_open()?;
        let open = self
            .ledger_page(0, usize::MAX, |r| r.status.is_open())
            .await?;
        let mut groups: HashMap<(String, &'static str), DeletionSummary> = HashMap::new();
        for r in open {
            let s = groups
                .entry((r.route.clone(), r.status.as_str()))
                .or_insert_with(|| DeletionSummary {
                    route: r.route.clone(),
                    status: r.status,
                    count: 0,
                    overdue: 0,
                    oldest_received_at: r.received_at,
                });
            s.count += 1;
            s.overdue += u64::from(r.received_at < overdue_before);
            s.oldest_received_at = s.oldest_received_at.min(r.received_at);
        }
        let mut out: Vec<_> = groups.into_iter().collect();
        // As SQLite orders them: by route, then by the status's name.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    /// The ledger's [`QueueOp`]s; `None` for any other.
    pub(crate) async fn apply_ledger_op(
        &self,
        op: &QueueOp,
    ) -> Result<Option<OpOutcome>, QueueError> {
        let now = unix_millis();
        let mut rows = 0u64;
        match op {
            QueueOp::DeletionsSubmitted { ids, request_id } => {
                for id in ids.iter().filter_map(|i| u64::try_from(*i).ok()) {
                    let wrote = self
                        .change_entry(id, |r| {
                            if !matches!(
                                r.status,
                                DeletionStatus::PendingSubmit
                                    | DeletionStatus::Unconfigured
                                    | DeletionStatus::Failed
                            ) {
                                return false;
                            }
                            r.status = DeletionStatus::Submitted;
                            r.request_id = Some(request_id.clone());
                            r.updated_at = now;
                            true
                        })
                        .await?;
                    rows += u64::from(wrote);
                }
            }
            QueueOp::DeletionsCompleted { request_id } => {
                let hits = self
                    .ledger_page(0, usize::MAX, |r| {
                        r.status == DeletionStatus::Submitted
                            && r.request_id.as_deref() == Some(request_id)
                    })
                    .await?;
                for hit in hits {
                    let wrote = self
                        .change_entry(hit.id as u64, |r| {
                            if r.status != DeletionStatus::Submitted
                                || r.request_id.as_deref() != Some(request_id)
                            {
                                return false;
                            }
                            r.status = DeletionStatus::Complete;
                            r.updated_at = now;
                            r.last_error = None;
                            true
                        })
                        .await?;
                    rows += u64::from(wrote);
                }
            }
            QueueOp::DeletionsAttempt { ids, error, failed } => {
                for id in ids.iter().filter_map(|i| u64::try_from(*i).ok()) {
                    let wrote = self
                        .change_entry(id, |r| {
                            if matches!(
                                r.status,
                                DeletionStatus::Complete | DeletionStatus::UnknownUser
                            ) {
                                return false;
                            }
                            r.attempts += 1;
                            r.last_error = Some(error.clone());
                            r.updated_at = now;
                            if *failed {
                                r.status = DeletionStatus::Failed;
                            }
                            true
                        })
                        .await?;
                    rows += u64::from(wrote);
                }
            }
            QueueOp::DeletionsMove {
                from,
                to,
                ids,
                routes,
            } => {
                let hits = self
                    .ledger_page(0, usize::MAX, |r| {
                        r.status == *from
                            && ids.as_ref().is_none_or(|ids| ids.contains(&r.id))
                            && routes.as_ref().is_none_or(|rs| rs.contains(&r.route))
                    })
                    .await?;
                for hit in hits {
                    let wrote = self
                        .change_entry(hit.id as u64, |r| {
                            if r.status != *from {
                                return false;
                            }
                            r.status = *to;
                            r.updated_at = now;
                            if *to == DeletionStatus::PendingSubmit {
                                r.request_id = None;
                            }
                            true
                        })
                        .await?;
                    rows += u64::from(wrote);
                }
            }
            _ => return Ok(None),
        }
        Ok(Some(OpOutcome {
            rows,
            ..OpOutcome::default()
        }))
    }

    /// [`QueueOp::Replay`], in the order of its items: a deletion is accepted on the item's
    /// route (its dead letter removed after), an event of a user deleted on that route is
    /// dropped, the others move back to their lanes in runs (their Heap users remembered
    /// first).
    pub(crate) async fn replay(&self, items: Vec<ReplayItem>) -> Result<OpOutcome, QueueError> {
        let found = self
            .read_dead(items.iter().map(|i| i.seq).collect())
            .await?;
        let mut out = OpOutcome::default();
        let mut run: Vec<(Msg, ReplayItem)> = Vec::new();
        for (item, m) in items.into_iter().zip(found) {
            let meta = m
                .as_ref()
                .and_then(|m| record::decode(&m.body))
                .map(|x| x.0);
            let (Some(m), Some(meta)) = (m, meta) else {
                continue;
            };
            let Some(user) = meta.braze_user_id.clone() else {
                run.push((m, item));
                continue;
            };
            if item.deletion || self.privacy.is_deleted(&item.route, &user) {
                self.replay_run(&mut run, &mut out).await?;
                if item.deletion {
                    let a = self
                        .accept_deletion(&item.route, &user, &meta.event_id, Some(m.seq))
                        .await?;
                    out.queue_events_delta -= a.receipt.purged_queued.len() as i64;
                }
                if self.delete(&self.dead, m.seq).await? {
                    out.rows += 1;
                }
                continue;
            }
            if let Some(heap) = &item.heap_user {
                self.remember(vec![(item.route.clone(), user, heap.clone())])
                    .await?;
            }
            run.push((m, item));
        }
        self.replay_run(&mut run, &mut out).await?;
        Ok(out)
    }

    async fn replay_run(
        &self,
        run: &mut Vec<(Msg, ReplayItem)>,
        out: &mut OpOutcome,
    ) -> Result<(), QueueError> {
        if run.is_empty() {
            return Ok(());
        }
        let n = self.replay_all(std::mem::take(run)).await?;
        out.rows += n;
        out.queue_events_delta += n as i64;
        Ok(())
    }
}

/// Whether an event is plain, a deletion, or of a deleted user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Deletion,
    DeletedUser,
}

/// The last message on a subject with its sequence; `None` when there is none.
async fn last_with_seq(
    inner: &Inner,
    stream: &Stream,
    subject: &str,
) -> Result<Option<jetstream::message::StreamMessage>, QueueError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(unavailable(inner, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_per_route_and_age_out() {
        let mut t = Tombstones::default();
        t.insert("r", "a", 1_000);
        assert!(t.contains("r", "a", 500));
        assert!(!t.contains("r2", "a", 500));
        assert!(!t.contains("r", "a", 2_000), "older than the cutoff");
        t.prune(2_000);
        assert!(t.by_user.is_empty());
    }

    #[test]
    fn a_record_reads_its_latest_state() {
        let entry = Entry {
            route: "r".into(),
            braze_user_id: "b".into(),
            event_id: "e".into(),
            users: vec![],
            received_at: 5,
        };
        let first = entry.with_state(7, None);
        assert_eq!((first.id, first.status), (7, DeletionStatus::UnknownUser));
        let mut changed = first.clone();
        changed.status = DeletionStatus::Failed;
        changed.attempts = 2;
        changed.users = vec![HeapUser::Identity("x".into())];
        assert_eq!(entry.with_state(7, Some(&State::of(&changed))), changed);
        assert_ne!(
            heap_token(&HeapUser::Identity("1".into())),
            heap_token(&HeapUser::UserId("1".into()))
        );
    }
}
