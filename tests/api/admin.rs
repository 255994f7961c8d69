//! product.md §2 endpoints and §6 metrics: probes, the metric catalogue exported at zero from
//! start-up, no event data or identity in `/metrics`, and 404/405 for everything that is not
//! the ingest path.

use currents_heap::currents::catalogue::KNOWN_EVENT_TYPES;
use currents_heap::metrics::{CATALOGUE, OUTCOMES, REJECT_REASONS, STATUSES};
use http::{Method, StatusCode};

use crate::common::*;

#[tokio::test]
async fn healthz_answers_200_while_the_process_serves() {
    let app = spawn_app().await;

    let reply = app.get("/healthz").await;

    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_answers_200_once_the_store_is_open() {
    let app = spawn_app().await;

    let reply = app.get("/readyz").await;

    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_exports_the_whole_catalogue_at_start_up() {
    let app = spawn_app().await;

    let reply = app.get("/metrics").await;

    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = reply.text();
    for (name, kind, ..) in CATALOGUE {
        assert!(name.starts_with("currents_heap_"), "{name}");
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing from /metrics"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }
}

#[tokio::test]
async fn every_labelled_series_with_known_values_starts_at_zero() {
    let app = spawn_app().await;

    let text = app.metrics().await;

    for outcome in OUTCOMES {
        let series = format!("currents_heap_ingest_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric_value(&text, &series), 0.0, "{series}");
    }
    for reason in REJECT_REASONS {
        let series = format!("currents_heap_events_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&text, &series), 0.0, "{series}");
    }
    for status in STATUSES {
        let series =
            format!("currents_heap_ingest_request_duration_seconds_count{{status=\"{status}\"}}");
        assert_eq!(metric_value(&text, &series), 0.0, "{series}");
    }
    for event_type in KNOWN_EVENT_TYPES.iter().chain(&["other"]) {
        let series = format!(
            "currents_heap_events_accepted_total{{event_type=\"{event_type}\",route=\"default\"}}"
        );
        assert_eq!(metric_value(&text, &series), 0.0, "{series}");
    }
    // The rows dashboards and alerts rely on, spelled out independently of the constants.
    for series in [
        r#"currents_heap_ingest_requests_total{outcome="accepted"}"#,
        r#"currents_heap_ingest_requests_total{outcome="unauthorized"}"#,
        r#"currents_heap_ingest_requests_total{outcome="draining"}"#,
        r#"currents_heap_ingest_requests_total{outcome="over_quota"}"#,
        r#"currents_heap_ingest_requests_total{outcome="disk_full"}"#,
        r#"currents_heap_ingest_requests_total{outcome="too_large"}"#,
        r#"currents_heap_events_rejected_total{reason="invalid_event"}"#,
        r#"currents_heap_events_accepted_total{event_type="users.messages.email.Send",route="default"}"#,
        r#"currents_heap_events_accepted_total{event_type="other",route="default"}"#,
        "currents_heap_events_received_total",
        "currents_heap_events_duplicate_total",
        "currents_heap_queue_events",
        "currents_heap_queue_bytes",
        "currents_heap_queue_oldest_event_age_seconds",
    ] {
        assert_eq!(metric_value(&text, series), 0.0, "{series}");
    }
    assert_eq!(metric_value(&text, "currents_heap_store_healthy"), 1.0);
}

#[tokio::test]
async fn request_outcomes_and_queue_gauges_follow_the_traffic() {
    let app = spawn_app().await;
    app.post_authed(batch(&email_sends("traffic", 3)))
        .await
        .assert_accepted(3, 0);
    app.post_authed("nope").await;
    app.post("{}", &[]).await;

    let text = app.metrics().await;

    let value = |s: &str| metric_value(&text, s);
    assert_eq!(
        value(r#"currents_heap_ingest_requests_total{outcome="accepted"}"#),
        1.0
    );
    assert_eq!(
        value(r#"currents_heap_ingest_requests_total{outcome="malformed"}"#),
        1.0
    );
    assert_eq!(
        value(r#"currents_heap_ingest_requests_total{outcome="unauthorized"}"#),
        1.0
    );
    assert_eq!(
        value(r#"currents_heap_ingest_request_duration_seconds_count{status="200"}"#),
        1.0
    );
    assert_eq!(
        value(r#"currents_heap_ingest_request_duration_seconds_count{status="400"}"#),
        1.0
    );
    assert_eq!(
        value(
            r#"currents_heap_events_accepted_total{event_type="users.messages.email.Send",route="default"}"#
        ),
        3.0
    );
    assert_eq!(value("currents_heap_queue_events"), 3.0);
    assert!(value("currents_heap_queue_bytes") > 0.0);
    // Received a moment ago: seconds, not milliseconds, and not the epoch.
    let age = value("currents_heap_queue_oldest_event_age_seconds");
    assert!((0.0..5.0).contains(&age), "oldest event age {age} s");
}

/// README "Facing the internet": `/metrics` shows no event data and no identities, whatever
/// the events carry (accepted, skipped or refused) and whichever workspace they name.
#[tokio::test]
async fn metrics_show_no_event_data_and_no_identity() {
    let app = spawn_app().await;
    let mut known = email_send("zq7-id-1", "zq7-user-1");
    known["properties"]["campaign_name"] = "zq7-campaign".into();
    let mut unknown = event("zq7-id-2", "users.zq7.Unknown");
    unknown["user"]["user_id"] = "zq7-braze-id".into();
    let mut anonymous = event("zq7-id-3", "users.messages.email.Open");
    anonymous["user"] = serde_json::json!({ "user_id": "zq7-braze-anon" });
    app.post_to(
        "/currents?workspace=zq7-workspace",
        batch(&[known, unknown, anonymous]),
        AUTH,
    )
    .await
    .assert_accepted(3, 0);
    let mut invalid = event("zq7-id-4", "users.zq7.Invalid");
    invalid.as_object_mut().unwrap().remove("time");
    assert_eq!(
        app.post_authed(batch(&[invalid])).await.status,
        StatusCode::BAD_REQUEST
    );

    let text = app.metrics().await;

    let leaks: Vec<&str> = text.lines().filter(|l| l.contains("zq7")).collect();
    assert!(leaks.is_empty(), "event data in /metrics: {leaks:?}");
    // The unknown type is counted, under `other`.
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_events_accepted_total{event_type="other",route="default"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn unknown_paths_answer_404() {
    let app = spawn_app().await;

    for path in ["/", "/nope", "/currents/extra", "/Currents", "/api/track"] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "GET {path}");
        let reply = app
            .post_to(path, fixture("email_send_batch.json"), AUTH)
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "POST {path}");
    }
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn get_on_the_ingest_path_answers_405() {
    let app = spawn_app().await;

    let reply = app.get("/currents").await;

    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let reply = app
            .request(method.clone(), "/currents", Default::default(), AUTH)
            .await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    assert_eq!(app.stored_count(), 0);
}
