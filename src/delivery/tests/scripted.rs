//! A scripted Heap behind the [`Sender`] trait: answers from a script, then 200.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::Value;

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
/// every request.
#[derive(Debug, Default)]
pub(super) struct ScriptedHeap {
    script: Mutex<VecDeque<Answer>>,
    pub(super) poison: Mutex<Option<String>>,
    seen: Mutex<Vec<(&'static str, Value)>>,
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
}

impl Sender for ScriptedHeap {
    fn post(&self, path: &'static str, body: Bytes) -> SendFuture<'_> {
        let json: Value = serde_json::from_slice(&body).unwrap();
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
