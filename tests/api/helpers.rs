//! Test harness: an in-process server on port 0, an HTTP client, and readers of the store and
//! of `/metrics`. Every test builds its own app on its own temporary data directory.
//!
//! Where accepted events are observed: the delivery loop runs beside ingest and removes an
//! event from the queue once Heap acknowledges it (or, in dry-run mode, once it is logged).
//! So test apps are *not* dry-run: their Heap base URL is a local port that is bound but never
//! listening, every delivery attempt is refused and retried much later, and nothing leaves the
//! store by delivery. Events the mapping skips (anonymous, no user at all, ...) move to the
//! dead-letter store (`dead_letter_skipped`). "Stored" therefore means: a row of the `queue`
//! or the `dead_letter` table of the data directory.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap::app::App;
use currents_heap::config::{FileConfig, Settings, SettingsArgs};
use currents_heap::ingest::IngestState;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The two rotation tokens every default test app accepts.
pub const TOKEN_A: &str = "tok-a";
pub const TOKEN_B: &str = "tok-b";
/// Headers of a request Braze would send with the first token.
pub const AUTH: &[(&str, &str)] = &[("authorization", "Bearer tok-a")];

type ClientBody = BoxBody<Bytes, Infallible>;

/// A running server plus everything a test needs to talk to it and inspect it.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The data directory; removed when the app is dropped.
    _data_dir: TempDir,
    /// Keeps the port of the unreachable Heap reserved (bound, never listening).
    _closed_heap_port: TcpSocket,
    pub state: Arc<IngestState>,
    /// The SQLite database of the data directory.
    pub store_path: std::path::PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    client: Client<HttpConnector, ClientBody>,
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
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

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Retry-After` as delay-seconds; panics when missing or not a positive integer.
    pub fn retry_after_secs(&self) -> u64 {
        let value = self
            .headers
            .get(http::header::RETRY_AFTER)
            .unwrap_or_else(|| panic!("no Retry-After on a {} response", self.status));
        let secs: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("Retry-After {value:?} is not delay-seconds"));
        assert!(secs > 0, "Retry-After must ask for a real pause");
        secs
    }

    /// Asserts the 200 body `{"accepted":N,"duplicates":D}` exactly.
    #[track_caller]
    pub fn assert_accepted(&self, accepted: usize, duplicates: usize) {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text());
        assert_eq!(
            self.json(),
            json!({ "accepted": accepted, "duplicates": duplicates })
        );
    }
}

/// Settings of the default test app: two rotation tokens, a 1 MiB body limit, an unreachable
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

pub async fn spawn_app() -> TestApp {
    spawn_app_with(default_args()).await
}

/// Starts a server with `args`; `listen`, `data_dir` and `heap_base_url` are filled in when
/// unset.
pub async fn spawn_app_with(mut args: SettingsArgs) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let closed_heap_port = TcpSocket::new_v4().expect("socket");
    closed_heap_port
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("reserve a port");
    let heap_addr = closed_heap_port.local_addr().unwrap();
    args.listen.get_or_insert_with(|| "127.0.0.1:0".into());
    args.data_dir.get_or_insert_with(|| data_dir.path().into());
    args.heap_base_url
        .get_or_insert_with(|| format!("http://{heap_addr}"));
    let settings = Settings::resolve(&args, FileConfig::default()).expect("valid test settings");
    let app = App::build(&settings).await.expect("app builds");
    let addr = app.local_addr();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        _data_dir: data_dir,
        _closed_heap_port: closed_heap_port,
        state,
        store_path: settings.data_dir.join("queue.sqlite3"),
        shutdown: Some(tx),
        server: Some(server),
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: ClientBody,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(body).expect("valid request"))
            .await
            .expect("the server answers");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
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
        let body = Full::new(body.into()).boxed();
        self.request(Method::POST, path, body, headers).await
    }

    /// `POST /currents` with the first rotation token.
    pub async fn post_authed(&self, body: impl Into<Bytes>) -> Reply {
        self.post(body, AUTH).await
    }

    /// `POST /currents` with a chunked body (no Content-Length) made of `chunks`.
    pub async fn post_chunked(&self, chunks: Vec<Bytes>, headers: &[(&str, &str)]) -> Reply {
        let body = ChunkedBody(chunks.into_iter().rev().collect()).boxed();
        self.request(Method::POST, "/currents", body, headers).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let body = Full::new(Bytes::new()).boxed();
        self.request(Method::GET, path, body, &[]).await
    }

    pub async fn metrics_text(&self) -> String {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.text()
    }

    /// The value of one series of `/metrics`, e.g. `metric(r#"x_total{outcome="empty"}"#)`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text().await, series)
    }

    /// Every stored event (queue and dead-letter store), sorted by id.
    pub fn stored(&self) -> Vec<Stored> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.store_path,
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

    /// Starts the drain, as SIGTERM does.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits until the server has stopped and the store is closed.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        self.wait_stopped().await;
    }

    /// Waits until the server task has finished (after [`TestApp::trigger_shutdown`]).
    pub async fn wait_stopped(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("the server stops within the grace period")
                .expect("server task ends cleanly");
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

/// A set of ids, to compare with [`TestApp::stored_ids`].
pub fn id_set<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    ids.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// A body of several frames and no known length: hyper sends it chunked.
struct ChunkedBody(Vec<Bytes>);

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop().map(|b| Ok(Frame::data(b))))
    }
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

/// A structurally valid Currents event, shaped like the spec's example.
pub fn event(id: &str, event_type: &str) -> Value {
    json!({
        "event_type": event_type,
        "id": id,
        "time": 1_780_000_000,
        "user": {
            "user_id": "639a35d192b0df004d06514c",
            "external_user_id": format!("user-{id}"),
            "timezone": "Europe/Paris"
        },
        "properties": {
            "app_group_id": "3e2e0f7c-5f0a-4d57-9c7b-1f3f4a5b6c7d",
            "campaign_name": "spring sale",
            "send_id": "send-1"
        }
    })
}

/// `{"events":[...]}` as bytes.
pub fn batch(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "events": events })).expect("serialisable")
}

/// `n` email-send events with ids `<prefix>-0`, `<prefix>-1`, ...
pub fn email_sends(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), "users.messages.email.Send"))
        .collect()
}

/// A file under `fixtures/currents/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/currents")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `events` of a fixture, parsed.
pub fn fixture_events(name: &str) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&fixture(name)).expect("fixture is JSON");
    v["events"].as_array().expect("fixture has events").clone()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Polls `cond` every few milliseconds until it holds; panics after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A hand-driven HTTP/1.1 connection, for requests whose body must arrive in pieces.
pub struct RawConn {
    stream: TcpStream,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Self { stream }
    }

    /// Sends the request line and headers of `POST /currents` (with `Connection: close`).
    pub async fn send_head(&mut self, extra_headers: &[(&str, &str)]) {
        let mut head =
            String::from("POST /currents HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for (k, v) in extra_headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.write(head.as_bytes()).await;
    }

    /// Ends the request side of the connection (a client that gives up mid-body); the response
    /// can still be read.
    pub async fn finish_sending(&mut self) {
        self.stream
            .shutdown()
            .await
            .expect("shutdown the write side");
    }

    /// Writes `bytes`; an error (the server closed the connection) is returned, not a panic.
    pub async fn try_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Waits until the server closes the connection (EOF or reset), reading and returning
    /// whatever it sent; `None` if it is still open after `within`.
    pub async fn closed_within(&mut self, within: Duration) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(within, read).await.ok()?;
        Some(buf)
    }

    /// Reads the response to its end (the server closes after it: `Connection: close`).
    pub async fn read_response(mut self) -> Reply {
        let mut buf = Vec::new();
        self.stream
            .read_to_end(&mut buf)
            .await
            .expect("read response");
        parse_response(&buf)
    }
}

/// Parses a complete HTTP/1.1 response with a Content-Length body.
pub fn parse_response(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("header line");
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            v.trim().parse().unwrap(),
        );
    }
    Reply {
        status: StatusCode::from_u16(code).unwrap(),
        headers,
        body: Bytes::copy_from_slice(&raw[split + 4..]),
    }
}
