//! The in-process app builder: a server on port 0 over a temporary data directory that
//! outlives restarts, delivering to one of two Heaps:
//!
//! * **unreachable** ([`spawn_app`], [`spawn_app_with`], settings [`default_args`]): a local
//!   port bound but never listening. Every delivery attempt is refused and retried only after
//!   an hour, so nothing leaves the store by delivery, and events the mapping skips move to
//!   the dead-letter store (`dead_letter_skipped`). "Stored" then means a row of the `queue` or
//!   the `dead_letter` table: what ingest accepted, exactly.
//! * **the Heap stand-in** ([`TestApp::start`], [`TestApp::with_stand_in`],
//!   [`TestApp::stopped`], settings [`base_args`]): production budgets unless the test scales
//!   them, millisecond backoffs; the tests look at what the stand-in received.
//! * **the test's own** ([`TestApp::routed`], [`TestApp::from_config_file`]): a
//!   configuration naming Heaps (stand-ins, closed ports) that the test holds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap::app::App;
use currents_heap::config::{FileConfig, Settings, SettingsArgs};
use currents_heap::ingest::IngestState;
use currents_heap::queue::DeadLetter;
use currents_heap::queue::sqlite::Store;
use currents_heap::reload::ReloadHandle;
use currents_heap_testkit::standin::{Fault, HeapStandIn, Report, StandInConfig};
use http::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{
    ChunkedBody, ClientBody, HttpClient, Reply, full, http_client, metric_value, send,
};
use super::events::{batch, subscription_changes};

/// The two rotation tokens of [`default_args`].
pub const TOKEN_A: &str = "tok-a";
pub const TOKEN_B: &str = "tok-b";
/// Headers of a request Braze would send with the first token of [`default_args`].
pub const AUTH: &[(&str, &str)] = &[("authorization", "Bearer tok-a")];
/// The token of [`base_args`] and of the spawned forwarders of [`super::process`].
pub const TOKEN: &str = "delivery-token";
/// The Heap app id of [`base_args`] and of the spawned forwarders of [`super::process`].
pub const APP_ID: &str = "123";
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

/// Settings of an app with an unreachable Heap: two rotation tokens, a 1 MiB body limit, a
/// Heap retried only after an hour, and skipped events kept in the dead-letter store.
pub fn default_args() -> SettingsArgs {
    SettingsArgs {
        ingest_token: Some(format!("{TOKEN_A},{TOKEN_B}")),
        max_body_bytes: Some("1MiB".into()),
        heap_app_id: Some("1".into()),
        retry_initial_backoff: Some("1h".into()),
        retry_max_backoff: Some("1h".into()),
        dead_letter_skipped: Some(true),
        dry_run: Some(false),
        ..Default::default()
    }
}

/// Settings of an app delivering to the stand-in: production budgets, a short linger and
/// millisecond backoffs. `listen`, `data_dir` and `heap_base_url` are filled in by
/// [`TestApp`].
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

/// The app with [`default_args`] and an unreachable Heap.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(default_args()).await
}

/// Starts an app with `args` and an unreachable Heap; `listen`, `data_dir` and
/// `heap_base_url` are filled in when unset.
pub async fn spawn_app_with(mut args: SettingsArgs) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let closed_heap_port = TcpSocket::new_v4().expect("socket");
    closed_heap_port
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("reserve a port");
    let heap_addr = closed_heap_port.local_addr().unwrap();
    args.data_dir.get_or_insert_with(|| data_dir.path().into());
    args.heap_base_url
        .get_or_insert_with(|| format!("http://{heap_addr}"));
    let mut app = TestApp::new(Heap::Unreachable(closed_heap_port), data_dir, args);
    app.start_app().await;
    app
}

/// Where the app delivers.
enum Heap {
    /// Keeps the port of an unreachable Heap reserved (bound, never listening).
    Unreachable(TcpSocket),
    StandIn(HeapStandIn),
    /// Named by the configuration; the test holds them.
    External,
}

/// The server task of a running app.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// An in-process server, its data directory, its Heap, and everything a test needs to talk
/// to it and inspect it. Dropping it starts the server's drain.
pub struct TestApp {
    heap: Heap,
    /// Removed when the app is dropped.
    data_dir: TempDir,
    args: SettingsArgs,
    /// The configuration file (routes, TOML), under `args`.
    config_file: String,
    /// The `Authorization` header value of [`TestApp::post_events`]: the first configured
    /// ingest token.
    bearer: Option<String>,
    /// Address, state and reload handle of the last start.
    started: Option<(SocketAddr, Arc<IngestState>, ReloadHandle)>,
    running: Option<Running>,
    client: HttpClient,
}

impl TestApp {
    fn new(heap: Heap, data_dir: TempDir, mut args: SettingsArgs) -> TestApp {
        args.listen.get_or_insert_with(|| "127.0.0.1:0".into());
        let bearer = args
            .ingest_token
            .as_deref()
            .and_then(|t| t.split(',').next())
            .map(|t| format!("Bearer {}", t.trim()));
        TestApp {
            heap,
            data_dir,
            args,
            config_file: String::new(),
            bearer,
            started: None,
            running: None,
            client: http_client(),
        }
    }

    /// Starts the stand-in with `heap` and a server delivering to it with `args` (see
    /// [`base_args`]).
    pub async fn start(heap: StandInConfig, args: SettingsArgs) -> TestApp {
        init_logs();
        TestApp::with_stand_in(HeapStandIn::start(heap), args).await
    }

    /// [`TestApp::start`] with an already running stand-in.
    pub async fn with_stand_in(heap: HeapStandIn, args: SettingsArgs) -> TestApp {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut app = TestApp::stopped(heap, data_dir, args);
        app.start_app().await;
        app
    }

    /// An app delivering to the stand-in `heap`, whose server is not running yet (see
    /// [`TestApp::start_app`]).
    pub fn stopped(heap: HeapStandIn, data_dir: TempDir, mut args: SettingsArgs) -> TestApp {
        args.data_dir = Some(data_dir.path().into());
        args.heap_base_url = Some(heap.base_url());
        TestApp::new(Heap::StandIn(heap), data_dir, args)
    }

    /// Starts an app configured by `toml` (a configuration file: `[[route]]` tables) under
    /// `args`, delivering to the Heaps its routes name.
    pub async fn routed(toml: &str, mut args: SettingsArgs) -> TestApp {
        init_logs();
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        args.data_dir = Some(data_dir.path().into());
        let mut app = TestApp::new(Heap::External, data_dir, args);
        app.reconfigure(toml);
        app.start_app().await;
        app
    }

    /// Starts an app whose settings come from the configuration file `config`, as `serve
    /// --config` does, reloadable from it ([`TestApp::reload_handle`], the `SIGHUP` path).
    pub async fn from_config_file(config: &Path) -> TestApp {
        init_logs();
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let args = SettingsArgs {
            config: Some(config.to_owned()),
            data_dir: Some(data_dir.path().into()),
            ..Default::default()
        };
        let mut app = TestApp::new(Heap::External, data_dir, args);
        app.start_app().await;
        app
    }

    /// Replaces the configuration file's settings, for the next start.
    pub fn reconfigure(&mut self, toml: &str) {
        self.config_file = toml.to_owned();
    }

    /// The Heap stand-in the app delivers to.
    ///
    /// # Panics
    /// For an app with an unreachable Heap.
    pub fn heap(&self) -> &HeapStandIn {
        match &self.heap {
            Heap::StandIn(heap) => heap,
            Heap::Unreachable(_) | Heap::External => {
                panic!("this app's Heap is not a stand-in of its own")
            }
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The settings the server runs with.
    pub fn settings(&self) -> Settings {
        let file: FileConfig = toml::from_str(&self.config_file).expect("test config is TOML");
        Settings::resolve(&self.args, file).expect("valid test settings")
    }

    /// Starts (or restarts) the server on the data directory.
    pub async fn start_app(&mut self) {
        assert!(self.running.is_none(), "the server is already running");
        let app = if self.args.config.is_some() {
            let settings = Settings::load(&self.args).expect("valid settings");
            let app = App::build(&settings).await.expect("the app builds");
            app.reload_from(self.args.clone())
        } else {
            App::build(&self.settings()).await.expect("the app builds")
        };
        self.started = Some((app.local_addr(), app.state(), app.reload_handle()));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        self.running = Some(Running {
            stop: Some(tx),
            task: Some(task),
        });
    }

    fn started(&self) -> &(SocketAddr, Arc<IngestState>, ReloadHandle) {
        self.started.as_ref().expect("the server was started")
    }

    /// Where the server (last) listened.
    pub fn addr(&self) -> SocketAddr {
        self.started().0
    }

    pub fn state(&self) -> &Arc<IngestState> {
        &self.started().1
    }

    /// Asks the running app to reload, as `SIGHUP` does (from the configuration file of
    /// [`TestApp::from_config_file`]).
    pub fn reload_handle(&self) -> &ReloadHandle {
        &self.started().2
    }

    /// Starts the drain, as SIGTERM does.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.running.as_mut().and_then(|r| r.stop.take()) {
            let _ = tx.send(());
        }
    }

    /// Waits until the server task has finished (after [`TestApp::trigger_shutdown`]) and its
    /// store is closed.
    pub async fn wait_stopped(&mut self) {
        if let Some(task) = self.running.take().and_then(|mut r| r.task.take()) {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the server stops within the grace period")
                .expect("the server task ends cleanly");
        }
    }

    /// Stops the server (as SIGTERM does) and waits until its store is closed; it can be
    /// started again with [`TestApp::start_app`].
    pub async fn stop_app(&mut self) {
        assert!(self.running.is_some(), "the server is running");
        self.trigger_shutdown();
        self.wait_stopped().await;
    }

    /// Shuts down and waits until the server has stopped and the store is closed.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        self.wait_stopped().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// A request with exactly `headers`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: ClientBody,
        headers: &[(&str, &str)],
    ) -> Reply {
        send(&self.client, method, &self.url(path), headers, body, None)
            .await
            .expect("the server answers")
    }

    /// A request as Braze sends it: the first configured token, a JSON content type.
    pub async fn request_authed(&self, method: Method, path: &str, body: Bytes) -> Reply {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(bearer) = &self.bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        self.request(method, path, full(body), &headers).await
    }

    /// `POST /currents` with `body` (sent with a Content-Length) and exactly `headers`.
    pub async fn post(&self, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
        self.post_to("/currents", body, headers).await
    }

    pub async fn post_to(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.request(Method::POST, path, full(body), headers).await
    }

    /// `POST /currents` with the first rotation token of [`default_args`].
    pub async fn post_authed(&self, body: impl Into<Bytes>) -> Reply {
        self.post(body, AUTH).await
    }

    /// `POST /currents` with a chunked body (no Content-Length) made of `chunks`.
    pub async fn post_chunked(&self, chunks: Vec<Bytes>, headers: &[(&str, &str)]) -> Reply {
        use http_body_util::BodyExt;
        let body = ChunkedBody::new(chunks).boxed();
        self.request(Method::POST, "/currents", body, headers).await
    }

    /// `POST /currents` with `{"events": events}` as Braze sends it; asserts the 200.
    pub async fn post_events(&self, events: &[Value]) -> Reply {
        let reply = self
            .request_authed(Method::POST, "/currents", Bytes::from(batch(events)))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "ingest refused the batch: {}",
            reply.text()
        );
        reply
    }

    /// `POST /currents{query}` with `{"events": events}`, a JSON content type and the bearer
    /// `token` if any; the status and the JSON body (`null` if it is not JSON).
    pub async fn post_events_as(
        &self,
        query: &str,
        token: Option<&str>,
        events: &[Value],
    ) -> (u16, Value) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        let reply = self
            .post_to(&format!("/currents{query}"), batch(events), &headers)
            .await;
        let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        (reply.status.as_u16(), body)
    }

    /// Posts `events` in batches of `per_batch`.
    pub async fn post_in_batches(&self, events: &[Value], per_batch: usize) {
        for chunk in events.chunks(per_batch) {
            self.post_events(chunk).await;
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, full(Bytes::new()), &[])
            .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.text()
    }

    /// The value of one series of `/metrics`, e.g. `metric(r#"x_total{outcome="empty"}"#)`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// The SQLite database of the data directory.
    pub fn store_path(&self) -> std::path::PathBuf {
        self.settings().data_dir.join("queue.sqlite3")
    }

    /// Every stored event (queue and dead-letter store), sorted by id.
    pub fn stored(&self) -> Vec<Stored> {
        let conn = rusqlite::Connection::open_with_flags(
            self.store_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the store read-only");
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT event_id, event_type, identity, event_time, payload FROM queue
                 UNION ALL
                 SELECT event_id, event_type, identity, event_time, payload FROM dead_letter
                 ORDER BY 1",
            )
            .expect("query the store");
        stmt.query_map([], |r| {
            Ok(Stored {
                event_id: r.get(0)?,
                event_type: r.get(1)?,
                identity: r.get(2)?,
                event_time: r.get(3)?,
                payload: r.get(4)?,
            })
        })
        .expect("read the store")
        .map(Result::unwrap)
        .collect()
    }

    /// Number of stored rows (a duplicate row would count twice).
    pub fn stored_count(&self) -> u64 {
        self.stored().len() as u64
    }

    pub fn stored_ids(&self) -> BTreeSet<String> {
        self.stored().into_iter().map(|e| e.event_id).collect()
    }

    pub fn stored_event(&self, id: &str) -> Stored {
        self.stored()
            .into_iter()
            .find(|e| e.event_id == id)
            .unwrap_or_else(|| panic!("event {id:?} is not stored"))
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
                    r.event.event_id,
                    r.event.identity,
                    r.event.attempts,
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

    /// Posts `events` ([`TestApp::post_events`]) and waits until their `ids` are delivered
    /// ([`TestApp::delivered_once`]).
    pub async fn post_and_deliver(&self, events: &[Value], ids: &[String]) -> Report {
        self.post_events(events).await;
        self.delivered_once(ids).await
    }

    /// Waits (20 s at most) until every key of `ids` is delivered and the queue is empty
    /// ([`TestApp::wait_delivered`]); asserts each key arrived exactly once and no other key
    /// did.
    pub async fn delivered_once(&self, ids: &[String]) -> Report {
        let report = self.wait_delivered(ids, Duration::from_secs(20)).await;
        report
            .check_exactly_once(ids.iter().map(String::as_str))
            .unwrap();
        report
    }

    /// Posts four subscription changes (a track event and user properties each, ids
    /// `<prefix>-<i>` of users `<prefix>-user-<i>`) while the stand-in lets their track
    /// request pass and answers the user-properties request that follows with `code`, once;
    /// waits until they are delivered exactly once. Returns the report and the ids.
    pub async fn deliver_past_a_user_properties_fault(
        &self,
        prefix: &str,
        code: u16,
    ) -> (Report, Vec<String>) {
        // A zero delay is a no-op fault: the track request passes.
        self.heap()
            .push_faults([Fault::Delay(Duration::ZERO), Fault::status(code)]);
        let (events, ids) = subscription_changes(prefix, 4);
        let report = self.post_and_deliver(&events, &ids).await;
        assert_eq!(report.requests_with(USER_PROPERTIES, code), 1);
        (report, ids)
    }

    /// Waits until the stand-in has accepted every key of `keys` at least once and the queue
    /// is empty; panics with the stand-in's view after `within`.
    pub async fn wait_delivered(&self, keys: &[String], within: Duration) -> Report {
        let deadline = Instant::now() + within;
        loop {
            // The queue first: once it is empty nothing more is sent, so a report taken
            // after it holds every delivery.
            let drained = self.queued_count() == 0;
            let report = self.heap().report();
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

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// An accepted event as kept in the data directory.
#[derive(Debug, Clone)]
pub struct Stored {
    pub event_id: String,
    pub event_type: String,
    pub identity: Option<String>,
    pub event_time: i64,
    /// The event exactly as received.
    pub payload: Vec<u8>,
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

/// Keys the stand-in received more than once, with their counts.
pub fn duplicates(report: &Report) -> std::collections::BTreeMap<String, u32> {
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
