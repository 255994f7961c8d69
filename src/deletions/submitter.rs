//! [`Submitter`]: the ledger of one Heap account, one step at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::delivery::Backoff;
use crate::heap::deletion::{
    DeletionApiError, DeletionUser, HeapDeletionClient, MAX_USERS_PER_REQUEST, RequestState,
};
use crate::metrics::Metrics;
use crate::queue::{
    DeletionQuery, DeletionRecord, DeletionStatus, HeapUser, Queue, QueueError, QueueOp,
    unix_millis,
};

/// How the submitters pace and retry.
#[derive(Debug, Clone)]
pub struct DeletionConfig {
    /// Least time between two requests to the deletion API of one account.
    pub request_interval: Duration,
    /// How often a submitted request's status is asked.
    pub poll_interval: Duration,
    /// Rows younger than this are not submitted yet (see the module docs).
    pub settle: Duration,
    /// Delays after transient failures.
    pub backoff: Backoff,
}

/// How often the ledger is looked at when there is nothing to do.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Ledger rows read per submission: most rows name one Heap user.
const ROWS_PER_READ: usize = MAX_USERS_PER_REQUEST;

/// What one [`Submitter::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitterStep {
    /// Nothing to do now; look again after this long.
    Idle(Duration),
    /// Rows of routes without an API key were marked `unconfigured`.
    Unconfigured(u64),
    /// A request was sent (a submission or a status poll); the next may follow after this long.
    Requested(Duration),
    /// The ledger could not be read or changed; try again after this long.
    QueueUnavailable(Duration),
}

/// Walks the ledger rows of the routes that share one Heap account.
#[derive(Debug)]
pub struct Submitter {
    /// The routes whose deletions go to this account.
    routes: Vec<String>,
    /// `None` when the routes have no API key: rows are marked `unconfigured`.
    client: Option<Arc<HeapDeletionClient>>,
    queue: Arc<dyn Queue>,
    metrics: Metrics,
    cfg: DeletionConfig,
    /// Consecutive transient failures (the backoff's exponent).
    failures: u32,
    /// When each submitted request was last asked about.
    polled: HashMap<String, Instant>,
    /// Whether `unconfigured` rows were handed back for submission (done once, at start).
    resumed: bool,
}

impl Submitter {
    pub fn new(
        routes: Vec<String>,
        client: Option<HeapDeletionClient>,
        queue: Arc<dyn Queue>,
        metrics: Metrics,
        cfg: DeletionConfig,
    ) -> Self {
        Self {
            routes,
            client: client.map(Arc::new),
            queue,
            metrics,
            cfg,
            failures: 0,
            polled: HashMap::new(),
            resumed: false,
        }
    }

    /// Runs steps until `stop` is cancelled; a request once started is finished.
    pub async fn run(mut self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let wait = match self.step().await {
                SubmitterStep::Idle(w)
                | SubmitterStep::Requested(w)
                | SubmitterStep::QueueUnavailable(w) => w,
                SubmitterStep::Unconfigured(_) => IDLE_CHECK,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
    }

    /// One decision: mark rows without a key `unconfigured`, or send one request (a
    /// submission first, else a due status poll), or say how long to wait.
    pub async fn step(&mut self) -> SubmitterStep {
        match self.try_step().await {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(message = "Reading the deletion ledger failed.", error = %e);
                SubmitterStep::QueueUnavailable(IDLE_CHECK)
            }
        }
    }

    async fn try_step(&mut self) -> Result<SubmitterStep, QueueError> {
        let Some(client) = self.client.clone() else {
            return self.mark_unconfigured().await;
        };
        if !self.resumed {
            self.move_rows(DeletionStatus::Unconfigured, DeletionStatus::PendingSubmit)
                .await?;
            self.resumed = true;
        }
        if let Some(step) = self.submit(&client).await? {
            return Ok(step);
        }
        if let Some(step) = self.poll(&client).await? {
            return Ok(step);
        }
        Ok(SubmitterStep::Idle(IDLE_CHECK))
    }

    /// Without a key: every `pending_submit` row of the routes becomes `unconfigured`.
    async fn mark_unconfigured(&mut self) -> Result<SubmitterStep, QueueError> {
        let mut total = 0;
        for route in self.routes.clone() {
            let n = self
                .queue
                .apply(QueueOp::DeletionsMove {
                    from: DeletionStatus::PendingSubmit,
                    to: DeletionStatus::Unconfigured,
                    ids: None,
                    routes: Some(vec![route.clone()]),
                })
                .await?
                .rows;
            if n > 0 {
                tracing::warn!(
                    message = "User deletions purged locally but not sent to Heap: the route has no Heap API key (heap_api_key).",
                    route = %route,
                    deletions = n,
                );
                self.metrics.deletions.unconfigured(&route, n as usize);
            }
            total += n;
        }
        Ok(if total > 0 {
            SubmitterStep::Unconfigured(total)
        } else {
            SubmitterStep::Idle(IDLE_CHECK)
        })
    }

    async fn move_rows(&self, from: DeletionStatus, to: DeletionStatus) -> Result<u64, QueueError> {
        Ok(self
            .queue
            .apply(QueueOp::DeletionsMove {
                from,
                to,
                ids: None,
                routes: Some(self.routes.clone()),
            })
            .await?
            .rows)
    }

    /// Submits the oldest settled `pending_submit` rows, up to Heap's 10,000 users.
    async fn submit(
        &mut self,
        client: &HeapDeletionClient,
    ) -> Result<Option<SubmitterStep>, QueueError> {
        let settled_before = unix_millis() - self.cfg.settle.as_millis() as i64;
        let rows = self
            .queue
            .deletions(DeletionQuery {
                statuses: vec![DeletionStatus::PendingSubmit],
                routes: Some(self.routes.clone()),
                after: 0,
                limit: ROWS_PER_READ,
            })
            .await?;
        let (batch, users) = take_batch(rows, settled_before);
        if batch.is_empty() {
            return Ok(None);
        }
        let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
        let result = client.submit(&users).await;
        let wait = match result {
            Ok(request_id) => {
                self.queue
                    .apply(QueueOp::DeletionsSubmitted {
                        ids,
                        request_id: request_id.clone(),
                    })
                    .await?;
                tracing::info!(
                    message = "User deletions submitted to Heap.",
                    deletion_request_id = %request_id,
                    users = users.len(),
                    deletions = batch.len(),
                );
                for (route, n) in per_route(&batch) {
                    self.metrics.deletions.submitted(route, n);
                }
                self.polled.insert(request_id, Instant::now());
                self.failures = 0;
                self.cfg.request_interval
            }
            Err(e) => self.failed(&batch, e).await?,
        };
        Ok(Some(SubmitterStep::Requested(wait)))
    }

    /// Asks about one submitted request whose last poll is older than the poll interval.
    async fn poll(
        &mut self,
        client: &HeapDeletionClient,
    ) -> Result<Option<SubmitterStep>, QueueError> {
        let rows = self
            .queue
            .deletions(DeletionQuery {
                statuses: vec![DeletionStatus::Submitted],
                routes: Some(self.routes.clone()),
                after: 0,
                limit: usize::MAX,
            })
            .await?;
        let mut by_request: BTreeMap<String, Vec<DeletionRecord>> = BTreeMap::new();
        for row in rows {
            if let Some(id) = row.request_id.clone() {
                by_request.entry(id).or_default().push(row);
            }
        }
        self.polled.retain(|id, _| by_request.contains_key(id));
        let now = Instant::now();
        let due = by_request.into_iter().find(|(id, _)| {
            self.polled
                .get(id)
                .is_none_or(|at| now.duration_since(*at) >= self.cfg.poll_interval)
        });
        let Some((request_id, batch)) = due else {
            return Ok(None);
        };
        self.polled.insert(request_id.clone(), now);
        let wait = match client.status(&request_id).await {
            Ok(RequestState::Complete) => {
                self.queue
                    .apply(QueueOp::DeletionsCompleted {
                        request_id: request_id.clone(),
                    })
                    .await?;
                tracing::info!(
                    message = "User deletions complete at Heap.",
                    deletion_request_id = %request_id,
                    deletions = batch.len(),
                );
                for (route, n) in per_route(&batch) {
                    self.metrics.deletions.completed(route, n);
                }
                self.failures = 0;
                self.cfg.request_interval
            }
            Ok(RequestState::Pending) => {
                self.failures = 0;
                self.cfg.request_interval
            }
            Err(DeletionApiError::UnknownRequest) => {
                // Heap forgot the request: sending it again is safe (idempotent).
                tracing::warn!(
                    message = "Heap does not know a submitted deletion request; submitting it again.",
                    deletion_request_id = %request_id,
                );
                self.queue
                    .apply(QueueOp::DeletionsMove {
                        from: DeletionStatus::Submitted,
                        to: DeletionStatus::PendingSubmit,
                        ids: Some(batch.iter().map(|r| r.id).collect()),
                        routes: None,
                    })
                    .await?;
                self.cfg.request_interval
            }
            Err(e) => self.failed(&batch, e).await?,
        };
        Ok(Some(SubmitterStep::Requested(wait)))
    }

    /// Records a failed request against its rows; returns how long to wait before the next.
    async fn failed(
        &mut self,
        batch: &[DeletionRecord],
        error: DeletionApiError,
    ) -> Result<Duration, QueueError> {
        let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
        match error {
            DeletionApiError::Transient {
                reason,
                detail,
                retry_after,
            } => {
                let wait = retry_after
                    .unwrap_or_else(|| self.cfg.backoff.delay(self.failures))
                    .max(self.cfg.request_interval);
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(
                    message = "Heap's deletion API failed; retrying.",
                    reason,
                    error = %detail,
                    retry_in = ?wait,
                );
                self.queue
                    .apply(QueueOp::DeletionsAttempt {
                        ids,
                        error: format!("{reason}: {detail}"),
                        failed: false,
                    })
                    .await?;
                for (route, n) in per_route(batch) {
                    self.metrics.deletions.retried(route, n);
                }
                Ok(wait)
            }
            DeletionApiError::Rejected { .. } | DeletionApiError::BadBatch { .. } => {
                let error = match error {
                    DeletionApiError::Rejected { status, message } => {
                        format!("Heap answered {status}: {message}")
                    }
                    other => other.to_string(),
                };
                self.queue
                    .apply(QueueOp::DeletionsAttempt {
                        ids,
                        error: error.clone(),
                        failed: true,
                    })
                    .await?;
                for (route, n) in per_route(batch) {
                    self.metrics.deletions.failed(route, n, &error);
                }
                Ok(self.cfg.request_interval)
            }
            DeletionApiError::UnknownRequest => Ok(self.cfg.request_interval),
        }
    }
}

/// The oldest settled rows whose users fit in one request, and those users (each once).
fn take_batch(
    rows: Vec<DeletionRecord>,
    settled_before: i64,
) -> (Vec<DeletionRecord>, Vec<DeletionUser>) {
    let mut batch = Vec::new();
    let mut users: Vec<DeletionUser> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        if row.received_at > settled_before {
            break;
        }
        let new: Vec<&HeapUser> = row.users.iter().filter(|u| !seen.contains(*u)).collect();
        if !batch.is_empty() && users.len() + new.len() > MAX_USERS_PER_REQUEST {
            break;
        }
        for user in new {
            seen.insert(user.clone());
            users.extend(to_deletion_user(user));
        }
        batch.push(row);
    }
    (batch, users)
}

/// A Heap user as the deletion API takes it; a synthetic `user_id` that does not parse (never
/// written so) is left out rather than sent wrong.
fn to_deletion_user(user: &HeapUser) -> Option<DeletionUser> {
    match user {
        HeapUser::Identity(id) => Some(DeletionUser::Identity(id.clone())),
        HeapUser::UserId(id) => id.parse().ok().map(DeletionUser::UserId),
    }
}

fn per_route(batch: &[DeletionRecord]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for row in batch {
        *counts.entry(row.route.as_str()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, received_at: i64, users: &[&str]) -> DeletionRecord {
        DeletionRecord {
            id,
            route: "default".into(),
            braze_user_id: format!("b{id}"),
            event_id: format!("e{id}"),
            users: users
                .iter()
                .map(|u| HeapUser::Identity((*u).to_owned()))
                .collect(),
            received_at,
            status: DeletionStatus::PendingSubmit,
            request_id: None,
            updated_at: received_at,
            attempts: 0,
            last_error: None,
            purged_events: 0,
        }
    }

    #[test]
    fn a_batch_holds_settled_rows_up_to_ten_thousand_users_each_once() {
        let rows: Vec<DeletionRecord> = (0..10_001)
            .map(|i| row(i, 10, &[&format!("u{i}")]))
            .collect();
        let (batch, users) = take_batch(rows, 100);
        assert_eq!(batch.len(), MAX_USERS_PER_REQUEST);
        assert_eq!(users.len(), MAX_USERS_PER_REQUEST);

        let rows = vec![
            row(1, 10, &["a", "b"]),
            row(2, 10, &["b"]),
            row(3, 500, &["c"]),
        ];
        let (batch, users) = take_batch(rows, 100);
        assert_eq!(batch.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(users.len(), 2, "b is sent once; row 3 has not settled");
    }

    #[test]
    fn a_synthetic_user_id_is_sent_as_a_number() {
        assert_eq!(
            to_deletion_user(&HeapUser::UserId("123".into())),
            Some(DeletionUser::UserId(123))
        );
    }
}
