//! Routing: several Braze workspaces → several Heap environments from one deployment.
//!
//! In-process servers on port 0 with `[[route]]` tables, delivering to Heap stand-ins.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::time::{Duration, Instant};

use currents_heap::config::{FileConfig, Settings, SettingsArgs};
use currents_heap::dlq;
use currents_heap::queue::Queue;
use currents_heap::queue::sqlite::SqliteQueue;
use currents_heap::routing::Router;
use currents_heap_testkit::standin::{HeapStandIn, StandInConfig};
use serde_json::{Value, json};

mod common;

use common::TestApp;

/// `args` with a short linger and millisecond backoffs.
fn args(args: SettingsArgs) -> SettingsArgs {
    SettingsArgs {
        heap_linger: Some("50ms".into()),
        retry_initial_backoff: Some("20ms".into()),
        retry_max_backoff: Some("200ms".into()),
        ..args
    }
}

fn event(id: &str, user: &str, app_group_id: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "65a0c0ffee0000000000a001", "external_user_id": user },
        "properties": { "app_group_id": app_group_id, "campaign_id": "c-1" }
    })
}

fn events(prefix: &str, n: usize, app_group_id: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            event(
                &format!("{prefix}-{i}"),
                &format!("user-{}", i % 50),
                app_group_id,
            )
        })
        .collect()
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn routes_toml(base_url: &str) -> String {
    format!(
        r#"
        [[route]]
        name = "brand-a"
        workspace = "brand-a"
        heap_app_id = "1111"
        heap_base_url = "{base_url}"

        [[route]]
        name = "brand-b"
        app_group_id = "grp-b"
        heap_app_id = "2222"
        heap_base_url = "{base_url}"
        "#
    )
}

fn delivered(heap: &HeapStandIn, app_id: &str) -> u64 {
    heap.report().apps.get(app_id).map_or(0, |a| a.events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_take_the_route_of_their_workspace_their_app_group_or_the_default() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    let app = TestApp::routed(
        &routes_toml(&heap.base_url()),
        args(SettingsArgs {
            heap_app_id: Some("9999".into()),
            heap_base_url: Some(heap.base_url()),
            ..Default::default()
        }),
    )
    .await;

    let (st, body) = app
        .post_events_as("?workspace=brand-a", None, &events("a", 30, "grp-x"))
        .await;
    assert_eq!((st, body["accepted"].as_u64()), (200, Some(30)));
    let (st, _) = app
        .post_events_as("", None, &events("b", 20, "grp-b"))
        .await;
    assert_eq!(st, 200);
    let (st, _) = app
        .post_events_as("?workspace=other&x=1", None, &events("d", 10, "grp-z"))
        .await;
    assert_eq!(st, 200);

    wait_for("every route delivered", Duration::from_secs(20), || {
        delivered(&heap, "1111") == 30
            && delivered(&heap, "2222") == 20
            && delivered(&heap, "9999") == 10
    })
    .await;
    let report = heap.report();
    assert!(report.keys.keys().filter(|k| k.starts_with("a-")).count() == 30);
    for app_id in report.apps.keys() {
        assert!(["1111", "2222", "9999"].contains(&app_id.as_str()));
    }
    let text = app.metrics().await;
    for (route, n) in [("brand-a", 30), ("brand-b", 20), ("default", 10)] {
        let series = format!("currents_heap_events_delivered_total{{route=\"{route}\"}} {n}");
        assert!(text.contains(&series), "missing {series}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_encoded_workspace_matches_and_route_tokens_guard_their_workspace() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    let toml = format!(
        r#"
        [[route]]
        name = "brand-a"
        workspace = "Brand A"
        heap_app_id = "1111"
        heap_base_url = "{}"
        ingest_token = ["tok-brand-a"]
        "#,
        heap.base_url()
    );
    let app = TestApp::routed(
        &toml,
        args(SettingsArgs {
            ingest_token: Some("tok-global".into()),
            heap_app_id: Some("9999".into()),
            heap_base_url: Some(heap.base_url()),
            ..Default::default()
        }),
    )
    .await;
    let one = [event("t-1", "u", "g")];
    assert_eq!(
        app.post_events_as("?workspace=Brand%20A", Some("tok-global"), &one)
            .await
            .0,
        401
    );
    assert_eq!(
        app.post_events_as("?workspace=Brand+A", None, &one).await.0,
        401
    );
    assert_eq!(
        app.post_events_as("?workspace=Brand%20A", Some("tok-brand-a"), &one)
            .await
            .0,
        200
    );
    assert_eq!(
        app.post_events_as("", Some("tok-global"), &[event("t-2", "u", "g")])
            .await
            .0,
        200
    );
    assert_eq!(
        app.post_events_as("?workspace=zzz", Some("nope"), &[event("t-3", "u", "g")])
            .await
            .0,
        401
    );
    wait_for("both delivered", Duration::from_secs(20), || {
        delivered(&heap, "1111") == 1 && delivered(&heap, "9999") == 1
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_are_acknowledged_dead_lettered_and_replayed_after_a_config_fix() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    // Routes but no default route: a workspace nobody configured is unroutable.
    let mut app = TestApp::routed(
        &routes_toml(&heap.base_url()),
        args(SettingsArgs::default()),
    )
    .await;
    let lost = events("c", 25, "grp-c");
    let (st, body) = app.post_events_as("?workspace=brand-c", None, &lost).await;
    assert_eq!(st, 200, "never bounced to Braze: {body}");
    assert_eq!(body["accepted"], 25);
    let text = app.metrics().await;
    assert!(
        text.contains(
            r#"currents_heap_events_dead_lettered_total{reason="unroutable",route="unroutable"} 25"#
        ) || text.contains(
            r#"currents_heap_events_dead_lettered_total{route="unroutable",reason="unroutable"} 25"#
        ),
        "{}",
        text.lines()
            .filter(|l| l.contains("dead_lettered"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A re-send is a duplicate, not a second dead letter.
    let (_, body) = app.post_events_as("?workspace=brand-c", None, &lost).await;
    assert_eq!(body["duplicates"], 25);
    app.stop_app().await;

    let queue = SqliteQueue::open_maintenance(app.data_dir()).unwrap();
    let mut listed = Vec::new();
    let mut summary = Vec::new();
    dlq::list(
        &queue,
        &dlq::Selection::default(),
        100,
        false,
        &mut listed,
        &mut summary,
    )
    .await
    .unwrap();
    let listed = String::from_utf8(listed).unwrap();
    assert_eq!(listed.lines().count(), 25);
    assert!(
        listed
            .lines()
            .all(|l| l.contains("\"reason\":\"unroutable\""))
    );

    // Replaying with the old configuration keeps them where they are.
    let sel = dlq::Selection {
        reason: Some("unroutable".into()),
        ids: Vec::new(),
    };
    let old = app.settings();
    let r = dlq::replay(&queue, &sel, &Router::from_settings(&old))
        .await
        .unwrap();
    assert_eq!((r.requeued, r.still_unroutable), (0, 25));

    // The fix: a route for brand-c. Replay, restart, delivered.
    let fixed_toml = format!(
        "{}\n[[route]]\nname = \"brand-c\"\nworkspace = \"brand-c\"\nheap_app_id = \"3333\"\nheap_base_url = \"{}\"\n",
        routes_toml(&heap.base_url()),
        heap.base_url()
    );
    app.reconfigure(&fixed_toml);
    let fixed = app.settings();
    let r = dlq::replay(&queue, &sel, &Router::from_settings(&fixed))
        .await
        .unwrap();
    assert_eq!((r.requeued, r.still_unroutable), (25, 0));
    queue.close().await.unwrap();
    drop(queue);
    app.start_app().await;
    wait_for("replayed events delivered", Duration::from_secs(20), || {
        delivered(&heap, "3333") == 25
    })
    .await;
    heap.report()
        .check_exactly_once(lost.iter().map(|e| e["id"].as_str().unwrap()))
        .unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_environment_down_never_slows_the_other() {
    // Scaled budgets: 600 events per 2 s window per app id.
    let window = Duration::from_secs(2);
    let cfg = StandInConfig {
        events_per_window: 600,
        identity_events_per_window: 600,
        window,
        enforce: true,
    };
    let heap_a = HeapStandIn::start(cfg);
    let heap_b = HeapStandIn::start(cfg);
    heap_b.set_down(true);
    let toml = format!(
        r#"
        [[route]]
        name = "brand-a"
        workspace = "brand-a"
        heap_app_id = "1111"
        heap_base_url = "{}"
        [[route]]
        name = "brand-b"
        workspace = "brand-b"
        heap_app_id = "2222"
        heap_base_url = "{}"
        "#,
        heap_a.base_url(),
        heap_b.base_url()
    );
    let app = TestApp::routed(
        &toml,
        args(SettingsArgs {
            heap_events_per_minute: Some("600".into()),
            heap_identity_events_per_minute: Some("600".into()),
            heap_budget_window: Some("2s".into()),
            ..Default::default()
        }),
    )
    .await;
    let a_events = events("a", 1200, "g");
    let b_events = events("b", 1200, "g");
    for chunk in b_events.chunks(100) {
        assert_eq!(
            app.post_events_as("?workspace=brand-b", None, chunk)
                .await
                .0,
            200
        );
    }
    let started = Instant::now();
    for chunk in a_events.chunks(100) {
        assert_eq!(
            app.post_events_as("?workspace=brand-a", None, chunk)
                .await
                .0,
            200
        );
    }
    wait_for(
        "brand-a drained while brand-b is down",
        Duration::from_secs(30),
        || delivered(&heap_a, "1111") == 1200,
    )
    .await;
    let took = started.elapsed();
    // 1,200 events at ~97 % of 600 per 2 s need ~4.1 s; B's outage must not stretch that. A
    // lane blocked by B's would wait for B (down until after this); the bound is 5× the ideal,
    // as the pacing floors (tests/pacing.rs), so a busy machine alone cannot fail it.
    println!("brand-a: 1200 events in {took:?} while brand-b was down");
    assert!(
        took < Duration::from_millis(4_100 * 5),
        "brand-a took {took:?}"
    );
    assert_eq!(delivered(&heap_b, "2222"), 0);
    let ra = heap_a.report();
    // Every request A received counts, refused or not: A's lane never tried to go over.
    assert!(
        ra.max_offered_app_window.events <= 600,
        "{:?}",
        ra.max_offered_app_window
    );
    assert_eq!(ra.limit_rejections, 0);

    heap_b.set_down(false);
    wait_for("brand-b catches up", Duration::from_secs(30), || {
        delivered(&heap_b, "2222") == 1200
    })
    .await;
    ra.check_exactly_once(a_events.iter().map(|e| e["id"].as_str().unwrap()))
        .unwrap();
    let rb = heap_b.report();
    rb.check_exactly_once(b_events.iter().map(|e| e["id"].as_str().unwrap()))
        .unwrap();
    assert!(!rb.offered_over_budget(), "{:?}", rb.max_offered_app_window);
    assert_eq!(rb.limit_rejections, 0);
    app.stop().await;
}

#[test]
fn check_config_refuses_ambiguous_or_invalid_routes() {
    let cases = [
        (
            "[[route]]\nname = \"a\"\nworkspace = \"w\"\nheap_app_id = \"1\"\n[[route]]\nname = \"b\"\nworkspace = \"w\"\nheap_app_id = \"2\"\n",
            "matches exactly what route \"a\" matches",
        ),
        (
            "[[route]]\nname = \"a\"\nworkspace = \"w\"\nheap_app_id = \"abc\"\n",
            "heap_app_id",
        ),
        (
            "[[route]]\nname = \"a\"\nheap_app_id = \"1\"\n",
            "needs `workspace`",
        ),
        (
            "[[route]]\nname = \"a b\"\nworkspace = \"w\"\nheap_app_id = \"1\"\n",
            "name",
        ),
        (
            "[[route]]\nname = \"a\"\nworkspace = \"w\"\nheap_app_id = \"1\"\n[[route]]\nname = \"a\"\nworkspace = \"v\"\nheap_app_id = \"2\"\n",
            "used by an earlier route",
        ),
        (
            "[[route]]\nname = \"a\"\nworkspace = \"w\"\nheap_app_id = \"1\"\n[[route]]\nname = \"b\"\nworkspace = \"v\"\nheap_app_id = \"1\"\nheap_events_per_minute = 10\n",
            "disagree",
        ),
    ];
    for (toml, expected) in cases {
        let file: FileConfig = toml::from_str(toml).unwrap();
        let err = Settings::resolve(&SettingsArgs::default(), file)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{toml}\n→ {err}");
    }
    let unknown =
        "[[route]]\nname = \"a\"\nworkspace = \"w\"\nheap_app_id = \"1\"\nhaep_base_url = \"x\"\n";
    let err = toml::from_str::<FileConfig>(unknown)
        .unwrap_err()
        .to_string();
    assert!(err.contains("haep_base_url"), "{err}");
}
