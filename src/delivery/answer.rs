//! Sending a batch, and what Heap's answer does to its events: 2xx acknowledges them (track
//! first, then the user properties of the same events); a transient failure counts an attempt,
//! pauses the lane and puts them back at the front; 400 bisects and 413 splits the request
//! until the one event at fault is dead-lettered alone.
//!
//! Whether to retry is decided by [`crate::heap::retry::classify`] (pure); how long to wait,
//! by `Retry-After` or the lane's [`super::Backoff`].

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use super::lane::{Delivery, Item, SendReport};
use super::refill::Unsendable;
use crate::heap::bulk;
use crate::heap::client::HeapError;
use crate::heap::model::{TRACK_PATH, TrackItem, USER_PROPERTIES_PATH, UserPropertiesItem};
use crate::heap::retry::{Verdict, classify, status_class};
use crate::metrics::Retried;
use crate::queue::{DeadLetterItem, QueueOp, unix_millis};

/// What one Heap request did with its items.
enum Sent {
    Delivered(Vec<Item>),
    /// A transient failure: the items are back in `pending` and the lane pauses.
    Retried,
    /// Heap refused the request whole: halved into `forced`, or dead-lettered when alone.
    Halved,
}

impl Delivery {
    /// Sends one batch: track first, then the user properties of the same events.
    pub(super) async fn send(&mut self, items: Vec<Item>, report: &mut SendReport) {
        let now = unix_millis();
        let (expired, items): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| self.is_expired(i.received_at, now));
        if !expired.is_empty() {
            let dead = expired
                .iter()
                .map(|i| Unsendable::Dead(self.expired(i.seq)))
                .collect();
            report.dead_lettered += self.finish_unsendable(dead).await;
        }
        if items.is_empty() {
            return;
        }

        let (to_track, mut done): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|i| !i.track_done);
        // `select` already cut the batch to one request; a batch from elsewhere is split here.
        let requests = {
            let refs: Vec<&TrackItem> = to_track.iter().map(|i| &i.track).collect();
            let max_items = crate::heap::model::MAX_BULK_ITEMS;
            bulk::track_requests(
                &self.cfg.app_id,
                &refs,
                max_items,
                self.cfg.max_request_bytes,
            )
        };
        let mut to_track = to_track.into_iter();
        let mut parts = requests
            .into_iter()
            .map(|(range, body)| (to_track.by_ref().take(range.len()).collect(), body))
            .collect::<Vec<(Vec<Item>, Vec<u8>)>>()
            .into_iter();
        while let Some((part, body)) = parts.next() {
            match self
                .request(TRACK_PATH, body, part, "rejected", report)
                .await
            {
                Sent::Delivered(mut items) => {
                    self.metrics.delivered(items.len());
                    for i in &mut items {
                        i.track_done = true;
                    }
                    done.extend(items);
                }
                Sent::Retried => {
                    self.requeue(parts.by_ref().flat_map(|(p, _)| p).collect());
                    break;
                }
                Sent::Halved => {}
            }
        }

        let (mut with_props, finished): (Vec<Item>, Vec<Item>) =
            done.into_iter().partition(|i| i.user_properties.is_some());
        self.ack(finished, report).await;
        // A deletion may have purged some of them while the track request was on its way:
        // their user properties are not sent.
        let purged = self.drop_purged();
        with_props.retain(|i| !purged.contains(&i.seq));
        // Newest value wins: what is older than the value Heap has is not sent.
        let (with_props, stale_only) = self.withhold_stale(with_props).await;
        self.ack(stale_only, report).await;
        let mut parts = self.users_parts(with_props).into_iter();
        while let Some((part, body)) = parts.next() {
            match self
                .request(
                    USER_PROPERTIES_PATH,
                    body,
                    part,
                    "rejected_user_properties",
                    report,
                )
                .await
            {
                Sent::Delivered(items) => self.ack(items, report).await,
                Sent::Retried => {
                    self.requeue(parts.by_ref().flat_map(|(p, _)| p).collect());
                    break;
                }
                Sent::Halved => {}
            }
        }
    }

    /// The events whose user properties are still to send, with the add-user-properties
    /// bodies that carry them (see [`bulk::users_requests`]).
    fn users_parts(&self, items: Vec<Item>) -> Vec<(Vec<Item>, Vec<u8>)> {
        if items.is_empty() {
            return Vec::new();
        }
        let requests = {
            let updates: Vec<(&str, &UserPropertiesItem)> = items
                .iter()
                .filter_map(|i| Some((i.track.timestamp.as_str(), i.user_properties.as_ref()?)))
                .collect();
            bulk::users_requests(&self.cfg.app_id, &updates, self.cfg.max_request_bytes)
        };
        let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
        requests
            .into_iter()
            .map(|r| {
                let part = r.members.iter().filter_map(|&m| slots[m].take()).collect();
                (part, r.body)
            })
            .collect()
    }

    /// Puts events that were selected but not sent (a request before them failed and the
    /// lane pauses) back at the front of the line; their budget is taken again when they are
    /// selected again.
    fn requeue(&mut self, items: Vec<Item>) {
        for item in items.into_iter().rev() {
            self.pending.push_front(item);
        }
    }

    /// Sends one request and handles every non-success outcome (retry, bisect, split, dead
    /// letter).
    async fn request(
        &mut self,
        path: &'static str,
        body: Vec<u8>,
        items: Vec<Item>,
        reject_reason: &'static str,
        report: &mut SendReport,
    ) -> Sent {
        report.requests += 1;
        let started = Instant::now();
        let result = self.sender.post(path, Bytes::from(body)).await;
        self.metrics
            .heap_request_took(path, started.elapsed().as_secs_f64());
        let (verdict, detail) = match &result {
            Ok(resp) => {
                self.metrics.heap_answered(path, status_class(resp.status));
                let verdict = classify(resp.status, resp.retry_after.as_ref(), SystemTime::now());
                (
                    verdict,
                    format!("HTTP {}: {}", resp.status.as_u16(), resp.body),
                )
            }
            Err(e) => {
                self.metrics.heap_answered(path, "error");
                let verdict = Verdict::Retry {
                    reason: e.reason(),
                    retry_after: None,
                };
                (verdict, e.to_string())
            }
        };
        match verdict {
            Verdict::Delivered => {
                if self.failures > 0 {
                    tracing::info!(message = "Heap accepts requests again.", route = %self.cfg.lane, after_failures = self.failures);
                }
                self.failures = 0;
                Sent::Delivered(items)
            }
            Verdict::Retry {
                reason,
                retry_after,
            } => {
                report.retried += items.len();
                self.retry(items, reason, retry_after, detail, result.err())
                    .await;
                Sent::Retried
            }
            Verdict::Bisect | Verdict::Split => {
                let (dead_reason, kind) = if matches!(verdict, Verdict::Bisect) {
                    (reject_reason, "Heap rejected the request (400); bisecting.")
                } else {
                    (
                        "too_large",
                        "Heap refused the request as too large (413); splitting.",
                    )
                };
                if items.len() == 1 {
                    tracing::warn!(message = "Heap rejected an event; dead-lettering it.", route = %self.cfg.lane, endpoint = path, detail = %detail);
                    let dead = items
                        .iter()
                        .map(|i| {
                            Unsendable::Dead(DeadLetterItem {
                                seq: i.seq,
                                reason: dead_reason.into(),
                                detail: Some(detail.clone()),
                            })
                        })
                        .collect();
                    report.dead_lettered += self.finish_unsendable(dead).await;
                } else {
                    tracing::info!(message = kind, route = %self.cfg.lane, endpoint = path, items = items.len());
                    report.halved += 1;
                    let mut first = items;
                    let second = first.split_off(first.len() / 2);
                    self.forced.push_front(second);
                    self.forced.push_front(first);
                }
                Sent::Halved
            }
        }
    }

    /// A transient failure: count the attempt in the queue, pause the lane (Retry-After, or
    /// backoff with full jitter), and put the events back at the front of the line.
    async fn retry(
        &mut self,
        items: Vec<Item>,
        reason: &'static str,
        retry_after: Option<Duration>,
        detail: String,
        transport: Option<HeapError>,
    ) {
        let pause = retry_after.unwrap_or_else(|| self.cfg.backoff.delay(self.failures));
        self.failures = self.failures.saturating_add(1);
        self.paused_until = Some(Instant::now() + pause);
        // A closed queue (shutdown) keeps nothing: the pause is not saved, nor the attempt.
        let _ = self.save_state().await;
        self.metrics.retried(Retried {
            reason,
            pause,
            retry_after: retry_after.is_some(),
            consecutive_failures: self.failures,
            detail: &detail,
            transport: transport.is_some(),
        });
        let seqs = items.iter().map(|i| i.seq).collect();
        self.apply(QueueOp::Attempt {
            seqs,
            error: truncate(&detail, 1000),
        })
        .await;
        self.requeue(items);
    }

    /// Heap accepted every part of these events: they leave the queue, and the user
    /// properties they set are stamped with their event time.
    async fn ack(&mut self, items: Vec<Item>, report: &mut SendReport) {
        if items.is_empty() {
            return;
        }
        report.delivered += items.len();
        let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
        // A dry run leaves them queued: the lane's cursor has passed them, so they are shown
        // once per run, and a real run delivers them.
        if self.sender.consumes() {
            let stamps = self.stamps(&items);
            self.apply(QueueOp::Ack {
                seqs: seqs.clone(),
                stamps,
            })
            .await;
        }
        for seq in seqs {
            self.release(seq);
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}
