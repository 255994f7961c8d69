//! Ingest parser + validation, with the body decoder in front: no panic, no unbounded
//! allocation (decoding stops at the limit), and every accepted event really has the fields
//! the structural check promises.
#![no_main]

use bytes::Bytes;
use currents_heap::currents::parse_batch;
use currents_heap::ingest::body::{Encoding, decode};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the Content-Encoding, the rest is the body on the wire.
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let encoding = match which % 3 {
        0 => Encoding::Identity,
        1 => Encoding::Gzip,
        _ => Encoding::Deflate,
    };
    let Ok(decoded) = decode(Bytes::copy_from_slice(body), encoding, LIMIT) else {
        return;
    };
    assert!(decoded.len() as u64 <= LIMIT);
    if let Ok(batch) = parse_batch(&decoded) {
        for ev in &batch.events {
            assert!(!ev.id.is_empty());
            assert!(ev.raw.get().starts_with('{'));
            let reparsed: serde_json::Value = serde_json::from_str(ev.raw.get()).unwrap();
            assert_eq!(reparsed["id"].as_str(), Some(&*ev.id));
            assert_eq!(reparsed["event_type"].as_str(), Some(&*ev.event_type));
            assert_eq!(reparsed["time"].as_i64(), Some(ev.time));
        }
    }
});
