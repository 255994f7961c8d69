//! The tables of `docs/MAPPING.md`, rendered from the code that applies them.
//!
//! Why generated: a mapping table that is maintained by hand drifts from the mapping, and Heap
//! analysts build reports on the names it promises. `tests/transform_docs.rs` fails when the
//! document's generated sections differ from [`render`] (and rewrites them with
//! `UPDATE_GOLDEN=1`).

use super::names::{CUSTOM_EVENT_TYPE, EVENT_NAMES};
use super::read::{DropReason, MAX_DEPTH};
use super::user_properties::{PROFILE_FIELDS, user_properties_summary};
use crate::currents::catalogue::USER_DELETE_REQUEST;

/// A generated section: `<!-- generated:NAME -->` ... `<!-- /generated:NAME -->`.
#[derive(Debug)]
pub struct Section {
    pub name: &'static str,
    pub body: String,
}

/// Every generated section of `docs/MAPPING.md`.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "event-table",
            body: event_table(),
        },
        Section {
            name: "profile-table",
            body: profile_table(),
        },
        Section {
            name: "dropped-values",
            body: dropped_values_table(),
        },
    ]
}

/// Every known event type → friendly Heap event name and the user properties it sets.
pub fn event_table() -> String {
    let mut out = String::from(
        "| Currents `event_type` | Heap event (friendly naming) | user properties set |\n|---|---|---|\n",
    );
    for (event_type, name) in EVENT_NAMES {
        let name = if *event_type == CUSTOM_EVENT_TYPE {
            format!("the event's `properties.name` (`{name}` when missing or blank)")
        } else if *event_type == USER_DELETE_REQUEST {
            "never sent as a tracked event; handled as a deletion (see Deletions in the README)"
                .to_owned()
        } else {
            format!("`{name}`")
        };
        out.push_str(&format!(
            "| `{event_type}` | {name} | {} |\n",
            user_properties_summary(event_type)
        ));
    }
    out
}

/// `users.profile.Update` fields → Heap user property keys.
pub fn profile_table() -> String {
    let mut out =
        String::from("| `users.profile.Update` field | Heap user property |\n|---|---|\n");
    for (field, key) in PROFILE_FIELDS {
        out.push_str(&format!("| `properties.{field}` | `{key}` |\n"));
    }
    out.push_str("| `user.timezone` | `timezone` |\n");
    out
}

/// The values the mapping leaves out of an event, by reason (the `reason` label of
/// `currents_heap_properties_dropped_total`), with the depth limit.
pub fn dropped_values_table() -> String {
    let mut out = String::from("| reason | value left out |\n|---|---|\n");
    for reason in DropReason::ALL {
        out.push_str(&format!(
            "| `{}` | {} |\n",
            reason.as_str(),
            reason.describe()
        ));
    }
    out.push_str(&format!(
        "\nNesting limit: **{MAX_DEPTH}** levels of objects and arrays, `properties` (or `user`) \
         itself being level 1 (in `{{\"properties\": {{\"a\": {{\"b\": [1]}}}}}}` the array is at \
         level 3). An object or array emptied by what was left out is left out too (no `[[[]]]` \
         shells).\n"
    ));
    out
}

/// `doc` with every generated section replaced by its current rendering; `Err` names a section
/// whose markers are missing.
pub fn render(doc: &str) -> Result<String, String> {
    let mut out = doc.to_string();
    for section in sections() {
        let open = format!("<!-- generated:{} -->\n", section.name);
        let close = format!("<!-- /generated:{} -->", section.name);
        let start = out
            .find(&open)
            .ok_or_else(|| format!("missing marker {open:?}"))?
            + open.len();
        let end = out[start..]
            .find(&close)
            .ok_or_else(|| format!("missing marker {close:?}"))?
            + start;
        out.replace_range(start..end, &section.body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_a_row_per_entry() {
        assert_eq!(event_table().lines().count(), EVENT_NAMES.len() + 2);
        assert!(event_table().contains("| `users.messages.email.Send` | `Email Sent` | — |"));
        assert_eq!(profile_table().lines().count(), PROFILE_FIELDS.len() + 3);
        assert!(dropped_values_table().contains(&format!("**{MAX_DEPTH}** levels")));
    }

    #[test]
    fn render_replaces_between_markers() {
        let doc = "a\n<!-- generated:event-table -->\nold\n<!-- /generated:event-table -->\n\
                   <!-- generated:profile-table -->\n<!-- /generated:profile-table -->\n\
                   <!-- generated:dropped-values -->\n<!-- /generated:dropped-values -->\nz\n";
        let out = render(doc).unwrap();
        assert!(out.starts_with("a\n<!-- generated:event-table -->\n| Currents"));
        assert!(!out.contains("\nold\n"));
        assert!(out.ends_with("<!-- /generated:dropped-values -->\nz\n"));
        assert!(out.contains("| `too_deep` |"));
        assert_eq!(render(&out).unwrap(), out);
        assert!(render("no markers").is_err());
    }
}
