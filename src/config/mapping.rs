//! The mapping settings of a route (the flat settings are the default route's), validated:
//! `transform::MappingOptions` is built from [`MappingSettings`] and shares its value parsers.

use glob::Pattern;

use super::values::Raw;

/// Longest accepted event-name prefix, in characters. Heap event names are limited to 1024
/// characters; a bounded prefix leaves room for every table name untruncated.
pub const MAX_PREFIX_CHARS: usize = 128;

/// How Heap event names are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// The documented human-readable table (`Email Sent`, ...); see `transform::names`.
    #[default]
    Friendly,
    /// The Currents `event_type` itself (`users.messages.email.Send`).
    Raw,
}

impl Naming {
    pub fn as_str(self) -> &'static str {
        match self {
            Naming::Friendly => "friendly",
            Naming::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "friendly" => Ok(Naming::Friendly),
            "raw" => Ok(Naming::Raw),
            other => Err(format!(
                "invalid naming {other:?}: expected \"friendly\" or \"raw\""
            )),
        }
    }
}

/// What happens to events without a usable `user.external_user_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnonymousMode {
    /// Skip them (`reason="anonymous"` / `"invalid_identity"`).
    #[default]
    Skip,
    /// Send them with a synthetic Heap `user_id` derived from `user.user_id`.
    SyntheticUserId,
}

impl AnonymousMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AnonymousMode::Skip => "skip",
            AnonymousMode::SyntheticUserId => "synthetic_user_id",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(AnonymousMode::Skip),
            "synthetic_user_id" => Ok(AnonymousMode::SyntheticUserId),
            other => Err(format!(
                "invalid anonymous handling {other:?}: expected \"skip\" or \"synthetic_user_id\""
            )),
        }
    }
}

/// A prefix for every Heap event name: at most [`MAX_PREFIX_CHARS`], no control characters.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.chars().count() > MAX_PREFIX_CHARS {
        return Err(format!(
            "invalid prefix {prefix:?}: longer than {MAX_PREFIX_CHARS} characters"
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err(format!(
            "invalid prefix {prefix:?}: contains a control character"
        ));
    }
    Ok(())
}

/// Glob patterns on `event_type`; `which` (`include`, `exclude`) names them in errors.
pub fn patterns(which: &str, raw: &[String]) -> Result<Vec<Pattern>, String> {
    raw.iter()
        .map(|p| Pattern::new(p).map_err(|e| format!("invalid {which} pattern {p:?}: {e}")))
        .collect()
}

/// The validated mapping settings of one route.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MappingSettings {
    pub event_naming: Naming,
    pub event_prefix: String,
    pub anonymous: AnonymousMode,
    pub include_event_types: Vec<Pattern>,
    pub exclude_event_types: Vec<Pattern>,
    pub drop_properties: Vec<String>,
}

pub(super) fn naming(raw: Raw) -> Result<Naming, String> {
    Naming::parse(&raw.text())
}

pub(super) fn anonymous(raw: Raw) -> Result<AnonymousMode, String> {
    AnonymousMode::parse(&raw.text())
}

pub(super) fn prefix(raw: Raw) -> Result<String, String> {
    let p = raw.text();
    check_prefix(&p)?;
    Ok(p)
}

pub(super) fn include(raw: Raw) -> Result<Vec<Pattern>, String> {
    patterns("include", &raw.list())
}

pub(super) fn exclude(raw: Raw) -> Result<Vec<Pattern>, String> {
    patterns("exclude", &raw.list())
}
