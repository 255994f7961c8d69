//! product.md §3, the dedup window: an event id already accepted is acknowledged as a
//! duplicate and not queued again — across requests, inside one batch, under concurrency, and
//! however the id is escaped — while a new id is never mistaken for a seen one.

use currents_heap::config::SettingsArgs;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_batch_sent_again_within_the_dedup_window_is_acknowledged_as_duplicates() {
    let app = spawn_app().await;
    let body = fixture("email_send_batch.json");

    app.post_authed(body.clone()).await.assert_accepted(3, 0);
    let again = app.post_authed(body).await;

    again.assert_accepted(0, 3);
    assert_eq!(app.stored_count(), 3, "a re-sent batch is not queued again");
    assert_eq!(
        app.metric("currents_heap_events_duplicate_total").await,
        3.0
    );
}

#[tokio::test]
async fn a_partly_re_sent_batch_queues_only_the_new_events() {
    let app = spawn_app().await;

    app.post_authed(batch(&[event("d-1", "users.messages.email.Send")]))
        .await
        .assert_accepted(1, 0);
    let reply = app
        .post_authed(batch(&[
            event("d-2", "users.messages.email.Send"),
            event("d-1", "users.messages.email.Send"),
            event("d-3", "users.messages.email.Open"),
        ]))
        .await;

    reply.assert_accepted(2, 1);
    assert_eq!(app.stored_ids(), id_set(["d-1", "d-2", "d-3"]));
}

#[tokio::test]
async fn a_duplicate_id_inside_one_batch_is_stored_once() {
    let app = spawn_app().await;
    let mut twin = event("same-id", "users.messages.email.Send");
    twin["time"] = json!(1_780_000_999);

    let reply = app
        .post_authed(batch(&[
            event("same-id", "users.messages.email.Send"),
            event("other-id", "users.messages.email.Send"),
            twin,
        ]))
        .await;

    reply.assert_accepted(2, 1);
    assert_eq!(app.stored_count(), 2);
    assert_eq!(
        app.stored_event("same-id").event_time,
        1_780_000_000,
        "the first copy of an id is the one kept"
    );
}

#[tokio::test]
async fn duplicates_are_recognised_whichever_rotation_token_sends_them() {
    let app = spawn_app().await;
    let body = batch(&email_sends("rot", 2));

    app.post(body.clone(), &[("authorization", "Bearer tok-a")])
        .await
        .assert_accepted(2, 0);
    app.post(body, &[("authorization", "Bearer tok-b")])
        .await
        .assert_accepted(0, 2);

    assert_eq!(app.stored_count(), 2);
}

#[tokio::test]
async fn an_id_is_compared_by_its_json_value_not_by_its_escaping() {
    let app = spawn_app().await;
    let body = |id_literal: &str| {
        format!(
            r#"{{"events":[{{"event_type":"users.messages.email.Send","id":{id_literal},"time":1780000000,"user":{{}}}}]}}"#
        )
    };

    app.post_authed(body(r#""café-\"1\"""#))
        .await
        .assert_accepted(1, 0);
    app.post_authed(body(r#""caf\u00e9-\u00221\u0022""#))
        .await
        .assert_accepted(0, 1);

    assert_eq!(app.stored_ids(), id_set(["café-\"1\""]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_posted_concurrently_is_stored_once() {
    let app = std::sync::Arc::new(spawn_app().await);
    let body = bytes::Bytes::from(batch(&email_sends("race", 50)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (app, body) = (app.clone(), body.clone());
        tasks.spawn(async move { app.post_authed(body).await });
    }

    let (mut accepted, mut duplicates) = (0, 0);
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.unwrap().json();
        accepted += reply["accepted"].as_u64().unwrap();
        duplicates += reply["duplicates"].as_u64().unwrap();
    }

    assert_eq!((accepted, duplicates), (50, 7 * 50));
    assert_eq!(app.stored_count(), 50);
}

#[tokio::test]
async fn ids_that_differ_in_any_character_are_distinct_events() {
    let app = spawn_app().await;
    let ids = [
        "abc", "ABC", "abc ", " abc", "ab", "abcd", "abc\u{0}", "åbc",
    ];
    let events: Vec<_> = ids
        .iter()
        .map(|id| event(id, "users.messages.email.Send"))
        .collect();

    app.post_authed(batch(&events))
        .await
        .assert_accepted(ids.len(), 0);
    app.post_authed(batch(&events))
        .await
        .assert_accepted(0, ids.len());

    assert_eq!(app.stored_ids(), id_set(ids));
}

#[tokio::test]
async fn a_small_dedup_capacity_never_turns_a_new_id_into_a_duplicate() {
    let app = spawn_app_with(SettingsArgs {
        dedup_capacity: Some("8".into()),
        ..default_args()
    })
    .await;

    for round in 0..5 {
        app.post_authed(batch(&email_sends(&format!("cap-{round}"), 40)))
            .await
            .assert_accepted(40, 0);
    }

    assert_eq!(app.stored_count(), 200);
    // The newest id is still remembered.
    app.post_authed(batch(&[event("cap-4-39", "users.messages.email.Send")]))
        .await
        .assert_accepted(0, 1);
}
