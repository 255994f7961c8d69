//! What every queue store promises for deletions (product.md §7): the identity map, the purge
//! in the transaction that acknowledges a deletion, the tombstones and the ledger.

use currents_heap::queue::{
    Appended, DeadLetterQuery, DeletionQuery, DeletionRecord, DeletionStatus, HeapUser, NewEvent,
    Queue, QueueOp, ReplayItem, unix_millis,
};

use crate::conformance::{APP, Backend, Limits, event, ids, open, queued};

const ROUTE: &str = "route-1111";

/// An event of Braze user `braze` sent for `heap` (or for nobody).
fn of(id: &str, braze: &str, heap: Option<HeapUser>) -> NewEvent {
    NewEvent {
        braze_user_id: Some(braze.into()),
        heap_user: heap,
        ..event(id, APP, &format!("{{\"id\":\"{id}\"}}"))
    }
}

fn identity(s: &str) -> Option<HeapUser> {
    Some(HeapUser::Identity(s.into()))
}

fn deletion(id: &str, braze: &str) -> NewEvent {
    NewEvent {
        event_type: "users.UserDeleteRequest".into(),
        deletion: true,
        ..of(id, braze, None)
    }
}

/// `e` as ingest stores an event no route takes: straight to the dead letters.
fn unroutable(e: NewEvent) -> NewEvent {
    NewEvent {
        route: "unroutable".into(),
        app_id: "".into(),
        deletion: false,
        dead_letter: Some("unroutable"),
        ..e
    }
}

async fn dead_letters(q: &dyn Queue) -> Vec<currents_heap::queue::DeadLetter> {
    q.dead_letters(DeadLetterQuery {
        reason: None,
        after: 0,
        limit: 10,
        max_bytes: usize::MAX,
    })
    .await
    .unwrap()
}

async fn ledger(q: &dyn Queue) -> Vec<DeletionRecord> {
    q.deletions(DeletionQuery {
        limit: 1000,
        ..DeletionQuery::default()
    })
    .await
    .unwrap()
}

fn deletion_receipt(outcome: &Appended) -> &currents_heap::queue::DeletionReceipt {
    match outcome {
        Appended::Deletion(d) => d,
        other => panic!("expected a deletion, got {other:?}"),
    }
}

pub async fn a_deletion_purges_the_users_events_and_records_a_ledger_entry<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let mut dead = of("a-dead", "braze-a", identity("ext-a"));
    dead.dead_letter = Some("unroutable");
    q.append(vec![
        of("a1", "braze-a", identity("ext-a")),
        of("b1", "braze-b", identity("ext-b")),
        of("a2", "braze-a", identity("ext-a")),
        dead,
    ])
    .await
    .unwrap();
    let rows = queued(&*q).await;
    let a2 = rows.iter().find(|r| r.event.event_id == "a2").unwrap().seq;
    // A parked event is purged too.
    q.apply(QueueOp::Park {
        items: vec![(a2, unix_millis() + 3_600_000)],
    })
    .await
    .unwrap();
    let before = q.totals();

    let r = q.append(vec![deletion("del-a", "braze-a")]).await.unwrap();
    let d = deletion_receipt(&r.outcomes[0]);
    assert!(d.known_user);
    assert_eq!(d.purged_queued.len(), 2);
    assert!(d.purged_queued.iter().all(|(app, _)| app == APP));
    assert_eq!(d.purged_dead_letters, 1);

    assert_eq!(ids(&queued(&*q).await), ["b1"], "only B's event stays");
    let after = q.totals();
    assert_eq!(
        after.events,
        before.events - 2,
        "the totals follow the purge"
    );
    if B::PAYLOAD_BYTES {
        assert_eq!(after.bytes, before.bytes - 2 * 11);
    } else {
        assert!(
            after.bytes < before.bytes - 2 * 11,
            "the bytes follow the purge"
        );
    }
    let dead = dead_letters(&*q).await;
    assert!(dead.is_empty(), "A's dead letter is purged");

    let entries = ledger(&*q).await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (
            e.route.as_str(),
            e.braze_user_id.as_str(),
            e.event_id.as_str()
        ),
        (ROUTE, "braze-a", "del-a")
    );
    assert_eq!(e.users, [HeapUser::Identity("ext-a".into())]);
    assert_eq!(e.status, DeletionStatus::PendingSubmit);
    assert_eq!((e.purged_events, e.request_id.as_deref()), (3, None));
}

pub async fn late_events_of_a_deleted_user_are_dropped_across_a_restart<B: Backend>() {
    let (b, q) = open::<B>().await;
    q.append(vec![of("a1", "braze-a", identity("ext-a"))])
        .await
        .unwrap();
    q.append(vec![deletion("del-a", "braze-a")]).await.unwrap();
    let r = q
        .append(vec![of("a2", "braze-a", identity("ext-a"))])
        .await
        .unwrap();
    assert_eq!(r.outcomes, [Appended::DeletedUser]);
    q.close().await.unwrap();
    drop(q);

    let q = b.open(Limits::default()).await;
    // The same Braze id on another route is another user.
    let mut elsewhere = of("a-other-route", "braze-a", identity("ext-a"));
    elsewhere.route = "route-other".into();
    let r = q
        .append(vec![
            of("a3", "braze-a", identity("ext-a")),
            of("b1", "braze-b", identity("ext-b")),
            elsewhere,
        ])
        .await
        .unwrap();
    assert_eq!(
        r.outcomes,
        [Appended::DeletedUser, Appended::Queued, Appended::Queued],
        "the tombstone survives a restart, per route"
    );
    assert_eq!(ids(&queued(&*q).await), ["b1", "a-other-route"]);
    assert_eq!((r.accepted(), r.duplicates()), (3, 0));
}

pub async fn a_deletion_of_a_never_seen_user_is_unknown_user<B: Backend>() {
    let (_b, q) = open::<B>().await;
    // Seen, but never with a Heap user (anonymous, skipped): nothing was sent to Heap.
    q.append(vec![of("n1", "braze-n", None)]).await.unwrap();
    let r = q
        .append(vec![
            deletion("del-x", "braze-never"),
            deletion("del-n", "braze-n"),
        ])
        .await
        .unwrap();
    assert!(!deletion_receipt(&r.outcomes[0]).known_user);
    let n = deletion_receipt(&r.outcomes[1]);
    assert!(!n.known_user);
    assert_eq!(
        n.purged_queued.len(),
        1,
        "its events are purged all the same"
    );
    let entries = ledger(&*q).await;
    assert!(
        entries
            .iter()
            .all(|e| e.status == DeletionStatus::UnknownUser && e.users.is_empty())
    );
    let r = q
        .append(vec![of("x1", "braze-never", identity("ext-x"))])
        .await
        .unwrap();
    assert_eq!(r.outcomes, [Appended::DeletedUser], "the tombstone applies");
}

pub async fn the_identity_map_keeps_every_heap_user_of_a_braze_user<B: Backend>() {
    let (b, q) = open::<B>().await;
    q.append(vec![
        of("a1", "braze-a", Some(HeapUser::UserId("4242".into()))),
        of("a2", "braze-a", identity("ext-a")),
        of("a3", "braze-a", identity("ext-a")),
    ])
    .await
    .unwrap();
    q.close().await.unwrap();
    drop(q);
    let q = b.open(Limits::default()).await;
    q.append(vec![deletion("del-a", "braze-a")]).await.unwrap();
    let entries = ledger(&*q).await;
    assert_eq!(
        entries[0].users,
        [
            HeapUser::Identity("ext-a".into()),
            HeapUser::UserId("4242".into())
        ],
        "both Heap users, each once, from the store (not a memory of this process)"
    );
}

pub async fn events_and_a_deletion_in_one_request_apply_in_order<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let r = q
        .append(vec![
            of("a1", "braze-a", identity("ext-a")),
            deletion("del-a", "braze-a"),
            of("a2", "braze-a", identity("ext-a")),
        ])
        .await
        .unwrap();
    assert_eq!(r.outcomes[0], Appended::Queued);
    assert_eq!(deletion_receipt(&r.outcomes[1]).purged_queued.len(), 1);
    assert_eq!(r.outcomes[2], Appended::DeletedUser);
    assert!(queued(&*q).await.is_empty());
    assert_eq!(q.totals().events, 0);
    assert_eq!(
        ledger(&*q).await[0].users,
        [HeapUser::Identity("ext-a".into())]
    );
}

pub async fn a_resent_deletion_is_a_duplicate<B: Backend>() {
    let (_b, q) = open::<B>().await;
    q.append(vec![of("a1", "braze-a", identity("ext-a"))])
        .await
        .unwrap();
    q.append(vec![deletion("del-a", "braze-a")]).await.unwrap();
    let r = q.append(vec![deletion("del-a", "braze-a")]).await.unwrap();
    assert_eq!(r.outcomes, [Appended::Duplicate]);
    assert_eq!(ledger(&*q).await.len(), 1);
}

pub async fn ledger_entries_move_through_their_statuses<B: Backend>() {
    let (_b, q) = open::<B>().await;
    for user in ["a", "b", "c"] {
        q.append(vec![of(&format!("{user}1"), user, identity(user))])
            .await
            .unwrap();
        q.append(vec![deletion(&format!("del-{user}"), user)])
            .await
            .unwrap();
    }
    let id = |entries: &[DeletionRecord], user: &str| {
        entries.iter().find(|e| e.braze_user_id == user).unwrap().id
    };
    let entries = ledger(&*q).await;
    let (a, b, c) = (id(&entries, "a"), id(&entries, "b"), id(&entries, "c"));

    let op = |op| {
        let q = std::sync::Arc::clone(&q);
        async move { q.apply(op).await.unwrap().rows }
    };
    assert_eq!(
        op(QueueOp::DeletionsSubmitted {
            ids: vec![a, b],
            request_id: "req-1".into()
        })
        .await,
        2
    );
    assert_eq!(
        op(QueueOp::DeletionsAttempt {
            ids: vec![c],
            error: "timeout".into(),
            failed: false
        })
        .await,
        1
    );
    let status = |entries: &[DeletionRecord], user: &str| {
        let e = entries.iter().find(|e| e.braze_user_id == user).unwrap();
        (e.status, e.request_id.clone(), e.attempts)
    };
    let entries = ledger(&*q).await;
    assert_eq!(
        status(&entries, "a"),
        (DeletionStatus::Submitted, Some("req-1".into()), 0)
    );
    assert_eq!(
        status(&entries, "c"),
        (DeletionStatus::PendingSubmit, None, 1)
    );

    op(QueueOp::DeletionsCompleted {
        request_id: "req-1".into(),
    })
    .await;
    op(QueueOp::DeletionsAttempt {
        ids: vec![c],
        error: "Heap answered 401: bad key".into(),
        failed: true,
    })
    .await;
    let entries = ledger(&*q).await;
    assert_eq!(status(&entries, "b").0, DeletionStatus::Complete);
    let failed = entries.iter().find(|e| e.braze_user_id == "c").unwrap();
    assert_eq!(failed.status, DeletionStatus::Failed);
    assert_eq!(
        failed.last_error.as_deref(),
        Some("Heap answered 401: bad key")
    );

    // Only failed entries are retried, and only on the routes named.
    let retry = |routes| QueueOp::DeletionsMove {
        from: DeletionStatus::Failed,
        to: DeletionStatus::PendingSubmit,
        ids: None,
        routes,
    };
    assert_eq!(op(retry(Some(vec!["route-other".into()]))).await, 0);
    assert_eq!(op(retry(None)).await, 1);
    let pending = q
        .deletions(DeletionQuery {
            statuses: vec![DeletionStatus::PendingSubmit],
            limit: 10,
            ..DeletionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), [c]);

    let summary = q.deletion_summary(unix_millis() + 1).await.unwrap();
    let count = |s: DeletionStatus| {
        summary
            .iter()
            .find(|x| x.status == s && x.route == ROUTE)
            .map_or(0, |x| x.count)
    };
    assert_eq!(
        count(DeletionStatus::Complete),
        0,
        "only open entries are summed up"
    );
    assert_eq!(count(DeletionStatus::PendingSubmit), 1);
    assert_eq!(summary.len(), 1);
    assert!(summary.iter().all(|s| s.overdue == s.count));
    let none_overdue = q.deletion_summary(0).await.unwrap();
    assert!(none_overdue.iter().all(|s| s.overdue == 0));
}

pub async fn a_replayed_deletion_is_accepted_and_a_deleted_users_event_dropped<B: Backend>() {
    let (_b, q) = open::<B>().await;
    q.append(vec![
        of("a1", "braze-a", identity("ext-a")),
        unroutable(deletion("del-a", "braze-a")),
        unroutable(of("a-late", "braze-a", identity("ext-a"))),
    ])
    .await
    .unwrap();
    let dead = dead_letters(&*q).await;
    assert_eq!(dead.len(), 2);
    let item = |seq, deletion| ReplayItem {
        seq,
        route: ROUTE.into(),
        app_id: APP.into(),
        deletion,
        heap_user: None,
    };
    let out = q
        .apply(QueueOp::Replay {
            items: vec![item(dead[0].seq, true), item(dead[1].seq, false)],
        })
        .await
        .unwrap();
    assert_eq!((out.rows, out.queue_events_delta), (2, -1));
    assert!(queued(&*q).await.is_empty(), "a1 purged, a-late dropped");
    let entries = ledger(&*q).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].users, [HeapUser::Identity("ext-a".into())]);
    assert_eq!(entries[0].route, ROUTE);
    assert_eq!(q.dead_letter_counts().await.unwrap(), []);
}

pub async fn a_replayed_event_is_remembered_for_a_later_deletion<B: Backend>() {
    let (_b, q) = open::<B>().await;
    q.append(vec![unroutable(of("c1", "braze-c", None))])
        .await
        .unwrap();
    let dead = dead_letters(&*q).await;
    q.apply(QueueOp::Replay {
        items: vec![ReplayItem {
            seq: dead[0].seq,
            route: ROUTE.into(),
            app_id: APP.into(),
            deletion: false,
            heap_user: identity("ext-c"),
        }],
    })
    .await
    .unwrap();
    assert_eq!(ids(&queued(&*q).await), ["c1"]);
    let r = q.append(vec![deletion("del-c", "braze-c")]).await.unwrap();
    let d = deletion_receipt(&r.outcomes[0]);
    assert!(d.known_user, "the replay put the user in the identity map");
    assert_eq!(d.purged_queued.len(), 1, "and the replayed event is purged");
    assert_eq!(
        ledger(&*q).await[0].users,
        [HeapUser::Identity("ext-c".into())]
    );
}
