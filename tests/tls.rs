//! HTTPS on `--listen` (README "Facing the internet"), against the real binary with the
//! self-signed pairs of `fixtures/tls`: HTTP/1.1 and HTTP/2 over TLS (ALPN), a certificate
//! swapped on disk is served after `SIGHUP` and, without a signal, after the file watch notices
//! it, and a connection opened before the swap keeps working.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

mod common;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

fn cert_der(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(name)).unwrap()
}

/// Replaces `to` the way a Secret mount does: write beside it, then rename over it.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A TLS connection trusting both test certificates, offering `alpn`.
async fn connect(addr: std::net::SocketAddr, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der("cert-a.pem")).unwrap();
    roots.add(cert_der("cert-b.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("TLS handshake with the forwarder")
}

fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn batch(prefix: &str) -> Bytes {
    let events: Vec<_> = (0..3)
        .map(|i| {
            json!({
                "id": format!("{prefix}-{i}"),
                "event_type": "users.messages.email.Send",
                "time": 1_764_000_000,
                "user": {"user_id": "u", "external_user_id": "someone"},
                "properties": {}
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&json!({ "events": events })).unwrap())
}

fn post(body: Bytes) -> Request<Full<Bytes>> {
    Request::post("https://127.0.0.1/currents")
        .header("authorization", "Bearer tok")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_and_swaps_certificates_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    install(&fixture("cert-a.pem"), &cert);
    install(&fixture("key-a.pem"), &key);
    let data = dir.path().join("data");
    let server = common::spawn_forwarder(
        &data,
        &common::heap_unreachable_and(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]),
    );
    let addr = server.addr;

    // HTTP/2 over TLS, kept open across the swap.
    let h2_stream = connect(addr, b"h2").await;
    assert_eq!(h2_stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(presented(&h2_stream), cert_der("cert-a.pem"));
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2_stream))
            .await
            .unwrap();
    tokio::spawn(h2_conn);
    let reply = h2.send_request(post(batch("h2-before"))).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.version(), http::Version::HTTP_2);

    // HTTP/1.1 over TLS.
    let h1_stream = connect(addr, b"http/1.1").await;
    assert_eq!(
        h1_stream.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..])
    );
    let (mut h1, h1_conn) = hyper::client::conn::http1::handshake(TokioIo::new(h1_stream))
        .await
        .unwrap();
    tokio::spawn(h1_conn);
    let reply = h1.send_request(post(batch("h1"))).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"accepted":3,"duplicates":0}"#);

    // Swap to pair b and send SIGHUP: new connections get b.
    install(&fixture("cert-b.pem"), &cert);
    install(&fixture("key-b.pem"), &key);
    common::sighup(&server);
    wait_for_certificate(addr, "cert-b.pem").await;

    // The HTTP/2 connection from before the swap still serves.
    let reply = h2.send_request(post(batch("h2-after"))).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);

    // Back to pair a, no signal: the file watch picks it up.
    install(&fixture("cert-a.pem"), &cert);
    install(&fixture("key-a.pem"), &key);
    wait_for_certificate(addr, "cert-a.pem").await;

    // A broken pair (certificate b, key a) is refused; a is still served.
    install(&fixture("cert-b.pem"), &cert);
    common::sighup(&server);
    common::wait_for_log(
        &server,
        "TLS certificate not reloaded",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        presented(&connect(addr, b"http/1.1").await),
        cert_der("cert-a.pem")
    );
    assert!(!server.log().contains("tok\""), "the token is never logged");
    server.terminate();
}

/// Waits (bounded) until a new connection is presented `name`.
async fn wait_for_certificate(addr: std::net::SocketAddr, name: &str) {
    let want = cert_der(name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if presented(&connect(addr, b"http/1.1").await) == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
