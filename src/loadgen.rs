//! Generating realistic Braze Currents batches for load runs and benchmarks.
//!
//! Template events (one per sample file, or from batches) are split around their `id` value, so
//! a batch of unique, random-looking ids costs little more than a copy — the generator must not
//! be the bottleneck of a measurement made on the same machine. Ids are v4-style UUIDs from a
//! hash of a counter: sequential ids would flatter the store, since production ids are random.

use std::io::Write;
use std::path::Path;

/// One event split around its `id` value, so a unique id costs one copy.
pub struct Template {
    before_id: Vec<u8>,
    after_id: Vec<u8>,
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
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&f).unwrap()) else {
            continue;
        };
        let events = match v {
            serde_json::Value::Object(ref m) if m.contains_key("events") => {
                m["events"].as_array().cloned().unwrap_or_default()
            }
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        for mut ev in events {
            if !ev.is_object() || ev.get("id").is_none() || ev.get("time").is_none() {
                continue;
            }
            ev["id"] = serde_json::Value::String("@@ID@@".into());
            let text = serde_json::to_string(&ev).unwrap();
            let (a, b) = text.split_once("\"@@ID@@\"").unwrap();
            out.push(Template {
                before_id: format!("{a}\"").into_bytes(),
                after_id: format!("\"{b}").into_bytes(),
            });
        }
    }
    out
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
    let mut body = Vec::with_capacity(n * 1100);
    body.extend_from_slice(b"{\"events\":[");
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        let t = &templates[(*counter as usize) % templates.len()];
        body.extend_from_slice(&t.before_id);
        // Random-looking v4-style UUIDs, like Braze's: sequential ids would flatter the
        // dedup index, whose inserts land on random pages in production.
        let a = splitmix(u64::from(nonce) << 32 ^ (conn as u64) << 48 ^ *counter);
        let b = splitmix(a);
        write!(
            body,
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
        .unwrap();
        body.extend_from_slice(&t.after_id);
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
