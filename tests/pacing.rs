//! Pacing (product.md §1.1, §5), the acceptance measurement: a backlog drains at just under
//! Heap's app budget, the forwarder never sends more than either budget in any window of the
//! stand-in, and an identity over its budget is deferred without holding back the others while
//! it trickles at its own budget.
//!
//! What each run can judge on a machine it shares: the budgets are judged on every request
//! the stand-in *received* (its offered windows: the ones it refused count too), and none may
//! be refused; a machine too busy for the forwarder to keep up only lowers what it sends, so
//! these hold whatever the load. How fully the budget is used depends on the CPU the forwarder
//! gets, so the CI-scale runs only have lax floors (they catch a lane that stalls or a budget
//! setting that is not applied, and could still fail on a machine more than twice as starved
//! as the worst measured); the exact figures (97 % of the app budget, no window over 99 %
//! of it) are asserted on paused time in `src/delivery/tests/pacing.rs`, which no load can
//! change, and by the acceptance run below, which `.ci/run` runs on an optimized build.
//!
//! Scaling: Heap's minute becomes `window` for both the forwarder (`heap_budget_window`) and
//! the stand-in, and the linger becomes `window / 60` (the production 1 s per minute). The
//! forwarder's bursts are 1/60 of each budget, so this keeps the production shape: a linger
//! spans about one identity burst, the app budget is 15× the identity budget, the ordinary
//! identities' backlog takes about two windows of app budget (one and a half at the CI scale)
//! and (when present) the hot identity holds five windows of its own budget (two at the CI
//! scale).
//!
//! The backlog is written into the store before the server starts (as after an outage, or a
//! restart with a backlog), so delivery meets all of it at once.
//!
//! The acceptance run (30,000 events over 1,000 identities plus 5,000 for one identity,
//! production budgets 15,000 / 1,000 per 6 s window) needs an optimized build: a debug build
//! runs out of CPU at 2,500 events/s on a busy machine (64 % measured). `.ci/run` runs it on
//! its opt-level 1 build. It checks the budgets on every run, and the figures on the best of up
//! to three runs (a busy machine only lowers them). By hand:
//!
//! ```sh
//! cargo test --release --test pacing acceptance_pacing -- --ignored --nocapture
//! ```
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use currents_heap::config::SettingsArgs;
use currents_heap::queue::NewEvent;
use currents_heap::queue::sqlite::{Store, Writer, WriterConfig};
use currents_heap_testkit::standin::{HeapStandIn, Report, StandInConfig, max_in_window};

mod common;

use common::*;

/// The pacing runs measure how fully the budget is used, so they take turns: two at once on
/// two cores would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn take_turn() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

const HOT: &str = "hot-user";

struct Scenario {
    window: Duration,
    app_budget: u32,
    identity_budget: u32,
    identities: usize,
    per_identity: usize,
    hot_events: usize,
}

impl Scenario {
    fn cold_events(&self) -> usize {
        self.identities * self.per_identity
    }

    /// The app budget, events per second.
    fn app_rate(&self) -> f64 {
        f64::from(self.app_budget) / self.window.as_secs_f64()
    }

    fn identity_rate(&self) -> f64 {
        f64::from(self.identity_budget) / self.window.as_secs_f64()
    }
}

/// What a run measured. The "cold phase" runs from the first arrival to the arrival of the
/// last event of an ordinary (not hot) identity: the backlog demands the whole app budget
/// throughout it.
struct Figures {
    cold_phase: Duration,
    /// First arrival to the last hot event (`None` without a hot identity).
    hot_phase: Option<Duration>,
    /// Events received in the cold phase after the first request, per window, over the app
    /// budget.
    utilisation: f64,
    /// The emptiest window `(t − W, t]` lying inside the cold phase, over the app budget.
    min_full_window: Option<f64>,
    /// The fullest app window over every request the stand-in received, refused ones included
    /// (enforcement refuses what would exceed the budget, so accepted windows never do).
    max_window: u32,
    /// The same per identity.
    max_identity_window: u32,
    limit_rejections: u64,
    /// The cold phase over the time the app budget alone needs for the ordinary events.
    cold_over_ideal: f64,
    /// Hot events received per window during the cold phase, over the identity budget.
    hot_in_cold_phase: f64,
    /// Hot events received per window after the cold phase, over the identity budget.
    hot_after_cold_phase: f64,
    report: Report,
}

fn backlog(s: &Scenario) -> (Vec<NewEvent>, Vec<String>, Vec<String>) {
    let total = s.cold_events() + s.hot_events;
    // The hot identity's events are spread through the backlog (a bot or a test user firing
    // all day); the others cycle over their identities.
    let stride = total / s.hot_events.max(1);
    let route: Arc<str> = Arc::from(currents_heap::config::DEFAULT_ROUTE);
    let app_id: Arc<str> = Arc::from(APP_ID);
    let mut events = Vec::with_capacity(total);
    let mut cold = Vec::with_capacity(s.cold_events());
    let mut hot = Vec::with_capacity(s.hot_events);
    for i in 0..total {
        let is_hot = hot.len() < s.hot_events && (i % stride == 0 || cold.len() == s.cold_events());
        let (id, user) = if is_hot {
            let id = format!("hot-{}", hot.len());
            hot.push(id.clone());
            (id, HOT.to_owned())
        } else {
            let id = format!("cold-{}", cold.len());
            let user = format!("user-{}", cold.len() % s.identities);
            cold.push(id.clone());
            (id, user)
        };
        let payload = serde_json::to_vec(&email_send(&id, &user)).unwrap();
        events.push(NewEvent {
            route: Arc::clone(&route),
            app_id: Arc::clone(&app_id),
            workspace: None,
            dead_letter: None,
            event_id: id,
            event_type: "users.messages.email.Send".into(),
            identity: Some(user),
            event_time: 1_780_000_000,
            payload: Bytes::from(payload),
            braze_user_id: None,
            heap_user: None,
            deletion: false,
        });
    }
    assert_eq!((cold.len(), hot.len()), (s.cold_events(), s.hot_events));
    (events, cold, hot)
}

/// Writes the backlog into the store of `dir`, as `POST /currents` would have.
async fn preload(dir: std::path::PathBuf, mut events: Vec<NewEvent>) {
    let store = Store::open(&dir).unwrap();
    let (writer, handle) = Writer::spawn(
        &store,
        WriterConfig {
            max_queue_bytes: 1 << 40,
            min_free_disk_bytes: 0,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_capacity: 1 << 20,
            identity_map_retention: std::time::Duration::from_secs(400 * 86_400),
        },
    )
    .unwrap();
    while !events.is_empty() {
        let rest = events.split_off(events.len().min(2000));
        let chunk = std::mem::replace(&mut events, rest);
        let n = chunk.len();
        let receipt = writer.append(chunk).await.expect("preload append");
        assert_eq!(receipt.accepted(), n);
    }
    drop(writer);
    tokio::task::spawn_blocking(move || handle.close())
        .await
        .unwrap();
}

/// How long [`run`] lets delivery go on.
#[derive(PartialEq, Eq)]
enum Until {
    /// Every event delivered and the queue empty.
    Drained,
    /// Every event of the ordinary identities delivered (the hot identity may still be
    /// trickling): enough to judge the app budget and head-of-line blocking.
    ColdDelivered,
}

async fn run(s: &Scenario, until: Until) -> Figures {
    init_logs();
    let heap = HeapStandIn::start(StandInConfig {
        events_per_window: s.app_budget,
        identity_events_per_window: s.identity_budget,
        window: s.window,
        enforce: true,
    });
    let data_dir = tempfile::tempdir().unwrap();
    let (events, cold, hot) = backlog(s);
    preload(data_dir.path().to_owned(), events).await;

    let args = SettingsArgs {
        heap_events_per_minute: Some(s.app_budget.to_string()),
        heap_identity_events_per_minute: Some(s.identity_budget.to_string()),
        heap_budget_window: Some(format!("{}ms", s.window.as_millis())),
        heap_linger: Some(format!("{}ms", (s.window / 60).as_millis())),
        ..base_args()
    };
    let mut h = TestApp::stopped(heap, data_dir, args);
    h.start_app().await;

    let total = (s.cold_events() + s.hot_events) as f64;
    let expected = Duration::from_secs_f64(
        (s.hot_events as f64 / s.identity_rate()).max(total / s.app_rate()),
    );
    let mut all = cold.clone();
    all.extend(hot.iter().cloned());
    // Only a guard against a hung lane: a busy machine stretches a debug run several times.
    let within = expected * 8 + Duration::from_secs(30);
    if until == Until::ColdDelivered {
        wait_until("the ordinary identities are delivered", within, || {
            let report = h.heap().report();
            cold.iter().all(|k| report.key_count(k) > 0)
        })
        .await;
        let report = h.heap().report();
        h.stop_app().await;
        assert_eq!(report.duplicate_deliveries(), 0);
        return figures(s, report);
    }
    let report = h.wait_delivered(&all, within).await;
    let text = h.metrics().await;
    h.stop_app().await;

    report
        .check_exactly_once(all.iter().map(String::as_str))
        .unwrap();
    assert_eq!(metric_value(&text, "currents_heap_queue_events"), 0.0);
    figures(s, report)
}

fn figures(s: &Scenario, report: Report) -> Figures {
    let is_hot = |key: &str| key.starts_with("hot-");
    let start = report.first_arrival.expect("arrivals");
    let mut cold_end = start;
    let mut hot_end = None::<Duration>;
    for b in &report.track_batches {
        for e in &b.events {
            if is_hot(&e.idempotency_key) {
                hot_end = Some(hot_end.map_or(b.at, |t| t.max(b.at)));
            } else {
                cold_end = cold_end.max(b.at);
            }
        }
    }
    let cold_phase = cold_end - start;
    let in_cold_phase = |t: Duration| t > start && t <= cold_end;

    let mut arrivals = report.app_arrivals(APP_ID);
    arrivals.sort_unstable();
    assert_eq!(
        max_in_window(&arrivals, s.window) as u32,
        report.max_app_window.events
    );
    assert_eq!(
        max_in_window(&report.offered_app_arrivals(APP_ID), s.window) as u32,
        report.max_offered_app_window.events
    );
    let after_first = arrivals.iter().filter(|t| in_cold_phase(**t)).count();
    let utilisation = after_first as f64 / cold_phase.as_secs_f64() / s.app_rate();
    // Every window (t − W, t] inside the cold phase, ending at an arrival.
    let min_full_window = arrivals
        .iter()
        .filter(|t| **t >= start + s.window && **t <= cold_end)
        .map(|&t| {
            let from = arrivals.partition_point(|a| *a <= t - s.window);
            let to = arrivals.partition_point(|a| *a <= t);
            to - from
        })
        .min()
        .map(|n| n as f64 / f64::from(s.app_budget));

    let hot_arrivals = report.identity_arrivals(APP_ID, HOT);
    let hot_in_cold = hot_arrivals.iter().filter(|t| in_cold_phase(**t)).count();
    let hot_in_cold_phase = hot_in_cold as f64 / cold_phase.as_secs_f64() / s.identity_rate();
    let hot_after_cold_phase = match hot_end {
        Some(end) if end > cold_end => {
            let n = hot_arrivals.iter().filter(|t| **t > cold_end).count();
            n as f64 / (end - cold_end).as_secs_f64() / s.identity_rate()
        }
        _ => f64::NAN,
    };

    Figures {
        cold_phase,
        hot_phase: hot_end.map(|t| t - start),
        utilisation,
        min_full_window,
        max_window: report.max_offered_app_window.events,
        max_identity_window: report.max_offered_identity_window.events,
        limit_rejections: report.limit_rejections,
        cold_over_ideal: cold_phase.as_secs_f64() / (s.cold_events() as f64 / s.app_rate()),
        hot_in_cold_phase,
        hot_after_cold_phase,
        report,
    }
}

fn print(s: &Scenario, f: &Figures) {
    println!(
        "pacing: window {:?} (linger {:?}), budgets {} / {} events per window, backlog {} events over {} identities + {} for one hot identity",
        s.window,
        s.window / 60,
        s.app_budget,
        s.identity_budget,
        s.cold_events(),
        s.identities,
        s.hot_events
    );
    println!(
        "  app budget used while draining: {:.1} % (average over the {:.2} s cold phase); emptiest full window in it: {}",
        f.utilisation * 100.0,
        f.cold_phase.as_secs_f64(),
        f.min_full_window.map_or(
            "none (phase shorter than a window)".to_owned(),
            |m| format!("{:.1} % of the budget", m * 100.0)
        ),
    );
    println!(
        "  stand-in: fullest app window {} / {} ({:.1} %), fullest identity window {} / {}, 429s for a budget: {}, track requests: {}",
        f.max_window,
        s.app_budget,
        f64::from(f.max_window) / f64::from(s.app_budget) * 100.0,
        f.max_identity_window,
        s.identity_budget,
        f.limit_rejections,
        f.report.requests_with(TRACK, 200)
    );
    println!(
        "  ordinary identities done after {:.2} s = {:.2} × the time the app budget needs for them ({:.2} s)",
        f.cold_phase.as_secs_f64(),
        f.cold_over_ideal,
        s.cold_events() as f64 / s.app_rate(),
    );
    if s.hot_events > 0 {
        println!(
            "  hot identity: {:.1} % of its budget during the cold phase",
            f.hot_in_cold_phase * 100.0
        );
    }
    if let Some(hot_phase) = f.hot_phase.filter(|_| f.hot_after_cold_phase.is_finite()) {
        println!(
            "  hot identity: {:.1} % of its budget after the cold phase; done after {:.2} s (its budget alone needs {:.2} s)",
            f.hot_after_cold_phase * 100.0,
            hot_phase.as_secs_f64(),
            s.hot_events as f64 / s.identity_rate(),
        );
    }
}

/// The acceptance run asserts the issue's figures. The CI-scale runs are debug builds sharing
/// two cores with whatever else the machine does: busy machines measured 43–82 % of the app
/// budget where a quiet one measures 96 %, because the forwarder runs out of CPU, not of
/// budget. So their floors are lax, half the worst seen beside a CPU hog while the machine
/// compiled (docs/PERFORMANCE.md): they catch a lane that stalls, or a budget setting that is
/// not applied (the window ignored would drain at 10 %), not a lane pacing a little slow. How exactly a lane paces is asserted on paused time in `src/delivery/tests`, and
/// head-of-line blocking there too (`an_identity_over_its_budget_is_parked_while_the_others_flow`).
/// The budgets are never loosened: in every run no window may exceed them.
const ACCEPTANCE_UTILISATION: f64 = 0.95;
const CI_UTILISATION: f64 = 0.20;
const ACCEPTANCE_HOLD_BACK: f64 = 1.2;
const CI_HOLD_BACK: f64 = 5.0;
const ACCEPTANCE_HOT_SHARE: f64 = 0.85;
const CI_HOT_SHARE: f64 = 0.20;

/// Budgets respected (and never triggered), the app budget used at ≥ `min_utilisation` while
/// draining, and the ordinary identities not held back (done within `max_hold_back` × the time
/// the app budget needs for them).
fn check_app_pacing(s: &Scenario, f: &Figures, min_utilisation: f64, max_hold_back: f64) {
    check_budgets(s, f);
    assert!(
        f.utilisation >= min_utilisation,
        "the app budget was used at {:.1} % while draining (want ≥ {:.0} %)",
        f.utilisation * 100.0,
        min_utilisation * 100.0
    );
    // Head-of-line blocking by the hot identity would stretch the cold phase towards the hot
    // identity's five windows; its fair share of the app budget costs ~7 %.
    assert!(
        f.cold_over_ideal <= max_hold_back,
        "the ordinary identities took {:.2} × the time the app budget needs for them",
        f.cold_over_ideal
    );
}

/// Neither budget exceeded in any window of what the forwarder *sent*: the windows count every
/// request the stand-in received, the ones it refused included, and none was refused.
fn check_budgets(s: &Scenario, f: &Figures) {
    assert!(
        f.max_window <= s.app_budget,
        "the forwarder sent {} events in one window, over the app budget {}",
        f.max_window,
        s.app_budget
    );
    assert!(
        f.max_identity_window <= s.identity_budget,
        "the forwarder sent {} events of one identity in one window, over its budget {}",
        f.max_identity_window,
        s.identity_budget
    );
    assert_eq!(
        f.limit_rejections, 0,
        "the stand-in refused requests over a budget"
    );
}

/// The hot identity trickles at its own budget, while the others drain and after.
fn check_hot_identity(f: &Figures, min_share: f64) {
    assert!(
        f.hot_in_cold_phase >= min_share,
        "the hot identity got {:.1} % of its budget while the others drained",
        f.hot_in_cold_phase * 100.0
    );
    assert!(
        f.hot_after_cold_phase >= min_share,
        "the hot identity got {:.1} % of its budget once alone",
        f.hot_after_cold_phase * 100.0
    );
}

/// The CI scale: half the production rates, same shape (7,500 / 500 events per 6 s window);
/// 11,250 events over 250 identities (one and a half windows of budget, so a forwarder that
/// ignored the budget would put more than the budget in a window), and 1,000 more for one hot
/// identity.
fn ci_scenario(hot_events: usize) -> Scenario {
    Scenario {
        window: Duration::from_secs(6),
        app_budget: 7_500,
        identity_budget: 500,
        identities: 250,
        per_identity: 45,
        hot_events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_many_identities_drains_at_just_under_the_app_budget() {
    let _turn = take_turn().await;
    let s = ci_scenario(0);
    let f = run(&s, Until::Drained).await;
    print(&s, &f);
    check_app_pacing(&s, &f, CI_UTILISATION, CI_HOLD_BACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_budget_does_not_hold_back_the_others() {
    let _turn = take_turn().await;
    let s = ci_scenario(1_000);
    let f = run(&s, Until::ColdDelivered).await;
    print(&s, &f);
    check_app_pacing(&s, &f, CI_UTILISATION, CI_HOLD_BACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_budget_trickles_at_its_own_budget() {
    let _turn = take_turn().await;
    let s = ci_scenario(1_000);
    let f = run(&s, Until::Drained).await;
    print(&s, &f);
    check_app_pacing(&s, &f, CI_UTILISATION, CI_HOLD_BACK);
    check_hot_identity(&f, CI_HOT_SHARE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "acceptance measurement, ~35 s a run (see the module docs): run with --ignored --nocapture"]
async fn acceptance_pacing_30k_backlog_1000_identities_and_one_hot_identity() {
    let _turn = take_turn().await;
    let s = Scenario {
        window: Duration::from_secs(6),
        app_budget: 15_000,
        identity_budget: 1_000,
        identities: 1_000,
        per_identity: 30,
        hot_events: 5_000,
    };
    // A busy machine can only lower these figures: the forwarder gets less CPU, or is scheduled
    // late and, taking full bursts, loses the lateness; nothing makes it send faster than its
    // budget. So the best of up to three runs is the estimate of what the forwarder does, and a
    // forwarder that paces below the figures fails all three. The budgets are checked on every
    // run: going over one is never noise.
    for attempt in 1..=ACCEPTANCE_RUNS {
        let f = run(&s, Until::Drained).await;
        print(&s, &f);
        check_budgets(&s, &f);
        let met = f.utilisation >= ACCEPTANCE_UTILISATION
            && f.cold_over_ideal <= ACCEPTANCE_HOLD_BACK
            && f.hot_in_cold_phase >= ACCEPTANCE_HOT_SHARE
            && f.hot_after_cold_phase >= ACCEPTANCE_HOT_SHARE;
        if met || attempt == ACCEPTANCE_RUNS {
            check_app_pacing(&s, &f, ACCEPTANCE_UTILISATION, ACCEPTANCE_HOLD_BACK);
            check_hot_identity(&f, ACCEPTANCE_HOT_SHARE);
            break;
        }
        println!("run {attempt} of {ACCEPTANCE_RUNS} below the figures: running again");
    }
}

/// Runs of the acceptance scenario, at most (see the test).
const ACCEPTANCE_RUNS: u32 = 3;

/// A regression test: `refill()` once moved its cursor past fresh rows it then dropped
/// because due deferred rows had filled its quota; those rows were never delivered until a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_events_coming_due_do_not_strand_the_rest_of_the_backlog() {
    let _turn = take_turn().await;
    // One identity over its budget (2 + ~58 events/s) inside a backlog of 665 others: its
    // deferred events come due while fresh events are still being read.
    let h = TestApp::start(
        StandInConfig {
            events_per_window: 3_000,
            identity_events_per_window: 120,
            window: Duration::from_secs(2),
            enforce: true,
        },
        SettingsArgs {
            heap_events_per_minute: Some("3000".into()),
            heap_identity_events_per_minute: Some("120".into()),
            heap_budget_window: Some("2s".into()),
            ..base_args()
        },
    )
    .await;
    let mut events = Vec::new();
    let mut ids = Vec::new();
    for i in 0..700 {
        let id = format!("strand-{i}");
        let user = if i % 20 == 0 {
            HOT.to_owned()
        } else {
            format!("user-{i}")
        };
        events.push(email_send(&id, &user));
        ids.push(id);
    }
    // One request: the whole backlog is queued before delivery reads any of it.
    let report = h.post_and_deliver(&events, &ids).await;
    assert!(
        !report.offered_over_budget(),
        "sent over a budget: {:?} / {:?}",
        report.max_offered_app_window,
        report.max_offered_identity_window
    );
    assert_eq!(report.limit_rejections, 0);
}
