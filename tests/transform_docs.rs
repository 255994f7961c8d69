//! `docs/MAPPING.md` shows the mapping tables exactly as the code applies them.
//!
//! The generated sections (between `<!-- generated:NAME -->` markers) are rendered by
//! `currents_heap::transform::docs`; this test fails when the document differs, and
//! `UPDATE_GOLDEN=1 cargo test --test transform_docs` rewrites them.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::path::Path;

use currents_heap::currents::catalogue::{KNOWN_EVENT_TYPES, USER_DELETE_REQUEST};
use currents_heap::transform::{MappingOptions, docs, event_name};

/// docs/MAPPING.md and the README carry the same generated tables.
#[test]
fn mapping_doc_tables_match_the_code() {
    for file in ["docs/MAPPING.md", "README.md"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let doc = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let rendered = docs::render(&doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        assert!(
            doc == rendered,
            "{} is out of date; run `UPDATE_GOLDEN=1 cargo test --test transform_docs`",
            path.display()
        );
    }
}

/// Independent of the renderer: every known type's name, as `event_name` computes it, is in
/// the document's table row for that type.
#[test]
fn every_known_type_has_its_row() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/MAPPING.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let opts = MappingOptions::default();
    for event_type in KNOWN_EVENT_TYPES {
        let name = event_name(event_type, &opts);
        let row_start = format!("| `{event_type}` | ");
        let row = doc
            .lines()
            .find(|l| l.starts_with(&row_start))
            .unwrap_or_else(|| panic!("no row for {event_type}"));
        if *event_type == USER_DELETE_REQUEST {
            assert!(row.contains("never sent as a tracked event"), "{row}");
            continue;
        }
        assert!(
            row.contains(&format!("`{name}`")),
            "row of {event_type} does not name {name:?}: {row}"
        );
    }
}
