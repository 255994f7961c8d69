//! The queue in NATS JetStream (product.md §8): selected by `--nats-url`, for deployments that
//! must outlive a node or a volume, or run several replicas behind one endpoint.
//!
//! Why JetStream and why this shape: the queue must live in an engine that replicates it
//! (Raft, acknowledged on a quorum), not in anything the forwarder replicates by hand. Each
//! promise of the [`Queue`] seam maps onto something JetStream already does:
//!
//! - **durable append, dedup**: an event is a message, published with its Braze id as
//!   `Nats-Msg-Id`; the `PubAck` comes once a quorum of the stream's replicas stored it, and a
//!   re-send within the stream's duplicate window (the dedup window) is answered
//!   `duplicate: true`, whichever forwarder replica receives it.
//! - **the quota**: the queue stream's `max_bytes` with `discard: new`, enforced by the
//!   servers for every replica at once. JetStream counts what it stores (payload plus the
//!   message's subject and header, about 150 bytes an event), and so do [`QueueTotals::bytes`]
//!   and `--max-queue-bytes` on this store.
//! - **seq and FIFO**: the stream sequence. A lane reads its subject from its cursor on.
//! - **park, attempts**: a message cannot change in place, so each event that was parked or
//!   failed has a record beside it in the state stream (one message per subject), mirrored in
//!   memory per lane and read again when a lane starts (`after == 0`).
//! - **acknowledge**: the message is deleted from the stream.
//!
//! What JetStream does not give, and what follows from it:
//! - there are no transactions across messages. A request is appended event by event, in
//!   order; when one is refused (quota, NATS down) the request is answered 503 and the events
//!   before it stay stored. Braze sends the request again, those are duplicates then, and the
//!   rest is stored: nothing acknowledged is lost, and nothing is stored twice. A change that
//!   moves an event (dead-letter, replay) writes its new place first, with a message id that
//!   makes a repeat harmless, then removes the old one: a crash between the two leaves the
//!   event in both places, never in neither.
//! - the dedup window's memory is the servers' (`dedup_ids` reads 0 here).
//!
//! Layout of streams and subjects: [`layout`].

mod layout;
mod lease;
mod ops;
mod privacy;
mod read;
mod record;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use async_nats::{ServerAddr, header};
use bytes::Bytes;

use crate::queue::{
    AppendError, AppendReceipt, Appended, DeadLetter, DeadLetterQuery, DeletionQuery,
    DeletionRecord, DeletionSummary, OpOutcome, PropertyStamp, Queue, QueueError, QueueFuture,
    QueueOp, QueueTotals, Ready, ReadyRequest, SavedLane, unix_millis,
};

use layout::{Layout, Shape, user_token};
pub use lease::JetStreamLeases;
use record::{EventState, Meta};

/// How to reach JetStream and what to create there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// NATS server URLs (`nats://host:port`, `tls://host:port`), one per server.
    pub servers: Vec<String>,
    /// `--nats-stream`: the prefix of every stream and subject.
    pub prefix: String,
    /// `--nats-replicas`.
    pub replicas: usize,
    /// `--nats-creds`.
    pub creds: Option<PathBuf>,
    pub max_queue_bytes: u64,
    pub dedup_window: Duration,
    /// How long property stamps are kept (`--identity-map-retention`).
    pub identity_map_retention: Duration,
    /// Create missing streams and bring existing ones to these settings (`serve`); false for
    /// the maintenance commands, which only open what is there.
    pub provision: bool,
}

/// Why the JetStream queue could not be opened. Each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("--nats-url: {0}")]
    Address(String),
    #[error("--nats-creds {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {servers}: {detail}")]
    Connect { servers: String, detail: String },
    #[error(
        "NATS at {servers} has no JetStream for this account ({detail}); start nats-server with \
         JetStream enabled (-js, or `jetstream {{}}` in its configuration) and give the account \
         JetStream limits"
    )]
    NoJetStream { servers: String, detail: String },
    #[error(
        "NATS refused {what} ({detail}); the account of --nats-creds needs to publish and \
         subscribe to `$JS.API.>`, `{prefix}.>` and `_INBOX.>`"
    )]
    Permission {
        what: String,
        prefix: String,
        detail: String,
    },
    #[error(
        "JetStream cannot place stream {stream} on {replicas} replicas ({detail}); \
         --nats-replicas must not exceed the servers of the JetStream cluster (1 for a single server)"
    )]
    Placement {
        stream: String,
        replicas: usize,
        detail: String,
    },
    #[error(
        "JetStream cannot place stream {stream} on {replicas} replicas ({detail}); JetStream \
         reserves the stream's limit (--max-queue-bytes) on the disk of each server that holds a \
         replica: lower --max-queue-bytes, or give the servers more JetStream storage \
         (max_file_store)"
    )]
    Storage {
        stream: String,
        replicas: usize,
        detail: String,
    },
    #[error("JetStream stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error(
        "no JetStream stream {stream} on {servers} (is --nats-stream right? `currents-heap serve` \
         creates the streams)"
    )]
    Missing { stream: String, servers: String },
}

/// The queue in JetStream. Cheap to share (`Arc<dyn Queue>`); every method is a few JetStream
/// API requests.
#[derive(Debug)]
pub struct JetStreamQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    layout: Layout,
    queue: Stream,
    dead: Stream,
    state: Stream,
    stamps: Stream,
    /// The identity map, the tombstones and the deletion ledger (`privacy.rs`).
    privacy: privacy::Privacy,
    closed: AtomicBool,
    /// Stream-wide totals of the queue stream, refreshed after every change and every
    /// [`TOTALS_REFRESH`] (other replicas change it too).
    events: AtomicU64,
    bytes: AtomicU64,
    /// False after a request to JetStream failed, true again after one succeeded.
    reachable: AtomicBool,
    lanes: Mutex<LaneStates>,
    /// Per app id, the consumer its lane reads on with ([`read::LaneCursor`]).
    cursors: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<read::LaneCursor>>>>>,
    /// App ids whose marker this process wrote already.
    marked: Mutex<HashSet<String>>,
    max_queue_bytes: u64,
    replicas: usize,
    /// Whether this process creates and updates streams (`serve`) or only opens them.
    provision: bool,
}

/// The delivery state records of queued events, mirrored: per app id, by seq.
#[derive(Debug, Default)]
pub(crate) struct LaneStates {
    pub(crate) by_app: HashMap<String, HashMap<u64, EventState>>,
    /// The app id of each seq that has a record.
    pub(crate) app_of: HashMap<u64, String>,
}

/// How often the totals are read again from JetStream when nothing here changed them.
const TOTALS_REFRESH: Duration = Duration::from_secs(2);
/// How long a JetStream request may take before the store counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl JetStreamQueue {
    /// Connects, checks JetStream, and creates (or updates) the streams.
    pub async fn open(config: JetStreamConfig) -> Result<Self, JetStreamError> {
        let servers_text = config.servers.join(",");
        let addrs = config
            .servers
            .iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| JetStreamError::Address(format!("{s}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut options = async_nats::ConnectOptions::new()
            .name("currents-heap")
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT));
        if let Some(path) = &config.creds {
            options = options.credentials_file(path).await.map_err(|source| {
                JetStreamError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| JetStreamError::Connect {
                servers: servers_text.clone(),
                detail: e.to_string(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let layout = Layout::new(&config.prefix);
        check_account(&client, &servers_text, &config.prefix).await?;
        let shape = Shape {
            replicas: config.replicas,
            max_queue_bytes: config.max_queue_bytes,
            dedup_window: config.dedup_window,
            stamp_retention: config.identity_map_retention,
        };
        let mut streams = Vec::new();
        for wanted in layout.streams(&shape) {
            let stream = if config.provision {
                provision(&js, wanted, &config.prefix).await?
            } else {
                js.get_stream(&wanted.name)
                    .await
                    .map_err(|_| JetStreamError::Missing {
                        stream: wanted.name.clone(),
                        servers: servers_text.clone(),
                    })?
            };
            streams.push(stream);
        }
        let privacy_streams = streams.split_off(4);
        let [queue, dead, state, stamps]: [Stream; 4] =
            streams.try_into().expect("four streams in the layout");
        let privacy =
            privacy::Privacy::open(&client, &layout, privacy_streams, config.dedup_window).await?;
        let inner = Arc::new(Inner {
            client,
            js,
            layout,
            queue,
            dead,
            state,
            stamps,
            privacy,
            closed: AtomicBool::new(false),
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            lanes: Mutex::new(LaneStates::default()),
            cursors: Mutex::new(HashMap::new()),
            marked: Mutex::new(HashSet::new()),
            max_queue_bytes: config.max_queue_bytes,
            replicas: config.replicas,
            provision: config.provision,
        });
        inner
            .refresh_totals()
            .await
            .map_err(|e| JetStreamError::Stream {
                stream: inner.layout.queue_stream(),
                detail: e.to_string(),
            })?;
        // Other replicas change the totals too; a weak reference ends the refresh with the queue.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TOTALS_REFRESH).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.closed.load(Ordering::Relaxed) {
                    return;
                }
                let _ = inner.refresh_totals().await;
            }
        });
        Ok(Self { inner })
    }

    /// The lanes' leases, in a stream beside the queue's (created like them).
    pub async fn leases(&self) -> Result<JetStreamLeases, JetStreamError> {
        let prefix = self
            .inner
            .layout
            .queue_stream()
            .trim_end_matches("-queue")
            .to_owned();
        JetStreamLeases::open(Arc::clone(&self.inner), &prefix).await
    }

    /// The servers this queue is connected to, for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "JetStream streams {}-* (server {})",
            self.inner.layout.queue_stream().trim_end_matches("-queue"),
            self.inner.client.server_info().server_name
        )
    }
}

/// Fails clearly when the account has no JetStream or may not use its API. The account
/// request is read by hand: async-nats's `query_account` does not understand NATS 2.9's answer.
async fn check_account(
    client: &async_nats::Client,
    servers: &str,
    prefix: &str,
) -> Result<(), JetStreamError> {
    let answer = match client.request("$JS.API.INFO", Bytes::new()).await {
        Ok(answer) => answer,
        Err(e) => {
            return Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => JetStreamError::NoJetStream {
                    servers: servers.to_owned(),
                    detail: "no server answered $JS.API.INFO".into(),
                },
                async_nats::RequestErrorKind::TimedOut => JetStreamError::Permission {
                    what: "or did not answer the JetStream account request".into(),
                    prefix: prefix.to_owned(),
                    detail: e.to_string(),
                },
                _ => JetStreamError::Connect {
                    servers: servers.to_owned(),
                    detail: e.to_string(),
                },
            });
        }
    };
    let info: serde_json::Value =
        serde_json::from_slice(&answer.payload).map_err(|e| JetStreamError::NoJetStream {
            servers: servers.to_owned(),
            detail: format!("unreadable answer to $JS.API.INFO: {e}"),
        })?;
    match info.get("error") {
        None => Ok(()),
        Some(error) => Err(JetStreamError::NoJetStream {
            servers: servers.to_owned(),
            detail: error
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("JetStream refused the account request")
                .to_owned(),
        }),
    }
}

/// Creates a stream, or brings an existing one to the settings of this start (replicas,
/// quota, windows); its messages stay.
async fn provision(
    js: &jetstream::Context,
    wanted: jetstream::stream::Config,
    prefix: &str,
) -> Result<Stream, JetStreamError> {
    let name = wanted.name.clone();
    let replicas = wanted.num_replicas;
    let classify = |detail: String| {
        let lower = detail.to_lowercase();
        if lower.contains("insufficient storage") {
            JetStreamError::Storage {
                stream: name.clone(),
                replicas,
                detail,
            }
        } else if lower.contains("replica")
            || lower.contains("insufficient resources")
            || lower.contains("no suitable peers")
            || lower.contains("peer")
        {
            JetStreamError::Placement {
                stream: name.clone(),
                replicas,
                detail,
            }
        } else if lower.contains("permission") || lower.contains("authorization") {
            JetStreamError::Permission {
                what: format!("to create stream {name}"),
                prefix: prefix.to_owned(),
                detail,
            }
        } else {
            JetStreamError::Stream {
                stream: name.clone(),
                detail,
            }
        }
    };
    match js.get_stream(&name).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| classify(e.to_string()))?;
            let have = &info.config;
            let differs = have.num_replicas != wanted.num_replicas
                || have.max_bytes != wanted.max_bytes
                || have.duplicate_window != wanted.duplicate_window
                || have.max_age != wanted.max_age;
            if differs {
                let mut config = have.clone();
                config.num_replicas = wanted.num_replicas;
                config.max_bytes = wanted.max_bytes;
                config.duplicate_window = wanted.duplicate_window;
                config.max_age = wanted.max_age;
                js.update_stream(config)
                    .await
                    .map_err(|e| classify(e.to_string()))?;
            }
            Ok(stream)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(wanted)
                .await
                .map_err(|e| classify(e.to_string()))
        }
        Err(e) => Err(classify(e.to_string())),
    }
}

/// A failed JetStream request, as the seam reports it; it also marks the store unreachable.
pub(crate) fn unavailable(inner: &Inner, e: impl std::fmt::Display) -> QueueError {
    inner.reachable.store(false, Ordering::Relaxed);
    QueueError::Unavailable(e.to_string())
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<(), QueueError> {
        if self.closed.load(Ordering::Relaxed) {
            Err(QueueError::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) async fn refresh_totals(&self) -> Result<(), QueueError> {
        let info = self
            .queue
            .get_info()
            .await
            .map_err(|e| unavailable(self, e))?;
        self.events.store(info.state.messages, Ordering::Relaxed);
        self.bytes.store(info.state.bytes, Ordering::Relaxed);
        self.reachable.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the marker that makes `app_id` known to [`Queue::queued_app_ids`], once per
    /// process and app id.
    async fn mark_app(&self, app_id: &str) -> Result<(), AppendError> {
        if self.marked_contains(app_id) {
            return Ok(());
        }
        self.js
            .publish(self.layout.app_marker(app_id), Bytes::new())
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?;
        self.marked
            .lock()
            .expect("marker set lock")
            .insert(app_id.to_owned());
        Ok(())
    }

    fn marked_contains(&self, app_id: &str) -> bool {
        self.marked
            .lock()
            .expect("marker set lock")
            .contains(app_id)
    }

    /// Publishes one message with a message id and waits for its `PubAck`.
    pub(crate) async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        body: Bytes,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, msg_id);
        self.js
            .publish_with_headers(subject, headers, body)
            .await?
            .await
    }

    async fn append(
        &self,
        events: Vec<crate::queue::NewEvent>,
    ) -> Result<AppendReceipt, AppendError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(AppendError::Closed);
        }
        if self.append_needs_privacy(&events) {
            return self.append_in_order(events).await;
        }
        let received_at = unix_millis();
        let mut apps: Vec<&str> = events
            .iter()
            .filter(|e| e.dead_letter.is_none() && !e.deletion)
            .map(|e| &*e.app_id)
            .collect();
        apps.sort_unstable();
        apps.dedup();
        for app in apps {
            self.mark_app(app).await?;
        }
        let messages: Vec<Outgoing> = events
            .iter()
            .map(|e| self.outgoing(e, received_at))
            .collect();
        let adding: u64 = messages.iter().filter(|m| m.queued).map(|m| m.size).sum();
        if self.bytes.load(Ordering::Relaxed) + adding > self.max_queue_bytes {
            return self.append_over_quota(&messages).await;
        }
        let acks = self
            .publish_all(
                messages
                    .into_iter()
                    .map(|m| (m.subject, m.msg_id, m.body))
                    .collect(),
            )
            .await;
        let _ = self.refresh_totals().await;
        let outcomes = acks
            .into_iter()
            .map(|ack| match ack {
                Ok(ack) if ack.duplicate => Ok(Appended::Duplicate),
                Ok(_) => Ok(Appended::Queued),
                Err(err) => Err(self.append_error(err)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.remember_appended(&events, &outcomes).await?;
        self.reachable.store(true, Ordering::Relaxed);
        Ok(AppendReceipt { outcomes })
    }

    /// Publishes messages (subject, message id, body) in order on one connection, so
    /// JetStream stores them in that order and a repeat of an id among them is a duplicate of
    /// its first; returns each one's `PubAck` or refusal.
    ///
    /// A clustered stream refuses an id whose first publish is still being replicated ("in
    /// process"); that one is published again once the ones before it are acknowledged, and
    /// is then a duplicate.
    pub(crate) async fn publish_all(
        &self,
        messages: Vec<(String, String, Bytes)>,
    ) -> Vec<Result<jetstream::publish::PublishAck, jetstream::context::PublishError>> {
        let mut pending = Vec::with_capacity(messages.len());
        for (subject, msg_id, body) in &messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(header::NATS_MESSAGE_ID, msg_id.as_str());
            pending.push(
                self.js
                    .publish_with_headers(subject.clone(), headers, body.clone())
                    .await,
            );
        }
        let mut acks = Vec::with_capacity(pending.len());
        for (sent, (subject, msg_id, body)) in pending.into_iter().zip(messages) {
            let mut ack = match sent {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            let mut tries = 0;
            while ack.as_ref().is_err_and(in_process) && tries < 50 {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(2 * tries)).await;
                ack = self.publish(subject.clone(), &msg_id, body.clone()).await;
            }
            acks.push(ack);
        }
        acks
    }

    /// The message an event becomes.
    fn outgoing(&self, e: &crate::queue::NewEvent, received_at: i64) -> Outgoing {
        let mut meta = Meta {
            route: e.route.to_string(),
            app_id: e.app_id.to_string(),
            workspace: e.workspace.as_deref().map(str::to_owned),
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            identity: e.identity.clone(),
            event_time: e.event_time,
            received_at,
            braze_user_id: e.braze_user_id.clone(),
            deletion: e.deletion,
            ..Meta::default()
        };
        meta.set_heap_user(e.heap_user.as_ref());
        let subject = match e.dead_letter {
            Some(reason) => {
                meta.reason = Some(reason.to_owned());
                meta.dead_at = received_at;
                self.layout.dead(reason)
            }
            None => self
                .layout
                .queued(&e.app_id, &user_token(&e.route, e.braze_user_id.as_deref())),
        };
        let body = record::encode(&meta, &e.payload);
        Outgoing {
            size: stored_size(&subject, &e.event_id, body.len()),
            queued: e.dead_letter.is_none(),
            subject,
            msg_id: e.event_id.clone(),
            body,
        }
    }

    /// A request that may not fit: which of its events are new is asked first, without
    /// storing anything (each is published expecting a last sequence no stream ever has, which
    /// JetStream checks after its duplicate window). A request of re-sends only is
    /// acknowledged; one whose new events do not fit is refused whole.
    async fn append_over_quota(&self, messages: &[Outgoing]) -> Result<AppendReceipt, AppendError> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(header::NATS_MESSAGE_ID, m.msg_id.as_str());
            headers.insert(header::NATS_EXPECTED_LAST_SEQUENCE, "18446744073709551615");
            let ack = self
                .js
                .publish_with_headers(m.subject.clone(), headers, m.body.clone())
                .await
                .map_err(|err| self.append_error(err))?;
            pending.push(ack);
        }
        let mut adding = 0;
        let mut seen = HashSet::new();
        for (m, ack) in messages.iter().zip(pending) {
            let mut ack = ack.await;
            let mut tries = 0;
            while ack.as_ref().is_err_and(in_process) && tries < 50 {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(2 * tries)).await;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(header::NATS_MESSAGE_ID, m.msg_id.as_str());
                headers.insert(header::NATS_EXPECTED_LAST_SEQUENCE, "18446744073709551615");
                ack = match self
                    .js
                    .publish_with_headers(m.subject.clone(), headers, m.body.clone())
                    .await
                {
                    Ok(f) => f.await,
                    Err(e) => Err(e),
                };
            }
            match ack {
                Ok(ack) if ack.duplicate => {}
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    if m.queued && seen.insert(&m.msg_id) {
                        adding += m.size;
                    }
                }
                Ok(_) => {
                    return Err(AppendError::Unavailable(
                        "JetStream stored a message it was asked only to check".into(),
                    ));
                }
                Err(e) => return Err(self.append_error(e)),
            }
        }
        if adding == 0 {
            return Ok(AppendReceipt {
                outcomes: vec![Appended::Duplicate; messages.len()],
            });
        }
        Err(AppendError::OverQuota {
            max: self.max_queue_bytes,
        })
    }

    /// A refused publish as the seam reports it: over the stream's limits is the quota, the
    /// rest is NATS being unavailable.
    fn append_error(&self, err: jetstream::context::PublishError) -> AppendError {
        let text = err.to_string();
        let lower = text.to_lowercase();
        if lower.contains("maximum bytes")
            || lower.contains("maximum messages")
            || lower.contains("resource limits exceeded")
        {
            return AppendError::OverQuota {
                max: self.max_queue_bytes,
            };
        }
        if lower.contains("insufficient") || lower.contains("storage") && lower.contains("full") {
            return AppendError::DiskFull;
        }
        self.reachable.store(false, Ordering::Relaxed);
        AppendError::Unavailable(text)
    }
}

impl Queue for JetStreamQueue {
    fn append(
        &self,
        events: Vec<crate::queue::NewEvent>,
    ) -> QueueFuture<'_, AppendReceipt, AppendError> {
        Box::pin(self.inner.append(events))
    }

    fn ready(&self, request: ReadyRequest) -> QueueFuture<'_, Ready> {
        Box::pin(self.inner.ready(request))
    }

    fn apply(&self, op: QueueOp) -> QueueFuture<'_, OpOutcome> {
        Box::pin(async move {
            self.inner.check_open()?;
            let before = self.inner.bytes.load(Ordering::Relaxed);
            let mut out = self.inner.apply(op).await?;
            // JetStream does not say what a removed message held: the delta is what the
            // stream's bytes moved by (other replicas' changes meanwhile included).
            if self.inner.refresh_totals().await.is_ok() {
                let after = self.inner.bytes.load(Ordering::Relaxed);
                out.queue_bytes_delta = after as i64 - before as i64;
            }
            Ok(out)
        })
    }

    fn dead_letters(&self, query: DeadLetterQuery) -> QueueFuture<'_, Vec<DeadLetter>> {
        Box::pin(self.inner.dead_letters(query))
    }

    fn dead_letter_counts(&self) -> QueueFuture<'_, Vec<(String, u64)>> {
        Box::pin(self.inner.dead_letter_counts())
    }

    fn queued_app_ids(&self) -> QueueFuture<'_, Vec<String>> {
        Box::pin(self.inner.queued_app_ids())
    }

    fn oldest_received_at(&self) -> QueueFuture<'_, Option<i64>> {
        Box::pin(self.inner.oldest_received_at())
    }

    fn deletions(&self, query: DeletionQuery) -> QueueFuture<'_, Vec<DeletionRecord>> {
        Box::pin(self.inner.deletions(query))
    }

    fn deletion_summary(&self, overdue_before: i64) -> QueueFuture<'_, Vec<DeletionSummary>> {
        Box::pin(self.inner.deletion_summary(overdue_before))
    }

    fn saved_lane(&self, app_id: &str) -> QueueFuture<'_, Option<SavedLane>> {
        let app_id = app_id.to_owned();
        Box::pin(async move { self.inner.saved_lane(&app_id).await })
    }

    fn property_stamps(&self, keys: Vec<i64>) -> QueueFuture<'_, Vec<PropertyStamp>> {
        Box::pin(self.inner.property_stamps(keys))
    }

    fn totals(&self) -> QueueTotals {
        let i = &self.inner;
        QueueTotals {
            events: i.events.load(Ordering::Relaxed),
            bytes: i.bytes.load(Ordering::Relaxed),
            dedup_ids: 0,
            healthy: i.reachable.load(Ordering::Relaxed)
                && i.client.connection_state() == async_nats::connection::State::Connected,
        }
    }

    fn close(&self) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            if self.inner.closed.swap(true, Ordering::Relaxed) {
                return Ok(());
            }
            self.inner
                .client
                .flush()
                .await
                .map_err(|e| QueueError::Unavailable(e.to_string()))
        })
    }
}

/// An event as the message it is published as.
#[derive(Debug)]
struct Outgoing {
    subject: String,
    msg_id: String,
    body: Bytes,
    /// What JetStream's file store counts for it.
    size: u64,
    /// Into the queue stream (the quota's), not the dead letters.
    queued: bool,
}

/// The bytes JetStream's file store counts for a message: a 22-byte record header, the
/// subject, the NATS header (`Nats-Msg-Id`), the body and an 8-byte checksum.
fn stored_size(subject: &str, msg_id: &str, body: usize) -> u64 {
    let header = "NATS/1.0\r\nNats-Msg-Id: ".len() + msg_id.len() + 4;
    (22 + subject.len() + header + body + 8) as u64
}

/// JetStream's answer to an id whose first publish is still being replicated (10158).
fn in_process(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
}
