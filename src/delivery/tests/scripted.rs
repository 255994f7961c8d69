//! A scripted Heap behind the [`Sender`] trait: answers from a script, then 200.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::delivery::{SendFuture, Sender};
use crate::heap::client::{HeapError, HeapResponse};

/// One scripted answer of the Heap stand-in.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    Status(u16),
    RetryAfter(u16, &'static str),
    Unreachable,
}

/// Answers from a script (then 200), or 400 to any body carrying the poisoned key; records
/// every request with its time on tokio's clock (paused in these tests).
#[derive(Debug, Default)]
pub(super) struct ScriptedHeap {
    script: Mutex<VecDeque<Answer>>,
    pub(super) poison: Mutex<Option<String>>,
    /// Requests answered 2xx.
    seen: Mutex<Vec<(&'static str, Value)>>,
    /// Every track request, whatever the answer: when it was made, and the budget key
    /// (identity, else `user_id`) of each of its events.
    track_requests: Mutex<Vec<(Instant, Vec<String>)>>,
}

impl ScriptedHeap {
    pub(super) fn then(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    /// `idempotency_key` → how many times Heap answered 2xx for a request carrying it.
    pub(super) fn accepted_keys(&self) -> HashMap<String, usize> {
        let mut keys = HashMap::new();
        for (path, body) in self.seen.lock().unwrap().iter() {
            if *path == crate::heap::model::TRACK_PATH {
                for e in body["events"].as_array().unwrap() {
                    *keys
                        .entry(e["idempotency_key"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
            }
        }
        keys
    }
}

impl ScriptedHeap {
    /// The items of every accepted add-user-properties request, in order.
    pub(super) fn user_property_items(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| *path == crate::heap::model::USER_PROPERTIES_PATH)
            .flat_map(|(_, body)| body["users"].as_array().unwrap().clone())
            .collect()
    }

    /// Every track request made so far (answered or not), in order: its time on tokio's clock
    /// and the budget key of each event.
    pub(super) fn track_requests(&self) -> Vec<(Instant, Vec<String>)> {
        self.track_requests.lock().unwrap().clone()
    }
}

impl Sender for ScriptedHeap {
    fn post(&self, path: &'static str, body: Bytes) -> SendFuture<'_> {
        let json: Value = serde_json::from_slice(&body).unwrap();
        if path == crate::heap::model::TRACK_PATH {
            let keys = json["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    e.get("identity")
                        .or_else(|| e.get("user_id"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            self.track_requests
                .lock()
                .unwrap()
                .push((Instant::now(), keys));
        }
        let poisoned = self
            .poison
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|p| String::from_utf8_lossy(&body).contains(p.as_str()));
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(if poisoned {
                Answer::Status(400)
            } else {
                Answer::Status(200)
            });
        let reply = |status: u16, retry_after: Option<&'static str>| HeapResponse {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: retry_after.map(HeaderValue::from_static),
            body: String::new(),
        };
        let result = match answer {
            Answer::Status(s) => Ok(reply(s, None)),
            Answer::RetryAfter(s, after) => Ok(reply(s, Some(after))),
            Answer::Unreachable => Err(HeapError::Connect("refused".into())),
        };
        if matches!(&result, Ok(r) if r.status.is_success()) {
            self.seen.lock().unwrap().push((path, json));
        }
        Box::pin(std::future::ready(result))
    }
}
