//! The command line as an operator uses it: `check-config`, `transform` and `dlq` exit codes
//! and output, driven through the real binary.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    // The environment must not leak settings into the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("CURRENTS_HEAP_") || k.starts_with("HEAP_") {
            c.env_remove(k);
        }
    }
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

/// Runs `cmd` to completion, or kills it after `secs` (a command expected to exit at once must
/// not hang the suite when it does not, e.g. a `serve` that starts instead of refusing).
fn output_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn fixture(name: &str) -> String {
    format!("{}/fixtures/currents/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_prints_effective_settings_with_tokens_redacted() {
    let out = run(&[
        "check-config",
        "--heap-app-id",
        "123",
        "--ingest-token",
        "s3cr3t,0ld",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("s3cr3t") && !text.contains("0ld"));
    let table: toml::Table = toml::from_str(&text).expect("the output is TOML");
    assert_eq!(table["heap_app_id"].as_str(), Some("123"));
    assert_eq!(table["ingest_token"].as_array().unwrap().len(), 2);
}

#[test]
fn check_config_exits_2_naming_the_bad_setting() {
    let out = run(&[
        "check-config",
        "--heap-app-id",
        "123",
        "--max-queue-bytes",
        "lots",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("max-queue-bytes") && err.contains("CURRENTS_HEAP_MAX_QUEUE_BYTES"),
        "{err}"
    );

    let out = bin()
        .args(["check-config"])
        .env("HEAP_APP_ID", "abc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("heap_app_id")
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "heap_app_id = \"1\"\nlisten_addr = \"x\"\n").unwrap();
    let out = run(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("listen_addr")
    );
}

#[test]
fn layers_are_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "heap_app_id = \"1\"\nheap_events_per_minute = 100\nheap_linger = \"3s\"\n",
    )
    .unwrap();
    let out = bin()
        .args([
            "check-config",
            "--config",
            file.to_str().unwrap(),
            "--heap-linger",
            "5s",
        ])
        .env("HEAP_EVENTS_PER_MINUTE", "200")
        .env("HEAP_LINGER", "4s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(table["heap_app_id"].as_str(), Some("1"));
    assert_eq!(table["heap_events_per_minute"].as_integer(), Some(200));
    assert_eq!(table["heap_linger"].as_str(), Some("5s"));
}

#[test]
fn transform_prints_the_heap_requests_and_the_skipped_events() {
    let out = run(&[
        "transform",
        &fixture("mixed_known_unknown.json"),
        "--heap-app-id",
        "42",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(!lines.is_empty());
    assert!(stdout.starts_with("{\"endpoint\":\"/api/track\",\"body\":"));
    for l in &lines {
        assert_eq!(l["body"]["app_id"], "42");
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("skipped") && stderr.contains("anonymous"),
        "{stderr}"
    );
}

#[test]
fn transform_exits_1_with_the_reasons_serve_would_answer_400_for() {
    let out = run(&["transform", &fixture("invalid_events.json")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("event 2: missing `id`"), "{stderr}");
}

#[test]
fn transform_with_raw_names_and_prefix() {
    let out = run(&[
        "transform",
        &fixture("email_send_batch.json"),
        "--event-naming",
        "raw",
        "--event-prefix",
        "braze-",
    ]);
    assert!(out.status.success(), "{out:?}");
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        first["body"]["events"][0]["event"],
        "braze-users.messages.email.Send"
    );
}

#[test]
fn dlq_purge_needs_a_selection_and_list_reports_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A mistyped data directory is an error, not "no dead letters".
    let out = run(&["dlq", "list", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("no store"));
    assert!(!dir.path().join("queue.sqlite3").exists());

    currents_heap::queue::sqlite::Store::open(dir.path()).unwrap();
    let out = run(&["dlq", "purge", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["dlq", "list", "--data-dir", d, "--reason", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("rejected"));
    let out = run(&["dlq", "list", "--data-dir", d]);
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("dead letters: 0")
    );
}

#[test]
fn transform_takes_a_route_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        "[[route]]\nname = \"brand-a\"\nworkspace = \"brand-a\"\nheap_app_id = \"1111\"\nevent_prefix = \"braze-\"\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let out = run(&[
        "transform",
        &fixture("email_send_batch.json"),
        "--config",
        config,
        "--route",
        "brand-a",
    ]);
    assert!(out.status.success(), "{out:?}");
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["body"]["app_id"], "1111");
    assert_eq!(first["body"]["events"][0]["event"], "braze-Email Sent");
    let out = run(&[
        "transform",
        &fixture("email_send_batch.json"),
        "--config",
        config,
        "--route",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("brand-a"));
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut first = bin()
        .args([
            "serve",
            "--dry-run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            d,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first holds the lock once its store is open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.path().join("queue.sqlite3").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = run(&[
        "serve",
        "--dry-run",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        d,
    ]);
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8(second.stderr).unwrap();
    assert!(err.contains("in use by another"), "{err}");
}

/// `transform` shares serve's mapping: a non-finite number or a 100,000-level value inside
/// `properties` drops that value only, and the event is sent with everything else.
#[test]
fn transform_drops_only_the_values_heap_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("odd.json");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    std::fs::write(
        &file,
        format!(
            r#"{{"events":[{{"event_type":"users.behaviors.CustomEvent","id":"odd","time":1780000000,
                "user":{{"external_user_id":"alice"}},
                "properties":{{"name":"Added","big":1e999,"deep":{deep},"obj":{deep_object},"plan":"pro"}}}}]}}"#
        ),
    )
    .unwrap();
    let out = run(&["transform", file.to_str().unwrap(), "--heap-app-id", "42"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(stdout.lines().next().expect("a track request")).unwrap();
    let item = &first["body"]["events"][0];
    assert_eq!(item["event"], "Added");
    assert_eq!(item["properties"]["plan"], "pro");
    for gone in ["big", "deep", "obj"] {
        assert!(
            item["properties"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with(gone)),
            "{gone} was sent: {item}"
        );
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("1 events mapped, 0 skipped"), "{stderr}");
    assert!(
        stderr.contains("dropped value properties.big of event 0: non_finite_number"),
        "{stderr}"
    );
    assert!(stderr.contains(": too_deep"), "{stderr}");
}

/// An empty secret mounted into `HEAP_API_KEY` (or a blank flag or file key) is a configuration
/// error, not "no key"; a key never prints, and not set at all is valid (deletions
/// `unconfigured`).
#[test]
fn a_blank_heap_api_key_is_a_configuration_error_and_a_key_never_prints() {
    let args = ["check-config", "--dry-run"];
    for blank in ["", "  "] {
        let by_env = output_within(bin().args(args).env("HEAP_API_KEY", blank), 30);
        assert_eq!(by_env.status.code(), Some(2), "env {blank:?}: {by_env:?}");
        let err = String::from_utf8(by_env.stderr).unwrap();
        assert!(
            err.contains("HEAP_API_KEY") && err.contains("blank"),
            "{err}"
        );
        let by_flag = output_within(bin().args(args).args(["--heap-api-key", blank]), 30);
        assert_eq!(
            by_flag.status.code(),
            Some(2),
            "flag {blank:?}: {by_flag:?}"
        );
    }
    let out = output_within(bin().args(args).env("HEAP_API_KEY", "s3cr3t-heap-key"), 30);
    assert!(out.status.success(), "{out:?}");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains("s3cr3t-heap-key"), "{printed}");
    assert!(
        printed.contains("heap_api_key = \"<redacted>\""),
        "{printed}"
    );
    let out = run(&["check-config", "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("# heap_api_key = (not set")
    );
}

/// An empty secret mounted into the token variable (or a blank flag, or `,,`, or a route's
/// `ingest_token = [""]`) must not silently turn authentication off: `check-config` and `serve`
/// exit 2 naming the setting in all its forms. Not set at all still means "open".
#[test]
fn a_blank_ingest_token_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let forms = [
        "ingest_token",
        "--ingest-token",
        "CURRENTS_HEAP_INGEST_TOKEN",
    ];
    let check = |out: Output, what: &str| {
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        for form in forms {
            assert!(err.contains(form), "{what}: {err}");
        }
        assert!(err.contains("holds no token"), "{what}: {err}");
    };
    for blank in ["", "  ", ",,"] {
        for command in ["check-config", "serve"] {
            let args = [
                command,
                "--dry-run",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
            ];
            let by_env = output_within(
                bin().args(args).env("CURRENTS_HEAP_INGEST_TOKEN", blank),
                30,
            );
            check(by_env, &format!("{command} with env {blank:?}"));
            let by_flag = output_within(bin().args(args).args(["--ingest-token", blank]), 30);
            check(by_flag, &format!("{command} --ingest-token {blank:?}"));
        }
    }
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "heap_app_id = \"1\"\n[[route]]\nname = \"a\"\nworkspace = \"a\"\nheap_app_id = \"2\"\ningest_token = [\"\"]\n",
    )
    .unwrap();
    let out = run(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`ingest_token` of [[route]] #1") && err.contains("holds no token"),
        "{err}"
    );
    // Not set at all: valid, no token.
    let out = run(&["check-config", "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("# ingest_token = (not set")
    );
}

/// `bin()` under `ulimit -v` (KiB): a regression to reading input whole fails the test on the
/// memory limit instead of eating the machine's memory.
fn bin_with_memory_limit(kib: u64) -> Command {
    let mut c = Command::new("sh");
    c.args([
        "-c",
        &format!("ulimit -v {kib} && exec \"$0\" \"$@\""),
        env!("CARGO_BIN_EXE_currents-heap"),
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("CURRENTS_HEAP_") || k.starts_with("HEAP_") {
            c.env_remove(k);
        }
    }
    c
}

/// `transform` reads at most serve's request-body limit (`--max-body-bytes`, 8 MiB by default)
/// and refuses more with exit 1, like any input serve would refuse; `/dev/zero` never makes it
/// allocate more than that.
#[test]
fn transform_refuses_input_over_the_body_limit() {
    let out = output_within(
        bin_with_memory_limit(1 << 20).args(["transform", "/dev/zero"]),
        60,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("/dev/zero is larger than 8388608 bytes") && err.contains("--max-body-bytes"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    let events = format!(
        "{{\"events\":[{}]}}",
        vec![r#"{"id":"a","event_type":"t","time":1,"user":{"external_user_id":"u"}}"#; 20_000]
            .join(",")
    );
    assert!(events.len() > 1 << 20 && events.len() < 2 << 20);
    std::fs::write(&file, &events).unwrap();
    let path = file.to_str().unwrap();
    let out = run(&["transform", path, "--max-body-bytes", "1MiB"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("larger than 1048576 bytes")
    );
    let out = run(&["transform", path, "--max-body-bytes", "2MiB"]);
    assert!(out.status.success(), "{out:?}");
    // Standard input is bounded the same way.
    let out = output_within(
        bin_with_memory_limit(1 << 20)
            .args(["transform", "-"])
            .stdin(std::fs::File::open("/dev/zero").unwrap()),
        60,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// A configuration file is read up to 1 MiB; `--config /dev/zero` is refused with exit 2.
#[test]
fn check_config_refuses_a_config_file_over_1_mib() {
    let out = output_within(
        bin_with_memory_limit(1 << 20).args(["check-config", "--dry-run", "--config", "/dev/zero"]),
        60,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("/dev/zero") && err.contains("larger than 1 MiB"),
        "{err}"
    );
}

/// The NATS settings through the real command line: file < environment < flag, credentials in
/// a URL never printed (not by `check-config`, not by `--help`), and a blank variable refused
/// rather than quietly keeping the queue on the local disk.
#[test]
fn nats_settings_layer_and_never_print_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let creds = dir.path().join("user.creds");
    std::fs::write(&creds, "creds").unwrap();
    std::fs::write(
        &file,
        "nats_url = [\"nats://file:4222\"]\nnats_stream = \"from-file\"\nnats_replicas = 5\n",
    )
    .unwrap();
    let url = "nats://alice:pa55word@n1,tls://n2:4443";
    let out = output_within(
        bin()
            .args([
                "check-config",
                "--dry-run",
                "--config",
                file.to_str().unwrap(),
            ])
            .args(["--nats-replicas", "1"])
            .env("CURRENTS_HEAP_NATS_URL", url)
            .env("CURRENTS_HEAP_NATS_REPLICAS", "2")
            .env("CURRENTS_HEAP_NATS_CREDS", &creds),
        30,
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("alice") && !text.contains("pa55word"),
        "{text}"
    );
    let table: toml::Table = toml::from_str(&text).expect("the output is TOML");
    let urls: Vec<&str> = table["nats_url"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(urls, ["nats://<redacted>@n1:4222", "tls://n2:4443"]);
    assert_eq!(table["nats_stream"].as_str(), Some("from-file"));
    assert_eq!(table["nats_replicas"].as_integer(), Some(1));
    assert_eq!(table["nats_creds"].as_str(), creds.to_str());

    let help = output_within(
        bin()
            .args(["serve", "--help"])
            .env("CURRENTS_HEAP_NATS_URL", url),
        30,
    );
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("--nats-url") && !help.contains("pa55word"),
        "{help}"
    );

    for (var, value, why) in [
        ("CURRENTS_HEAP_NATS_URL", "", "holds no URL"),
        ("CURRENTS_HEAP_NATS_URL", "http://n1", "nats:// or tls://"),
        ("CURRENTS_HEAP_NATS_STREAM", "a.b", "no dots"),
        ("CURRENTS_HEAP_NATS_REPLICAS", "6", "from 1 to 5"),
        (
            "CURRENTS_HEAP_NATS_CREDS",
            "/nonexistent.creds",
            "cannot read",
        ),
    ] {
        let out = output_within(
            bin().args(["check-config", "--dry-run"]).env(var, value),
            30,
        );
        assert_eq!(out.status.code(), Some(2), "{var}={value:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains(var) && err.contains(why),
            "{var}={value:?}: {err}"
        );
    }
}
