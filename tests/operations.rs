//! Operations: what `deploy/` ships (alert rules, dashboard, manifests, compose file, image)
//! is checked against what the binary really does.
//!
//! - every metric name (and label matcher) in `deploy/` and `docs/OPERATIONS.md` is one the
//!   binary exports ([`CATALOGUE`]), with label values from the closed sets it uses;
//! - the manifests and the dashboard parse; the StatefulSet keeps the queue on a persistent
//!   volume, probes `/healthz` and `/readyz`, waits long enough for the drain, and is governed
//!   by a headless Service;
//! - `promtool check rules` and `promtool test rules` pass; every alert has a runbook section
//!   and a firing unit test;
//! - the README agrees with what it summarises or describes: its runbook table with the entries
//!   of docs/OPERATIONS.md, its Rust version with `Cargo.toml`, its token alphabet with the
//!   settings parser; the documents promise at-least-once delivery (what the crash tests
//!   check), never exactly-once; the image tag is the package version wherever it appears;
//! - label sets stay bounded under real traffic (unknown event types become `other`, no id or
//!   identity becomes a label value);
//! - a real Prometheus scrapes the running binary: after a known batch it answers the expected
//!   PromQL values, every dashboard query runs, every rule evaluates, no alert is pending on a
//!   healthy forwarder, and a 401 fires `CurrentsHeapIngestUnauthorized`.
//!
//! External tools (`promtool`, `prometheus`, Python with PyYAML) are used when present; a test
//! that needs a missing one prints a note and returns — except under CI (`CI` set), where
//! `.ci/run` installs them and a missing tool is a failure.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use currents_heap::currents::catalogue::KNOWN_EVENT_TYPES;
use currents_heap::heap::model::{TRACK_PATH, USER_PROPERTIES_PATH};
use currents_heap::heap::retry::{RETRY_REASONS, STATUS_CLASSES};
use currents_heap::metrics::{
    CATALOGUE, CONFIG_RELOAD_OUTCOMES, CONNECTION_CLOSE_REASONS, DEAD_LETTER_REASONS,
    DELETION_OPEN_STATUSES, DELETION_OUTCOMES, OUTCOMES, REJECT_REASONS, STATUSES,
    TLS_RELOAD_OUTCOMES, UNROUTABLE,
};
use currents_heap::transform::{DROP_REASONS, SKIP_REASONS};
use currents_heap_testkit::process::ServerProcess;
use serde_json::{Value, json};
use tempfile::TempDir;

const TOKEN: &str = "ops-test-token";
/// The data directory of the image and of the manifests.
const DATA_DIR: &str = "/var/lib/currents-heap";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml")
    )
}

// ---------------------------------------------------------------------------------------------
// External tools

/// A skip note on the real standard error: libtest captures `eprintln!` of passing tests, and a
/// skipped check must stay visible in the output of `cargo test`.
macro_rules! skip_note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// A tool a test needs: its path, or `None` after a skip note. Under CI a missing tool fails
/// the test: `.ci/run` installs it.
fn tool(name: &str, install: &str) -> Option<PathBuf> {
    match on_path(name) {
        Some(p) => Some(p),
        None if in_ci() => {
            panic!("`{name}` is not on PATH under CI: .ci/run must install it ({install})")
        }
        None => {
            skip_note!(
                "SKIPPED: `{name}` is not on PATH, the checks needing it did not run; install it with {install}"
            );
            None
        }
    }
}

/// A Python interpreter that has PyYAML (`python3` first, then Debian's).
fn python_with_yaml() -> Option<&'static str> {
    static PYTHON: OnceLock<Option<&'static str>> = OnceLock::new();
    let found = *PYTHON.get_or_init(|| {
        ["python3", "/usr/bin/python3"].into_iter().find(|py| {
            Command::new(py)
                .args(["-c", "import yaml"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    });
    if found.is_none() {
        let install = "`apt-get install -y python3-yaml` or `pip install pyyaml`";
        if in_ci() {
            panic!("no python3 with PyYAML under CI: .ci/run must install it ({install})");
        }
        skip_note!(
            "SKIPPED: no python3 with PyYAML, the YAML checks did not run; install it with {install}"
        );
    }
    found
}

/// Every document of a YAML file, as JSON (PyYAML's `safe_load_all`); `None` without PyYAML.
/// A file that does not parse fails the test.
fn yaml_docs(path: &Path) -> Option<Vec<Value>> {
    let python = python_with_yaml()?;
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             with open(sys.argv[1]) as f:\n    docs = list(yaml.safe_load_all(f))\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} is not valid YAML:\n{}",
        rel(path),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("python printed JSON");
    Some(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn yaml_doc(path: &Path) -> Option<Value> {
    let mut docs = yaml_docs(path)?;
    assert_eq!(docs.len(), 1, "{} should hold one document", rel(path));
    docs.pop()
}

// ---------------------------------------------------------------------------------------------
// Metric names and label matchers in text

/// `(name, selector body)` of every `currents_heap_...` name in `text`; the selector is the
/// text between `{` and `}` right after the name, when there is one.
fn metric_refs(text: &str) -> Vec<(String, Option<String>)> {
    const PREFIX: &str = "currents_heap_";
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(PREFIX) {
        let start = from + i;
        let mut end = start + PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        from = end;
        let glued =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if glued || end == start + PREFIX.len() {
            continue;
        }
        let selector = (bytes.get(end) == Some(&b'{'))
            .then(|| {
                text[end + 1..]
                    .find('}')
                    .map(|j| text[end + 1..end + 1 + j].to_owned())
            })
            .flatten();
        out.push((text[start..end].to_owned(), selector));
    }
    out
}

/// The catalogue entry a name refers to: itself, or the histogram behind a `_bucket`, `_sum`
/// or `_count` series. Returns `(name, type, labels)`.
fn catalogued(name: &str) -> Option<(&'static str, &'static str, Vec<&'static str>)> {
    let entry = |n: &str| CATALOGUE.iter().find(|(c, ..)| *c == n);
    let labels = |l: &'static str| l.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>();
    if let Some((n, kind, l, _)) = entry(name) {
        return Some((n, kind, labels(l)));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let (n, kind, l, _) = entry(name.strip_suffix(suffix)?)?;
        (*kind == "histogram").then(|| (*n, *kind, labels(l)))
    })
}

/// Labels a scrape adds (static configs, Kubernetes service discovery, the Prometheus
/// Operator; `exported_endpoint` is our `endpoint` renamed when a target label collides).
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "container",
    "endpoint",
    "exported_endpoint",
];

/// The values label `label` of metric `metric` takes, when they form a closed set.
fn label_values(metric: &str, label: &str) -> Option<Vec<String>> {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let values = match (metric, label) {
        ("currents_heap_tls_reloads_total", "outcome") => owned(TLS_RELOAD_OUTCOMES),
        ("currents_heap_config_reloads_total", "outcome") => owned(CONFIG_RELOAD_OUTCOMES),
        ("currents_heap_deletions_total", "outcome") => owned(DELETION_OUTCOMES),
        ("currents_heap_deletions_open", "status") => owned(DELETION_OPEN_STATUSES),
        (_, "outcome") => owned(OUTCOMES),
        (_, "status") => owned(STATUSES),
        (_, "status_class") => owned(STATUS_CLASSES),
        (_, "budget") => owned(&["app", "identity"]),
        // The Service's port name too: the Prometheus Operator's target label.
        (_, "endpoint") => owned(&[TRACK_PATH, USER_PROPERTIES_PATH, "http"]),
        (_, "exported_endpoint") => owned(&[TRACK_PATH, USER_PROPERTIES_PATH]),
        (_, "event_type") => {
            let mut v = owned(KNOWN_EVENT_TYPES);
            v.push("other".into());
            v
        }
        (m, "reason") if m.starts_with("currents_heap_events_rejected_total") => {
            owned(REJECT_REASONS)
        }
        (m, "reason") if m.starts_with("currents_heap_events_skipped_total") => owned(SKIP_REASONS),
        (m, "reason") if m.starts_with("currents_heap_connections_closed_total") => {
            owned(CONNECTION_CLOSE_REASONS)
        }
        (m, "reason") if m.starts_with("currents_heap_properties_dropped_total") => {
            owned(DROP_REASONS)
        }
        (m, "reason") if m.starts_with("currents_heap_delivery_retries_total") => {
            owned(RETRY_REASONS)
        }
        (m, "reason") if m.starts_with("currents_heap_") => {
            let mut v = owned(DEAD_LETTER_REASONS);
            v.push("other".into());
            v
        }
        _ => return None,
    };
    Some(values)
}

/// `(label, op, value)` of each matcher of a selector body such as `route="a", reason=~"b|c"`;
/// a bare label name (the notation `metric{label}` of prose) has an empty op and value.
fn matchers(selector: &str) -> Vec<(String, String, String)> {
    let mut parts = Vec::new();
    let (mut cur, mut quoted) = (String::new(), false);
    for c in selector.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let name_len = p
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(p.len());
            let (name, rest) = p.split_at(name_len);
            let rest = rest.trim_start();
            if rest.is_empty() {
                return (name.to_owned(), String::new(), String::new());
            }
            let op = ["=~", "!~", "!=", "="]
                .into_iter()
                .find(|op| rest.starts_with(op))
                .unwrap_or_else(|| panic!("cannot parse matcher {p:?}"));
            let value = rest[op.len()..]
                .trim()
                .trim_matches(|c| c == '"' || c == '\'');
            (name.to_owned(), op.to_owned(), value.to_owned())
        })
        .collect()
}

/// What is wrong with one reference (empty when nothing).
fn check_ref(name: &str, selector: Option<&str>) -> Vec<String> {
    let Some((base, kind, labels)) = catalogued(name) else {
        return vec![format!("{name} is not exported (not in CATALOGUE)")];
    };
    let mut problems = Vec::new();
    for (label, op, value) in matchers(selector.unwrap_or("")) {
        let known = labels.contains(&label.as_str())
            || TARGET_LABELS.contains(&label.as_str())
            || (label == "le" && kind == "histogram" && name.ends_with("_bucket"))
            || label == "__name__";
        if !known {
            problems.push(format!(
                "{name}: label `{label}` does not exist (labels of {base}: {labels:?})"
            ));
            continue;
        }
        // Grafana variables and real regular expressions are not checked.
        let Some(allowed) = label_values(base, &label) else {
            continue;
        };
        if op.is_empty() || value.contains('$') {
            continue;
        }
        let alternatives: Vec<&str> = if op.ends_with('~') {
            let plain = value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./|-".contains(c));
            if !plain {
                continue;
            }
            value.split('|').collect()
        } else {
            vec![value.as_str()]
        };
        for v in alternatives {
            if !allowed.iter().any(|a| a == v) {
                problems.push(format!(
                    "{name}{{{label}{op}\"{value}\"}}: `{v}` is never a value of `{label}` (values: {allowed:?})"
                ));
            }
        }
    }
    problems
}

/// All strings of a JSON document (dashboard queries live in string values).
fn json_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

/// The text of a file where metric names may appear (JSON: its string values, unescaped).
fn searchable_text(path: &Path) -> String {
    let text = read(path);
    if path.extension().is_some_and(|e| e == "json") {
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", rel(path)));
        let mut strings = Vec::new();
        json_strings(&v, &mut strings);
        strings.join("\n")
    } else {
        text
    }
}

fn operator_files() -> Vec<PathBuf> {
    let mut files = files_under(&deploy());
    files.push(root().join("docs/OPERATIONS.md"));
    files
}

#[test]
fn every_metric_in_deploy_and_the_runbook_is_exported_with_real_labels() {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for path in operator_files() {
        for (name, selector) in metric_refs(&searchable_text(&path)) {
            for p in check_ref(&name, selector.as_deref()) {
                problems.push(format!("{}: {p}", rel(&path)));
            }
            if let Some((base, ..)) = catalogued(&name) {
                used.insert(base);
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The checker found the names at all (a broken scanner would pass everything).
    assert!(
        used.len() >= 20,
        "only {} metrics referenced: {used:?}",
        used.len()
    );
}

/// The token alphabet the README states is the one the settings parser accepts: every
/// character it lists for Braze's Base64 tokens, and every printable ASCII character except
/// space and comma (which separates tokens); nothing else.
#[test]
fn readme_token_alphabet_is_what_the_parser_accepts() {
    use currents_heap::config::{FileConfig, Settings, SettingsArgs};
    let tokens = |token: &str| -> Result<Vec<String>, String> {
        let args = SettingsArgs {
            ingest_token: Some(token.to_owned()),
            ..Default::default()
        };
        Settings::resolve(&args, FileConfig::default())
            .map(|s| {
                s.ingest_tokens
                    .iter()
                    .map(|t| t.expose().to_owned())
                    .collect()
            })
            .map_err(|e| e.to_string())
    };
    let readme = read(&root().join("README.md")).replace("\n   ", " ");
    let base64 = "expects it in Base64 form: letters, digits and `";
    let at = readme
        .find(base64)
        .expect("README states Braze's token alphabet")
        + base64.len();
    let listed = &readme[at..at + readme[at..].find('`').unwrap()];
    let braze = format!("Az09{listed}");
    assert_eq!(
        tokens(&braze),
        Ok(vec![braze.clone()]),
        "README's Base64 alphabet"
    );
    assert!(
        readme.contains(
            "The forwarder takes any token of printable ASCII characters except space and comma \
             (a comma separates tokens)"
        ),
        "README states what the forwarder accepts"
    );
    for c in (0x21u8..=0x7e).map(char::from).filter(|c| *c != ',') {
        let token = format!("a{c}b");
        assert_eq!(
            tokens(&token),
            Ok(vec![token.clone()]),
            "{c:?} is printable ASCII"
        );
    }
    assert_eq!(tokens("a,b"), Ok(vec!["a".to_owned(), "b".to_owned()]));
    for refused in ["a b", "a\tb", "a\u{e9}b", "a\u{7f}b"] {
        assert!(tokens(refused).is_err(), "{refused:?} accepted");
    }
}

/// `major.minor` of a Rust version such as `1.89`, `1.89.0` or `1.95-bookworm`.
fn rust_version(v: &str) -> (u32, u32) {
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("{v:?} is not a Rust version"),
    }
}

/// The README's prerequisites name the workspace's `rust-version`, and the image builds with
/// a Rust at least that new.
#[test]
fn readme_states_the_minimum_rust_version() {
    let manifest = read(&root().join("Cargo.toml"));
    let declared = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml declares the workspace's rust-version");
    assert!(
        rust_version(declared) >= (1, 89),
        "rusqlite 0.43 needs Rust 1.89, Cargo.toml says {declared}"
    );
    let readme = read(&root().join("README.md"));
    let (_, prerequisites) = readme
        .split_once("\n## Prerequisites\n")
        .expect("README has a Prerequisites section");
    let prerequisites = prerequisites.split("\n## ").next().unwrap();
    assert!(
        prerequisites.contains(&format!("**Rust {declared} or newer**")),
        "README's prerequisites must name Rust {declared} (Cargo.toml's rust-version)"
    );
    for needed in ["C compiler", "cargo install", "Ctrl-C"] {
        assert!(
            readme.contains(needed),
            "README no longer mentions {needed:?}"
        );
    }
    let dockerfile = read(&deploy().join("Dockerfile"));
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the build stage is FROM rust:<version>");
    assert!(
        rust_version(image) >= rust_version(declared),
        "the image builds with Rust {image}, older than rust-version {declared}"
    );
}

/// What the documents claim can be checked by a reader of the repository: delivery is
/// at-least-once (what the crash tests assert), never "exactly once"; no figure or goal is
/// cited from a source the reader does not have; the fixtures' README names files that exist.
#[test]
fn docs_claim_only_what_a_reader_can_check() {
    let mut docs = vec![
        root().join("README.md"),
        root().join("fixtures/currents/README.md"),
    ];
    docs.extend(
        files_under(&root().join("docs"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    let mut problems = Vec::new();
    for path in &docs {
        let text = read(path).to_lowercase().replace('\n', " ");
        for phrase in ["exactly once", "exactly-once", "the issue", "of the target"] {
            if text.contains(phrase) {
                problems.push(format!("{} says {phrase:?}", rel(path)));
            }
        }
    }
    let readme = read(&root().join("README.md"));
    assert!(
        readme.contains("Delivery is at-least-once"),
        "README says what the crash tests check: at-least-once delivery"
    );
    // Every file the fixtures' README names is in the repository.
    let tests = files_under(&root().join("tests"));
    let fixtures = read(&root().join("fixtures/currents/README.md"));
    for name in fixtures.split('`').skip(1).step_by(2) {
        if !(name.ends_with(".rs") || name.ends_with(".json")) {
            continue;
        }
        let found = root().join(name).is_file()
            || root().join("fixtures/currents").join(name).is_file()
            || tests.iter().any(|p| p.ends_with(name));
        if !found {
            problems.push(format!("fixtures/currents/README.md names missing {name}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_metric_checker_catches_mistakes() {
    assert!(check_ref("currents_heap_events_delivered_total", Some(r#"route="x""#)).is_empty());
    assert!(
        check_ref(
            "currents_heap_heap_request_duration_seconds_bucket",
            Some("le=\"0.5\"")
        )
        .is_empty()
    );
    assert!(!check_ref("currents_heap_events_delivered", None).is_empty());
    assert!(!check_ref("currents_heap_queue_events_bucket", None).is_empty());
    assert!(
        !check_ref(
            "currents_heap_events_delivered_total",
            Some(r#"reason="x""#)
        )
        .is_empty()
    );
    assert!(
        !check_ref(
            "currents_heap_ingest_requests_total",
            Some(r#"outcome=~"unauthorized|unauthorised""#)
        )
        .is_empty()
    );
    assert!(
        !check_ref(
            "currents_heap_delivery_retries_total",
            Some(r#"reason="status_503""#)
        )
        .is_empty()
    );
    assert!(
        check_ref(
            "currents_heap_delivery_retries_total",
            Some(r#"reason=~".+""#)
        )
        .is_empty()
    );
    let refs =
        metric_refs("rate(currents_heap_a_total{x=\"1\"}[5m]) / xcurrents_heap_b currents_heap_");
    assert_eq!(
        refs,
        vec![(
            "currents_heap_a_total".to_owned(),
            Some("x=\"1\"".to_owned())
        )]
    );
}

/// The README's metric table documents every metric of the catalogue with its type and labels.
#[test]
fn readme_documents_the_whole_metric_catalogue() {
    let readme = read(&root().join("README.md"));
    let rows: Vec<Vec<String>> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    let mut problems = Vec::new();
    for (name, kind, labels, _) in CATALOGUE {
        let short = name.strip_prefix("currents_heap_").unwrap();
        let Some(row) = rows
            .iter()
            .find(|r| r.len() >= 4 && r[0].split('/').any(|n| n.trim() == format!("`{short}`")))
        else {
            problems.push(format!("{short} has no row in the README's metric table"));
            continue;
        };
        if row[1] != *kind {
            problems.push(format!("{short}: README says {}, CATALOGUE {kind}", row[1]));
        }
        let documented: BTreeSet<&str> = row[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`'))
            .filter(|l| !l.is_empty())
            .collect();
        let exported: BTreeSet<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        if documented != exported {
            problems.push(format!(
                "{short}: README labels {documented:?}, CATALOGUE {exported:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The series of the promtool unit tests carry every label the binary exports for them, so a
/// rule that matches or aggregates on labels is tested on realistic data.
#[test]
fn alert_test_series_carry_the_exported_labels() {
    let path = deploy().join("prometheus/alerts_test.yml");
    let text = read(&path);
    let mut problems = Vec::new();
    let mut series = 0;
    for line in text.lines().map(str::trim) {
        let Some(s) = line.strip_prefix("- series: ") else {
            continue;
        };
        let s = s.trim_matches(|c| c == '\'' || c == '"');
        for (name, selector) in metric_refs(s) {
            series += 1;
            let Some((_, _, labels)) = catalogued(&name) else {
                continue; // reported by the test above
            };
            let present: BTreeSet<String> = matchers(selector.as_deref().unwrap_or(""))
                .into_iter()
                .map(|(l, ..)| l)
                .collect();
            for label in labels {
                let renamed = label == "endpoint" && present.contains("exported_endpoint");
                if !present.contains(label) && !renamed {
                    problems.push(format!("{s}: lacks label `{label}`"));
                }
            }
            for target in ["job", "instance"] {
                if !present.contains(target) {
                    problems.push(format!("{s}: lacks target label `{target}`"));
                }
            }
        }
    }
    assert!(series >= 20, "only {series} input series found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Files parse; the manifests say what they must

#[test]
fn dashboard_and_manifests_parse() {
    let files = files_under(&deploy());
    let yaml: Vec<&PathBuf> = files.iter().filter(|p| is_yaml(p)).collect();
    assert!(yaml.len() >= 10, "YAML files under deploy/: {yaml:?}");
    for path in &yaml {
        if yaml_docs(path).is_none() {
            return;
        }
    }
    let json: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!json.is_empty());
    for path in json {
        serde_json::from_str::<Value>(&read(path))
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", rel(path)));
    }
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .expect("container env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

fn seconds(duration: &str) -> u64 {
    let d = duration.trim();
    if let Some(m) = d.strip_suffix('m') {
        m.parse::<u64>().unwrap() * 60
    } else {
        d.trim_end_matches('s').parse().unwrap()
    }
}

#[test]
fn statefulset_keeps_the_queue_on_a_volume_and_probes_the_right_endpoints() {
    let k8s = deploy().join("k8s");
    let Some(sts) = yaml_doc(&k8s.join("statefulset.yaml")) else {
        return;
    };
    assert_eq!(sts["kind"], "StatefulSet");
    assert_eq!(sts["apiVersion"], "apps/v1");
    let spec = &sts["spec"];
    assert_eq!(
        spec["replicas"], 1,
        "one replica: each spends the whole Heap budget"
    );
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "selector label {k}");
    }
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["args"], json!(["serve"]));
    let env = env_of(c);

    // The queue lives on the volume claim template, mounted at the data directory.
    let claims = spec["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    let claim = &claims[0];
    let claim_name = claim["metadata"]["name"].as_str().unwrap();
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());
    let data_dir = env["CURRENTS_HEAP_DATA_DIR"]["value"].as_str().unwrap();
    assert_eq!(data_dir, DATA_DIR);
    let mounts = c["volumeMounts"].as_array().unwrap();
    let data_mount = mounts
        .iter()
        .find(|m| m["name"] == claim_name)
        .expect("the claim is mounted");
    assert_eq!(data_mount["mountPath"], data_dir);
    assert_ne!(data_mount["readOnly"], true);
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] != claim_name),
        "a pod volume shadows the claim template"
    );

    // Listen on all interfaces, the token from the Secret.
    assert_eq!(env["CURRENTS_HEAP_LISTEN"]["value"], "0.0.0.0:8080");
    let token = &env["CURRENTS_HEAP_INGEST_TOKEN"];
    assert!(token.get("value").is_none(), "the token must not be inline");
    let secret_ref = &token["valueFrom"]["secretKeyRef"];
    if let Some(secret) = yaml_doc(&k8s.join("secret.example.yaml")) {
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret_ref["name"], secret["metadata"]["name"]);
        let key = secret_ref["key"].as_str().unwrap();
        assert!(
            secret["stringData"][key].is_string(),
            "the example Secret has key {key}"
        );
    }

    // Probes on the right endpoints and port.
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 8080)
        .expect("container port 8080");
    let port_name = port["name"].as_str().unwrap();
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == port_name || get["port"] == 8080,
            "{probe} port"
        );
    }

    // The pod outlives the drain: phase 2 (grace), closing connections (2 s), delivery's
    // last request (up to the grace again), plus margin.
    let grace = env
        .get("CURRENTS_HEAP_SHUTDOWN_GRACE")
        .map_or(30, |e| seconds(e["value"].as_str().unwrap()));
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination >= 2 * grace + 2 + 10,
        "terminationGracePeriodSeconds {termination} does not cover a drain with a {grace} s grace"
    );

    // Non-root, read-only root file system.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/tmp"),
        "a writable /tmp for SQLite's temporary files"
    );

    // The configuration file comes from the generated ConfigMap.
    let config_path = env["CURRENTS_HEAP_CONFIG"]["value"].as_str().unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| config_path.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the config file is mounted");
    let config_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .unwrap();
    let Some(kustomization) = yaml_doc(&k8s.join("kustomization.yaml")) else {
        return;
    };
    let generated = &kustomization["configMapGenerator"][0];
    assert_eq!(config_volume["configMap"]["name"], generated["name"]);
    let config_file = Path::new(config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(generated["files"], json!([config_file]));
    for resource in kustomization["resources"].as_array().unwrap() {
        assert!(k8s.join(resource.as_str().unwrap()).is_file(), "{resource}");
    }
    assert!(
        !kustomization["resources"]
            .as_array()
            .unwrap()
            .contains(&json!("secret.example.yaml")),
        "applying the manifests must not overwrite the real Secret"
    );

    // The Service reaches the pod's port; the ServiceMonitor scrapes it.
    let service = yaml_doc(&k8s.join("service.yaml")).unwrap();
    assert_eq!(service["kind"], "Service");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "Service selector {k}");
    }
    assert_ne!(
        service["spec"]["clusterIP"], "None",
        "the traffic Service balances over a cluster IP"
    );
    // The StatefulSet's governing Service (`serviceName`) is a headless one of the applied
    // resources: it gives the pod its DNS name.
    let service_name = format!("name: {}", spec["serviceName"].as_str().unwrap());
    let headless = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| k8s.join(r.as_str().unwrap()))
        // Only the files naming it go through the YAML parser (a Python process each).
        .filter(|path| read(path).lines().any(|l| l.trim() == service_name))
        .filter_map(|path| yaml_doc(&path))
        .find(|doc| doc["kind"] == "Service" && doc["metadata"]["name"] == spec["serviceName"])
        .unwrap_or_else(|| {
            panic!(
                "serviceName {} names no Service of kustomization.yaml",
                spec["serviceName"]
            )
        });
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "the StatefulSet's serviceName must name a headless Service"
    );
    for (k, v) in headless["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "headless Service selector {k}");
    }
    let service_port = &service["spec"]["ports"][0];
    assert!(service_port["targetPort"] == port_name || service_port["targetPort"] == 8080);
    let monitor = yaml_doc(&k8s.join("servicemonitor.yaml")).unwrap();
    assert_eq!(monitor["kind"], "ServiceMonitor");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k}"
        );
    }
    let selects = |svc: &Value| {
        monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &svc["metadata"]["labels"][k] == v)
    };
    assert!(
        !selects(&headless),
        "the ServiceMonitor also selects the headless Service: the pod would be scraped twice"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

/// `kubectl kustomize` (when kubectl is installed; optional even under CI) renders the
/// manifests with the generated, content-hashed ConfigMap wired into the StatefulSet.
#[test]
fn kustomize_renders_the_manifests() {
    let Some(kubectl) = on_path("kubectl") else {
        skip_note!("SKIPPED: `kubectl` is not on PATH; `kubectl kustomize deploy/k8s` not checked");
        return;
    };
    let out = Command::new(kubectl)
        .args(["kustomize"])
        .arg(deploy().join("k8s"))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/k8s:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    let hashed = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: currents-heap-config-"))
        .collect::<BTreeSet<_>>();
    assert_eq!(
        hashed.len(),
        1,
        "one hashed ConfigMap name, used by the StatefulSet: {hashed:?}"
    );
    for kind in ["StatefulSet", "Service", "ServiceMonitor", "ConfigMap"] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "{kind} missing"
        );
    }
    assert!(
        !rendered.contains("kind: Secret\n"),
        "the Secret is created by hand"
    );
}

fn run_binary(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    cmd.args(args);
    clear_settings_env(&mut cmd);
    cmd.output().expect("run currents-heap")
}

/// Removes the settings the test environment might carry (`CURRENTS_HEAP_*`, `HEAP_*`).
fn clear_settings_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CURRENTS_HEAP_") || k.starts_with("HEAP_") {
            cmd.env_remove(k);
        }
    }
}

#[test]
fn kubernetes_config_file_passes_check_config_once_the_app_id_is_set() {
    let config = deploy().join("k8s/config.toml");
    let config = config.to_str().unwrap();
    let out = run_binary(&[
        "check-config",
        "--config",
        config,
        "--heap-app-id",
        "1111111111",
    ]);
    assert!(
        out.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("max_queue_bytes = 10737418240"),
        "{printed}"
    );
    // The placeholder app id stops the pod instead of sending anywhere.
    let out = run_binary(&["check-config", "--config", config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("heap_app_id"));
}

#[test]
fn compose_wires_the_forwarder_prometheus_and_grafana() {
    let Some(compose) = yaml_doc(&deploy().join("compose.yaml")) else {
        return;
    };
    let services = compose["services"].as_object().unwrap();
    let fwd = &services["currents-heap"];
    let dockerfile = root().join(fwd["build"]["dockerfile"].as_str().unwrap());
    assert!(dockerfile.is_file(), "{}", dockerfile.display());
    assert_eq!(
        deploy()
            .join(fwd["build"]["context"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        root().canonicalize().unwrap()
    );
    let volumes: Vec<&str> = fwd["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        volumes.iter().any(|v| v.ends_with(&format!(":{DATA_DIR}"))),
        "the data directory is a volume: {volumes:?}"
    );
    assert_eq!(fwd["read_only"], true);
    assert!(fwd["ports"][0].as_str().unwrap().ends_with(":8080"));
    let stop = fwd["stop_grace_period"].as_str().unwrap();
    assert!(
        seconds(stop) >= 62,
        "stop_grace_period {stop} shorter than a drain"
    );

    // Every bind mount exists; remember where each file lands.
    let mut mounted = BTreeMap::new();
    for name in ["prometheus", "grafana"] {
        for v in services[name]["volumes"].as_array().unwrap() {
            let v = v.as_str().unwrap();
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            if src.starts_with('.') {
                let src = deploy().join(src);
                assert!(src.exists(), "{name} mounts missing {}", src.display());
                mounted.insert(dst.to_owned(), src);
            }
        }
    }
    let Some(prom) = yaml_doc(&deploy().join("prometheus/prometheus.yml")) else {
        return;
    };
    let rule_file = prom["rule_files"][0].as_str().unwrap();
    assert_eq!(
        mounted
            .get(rule_file)
            .map(|p| p.file_name().unwrap().to_owned()),
        Some("alerts.yml".into()),
        "Prometheus loads the alert rules from a mounted alerts.yml"
    );
    let scrape = &prom["scrape_configs"][0];
    assert_eq!(
        scrape["job_name"], "currents-heap",
        "CurrentsHeapDown selects this job"
    );
    assert_eq!(
        scrape["static_configs"][0]["targets"],
        json!(["currents-heap:8080"])
    );
    let provisioning = mounted
        .get("/etc/grafana/provisioning")
        .expect("Grafana provisioning mounted");
    let providers = yaml_doc(&provisioning.join("dashboards/currents-heap.yml")).unwrap();
    let dash_dir = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(
        mounted
            .iter()
            .any(|(dst, src)| dst.starts_with(dash_dir) && src.ends_with("grafana/dashboard.json")),
        "the dashboard is mounted under {dash_dir}"
    );
    let datasources = yaml_doc(&provisioning.join("datasources/prometheus.yml")).unwrap();
    assert_eq!(
        datasources["datasources"][0]["url"],
        "http://prometheus:9090"
    );
}

/// The image is tagged with the package version wherever it is built, run or deployed: the
/// StatefulSet and kustomize's `images:`, the compose file, and the commands in the Dockerfile,
/// docs/OPERATIONS.md and the README.
#[test]
fn image_tag_is_the_package_version_everywhere() {
    let version = env!("CARGO_PKG_VERSION");
    let image = format!("currents-heap:{version}");
    let mut problems = Vec::new();
    for path in [
        deploy().join("Dockerfile"),
        root().join("docs/OPERATIONS.md"),
        root().join("README.md"),
        deploy().join("k8s/statefulset.yaml"),
    ] {
        let text = read(&path);
        if text.contains("-t currents-heap ") {
            problems.push(format!("{}: `-t currents-heap` without a tag", rel(&path)));
        }
        // `currents-heap:<something with a dot>` is an image reference (`:8080` is a port).
        for (at, _) in text.match_indices("currents-heap:") {
            let tag: String = text[at + "currents-heap:".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .collect();
            let tag = tag.trim_end_matches('.');
            if tag.contains('.') && tag != version {
                problems.push(format!("{}: currents-heap:{tag}, not {image}", rel(&path)));
            }
        }
    }
    for (path, text) in [
        ("Dockerfile", read(&deploy().join("Dockerfile"))),
        (
            "docs/OPERATIONS.md",
            read(&root().join("docs/OPERATIONS.md")),
        ),
    ] {
        if !text.contains(&format!("docker build -f deploy/Dockerfile -t {image} .")) {
            problems.push(format!("{path}: no `docker build ... -t {image} .`"));
        }
    }
    // The deployed and the composed image (line by line: the YAML structure is checked by the
    // tests of the StatefulSet and the compose file).
    for (file, line) in [
        ("k8s/statefulset.yaml", format!("image: {image}")),
        ("compose.yaml", format!("image: {image}")),
        ("k8s/kustomization.yaml", "- name: currents-heap".to_owned()),
        ("k8s/kustomization.yaml", format!("newTag: \"{version}\"")),
    ] {
        if !read(&deploy().join(file)).lines().any(|l| l.trim() == line) {
            problems.push(format!("deploy/{file} has no line `{line}`"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dockerfile_builds_a_small_non_root_image_with_the_data_volume() {
    let text = read(&deploy().join("Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    assert!(
        from.last().unwrap().contains("distroless") || from.last().unwrap().contains("slim"),
        "a small runtime base: {}",
        from.last().unwrap()
    );
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "runs as {user}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("VOLUME") && l.contains(DATA_DIR)),
        "VOLUME {DATA_DIR}"
    );
    assert!(text.contains(&format!("CURRENTS_HEAP_DATA_DIR={DATA_DIR}")));
    assert!(text.contains("CURRENTS_HEAP_LISTEN=0.0.0.0:8080"));
    // What the build stage copies is in the build context that the ignore file lets through.
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for l in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = l.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: missing");
            assert!(
                allowed.contains(src),
                "COPY {src}: excluded by Dockerfile.dockerignore"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboard, alerts, runbook

fn dashboard() -> Value {
    serde_json::from_str(&read(&deploy().join("grafana/dashboard.json"))).expect("dashboard JSON")
}

/// `(panel title, expr)` of every query of the dashboard.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        let nested = panel["panels"].as_array().cloned().unwrap_or_default();
        for p in std::iter::once(panel).chain(nested.iter()) {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    p["title"].as_str().unwrap_or("").to_owned(),
                    t["expr"].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn dashboard_has_the_panels_an_sre_needs() {
    let d = dashboard();
    assert!(d["uid"].is_string() && d["title"].is_string());
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
    let queries = dashboard_queries(&d);
    assert!(queries.iter().all(|(_, q)| !q.is_empty()));
    // Ingest rate by outcome, delivered against the budget, backlog size, oldest age, drain
    // estimate, Heap responses by status class, Heap latency, dead letters, ingest latency.
    let needs = [
        ("by (outcome)", "currents_heap_ingest_requests_total"),
        ("", "currents_heap_events_delivered_total"),
        (
            "budget=\"app\"",
            "currents_heap_heap_budget_events_per_minute",
        ),
        ("", "currents_heap_queue_events"),
        ("", "currents_heap_queue_oldest_event_age_seconds"),
        ("", "currents_heap_queue_drain_seconds_estimate"),
        ("by (status_class)", "currents_heap_heap_requests_total"),
        (
            "histogram_quantile(0.99",
            "currents_heap_heap_request_duration_seconds_bucket",
        ),
        ("", "currents_heap_events_dead_lettered_total"),
        (
            "histogram_quantile(0.99",
            "currents_heap_ingest_request_duration_seconds_bucket",
        ),
    ];
    for (with, metric) in needs {
        assert!(
            queries
                .iter()
                .any(|(_, q)| q.contains(metric) && q.contains(with)),
            "no panel queries {metric} with {with:?}"
        );
    }
    let delivered_panel = queries
        .iter()
        .filter(|(_, q)| q.contains("currents_heap_events_delivered_total"))
        .map(|(t, _)| t)
        .find(|t| {
            queries.iter().any(|(t2, q)| {
                t2 == *t && q.contains("currents_heap_heap_budget_events_per_minute")
            })
        });
    assert!(
        delivered_panel.is_some(),
        "delivered and budget on one panel"
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for (_, q) in &queries {
        for var in ["$job", "$instance", "$route"] {
            if q.contains(var) {
                assert!(
                    vars.contains(&&var[1..]),
                    "{var} is not a dashboard variable"
                );
            }
        }
    }
}

/// `alert` names of the rules file, in order (with duplicates for severities).
fn alert_names() -> Vec<String> {
    read(&deploy().join("prometheus/alerts.yml"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|s| s.trim().to_owned())
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_and_a_firing_unit_test() {
    let names: BTreeSet<String> = alert_names().into_iter().collect();
    for required in [
        "CurrentsHeapDown",
        "CurrentsHeapBacklogOldestEventOld",
        "CurrentsHeapDrainTimeTooLong",
        "CurrentsHeapQueueNearQuota",
        "CurrentsHeapDeadLettersIncreasing",
        "CurrentsHeapHeapErrorRatioHigh",
        "CurrentsHeapHeapClientErrors",
        "CurrentsHeapIngestUnauthorized",
        "CurrentsHeapNoEventsReceived",
        "CurrentsHeapDeletionsFailing",
        "CurrentsHeapDeletionsUnconfigured",
        "CurrentsHeapDeletionsOverdue",
    ] {
        assert!(
            names.contains(required),
            "{required} missing from alerts.yml"
        );
    }
    let runbook = read(&root().join("docs/OPERATIONS.md"));
    let rules = read(&deploy().join("prometheus/alerts.yml"));
    let tests = read(&deploy().join("prometheus/alerts_test.yml"));
    for name in &names {
        assert!(
            runbook.lines().any(|l| l.trim() == format!("### {name}")),
            "docs/OPERATIONS.md has no section `### {name}`"
        );
        let anchor = format!(
            "runbook_url: \"docs/OPERATIONS.md#{}\"",
            name.to_lowercase()
        );
        assert!(rules.contains(&anchor), "{name}: expected {anchor}");
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "alerts_test.yml has no test of {name}"
        );
    }
    // Every in-page link of the runbook leads to a heading (GitHub's anchor rule).
    let slugs: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    for link in runbook.split("](#").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        assert!(
            slugs.contains(target),
            "docs/OPERATIONS.md links to missing #{target}"
        );
    }
    // With PyYAML: every alert has a test case where it fires, and one where it does not.
    let Some(doc) = yaml_doc(&deploy().join("prometheus/alerts_test.yml")) else {
        return;
    };
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in doc["tests"].as_array().unwrap() {
        for t in case["alert_rule_test"].as_array().unwrap() {
            let name = t["alertname"].as_str().unwrap().to_owned();
            if t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for name in &names {
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(quiet.contains(name), "no test where {name} stays quiet");
    }
}

/// The first sentence of a runbook paragraph: up to the first `.` followed by a space or the
/// end, outside parentheses and code spans (so `e.g.` or `"… again."` in them do not end it).
fn first_sentence(text: &str) -> &str {
    let (mut depth, mut code) = (0i32, false);
    for (i, c) in text.char_indices() {
        match c {
            '`' => code = !code,
            _ if code => {}
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 && text[i + 1..].chars().next().is_none_or(|n| n == ' ') => {
                return &text[..=i];
            }
            _ => {}
        }
    }
    text
}

/// The runbook entries of docs/OPERATIONS.md in order: (alert, first sentence of **Means**,
/// first sentence of **Act**), each paragraph's lines joined by one space.
fn runbook_summaries() -> Vec<(String, String, String)> {
    let ops = read(&root().join("docs/OPERATIONS.md"));
    let (_, runbook) = ops.split_once("\n## Runbook\n").expect("## Runbook");
    runbook
        .split("\n### ")
        .skip(1)
        .map(|entry| {
            let name = entry.lines().next().unwrap().trim().to_owned();
            let summary = |key: &str| {
                let prefix = format!("**{key}**: ");
                let paragraph = entry
                    .split("\n\n")
                    .find_map(|p| p.strip_prefix(&prefix))
                    .unwrap_or_else(|| panic!("{name}: no paragraph starting `{prefix}`"));
                let joined = paragraph
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                first_sentence(&joined).to_owned()
            };
            let (means, act) = (summary("Means"), summary("Act"));
            (name, means, act)
        })
        .collect()
}

/// The README's runbook table carries, for every alert of the rules file, a link to its entry
/// and the entry's summary in full: the first sentence of its **Means** and of its **Act**
/// (in-page links made relative to the README).
#[test]
fn readme_runbook_table_repeats_each_entrys_summary() {
    let summaries = runbook_summaries();
    let alerts: BTreeSet<String> = alert_names().into_iter().collect();
    let entries: BTreeSet<String> = summaries.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(
        entries, alerts,
        "docs/OPERATIONS.md's runbook entries against the alerts of alerts.yml"
    );
    let expected: Vec<String> = summaries
        .iter()
        .map(|(name, means, act)| {
            for cell in [means, act] {
                assert!(
                    !cell.trim().is_empty() && !cell.contains('|'),
                    "{name}: a summary must be non-empty and hold no `|`: {cell:?}"
                );
            }
            let link = |s: &str| s.replace("](#", "](docs/OPERATIONS.md#");
            format!(
                "| [`{name}`](docs/OPERATIONS.md#{}) | {} | {} |",
                name.to_lowercase(),
                link(means),
                link(act)
            )
        })
        .collect();
    let readme = read(&root().join("README.md"));
    let (_, section) = readme.split_once("\n### Runbook\n").expect("### Runbook");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| [`")).collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(
            cells.len() == 3 && cells.iter().all(|c| !c.trim_matches('|').trim().is_empty()),
            "README runbook row {i} has an empty or missing cell: {row}"
        );
    }
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(
            row, want,
            "a README runbook row differs from docs/OPERATIONS.md (left: README, right: the entry)"
        );
    }
    assert_eq!(
        rows.len(),
        expected.len(),
        "README runbook rows against docs/OPERATIONS.md's entries; the table should read:\n{}",
        expected.join("\n")
    );
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    let install = "`apt-get install -y prometheus` (Debian; brings promtool)";
    let Some(promtool) = tool("promtool", install) else {
        return;
    };
    let dir = deploy().join("prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The compose Prometheus configuration, with the rules where compose mounts them.
    let tmp = TempDir::new().unwrap();
    let config = read(&dir.join("prometheus.yml")).replace(
        "/etc/prometheus/alerts.yml",
        dir.join("alerts.yml").to_str().unwrap(),
    );
    let path = tmp.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The running binary

/// A plain HTTP/1.1 exchange (`Connection: close`); returns the status and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    if head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    }) {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The real binary, `serve --dry-run` on an ephemeral port and its own data directory.
struct Forwarder {
    server: ServerProcess,
    addr: SocketAddr,
    _data: TempDir,
}

impl Forwarder {
    fn start() -> Forwarder {
        let data = TempDir::new().unwrap();
        let server = ServerProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_currents-heap")),
            data.path(),
            &[
                "--dry-run",
                "--ingest-token",
                TOKEN,
                "--heap-linger",
                "100ms",
            ],
        );
        Forwarder {
            addr: server.addr,
            server,
            _data: data,
        }
    }

    fn post(&self, token: &str, body: &Value) -> (u16, String) {
        let auth = format!("Bearer {token}");
        http(
            self.addr,
            "POST",
            "/currents",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .expect("POST /currents")
    }

    fn metrics(&self) -> String {
        let (status, text) = http(self.addr, "GET", "/metrics", &[], b"").expect("GET /metrics");
        assert_eq!(status, 200);
        text
    }

    fn log(&self) -> String {
        self.server.log()
    }
}

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").expect("label=\"");
            // Values of this exposition never contain escaped quotes (bounded label sets).
            let end = after.find('"').expect("closing quote");
            map.insert(
                k.trim_start_matches(',').to_owned(),
                after[..end].to_owned(),
            );
            rest = after[end + 1..].trim_start_matches(',');
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().expect("sample value"),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels: map,
            value,
        });
    }
    out
}

fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn email_send(id: &str, identity: &str, n: usize) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000 + n as i64,
        "user": { "user_id": format!("65a0c0ffee0000000000{n:04}"), "external_user_id": identity },
        "properties": { "campaign_name": "operations test", "send_id": format!("send-{n}") }
    })
}

/// Label values never grow with traffic: unknown event types count as `other`, and no event
/// id, user id, identity or custom event name ever becomes a label value.
#[test]
fn metric_labels_stay_bounded_under_real_traffic() {
    let fwd = Forwarder::start();
    let before: BTreeSet<(String, BTreeMap<String, String>)> = parse_exposition(&fwd.metrics())
        .into_iter()
        .map(|s| (s.name, s.labels))
        .collect();

    let secrets = [
        "ops-secret-id-1",
        "ops-secret-id-2",
        "ops-secret-id-3",
        "ops-secret-id-4",
        "ops-secret-id-5",
        "ops-secret-id-6",
        "ops-secret-identity-1",
        "ops-secret-identity-2",
        "ops-secret-identity-3",
        "ops-secret-identity-4",
        "65a0c0ffeeb0b0b0b0b0b0b1",
        "65a0c0ffeeb0b0b0b0b0b0b6",
        "ops-secret-custom-event",
        "carrierpigeon",
        "teleport",
        "zz.unknown",
    ];
    let user = |n: usize, identity: Option<&str>| {
        let mut u = json!({ "user_id": format!("65a0c0ffeeb0b0b0b0b0b0b{n}") });
        if let Some(i) = identity {
            u["external_user_id"] = json!(i);
        }
        u
    };
    let batch = json!({ "events": [
        { "event_type": "users.messages.carrierpigeon.Send", "id": "ops-secret-id-1", "time": 1_780_000_000,
          "user": user(1, Some("ops-secret-identity-1")), "properties": { "pigeon": "fast" } },
        { "event_type": "users.behaviors.teleport.Jump", "id": "ops-secret-id-2", "time": 1_780_000_001,
          "user": user(2, Some("ops-secret-identity-2")), "properties": {} },
        { "event_type": "zz.unknown", "id": "ops-secret-id-3", "time": 1_780_000_002,
          "user": user(3, Some("ops-secret-identity-3")) },
        { "event_type": "users.behaviors.CustomEvent", "id": "ops-secret-id-4", "time": 1_780_000_003,
          "user": user(4, Some("ops-secret-identity-4")),
          "properties": { "name": "ops-secret-custom-event", "custom_properties": { "k": "v" } } },
        { "event_type": "users.messages.email.Send", "id": "ops-secret-id-5", "time": 1_780_000_004,
          "user": user(5, Some("ops-secret-identity-4")), "properties": {} },
        // Anonymous: accepted, then skipped.
        { "event_type": "users.messages.email.Open", "id": "ops-secret-id-6", "time": 1_780_000_005,
          "user": user(6, None), "properties": {} }
    ]});
    let (status, reply) = fwd.post(TOKEN, &batch);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["accepted"],
        6
    );

    let samples = eventually(
        Duration::from_secs(30),
        "the batch delivered or skipped",
        || {
            let s = parse_exposition(&fwd.metrics());
            let done = total(&s, "currents_heap_events_delivered_total", &[])
                + total(&s, "currents_heap_events_skipped_total", &[]);
            (done >= 6.0).then_some(s)
        },
    );
    let text = fwd.metrics();
    let accepted = |t: &str| {
        total(
            &samples,
            "currents_heap_events_accepted_total",
            &[("event_type", t), ("route", "default")],
        )
    };
    assert_eq!(accepted("other"), 3.0, "unknown types count as other");
    assert_eq!(accepted("users.behaviors.CustomEvent"), 1.0);
    assert_eq!(accepted("users.messages.email.Send"), 1.0);
    assert_eq!(accepted("users.messages.email.Open"), 1.0);
    assert_eq!(
        total(
            &samples,
            "currents_heap_events_skipped_total",
            &[("reason", "anonymous")]
        ),
        1.0
    );
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "`{secret}` appears in /metrics:\n{text}"
        );
    }

    // Every label value comes from a closed set, and traffic created no new series.
    let version = env!("CARGO_PKG_VERSION");
    for s in &samples {
        for (label, value) in &s.labels {
            let ok = match label.as_str() {
                "route" => value == "default" || value == UNROUTABLE,
                "version" => value == version,
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                l => label_values(&s.name, l)
                    .unwrap_or_else(|| panic!("{}: label {l} has no closed set", s.name))
                    .contains(value),
            };
            assert!(ok, "{} has label {label}={value:?}", s.name);
        }
    }
    let after: BTreeSet<(String, BTreeMap<String, String>)> =
        samples.into_iter().map(|s| (s.name, s.labels)).collect();
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "traffic created series: {new:?}");
}

/// A real Prometheus server (Debian's `prometheus`), scraping one target every second and
/// evaluating the alert rules every second.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = TempDir::new().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: currents-heap\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        };
        eventually(Duration::from_secs(60), "Prometheus ready", || {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            matches!(http(p.addr, "GET", "/-/ready", &[], b""), Ok((200, _))).then_some(())
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self, path: &str, form: Option<&str>) -> Value {
        let (status, body) = match form {
            Some(form) => http(
                self.addr,
                "POST",
                path,
                &[("content-type", "application/x-www-form-urlencoded")],
                form.as_bytes(),
            ),
            None => http(self.addr, "GET", path, &[], b""),
        }
        .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{path} {form:?}: {status} {body}"
        );
        v["data"].clone()
    }

    /// The result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let data = self.api("/api/v1/query", Some(&form));
        match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().unwrap().clone(),
            Some("scalar") => vec![json!({ "metric": {}, "value": data["result"] })],
            other => panic!("{promql}: result type {other:?}"),
        }
    }

    /// The single value of an instant query, if it has exactly one series.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts", None)["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Grafana's variables and interval, replaced by what the test server has.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", "currents-heap")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

#[test]
fn prometheus_scrapes_the_forwarder_and_answers_promql() {
    let install = "`apt-get install -y prometheus` (Debian)";
    let Some(binary) = tool("prometheus", install) else {
        return;
    };
    let fwd = Forwarder::start();
    let rules = deploy().join("prometheus/alerts.yml");
    let prom = Prometheus::start(&binary, fwd.addr, &rules);
    let ctx = |what: &str| {
        format!(
            "{what}\n--- prometheus log:\n{}\n--- forwarder log:\n{}",
            prom.log(),
            fwd.log()
        )
    };

    // Scraped before any event: the zero-valued series exist from start-up.
    eventually(Duration::from_secs(30), &ctx("up == 1"), || {
        (prom.value(r#"up{job="currents-heap"}"#) == Some(1.0)).then_some(())
    });
    assert_eq!(
        prom.value(r#"sum(currents_heap_events_delivered_total{route="default"})"#),
        Some(0.0)
    );

    // A known batch: 5 identified email sends.
    let events: Vec<Value> = (0..5)
        .map(|n| email_send(&format!("ops-prom-{n}"), &format!("customer-{n}"), n))
        .collect();
    let (status, reply) = fwd.post(TOKEN, &json!({ "events": events }));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["accepted"],
        5
    );
    eventually(Duration::from_secs(30), &ctx("dry-run delivery"), || {
        let s = parse_exposition(&fwd.metrics());
        (total(
            &s,
            "currents_heap_events_delivered_total",
            &[("route", "default")],
        ) == 5.0)
            .then_some(())
    });

    // What an SRE would ask Prometheus.
    for (promql, want) in [
        ("sum(currents_heap_events_delivered_total)", 5.0),
        ("sum(currents_heap_events_accepted_total)", 5.0),
        ("sum(currents_heap_events_received_total)", 5.0),
        (
            r#"sum(currents_heap_events_accepted_total{event_type="users.messages.email.Send", route="default"})"#,
            5.0,
        ),
        (
            r#"sum(currents_heap_ingest_requests_total{outcome="accepted"})"#,
            1.0,
        ),
        // A dry run leaves its events queued for a real run.
        ("sum(currents_heap_queue_events)", 5.0),
        (
            r#"sum(currents_heap_heap_budget_events_per_minute{route="default", budget="app"})"#,
            15000.0,
        ),
        (
            r#"sum(currents_heap_ingest_request_duration_seconds_count{status="200"})"#,
            1.0,
        ),
    ] {
        eventually(
            Duration::from_secs(30),
            &ctx(&format!("{promql} == {want}")),
            || (prom.value(promql) == Some(want)).then_some(()),
        );
    }
    let track_2xx = prom
        .value(
            r#"sum(currents_heap_heap_requests_total{endpoint="/api/track", status_class="2xx"})"#,
        )
        .unwrap();
    assert!(track_2xx >= 1.0, "{track_2xx} successful track requests");

    // Every rule of alerts.yml evaluates on the real series without error...
    let rule_count = alert_names().len();
    eventually(
        Duration::from_secs(30),
        &ctx("every rule evaluated, health ok"),
        || {
            let groups = prom.api("/api/v1/rules", None)["groups"].clone();
            let rules: Vec<Value> = groups
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap().clone())
                .collect();
            for r in &rules {
                assert!(
                    r["health"] != "err",
                    "rule {} fails on real data: {}",
                    r["name"],
                    r["lastError"]
                );
            }
            (rules.len() == rule_count && rules.iter().all(|r| r["health"] == "ok")).then_some(())
        },
    );
    // ... and none is pending or firing for a healthy forwarder that received events.
    eventually(
        Duration::from_secs(30),
        &ctx("no alert pending or firing"),
        || prom.alerts().is_empty().then_some(()),
    );

    // Every dashboard query runs; those without a `> 0` filter return series (the metrics
    // exist, with the labels the query selects on).
    let d = dashboard();
    for (title, expr) in dashboard_queries(&d) {
        let promql = substitute(&expr);
        let result = prom.query(&promql);
        if !expr.trim_end().ends_with("> 0") {
            assert!(
                !result.is_empty(),
                "panel {title:?}: {promql} returned nothing"
            );
        }
    }
    for var in d["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let promql = substitute(&format!("count by ({}) ({selector})", label.trim()));
        assert!(
            !prom.query(&promql).is_empty(),
            "variable {}: {promql} is empty",
            var["name"]
        );
    }

    // A request with a wrong token fires CurrentsHeapIngestUnauthorized through the real rule.
    let (status, _) = fwd.post("wrong-token", &json!({ "events": [] }));
    assert_eq!(status, 401);
    let alert = eventually(
        Duration::from_secs(30),
        &ctx("CurrentsHeapIngestUnauthorized firing"),
        || {
            prom.alerts().into_iter().find(|a| {
                a["labels"]["alertname"] == "CurrentsHeapIngestUnauthorized"
                    && a["state"] == "firing"
            })
        },
    );
    assert_eq!(alert["labels"]["job"], "currents-heap");
    assert_eq!(alert["labels"]["outcome"], "unauthorized");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "docs/OPERATIONS.md#currentsheapingestunauthorized"
    );
}
