//! Pacing on paused time: how fully a lane with a backlog uses the app budget, and that no
//! window ever holds more than the budget, measured exactly on tokio's clock.
//!
//! The wall-clock pacing runs (`tests/pacing.rs`) measure the same through real HTTP, but on a
//! busy machine the forwarder there may not get the CPU to keep up with the budget, so their
//! utilisation floors are lax. Here time only moves when every task waits on a timer, so the
//! figures depend on the lane's decisions alone: a lane that drains at half the budget, or
//! over it, fails here whatever the machine is doing.

use currents_heap_testkit::standin::max_in_window;

use super::*;

/// What the scripted Heap received over a drain, on tokio's clock.
struct Drain {
    /// One arrival per event, relative to the first request.
    arrivals: Vec<Duration>,
    /// Per budget key (identity), one arrival per event.
    per_identity: HashMap<String, Vec<Duration>>,
    /// The last request's arrival.
    end: Duration,
}

/// Queues `events` (`(id, identity)`) and runs the lane's steps, waiting as
/// [`Delivery::run`] would (on paused time), until the queue is empty.
async fn drain(lane: &mut Lane, events: &[(String, String)]) -> Drain {
    for chunk in events.chunks(2000) {
        let chunk: Vec<(&str, &str)> = chunk
            .iter()
            .map(|(id, user)| (id.as_str(), user.as_str()))
            .collect();
        lane.queue_events(&chunk).await;
    }
    let mut delivered = 0;
    loop {
        match lane.step().await {
            Step::Sent(report) => {
                assert_eq!(report.retried + report.dead_lettered, 0, "{report:?}");
                delivered += report.delivered;
            }
            Step::Idle { wait } if lane.queue.totals().events > 0 => {
                tokio::time::sleep(wait).await;
            }
            Step::Idle { .. } => break,
            other => panic!("unexpected step {other:?}"),
        }
    }
    assert_eq!(delivered, events.len());
    let requests = lane.heap.track_requests();
    let start = requests[0].0;
    let mut arrivals = Vec::with_capacity(events.len());
    let mut per_identity: HashMap<String, Vec<Duration>> = HashMap::new();
    for (at, keys) in &requests {
        let at = *at - start;
        for key in keys {
            arrivals.push(at);
            per_identity.entry(key.clone()).or_default().push(at);
        }
    }
    let end = requests.last().unwrap().0 - start;
    Drain {
        arrivals,
        per_identity,
        end,
    }
}

/// The emptiest window `(t − W, t]` lying inside the drain (`W <= t <= end`), ending at an
/// arrival, as a count.
fn emptiest_full_window(arrivals: &[Duration], window: Duration, end: Duration) -> usize {
    arrivals
        .iter()
        .filter(|t| **t >= window && **t <= end)
        .map(|&t| {
            let from = arrivals.partition_point(|a| *a <= t - window);
            let to = arrivals.partition_point(|a| *a <= t);
            to - from
        })
        .min()
        .expect("the drain lasts more than a window")
}

/// The production shape (budget per 60 s, burst 1/60 of it, linger 1 s), at 6,000 events per
/// minute so the backlog is small: 15,000 events over 500 identities, two and a half windows of
/// budget. `BudgetShape` paces at `(0.99·B − B/60)` per window once the burst is spent: 97.3 %.
#[tokio::test(start_paused = true)]
async fn a_backlog_drains_at_97_percent_of_the_app_budget_and_no_window_exceeds_it() {
    const BUDGET: u32 = 6_000;
    const IDENTITY_BUDGET: u32 = 1_000;
    let window = Duration::from_secs(60);
    let mut cfg = config(BUDGET, IDENTITY_BUDGET);
    cfg.linger = Duration::from_secs(1);
    let mut lane = lane(cfg).await;
    let events: Vec<(String, String)> = (0..15_000)
        .map(|i| (format!("e-{i}"), format!("user-{}", i % 500)))
        .collect();
    let started = Instant::now();
    let d = drain(&mut lane, &events).await;
    assert_eq!(started.elapsed(), d.end, "the first request went at once");

    let budget = f64::from(BUDGET);
    let fullest = max_in_window(&d.arrivals, window);
    let fullest_identity = d
        .per_identity
        .values()
        .map(|a| max_in_window(a, window))
        .max()
        .unwrap();
    // The 1 % margin (for the network between our clock and Heap's) is kept exactly.
    assert!(
        fullest as f64 <= 0.99 * budget,
        "a window held {fullest} events, over 99 % of the budget {BUDGET}"
    );
    assert!(
        fullest_identity as u32 <= IDENTITY_BUDGET,
        "an identity's window held {fullest_identity} events, over its budget {IDENTITY_BUDGET}"
    );
    // Events after the first request, per window of the drain.
    let first = d.arrivals.partition_point(|a| a.is_zero());
    let utilisation =
        (d.arrivals.len() - first) as f64 / d.end.as_secs_f64() * window.as_secs_f64() / budget;
    let emptiest = emptiest_full_window(&d.arrivals, window, d.end);
    println!(
        "paused-time drain of {} events: {:.2} % of the app budget, fullest window {fullest}, emptiest full window {emptiest}, fullest identity window {fullest_identity}, {:.1} s",
        d.arrivals.len(),
        utilisation * 100.0,
        d.end.as_secs_f64()
    );
    assert!(
        utilisation >= 0.97,
        "the app budget was used at {:.2} % while draining (want ≥ 97 %)",
        utilisation * 100.0
    );
    // Nor faster than the GCRA's rate, (0.99·B − B/60) per window = 97.33 %: the whole windows
    // above count whole bursts, so this is what sees the 1 % margin eaten.
    assert!(
        utilisation <= 0.99 - 1.0 / 60.0 + 0.001,
        "the app budget was used at {:.2} % while draining, over the 97.33 % the budget's shape allows",
        utilisation * 100.0
    );
    assert!(
        emptiest as f64 >= 0.97 * budget,
        "a window inside the drain held only {emptiest} events ({:.1} % of the budget)",
        emptiest as f64 / budget * 100.0
    );
}
