//! What every queue store promises for continuity across restarts (product.md §9): a lane's
//! saved state, replaced whole by each save, and the user-property stamps, each keeping the
//! newest event time, both surviving a restart.

use currents_heap::queue::{
    HeapUser, NewEvent, PropertyStamp, QueueError, QueueOp, SavedIdentity, SavedLane,
};

use crate::conformance::{APP, Backend, Limits, event, open, queued};

fn saved(app_id: &str, refilled: i64, paused: i64, identities: &[(&str, i64)]) -> SavedLane {
    SavedLane {
        app_id: app_id.into(),
        app_budget_refilled_at: refilled,
        paused_until: paused,
        identities: identities
            .iter()
            .map(|(identity, deferred_until)| SavedIdentity {
                identity: (*identity).into(),
                budget_refilled_at: refilled + 1,
                deferred_until: *deferred_until,
                next_slot: deferred_until + 5,
            })
            .collect(),
    }
}

pub async fn a_saved_lane_is_replaced_whole_and_survives_a_restart<B: Backend>() {
    let (b, q) = open::<B>().await;
    assert_eq!(q.saved_lane(APP).await.unwrap(), None);
    q.apply(QueueOp::SaveLane(saved(
        APP,
        10,
        20,
        &[("x", 30), ("y", 40)],
    )))
    .await
    .unwrap();
    let latest = saved(APP, 11, 0, &[("y", 41)]);
    q.apply(QueueOp::SaveLane(latest.clone())).await.unwrap();
    let other = saved("other-app", 1, 2, &[]);
    q.apply(QueueOp::SaveLane(other.clone())).await.unwrap();
    assert_eq!(
        q.saved_lane(APP).await.unwrap().as_ref(),
        Some(&latest),
        "a save replaces the lane's identities too"
    );
    q.close().await.unwrap();
    drop(q);
    let q = b.open(Limits::default()).await;
    assert_eq!(q.saved_lane(APP).await.unwrap(), Some(latest));
    assert_eq!(q.saved_lane("other-app").await.unwrap(), Some(other));
    q.close().await.unwrap();
    assert_eq!(q.saved_lane(APP).await, Err(QueueError::Closed));
}

pub async fn stamps_keep_the_newest_event_time_across_a_restart<B: Backend>() {
    let (b, q) = open::<B>().await;
    let key = |prop: &str| PropertyStamp::key(APP, "user-a", prop);
    let (plan, city, unknown) = (key("plan"), key("city"), key("never"));
    assert_ne!(plan, city);
    assert_ne!(
        PropertyStamp::key("ab", "c", "d"),
        PropertyStamp::key("a", "bc", "d"),
        "the parts cannot run into each other"
    );
    q.append(vec![event("e1", APP, "{}"), event("e2", APP, "{}")])
        .await
        .unwrap();
    let seqs: Vec<i64> = queued(&*q).await.iter().map(|e| e.seq).collect();
    q.apply(QueueOp::Ack {
        seqs: vec![seqs[0]],
        stamps: vec![PropertyStamp {
            key: plan,
            event_time: 200,
        }],
    })
    .await
    .unwrap();
    q.apply(QueueOp::Ack {
        seqs: vec![seqs[1]],
        stamps: vec![
            PropertyStamp {
                key: plan,
                event_time: 100,
            },
            PropertyStamp {
                key: city,
                event_time: 50,
            },
        ],
    })
    .await
    .unwrap();
    assert_eq!(q.totals().events, 0, "the acks acknowledged");
    let expect = vec![
        PropertyStamp {
            key: plan,
            event_time: 200,
        },
        PropertyStamp {
            key: city,
            event_time: 50,
        },
    ];
    assert_eq!(
        q.property_stamps(vec![plan, unknown, city]).await.unwrap(),
        expect,
        "an older update does not lower a stamp; keys never stamped are left out"
    );
    q.close().await.unwrap();
    drop(q);
    let q = b.open(Limits::default()).await;
    assert_eq!(
        q.property_stamps(vec![plan, unknown, city]).await.unwrap(),
        expect
    );
    q.close().await.unwrap();
    assert_eq!(q.property_stamps(vec![plan]).await, Err(QueueError::Closed));
}

pub async fn a_deletion_forgets_the_user_in_saved_lanes<B: Backend>() {
    let (_b, q) = open::<B>().await;
    let of_user = NewEvent {
        braze_user_id: Some("braze-a".into()),
        heap_user: Some(HeapUser::Identity("ext-a".into())),
        ..event("e1", APP, "{}")
    };
    q.append(vec![of_user]).await.unwrap();
    q.apply(QueueOp::SaveLane(saved(
        APP,
        10,
        0,
        &[("ext-a", 30), ("ext-b", 40)],
    )))
    .await
    .unwrap();
    let deletion = NewEvent {
        braze_user_id: Some("braze-a".into()),
        deletion: true,
        event_type: "users.UserDeleteRequest".into(),
        ..event("d1", APP, "{}")
    };
    q.append(vec![deletion]).await.unwrap();
    let left: Vec<String> = q
        .saved_lane(APP)
        .await
        .unwrap()
        .unwrap()
        .identities
        .into_iter()
        .map(|i| i.identity)
        .collect();
    assert_eq!(left, ["ext-b"], "the deleted user's identity is not kept");
}
