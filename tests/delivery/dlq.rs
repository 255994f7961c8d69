//! The dead-letter store from the operator's side: `currents-heap dlq list|replay|purge` on the
//! data directory (product.md §2, §5).

use std::time::Duration;

use currents_heap::config::SettingsArgs;
use currents_heap::dlq::Selection;
use currents_heap::queue::sqlite::SqliteQueue;

use crate::common::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_replays_after_a_restart_and_purges_dead_letters() {
    let mut h = TestApp::start(
        heap_budgets(),
        SettingsArgs {
            dead_letter_skipped: Some(true),
            ..base_args()
        },
    )
    .await;
    let (mut events, ids) = sends("dlq", 20, 20);
    let poisoned = [ids[3].clone(), ids[11].clone()];
    for p in &poisoned {
        h.heap().poison(p.clone());
    }
    events.extend((0..3).map(|i| anonymous_send(&format!("dlq-anon-{i}"))));
    h.post_events(&events).await;
    let good: Vec<String> = ids
        .iter()
        .filter(|k| !poisoned.contains(k))
        .cloned()
        .collect();
    h.wait_delivered(&good, Duration::from_secs(20)).await;
    assert_eq!(h.dead_letters().len(), 5);

    // `dlq list` works while the server runs.
    let out = dlq(h.data_dir(), &["list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 5, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("dead letters: 5 in the store (anonymous=3, rejected=2)"),
        "{}",
        stderr(&out)
    );
    let out = dlq(h.data_dir(), &["list", "--reason", "rejected"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let rejected = json_lines(&out.stdout);
    let mut listed: Vec<&str> = rejected
        .iter()
        .map(|l| l["event_id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected = [poisoned[0].as_str(), poisoned[1].as_str()];
    expected.sort_unstable();
    assert_eq!(listed, expected);
    for line in &rejected {
        assert_eq!(line["reason"], "rejected");
        let detail = line["detail"].as_str().expect("a detail");
        assert!(detail.contains("poisoned idempotency_key"), "{detail}");
        assert!(line["seq"].as_i64().is_some());
    }

    // Heap would now take them: replay with the server stopped, then start it again.
    h.stop_app().await;
    for p in &poisoned {
        h.heap().unpoison(p);
    }
    let out = dlq(h.data_dir(), &["replay", "--reason", "rejected"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("replayed 2 dead letters"),
        "{}",
        stdout(&out)
    );
    assert_eq!(h.queued_count(), 2);
    h.start_app().await;
    h.delivered_once(&ids).await;
    let left: Vec<String> = h.dead_letters().into_iter().map(|d| d.reason).collect();
    assert_eq!(left, ["anonymous", "anonymous", "anonymous"]);

    // Purge needs a selection, then deletes exactly it.
    let out = dlq(h.data_dir(), &["purge"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(h.dead_letters().len(), 3);
    let out = dlq(h.data_dir(), &["purge", "--reason", "expired"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("purged 0 dead letters"),
        "{}",
        stdout(&out)
    );
    let out = dlq(h.data_dir(), &["purge", "--reason", "anonymous"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("purged 3 dead letters"),
        "{}",
        stdout(&out)
    );
    assert!(h.dead_letters().is_empty());
    let out = dlq(h.data_dir(), &["list"]).await;
    assert!(out.status.success());
    assert!(json_lines(&out.stdout).is_empty());
    assert!(
        stderr(&out).contains("dead letters: 0 in the store (none)"),
        "{}",
        stderr(&out)
    );
    let text = h.metrics().await;
    for reason in ["rejected", "anonymous"] {
        assert_eq!(
            metric_value(
                &text,
                &format!("currents_heap_dead_letter_events{{reason=\"{reason}\"}}")
            ),
            0.0,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replayed_while_the_server_runs_are_delivered() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    let (events, ids) = sends("live", 10, 10);
    h.heap().poison(ids[4].clone());
    h.post_events(&events).await;
    let good: Vec<String> = ids.iter().filter(|k| **k != ids[4]).cloned().collect();
    h.wait_delivered(&good, Duration::from_secs(20)).await;
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 1);

    h.heap().unpoison(&ids[4]);
    let queue = SqliteQueue::open_maintenance(h.data_dir()).unwrap();
    let sel = Selection {
        reason: None,
        ids: vec![dead[0].seq],
    };
    let router = currents_heap::routing::Router::from_settings(&h.settings());
    let n = currents_heap::dlq::replay(&queue, &sel, &router)
        .await
        .unwrap();
    assert_eq!(n.requeued, 1);
    h.delivered_once(&ids).await;
    assert!(h.dead_letters().is_empty());
}
