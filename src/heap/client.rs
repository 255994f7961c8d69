//! The HTTPS client for Heap: hyper + hyper-rustls, connection reuse, a timeout per request.
//! [`HeapClient::post`] sends the ingestion calls; [`HeapClient::send`] any method with extra
//! headers (the deletion API's `Authorization`, see [`super::deletion`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Heap's answer, with the body kept (bounded) for dead letters and logs.
#[derive(Debug, Clone)]
pub struct HeapResponse {
    pub status: StatusCode,
    pub retry_after: Option<HeaderValue>,
    pub body: String,
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeapError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
}

impl HeapError {
    /// The retry-reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            HeapError::Timeout(_) => "timeout",
            HeapError::Connect(_) => "connect",
        }
    }
}

/// Bytes of a response body kept (Heap's error bodies are short; a proxy's HTML page is not).
const MAX_BODY: usize = 4096;

#[derive(Debug, Clone)]
pub struct HeapClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base_url: String,
    timeout: Duration,
}

impl HeapClient {
    /// `base_url` without a trailing slash, e.g. `https://heapanalytics.com`.
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        // The crypto provider named, not the process default: two are linked (aws-lc-rs here
        // and in the TLS listener, ring in the NATS client), and rustls picks none of two.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .expect("aws-lc-rs supports rustls's default protocol versions")
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .build(connector);
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// POSTs a JSON body to `path` (e.g. `/api/track`).
    pub async fn post(&self, path: &str, body: Bytes) -> Result<HeapResponse, HeapError> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    /// Sends `method` to `path` with `headers` and, if given, a JSON body. Mark secret header
    /// values [`HeaderValue::set_sensitive`]: hyper then keeps them out of its debug output.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<HeapResponse, HeapError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base_url, path))
            .header(
                header::USER_AGENT,
                concat!("currents-heap/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(name, value.clone());
        }
        let req = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| HeapError::Connect(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| HeapError::Connect(error_chain(&e)))?;
            let status = resp.status();
            let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
            // A body cut short by a dropped connection still leaves a status: keep what came.
            let body = match Limited::new(resp.into_body(), 1 << 20).collect().await {
                Ok(b) => {
                    let b = b.to_bytes();
                    let end = b.len().min(MAX_BODY);
                    String::from_utf8_lossy(&b[..end]).into_owned()
                }
                Err(_) => String::new(),
            };
            Ok(HeapResponse {
                status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HeapError::Timeout(self.timeout))?
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
