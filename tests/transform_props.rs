//! Property tests of the mapping: for arbitrary Currents events (long and multi-byte strings,
//! deep nesting, booleans, arrays of anything, nulls, reserved keys, huge numbers, arbitrary
//! event types and identities) and arbitrary settings, every item `map_event` returns satisfies
//! Heap's documented limits, no placeholder identity ever leaves, the result is deterministic,
//! and distinct event types never share a Heap event name.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use currents_heap::currents::MAX_ID_BYTES;
use currents_heap::currents::catalogue::KNOWN_EVENT_TYPES;
use currents_heap::heap::model::{
    MAX_BULK_ITEMS, TrackItem, UserPropertiesItem, is_placeholder_identity, validate_track_item,
    validate_user_properties_item,
};
use currents_heap::transform::names::{CUSTOM_EVENT_TYPE, EVENT_NAMES, FALLBACK_PREFIX};
use currents_heap::transform::{
    MappingOptions, SkipReason, event_name_for, map_event, transform_payload,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const PLACEHOLDERS: &[&str] = &["", " ", "null", "NULL", "Null", "undefined", " None ", "\t"];
const RESERVED_KEYS: &[&str] = &[
    "id",
    "ID",
    "Id",
    "iD",
    "user_id",
    "email",
    "Email",
    "EMAIL",
    "",
    "name",
    "custom_properties",
    "purchase_properties",
    "custom_attributes",
    "braze_event_type",
    "braze_user_id",
    "a.b",
];

/// 1030 characters made of two arbitrary (often multi-byte) characters switching at an
/// arbitrary point: exercises the 1023-character cut at every kind of boundary.
fn boundary_string() -> impl Strategy<Value = String> {
    (0usize..=1030, any::<char>(), any::<char>()).prop_map(|(n, a, b)| {
        std::iter::repeat_n(a, n)
            .chain(std::iter::repeat_n(b, 1030 - n))
            .collect()
    })
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z_.]{0,12}",
        1 => boundary_string(),
        1 => (1usize..3000, any::<char>()).prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        1 => prop::sample::select(PLACEHOLDERS).prop_map(str::to_string),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(RESERVED_KEYS).prop_map(str::to_string),
        3 => "[a-zA-Z_.]{0,10}",
        1 => any::<String>(),
        1 => (1000usize..1100).prop_map(|n| "k".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            9_007_199_254_740_991i64,
            9_007_199_254_740_992,
            -9_007_199_254_740_993,
            0,
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A linear nesting up to 140 levels (serde_json refuses more than 128).
fn deep_value() -> impl Strategy<Value = Value> {
    (1usize..140, key(), json_value())
        .prop_map(|(depth, k, leaf)| (0..depth).fold(leaf, |acc, _| json!({ k.clone(): acc })))
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KNOWN_EVENT_TYPES).prop_map(str::to_string),
        1 => any_string(),
        1 => Just(String::new()),
        1 => prop::sample::select(EVENT_NAMES.iter().map(|(_, n)| n.to_string()).collect::<Vec<_>>()),
    ]
}

fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => any_string().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => number(),
        1 => json_value(),
    ]
}

/// Properties with the fields the mapping looks at, plus arbitrary ones.
fn properties() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((key(), json_value()), 0..8),
        prop::option::of(id_value()),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![
            json_value().prop_map(|v| Value::String(v.to_string())),
            json_value()
        ]),
        prop::option::of(deep_value()),
    )
        .prop_map(|(fields, name, custom, channel, status, attrs, deep)| {
            let mut map: Map<String, Value> = fields.into_iter().collect();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    map.insert(k.to_string(), v);
                }
            };
            put("name", name);
            put("custom_properties", custom.clone());
            put("purchase_properties", custom);
            put("channel", channel.clone());
            put("subscription_group_id", channel.clone());
            put("subscription_status", status.clone());
            put("source", status.clone());
            put("email_address", status);
            put("custom_attributes", attrs);
            put("deep", deep);
            Value::Object(map)
        })
}

fn event() -> impl Strategy<Value = Value> {
    (
        event_type(),
        any_string(),
        prop_oneof![
            any::<i64>(),
            0i64..4_000_000_000,
            99_999_999_990i64..100_000_000_010
        ],
        prop::option::of(id_value()),
        prop::option::of(id_value()),
        prop::option::of(any_string()),
        properties(),
    )
        .prop_map(|(t, id, time, external, braze_id, tz, props)| {
            let mut user = Map::new();
            if let Some(x) = external {
                user.insert("external_user_id".into(), x);
            }
            if let Some(b) = braze_id {
                user.insert("user_id".into(), b);
            }
            if let Some(tz) = tz {
                user.insert("timezone".into(), Value::String(tz));
            }
            json!({"event_type": t, "id": id, "time": time, "user": user, "properties": props})
        })
}

/// An [`event`] ingest would accept: its `id` made non-empty and cut to [`MAX_ID_BYTES`] (on a
/// character boundary), the two structural rules `event` may break (`map_event` takes any id).
fn valid_event() -> impl Strategy<Value = Value> {
    event().prop_map(|mut e| {
        if let Some(Value::String(id)) = e.get_mut("id") {
            let mut end = id.len().min(MAX_ID_BYTES);
            while !id.is_char_boundary(end) {
                end -= 1;
            }
            id.truncate(end);
            if id.is_empty() {
                id.push('x');
            }
        }
        e
    })
}

fn options() -> impl Strategy<Value = MappingOptions> {
    (
        prop::sample::select(vec!["friendly", "raw"]),
        prop_oneof![
            Just(String::new()),
            Just("braze-".to_string()),
            "\\PC{0,128}"
        ],
        prop::sample::select(vec!["skip", "synthetic_user_id"]),
        prop::sample::select(vec![vec![], vec!["users.*".to_string()]]),
        prop::sample::select(vec![vec![], vec!["*.Abort".to_string()]]),
        prop::collection::vec(key(), 0..3),
    )
        .prop_map(|(naming, prefix, anonymous, include, exclude, drop)| {
            MappingOptions::from_parts(
                Some(naming),
                Some(&prefix),
                Some(anonymous),
                &include,
                &exclude,
                &drop,
            )
            .expect("generated settings are valid")
        })
}

/// C0/C1 controls, DEL, and the format / bidi characters most used to disguise text (written
/// out here, independently of the mapping's own list).
fn has_control(s: &str) -> bool {
    s.chars().any(|c| {
        let n = c as u32;
        n < 0x20
            || (0x7f..=0x9f).contains(&n)
            || (0x200b..=0x200f).contains(&n)
            || (0x202a..=0x202e).contains(&n)
            || (0x2066..=0x2069).contains(&n)
            || n == 0xfeff
            || n == 0x2028
            || n == 0x2029
    })
}

fn check_track(item: &TrackItem) -> Result<(), TestCaseError> {
    prop_assert_eq!(validate_track_item(item), Ok(()));
    // The Heap stand-in's own rules (written separately from heap-api.md) agree.
    let sent = serde_json::to_value(item).unwrap();
    if let Err(e) = currents_heap_testkit::heap::check_track_item(&sent) {
        return Err(TestCaseError::fail(format!(
            "the stand-in refuses {sent}: {e}"
        )));
    }
    if let Some(identity) = &item.identity {
        prop_assert!(
            !is_placeholder_identity(identity),
            "placeholder {identity:?}"
        );
        prop_assert!(!has_control(identity), "control character in {identity:?}");
    }
    Ok(())
}

fn check_users(item: &UserPropertiesItem) -> Result<(), TestCaseError> {
    prop_assert_eq!(validate_user_properties_item(item), Ok(()));
    let sent = serde_json::to_value(item).unwrap();
    if let Err(e) = currents_heap_testkit::heap::check_user_properties_item(&sent) {
        return Err(TestCaseError::fail(format!(
            "the stand-in refuses {sent}: {e}"
        )));
    }
    prop_assert!(!is_placeholder_identity(&item.identity));
    prop_assert!(!has_control(&item.identity));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mapped_items_are_always_valid(event in event(), opts in options()) {
        let raw = event.to_string();
        let first = map_event(raw.as_bytes(), &opts);
        prop_assert_eq!(&first, &map_event(raw.as_bytes(), &opts), "not deterministic");
        match first {
            Ok(mapped) => {
                check_track(&mapped.track)?;
                let id = event["id"].as_str().unwrap();
                if id.len() <= 255 && !id.starts_with("sha256:") {
                    prop_assert_eq!(&mapped.track.idempotency_key, id);
                } else {
                    prop_assert!(mapped.track.idempotency_key.starts_with("sha256:"));
                    prop_assert_eq!(mapped.track.idempotency_key.len(), 71);
                }
                prop_assert!(mapped.track.event.starts_with(opts.prefix()));
                match (&mapped.track.identity, event["user"].get("external_user_id")) {
                    (Some(identity), Some(Value::String(x))) => prop_assert_eq!(identity, x),
                    (Some(_), other) => prop_assert!(false, "identity from {other:?}"),
                    (None, _) => prop_assert_eq!(opts.anonymous().as_str(), "synthetic_user_id"),
                }
                for key in mapped.track.properties.keys() {
                    prop_assert!(!opts.drops(key), "dropped key {key:?} sent");
                }
                if let Some(users) = &mapped.user_properties {
                    check_users(users)?;
                    prop_assert_eq!(Some(&users.identity), mapped.track.identity.as_ref());
                    prop_assert!(!users.properties.is_empty());
                }
            }
            Err(SkipReason::Unparseable) => {
                let structurally_ok = event["id"].as_str().is_some_and(|s| !s.is_empty())
                    && event["event_type"].as_str().is_some_and(|s| !s.is_empty())
                    && event["time"].is_i64()
                    && serde_json::from_str::<Value>(&raw).is_ok();
                prop_assert!(!structurally_ok, "well-formed event called unparseable");
            }
            Err(SkipReason::Excluded) => {
                prop_assert!(!opts.includes(event["event_type"].as_str().unwrap()));
            }
            Err(SkipReason::Anonymous | SkipReason::InvalidIdentity) => {
                let usable = event["user"]["external_user_id"].as_str().is_some_and(|x| {
                    !is_placeholder_identity(x) && x.chars().count() <= 255 && !has_control(x)
                });
                prop_assert!(!usable, "usable identity skipped");
            }
            Err(SkipReason::UserDeletion) => {
                prop_assert_eq!(event["event_type"].as_str(), Some("users.UserDeleteRequest"));
            }
            Err(reason @ (SkipReason::DeletedUser | SkipReason::StaleUserProperty)) => {
                prop_assert!(false, "the mapping never says {reason}")
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), opts in options()) {
        let _ = map_event(&bytes, &opts);
        let _ = transform_payload(&bytes, &opts, "11", 1000, 4 << 20);
    }

    #[test]
    fn payload_requests_are_valid_and_chunked(events in prop::collection::vec(valid_event(), 0..12), opts in options()) {
        let payload = Value::Array(events).to_string();
        let out = transform_payload(payload.as_bytes(), &opts, "11", 1000, 4 << 20)
            .map_err(|e| TestCaseError::fail(format!("a payload of valid events was refused: {e}")))?;
        for request in &out.requests {
            let body = &request["body"];
            prop_assert_eq!(&body["app_id"], "11");
            match request["endpoint"].as_str() {
                Some("/api/track") => {
                    let items: Vec<TrackItem> = serde_json::from_value(body["events"].clone()).unwrap();
                    prop_assert!(!items.is_empty() && items.len() <= MAX_BULK_ITEMS);
                    for item in &items {
                        check_track(item)?;
                    }
                }
                Some("/api/add_user_properties") => {
                    let items: Vec<UserPropertiesItem> = serde_json::from_value(body["users"].clone()).unwrap();
                    prop_assert!(!items.is_empty() && items.len() <= MAX_BULK_ITEMS);
                    for item in &items {
                        check_users(item)?;
                    }
                }
                other => prop_assert!(false, "unexpected endpoint {other:?}"),
            }
        }
    }

    /// Distinct event types never share a name, whatever the custom event names are.
    #[test]
    fn distinct_types_never_share_a_name(
        a in event_type(), b in event_type(),
        name_a in name_candidate(), name_b in name_candidate(),
        opts in options(),
    ) {
        let a = if a.len() % 3 == 0 { CUSTOM_EVENT_TYPE.to_string() } else { a };
        prop_assume!(a != b);
        let na = event_name_for(&a, name_a.as_deref(), &opts);
        let nb = event_name_for(&b, name_b.as_deref(), &opts);
        prop_assert_ne!(na, nb, "{:?} and {:?} collide", a, b);
    }
}

/// JSON text no `serde_json::Value` holds: out-of-range numbers, lone surrogates, nesting far
/// beyond serde_json's recursion limit (and beyond the mapping's depth limit).
fn unreadable_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1e999",
            "-1e400",
            "2E+308",
            "\"\\ud800\"",
            "\"a\\udc00\""
        ])
        .prop_map(str::to_string),
        (33usize..3000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (33usize..3000).prop_map(|n| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n))),
        (1usize..20).prop_map(|n| format!("[1,{}\"x\"]", "1e999,".repeat(n))),
    ]
}

/// The key the unreadable value is put under (never generated by `key()` in practice).
const ODD_KEY: &str = "\u{1}unreadable";

/// `event` with `"<ODD_KEY>": <bad>` added to its `properties` object, as text.
fn with_unreadable_property(event: &Value, bad: &str) -> Option<String> {
    let mut e = event.clone();
    let props = e.as_object_mut()?.remove("properties")?;
    let props = props.as_object()?;
    let mut text = e.to_string();
    text.pop();
    let rest = Value::Object(props.clone()).to_string();
    let key = Value::String(ODD_KEY.into()).to_string();
    let sep = if props.is_empty() { "" } else { "," };
    Some(format!(
        r#"{text},"properties":{{{key}:{bad}{sep}{}}}"#,
        &rest[1..]
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// One value Heap cannot take, anywhere among an event's properties, costs that value only:
    /// the event maps exactly as it does without it, with one more dropped value.
    #[test]
    fn an_unreadable_value_costs_only_itself(event in event(), opts in options(), bad in unreadable_value()) {
        let odd = with_unreadable_property(&event, &bad).expect("event() has a properties object");
        let plain = map_event(event.to_string().as_bytes(), &opts);
        let with_odd = map_event(odd.as_bytes(), &opts);
        match (plain, with_odd) {
            (Ok(plain), Ok(with_odd)) => {
                // An array keeps its readable elements (`[1,1e999,"x"]` → `1||x`).
                let mut track = with_odd.track.clone();
                if let Some(kept) = track.properties.remove(ODD_KEY) {
                    prop_assert!(bad.starts_with("[1,"), "{kept:?} kept from {bad}");
                }
                prop_assert_eq!(&plain.track, &track);
                prop_assert_eq!(&plain.user_properties, &with_odd.user_properties);
                let extra: Vec<_> = with_odd
                    .dropped
                    .iter()
                    .filter(|d| d.path.starts_with(&format!("properties.{ODD_KEY}")))
                    .collect();
                prop_assert!(!extra.is_empty(), "{:?}", with_odd.dropped);
                prop_assert_eq!(with_odd.dropped.len(), plain.dropped.len() + extra.len());
            }
            (plain, with_odd) => prop_assert_eq!(plain.err(), with_odd.err()),
        }
    }
}

/// Custom event names that try hard to collide: table names, fallback names, escapes.
fn name_candidate() -> impl Strategy<Value = Option<String>> {
    let table: Vec<String> = EVENT_NAMES.iter().map(|(_, n)| n.to_string()).collect();
    prop::option::of(prop_oneof![
        prop::sample::select(table.clone()),
        prop::sample::select(KNOWN_EVENT_TYPES).prop_map(|t| format!("{FALLBACK_PREFIX}{t}")),
        prop::sample::select(table).prop_map(|n| format!("Custom Event: {n}")),
        any_string(),
    ])
}

#[test]
fn every_known_type_maps_with_every_reserved_key_and_placeholder() {
    for event_type in KNOWN_EVENT_TYPES {
        let props: Map<String, Value> = RESERVED_KEYS
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    json!({"nested": [true, null, 1e300], "x": "é".repeat(1100)}),
                )
            })
            .collect();
        let event = json!({"event_type": event_type, "id": "i", "time": -5,
            "user": {"external_user_id": "alice", "user_id": "b"}, "properties": props});
        if *event_type == "users.UserDeleteRequest" {
            // A deletion, never a tracked event.
            assert_eq!(
                map_event(event.to_string().as_bytes(), &MappingOptions::default()),
                Err(SkipReason::UserDeletion)
            );
            continue;
        }
        let mapped = map_event(event.to_string().as_bytes(), &MappingOptions::default()).unwrap();
        validate_track_item(&mapped.track).unwrap();
        assert_eq!(mapped.track.timestamp, "1970-01-01T00:00:00Z");
        for placeholder in PLACEHOLDERS {
            let mut e = event.clone();
            e["user"]["external_user_id"] = json!(placeholder);
            assert_eq!(
                map_event(e.to_string().as_bytes(), &MappingOptions::default()),
                Err(SkipReason::InvalidIdentity)
            );
        }
    }
}

/// An identity is irreversible in Heap: one with a NUL, an ESC, a right-to-left override or
/// another invisible control or format character is never sent, neither on a track item nor as
/// a user-properties target; with `synthetic_user_id` the event goes under the Braze user's
/// synthetic Heap `user_id` instead, like any placeholder identity.
#[test]
fn identities_with_control_characters_are_never_sent() {
    let synthetic =
        MappingOptions::from_parts(None, None, Some("synthetic_user_id"), &[], &[], &[]).unwrap();
    for identity in [
        "user\u{0}1",
        "\u{1b}[2Jwiped",
        "admin\u{202E}txt.exe",
        "\u{2067}rtl\u{2069}",
        "c1\u{9b}",
        "zw\u{200D}j",
        "\u{FEFF}",
        "tag\u{E0061}",
    ] {
        for event_type in [
            "users.messages.email.Send",
            "users.behaviors.InstallAttribution",
        ] {
            let event = json!({"event_type": event_type, "id": "i", "time": 1,
                "user": {"external_user_id": identity, "user_id": "b-1"},
                "properties": {"source": "ads"}});
            let raw = event.to_string();
            assert_eq!(
                map_event(raw.as_bytes(), &MappingOptions::default()),
                Err(SkipReason::InvalidIdentity),
                "{identity:?} in {event_type}"
            );
            let mapped = map_event(raw.as_bytes(), &synthetic).unwrap();
            assert_eq!(mapped.track.identity, None, "{identity:?}");
            assert!(mapped.track.user_id.is_some());
            assert_eq!(mapped.user_properties, None, "{identity:?}");
        }
    }
}

/// A 1 MB `id` must not become a 1 MB `idempotency_key`: ids over 255 bytes are sent as
/// `sha256:<hex>`, the same for every re-send of the event; `braze_event_id` keeps the id, cut
/// to 1023 characters like any string.
#[test]
fn long_event_ids_become_bounded_stable_idempotency_keys() {
    let key_of = |id: &str| {
        let event = json!({"event_type": "users.messages.email.Send", "id": id, "time": 1,
            "user": {"external_user_id": "alice"}});
        map_event(event.to_string().as_bytes(), &MappingOptions::default()).unwrap()
    };
    let uuid = "f47ac10b-58cc-4372-a567-0e02b2c3d479";
    assert_eq!(key_of(uuid).track.idempotency_key, uuid);
    let at_limit = "x".repeat(255);
    assert_eq!(key_of(&at_limit).track.idempotency_key, at_limit);
    for long in ["x".repeat(256), "y".repeat(1024), "z".repeat(1 << 20)] {
        let mapped = key_of(&long);
        let key = &mapped.track.idempotency_key;
        assert!(key.starts_with("sha256:"), "{key}");
        assert_eq!(key.len(), "sha256:".len() + 64);
        assert!(
            key["sha256:".len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_eq!(key, &key_of(&long).track.idempotency_key, "stable");
        let braze_id = serde_json::to_value(&mapped.track.properties["braze_event_id"]).unwrap();
        assert_eq!(
            braze_id.as_str().unwrap().chars().count(),
            long.len().min(1023)
        );
    }
    assert_ne!(
        key_of(&"x".repeat(300)).track.idempotency_key,
        key_of(&"x".repeat(301)).track.idempotency_key
    );
}
