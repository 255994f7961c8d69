//! product.md §3, bodies on the wire: gzip and deflate decoded transparently, unknown
//! encodings (415) and corrupt streams (400) refused, and the size limit (413) enforced on the
//! compressed and the decompressed size while streaming, so a gzip bomb is never inflated.
//! Every app here runs with `max_body_bytes = 1MiB`.

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

const LIMIT: usize = 1024 * 1024;

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gzip_best(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Deterministic, incompressible-looking text (an LCG rendered as hex).
fn noise(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(len);
    s
}

/// A one-event batch whose serialised size is about `size` bytes.
fn batch_of_size(id: &str, size: usize) -> Vec<u8> {
    let mut e = event(id, "users.behaviors.CustomEvent");
    e["properties"]["custom_properties"] = json!({ "blob": noise(size) });
    batch(&[e])
}

/// Peak resident set size of this process, in bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line");
    kib * 1024
}

#[track_caller]
fn assert_status(reply: &Reply, status: StatusCode, error: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.text());
    assert_eq!(reply.json()["error"], error, "body: {}", reply.text());
}

#[tokio::test]
async fn a_gzip_body_is_decompressed_transparently() {
    let app = spawn_app().await;
    let plain = fixture("email_send_batch.json");

    let reply = app
        .post(gzip(&plain), &[AUTH[0], ("content-encoding", "gzip")])
        .await;

    reply.assert_accepted(3, 0);
    for sent in fixture_events("email_send_batch.json") {
        let stored = app.stored_event(sent["id"].as_str().unwrap());
        assert_eq!(
            serde_json::from_slice::<Value>(&stored.payload).unwrap(),
            sent
        );
    }
    assert_eq!(app.stored_count(), 3);
}

#[tokio::test]
async fn content_encoding_names_are_case_insensitive_and_identity_is_plain() {
    let app = spawn_app().await;

    app.post(
        gzip(&batch(&email_sends("upper", 1))),
        &[AUTH[0], ("content-encoding", "GZIP")],
    )
    .await
    .assert_accepted(1, 0);
    app.post(
        gzip(&batch(&email_sends("x-gzip", 1))),
        &[AUTH[0], ("content-encoding", "x-gzip")],
    )
    .await
    .assert_accepted(1, 0);
    app.post(
        batch(&email_sends("identity", 1)),
        &[AUTH[0], ("content-encoding", "identity")],
    )
    .await
    .assert_accepted(1, 0);

    assert_eq!(app.stored_count(), 3);
}

#[tokio::test]
async fn a_deflate_body_is_decompressed_transparently() {
    let app = spawn_app().await;

    // RFC 9110 `deflate` is zlib-wrapped; some clients send a raw deflate stream.
    app.post(
        zlib(&batch(&email_sends("zlib", 2))),
        &[AUTH[0], ("content-encoding", "deflate")],
    )
    .await
    .assert_accepted(2, 0);
    app.post(
        raw_deflate(&batch(&email_sends("raw", 2))),
        &[AUTH[0], ("content-encoding", "deflate")],
    )
    .await
    .assert_accepted(2, 0);

    assert_eq!(
        app.stored_ids(),
        id_set(["zlib-0", "zlib-1", "raw-0", "raw-1"])
    );
}

#[tokio::test]
async fn a_compressed_credential_check_is_accepted() {
    let app = spawn_app().await;

    app.post(gzip(b""), &[AUTH[0], ("content-encoding", "gzip")])
        .await
        .assert_accepted(0, 0);
    app.post(zlib(b"{}"), &[AUTH[0], ("content-encoding", "deflate")])
        .await
        .assert_accepted(0, 0);

    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn an_unknown_content_encoding_is_refused_with_415() {
    let app = spawn_app().await;
    let body = fixture("email_send_batch.json");

    for encoding in ["br", "zstd", "compress", "gzip, br", "gzip, gzip"] {
        let reply = app
            .post(gzip(&body), &[AUTH[0], ("content-encoding", encoding)])
            .await;
        assert_status(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
        );
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("gzip"),
            "{encoding}: the 415 says what works: {message}"
        );
    }
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_corrupt_gzip_body_is_refused_with_400() {
    let app = spawn_app().await;
    let plain = fixture("email_send_batch.json");
    let mut truncated = gzip(&plain);
    truncated.truncate(truncated.len() / 2);
    let mut flipped = gzip(&plain);
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    flipped[mid + 1] ^= 0x55;

    for (what, body) in [
        ("truncated", truncated),
        ("bit-flipped", flipped),
        ("not gzip at all", plain.clone()),
    ] {
        let reply = app
            .post(body, &[AUTH[0], ("content-encoding", "gzip")])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["error"], "corrupt_body", "{what}");
    }
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_corrupt_deflate_body_is_refused_with_400() {
    let app = spawn_app().await;
    let mut truncated = zlib(&fixture("email_send_batch.json"));
    truncated.truncate(truncated.len() - 10);

    let reply = app
        .post(truncated, &[AUTH[0], ("content-encoding", "deflate")])
        .await;

    assert_status(&reply, StatusCode::BAD_REQUEST, "corrupt_body");
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_single_event_near_brazes_900_kb_cap_fits_under_the_limit() {
    let app = spawn_app().await;
    let body = batch_of_size("big-event", 950 * 1000);
    assert!(body.len() < LIMIT);

    app.post_authed(body.clone()).await.assert_accepted(1, 0);
    app.post(gzip(&body), &[AUTH[0], ("content-encoding", "gzip")])
        .await
        .assert_accepted(0, 1);

    assert_eq!(app.stored_count(), 1);
}

#[tokio::test]
async fn a_plain_body_over_the_limit_is_refused_with_413() {
    let app = spawn_app().await;
    let body = batch_of_size("too-big", 2 * LIMIT);

    let reply = app.post_authed(body).await;

    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(app.stored_count(), 0);
    // The connection that carried it may be closed; the server is fine.
    app.post_authed(batch(&email_sends("after", 1)))
        .await
        .assert_accepted(1, 0);
}

#[tokio::test]
async fn a_chunked_body_without_content_length_is_accepted() {
    let app = spawn_app().await;
    let body = Bytes::from(gzip(&fixture("email_send_batch.json")));
    let chunks: Vec<Bytes> = body.chunks(100).map(Bytes::copy_from_slice).collect();

    let reply = app
        .post_chunked(chunks, &[AUTH[0], ("content-encoding", "gzip")])
        .await;

    reply.assert_accepted(3, 0);
    assert_eq!(app.stored_count(), 3);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_with_413_while_streaming() {
    let app = spawn_app().await;
    let body = Bytes::from(batch_of_size("too-big-chunked", 2 * LIMIT));
    let chunks: Vec<Bytes> = body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();

    let reply = app.post_chunked(chunks, AUTH).await;

    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_compressed_body_over_the_limit_is_refused_with_413() {
    let app = spawn_app().await;
    // Noise does not compress much: the gzip'd body itself is above the limit.
    let compressed = gzip(&batch_of_size("big-compressed", 3 * LIMIT));
    assert!(compressed.len() > LIMIT);

    let reply = app
        .post(compressed, &[AUTH[0], ("content-encoding", "gzip")])
        .await;

    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_small_body_that_decompresses_over_the_limit_is_refused_with_413() {
    let app = spawn_app().await;
    // Valid JSON all the way: only the decompressed size is wrong.
    let inflated = batch_of_size("inflates-too-much", LIMIT + 10_000);
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(&inflated).unwrap();
    let compressed = e.finish().unwrap();
    assert!(compressed.len() < LIMIT);

    let reply = app
        .post(compressed, &[AUTH[0], ("content-encoding", "gzip")])
        .await;

    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_with_413() {
    let app = spawn_app().await;
    let bomb = gzip_best(&vec![b' '; 50 * 1024 * 1024]);
    assert!(bomb.len() < 100 * 1024, "a bomb is small on the wire");

    let reply = app
        .post(bomb, &[AUTH[0], ("content-encoding", "gzip")])
        .await;

    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_gzip_bomb_is_never_inflated_into_memory() {
    let app = spawn_app().await;
    // 900 gzip members of 1 MiB of spaces each: under 1 MiB on the wire, 900 MiB inflated.
    let member = gzip_best(&vec![b' '; 1024 * 1024]);
    let bomb: Vec<u8> = member.repeat(900);
    assert!(bomb.len() < LIMIT, "bomb is {} bytes", bomb.len());
    let before = peak_rss();

    let reply = app
        .post(bomb, &[AUTH[0], ("content-encoding", "gzip")])
        .await;

    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 256 * 1024 * 1024,
        "peak memory grew by {} MiB while refusing a 900 MiB bomb",
        grown / (1024 * 1024)
    );
    assert_eq!(app.stored_count(), 0);
}
