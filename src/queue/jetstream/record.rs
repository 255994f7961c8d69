//! How an event is written into a JetStream message, and the small records beside it.
//!
//! An event is one message: its subject says where it is (a lane, or a dead-letter reason),
//! its body is a length-prefixed JSON header ([`Meta`]) followed by the raw Currents payload,
//! untouched. The header is JSON, not NATS headers, because identities and route names are
//! arbitrary text (NATS header values may not hold line breaks) and because one field added
//! later must not make older messages unreadable.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::queue::{HeapUser, StoredEvent};

/// What a message says of its event besides the payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Meta {
    #[serde(rename = "r")]
    pub route: String,
    #[serde(rename = "a")]
    pub app_id: String,
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(rename = "i")]
    pub event_id: String,
    #[serde(rename = "t")]
    pub event_type: String,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(rename = "et")]
    pub event_time: i64,
    #[serde(rename = "ra")]
    pub received_at: i64,
    #[serde(rename = "at", default)]
    pub attempts: i64,
    /// `user.user_id`: what a deletion finds the event by.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub braze_user_id: Option<String>,
    /// The Heap user the route's mapping sends it for (a replay remembers it again).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub heap_user: Option<(String, String)>,
    /// A `users.UserDeleteRequest` (only ever a dead letter: queued deletions are not events).
    #[serde(rename = "del", default, skip_serializing_if = "std::ops::Not::not")]
    pub deletion: bool,
    /// Dead letters only: why, what Heap said, when.
    #[serde(rename = "dr", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(rename = "dd", default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(rename = "da", default)]
    pub dead_at: i64,
}

impl Meta {
    pub(crate) fn heap_user(&self) -> Option<HeapUser> {
        let (kind, value) = self.heap_user.as_ref()?;
        HeapUser::from_parts(kind, value.clone())
    }

    pub(crate) fn set_heap_user(&mut self, user: Option<&HeapUser>) {
        self.heap_user = user.map(|u| (u.kind().to_owned(), u.value().to_owned()));
    }
}

/// A message body: the header's length (4 bytes, little-endian), the header, the payload.
pub(crate) fn encode(meta: &Meta, payload: &[u8]) -> Bytes {
    let head = serde_json::to_vec(meta).expect("a Meta always serializes");
    let mut body = BytesMut::with_capacity(4 + head.len() + payload.len());
    body.put_u32_le(head.len() as u32);
    body.put_slice(&head);
    body.put_slice(payload);
    body.freeze()
}

/// The header and the payload of a message body; `None` for a body this version did not write.
pub(crate) fn decode(body: &Bytes) -> Option<(Meta, Bytes)> {
    let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let head = body.get(4..4 + len)?;
    let meta = serde_json::from_slice(head).ok()?;
    Some((meta, body.slice(4 + len..)))
}

/// The stored event a message holds.
pub(crate) fn stored_event(meta: Meta, payload: &Bytes) -> StoredEvent {
    StoredEvent {
        route: meta.route,
        app_id: meta.app_id,
        workspace: meta.workspace,
        event_id: meta.event_id,
        event_type: meta.event_type,
        identity: meta.identity,
        event_time: meta.event_time,
        received_at: meta.received_at,
        attempts: meta.attempts,
        payload: payload.to_vec(),
    }
}

/// The delivery state of one queued event, kept beside it (a message cannot change in place):
/// parked until `not_before`, and the failed attempts with the last error.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct EventState {
    #[serde(rename = "n", default)]
    pub not_before: i64,
    #[serde(rename = "a", default)]
    pub attempts: i64,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_round_trips_and_a_foreign_one_is_refused() {
        let meta = Meta {
            route: "r\nx".into(),
            app_id: "1".into(),
            event_id: "e".into(),
            identity: Some("ü".into()),
            ..Meta::default()
        };
        let body = encode(&meta, b"{\"id\":1}");
        let (back, payload) = decode(&body).expect("decodes");
        assert_eq!(back, meta);
        assert_eq!(&payload[..], b"{\"id\":1}");
        assert!(decode(&Bytes::from_static(b"\xff\xff\xff\x00{}")).is_none());
        assert!(decode(&Bytes::from_static(b"")).is_none());
    }
}
