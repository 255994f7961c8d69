//! Unit tests of the layering, the validation and the print.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn file(text: &str) -> FileConfig {
    toml::from_str(text).expect("valid toml")
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
    assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.data_dir, PathBuf::from("./data"));
    assert_eq!(s.heap_base_url, "https://heapanalytics.com");
    assert_eq!(s.heap_events_per_minute.get(), 15_000);
    assert_eq!(s.heap_identity_events_per_minute.get(), 1_000);
    assert_eq!(s.max_queue_bytes, 10 * 1024 * 1024 * 1024);
    assert_eq!(s.max_body_bytes, 8 * 1024 * 1024);
    assert_eq!(s.heap_max_request_bytes, 4 * 1024 * 1024);
    assert_eq!(s.delivery_window_bytes, 32 * 1024 * 1024);
    assert_eq!(s.dedup_window, Duration::from_secs(24 * 3600));
    assert!(s.ingest_tokens.is_empty());
    assert!(!s.dry_run);
}

#[test]
fn flags_override_file() {
    let args = SettingsArgs {
        heap_events_per_minute: Some("600".into()),
        ingest_token: Some("new, old".into()),
        ..Default::default()
    };
    let s = Settings::resolve(
        &args,
        file("heap_events_per_minute = 100\nheap_app_id = 123\ningest_token = [\"x\"]\n"),
    )
    .unwrap();
    assert_eq!(s.heap_events_per_minute.get(), 600);
    assert_eq!(s.heap_app_id.unwrap().as_str(), "123");
    let tokens: Vec<&str> = s.ingest_tokens.iter().map(Secret::expose).collect();
    assert_eq!(tokens, ["new", "old"]);
}

#[test]
fn invalid_values_name_the_setting() {
    let cases = [
        ("heap_app_id = \"abc\"", "heap_app_id"),
        ("max_queue_bytes = \"lots\"", "max_queue_bytes"),
        ("max_body_bytes = \"512KiB\"", "max_body_bytes"),
        ("listen = \"nowhere\"", "listen"),
        ("heap_base_url = \"ftp://x\"", "heap_base_url"),
        (
            "heap_identity_events_per_minute = 0",
            "heap_identity_events_per_minute",
        ),
        ("dedup_window = \"forever\"", "dedup_window"),
        ("log_format = \"xml\"", "log_format"),
        ("dedup_capacity = 0", "dedup_capacity"),
        ("event_naming = \"weird\"", "event_naming"),
        ("anonymous = \"maybe\"", "anonymous"),
        ("include_event_types = [\"[\"]", "include_event_types"),
        ("max_event_age = \"0s\"", "max_event_age"),
        ("heap_max_request_bytes = \"4\"", "heap_max_request_bytes"),
        ("heap_max_request_bytes = \"big\"", "heap_max_request_bytes"),
        ("delivery_window_bytes = \"1MiB\"", "delivery_window_bytes"),
        ("max_connections = 0", "max_connections"),
        ("header_read_timeout = \"0s\"", "header_read_timeout"),
        ("ingest_buffer_bytes = \"8MiB\"", "ingest_buffer_bytes"),
        ("tls_cert = \"cert.pem\"", "tls_key"),
        ("retry_max_backoff = \"10ms\"", "retry_max_backoff"),
        ("retry_initial_backoff = \"0s\"", "retry_initial_backoff"),
        (
            "heap_max_request_bytes = \"128MiB\"",
            "delivery_window_bytes",
        ),
        ("identity_map_retention = \"23h\"", "identity_map_retention"),
        ("deletion_poll_interval = \"0s\"", "deletion_poll_interval"),
        (
            "deletion_request_interval = \"soon\"",
            "deletion_request_interval",
        ),
        ("deletion_overdue_after = \"0s\"", "deletion_overdue_after"),
        ("heap_api_key = \" \"", "heap_api_key"),
        ("heap_api_key = \"a key\"", "heap_api_key"),
        ("heap_account_app_id = \"main\"", "heap_account_app_id"),
    ];
    for (text, key) in cases {
        let err = Settings::resolve(&SettingsArgs::default(), file(text)).unwrap_err();
        assert!(err.to_string().contains(key), "{text}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("--{}", key.replace('_', "-")))
        );
    }
}

#[test]
fn a_blank_token_is_an_error_not_authentication_off() {
    for blank in ["", " ", "\t", ",", ",,", " , ,"] {
        let args = SettingsArgs {
            ingest_token: Some(blank.into()),
            ..Default::default()
        };
        let err = Settings::resolve(&args, FileConfig::default()).unwrap_err();
        let text = err.to_string();
        for form in [
            "ingest_token",
            "--ingest-token",
            "CURRENTS_HEAP_INGEST_TOKEN",
        ] {
            assert!(text.contains(form), "{blank:?}: {text}");
        }
        assert!(text.contains("holds no token"), "{text}");
        // A blank flag or variable is not overridden by the file: it wins, and is refused.
        assert!(Settings::resolve(&args, file("ingest_token = [\"t\"]")).is_err());
    }
    for blank in [
        "ingest_token = \"\"",
        "ingest_token = [\"\"]",
        "ingest_token = [\" \", \"\"]",
        "ingest_token = []",
    ] {
        let err = Settings::resolve(&SettingsArgs::default(), file(blank)).unwrap_err();
        assert!(err.to_string().contains("holds no token"), "{blank}: {err}");
    }
    let route = |token: &str| {
        format!(
            "[[route]]\nname = \"r\"\nworkspace = \"w\"\nheap_app_id = \"1\"\ningest_token = {token}\n"
        )
    };
    for blank in ["[\"\"]", "\"\"", "[\" \"]", "\",\""] {
        let err = Settings::resolve(&SettingsArgs::default(), file(&route(blank))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`ingest_token` of [[route]] #1") && text.contains("holds no token"),
            "{blank}: {text}"
        );
    }
    // Not set at all: no token, authentication off (serve warns loudly).
    let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
    assert!(s.ingest_tokens.is_empty());
    let s = Settings::resolve(&SettingsArgs::default(), file(&route("[\"ok\"]"))).unwrap();
    assert_eq!(s.routes[0].ingest_tokens.len(), 1);
    // Empty entries next to real tokens are ignored, as before.
    let args = SettingsArgs {
        ingest_token: Some("new,,old,".into()),
        ..Default::default()
    };
    assert_eq!(
        Settings::resolve(&args, FileConfig::default())
            .unwrap()
            .ingest_tokens
            .len(),
        2
    );
}

#[test]
fn the_config_file_is_read_up_to_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    let mut text = "heap_app_id = \"1\"\n".to_string();
    text.push_str(&"#".repeat(MAX_CONFIG_BYTES as usize - text.len()));
    std::fs::write(&path, &text).unwrap();
    let args = SettingsArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    assert!(Settings::load(&args).is_ok(), "exactly 1 MiB is fine");
    text.push('#');
    std::fs::write(&path, &text).unwrap();
    let err = Settings::load(&args).unwrap_err().to_string();
    assert!(
        err.contains("larger than 1 MiB") && err.contains("big.toml"),
        "{err}"
    );
    let err = Settings::load(&SettingsArgs {
        config: Some("/dev/zero".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("larger than 1 MiB"), "{err}");
}

#[test]
fn byte_bounds_take_sizes_in_every_form() {
    let args = SettingsArgs {
        heap_max_request_bytes: Some("1MiB".into()),
        ..Default::default()
    };
    let s = Settings::resolve(
        &args,
        file("heap_max_request_bytes = \"8MiB\"\ndelivery_window_bytes = 16777216\n"),
    )
    .unwrap();
    assert_eq!(s.heap_max_request_bytes, 1024 * 1024);
    assert_eq!(s.delivery_window_bytes, 16 * 1024 * 1024);
    let printed = s.to_redacted_toml();
    assert!(
        printed.contains("heap_max_request_bytes = 1048576"),
        "{printed}"
    );
    assert!(
        printed.contains("delivery_window_bytes = 16777216"),
        "{printed}"
    );
}

#[test]
fn unknown_file_keys_are_rejected() {
    assert!(toml::from_str::<FileConfig>("lsiten = \"x\"").is_err());
}

#[test]
fn redacted_output_never_contains_tokens() {
    let args = SettingsArgs {
        ingest_token: Some("s3cr3t-one,s3cr3t-two".into()),
        ..Default::default()
    };
    let s = Settings::resolve(&args, FileConfig::default()).unwrap();
    let printed = s.to_redacted_toml();
    assert!(!printed.contains("s3cr3t"));
    assert!(printed.contains("<redacted>"));
    assert!(!format!("{s:?}").contains("s3cr3t"));
    toml::from_str::<toml::Table>(&printed).expect("printed settings are TOML");
}

#[test]
fn serve_needs_an_app_id_unless_dry_run() {
    let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
    assert!(
        s.validate_for_serve()
            .unwrap_err()
            .to_string()
            .contains("heap_app_id")
    );
    let dry = SettingsArgs {
        dry_run: Some(true),
        ..Default::default()
    };
    let s = Settings::resolve(&dry, FileConfig::default()).unwrap();
    s.validate_for_serve().unwrap();
}

#[test]
fn edge_defaults_are_the_documented_values() {
    let e = Settings::resolve(&SettingsArgs::default(), FileConfig::default())
        .unwrap()
        .edge;
    assert_eq!(e.header_read_timeout, Duration::from_secs(10));
    assert_eq!(e.idle_timeout, Duration::from_secs(75));
    assert_eq!(e.body_read_timeout, Duration::from_secs(60));
    assert_eq!(e.ingest_wait_timeout, Duration::from_secs(5));
    assert_eq!(e.max_connections, 1024);
    assert_eq!(e.ingest_buffer_bytes, 64 * 1024 * 1024);
    assert_eq!(e.tls, None);
}

#[test]
fn edge_flags_win_over_the_file() {
    let args = SettingsArgs {
        idle_timeout: Some("7s".into()),
        ..Default::default()
    };
    let s =
        Settings::resolve(&args, file("idle_timeout = \"5s\"\nmax_connections = 10\n")).unwrap();
    assert_eq!(s.edge.idle_timeout, Duration::from_secs(7));
    assert_eq!(s.edge.max_connections, 10);
}

#[test]
fn a_route_inherits_what_it_does_not_override() {
    let s = Settings::resolve(
        &SettingsArgs::default(),
        file(
            "heap_events_per_minute = 600\nevent_prefix = \"b-\"\n\
             [[route]]\nname = \"r\"\nworkspace = \"w\"\nheap_app_id = 7\nanonymous = \"synthetic_user_id\"\n",
        ),
    )
    .unwrap();
    let r = s.route("r").unwrap();
    assert_eq!(r.heap_events_per_minute.get(), 600);
    assert_eq!(r.mapping.event_prefix, "b-");
    assert_eq!(r.mapping.anonymous, AnonymousMode::SyntheticUserId);
    assert_eq!(s.mapping.anonymous, AnonymousMode::Skip);
    assert_eq!(s.route(DEFAULT_ROUTE).unwrap().heap_app_id, None);
    assert!(s.route("nope").is_none());
    let printed = s.to_redacted_toml();
    let table: toml::Table = toml::from_str(&printed).expect("printed settings are TOML");
    let route = &table["route"][0];
    assert_eq!(route["anonymous"].as_str(), Some("synthetic_user_id"));
    assert_eq!(route["heap_events_per_minute"].as_integer(), Some(600));
}

/// Every declared setting is in the README's settings tables with its flag, environment
/// variable and default, and the clap arguments carry the same names.
#[test]
fn the_readme_documents_every_declared_setting() {
    let readme = include_str!("../../README.md");
    let command = <SettingsArgs as clap::Args>::augment_args(clap::Command::new("t"));
    for d in DECLARATIONS {
        let flag = d.flag();
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{flag}` |")))
            .unwrap_or_else(|| panic!("README has no row for {flag}"));
        assert!(row.contains(&format!("`{}`", d.env)), "{row}");
        match d.default {
            Some(v) if !v.is_empty() && v != "false" => {
                assert!(row.contains(&format!("| `{v}` |")), "{row}")
            }
            _ => assert!(
                ["| none |", "| off |", "| all |"]
                    .iter()
                    .any(|n| row.contains(n)),
                "{row}"
            ),
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == d.key)
            .expect("an argument");
        assert_eq!(arg.get_long(), Some(&flag[2..]));
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(d.env));
    }
}

#[test]
fn deletion_defaults_are_the_documented_ones() {
    let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
    assert_eq!(s.identity_map_retention, Duration::from_secs(400 * 86_400));
    assert_eq!(s.deletion_request_interval, Duration::from_secs(1));
    assert_eq!(s.deletion_poll_interval, Duration::from_secs(300));
    assert_eq!(s.deletion_overdue_after, Duration::from_secs(7 * 86_400));
    assert!(s.heap_api_key.is_none() && s.heap_account_app_id.is_none());
    // No app id: the default route delivers nowhere and has no deletion account.
    assert!(s.deletion_accounts().is_empty());
    let printed = s.to_redacted_toml();
    assert!(
        printed.contains("# heap_api_key = (not set: deletions are purged locally"),
        "{printed}"
    );
    assert!(
        printed.contains("identity_map_retention = \"400days\""),
        "{printed}"
    );
}

const TWO_ROUTES: &str = "heap_app_id = 100\n\
    [[route]]\nname = \"a\"\nworkspace = \"a\"\nheap_app_id = 200\nheap_account_app_id = 100\n\
    [[route]]\nname = \"b\"\nworkspace = \"b\"\nheap_app_id = 300\n";

fn key_of(a: &DeletionAccount) -> Option<&str> {
    a.api_key.as_ref().map(Secret::expose)
}

#[test]
fn routes_of_one_heap_account_share_one_deletion_account() {
    let args = SettingsArgs {
        heap_api_key: Some("k-flat".into()),
        ..Default::default()
    };
    let s = Settings::resolve(&args, file(TWO_ROUTES)).unwrap();
    let accounts = s.deletion_accounts();
    assert_eq!(accounts.len(), 2, "{accounts:?}");
    // `a` names account 100, the default route's own app id: one account, one key.
    assert_eq!(accounts[0].account_app_id, "100");
    assert_eq!(accounts[0].routes, [DEFAULT_ROUTE, "a"]);
    assert_eq!(key_of(&accounts[0]), Some("k-flat"));
    assert_eq!(accounts[0].base_url, "https://heapanalytics.com");
    // `b` gives no account id: its own app id is the account.
    assert_eq!(accounts[1].account_app_id, "300");
    assert_eq!(accounts[1].routes, ["b"]);
    assert_eq!(key_of(&accounts[1]), Some("k-flat"));
    assert!(s.routes_without_deletion_key().is_empty());
}

#[test]
fn a_route_key_overrides_the_flat_one_and_no_key_is_its_own_entry() {
    let text = TWO_ROUTES.replace(
        "heap_account_app_id = 100\n",
        "heap_account_app_id = 100\nheap_api_key = \"k-route\"\n",
    );
    let s = Settings::resolve(&SettingsArgs::default(), file(&text)).unwrap();
    assert_eq!(
        s.route("a").unwrap().heap_api_key.map(Secret::expose),
        Some("k-route")
    );
    let accounts = s.deletion_accounts();
    let summary: Vec<(&str, Option<&str>, Vec<&str>)> = accounts
        .iter()
        .map(|a| {
            let routes = a.routes.iter().map(String::as_str).collect();
            (a.account_app_id.as_str(), key_of(a), routes)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("100", None, vec![DEFAULT_ROUTE]),
            ("100", Some("k-route"), vec!["a"]),
            ("300", None, vec!["b"]),
        ]
    );
    assert_eq!(s.routes_without_deletion_key(), [DEFAULT_ROUTE, "b"]);
    // The key never prints.
    let printed = s.to_redacted_toml();
    assert!(!printed.contains("k-route"), "{printed}");
    assert!(
        printed.contains("heap_api_key = \"<redacted>\""),
        "{printed}"
    );
    assert!(!format!("{s:?}{accounts:?}").contains("k-route"));
    let table: toml::Table = toml::from_str(&printed).expect("printed settings are TOML");
    assert_eq!(
        table["route"][0]["heap_account_app_id"].as_str(),
        Some("100")
    );
}

#[test]
fn routes_of_one_app_id_must_name_one_account() {
    let text = "[[route]]\nname = \"a\"\nworkspace = \"a\"\nheap_app_id = 200\n\
        [[route]]\nname = \"b\"\nworkspace = \"b\"\nheap_app_id = 200\nheap_account_app_id = 100\n";
    let err = Settings::resolve(&SettingsArgs::default(), file(text)).unwrap_err();
    assert!(err.to_string().contains("different Heap accounts"), "{err}");
    let same = text.replace(
        "heap_app_id = 200\n[[route]]",
        "heap_app_id = 200\nheap_account_app_id = 100\n[[route]]",
    );
    let s = Settings::resolve(&SettingsArgs::default(), file(&same)).unwrap();
    assert_eq!(s.deletion_accounts()[0].routes, ["a", "b"]);
}

#[test]
fn nats_is_off_by_default_and_its_defaults_are_the_documented_ones() {
    let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
    assert_eq!(s.nats(), None);
    let printed = s.to_redacted_toml();
    assert!(
        printed.contains("# nats_url = (not set: the queue is the SQLite store in data_dir)"),
        "{printed}"
    );
    assert!(
        printed.contains("nats_stream = \"currents-heap\"\nnats_replicas = 3\n"),
        "{printed}"
    );
    assert!(printed.contains("# nats_creds = (not set"), "{printed}");
    let s = Settings::resolve(&SettingsArgs::default(), file("nats_url = \"nats://n1\"")).unwrap();
    assert_eq!(
        s.nats(),
        Some(NatsSettings {
            urls: vec!["nats://n1:4222".into()],
            stream: "currents-heap".into(),
            replicas: 3,
            creds: None,
            lease: Duration::from_secs(10),
        })
    );
}

#[test]
fn nats_settings_are_layered_file_then_flags() {
    let args = SettingsArgs {
        nats_url: Some("tls://n1:4443, n2:4223".into()),
        nats_replicas: Some("1".into()),
        ..Default::default()
    };
    let s = Settings::resolve(
        &args,
        file("nats_url = [\"nats://file:4222\"]\nnats_stream = \"ch_prod-1\"\nnats_replicas = 5\n"),
    )
    .unwrap();
    let nats = s.nats().unwrap();
    assert_eq!(nats.urls, ["tls://n1:4443", "nats://n2:4223"]);
    assert_eq!(nats.stream, "ch_prod-1");
    assert_eq!(nats.replicas, 1);
    // The same through clap, as the command line and the environment give them.
    use clap::FromArgMatches;
    let command = <SettingsArgs as clap::Args>::augment_args(clap::Command::new("t"));
    let matches = command
        .try_get_matches_from([
            "t",
            "--nats-url",
            "nats://a:1,nats://b:2",
            "--nats-stream",
            "x",
            "--nats-replicas",
            "2",
        ])
        .unwrap();
    let args = SettingsArgs::from_arg_matches(&matches).unwrap();
    let nats = Settings::resolve(&args, FileConfig::default())
        .unwrap()
        .nats()
        .unwrap();
    assert_eq!(nats.urls, ["nats://a:1", "nats://b:2"]);
    assert_eq!((nats.stream.as_str(), nats.replicas), ("x", 2));
}

#[test]
fn nats_urls_take_a_scheme_a_host_and_a_port() {
    for (given, url) in [
        ("nats://n1:4222", "nats://n1:4222"),
        ("tls://n1.example.com", "tls://n1.example.com:4222"),
        ("NATS://n1:5/", "nats://n1:5"),
        ("n1:4300", "nats://n1:4300"),
        ("10.0.0.1", "nats://10.0.0.1:4222"),
        ("[::1]:4300", "nats://[::1]:4300"),
        ("tls://[fe80::1]", "tls://[fe80::1]:4222"),
        ("nats://u:p@n1", "nats://u:p@n1:4222"),
        ("tok@n1:1", "nats://tok@n1:1"),
    ] {
        let parsed = NatsUrl::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
        assert_eq!(parsed.expose(), url, "{given}");
    }
    for bad in [
        "http://n1:4222",
        "ws://n1",
        "nats://",
        "nats://:4222",
        "nats://n1:0",
        "nats://n1:65536",
        "nats://n1:port",
        "nats://n1/path",
        "nats://n1?x=1",
        "::1:4222",
        "[::1",
        "[nope]:1",
        "nats://@n1",
        "nats://n 1",
    ] {
        assert!(NatsUrl::parse(bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn bad_nats_values_are_refused_naming_the_setting() {
    let cases = [
        (
            "nats_url = \"http://n1:4222\"",
            "nats_url",
            "nats:// or tls://",
        ),
        ("nats_url = \"nats://a,,nats://b\"", "nats_url", "empty URL"),
        ("nats_url = \"nats://a,\"", "nats_url", "empty URL"),
        ("nats_url = \"\"", "nats_url", "holds no URL"),
        ("nats_url = [\" \"]", "nats_url", "holds no URL"),
        ("nats_url = []", "nats_url", "holds no URL"),
        ("nats_stream = \"a.b\"", "nats_stream", "no dots"),
        ("nats_stream = \"a b\"", "nats_stream", "no dots"),
        ("nats_stream = \"ev.*\"", "nats_stream", "no dots"),
        ("nats_stream = \">\"", "nats_stream", "no dots"),
        ("nats_stream = \"\"", "nats_stream", "1 to 32"),
        (
            "nats_stream = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
            "nats_stream",
            "1 to 32",
        ),
        ("nats_replicas = 0", "nats_replicas", "from 1 to 5"),
        ("nats_replicas = 6", "nats_replicas", "from 1 to 5"),
        ("nats_replicas = \"three\"", "nats_replicas", "from 1 to 5"),
        (
            "nats_creds = \"/nonexistent/x.creds\"",
            "nats_creds",
            "cannot read",
        ),
        ("nats_creds = \"/\"", "nats_creds", "not a file"),
    ];
    for (text, key, why) in cases {
        let err = Settings::resolve(&SettingsArgs::default(), file(text))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        assert!(
            err.contains(&format!("--{}", key.replace('_', "-"))),
            "{err}"
        );
        assert!(err.contains(why), "{text}: {err}");
    }
    // The limits themselves are fine; 32 characters is the longest prefix.
    let s = Settings::resolve(
        &SettingsArgs::default(),
        file(&format!(
            "nats_url = \"n\"\nnats_replicas = 5\nnats_stream = \"{}\"",
            "a".repeat(32)
        )),
    )
    .unwrap();
    assert_eq!(s.nats().unwrap().replicas, 5);
    let s = Settings::resolve(&SettingsArgs::default(), file("nats_replicas = 1")).unwrap();
    assert_eq!(s.nats(), None, "without nats_url the others are ignored");
}

#[test]
fn nats_credentials_never_print() {
    let creds = tempfile::NamedTempFile::new().unwrap();
    let args = SettingsArgs {
        nats_url: Some("nats://alice:pa55word@n1:4222,tls://t0k3n@n2,n3".into()),
        nats_creds: Some(creds.path().to_owned()),
        ..Default::default()
    };
    let s = Settings::resolve(&args, FileConfig::default()).unwrap();
    let nats = s.nats().unwrap();
    // The app connects with them...
    assert_eq!(
        nats.urls,
        [
            "nats://alice:pa55word@n1:4222",
            "tls://t0k3n@n2:4222",
            "nats://n3:4222"
        ]
    );
    assert_eq!(nats.creds.as_deref(), Some(creds.path()));
    // ...and nothing prints them.
    let printed = s.to_redacted_toml();
    let debug = format!("{s:?}{nats:?}");
    for shown in [&printed, &debug] {
        for secret in ["alice", "pa55word", "t0k3n"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    let table: toml::Table = toml::from_str(&printed).expect("printed settings are TOML");
    let urls: Vec<&str> = table["nats_url"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "nats://<redacted>@n1:4222",
            "tls://<redacted>@n2:4222",
            "nats://n3:4222"
        ]
    );
    assert_eq!(
        table["nats_creds"].as_str(),
        Some(creds.path().to_str().unwrap())
    );
    // Nor does an error about a URL with credentials.
    let args = SettingsArgs {
        nats_url: Some("nats://alice:pa55word@n1:99999".into()),
        ..Default::default()
    };
    let err = Settings::resolve(&args, FileConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("pa55word") && err.contains("<redacted>@n1"),
        "{err}"
    );
    let args = SettingsArgs {
        nats_url: Some("http://alice:pa55word@n1".into()),
        ..Default::default()
    };
    let err = Settings::resolve(&args, FileConfig::default())
        .unwrap_err()
        .to_string();
    assert!(!err.contains("pa55word"), "{err}");
}
