//! Names and shapes of what the forwarder keeps in JetStream, all under one prefix
//! (`--nats-stream`, default `currents-heap`), so two deployments share a NATS account
//! without meeting.
//!
//! | stream | subjects | holds |
//! |---|---|---|
//! | `P-queue` | `P.q.<app>.<user>` | queued events, one message each; the message's stream sequence is its `seq` |
//! | `P-dead` | `P.d.<reason>` | dead letters; `seq` is their own stream sequence |
//! | `P-state` | `P.s.<app>.<seq>`, `P.lane.<app>`, `P.app.<app>` | a queued event's park time and attempts; a lane's saved state; the app ids ever queued (one message per subject) |
//! | `P-stamps` | `P.stamp.<key>` | the event time of the newest user property value Heap accepted (one per key, kept for the identity-map retention) |
//! | `P-ids`, `P-deletions`, `P-ledger`, `P-drops` | `P.id.…`, `P.del.…`, `P.ledger.…`, `P.drop` | deletions: see `privacy.rs` |
//!
//! `<user>` is the hex [`user_token`] of (route, Braze user id), so a deletion finds a user's
//! queued events by subject without reading the lane; `<app>` and `<reason>` are [`token`]s.
//!
//! Why streams and not JetStream's key-value buckets for the one-per-subject records: a
//! bucket *is* such a stream, and NATS 2.9's answer to a bucket's creation is not understood
//! by the client (product.md §8), so the forwarder creates the streams itself and works on
//! every server version from 2.9 on.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};

/// Every name the forwarder uses, from the prefix.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn queue_stream(&self) -> String {
        format!("{}-queue", self.prefix)
    }
    pub(crate) fn dead_stream(&self) -> String {
        format!("{}-dead", self.prefix)
    }
    pub(crate) fn state_stream(&self) -> String {
        format!("{}-state", self.prefix)
    }
    pub(crate) fn stamp_stream(&self) -> String {
        format!("{}-stamps", self.prefix)
    }

    /// Where an event of `app_id` for this user (see [`user_token`]) is queued.
    pub(crate) fn queued(&self, app_id: &str, user: &str) -> String {
        format!("{}.q.{}.{user}", self.prefix, token(app_id))
    }
    /// Every queued event of a lane.
    pub(crate) fn lane(&self, app_id: &str) -> String {
        format!("{}.q.{}.*", self.prefix, token(app_id))
    }
    /// The app id of a queued event's subject.
    pub(crate) fn app_of(&self, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".q.")?;
        untoken(rest.split('.').next()?)
    }

    pub(crate) fn dead(&self, reason: &str) -> String {
        format!("{}.d.{}", self.prefix, token(reason))
    }
    pub(crate) fn all_dead(&self) -> String {
        format!("{}.d.>", self.prefix)
    }
    /// The reason of a dead letter's subject.
    pub(crate) fn reason_of(&self, subject: &str) -> Option<String> {
        untoken(subject.strip_prefix(&self.prefix)?.strip_prefix(".d.")?)
    }

    /// The delivery state of queued event `seq` of a lane.
    pub(crate) fn event_state(&self, app_id: &str, seq: u64) -> String {
        format!("{}.s.{}.{seq}", self.prefix, token(app_id))
    }
    pub(crate) fn lane_states(&self, app_id: &str) -> String {
        format!("{}.s.{}.*", self.prefix, token(app_id))
    }
    pub(crate) fn seq_of_state(subject: &str) -> Option<u64> {
        subject.rsplit('.').next()?.parse().ok()
    }

    pub(crate) fn saved_lane(&self, app_id: &str) -> String {
        format!("{}.lane.{}", self.prefix, token(app_id))
    }
    pub(crate) fn app_marker(&self, app_id: &str) -> String {
        format!("{}.app.{}", self.prefix, token(app_id))
    }
    pub(crate) fn all_app_markers(&self) -> String {
        format!("{}.app.*", self.prefix)
    }
    pub(crate) fn app_of_marker(&self, subject: &str) -> Option<String> {
        untoken(subject.strip_prefix(&self.prefix)?.strip_prefix(".app.")?)
    }

    pub(crate) fn stamp(&self, key: i64) -> String {
        format!("{}.stamp.{:016x}", self.prefix, key as u64)
    }

    /// The streams, as created (or updated) at start.
    pub(crate) fn streams(&self, shape: &Shape) -> Vec<Config> {
        let base = |name: String, subjects: Vec<String>| Config {
            name,
            subjects,
            storage: StorageType::File,
            num_replicas: shape.replicas,
            ..Config::default()
        };
        let p = &self.prefix;
        vec![
            Config {
                // The quota: JetStream refuses a new event past it (ingest answers 503) but
                // still acknowledges a re-send as a duplicate.
                max_bytes: i64::try_from(shape.max_queue_bytes).unwrap_or(i64::MAX),
                discard: DiscardPolicy::New,
                duplicate_window: shape.dedup_window.max(MIN_DUPLICATE_WINDOW),
                ..base(self.queue_stream(), vec![format!("{p}.q.>")])
            },
            Config {
                duplicate_window: shape.dedup_window.max(MIN_DUPLICATE_WINDOW),
                ..base(self.dead_stream(), vec![format!("{p}.d.>")])
            },
            Config {
                max_messages_per_subject: 1,
                duplicate_window: Duration::from_secs(60),
                ..base(
                    self.state_stream(),
                    vec![
                        format!("{p}.s.>"),
                        format!("{p}.lane.>"),
                        format!("{p}.app.>"),
                    ],
                )
            },
            Config {
                max_messages_per_subject: 1,
                max_age: shape.stamp_retention,
                duplicate_window: Duration::from_secs(60),
                ..base(self.stamp_stream(), vec![format!("{p}.stamp.>")])
            },
        ]
        .into_iter()
        // The identity map, the deletions and their ledger, the drops: see `privacy.rs`.
        .chain(self.privacy_streams(shape))
        .collect()
    }
}

/// JetStream's shortest duplicate window: a shorter dedup window is raised to it.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);

/// What the streams are created with.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub replicas: usize,
    pub max_queue_bytes: u64,
    pub dedup_window: Duration,
    pub stamp_retention: Duration,
}

/// A subject token for free text: itself when it is made of `[A-Za-z0-9_-]` only (app ids,
/// reasons), else `~` and its UTF-8 bytes in hex. Never empty (`~` alone is the empty text).
pub(crate) fn token(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(1 + 2 * text.len());
    out.push('~');
    for b in text.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The text of a [`token`].
pub(crate) fn untoken(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix('~') else {
        return Some(token.to_owned());
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The subject token of a Braze user on a route: the SQLite store's user key of the two
/// (FNV-1a, 64 bits) in hex, or `_` for
/// an event without a Braze user. A collision only makes a deletion read an event of another
/// user, which its own ids then refuse.
pub(crate) fn user_token(route: &str, braze_user_id: Option<&str>) -> String {
    let Some(user) = braze_user_id else {
        return "_".to_owned();
    };
    format!(
        "{:016x}",
        crate::queue::sqlite::user_key(route, user) as u64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_hold_a_subject_separator() {
        for text in ["1234", "rejected", "", "a.b", "a b*>", "ü", "~x"] {
            let t = token(text);
            assert!(!t.is_empty() && !t.contains(['.', '*', '>', ' ']), "{t}");
            assert_eq!(untoken(&t).as_deref(), Some(text));
        }
    }

    #[test]
    fn subjects_name_their_lane_and_reason() {
        let l = Layout::new("ch");
        assert_eq!(l.app_of(&l.queued("42", "_")).as_deref(), Some("42"));
        assert_eq!(
            l.reason_of(&l.dead("user_deletion")).as_deref(),
            Some("user_deletion")
        );
        assert_eq!(l.app_of_marker(&l.app_marker("7")).as_deref(), Some("7"));
        assert_eq!(Layout::seq_of_state(&l.event_state("7", 99)), Some(99));
        assert_ne!(user_token("r", Some("u")), user_token("r2", Some("u")));
    }
}
