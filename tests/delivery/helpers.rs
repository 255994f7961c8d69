//! Test harness: a Heap stand-in, an in-process server delivering to it (restartable on the
//! same data directory), Braze-shaped events, and readers of `/metrics` and of the store.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap::app::App;
use currents_heap::config::{FileConfig, Settings, SettingsArgs};
use currents_heap::queue::{DeadLetter, Store};
use currents_heap_testkit::standin::{HeapStandIn, Report, StandInConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const APP_ID: &str = "123";
pub const TOKEN: &str = "delivery-token";
pub const TRACK: &str = "/api/track";
pub const USER_PROPERTIES: &str = "/api/add_user_properties";

/// Logs of the in-process servers, when `RUST_LOG` is set (for debugging a failing test).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Settings every test starts from: the stand-in as Heap, production budgets, a short linger
/// and millisecond backoffs. `listen`, `data_dir` and `heap_base_url` are filled in by
/// [`Harness`].
pub fn base_args() -> SettingsArgs {
    SettingsArgs {
        ingest_token: Some(TOKEN.into()),
        heap_app_id: Some(APP_ID.into()),
        heap_linger: Some("50ms".into()),
        retry_initial_backoff: Some("20ms".into()),
        retry_max_backoff: Some("200ms".into()),
        shutdown_grace: Some("5s".into()),
        dry_run: Some(false),
        ..Default::default()
    }
}

/// The production budgets, enforced by the stand-in.
pub fn heap_budgets() -> StandInConfig {
    StandInConfig::heap()
}

/// One in-process server.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// A stand-in plus a server delivering to it, on a temporary data directory that outlives
/// restarts of the server.
pub struct Harness {
    pub heap: HeapStandIn,
    data_dir: TempDir,
    args: SettingsArgs,
    running: Option<Running>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Harness {
    /// Starts the stand-in with `heap` and a server with `args` (see [`base_args`]).
    pub async fn start(heap: StandInConfig, args: SettingsArgs) -> Harness {
        init_logs();
        let heap = HeapStandIn::start(heap);
        Harness::with_stand_in(heap, args).await
    }

    /// [`Harness::start`] with an already running stand-in.
    pub async fn with_stand_in(heap: HeapStandIn, args: SettingsArgs) -> Harness {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut h = Harness::stopped(heap, data_dir, args);
        h.start_app().await;
        h
    }

    /// A harness whose server is not running yet (see [`Harness::start_app`]).
    pub fn stopped(heap: HeapStandIn, data_dir: TempDir, mut args: SettingsArgs) -> Harness {
        args.listen.get_or_insert_with(|| "127.0.0.1:0".into());
        args.data_dir = Some(data_dir.path().into());
        args.heap_base_url = Some(heap.base_url());
        Harness {
            heap,
            data_dir,
            args,
            running: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The settings the server runs with.
    pub fn settings(&self) -> Settings {
        Settings::resolve(&self.args, FileConfig::default()).expect("valid test settings")
    }

    /// Starts (or restarts) the server on the data directory.
    pub async fn start_app(&mut self) {
        assert!(self.running.is_none(), "the server is already running");
        let settings =
            Settings::resolve(&self.args, FileConfig::default()).expect("valid test settings");
        let app = App::build(&settings).await.expect("the app builds");
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        self.running = Some(Running {
            addr,
            stop: Some(tx),
            task,
        });
    }

    /// Stops the server (as SIGTERM does) and waits until its store is closed.
    pub async fn stop_app(&mut self) {
        let mut running = self.running.take().expect("the server is running");
        if let Some(tx) = running.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), running.task)
            .await
            .expect("the server stops")
            .expect("the server task ends cleanly");
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("the server is running")
    }

    pub async fn request(&self, method: Method, path: &str, body: Bytes) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.running().addr))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("valid request");
        let resp = self.client.request(req).await.expect("the server answers");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        Reply { status, body }
    }

    /// `POST /currents` with `{"events": events}`; asserts the 200 and returns the reply.
    pub async fn post_events(&self, events: &[Value]) -> Reply {
        let reply = self
            .request(Method::POST, "/currents", Bytes::from(batch(events)))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "ingest refused the batch: {}",
            String::from_utf8_lossy(&reply.body)
        );
        reply
    }

    /// Posts `events` in batches of `per_batch`.
    pub async fn post_in_batches(&self, events: &[Value], per_batch: usize) {
        for chunk in events.chunks(per_batch) {
            self.post_events(chunk).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let reply = self.request(Method::GET, "/metrics", Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK);
        String::from_utf8_lossy(&reply.body).into_owned()
    }

    /// The value of one series of `/metrics`, e.g. `metric("x_total{reason=\"y\"}")`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Rows in the durable queue, counted with a fresh connection.
    pub fn queued_count(&self) -> u64 {
        Store::open(self.data_dir())
            .expect("open the store")
            .reader()
            .expect("store reader")
            .count_queued()
            .expect("count the queue")
    }

    /// A few queued rows, for failure messages: id, identity, attempts and how far in the
    /// future their `not_before` lies.
    pub fn queued_sample(&self, n: usize) -> String {
        let now = currents_heap::queue::unix_millis();
        let rows = Store::open(self.data_dir())
            .and_then(|s| s.reader())
            .map(|r| r.queued(APP_ID, 0, n).unwrap_or_default())
            .unwrap_or_default();
        rows.iter()
            .map(|r| {
                format!(
                    "{} of {:?}: {} attempts, not_before {}",
                    r.event_id,
                    r.identity,
                    r.attempts,
                    if r.not_before == 0 {
                        "unset".to_owned()
                    } else {
                        format!("now{:+}ms", r.not_before - now)
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        dead_letters(self.data_dir())
    }

    /// Waits until the stand-in has accepted every key of `keys` at least once and the queue
    /// is empty; panics with the stand-in's view after `within`.
    pub async fn wait_delivered(&self, keys: &[String], within: Duration) -> Report {
        let deadline = Instant::now() + within;
        loop {
            // The queue first: once it is empty nothing more is sent, so a report taken
            // after it holds every delivery.
            let drained = self.queued_count() == 0;
            let report = self.heap.report();
            if drained && keys.iter().all(|k| report.key_count(k) > 0) {
                return report;
            }
            if Instant::now() > deadline {
                let missing: Vec<&String> =
                    keys.iter().filter(|k| report.key_count(k) == 0).collect();
                panic!(
                    "not delivered within {within:?}: {} of {} keys missing (e.g. {:?}), {} still queued (e.g. {}); stand-in requests: {:?}",
                    missing.len(),
                    keys.len(),
                    &missing[..missing.len().min(5)],
                    self.queued_count(),
                    self.queued_sample(5),
                    report.requests
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(running) = self.running.as_mut()
            && let Some(tx) = running.stop.take()
        {
            let _ = tx.send(());
        }
    }
}

/// Every dead letter in the store of `data_dir`, oldest first.
pub fn dead_letters(data_dir: &Path) -> Vec<DeadLetter> {
    Store::open(data_dir)
        .expect("open the store")
        .reader()
        .expect("store reader")
        .dead_letters(None, 0, 1_000_000)
        .expect("read the dead letters")
}

/// The value of `series` (exact name and labels) in a Prometheus text exposition.
#[track_caller]
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("series {series} not found in /metrics"))
}

/// Polls `cond` until it holds; panics after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the async `cond` until it holds; panics after `within`.
pub async fn wait_until_async<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `{"events":[...]}` as bytes.
pub fn batch(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "events": events })).expect("serialisable")
}

/// A Braze `users.messages.email.Send` event of `external_user_id` `user`.
pub fn email_send(id: &str, user: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": {
            "user_id": "639a35d192b0df004d06514c",
            "external_user_id": user,
            "timezone": "Europe/Paris"
        },
        "properties": {
            "app_group_id": "3e2e0f7c-5f0a-4d57-9c7b-1f3f4a5b6c7d",
            "campaign_id": "c-1",
            "campaign_name": "spring sale",
            "dispatch_id": "d-1",
            "email_address": "someone@example.com",
            "send_id": "send-1"
        }
    })
}

/// A Braze custom event (`users.behaviors.CustomEvent`) named `name`.
pub fn custom_event(id: &str, user: &str, name: &str) -> Value {
    json!({
        "event_type": "users.behaviors.CustomEvent",
        "id": id,
        "time": 1_780_000_100,
        "user": {
            "user_id": "639a35d192b0df004d06514d",
            "external_user_id": user,
            "device_id": "dev-1"
        },
        "properties": {
            "app_id": "a-1",
            "name": name,
            "platform": "ios",
            "custom_properties": { "plan": "pro", "seats": 3, "beta": true }
        }
    })
}

/// A global subscription change: a track event plus user properties.
pub fn subscription_change(id: &str, user: &str) -> Value {
    json!({
        "event_type": "users.behaviors.subscription.GlobalStateChange",
        "id": id,
        "time": 1_780_000_200,
        "user": {
            "user_id": "639a35d192b0df004d06514e",
            "external_user_id": user,
            "timezone": "America/New_York"
        },
        "properties": {
            "app_group_id": "3e2e0f7c-5f0a-4d57-9c7b-1f3f4a5b6c7d",
            "channel": "email",
            "email_address": "someone@example.com",
            "state_change_source": "REST API",
            "subscription_status": "Subscribed"
        }
    })
}

/// An email send without `external_user_id`: anonymous, skipped by default.
pub fn anonymous_send(id: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "639a35d192b0df004d0651ff" },
        "properties": { "campaign_name": "spring sale", "send_id": "send-1" }
    })
}

/// `n` identified email sends with ids `<prefix>-<i>`, spread over `identities` users
/// (`<prefix>-user-<i % identities>`). Returns the events and their ids.
pub fn sends(prefix: &str, n: usize, identities: usize) -> (Vec<Value>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| email_send(id, &format!("{prefix}-user-{}", i % identities)))
        .collect();
    (events, ids)
}

/// Keys the stand-in received more than once, with their counts.
pub fn duplicates(report: &Report) -> BTreeMap<String, u32> {
    report
        .duplicates()
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n))
        .collect()
}

/// The keys of the `i`-th accepted track request.
pub fn batch_keys(report: &Report, i: usize) -> Vec<String> {
    report.track_batches[i]
        .events
        .iter()
        .map(|e| e.idempotency_key.clone())
        .collect()
}

/// Runs the real binary with `args` (blocking, on a blocking thread) and returns its output.
pub async fn run_binary(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"))
            .args(&args)
            .env_remove("CURRENTS_HEAP_CONFIG")
            .env_remove("CURRENTS_HEAP_DATA_DIR")
            .output()
            .expect("run the currents-heap binary")
    })
    .await
    .expect("the binary runs")
}

/// `currents-heap dlq <args> --data-dir DIR`.
/// `currents-heap dlq ARGS --data-dir DIR`, with the same Heap app id as the server (so a
/// replay routes to it, as an operator passing the server's configuration would).
pub async fn dlq(data_dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec!["dlq".into()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.push("--data-dir".into());
    all.push(PathBuf::from(data_dir).display().to_string());
    all.push("--heap-app-id".into());
    all.push(APP_ID.into());
    run_binary(all).await
}

/// The JSON lines `dlq list` printed on stdout.
pub fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
