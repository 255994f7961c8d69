//! The delivery lanes of a configuration — one per Heap app id, serving every route that
//! delivers there — and how a configuration reload changes them without losing or doubling an
//! event.
//!
//! Why lanes are replaced rather than edited in place: a lane's state that matters lives in the
//! store (an event leaves the queue only once Heap accepted it or it was dead-lettered), so a
//! lane can always be stopped after its request in flight and another started on the same
//! queue. What lives only in memory and shapes what Heap sees — the budget state and a
//! `Retry-After` pause — is handed from the old lane to the new one ([`LaneCarry`]). Lanes
//! whose configuration did not change keep running untouched.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::delivery::{
    BudgetShape, Delivery, DeliveryConfig, DryRun, LaneBell, LaneCarry, RouteMapping, Sender,
};
use crate::heap::client::HeapClient;
use crate::leadership::{Fence, FencedSender, Leadership, run_led};
use crate::metrics::{Metrics, UNROUTABLE};
use crate::queue::{Queue, QueueError, QueueOp};
use crate::routing::default_app_id;

/// What one lane is: its delivery settings and where it sends.
#[derive(Debug, Clone, PartialEq)]
pub struct LanePlan {
    pub cfg: DeliveryConfig,
    pub base_url: String,
}

/// The lanes `settings` asks for, in order: the default route's first, then `[[route]]` tables
/// in file order; routes sharing an app id share the first one's lane.
pub fn plan(settings: &Settings) -> Vec<LanePlan> {
    struct Spec {
        name: String,
        app_id: String,
        base_url: String,
        per_minute: NonZeroU32,
        identity_per_minute: NonZeroU32,
        routes: HashMap<String, RouteMapping>,
        fallback: RouteMapping,
    }
    let mut specs: Vec<Spec> = Vec::new();
    let mut add =
        |name: &str, app_id: &str, base_url: &str, pm, ipm, mapping: RouteMapping| match specs
            .iter_mut()
            .find(|l| l.app_id == app_id)
        {
            Some(l) => {
                l.routes.insert(name.to_owned(), mapping);
            }
            None => specs.push(Spec {
                name: name.to_owned(),
                app_id: app_id.to_owned(),
                base_url: base_url.to_owned(),
                per_minute: pm,
                identity_per_minute: ipm,
                routes: HashMap::from([(name.to_owned(), mapping.clone())]),
                fallback: mapping,
            }),
        };
    for r in settings.all_routes() {
        // The default route has a lane only with an app id (or in a dry run without routes).
        let Some(app_id) = r
            .heap_app_id
            .map(|id| id.as_str())
            .or_else(|| default_app_id(settings))
        else {
            continue;
        };
        add(
            r.name,
            app_id,
            r.heap_base_url,
            r.heap_events_per_minute,
            r.heap_identity_events_per_minute,
            RouteMapping {
                mapping: r.mapping.into(),
                dead_letter_skipped: r.dead_letter_skipped,
            },
        );
    }
    specs
        .into_iter()
        .map(|l| LanePlan {
            base_url: l.base_url,
            cfg: DeliveryConfig {
                lane: Arc::from(l.name.as_str()),
                app_id: l.app_id,
                routes: l.routes,
                fallback: l.fallback,
                batch_size: settings.heap_batch_size,
                linger: settings.heap_linger,
                max_request_bytes: usize::try_from(settings.heap_max_request_bytes)
                    .unwrap_or(usize::MAX),
                window_bytes: usize::try_from(settings.delivery_window_bytes).unwrap_or(usize::MAX),
                events_per_window: l.per_minute,
                identity_events_per_window: l.identity_per_minute,
                window: settings.heap_budget_window,
                backoff: (&settings.retry_backoff).into(),
                max_event_age: settings.max_event_age,
            },
        })
        .collect()
}

/// A lane built and not yet started, running, or stopped.
#[derive(Debug)]
enum LaneState {
    Ready(Box<Delivery>),
    Stopped,
    Running {
        stop: CancellationToken,
        task: JoinHandle<Option<LaneCarry>>,
    },
}

#[derive(Debug)]
struct Lane {
    plan: LanePlan,
    bell: Arc<LaneBell>,
    state: LaneState,
    /// With leases: the fence of the lane's sender, and how to make the lane afresh at a
    /// takeover.
    led: Option<Led>,
}

/// What a lane held under a lease needs besides its first [`Delivery`].
struct Led {
    fence: Fence,
    make: Arc<dyn Fn() -> Delivery + Send + Sync>,
}

impl std::fmt::Debug for Led {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Led").field("fence", &self.fence).finish()
    }
}

/// What a reload did to the lanes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LaneChanges {
    pub started: Vec<String>,
    pub replaced: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The lanes of the running configuration, by Heap app id.
#[derive(Debug)]
pub struct LaneSet {
    lanes: Vec<Lane>,
    queue: Arc<dyn Queue>,
    metrics: Metrics,
    dry_run: bool,
    heap_timeout: Duration,
    /// With several replicas (JetStream): each lane runs only while this replica holds its
    /// lease.
    leadership: Option<Leadership>,
}

impl LaneSet {
    /// Builds the lanes of `settings` (not started: see [`LaneSet::start`]); with
    /// `leadership`, each runs only while this replica holds its lease.
    pub fn build(
        settings: &Settings,
        queue: &Arc<dyn Queue>,
        metrics: &Metrics,
        leadership: Option<Leadership>,
    ) -> Self {
        let mut set = LaneSet {
            lanes: Vec::new(),
            queue: Arc::clone(queue),
            metrics: metrics.clone(),
            dry_run: settings.dry_run,
            heap_timeout: settings.heap_timeout,
            leadership,
        };
        for plan in plan(settings) {
            let lane = set.new_lane(plan, Arc::default());
            set.lanes.push(lane);
        }
        set
    }

    fn new_lane(&self, plan: LanePlan, bell: Arc<LaneBell>) -> Lane {
        let mut sender = if self.dry_run {
            Arc::new(DryRun) as Arc<dyn Sender>
        } else {
            Arc::new(HeapClient::new(&plan.base_url, self.heap_timeout))
        };
        let fence = self.leadership.as_ref().map(|_| Fence::default());
        if let Some(fence) = &fence {
            sender = Arc::new(FencedSender::new(sender, fence.clone()));
        }
        self.metrics.init_route(&plan.cfg.lane);
        for (budget, v) in [
            ("app", plan.cfg.events_per_window),
            ("identity", plan.cfg.identity_events_per_window),
        ] {
            self.metrics
                .delivery
                .set_budget(&plan.cfg.lane, budget, v.get());
        }
        let make = {
            let (cfg, queue, metrics, bell) = (
                plan.cfg.clone(),
                Arc::clone(&self.queue),
                self.metrics.clone(),
                Arc::clone(&bell),
            );
            Arc::new(move || {
                Delivery::new(
                    cfg.clone(),
                    Arc::clone(&sender),
                    Arc::clone(&queue),
                    metrics.clone(),
                    Arc::clone(&bell),
                )
            })
        };
        let delivery = make();
        Lane {
            plan,
            bell,
            state: LaneState::Ready(Box::new(delivery)),
            led: fence.map(|fence| Led { fence, make }),
        }
    }

    /// Starts every lane that is not running yet.
    pub fn start(&mut self) {
        for lane in &mut self.lanes {
            if let LaneState::Ready(delivery) =
                std::mem::replace(&mut lane.state, LaneState::Stopped)
            {
                let stop = CancellationToken::new();
                let leader = self.metrics.delivery.leader(&lane.plan.cfg.lane);
                let task = match (&self.leadership, &lane.led) {
                    (Some(leadership), Some(led)) => {
                        let make = Arc::clone(&led.make);
                        tokio::spawn(run_led(
                            leadership.clone(),
                            lane.plan.cfg.app_id.clone(),
                            led.fence.clone(),
                            *delivery,
                            move || make(),
                            leader,
                            stop.clone(),
                        ))
                    }
                    _ => {
                        let stop = stop.clone();
                        tokio::spawn(async move {
                            leader.set(1);
                            let carry = delivery.run(stop).await;
                            leader.set(0);
                            Some(carry)
                        })
                    }
                };
                lane.state = LaneState::Running { task, stop };
            }
        }
    }

    /// The bell ingest rings for an app id (new events, purged events).
    pub fn bells(&self) -> HashMap<Arc<str>, Arc<LaneBell>> {
        self.lanes
            .iter()
            .map(|l| (Arc::from(l.plan.cfg.app_id.as_str()), Arc::clone(&l.bell)))
            .collect()
    }

    /// Events per second all lanes together send with a backlog.
    pub fn drain_rate(&self) -> f64 {
        self.lanes
            .iter()
            .map(|l| {
                let burst = l
                    .plan
                    .cfg
                    .batch_size
                    .clamp(1, crate::heap::model::MAX_BULK_ITEMS);
                BudgetShape::new(
                    l.plan.cfg.events_per_window,
                    l.plan.cfg.window,
                    burst as u32,
                )
                .rate()
            })
            .sum()
    }

    pub fn app_ids(&self) -> impl Iterator<Item = &str> {
        self.lanes.iter().map(|l| l.plan.cfg.app_id.as_str())
    }

    /// Moves to the lanes of `settings`: lanes whose plan is unchanged keep running; a changed
    /// lane is stopped (its request in flight finishes) and replaced by one that continues from
    /// its budgets and pause; new app ids get a lane; lanes of app ids no longer served stop
    /// (their queued events are dead-lettered by [`dead_letter_orphans`] once no request routed
    /// by the old configuration is in flight).
    pub async fn apply(&mut self, settings: &Settings, grace: Duration) -> LaneChanges {
        // First the new lanes, with nothing stopped yet.
        enum Step {
            Keep(usize),
            Replace(usize, Lane),
            Start(Lane),
        }
        let mut steps = Vec::new();
        for plan in plan(settings) {
            let step = match self
                .lanes
                .iter()
                .position(|l| l.plan.cfg.app_id == plan.cfg.app_id)
            {
                Some(i) if self.lanes[i].plan == plan => Step::Keep(i),
                Some(i) => {
                    let bell = Arc::clone(&self.lanes[i].bell);
                    Step::Replace(i, self.new_lane(plan, bell))
                }
                None => Step::Start(self.new_lane(plan, Arc::default())),
            };
            steps.push(step);
        }
        // Then the changes, which cannot fail.
        let mut changes = LaneChanges::default();
        let mut old: Vec<Option<Lane>> = std::mem::take(&mut self.lanes)
            .into_iter()
            .map(Some)
            .collect();
        for step in steps {
            match step {
                Step::Keep(i) => {
                    let lane = old[i].take().expect("each old lane is used once");
                    changes.unchanged.push(lane.plan.cfg.lane.to_string());
                    self.lanes.push(lane);
                }
                Step::Replace(i, mut lane) => {
                    let previous = old[i].take().expect("each old lane is used once");
                    // The old lane finishes its request in flight before its successor starts.
                    let carry = stop_lane(previous, grace).await;
                    if let (Some(carry), LaneState::Ready(d)) = (carry, &mut lane.state) {
                        d.resume(carry);
                    }
                    changes.replaced.push(lane.plan.cfg.lane.to_string());
                    self.lanes.push(lane);
                }
                Step::Start(lane) => {
                    changes.started.push(lane.plan.cfg.lane.to_string());
                    self.lanes.push(lane);
                }
            }
        }
        let gone: Vec<Lane> = old.into_iter().flatten().collect();
        for lane in &gone {
            changes.stopped.push(lane.plan.cfg.lane.to_string());
        }
        stop_all(gone, grace).await;
        self.start();
        changes
    }

    /// Stops every lane (a request in flight finishes first), all at once, waiting at most
    /// `grace` in all; returns whether every lane stopped in time.
    pub async fn stop(self, grace: Duration) -> bool {
        stop_all(self.lanes, grace).await
    }
}

/// Signals every lane to stop, then waits for all of them within one `grace`.
async fn stop_all(lanes: Vec<Lane>, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    for lane in &lanes {
        if let LaneState::Running { stop, .. } = &lane.state {
            stop.cancel();
        }
    }
    let mut all = true;
    for lane in lanes {
        let running = matches!(lane.state, LaneState::Running { .. });
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let stopped = stop_lane(lane, left).await.is_some();
        all &= stopped || !running;
    }
    all
}

/// Stops one lane: a request in flight finishes first, within `grace`; past it the task is
/// aborted, and waited for, so no successor ever runs beside it. Its carry when it stopped in
/// time.
async fn stop_lane(lane: Lane, grace: Duration) -> Option<LaneCarry> {
    match lane.state {
        LaneState::Ready(_) | LaneState::Stopped => None,
        LaneState::Running { stop, mut task } => {
            stop.cancel();
            match tokio::time::timeout(grace, &mut task).await {
                Ok(Ok(carry)) => carry,
                _ => {
                    task.abort();
                    let _ = task.await;
                    tracing::warn!(
                        message = "A delivery lane did not stop within the grace period; its undelivered events stay queued.",
                        route = %lane.plan.cfg.lane,
                    );
                    None
                }
            }
        }
    }
}

/// Queued events whose app id no lane serves (the configuration changed) become dead letters
/// `unroutable`: visible, counted, and replayable once the configuration routes them again.
pub async fn dead_letter_orphans(queue: &dyn Queue, served: &[&str]) -> Result<(), QueueError> {
    let queued = queue.queued_app_ids().await?;
    for app_id in queued {
        if served.contains(&app_id.as_str()) {
            continue;
        }
        match queue
            .apply(QueueOp::DeadLetterApp {
                app_id: app_id.clone(),
                reason: UNROUTABLE.to_owned(),
            })
            .await
        {
            Ok(o) => tracing::warn!(
                message = "Queued events for a Heap app id no route delivers to; kept as dead letters (reason unroutable). Fix the routes, then `dlq replay --reason unroutable`.",
                app_id = %app_id,
                events = o.rows,
            ),
            Err(e) => {
                tracing::error!(message = "Cannot dead-letter orphaned events.", app_id = %app_id, error = %e)
            }
        }
    }
    Ok(())
}
