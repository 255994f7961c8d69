//! Generating realistic Braze Currents batches for load runs and benchmarks.
//!
//! Template events (one per sample file, or from batches) are split around their `id` value and
//! their identity, so a batch of unique, random-looking ids costs little more than a copy — the generator must not
//! be the bottleneck of a measurement made on the same machine. Ids are v4-style UUIDs from a
//! hash of a counter: sequential ids would flatter the store, since production ids are random.

use std::io::Write;
use std::path::Path;

/// One event split around its `id` value and its identity, so a unique event costs little
/// more than a copy.
pub struct Template {
    pieces: Vec<Piece>,
    /// The template's `event_type`.
    pub event_type: String,
}

enum Piece {
    Lit(Vec<u8>),
    /// The event id (a JSON string).
    Id,
    /// `user.external_user_id`: a JSON string, or `null` for an anonymous user.
    User,
    /// `user.user_id`: the Braze id of the same user (24 hex digits, as Braze's are).
    Braze,
}

const ID_MARK: &str = "\"@@ID@@\"";
const USER_MARK: &str = "\"@@USER@@\"";
const BRAZE_MARK: &str = "\"@@BRAZE@@\"";

impl Template {
    fn from_event(mut ev: serde_json::Value) -> Option<Self> {
        if !ev.is_object() || ev.get("id").is_none() || ev.get("time").is_none() {
            return None;
        }
        let event_type = ev.get("event_type")?.as_str()?.to_owned();
        ev["id"] = serde_json::Value::String("@@ID@@".into());
        if let Some(user) = ev.get_mut("user").and_then(|u| u.as_object_mut()) {
            user.insert("external_user_id".into(), "@@USER@@".into());
            user.insert("user_id".into(), "@@BRAZE@@".into());
        }
        let text = serde_json::to_string(&ev).ok()?;
        let mut pieces = Vec::new();
        let mut rest = text.as_str();
        loop {
            let next = [
                (rest.find(ID_MARK), ID_MARK.len(), Piece::Id),
                (rest.find(USER_MARK), USER_MARK.len(), Piece::User),
                (rest.find(BRAZE_MARK), BRAZE_MARK.len(), Piece::Braze),
            ]
            .into_iter()
            .filter_map(|(at, len, piece)| Some((at?, len, piece)))
            .min_by_key(|(at, ..)| *at);
            match next {
                Some((at, len, piece)) => {
                    pieces.push(Piece::Lit(rest.as_bytes()[..at].to_vec()));
                    pieces.push(piece);
                    rest = &rest[at + len..];
                }
                None => {
                    pieces.push(Piece::Lit(rest.as_bytes().to_vec()));
                    break;
                }
            }
        }
        Some(Self { pieces, event_type })
    }
}

/// Every event with an `id` and a `time` in the `*.json` files under `dir` (recursively): a file
/// may hold one event, an array of events, or a `{"events":[...]}` batch.
pub fn load_templates(dir: &Path) -> Vec<Template> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let events = match v {
            serde_json::Value::Object(ref m) if m.contains_key("events") => {
                m["events"].as_array().cloned().unwrap_or_default()
            }
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        out.extend(events.into_iter().filter_map(Template::from_event));
    }
    out
}

/// Adds a minimal template for every event type of `event_types` (say, the product's catalogue
/// `currents_heap::currents::catalogue::KNOWN_EVENT_TYPES`) that `templates` does not cover
/// yet, so a load run exercises every name of the mapping table.
pub fn complete_with_event_types(templates: &mut Vec<Template>, event_types: &[&str]) {
    for t in event_types {
        if templates.iter().any(|x| x.event_type == *t) {
            continue;
        }
        let ev = serde_json::json!({
            "event_type": t,
            "id": "x",
            "time": 1_780_000_000,
            "user": { "user_id": "65a0c0ffee0000000000a001", "external_user_id": "x" },
            "properties": {
                "app_group_id": "0c1e2d3f-aaaa-4bbb-8ccc-000000000001",
                "app_id": "0c1e2d3f-aaaa-4bbb-8ccc-0000000000aa",
                "name": "load-test custom event"
            }
        });
        templates.extend(Template::from_event(ev));
    }
}

/// Who the generated events belong to.
#[derive(Debug, Clone, Copy)]
pub struct UserMix {
    /// Distinct identified users (`user-0` … `user-{n-1}`).
    pub users: usize,
    /// Share of events without `external_user_id` (anonymous), 0..=1.
    pub anonymous_share: f64,
    /// Share of events of the one hot user `hot-user`, 0..=1.
    pub hot_share: f64,
}

impl Default for UserMix {
    fn default() -> Self {
        Self {
            users: 1000,
            anonymous_share: 0.0,
            hot_share: 0.0,
        }
    }
}

/// A `{"events":[...]}` body of `n` events cycling through `templates`, with ids unique per
/// `(nonce, conn, counter)`; advances `counter` by `n`.
pub fn build_batch(
    templates: &[Template],
    n: usize,
    conn: usize,
    counter: &mut u64,
    nonce: u32,
) -> Vec<u8> {
    build_batch_with(
        templates,
        n,
        conn,
        counter,
        nonce,
        UserMix::default(),
        &mut Vec::new(),
    )
}

/// As [`build_batch`], with the users of `mix`; pushes `(id, identified)` of every event to
/// `ids`.
pub fn build_batch_with(
    templates: &[Template],
    n: usize,
    conn: usize,
    counter: &mut u64,
    nonce: u32,
    mix: UserMix,
    ids: &mut Vec<(String, bool)>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(n * 1100);
    body.extend_from_slice(b"{\"events\":[");
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        let t = &templates[(*counter as usize) % templates.len()];
        // Random-looking v4-style UUIDs, like Braze's: sequential ids would flatter the
        // dedup index, whose inserts land on random pages in production.
        let a = splitmix(u64::from(nonce) << 32 ^ (conn as u64) << 48 ^ *counter);
        let b = splitmix(a);
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        );
        let roll = (splitmix(b) % 1_000_000) as f64 / 1_000_000.0;
        let index = splitmix(a ^ 0x5555) % mix.users.max(1) as u64;
        let hot = roll >= mix.anonymous_share && roll < mix.anonymous_share + mix.hot_share;
        let user = if roll < mix.anonymous_share {
            None
        } else if hot {
            Some("hot-user".to_owned())
        } else {
            Some(format!("user-{index}"))
        };
        // Every user (anonymous ones too) has a Braze id of its own.
        let braze_key = if hot { u64::MAX } else { index };
        let braze = format!(
            "{:08x}{:016x}",
            splitmix(braze_key ^ 0xb4a2e) >> 32,
            splitmix(braze_key)
        );
        let identified = user.is_some();
        for piece in &t.pieces {
            match piece {
                Piece::Lit(bytes) => body.extend_from_slice(bytes),
                Piece::Id => write!(body, "\"{id}\"").unwrap(),
                Piece::User => match &user {
                    Some(u) => write!(body, "\"{u}\"").unwrap(),
                    None => body.extend_from_slice(b"null"),
                },
                Piece::Braze => write!(body, "\"{braze}\"").unwrap(),
            }
        }
        ids.push((id, identified));
        *counter += 1;
    }
    body.extend_from_slice(b"]}");
    body
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_have_the_asked_user_mix_and_unique_ids() {
        let mut templates = Vec::new();
        let types = ["users.messages.email.Send", "users.behaviors.CustomEvent"];
        complete_with_event_types(&mut templates, &types);
        complete_with_event_types(&mut templates, &types);
        assert_eq!(templates.len(), 2, "a covered type gets no second template");
        let mix = UserMix {
            users: 10,
            anonymous_share: 0.25,
            hot_share: 0.25,
        };
        let mut ids = Vec::new();
        let mut counter = 0;
        let body = build_batch_with(&templates, 400, 1, &mut counter, 7, mix, &mut ids);
        assert_eq!(counter, 400);
        let batch: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let events = batch["events"].as_array().expect("an events array");
        assert_eq!(events.len(), 400);
        let users: Vec<&serde_json::Value> = events
            .iter()
            .map(|e| &e["user"]["external_user_id"])
            .collect();
        let anonymous = users.iter().filter(|u| u.is_null()).count();
        let hot = users.iter().filter(|u| **u == "hot-user").count();
        assert!((60..140).contains(&anonymous), "{anonymous}");
        assert!((60..140).contains(&hot), "{hot}");
        assert_eq!(
            ids.iter().filter(|(_, identified)| !identified).count(),
            anonymous
        );
        for (event, (id, _)) in events.iter().zip(&ids) {
            assert_eq!(event["id"], id.as_str());
        }
        let unique: std::collections::HashSet<_> = ids.iter().map(|(id, _)| id).collect();
        assert_eq!(unique.len(), 400);
    }
}
