//! Golden tests: every Braze Custom HTTP sample event (`../shared/currents-samples/custom-http`,
//! read in place, never copied into this repository) mapped with the default options must equal
//! `fixtures/golden/<event_type>.json`, so any change to what reaches Heap shows up as a diff
//! in review.
//!
//! Regenerate after an intended mapping change with
//! `UPDATE_GOLDEN=1 cargo test --test transform_golden`, then read the diff.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::io::Write;
use std::path::{Path, PathBuf};

use currents_heap::heap::model::{
    is_placeholder_identity, validate_track_item, validate_user_properties_item,
};
use currents_heap::transform::{MappingOptions, map_event};
use serde_json::{Value, json};

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/currents-samples/custom-http")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden")
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_json(&path, out);
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
}

/// `(event_type, raw bytes)` of every sample, or `None` (with a note) without the folder.
fn samples() -> Option<Vec<(String, Vec<u8>)>> {
    let dir = samples_dir();
    if !dir.is_dir() {
        // CI always has `shared/` beside the clone: there a missing folder is a failure, not
        // a silent skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "{} does not exist (CI is set, so the golden mapping tests may not be skipped)",
            dir.display()
        );
        // Written to the process's stderr, not with `eprintln!`, which the test harness
        // captures (and shows only for a failing test): the skip must show in the output.
        let _ = writeln!(
            std::io::stderr(),
            "note: {} does not exist; skipping the golden mapping tests",
            dir.display()
        );
        return None;
    }
    let mut files = Vec::new();
    collect_json(&dir, &mut files);
    assert!(!files.is_empty(), "no samples under {}", dir.display());
    let samples = files
        .into_iter()
        .map(|path| {
            let raw = std::fs::read(&path).unwrap();
            let event: Value = serde_json::from_slice(&raw)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            let event_type = event["event_type"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no event_type", path.display()))
                .to_string();
            (event_type, raw)
        })
        .collect();
    Some(samples)
}

fn mapped_json(raw: &[u8], opts: &MappingOptions) -> Value {
    match map_event(raw, opts) {
        Ok(mapped) => serde_json::to_value(mapped).unwrap(),
        Err(reason) => json!({ "skipped": reason.as_str() }),
    }
}

#[test]
fn samples_match_their_golden_files() {
    let Some(samples) = samples() else { return };
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dir = golden_dir();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut mismatches = Vec::new();
    let mut expected_files = Vec::new();
    for (event_type, raw) in &samples {
        let file = dir.join(format!("{event_type}.json"));
        assert!(
            !expected_files.contains(&file),
            "two samples of {event_type}"
        );
        expected_files.push(file.clone());
        let actual = serde_json::to_string_pretty(&mapped_json(raw, &MappingOptions::default()))
            .unwrap()
            + "\n";
        if update {
            std::fs::write(&file, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(golden) if golden == actual => {}
            Ok(golden) => mismatches.push(format!(
                "{}: differs\n--- golden\n{golden}\n+++ actual\n{actual}",
                file.display()
            )),
            Err(e) => mismatches.push(format!("{}: {e}", file.display())),
        }
    }
    // A golden file without a sample is stale (a sample was renamed or removed).
    let mut on_disk = Vec::new();
    collect_json(&dir, &mut on_disk);
    for file in on_disk {
        if !expected_files.contains(&file) {
            if update {
                std::fs::remove_file(&file).unwrap();
            } else {
                mismatches.push(format!("{}: no sample maps to it", file.display()));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden mismatch(es); if the change is intended, run \
         `UPDATE_GOLDEN=1 cargo test --test transform_golden` and review the diff:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Every sample maps to valid Heap items under every combination of options.
#[test]
fn samples_map_to_valid_items_under_every_option() {
    let Some(samples) = samples() else { return };
    for naming in ["friendly", "raw"] {
        for prefix in ["", "braze-"] {
            for anonymous in ["skip", "synthetic_user_id"] {
                let opts = MappingOptions::from_parts(
                    Some(naming),
                    Some(prefix),
                    Some(anonymous),
                    &[],
                    &[],
                    &["email_address".to_string()],
                )
                .unwrap();
                for (event_type, raw) in &samples {
                    let mapped = map_event(raw, &opts)
                        .unwrap_or_else(|r| panic!("{event_type}: skipped ({r})"));
                    validate_track_item(&mapped.track)
                        .unwrap_or_else(|e| panic!("{event_type}: {e}"));
                    assert!(mapped.track.event.starts_with(prefix));
                    assert!(!mapped.track.properties.contains_key("email_address"));
                    if let Some(up) = &mapped.user_properties {
                        validate_user_properties_item(up)
                            .unwrap_or_else(|e| panic!("{event_type}: {e}"));
                        assert!(!is_placeholder_identity(&up.identity));
                        assert!(
                            !up.properties.contains_key("email"),
                            "dropped via email_address"
                        );
                    }
                }
            }
        }
    }
}

/// Without an `external_user_id`, every sample is anonymous: skipped by default, sent with a
/// synthetic `user_id` (and no user properties) when configured.
#[test]
fn anonymous_samples() {
    let Some(samples) = samples() else { return };
    let synthetic =
        MappingOptions::from_parts(None, None, Some("synthetic_user_id"), &[], &[], &[]).unwrap();
    for (event_type, raw) in &samples {
        let mut event: Value = serde_json::from_slice(raw).unwrap();
        event["user"]
            .as_object_mut()
            .unwrap()
            .remove("external_user_id");
        let raw = event.to_string();
        assert_eq!(
            mapped_json(raw.as_bytes(), &MappingOptions::default()),
            json!({"skipped": "anonymous"}),
            "{event_type}"
        );
        let mapped = map_event(raw.as_bytes(), &synthetic).unwrap();
        assert!(mapped.track.identity.is_none() && mapped.track.user_id.is_some());
        assert!(mapped.user_properties.is_none());
        validate_track_item(&mapped.track).unwrap();
    }
}
