//! Reading the streams: a lane's ready events, dead letters, and the records beside them.
//!
//! A range of a subject is read through a [`Scanner`]: an ephemeral pull consumer (in memory,
//! one replica, removed after use or after a minute idle) that starts at a sequence and hands
//! out pages. One consumer per read, not one per lane kept open, because a read is rare next
//! to the requests to Heap it feeds, and nothing is left behind when a replica dies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::queue::{
    DeadLetter, DeadLetterQuery, PropertyStamp, QueueError, QueuedEvent, Ready, ReadyRequest,
    SavedIdentity, SavedLane,
};

use super::layout::Layout;
use super::record::{self, EventState};
use super::{Inner, unavailable};

/// Requests to JetStream in flight at once for one read or change.
pub(crate) const CONCURRENCY: usize = 64;
/// Messages fetched per page.
const PAGE: usize = 500;

/// One message as read.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub seq: u64,
    pub subject: String,
    pub body: Bytes,
}

/// A subject's messages from a sequence on, page by page.
pub(crate) struct Scanner {
    consumer: PullConsumer,
    stream: Stream,
    done: bool,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner").field("done", &self.done).finish()
    }
}

impl Scanner {
    pub(crate) async fn open(
        inner: &Inner,
        stream: &Stream,
        filter: String,
        start: u64,
    ) -> Result<Self, QueueError> {
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: -1,
            ack_wait: Duration::from_secs(60),
            filter_subject: filter,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            num_replicas: 1,
            ..pull::Config::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable(inner, e))?;
        let pending = consumer.cached_info().num_pending;
        Ok(Self {
            consumer,
            stream: stream.clone(),
            done: pending == 0,
        })
    }

    /// The next page (at most `max` messages); empty at the end.
    pub(crate) async fn next_page(
        &mut self,
        inner: &Inner,
        max: usize,
    ) -> Result<Vec<Msg>, QueueError> {
        if self.done {
            return Ok(Vec::new());
        }
        // A consumer just created may not answer its first pull yet (503, no responders):
        // that pull delivered nothing, and is made again.
        let mut tries = 0;
        let messages = loop {
            let batch = self
                .consumer
                .fetch()
                .max_messages(max.clamp(1, PAGE))
                .messages()
                .await
                .map_err(|e| unavailable(inner, e))?;
            let mut messages = Vec::new();
            let mut batch = std::pin::pin!(batch);
            let failed = loop {
                match batch.next().await {
                    Some(Ok(m)) => messages.push(m),
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            };
            match failed {
                None => break messages,
                Some(e) if messages.is_empty() && tries < 10 && e.to_string().contains("503") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10 * tries)).await;
                }
                Some(e) => return Err(unavailable(inner, e)),
            }
        };
        let mut page = Vec::with_capacity(messages.len());
        for m in messages {
            let info = m.info().map_err(|e| unavailable(inner, e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if pending == 0 {
                self.done = true;
            }
            page.push(Msg {
                seq,
                subject: m.message.subject.to_string(),
                body: m.message.payload.clone(),
            });
        }
        if page.is_empty() {
            self.done = true;
        }
        Ok(page)
    }

    /// Removes the consumer (in the background: the read is done either way, and JetStream
    /// removes an idle one by itself).
    pub(crate) fn close(self) {
        let name = self.consumer.cached_info().name.clone();
        let stream = self.stream;
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
    }
}

/// A lane's read position: the consumer it reads with, and the highest seq that consumer has
/// delivered.
#[derive(Debug)]
pub(crate) struct LaneCursor {
    scanner: Scanner,
    last: u64,
}

/// Adds events to a bounded read: the first always, then while the count and bytes hold.
struct Bounds {
    max_events: usize,
    max_bytes: usize,
    events: usize,
    bytes: usize,
}

impl Bounds {
    fn admits(&mut self, len: usize) -> bool {
        if self.events >= self.max_events {
            return false;
        }
        if self.events > 0 && self.bytes.saturating_add(len) > self.max_bytes {
            return false;
        }
        self.events += 1;
        self.bytes = self.bytes.saturating_add(len);
        true
    }

    fn full(&self) -> bool {
        self.events >= self.max_events
    }
}

impl Inner {
    /// Reads the delivery records of a lane into memory (a lane starting, or taking over).
    pub(crate) async fn load_lane_states(&self, app_id: &str) -> Result<(), QueueError> {
        let mut scanner =
            Scanner::open(self, &self.state, self.layout.lane_states(app_id), 1).await?;
        let mut states = HashMap::new();
        loop {
            let page = scanner.next_page(self, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                let (Some(seq), Ok(state)) = (
                    Layout::seq_of_state(&m.subject),
                    serde_json::from_slice::<EventState>(&m.body),
                ) else {
                    continue;
                };
                states.insert(seq, state);
            }
        }
        scanner.close();
        let mut lanes = self.lanes.lock().expect("lane states lock");
        if let Some(old) = lanes.by_app.remove(app_id) {
            for seq in old.keys() {
                lanes.app_of.remove(seq);
            }
        }
        for seq in states.keys() {
            lanes.app_of.insert(*seq, app_id.to_owned());
        }
        lanes.by_app.insert(app_id.to_owned(), states);
        Ok(())
    }

    fn lane_loaded(&self, app_id: &str) -> bool {
        self.lanes
            .lock()
            .expect("lane states lock")
            .by_app
            .contains_key(app_id)
    }

    fn state_of(&self, app_id: &str, seq: u64) -> EventState {
        self.lanes
            .lock()
            .expect("lane states lock")
            .by_app
            .get(app_id)
            .and_then(|m| m.get(&seq))
            .cloned()
            .unwrap_or_default()
    }

    /// A queued event by seq; `None` when it is gone.
    pub(crate) async fn get_queued(&self, seq: u64) -> Result<Option<Msg>, QueueError> {
        get(self, &self.queue, seq).await
    }

    fn queued_event(&self, m: &Msg, state: &EventState) -> Option<QueuedEvent> {
        let (mut meta, payload) = record::decode(&m.body)?;
        meta.attempts = state.attempts;
        Some(QueuedEvent {
            seq: m.seq as i64,
            not_before: state.not_before,
            event: record::stored_event(meta, &payload),
        })
    }

    pub(crate) async fn ready(&self, req: ReadyRequest) -> Result<Ready, QueueError> {
        self.check_open()?;
        if req.after <= 0 || !self.lane_loaded(&req.app_id) {
            self.load_lane_states(&req.app_id).await?;
        }
        let mut bounds = Bounds {
            max_events: req.max_events,
            max_bytes: req.max_bytes,
            events: 0,
            bytes: 0,
        };
        let mut due_seqs: Vec<(i64, u64)> = {
            let lanes = self.lanes.lock().expect("lane states lock");
            lanes
                .by_app
                .get(&req.app_id)
                .map(|m| {
                    m.iter()
                        .filter(|(seq, s)| {
                            s.not_before > 0
                                && s.not_before <= req.now
                                && !req.held.contains(&(**seq as i64))
                        })
                        .map(|(seq, s)| (s.not_before, *seq))
                        .collect()
                })
                .unwrap_or_default()
        };
        due_seqs.sort_unstable();
        let mut ready = Ready::default();
        for chunk in due_seqs.chunks(CONCURRENCY) {
            if bounds.full() {
                break;
            }
            let seqs: Vec<u64> = chunk.iter().map(|(_, seq)| *seq).collect();
            let read: Vec<Option<Msg>> = stream::iter(seqs)
                .map(|seq| self.get_queued(seq))
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
            for ((_, seq), m) in chunk.iter().zip(read) {
                let Some(m) = m else {
                    self.forget_states(&[*seq]);
                    continue;
                };
                let state = self.state_of(&req.app_id, m.seq);
                let Some(e) = self.queued_event(&m, &state) else {
                    continue;
                };
                if !bounds.admits(e.event.payload.len()) {
                    break;
                }
                ready.due.push(e);
            }
        }
        if bounds.full() {
            return Ok(ready);
        }
        let after = u64::try_from(req.after).unwrap_or(0);
        let slot = self.cursor_slot(&req.app_id);
        let mut cursor = slot.lock().await;
        // A lane reads on from where its last read ended: the same consumer goes on. Anything
        // else (a lane starting, a cursor moved back) starts a new one.
        if cursor.as_ref().is_some_and(|c| c.last > after)
            && let Some(old) = cursor.take()
        {
            old.scanner.close();
        }
        if cursor.is_none() {
            let scanner =
                Scanner::open(self, &self.queue, self.layout.lane(&req.app_id), after + 1).await?;
            *cursor = Some(LaneCursor {
                scanner,
                last: after,
            });
        }
        let c = cursor.as_mut().expect("set above");
        // Events appended since the last read are there for the taking.
        c.scanner.done = false;
        let mut left_unread = false;
        'pages: loop {
            let want = (bounds.max_events - bounds.events).saturating_add(req.held.len());
            let page = match c.scanner.next_page(self, want).await {
                Ok(page) => page,
                Err(e) => {
                    // The consumer may be gone (idle too long) or not ready yet: next time,
                    // a new one.
                    if let Some(old) = cursor.take() {
                        old.scanner.close();
                    }
                    return Err(e);
                }
            };
            if page.is_empty() {
                break;
            }
            let mut page = page.into_iter();
            for m in page.by_ref() {
                c.last = c.last.max(m.seq);
                if m.seq <= after || req.held.contains(&(m.seq as i64)) {
                    continue;
                }
                let state = self.state_of(&req.app_id, m.seq);
                let Some(e) = self.queued_event(&m, &state) else {
                    tracing::warn!(
                        message = "A message in the queue stream is not an event this version wrote; skipped.",
                        seq = m.seq,
                        subject = %m.subject,
                    );
                    continue;
                };
                if !bounds.admits(e.event.payload.len()) {
                    left_unread = true;
                    break 'pages;
                }
                ready.fresh.push(e);
            }
            if bounds.full() {
                left_unread = page.len() > 0;
                break;
            }
        }
        // Fetched but not handed out: the consumer has passed them, so the next read starts
        // a new one from the lane's cursor (nothing is kept between reads: an event purged
        // meanwhile must not come back from a buffer).
        if left_unread && let Some(old) = cursor.take() {
            old.scanner.close();
        }
        Ok(ready)
    }

    /// The consumer a lane reads on with, one per app id.
    fn cursor_slot(&self, app_id: &str) -> Arc<tokio::sync::Mutex<Option<LaneCursor>>> {
        let mut cursors = self.cursors.lock().expect("cursors lock");
        Arc::clone(cursors.entry(app_id.to_owned()).or_default())
    }

    /// Drops the in-memory records of these seqs.
    pub(crate) fn forget_states(&self, seqs: &[u64]) {
        let mut lanes = self.lanes.lock().expect("lane states lock");
        for seq in seqs {
            if let Some(app) = lanes.app_of.remove(seq)
                && let Some(m) = lanes.by_app.get_mut(&app)
            {
                m.remove(seq);
            }
        }
    }

    pub(crate) async fn dead_letters(
        &self,
        q: DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.check_open()?;
        let filter = match &q.reason {
            Some(r) => self.layout.dead(r),
            None => self.layout.all_dead(),
        };
        let start = u64::try_from(q.after).unwrap_or(0) + 1;
        let mut scanner = Scanner::open(self, &self.dead, filter, start).await?;
        let mut bounds = Bounds {
            max_events: q.limit,
            max_bytes: q.max_bytes,
            events: 0,
            bytes: 0,
        };
        let mut out = Vec::new();
        'pages: while !bounds.full() {
            let page = scanner
                .next_page(self, bounds.max_events - bounds.events)
                .await?;
            if page.is_empty() {
                break;
            }
            for m in page {
                let Some(d) = dead_letter(&self.layout, &m) else {
                    continue;
                };
                if !bounds.admits(d.event.payload.len()) {
                    break 'pages;
                }
                out.push(d);
            }
        }
        scanner.close();
        Ok(out)
    }

    pub(crate) async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, QueueError> {
        self.check_open()?;
        let info = self
            .dead
            .info_with_subjects(self.layout.all_dead())
            .await
            .map_err(|e| unavailable(self, e))?;
        let subjects: HashMap<String, usize> =
            info.try_collect().await.map_err(|e| unavailable(self, e))?;
        let mut counts: Vec<(String, u64)> = subjects
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(s, n)| Some((self.layout.reason_of(&s)?, n as u64)))
            .collect();
        counts.sort();
        Ok(counts)
    }

    pub(crate) async fn queued_app_ids(&self) -> Result<Vec<String>, QueueError> {
        self.check_open()?;
        let mut scanner =
            Scanner::open(self, &self.state, self.layout.all_app_markers(), 1).await?;
        let mut apps = Vec::new();
        loop {
            let page = scanner.next_page(self, PAGE).await?;
            if page.is_empty() {
                break;
            }
            apps.extend(
                page.iter()
                    .filter_map(|m| self.layout.app_of_marker(&m.subject)),
            );
        }
        scanner.close();
        let mut queued = Vec::new();
        for app in apps {
            // A consumer's pending count is the number of messages on its filter.
            let s = Scanner::open(self, &self.queue, self.layout.lane(&app), 1).await?;
            let has_events = !s.done;
            s.close();
            if has_events {
                queued.push(app);
            }
        }
        queued.sort();
        Ok(queued)
    }

    pub(crate) async fn oldest_received_at(&self) -> Result<Option<i64>, QueueError> {
        self.check_open()?;
        // The first message may be acknowledged between the two requests: read again.
        for _ in 0..5 {
            let info = self
                .queue
                .get_info()
                .await
                .map_err(|e| unavailable(self, e))?;
            if info.state.messages == 0 {
                return Ok(None);
            }
            if let Some(m) = self.get_queued(info.state.first_sequence).await? {
                return Ok(record::decode(&m.body).map(|(meta, _)| meta.received_at));
            }
        }
        Err(QueueError::Unavailable(
            "the queue's first message kept moving".into(),
        ))
    }

    pub(crate) async fn saved_lane(&self, app_id: &str) -> Result<Option<SavedLane>, QueueError> {
        self.check_open()?;
        let Some(body) = last(self, &self.state, self.layout.saved_lane(app_id)).await? else {
            return Ok(None);
        };
        let saved: SavedLaneRecord =
            serde_json::from_slice(&body).map_err(|e| QueueError::Unavailable(e.to_string()))?;
        Ok(Some(saved.into_saved(app_id)))
    }

    pub(crate) async fn property_stamps(
        &self,
        keys: Vec<i64>,
    ) -> Result<Vec<PropertyStamp>, QueueError> {
        self.check_open()?;
        let found: Vec<Option<PropertyStamp>> = stream::iter(keys)
            .map(|key| async move {
                let body = last(self, &self.stamps, self.layout.stamp(key)).await?;
                Ok::<_, QueueError>(body.and_then(|b| {
                    let event_time = std::str::from_utf8(&b).ok()?.parse().ok()?;
                    Some(PropertyStamp { key, event_time })
                }))
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// A message by sequence; `None` when there is none (acknowledged, moved, never written).
pub(crate) async fn get(
    inner: &Inner,
    stream: &Stream,
    seq: u64,
) -> Result<Option<Msg>, QueueError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(Some(Msg {
            seq,
            subject: m.subject.to_string(),
            body: m.payload,
        })),
        Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(unavailable(inner, e)),
    }
}

/// The body of the last message on a subject (a one-per-subject record); `None` when there is
/// none.
pub(crate) async fn last(
    inner: &Inner,
    stream: &Stream,
    subject: String,
) -> Result<Option<Bytes>, QueueError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => Ok(Some(m.payload)),
        Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(unavailable(inner, e)),
    }
}

/// A dead letter as the dead-letter stream holds it.
pub(crate) fn dead_letter(layout: &Layout, m: &Msg) -> Option<DeadLetter> {
    let (meta, payload) = record::decode(&m.body)?;
    let reason = meta
        .reason
        .clone()
        .or_else(|| layout.reason_of(&m.subject))?;
    let detail = meta.detail.clone();
    let dead_at = meta.dead_at;
    Some(DeadLetter {
        seq: m.seq as i64,
        reason,
        detail,
        dead_at,
        event: record::stored_event(meta, &payload),
    })
}

/// A [`SavedLane`] as stored (the app id is its subject).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedLaneRecord {
    #[serde(rename = "b", default)]
    pub app_budget_refilled_at: i64,
    #[serde(rename = "p", default)]
    pub paused_until: i64,
    #[serde(rename = "i", default)]
    pub identities: Vec<(String, i64, i64, i64)>,
}

impl SavedLaneRecord {
    pub(crate) fn of(lane: &SavedLane) -> Self {
        Self {
            app_budget_refilled_at: lane.app_budget_refilled_at,
            paused_until: lane.paused_until,
            identities: lane
                .identities
                .iter()
                .map(|i| {
                    (
                        i.identity.clone(),
                        i.budget_refilled_at,
                        i.deferred_until,
                        i.next_slot,
                    )
                })
                .collect(),
        }
    }

    fn into_saved(self, app_id: &str) -> SavedLane {
        SavedLane {
            app_id: app_id.to_owned(),
            app_budget_refilled_at: self.app_budget_refilled_at,
            paused_until: self.paused_until,
            identities: self
                .identities
                .into_iter()
                .map(
                    |(identity, budget_refilled_at, deferred_until, next_slot)| SavedIdentity {
                        identity,
                        budget_refilled_at,
                        deferred_until,
                        next_slot,
                    },
                )
                .collect(),
        }
    }
}
