//! The mapping: for any stored event bytes and any mapping options, no panic, and every item
//! produced satisfies Heap's documented limits.
#![no_main]

use currents_heap::heap::model::{validate_track_item, validate_user_properties_item};
use currents_heap::transform::{MappingOptions, map_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let opts = MappingOptions::from_parts(
        Some(if flags & 1 == 0 { "friendly" } else { "raw" }),
        Some(if flags & 2 == 0 { "" } else { "braze-" }),
        Some(if flags & 4 == 0 { "skip" } else { "synthetic_user_id" }),
        &[],
        &[],
        &(if flags & 8 == 0 { vec![] } else { vec!["email_address".to_owned()] }),
    )
    .expect("valid options");
    if let Ok(mapped) = map_event(raw, &opts) {
        validate_track_item(&mapped.track).expect("track item within Heap's limits");
        if let Some(u) = &mapped.user_properties {
            validate_user_properties_item(u).expect("user properties within Heap's limits");
        }
    }
});
