//! The per-route mapping settings, validated once when the configuration is loaded.
//!
//! Why a parsed type rather than raw strings: `map_event` runs for every event of a backlog that
//! can hold millions; glob patterns are compiled and names checked here, once, so the mapping
//! itself can neither fail on a setting nor pay to re-parse it.

use std::collections::BTreeSet;

use glob::Pattern;

pub use crate::config::{AnonymousMode, MAX_PREFIX_CHARS, Naming};
use crate::config::{MappingSettings, check_prefix, patterns};

/// The mapping settings of one route. `Default` = friendly names, no prefix, skip anonymous
/// events, every event type included, no property dropped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MappingOptions {
    naming: Naming,
    prefix: String,
    anonymous: AnonymousMode,
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    drop_properties: BTreeSet<String>,
}

impl MappingOptions {
    /// From the raw setting values; `Err(message)` names the bad value.
    ///
    /// - `naming`: `"friendly"` (default) or `"raw"`;
    /// - `prefix`: prepended to every event name (e.g. `"braze-"`), at most
    ///   [`MAX_PREFIX_CHARS`] characters, no control characters;
    /// - `anonymous`: `"skip"` (default) or `"synthetic_user_id"`;
    /// - `include` / `exclude`: glob patterns on `event_type` (`users.messages.email.*`); an
    ///   empty include list includes everything; exclude wins over include;
    /// - `drop_properties`: property keys (after flattening) to drop, exact match.
    pub fn from_parts(
        naming: Option<&str>,
        prefix: Option<&str>,
        anonymous: Option<&str>,
        include: &[String],
        exclude: &[String],
        drop_properties: &[String],
    ) -> Result<Self, String> {
        let naming = naming.map_or(Ok(Naming::Friendly), Naming::parse)?;
        let anonymous = anonymous.map_or(Ok(AnonymousMode::Skip), AnonymousMode::parse)?;
        let prefix = prefix.unwrap_or_default();
        check_prefix(prefix)?;
        Ok(MappingOptions {
            naming,
            prefix: prefix.to_string(),
            anonymous,
            include: patterns("include", include)?,
            exclude: patterns("exclude", exclude)?,
            drop_properties: drop_properties.iter().cloned().collect(),
        })
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn anonymous(&self) -> AnonymousMode {
        self.anonymous
    }

    /// The include patterns, as written.
    pub fn include(&self) -> impl Iterator<Item = &str> {
        self.include.iter().map(Pattern::as_str)
    }

    /// The exclude patterns, as written.
    pub fn exclude(&self) -> impl Iterator<Item = &str> {
        self.exclude.iter().map(Pattern::as_str)
    }

    /// The property keys that are never sent, sorted.
    pub fn drop_properties(&self) -> impl Iterator<Item = &str> {
        self.drop_properties.iter().map(String::as_str)
    }

    /// Whether an event of this type is mapped at all (include/exclude lists).
    pub fn includes(&self, event_type: &str) -> bool {
        let included =
            self.include.is_empty() || self.include.iter().any(|p| p.matches(event_type));
        included && !self.exclude.iter().any(|p| p.matches(event_type))
    }

    /// Whether a property key is on the drop list.
    pub fn drops(&self, key: &str) -> bool {
        self.drop_properties.contains(key)
    }
}

/// The options of a route's validated settings (the configuration checked every value).
impl From<&MappingSettings> for MappingOptions {
    fn from(m: &MappingSettings) -> Self {
        MappingOptions {
            naming: m.event_naming,
            prefix: m.event_prefix.clone(),
            anonymous: m.anonymous,
            include: m.include_event_types.clone(),
            exclude: m.exclude_event_types.clone(),
            drop_properties: m.drop_properties.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults() {
        let o = MappingOptions::from_parts(None, None, None, &[], &[], &[]).unwrap();
        assert_eq!(o, MappingOptions::default());
        assert_eq!(o.naming(), Naming::Friendly);
        assert_eq!(o.anonymous(), AnonymousMode::Skip);
        assert_eq!(o.prefix(), "");
        assert!(o.includes("anything.at.all"));
        assert!(!o.drops("email_address"));
    }

    #[test]
    fn parses_every_setting() {
        let o = MappingOptions::from_parts(
            Some("raw"),
            Some("braze-"),
            Some("synthetic_user_id"),
            &strings(&["users.messages.*"]),
            &strings(&["users.messages.email.*", "*.Abort"]),
            &strings(&["email_address"]),
        )
        .unwrap();
        assert_eq!(o.naming(), Naming::Raw);
        assert_eq!(o.anonymous(), AnonymousMode::SyntheticUserId);
        assert_eq!(o.prefix(), "braze-");
        assert!(o.includes("users.messages.sms.Send"));
        assert!(!o.includes("users.messages.email.Send"));
        assert!(!o.includes("users.messages.sms.Abort"));
        assert!(!o.includes("users.behaviors.CustomEvent"));
        assert!(o.drops("email_address"));
        assert!(!o.drops("email"));
        assert_eq!(o.include().collect::<Vec<_>>(), ["users.messages.*"]);
        assert_eq!(o.exclude().count(), 2);
        assert_eq!(o.drop_properties().collect::<Vec<_>>(), ["email_address"]);
    }

    #[test]
    fn errors_name_the_bad_value() {
        let err = |n, p, a, i: &[&str], e: &[&str]| {
            MappingOptions::from_parts(n, p, a, &strings(i), &strings(e), &[]).unwrap_err()
        };
        assert!(err(Some("Friendly"), None, None, &[], &[]).contains("\"Friendly\""));
        assert!(err(None, None, Some("drop"), &[], &[]).contains("\"drop\""));
        assert!(err(None, None, None, &["users.[a"], &[]).contains("include pattern \"users.[a\""));
        assert!(err(None, None, None, &[], &["***"]).contains("exclude pattern \"***\""));
        let long = "p".repeat(MAX_PREFIX_CHARS + 1);
        assert!(err(None, Some(long.as_str()), None, &[], &[]).contains("longer than"));
        assert!(err(None, Some("a\nb"), None, &[], &[]).contains("control"));
    }
}
