//! The effective settings as TOML, secrets redacted: what `check-config` prints. Every declared
//! setting is printed from the table (`table.rs`) by the [`Show`] of its type.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use glob::Pattern;

use super::declare::{Show, line};
use super::mapping::{AnonymousMode, Naming};
use super::nats::NatsUrl;
use super::routes::RouteSettings;
use super::table::{Flat, Shared};
use super::values::{HeapAppId, LogFormat, Secret};

fn quoted(s: &str) -> Option<String> {
    Some(toml::Value::String(s.to_owned()).to_string())
}

fn array<'a>(items: impl Iterator<Item = &'a str>) -> Option<String> {
    let items = items.map(|s| toml::Value::String(s.to_owned())).collect();
    Some(toml::Value::Array(items).to_string())
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(Show::show)
    }
}

macro_rules! show_as {
    ($($ty:ty => |$v:ident| $e:expr;)*) => {
        $( impl Show for $ty {
            fn show(&self) -> Option<String> {
                let $v = self;
                $e
            }
        } )*
    };
}

show_as! {
    String => |v| quoted(v);
    PathBuf => |v| quoted(&v.display().to_string());
    SocketAddr => |v| quoted(&v.to_string());
    HeapAppId => |v| quoted(v.as_str());
    LogFormat => |v| quoted(v.as_str());
    Naming => |v| quoted(v.as_str());
    AnonymousMode => |v| quoted(v.as_str());
    Duration => |v| quoted(&duration_text(*v));
    NonZeroU32 => |v| Some(v.to_string());
    u64 => |v| Some(v.to_string());
    usize => |v| Some(v.to_string());
    bool => |v| Some(v.to_string());
    Vec<String> => |v| array(v.iter().map(String::as_str));
    Vec<Pattern> => |v| array(v.iter().map(Pattern::as_str));
    Vec<Secret> => |v| array(v.iter().map(|_| "<redacted>"));
    Secret => |_v| quoted("<redacted>");
    Vec<NatsUrl> => |v| {
        let urls: Vec<String> = v.iter().map(NatsUrl::redacted).collect();
        array(urls.iter().map(String::as_str))
    };
}

/// A duration as humantime writes it, except whole days, which stay days: humantime would write
/// `400d` as `1year 1month 4days 7h 26m 24s` (its year and month are 365.25 and 30.44 days).
fn duration_text(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs >= DAY && secs.is_multiple_of(DAY) {
        let days = secs / DAY;
        return if days == 1 {
            "1day".to_owned()
        } else {
            format!("{days}days")
        };
    }
    humantime::format_duration(d).to_string()
}

/// The effective settings as TOML, secrets redacted: the flat ones, then the `[[route]]` tables.
pub(super) fn redacted(flat: &Flat, shared: &Shared, routes: &[RouteSettings]) -> String {
    let mut out = String::new();
    flat.print(&mut out);
    shared.print(&mut out);
    for r in routes {
        out.push('\n');
        route_toml(r, &mut out);
    }
    out
}

fn route_toml(r: &RouteSettings, out: &mut String) {
    out.push_str("[[route]]\n");
    line(out, "name", r.name.show(), None);
    for (key, value) in [
        ("workspace", &r.workspace),
        ("app_group_id", &r.app_group_id),
    ] {
        if value.is_some() {
            line(out, key, value.show(), None);
        }
    }
    line(out, "heap_app_id", r.heap_app_id.show(), None);
    let tokens = (!r.ingest_tokens.is_empty()).then(|| r.ingest_tokens.clone());
    line(
        out,
        "ingest_token",
        tokens.show(),
        Some("the global tokens apply"),
    );
    r.shared.print(out);
}
