//! End-to-end load generator for `POST /currents`.
//!
//! Sends Braze-shaped batches (the Custom HTTP samples, each with a unique `id`) over N
//! keep-alive connections and reports acknowledged events/s, request latency percentiles, the
//! statuses seen and, with `--pid`, the server's resident memory (current and peak).
//!
//! ```text
//! cargo run --release --example load -- --url http://127.0.0.1:8080/currents \
//!     --connections 8 --batch 100 --duration 20s --pid $(pgrep -f 'currents-heap serve')
//! ```
//!
//! Templates come from `--samples DIR` (default `../shared/currents-samples/custom-http`, falling
//! back to `fixtures/currents`): every `*.json` file holding one event, an array of events, or a
//! `{"events":[...]}` batch.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use currents_heap::loadgen::{build_batch, load_templates};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Load generator for currents-heap's POST /currents")]
struct Args {
    /// Ingest URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/currents")]
    url: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// How long to send (e.g. 20s); ignored when --events is set.
    #[arg(long, default_value = "20s")]
    duration: humantime::Duration,
    /// Stop after this many events have been acknowledged instead of after --duration.
    #[arg(long)]
    events: Option<u64>,
    /// Bearer token.
    #[arg(long)]
    token: Option<String>,
    /// Gzip request bodies.
    #[arg(long)]
    gzip: bool,
    /// Directory of template events.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pid: Option<u32>,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let default_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/currents-samples/custom-http");
    let dir = args.samples.clone().unwrap_or_else(|| {
        if default_dir.is_dir() {
            default_dir
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/currents")
        }
    });
    let templates = Arc::new(load_templates(&dir));
    assert!(
        !templates.is_empty(),
        "no template events under {}",
        dir.display()
    );
    let uri: http::Uri = args.url.parse().expect("--url");
    let authority = uri.authority().expect("--url needs host:port").clone();
    let nonce = std::process::id()
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32);

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let templates = Arc::clone(&templates);
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        let uri = uri.clone();
        let authority = authority.clone();
        let token = args.token.clone();
        let (batch, gz, limit) = (args.batch, args.gzip, args.events);
        tasks.push(tokio::spawn(async move {
            let mut stats = ConnStats::default();
            let stream = TcpStream::connect(authority.as_str())
                .await
                .expect("connect");
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut body = build_batch(&templates, batch, conn, &mut counter, nonce);
                let mut req = http::Request::post(uri.clone())
                    .header(http::header::HOST, authority.as_str())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header("Braze-Currents-Version", "1");
                if gz {
                    body = gzip(&body);
                    req = req.header(http::header::CONTENT_ENCODING, "gzip");
                }
                if let Some(t) = &token {
                    req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let req = req.body(Full::new(Bytes::from(body))).unwrap();
                let t0 = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        stats
                            .latencies_us
                            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        *stats.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            let total =
                                acked.fetch_add(batch as u64, Ordering::Relaxed) + batch as u64;
                            if limit.is_some_and(|l| total >= l) {
                                stop.store(true, Ordering::Relaxed);
                            }
                        } else if status == 503 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    Err(e) => {
                        stats.errors += 1;
                        eprintln!("request failed: {e}");
                        break;
                    }
                }
            }
            stats
        }));
    }

    // Progress line; stop after --duration unless --events is set.
    let mut peak_rss = 0u64;
    let mut last = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = acked.load(Ordering::Relaxed);
        let rss = args.pid.and_then(rss_kib);
        if let Some((cur, _)) = rss {
            peak_rss = peak_rss.max(cur);
        }
        eprint!(
            "\r{:>6.1}s  acked {:>10}  {:>8} ev/s{}   ",
            started.elapsed().as_secs_f64(),
            now,
            now - last,
            rss.map(|(c, _)| format!("  server RSS {} MiB", c / 1024))
                .unwrap_or_default()
        );
        last = now;
        if args.events.is_none() && started.elapsed() >= *args.duration {
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) || tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = ConnStats::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.latencies_us.extend(s.latencies_us);
        for (k, v) in s.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        all.errors += s.errors;
    }
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &all.latencies_us;
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0
    };
    let total = acked.load(Ordering::Relaxed);
    println!();
    println!(
        "connections {}  batch {}  gzip {}",
        args.connections, args.batch, args.gzip
    );
    println!(
        "acknowledged events {total} in {elapsed:.1}s = {:.0} events/s",
        total as f64 / elapsed
    );
    println!(
        "requests {}  latency ms p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        all.latencies_us.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "statuses {:?}  transport errors {}",
        all.statuses, all.errors
    );
    if let Some((cur, hwm)) = args.pid.and_then(rss_kib) {
        println!(
            "server RSS now {} MiB, peak sampled {} MiB, VmHWM {} MiB",
            cur / 1024,
            peak_rss.max(cur) / 1024,
            hwm / 1024
        );
    }
}
