//! The lanes' leases in JetStream ([`crate::leadership::Leases`]): one record per Heap app id
//! in the stream `P-leases` (subject `P.lease.<app>`, one message per subject), changed only
//! by compare-and-set: a publish that names the subject's last sequence it read
//! (`Nats-Expected-Last-Subject-Sequence`), which JetStream refuses when another replica wrote
//! the record meanwhile. The record's sequence is the lease's revision.
//!
//! A record says who holds the lane and until when (wall-clock UNIX ms, so every replica reads
//! it alike); a record past its time, or released, may be taken by anyone. The holder stops
//! sending well before that time on its own monotonic clock ([`crate::leadership`]), so clock
//! skew between replicas up to that margin is harmless.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType, Stream};
use serde::{Deserialize, Serialize};

use crate::leadership::{Lease, LeaseFuture, Leases};
use crate::queue::{QueueError, unix_millis};

use super::layout::token;
use super::{Inner, JetStreamError, provision};

/// One lease record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The holder (empty: released).
    #[serde(rename = "h")]
    holder: String,
    /// Held until then (UNIX ms).
    #[serde(rename = "x")]
    expires_at: i64,
}

/// The leases of one forwarder replica.
#[derive(Debug)]
pub struct JetStreamLeases {
    inner: Arc<Inner>,
    stream: Stream,
    prefix: String,
    /// This replica's name in the records: host, process and a random part.
    holder: String,
}

impl JetStreamLeases {
    pub(super) async fn open(inner: Arc<Inner>, prefix: &str) -> Result<Self, JetStreamError> {
        let config = Config {
            name: format!("{prefix}-leases"),
            subjects: vec![format!("{prefix}.lease.>")],
            max_messages_per_subject: 1,
            storage: StorageType::File,
            num_replicas: inner.replicas,
            duplicate_window: Duration::from_secs(60),
            ..Config::default()
        };
        let stream = if inner.provision {
            provision(&inner.js, config, prefix).await?
        } else {
            inner
                .js
                .get_stream(&config.name)
                .await
                .map_err(|_| JetStreamError::Missing {
                    stream: config.name.clone(),
                    servers: String::new(),
                })?
        };
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        let holder = format!(
            "{host}/{}/{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        Ok(Self {
            inner,
            stream,
            prefix: prefix.to_owned(),
            holder,
        })
    }

    /// This replica's name in the lease records.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn subject(&self, app_id: &str) -> String {
        format!("{}.lease.{}", self.prefix, token(app_id))
    }

    /// The record of `app_id` and its sequence (0 and `None`: there is none).
    async fn read(&self, app_id: &str) -> Result<(u64, Option<Record>), QueueError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(app_id))
            .await
        {
            Ok(m) => Ok((m.sequence, serde_json::from_slice(&m.payload).ok())),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok((0, None)),
            Err(e) => Err(QueueError::Unavailable(e.to_string())),
        }
    }

    /// Writes `record` if the subject's last sequence is still `expected`: the new revision,
    /// or `None` when another replica wrote first.
    async fn write(
        &self,
        app_id: &str,
        expected: u64,
        record: &Record,
    ) -> Result<Option<u64>, QueueError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let body = serde_json::to_vec(record).expect("a lease record always serializes");
        let sent = self
            .inner
            .js
            .publish_with_headers(self.subject(app_id), headers, body.into())
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        match sent.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(QueueError::Unavailable(e.to_string())),
        }
    }

    fn held_for(&self, ttl: Duration) -> Record {
        Record {
            holder: self.holder.clone(),
            expires_at: unix_millis() + ttl.as_millis() as i64,
        }
    }
}

impl Leases for JetStreamLeases {
    fn acquire<'a>(&'a self, app_id: &'a str, ttl: Duration) -> LeaseFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let (seq, record) = self.read(app_id).await?;
            if let Some(r) = &record
                && r.holder != self.holder
                && !r.holder.is_empty()
                && r.expires_at > unix_millis()
            {
                return Ok(None);
            }
            let won = self.write(app_id, seq, &self.held_for(ttl)).await?;
            Ok(won.map(|revision| Lease {
                app_id: app_id.to_owned(),
                revision,
            }))
        })
    }

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> LeaseFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let won = self
                .write(&lease.app_id, lease.revision, &self.held_for(ttl))
                .await?;
            Ok(won.map(|revision| Lease {
                app_id: lease.app_id.clone(),
                revision,
            }))
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> LeaseFuture<'a, ()> {
        Box::pin(async move {
            let released = Record {
                holder: String::new(),
                expires_at: 0,
            };
            self.write(&lease.app_id, lease.revision, &released).await?;
            Ok(())
        })
    }
}
