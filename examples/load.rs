//! Load harness for currents-heap.
//!
//! Sends Braze-shaped batches (the Custom HTTP samples plus, with `--all-types`, a minimal event
//! of every catalogue type; each with a unique random `id` and a user drawn from `--users`,
//! `--anonymous-share` and `--hot-share`) over N keep-alive connections, and reports
//! acknowledged events/s, request latency percentiles, the statuses seen and the server's RSS.
//!
//! With `--standin` it also runs the whole pipeline: a local Heap stand-in that enforces Heap's
//! limits (`currents_heap_testkit::standin`), and the forwarder binary spawned against it on a fresh
//! data directory; after sending it waits for delivery and reports delivered events/s,
//! duplicates and losses (acknowledged identified events Heap never received), and the fullest
//! budget windows Heap saw.
//!
//! ```text
//! cargo build --release --bin currents-heap --example load
//! # ingest only, against a running server:
//! ./target/release/examples/load --url http://127.0.0.1:8080/currents --duration 20s --pid $(pgrep -f 'currents-heap serve')
//! # the whole pipeline, budgets scaled 10x in time:
//! ./target/release/examples/load --standin --all-types --events 20000 --anonymous-share 0.1 \
//!     --hot-share 0.05 --budget-window 6s
//! ```
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use currents_heap::currents::catalogue::KNOWN_EVENT_TYPES;
use currents_heap_testkit::loadgen::{
    UserMix, build_batch_with, complete_with_event_types, load_templates,
};
use currents_heap_testkit::process::ServerProcess;
use currents_heap_testkit::standin::{HeapStandIn, StandInConfig};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Load harness for currents-heap")]
struct Args {
    /// Ingest URL (ignored with --standin).
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
    /// Add a minimal event of every catalogue type the samples lack.
    #[arg(long)]
    all_types: bool,
    /// Distinct identified users.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Share of anonymous events (no external_user_id), 0..1.
    #[arg(long, default_value_t = 0.0)]
    anonymous_share: f64,
    /// Share of events of one hot user, 0..1.
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// Server process id, to report its RSS (without --standin).
    #[arg(long)]
    pid: Option<u32>,
    /// Run a Heap stand-in and spawn the forwarder against it; report delivery too.
    #[arg(long)]
    standin: bool,
    /// The forwarder binary for --standin [default: currents-heap next to this example's dir].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Budget window of the stand-in and the forwarder (Heap's is 60s; smaller scales time).
    #[arg(long, default_value = "60s")]
    budget_window: humantime::Duration,
    /// With --standin: how long to wait for delivery after sending.
    #[arg(long, default_value = "10m")]
    drain_timeout: humantime::Duration,
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

/// The forwarder spawned for --standin, on its own data directory.
struct Forwarder {
    process: ServerProcess,
    _data_dir: tempfile::TempDir,
}

fn spawn_forwarder(bin: &Path, heap: &str, window: Duration, token: Option<&str>) -> Forwarder {
    let data_dir = tempfile::tempdir().expect("temp data dir");
    let window = humantime::format_duration(window).to_string();
    let mut args = vec![
        "--heap-app-id",
        "1",
        "--heap-base-url",
        heap,
        "--heap-budget-window",
        &window,
    ];
    if let Some(t) = token {
        args.extend(["--ingest-token", t]);
    }
    Forwarder {
        process: ServerProcess::spawn(bin, data_dir.path(), &args),
        _data_dir: data_dir,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/currents-samples/custom-http");
    let dir = args.samples.clone().unwrap_or_else(|| {
        if shared.is_dir() {
            shared
        } else {
            root.join("fixtures/currents")
        }
    });
    let mut templates = load_templates(&dir);
    if args.all_types {
        complete_with_event_types(&mut templates, KNOWN_EVENT_TYPES);
    }
    assert!(
        !templates.is_empty(),
        "no template events under {}",
        dir.display()
    );
    let types: HashSet<&str> = templates.iter().map(|t| t.event_type.as_str()).collect();
    let types = types.len();
    let templates = Arc::new(templates);
    let mix = UserMix {
        users: args.users,
        anonymous_share: args.anonymous_share,
        hot_share: args.hot_share,
    };

    // --standin: the stand-in and the forwarder.
    let window = *args.budget_window;
    let heap = args.standin.then(|| {
        HeapStandIn::start(StandInConfig {
            window,
            ..StandInConfig::heap()
        })
    });
    let forwarder = heap.as_ref().map(|h| {
        let bin = args.server_bin.clone().unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("currents-heap")
        });
        spawn_forwarder(&bin, &h.base_url(), window, args.token.as_deref())
    });
    let uri: http::Uri = match &forwarder {
        Some(f) => format!("http://{}/currents", f.process.addr)
            .parse()
            .unwrap(),
        None => args.url.parse().expect("--url"),
    };
    let pid = forwarder.as_ref().map(|f| f.process.pid()).or(args.pid);
    let authority = uri.authority().expect("--url needs host:port").clone();
    let nonce = std::process::id()
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32);

    let acked = Arc::new(AtomicU64::new(0));
    let acked_ids: Arc<Mutex<Vec<(String, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let templates = Arc::clone(&templates);
        let acked = Arc::clone(&acked);
        let acked_ids = Arc::clone(&acked_ids);
        let stop = Arc::clone(&stop);
        let uri = uri.clone();
        let authority = authority.clone();
        let token = args.token.clone();
        let (batch, gz, limit, track_ids) = (args.batch, args.gzip, args.events, args.standin);
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
            let mut ids = Vec::with_capacity(batch);
            while !stop.load(Ordering::Relaxed) {
                ids.clear();
                let mut body =
                    build_batch_with(&templates, batch, conn, &mut counter, nonce, mix, &mut ids);
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
                            if track_ids {
                                acked_ids.lock().unwrap().extend(ids.drain(..));
                            }
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
        let rss = pid.and_then(rss_kib);
        if let Some((cur, _)) = rss {
            peak_rss = peak_rss.max(cur);
        }
        let delivered = heap
            .as_ref()
            .map(|h| format!("  delivered {:>9}", h.report().events_accepted))
            .unwrap_or_default();
        eprint!(
            "\r{:>6.1}s  acked {:>10}  {:>8} ev/s{delivered}{}   ",
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
        "connections {}  batch {}  gzip {}  event types {}  users {}  anonymous {:.0} %  hot {:.0} %",
        args.connections,
        args.batch,
        args.gzip,
        types,
        args.users,
        args.anonymous_share * 100.0,
        args.hot_share * 100.0
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

    if let Some(heap) = &heap {
        let ids = std::mem::take(&mut *acked_ids.lock().unwrap());
        let identified: Vec<&str> = ids
            .iter()
            .filter(|(_, identified)| *identified)
            .map(|(id, _)| id.as_str())
            .collect();
        let deadline = Instant::now() + *args.drain_timeout;
        let drain_started = Instant::now();
        loop {
            let report = heap.report();
            let received = identified
                .iter()
                .filter(|k| report.keys.contains_key(**k))
                .count();
            eprint!(
                "\r  delivering: {received} / {} identified events received by the stand-in   ",
                identified.len()
            );
            if received == identified.len() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let delivery_secs = drain_started.elapsed().as_secs_f64() + elapsed;
        let report = heap.report();
        let received = identified
            .iter()
            .filter(|k| report.keys.contains_key(**k))
            .count();
        let duplicates: u64 = report
            .keys
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum();
        println!();
        println!(
            "delivered {received} of {} identified events in {delivery_secs:.1}s = {:.0} events/s; \
             anonymous (skipped) {}; losses {}; duplicate deliveries {duplicates}",
            identified.len(),
            received as f64 / delivery_secs,
            ids.len() - identified.len(),
            identified.len() - received,
        );
        println!(
            "Heap stand-in: fullest app window {} / {}, fullest identity window {} / {}, \
             budget 429s {}, shape violations {}",
            report.max_app_window.events,
            report.config.events_per_window,
            report.max_identity_window.events,
            report.config.identity_events_per_window,
            report.limit_rejections,
            report.shape_violation_count,
        );
    }
    if let Some((cur, hwm)) = pid.and_then(rss_kib) {
        println!(
            "server RSS now {} MiB, peak sampled {} MiB, VmHWM {} MiB",
            cur / 1024,
            peak_rss.max(cur) / 1024,
            hwm / 1024
        );
    }
    drop(forwarder);
}
