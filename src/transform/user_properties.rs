//! The Heap user properties some Currents events set (bulk `add_user_properties`).
//!
//! Why: in Heap, "who is subscribed to email" or "which users came from this install source" are
//! user-level questions, answered from user properties, not by scanning event history. Braze
//! knows those facts and Currents tells us when they change, so the mapping writes them onto the
//! Heap user. Only identified events do this: Heap user properties can only target an identity.
//!
//! Keys are fixed by this module (never taken from the event, except the channel, the
//! subscription group id and custom attribute names), values follow the same coercions as event
//! properties (`properties.rs`). A user property is left out when its Heap key or the Currents
//! property it comes from is on the drop list, so dropping `email_address` also keeps the email
//! out of the user profile.

use serde_json::{Map, Value};

use super::options::MappingOptions;
use super::properties::{flatten, key_fits, leaf_value};
use crate::heap::model::{Properties, PropertyValue};

/// `users.profile.Update` fields → Heap user property keys. `email` is Heap's built-in Email
/// property (it must be lowercase); the other keys follow Heap's snake_case convention.
pub const PROFILE_FIELDS: &[(&str, &str)] = &[
    ("first_name", "first_name"),
    ("last_name", "last_name"),
    ("email_address", "email"),
    ("phone_number", "phone"),
    ("home_city", "city"),
    ("country", "country"),
    ("language", "language"),
    ("gender", "gender"),
    ("dob", "date_of_birth"),
    ("archived", "braze_archived"),
];

/// The event types that set user properties, with what they set (for the docs table).
pub const USER_PROPERTY_EVENTS: &[(&str, &str)] = &[
    (
        "users.behaviors.InstallAttribution",
        "`braze_install_source` ← `source`",
    ),
    (
        "users.behaviors.subscription.GlobalStateChange",
        "`braze_<channel>_subscription_status` ← `subscription_status`",
    ),
    (
        "users.behaviors.subscriptiongroup.StateChange",
        "`braze_subscription_group_<subscription_group_id>` ← `subscription_status`",
    ),
    (
        "users.profile.Update",
        "profile fields (see below), `timezone` ← `user.timezone`, and every custom attribute",
    ),
];

/// What the docs table shows for an event type: its user properties, or `—`.
pub fn user_properties_summary(event_type: &str) -> &'static str {
    USER_PROPERTY_EVENTS
        .iter()
        .find(|(t, _)| *t == event_type)
        .map_or("—", |(_, s)| s)
}

/// The user properties an identified event sets; empty for most types.
pub fn user_properties(
    event_type: &str,
    user: Option<&Map<String, Value>>,
    properties: Option<&Map<String, Value>>,
    opts: &MappingOptions,
) -> Properties {
    let mut out = Properties::new();
    let empty = Map::new();
    let props = properties.unwrap_or(&empty);
    let field = |name: &str| props.get(name).and_then(leaf_value);
    match event_type {
        "users.behaviors.InstallAttribution" => {
            if let Some(v) = field("source") {
                set(&mut out, "braze_install_source", "source", v, opts);
            }
        }
        "users.behaviors.subscription.GlobalStateChange" => {
            let channel = props
                .get("channel")
                .and_then(Value::as_str)
                .and_then(channel_slug);
            if let (Some(channel), Some(v)) = (channel, field("subscription_status")) {
                let key = format!("braze_{channel}_subscription_status");
                set(&mut out, &key, "subscription_status", v, opts);
            }
        }
        "users.behaviors.subscriptiongroup.StateChange" => {
            let group = props
                .get("subscription_group_id")
                .and_then(Value::as_str)
                .filter(|g| !g.trim().is_empty());
            if let (Some(group), Some(v)) = (group, field("subscription_status")) {
                let key = format!("braze_subscription_group_{group}");
                set(&mut out, &key, "subscription_status", v, opts);
            }
        }
        "users.profile.Update" => {
            for (source, key) in PROFILE_FIELDS {
                if let Some(v) = field(source) {
                    set(&mut out, key, source, v, opts);
                }
            }
            if let Some(v) = user.and_then(|u| u.get("timezone")).and_then(leaf_value) {
                set(&mut out, "timezone", "timezone", v, opts);
            }
            custom_attributes(&mut out, props.get("custom_attributes"), opts);
        }
        _ => {}
    }
    out
}

/// `custom_attributes` is a JSON string (or, defensively, an object) of the attributes that
/// changed; each becomes a user property under its own (flattened) name, after the standard
/// fields, which win on a clash.
fn custom_attributes(out: &mut Properties, raw: Option<&Value>, opts: &MappingOptions) {
    let parsed;
    let attributes = match raw {
        Some(Value::Object(map)) => map,
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(map)) => {
                parsed = map;
                &parsed
            }
            _ => return,
        },
        _ => return,
    };
    let mut pairs = Vec::new();
    for (k, v) in attributes {
        flatten(k, v, &mut pairs);
    }
    for (key, value) in pairs {
        // `Email` or `EMAIL` would create a second, non-built-in email property.
        let key = if key.eq_ignore_ascii_case("email") {
            "email".to_string()
        } else {
            key
        };
        set(out, &key, "custom_attributes", value, opts);
    }
}

/// A channel name as a key fragment: lowercase, anything but letters and digits as `_`.
fn channel_slug(channel: &str) -> Option<String> {
    let channel = channel.trim();
    (!channel.is_empty()).then(|| {
        channel
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| if c.is_alphanumeric() { c } else { '_' })
            .collect()
    })
}

/// Sets `key` unless it is unusable, reserved (`id` any case, `user_id`), dropped, or taken.
fn set(out: &mut Properties, key: &str, source: &str, value: PropertyValue, opts: &MappingOptions) {
    let reserved = key.eq_ignore_ascii_case("id") || key == "user_id";
    if !key_fits(key) || reserved || opts.drops(key) || opts.drops(source) {
        return;
    }
    out.entry(key.to_string()).or_insert(value);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(event_type: &str, event: Value, drop: &[&str]) -> Value {
        let drop: Vec<String> = drop.iter().map(|s| s.to_string()).collect();
        let opts = MappingOptions::from_parts(None, None, None, &[], &[], &drop).unwrap();
        let out = user_properties(
            event_type,
            event.get("user").and_then(Value::as_object),
            event.get("properties").and_then(Value::as_object),
            &opts,
        );
        serde_json::to_value(out).unwrap()
    }

    #[test]
    fn subscriptions() {
        let global = "users.behaviors.subscription.GlobalStateChange";
        let group = "users.behaviors.subscriptiongroup.StateChange";
        let long_group = "g".repeat(1000);
        let cases = [
            (
                global,
                json!({"channel": "email", "subscription_status": "Opted In"}),
                json!({"braze_email_subscription_status": "Opted In"}),
            ),
            (
                global,
                json!({"channel": " Push Notification ", "subscription_status": "Subscribed"}),
                json!({"braze_push_notification_subscription_status": "Subscribed"}),
            ),
            (
                global,
                json!({"subscription_status": "Subscribed"}),
                json!({}),
            ),
            (
                global,
                json!({"channel": "sms", "subscription_status": null}),
                json!({}),
            ),
            (
                group,
                json!({"subscription_group_id": "g-1", "subscription_status": "Unsubscribed"}),
                json!({"braze_subscription_group_g-1": "Unsubscribed"}),
            ),
            // A key over 1023 characters is dropped.
            (
                group,
                json!({"subscription_group_id": long_group, "subscription_status": "Subscribed"}),
                json!({}),
            ),
            (
                group,
                json!({"subscription_status": "Subscribed"}),
                json!({}),
            ),
        ];
        for (event_type, properties, expected) in cases {
            let got = run(event_type, json!({ "properties": properties.clone() }), &[]);
            assert_eq!(got, expected, "{event_type} {properties}");
        }
    }

    #[test]
    fn install_attribution() {
        let t = "users.behaviors.InstallAttribution";
        assert_eq!(
            run(t, json!({"properties": {"source": "google"}}), &[]),
            json!({"braze_install_source": "google"})
        );
        assert_eq!(
            run(t, json!({"properties": {"source": "google"}}), &["source"]),
            json!({})
        );
    }

    #[test]
    fn profile_update() {
        let event = json!({
            "user": {"timezone": "Europe/Paris", "user_id": "b"},
            "properties": {
                "first_name": "Ada", "last_name": "Lovelace", "email_address": "Ada@Example.com",
                "phone_number": "+441234", "home_city": "London", "country": "GB", "language": "en",
                "gender": "F", "dob": "1815-12-10", "archived": false, "update_source": "api",
                "time_ms": 1, "app_group_id": "g",
                "custom_attributes": "{\"plan\":\"pro\",\"Email\":\"other@x\",\"id\":1,\"ID\":2,\"user_id\":3,\"first_name\":\"Shadow\",\"prefs\":{\"news\":true},\"tags\":[\"a\",\"b\"]}"
            }
        });
        let t = "users.profile.Update";
        assert_eq!(
            run(t, event.clone(), &[]),
            json!({
                "first_name": "Ada", "last_name": "Lovelace", "email": "Ada@Example.com",
                "phone": "+441234", "city": "London", "country": "GB", "language": "en",
                "gender": "F", "date_of_birth": "1815-12-10", "braze_archived": "false",
                "timezone": "Europe/Paris", "plan": "pro", "prefs.news": "true", "tags": "a||b"
            })
        );
        // Dropping the Currents field keeps its value out of the profile too; the custom
        // `Email` attribute then takes the built-in key.
        let dropped = run(t, event.clone(), &["email_address", "phone", "tags"]);
        assert_eq!(dropped["email"], json!("other@x"));
        assert!(dropped.get("phone").is_none() && dropped.get("tags").is_none());
        let none = run(t, event, &["email_address", "custom_attributes"]);
        assert!(none.get("email").is_none() && none.get("plan").is_none());
        assert_eq!(
            run(
                t,
                json!({"properties": {"custom_attributes": "not json"}}),
                &[]
            ),
            json!({})
        );
        assert_eq!(
            run(
                t,
                json!({"properties": {"custom_attributes": {"a": 1}}}),
                &[]
            ),
            json!({"a": 1})
        );
    }

    #[test]
    fn other_types_set_nothing() {
        let event = json!({"properties": {"source": "x", "channel": "email", "subscription_status": "Subscribed"}});
        assert_eq!(run("users.messages.email.Send", event, &[]), json!({}));
        assert_eq!(user_properties_summary("users.messages.email.Send"), "—");
        assert!(user_properties_summary("users.profile.Update").contains("custom attribute"));
    }
}
