//! product.md §3, the structural check: a body that is not a Currents batch, or any event that
//! is not an object with a string `id`, a string `event_type` and an integer `time`, makes the
//! whole request a 400 naming each bad index — and nothing of that request is stored, not even
//! its valid events (Braze re-sends each of them alone, which must then be accepted).

use http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

#[track_caller]
fn assert_malformed(reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "body: {}",
        reply.text()
    );
    let body = reply.json();
    assert_eq!(body["error"], "malformed");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a 400 says why: {body}"
    );
}

/// Posts `events` (with the valid siblings first and last) and checks the 400 names exactly
/// the indexes of `bad`, each with a reason mentioning `field`; then shows that the valid
/// siblings were neither stored nor remembered as seen.
async fn assert_rejected_event(bad: Value, field: &str) {
    let app = spawn_app().await;
    let before = event("sibling-before", "users.messages.email.Send");
    let after = event("sibling-after", "users.behaviors.CustomEvent");
    let body = batch(&[before.clone(), bad.clone(), after.clone(), bad]);

    let reply = app.post_authed(body).await;

    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "body: {}",
        reply.text()
    );
    let body = reply.json();
    assert_eq!(body["error"], "invalid_events");
    assert_eq!(body["event_count"], 4);
    assert_eq!(body["invalid_count"], 2);
    let listed = body["invalid_events"]
        .as_array()
        .expect("a list of bad events");
    let indexes: Vec<u64> = listed
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 3], "{body}");
    for e in listed {
        let reason = e["reason"].as_str().expect("a reason per bad event");
        assert!(
            reason.contains(field),
            "reason {reason:?} should name {field:?}"
        );
    }
    assert_eq!(
        app.stored_count(),
        0,
        "nothing from a 400 request is stored"
    );
    assert_eq!(
        app.metric(r#"currents_heap_events_rejected_total{reason="invalid_event"}"#)
            .await,
        2.0
    );

    // Braze's reaction to a 400: each event again, alone. The valid ones must now be accepted
    // as new events (not as duplicates of a half-stored first attempt).
    app.post_authed(batch(&[before]))
        .await
        .assert_accepted(1, 0);
    app.post_authed(batch(&[after])).await.assert_accepted(1, 0);
    assert_eq!(
        app.stored_ids(),
        id_set(["sibling-before", "sibling-after"])
    );
}

fn without(field: &str) -> Value {
    let mut e = event("x", "users.messages.email.Send");
    e.as_object_mut().unwrap().remove(field);
    e
}

fn with(field: &str, value: Value) -> Value {
    let mut e = event("x", "users.messages.email.Send");
    e[field] = value;
    e
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_with_400() {
    let app = spawn_app().await;
    for body in [
        "events",
        "{\"events\":[",
        "{\"events\":[{\"id\":\"a\"}]} trailing",
        "\u{0}",
    ] {
        assert_malformed(&app.post_authed(body).await);
    }
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_json_array_instead_of_the_envelope_is_refused_with_400() {
    let app = spawn_app().await;
    let events = batch(&email_sends("arr", 2));
    let array =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&events).unwrap()["events"]).unwrap();

    assert_malformed(&app.post_authed(array).await);
    assert_malformed(&app.post_authed("[]").await);
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn an_object_without_an_events_array_is_refused_with_400() {
    let app = spawn_app().await;
    let bare_event = serde_json::to_vec(&event("bare", "users.messages.email.Send")).unwrap();

    assert_malformed(&app.post_authed(bare_event).await);
    for body in [
        r#"{"events":{}}"#,
        r#"{"events":"[]"}"#,
        r#"{"events":null}"#,
        r#"{"evnets":[]}"#,
        r#""events""#,
        "42",
        "null",
    ] {
        assert_malformed(&app.post_authed(body).await);
    }
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn an_event_that_is_not_an_object_is_named_in_the_400() {
    assert_rejected_event(json!("users.messages.email.Send"), "object").await;
    assert_rejected_event(json!(null), "object").await;
    assert_rejected_event(json!([1, 2]), "object").await;
}

#[tokio::test]
async fn an_event_without_an_id_is_named_in_the_400() {
    assert_rejected_event(without("id"), "id").await;
    assert_rejected_event(with("id", Value::Null), "id").await;
}

#[tokio::test]
async fn an_event_whose_id_is_not_a_string_is_named_in_the_400() {
    assert_rejected_event(with("id", json!(12345)), "id").await;
    assert_rejected_event(with("id", json!({"uuid": "x"})), "id").await;
}

#[tokio::test]
async fn an_event_without_an_event_type_is_named_in_the_400() {
    assert_rejected_event(without("event_type"), "event_type").await;
}

#[tokio::test]
async fn an_event_whose_event_type_is_not_a_string_is_named_in_the_400() {
    assert_rejected_event(
        with("event_type", json!(["users.messages.email.Send"])),
        "event_type",
    )
    .await;
    assert_rejected_event(with("event_type", json!(7)), "event_type").await;
}

#[tokio::test]
async fn an_event_without_a_time_is_named_in_the_400() {
    assert_rejected_event(without("time"), "time").await;
    assert_rejected_event(with("time", Value::Null), "time").await;
}

#[tokio::test]
async fn an_event_whose_time_is_not_an_integer_is_named_in_the_400() {
    assert_rejected_event(with("time", json!(1_780_000_000.5)), "time").await;
    assert_rejected_event(with("time", json!("1780000000")), "time").await;
    assert_rejected_event(with("time", json!(true)), "time").await;
}

#[tokio::test]
async fn every_bad_event_of_a_batch_is_named_by_its_index() {
    let app = spawn_app().await;
    let events = fixture_events("invalid_events.json");

    let reply = app.post_authed(fixture("invalid_events.json")).await;

    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "body: {}",
        reply.text()
    );
    let body = reply.json();
    assert_eq!(body["event_count"], events.len());
    let listed: Vec<(u64, String)> = body["invalid_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let indexes: Vec<u64> = listed.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14]);
    assert_eq!(body["invalid_count"], indexes.len());
    let expect_field = |i: u64, field: &str| {
        let (_, reason) = listed.iter().find(|(j, _)| *j == i).unwrap();
        assert!(
            reason.contains(field),
            "index {i}: {reason:?} should name {field:?}"
        );
    };
    expect_field(2, "id");
    expect_field(4, "event_type");
    expect_field(6, "time");
    expect_field(7, "time");
    expect_field(12, "event_type");
    expect_field(14, "time");
    assert_eq!(app.stored_count(), 0);

    // Index 0 and 9 were valid: re-sent alone they are new, not duplicates.
    for i in [0, 9] {
        app.post_authed(batch(&[events[i].clone()]))
            .await
            .assert_accepted(1, 0);
    }
    assert_eq!(
        app.stored_ids(),
        id_set(["fx-invalid-valid-0", "fx-invalid-valid-9"])
    );
}

#[tokio::test]
async fn every_bad_index_of_a_full_braze_batch_of_100_is_listed() {
    let app = spawn_app().await;
    // Braze's default batch size is 100; here every other event lacks its `time`.
    let events: Vec<Value> = (0..100)
        .map(|i| {
            let e = event(&format!("full-{i}"), "users.messages.email.Send");
            if i % 2 == 1 { without_time(e) } else { e }
        })
        .collect();

    let reply = app.post_authed(batch(&events)).await;

    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let body = reply.json();
    assert_eq!(body["event_count"], 100);
    assert_eq!(body["invalid_count"], 50);
    let indexes: Vec<u64> = body["invalid_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        (0..100).filter(|i| i % 2 == 1).collect::<Vec<u64>>()
    );
    assert_eq!(app.stored_count(), 0);
}

fn without_time(mut e: Value) -> Value {
    e.as_object_mut().unwrap().remove("time");
    e
}

/// Posts `body` (raw bytes, so that it may hold what `serde_json::Value` cannot: duplicate keys,
/// `1e999`) and returns the `(index, reason)` pairs of the 400.
async fn invalid_events(app: &TestApp, body: String) -> Vec<(u64, String)> {
    let reply = app.post_authed(body).await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "body: {}",
        reply.text()
    );
    let body = reply.json();
    assert_eq!(body["error"], "invalid_events", "{body}");
    body["invalid_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn valid_text(id: &str) -> String {
    event(id, "users.messages.email.Send").to_string()
}

/// Braze drops an event after its second 400, so the reason must say what is wrong: a repeated
/// `id` (or `event_type`, `time`, `user`, `properties`) is ambiguous, not "not a JSON object".
#[tokio::test]
async fn a_duplicate_key_is_named_as_such_in_the_400() {
    let app = spawn_app().await;
    for (key, dup) in [
        ("id", r#""id":"a","id":"b""#),
        (
            "event_type",
            r#""id":"a","event_type":"t","event_type":"u""#,
        ),
        ("time", r#""id":"a","time":1,"time":2"#),
        (
            "user",
            r#""id":"a","user":{},"user":{"external_user_id":"x"}"#,
        ),
        ("properties", r#""id":"a","properties":{},"properties":{}"#),
    ] {
        let mut bad: Value = json!({"event_type": "t", "time": 1});
        bad.as_object_mut().unwrap().remove(key);
        let mut bad_text = bad.to_string();
        bad_text.insert_str(1, &format!("{dup},"));
        let body = format!(r#"{{"events":[{},{bad_text}]}}"#, valid_text("ok"));
        let listed = invalid_events(&app, body).await;
        assert_eq!(listed.len(), 1, "{key}: {listed:?}");
        assert_eq!(listed[0].0, 1);
        assert!(
            listed[0].1.contains(&format!("duplicate key `{key}`")),
            "{key}: {:?}",
            listed[0].1
        );
    }
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_time_beyond_64_bits_is_out_of_range_in_the_400() {
    let app = spawn_app().await;
    for time in ["18446744073709551615", "-9223372036854775809"] {
        let bad = valid_text("x").replace("1780000000", time);
        let listed = invalid_events(&app, format!(r#"{{"events":[{bad}]}}"#)).await;
        assert_eq!(listed.len(), 1);
        assert!(listed[0].1.contains("`time` is out of range"), "{listed:?}");
        assert!(!listed[0].1.contains("not an integer"), "{listed:?}");
    }
    // The bounds of i64 are accepted.
    let max = valid_text("max").replace("1780000000", "9223372036854775807");
    app.post_authed(format!(r#"{{"events":[{max}]}}"#))
        .await
        .assert_accepted(1, 0);
}

/// A real Braze id is a 36-character UUID; an id over 1024 bytes is refused, naming the limit.
#[tokio::test]
async fn an_overlong_id_is_named_in_the_400() {
    let app = spawn_app().await;
    let over = "i".repeat(1025);
    let listed = invalid_events(
        &app,
        String::from_utf8(batch(&[event(&over, "t")])).unwrap(),
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].1.contains("`id`") && listed[0].1.contains("1024 bytes"),
        "{listed:?}"
    );
    let at_limit = "i".repeat(1024);
    app.post_authed(batch(&[event(&at_limit, "t")]))
        .await
        .assert_accepted(1, 0);
    assert_eq!(app.stored_ids(), id_set([at_limit]));
}

/// Values Heap cannot take (a non-finite number, 100,000 levels of nesting, a lone surrogate)
/// are the mapping's business, property by property: ingest acknowledges and stores the event
/// as sent, and its parser neither fails nor overflows the stack.
#[tokio::test]
async fn unrepresentable_and_deep_property_values_are_accepted_and_stored_verbatim() {
    let app = spawn_app().await;
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    let raw = format!(
        r#"{{"event_type":"users.behaviors.CustomEvent","id":"odd","time":1780000000,
            "user":{{"external_user_id":"u-1","extra":{deep_array}}},
            "properties":{{"name":"n","big":1e999,"neg":-1e400,"s":"\ud800","deep":{deep_array},
            "deeper":{deep_object},"ok":1}}}}"#
    );
    let body = format!(r#"{{"events":[{raw}]}}"#);

    app.post_authed(body).await.assert_accepted(1, 0);

    let stored = app.stored_event("odd");
    assert_eq!(stored.payload, raw.as_bytes());
    assert_eq!(stored.identity.as_deref(), Some("u-1"));
}
