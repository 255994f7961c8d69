//! Whether to retry, apart from how: a pure classification of one Heap answer.
//!
//! Heap documents only 200 and 400 for ingestion (heap-api.md §(d)); everything else is our
//! policy. Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried; a 400
//! on a bulk request is bisected to isolate the offending items; a 413 splits the batch. Any
//! other answer (a 404 from a wrong base URL, say) is retried too: it is a configuration
//! problem an operator can fix, and dead-lettering the backlog meanwhile would only move the
//! work to a `dlq replay`.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};

/// What to do with the items of a request after Heap's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Retry later; `retry_after` (from the header) pauses the whole app id.
    Retry {
        reason: &'static str,
        retry_after: Option<Duration>,
    },
    /// 400: some item is invalid; split to find it (one item → dead letter).
    Bisect,
    /// 413: the request is too large; split it (one item → dead letter).
    Split,
}

/// Retry reasons (metric label values).
pub const RETRY_REASONS: &[&str] = &[
    "connect",
    "timeout",
    "status_408",
    "status_429",
    "status_5xx",
    "status_other",
];

/// Classifies an HTTP answer.
pub fn classify(status: StatusCode, retry_after: Option<&HeaderValue>, now: SystemTime) -> Verdict {
    let retry_after = retry_after.and_then(|v| parse_retry_after(v, now));
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        400 => Verdict::Bisect,
        413 => Verdict::Split,
        408 => Verdict::Retry {
            reason: "status_408",
            retry_after,
        },
        429 => Verdict::Retry {
            reason: "status_429",
            retry_after,
        },
        500..=599 => Verdict::Retry {
            reason: "status_5xx",
            retry_after,
        },
        _ => Verdict::Retry {
            reason: "status_other",
            retry_after,
        },
    }
}

/// Longest pause a `Retry-After` may impose; a larger value is clamped (a typo in a proxy
/// must not stop delivery for a day).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), clamped to
/// [`MAX_RETRY_AFTER`]. A date in the past means "now" (zero).
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let delay = if let Ok(secs) = text.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(text).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// `2xx`, `4xx`, `5xx`... for the status-class metric label.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Every value of the `status_class` label, including `error` for transport failures.
pub const STATUS_CLASSES: &[&str] = &["2xx", "3xx", "4xx", "5xx", "error"];

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn statuses_map_to_verdicts() {
        let now = SystemTime::now();
        let v = |code: u16| classify(StatusCode::from_u16(code).unwrap(), None, now);
        assert_eq!(v(200), Verdict::Delivered);
        assert_eq!(v(204), Verdict::Delivered);
        assert_eq!(v(400), Verdict::Bisect);
        assert_eq!(v(413), Verdict::Split);
        for (code, reason) in [
            (408, "status_408"),
            (429, "status_429"),
            (500, "status_5xx"),
            (503, "status_5xx"),
            (404, "status_other"),
            (302, "status_other"),
        ] {
            assert_eq!(
                v(code),
                Verdict::Retry {
                    reason,
                    retry_after: None
                },
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(
            parse_retry_after(&hv("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(&hv(" 0 "), now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&hv(&later), now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&hv(&earlier), now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(&hv("999999"), now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after(&hv("soon"), now), None);
        assert_eq!(parse_retry_after(&hv("-5"), now), None);
        let v = classify(StatusCode::TOO_MANY_REQUESTS, Some(&hv("7")), now);
        assert_eq!(
            v,
            Verdict::Retry {
                reason: "status_429",
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }
}
