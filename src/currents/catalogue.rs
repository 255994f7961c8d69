//! The catalogue of Braze Currents event types known at build time.
//!
//! Taken from `braze-currents.md` §(c). It bounds the `event_type` metric label (unknown
//! types collapse to `other`); it never decides whether an event is accepted: unknown types
//! are valid and are queued like any other.

/// A Braze user deletion (GDPR / CCPA erasure): never an event for Heap, a deletion
/// (product.md §7).
pub const USER_DELETE_REQUEST: &str = "users.UserDeleteRequest";

/// Every known Currents `event_type`, sorted.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "agentconsole.AgentExecuted",
    "agentconsole.ToolInvocation",
    "users.RandomBucketNumberUpdate",
    "users.UserDeleteRequest",
    "users.UserOrphan",
    "users.behaviors.CustomEvent",
    "users.behaviors.InstallAttribution",
    "users.behaviors.Location",
    "users.behaviors.Purchase",
    "users.behaviors.Uninstall",
    "users.behaviors.app.FirstSession",
    "users.behaviors.app.SessionEnd",
    "users.behaviors.app.SessionStart",
    "users.behaviors.liveactivity.PushToStartTokenChange",
    "users.behaviors.liveactivity.UpdateTokenChange",
    "users.behaviors.pushnotification.TokenStateChange",
    "users.behaviors.subscription.GlobalStateChange",
    "users.behaviors.subscriptiongroup.StateChange",
    "users.campaigns.Conversion",
    "users.campaigns.EnrollInControl",
    "users.canvas.Conversion",
    "users.canvas.Entry",
    "users.canvas.costep.Send",
    "users.canvas.exit.MatchedAudience",
    "users.canvas.exit.PerformedEvent",
    "users.canvas.experimentstep.Conversion",
    "users.canvas.experimentstep.SplitEntry",
    "users.canvasstep.Progression",
    "users.messages.banner.Abort",
    "users.messages.banner.Click",
    "users.messages.banner.Dismiss",
    "users.messages.banner.Impression",
    "users.messages.contentcard.Abort",
    "users.messages.contentcard.Click",
    "users.messages.contentcard.Dismiss",
    "users.messages.contentcard.Impression",
    "users.messages.contentcard.Send",
    "users.messages.email.Abort",
    "users.messages.email.Bounce",
    "users.messages.email.Click",
    "users.messages.email.Deferral",
    "users.messages.email.Delivery",
    "users.messages.email.MarkAsSpam",
    "users.messages.email.Open",
    "users.messages.email.Retry",
    "users.messages.email.Send",
    "users.messages.email.SoftBounce",
    "users.messages.email.Unsubscribe",
    "users.messages.featureflag.Impression",
    "users.messages.inappmessage.Abort",
    "users.messages.inappmessage.Click",
    "users.messages.inappmessage.Impression",
    "users.messages.line.Abort",
    "users.messages.line.Click",
    "users.messages.line.InboundReceive",
    "users.messages.line.Retry",
    "users.messages.line.Send",
    "users.messages.liveactivity.Outcome",
    "users.messages.liveactivity.Send",
    "users.messages.newsfeedcard.Abort",
    "users.messages.newsfeedcard.Click",
    "users.messages.newsfeedcard.Impression",
    "users.messages.pushnotification.Abort",
    "users.messages.pushnotification.Bounce",
    "users.messages.pushnotification.IosForeground",
    "users.messages.pushnotification.Open",
    "users.messages.pushnotification.Retry",
    "users.messages.pushnotification.Send",
    "users.messages.rcs.Abort",
    "users.messages.rcs.Click",
    "users.messages.rcs.Delivery",
    "users.messages.rcs.InboundReceive",
    "users.messages.rcs.Read",
    "users.messages.rcs.Rejection",
    "users.messages.rcs.Send",
    "users.messages.sms.Abort",
    "users.messages.sms.CarrierSend",
    "users.messages.sms.Delivery",
    "users.messages.sms.DeliveryFailure",
    "users.messages.sms.InboundReceive",
    "users.messages.sms.Rejection",
    "users.messages.sms.Retry",
    "users.messages.sms.Send",
    "users.messages.sms.ShortLinkClick",
    "users.messages.webhook.Abort",
    "users.messages.webhook.Failure",
    "users.messages.webhook.Retry",
    "users.messages.webhook.Send",
    "users.messages.whatsapp.Abort",
    "users.messages.whatsapp.Click",
    "users.messages.whatsapp.Delivery",
    "users.messages.whatsapp.Failure",
    "users.messages.whatsapp.InboundReceive",
    "users.messages.whatsapp.Read",
    "users.messages.whatsapp.Retry",
    "users.messages.whatsapp.Send",
    "users.profile.Update",
];

/// The value of the `event_type` metric label: the type itself when it is in the catalogue,
/// `other` otherwise, so unknown or hostile types never create new series.
pub fn metric_label(event_type: &str) -> &'static str {
    match KNOWN_EVENT_TYPES.binary_search(&event_type) {
        Ok(i) => KNOWN_EVENT_TYPES[i],
        Err(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_sorted_and_unique() {
        assert!(KNOWN_EVENT_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert!(KNOWN_EVENT_TYPES.len() > 90);
    }

    #[test]
    fn unknown_types_collapse_to_other() {
        assert_eq!(
            metric_label("users.messages.email.Send"),
            "users.messages.email.Send"
        );
        assert_eq!(metric_label("users.messages.carrierpigeon.Send"), "other");
        assert_eq!(metric_label(""), "other");
    }
}
