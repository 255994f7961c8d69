//! Heap event names: the documented table, the fallback for unknown types, custom events.
//!
//! Why a fixed table and strict rules: an event name is the first thing a Heap analyst sees and
//! the one thing that is expensive to change later (saved reports and definitions point at it).
//! The rules guarantee that two distinct Currents event types never share a Heap name, so no
//! report can silently mix, say, Braze sends with an app's own custom event:
//!
//! - a known type maps to its entry in [`EVENT_NAMES`] (Title Case, no `:` and no `.`);
//! - an unknown type maps to [`FALLBACK_PREFIX`] + the `event_type` verbatim
//!   (`Braze Event: users.messages.pigeon.Send`), visibly "not in the table yet";
//! - `users.behaviors.CustomEvent` maps to its own `properties.name`, except that a name which
//!   another type could produce (a table name, or anything starting with [`FALLBACK_PREFIX`])
//!   is escaped as [`CUSTOM_ESCAPE_PREFIX`] + name; a missing, non-string or blank name gives
//!   the table entry `Custom Event`;
//! - raw naming uses the `event_type` itself for every type, custom events included (their
//!   name stays in the `name` property): that is injective by construction;
//! - the configured prefix is prepended last; a final name over 1024 characters is cut on a
//!   character boundary and ends in `~` + 16 hex digits of the SHA-256 of the uncut name, so
//!   long names stay distinct too.

use sha2::{Digest, Sha256};

use super::options::{MappingOptions, Naming};
use crate::heap::model::MAX_EVENT_CHARS;

/// The event type whose Heap name comes from the event itself.
pub const CUSTOM_EVENT_TYPE: &str = "users.behaviors.CustomEvent";
/// Friendly name of an event type that is not in [`EVENT_NAMES`]: this + the `event_type`.
pub const FALLBACK_PREFIX: &str = "Braze Event: ";
/// A custom event whose name collides with another type's name gets this in front.
pub const CUSTOM_ESCAPE_PREFIX: &str = "Custom Event: ";
/// Characters of the `~hash` suffix of a shortened name.
const HASH_SUFFIX_CHARS: usize = 17;

/// Friendly Heap event name of every known Currents event type, sorted by event type; exactly
/// the types of [`crate::currents::catalogue::KNOWN_EVENT_TYPES`] (checked by a test).
pub const EVENT_NAMES: &[(&str, &str)] = &[
    ("agentconsole.AgentExecuted", "Agent Executed"),
    ("agentconsole.ToolInvocation", "Agent Tool Invoked"),
    (
        "users.RandomBucketNumberUpdate",
        "Random Bucket Number Updated",
    ),
    ("users.UserDeleteRequest", "User Deletion Requested"),
    ("users.UserOrphan", "User Orphaned"),
    ("users.behaviors.CustomEvent", "Custom Event"),
    ("users.behaviors.InstallAttribution", "Install Attributed"),
    ("users.behaviors.Location", "Location Recorded"),
    ("users.behaviors.Purchase", "Purchase Made"),
    ("users.behaviors.Uninstall", "App Uninstalled"),
    ("users.behaviors.app.FirstSession", "First Session Started"),
    ("users.behaviors.app.SessionEnd", "Session Ended"),
    ("users.behaviors.app.SessionStart", "Session Started"),
    (
        "users.behaviors.liveactivity.PushToStartTokenChange",
        "Live Activity Push-to-Start Token Changed",
    ),
    (
        "users.behaviors.liveactivity.UpdateTokenChange",
        "Live Activity Update Token Changed",
    ),
    (
        "users.behaviors.pushnotification.TokenStateChange",
        "Push Token State Changed",
    ),
    (
        "users.behaviors.subscription.GlobalStateChange",
        "Subscription State Changed",
    ),
    (
        "users.behaviors.subscriptiongroup.StateChange",
        "Subscription Group State Changed",
    ),
    ("users.campaigns.Conversion", "Campaign Converted"),
    (
        "users.campaigns.EnrollInControl",
        "Campaign Control Group Entered",
    ),
    ("users.canvas.Conversion", "Canvas Converted"),
    ("users.canvas.Entry", "Canvas Entered"),
    (
        "users.canvas.costep.Send",
        "Canvas Content Optimizer Step Sent",
    ),
    (
        "users.canvas.exit.MatchedAudience",
        "Canvas Exited by Audience Match",
    ),
    (
        "users.canvas.exit.PerformedEvent",
        "Canvas Exited by Performed Event",
    ),
    (
        "users.canvas.experimentstep.Conversion",
        "Canvas Experiment Step Converted",
    ),
    (
        "users.canvas.experimentstep.SplitEntry",
        "Canvas Experiment Split Entered",
    ),
    ("users.canvasstep.Progression", "Canvas Step Progressed"),
    ("users.messages.banner.Abort", "Banner Aborted"),
    ("users.messages.banner.Click", "Banner Clicked"),
    ("users.messages.banner.Dismiss", "Banner Dismissed"),
    ("users.messages.banner.Impression", "Banner Viewed"),
    ("users.messages.contentcard.Abort", "Content Card Aborted"),
    ("users.messages.contentcard.Click", "Content Card Clicked"),
    (
        "users.messages.contentcard.Dismiss",
        "Content Card Dismissed",
    ),
    (
        "users.messages.contentcard.Impression",
        "Content Card Viewed",
    ),
    ("users.messages.contentcard.Send", "Content Card Sent"),
    ("users.messages.email.Abort", "Email Aborted"),
    ("users.messages.email.Bounce", "Email Bounced"),
    ("users.messages.email.Click", "Email Link Clicked"),
    ("users.messages.email.Deferral", "Email Deferred"),
    ("users.messages.email.Delivery", "Email Delivered"),
    ("users.messages.email.MarkAsSpam", "Email Marked As Spam"),
    ("users.messages.email.Open", "Email Opened"),
    ("users.messages.email.Retry", "Email Retried"),
    ("users.messages.email.Send", "Email Sent"),
    ("users.messages.email.SoftBounce", "Email Soft Bounced"),
    ("users.messages.email.Unsubscribe", "Email Unsubscribed"),
    (
        "users.messages.featureflag.Impression",
        "Feature Flag Viewed",
    ),
    (
        "users.messages.inappmessage.Abort",
        "In-App Message Aborted",
    ),
    (
        "users.messages.inappmessage.Click",
        "In-App Message Clicked",
    ),
    (
        "users.messages.inappmessage.Impression",
        "In-App Message Viewed",
    ),
    ("users.messages.line.Abort", "LINE Message Aborted"),
    ("users.messages.line.Click", "LINE Link Clicked"),
    (
        "users.messages.line.InboundReceive",
        "LINE Message Received",
    ),
    ("users.messages.line.Retry", "LINE Message Retried"),
    ("users.messages.line.Send", "LINE Message Sent"),
    (
        "users.messages.liveactivity.Outcome",
        "Live Activity Outcome Recorded",
    ),
    ("users.messages.liveactivity.Send", "Live Activity Sent"),
    (
        "users.messages.newsfeedcard.Abort",
        "News Feed Card Aborted",
    ),
    (
        "users.messages.newsfeedcard.Click",
        "News Feed Card Clicked",
    ),
    (
        "users.messages.newsfeedcard.Impression",
        "News Feed Card Viewed",
    ),
    (
        "users.messages.pushnotification.Abort",
        "Push Notification Aborted",
    ),
    (
        "users.messages.pushnotification.Bounce",
        "Push Notification Bounced",
    ),
    (
        "users.messages.pushnotification.IosForeground",
        "iOS Foreground Push Notification Received",
    ),
    (
        "users.messages.pushnotification.Open",
        "Push Notification Opened",
    ),
    (
        "users.messages.pushnotification.Retry",
        "Push Notification Retried",
    ),
    (
        "users.messages.pushnotification.Send",
        "Push Notification Sent",
    ),
    ("users.messages.rcs.Abort", "RCS Message Aborted"),
    ("users.messages.rcs.Click", "RCS Message Clicked"),
    ("users.messages.rcs.Delivery", "RCS Message Delivered"),
    ("users.messages.rcs.InboundReceive", "RCS Message Received"),
    ("users.messages.rcs.Read", "RCS Message Read"),
    ("users.messages.rcs.Rejection", "RCS Message Rejected"),
    ("users.messages.rcs.Send", "RCS Message Sent"),
    ("users.messages.sms.Abort", "SMS Aborted"),
    ("users.messages.sms.CarrierSend", "SMS Sent to Carrier"),
    ("users.messages.sms.Delivery", "SMS Delivered"),
    ("users.messages.sms.DeliveryFailure", "SMS Delivery Failed"),
    ("users.messages.sms.InboundReceive", "SMS Received"),
    ("users.messages.sms.Rejection", "SMS Rejected"),
    ("users.messages.sms.Retry", "SMS Retried"),
    ("users.messages.sms.Send", "SMS Sent"),
    (
        "users.messages.sms.ShortLinkClick",
        "SMS Short Link Clicked",
    ),
    ("users.messages.webhook.Abort", "Webhook Aborted"),
    ("users.messages.webhook.Failure", "Webhook Failed"),
    ("users.messages.webhook.Retry", "Webhook Retried"),
    ("users.messages.webhook.Send", "Webhook Sent"),
    ("users.messages.whatsapp.Abort", "WhatsApp Message Aborted"),
    ("users.messages.whatsapp.Click", "WhatsApp Link Clicked"),
    (
        "users.messages.whatsapp.Delivery",
        "WhatsApp Message Delivered",
    ),
    ("users.messages.whatsapp.Failure", "WhatsApp Message Failed"),
    (
        "users.messages.whatsapp.InboundReceive",
        "WhatsApp Message Received",
    ),
    ("users.messages.whatsapp.Read", "WhatsApp Message Read"),
    ("users.messages.whatsapp.Retry", "WhatsApp Message Retried"),
    ("users.messages.whatsapp.Send", "WhatsApp Message Sent"),
    ("users.profile.Update", "User Profile Updated"),
];

/// The table entry of a known event type.
pub fn friendly_name(event_type: &str) -> Option<&'static str> {
    EVENT_NAMES
        .binary_search_by(|(t, _)| (*t).cmp(event_type))
        .ok()
        .map(|i| EVENT_NAMES[i].1)
}

/// The Heap event name of an event of this type that carries no custom name (for
/// `users.behaviors.CustomEvent`: one whose `properties.name` is missing or blank).
pub fn event_name(event_type: &str, opts: &MappingOptions) -> String {
    event_name_for(event_type, None, opts)
}

/// The Heap event name of an event: `custom_name` is `properties.name` when it is a string
/// (only used for `users.behaviors.CustomEvent` under friendly naming).
pub fn event_name_for(
    event_type: &str,
    custom_name: Option<&str>,
    opts: &MappingOptions,
) -> String {
    let base = match opts.naming() {
        Naming::Raw => event_type.to_string(),
        Naming::Friendly if event_type == CUSTOM_EVENT_TYPE => custom_event_base(custom_name),
        Naming::Friendly => match friendly_name(event_type) {
            Some(name) => name.to_string(),
            None => format!("{FALLBACK_PREFIX}{event_type}"),
        },
    };
    bound(format!("{}{base}", opts.prefix()))
}

fn custom_event_base(custom_name: Option<&str>) -> String {
    match custom_name {
        Some(name) if !name.trim().is_empty() => {
            if is_reserved_for_other_types(name) {
                format!("{CUSTOM_ESCAPE_PREFIX}{name}")
            } else {
                name.to_string()
            }
        }
        _ => friendly_name(CUSTOM_EVENT_TYPE)
            .unwrap_or("Custom Event")
            .to_string(),
    }
}

/// Whether a name could be produced by an event type other than `CustomEvent`.
fn is_reserved_for_other_types(name: &str) -> bool {
    name.starts_with(FALLBACK_PREFIX)
        || EVENT_NAMES
            .iter()
            .any(|(t, n)| *t != CUSTOM_EVENT_TYPE && *n == name)
}

/// Caps a name at Heap's 1024 characters, keeping long names distinct (see the module docs).
fn bound(name: String) -> String {
    if name.chars().count() <= MAX_EVENT_CHARS {
        return name;
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut out: String = name
        .chars()
        .take(MAX_EVENT_CHARS - HASH_SUFFIX_CHARS)
        .collect();
    out.push('~');
    out.push_str(&hex);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::currents::catalogue::KNOWN_EVENT_TYPES;

    fn opts(naming: &str, prefix: &str) -> MappingOptions {
        MappingOptions::from_parts(Some(naming), Some(prefix), None, &[], &[], &[]).unwrap()
    }

    #[test]
    fn table_covers_exactly_the_catalogue_in_order() {
        let types: Vec<&str> = EVENT_NAMES.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, KNOWN_EVENT_TYPES);
    }

    #[test]
    fn table_is_injective_and_disjoint_from_fallback_and_escape() {
        let names: BTreeSet<&str> = EVENT_NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(names.len(), EVENT_NAMES.len(), "two types share a name");
        for name in names {
            // No fallback name (`Braze Event: <anything>`) and no escaped custom name can be
            // a table name; friendly names are also never mistaken for raw ones.
            assert!(!name.starts_with(FALLBACK_PREFIX), "{name}");
            assert!(!name.starts_with(CUSTOM_ESCAPE_PREFIX), "{name}");
            assert!(!name.contains(['.', ':']), "{name}");
            assert!(!name.is_empty() && name.trim() == name, "{name:?}");
        }
    }

    #[test]
    fn known_unknown_and_raw() {
        let o = MappingOptions::default();
        assert_eq!(event_name("users.messages.email.Send", &o), "Email Sent");
        assert_eq!(
            event_name("users.messages.pushnotification.Open", &o),
            "Push Notification Opened"
        );
        assert_eq!(
            event_name("users.messages.pigeon.Send", &o),
            "Braze Event: users.messages.pigeon.Send"
        );
        assert_eq!(event_name("", &o), "Braze Event: ");
        // An unknown type spelled like a table name still cannot take that name.
        assert_eq!(event_name("Email Sent", &o), "Braze Event: Email Sent");
        let raw = opts("raw", "");
        assert_eq!(
            event_name("users.messages.email.Send", &raw),
            "users.messages.email.Send"
        );
        assert_eq!(
            event_name_for(CUSTOM_EVENT_TYPE, Some("Added to Cart"), &raw),
            CUSTOM_EVENT_TYPE
        );
    }

    #[test]
    fn prefix_is_prepended_to_the_final_name() {
        let o = opts("friendly", "braze-");
        assert_eq!(
            event_name("users.messages.email.Send", &o),
            "braze-Email Sent"
        );
        assert_eq!(
            event_name_for(CUSTOM_EVENT_TYPE, Some("Email Sent"), &o),
            "braze-Custom Event: Email Sent"
        );
        assert_eq!(
            event_name("users.messages.email.Send", &opts("raw", "braze-")),
            "braze-users.messages.email.Send"
        );
    }

    #[test]
    fn custom_event_names() {
        let o = MappingOptions::default();
        let name = |n: Option<&str>| event_name_for(CUSTOM_EVENT_TYPE, n, &o);
        assert_eq!(name(Some("Added to Cart")), "Added to Cart");
        assert_eq!(name(None), "Custom Event");
        assert_eq!(name(Some("")), "Custom Event");
        assert_eq!(name(Some(" \t")), "Custom Event");
        assert_eq!(name(Some("Custom Event")), "Custom Event");
        assert_eq!(name(Some("Email Sent")), "Custom Event: Email Sent");
        assert_eq!(
            name(Some("Braze Event: users.x.Y")),
            "Custom Event: Braze Event: users.x.Y"
        );
        // Not an exact table name: kept as the app named it.
        assert_eq!(name(Some("email sent")), "email sent");
    }

    #[test]
    fn long_names_are_cut_with_a_distinguishing_hash() {
        let o = opts("friendly", "braze-");
        let a = "é".repeat(2000);
        let b = format!("{}x", "é".repeat(1999));
        let na = event_name_for(CUSTOM_EVENT_TYPE, Some(&a), &o);
        let nb = event_name_for(CUSTOM_EVENT_TYPE, Some(&b), &o);
        assert_eq!(na.chars().count(), MAX_EVENT_CHARS);
        assert_eq!(nb.chars().count(), MAX_EVENT_CHARS);
        assert_ne!(na, nb);
        assert!(na.starts_with("braze-éé"));
        assert_eq!(
            na,
            event_name_for(CUSTOM_EVENT_TYPE, Some(&a), &o),
            "deterministic"
        );
        let exactly = "a".repeat(MAX_EVENT_CHARS - 6);
        assert_eq!(
            event_name_for(CUSTOM_EVENT_TYPE, Some(&exactly), &o),
            format!("braze-{exactly}")
        );
        let unknown = format!("users.{}", "x".repeat(3000));
        let n = event_name(&unknown, &o);
        assert!(n.starts_with("braze-Braze Event: users.xxx") && n.chars().count() == 1024);
    }
}
