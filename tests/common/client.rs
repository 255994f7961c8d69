//! Talking HTTP to a forwarder: one [`Reply`] type, one client, raw connections, `/metrics`
//! and polling waits.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body type of every test request.
pub type ClientBody = BoxBody<Bytes, Infallible>;
/// The HTTP/1.1 client of the tests.
pub type HttpClient = Client<HttpConnector, ClientBody>;

/// A client keeping idle connections for reuse.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client opening a new connection per request: a killed server never leaves a dead pooled
/// connection behind.
pub fn unpooled_http_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// A whole body with a Content-Length.
pub fn full(body: impl Into<Bytes>) -> ClientBody {
    Full::new(body.into()).boxed()
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

/// Sends one request and reads the whole response; a connection error, or no whole answer
/// within `within` (when given), is an `Err` (the server may have been killed), not a panic.
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: ClientBody,
    within: Option<Duration>,
) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body).expect("valid request");
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match within {
        None => exchange.await,
        Some(within) => tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| format!("no answer within {within:?}"))?,
    }
}

/// A body of several frames and no known length: hyper sends it chunked.
pub struct ChunkedBody(Vec<Bytes>);

impl ChunkedBody {
    pub fn new(chunks: Vec<Bytes>) -> Self {
        Self(chunks.into_iter().rev().collect())
    }
}

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

/// The value of `series` (exact name and labels) in a Prometheus text exposition, if there.
pub fn find_metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok()
    })
}

/// The value of `series` (exact name and labels) in a Prometheus text exposition.
#[track_caller]
pub fn metric_value(text: &str, series: &str) -> f64 {
    find_metric(text, series).unwrap_or_else(|| panic!("series {series} not found in /metrics"))
}

/// Polls `cond` every few milliseconds until it holds; panics after `within`.
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
