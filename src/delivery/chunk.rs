//! Heap request bodies bounded in bytes.
//!
//! Why: Heap caps a bulk request at 1000 items but documents no body size (`heap-api.md` §(c)),
//! and Braze events reach 900 KB each. Counting items alone, one request once carried 68 MB:
//! more than any proxy in front of Heap is likely to take, a whole batch lost to one 413, and
//! the whole body in memory at once. So every bulk body is built to stay within
//! `--heap-max-request-bytes`, *before* it is sent, by the serialized size of its items: the
//! lane takes only as many events as fit (so the app budget is spent on exactly the events a
//! request carries), and a user-properties body, which has no event budget, is split here.
//! A single item larger than the cap is sent alone: it is never held back or dropped here (a
//! `413` for it ends as a `too_large` dead letter, like before).
//!
//! The sizes are exact, not estimates: a bulk body is `{"app_id":"…","events":[` + items joined
//! by `,` + `]}`, so its length is the empty body's length, plus each item's serialized length,
//! plus one comma between two items ([`BodySize`]); the unit tests check this against
//! `serde_json`.

use std::io;
use std::ops::Range;

use serde::Serialize;

use crate::heap::model::{TrackItem, UserPropertiesItem};

/// Body of a bulk track request over borrowed items (the shape of
/// [`crate::heap::model::BulkTrack`], without cloning the items).
#[derive(Serialize)]
struct TrackBody<'a> {
    app_id: &'a str,
    events: &'a [&'a TrackItem],
}

/// Body of a bulk add-user-properties request over borrowed items.
#[derive(Serialize)]
struct UsersBody<'a> {
    app_id: &'a str,
    users: &'a [&'a UserPropertiesItem],
}

/// The bulk track body of `events`.
pub fn track_body(app_id: &str, events: &[&TrackItem]) -> Vec<u8> {
    serde_json::to_vec(&TrackBody { app_id, events }).expect("track items serialize")
}

/// The bulk add-user-properties body of `users`.
pub fn users_body(app_id: &str, users: &[&UserPropertiesItem]) -> Vec<u8> {
    serde_json::to_vec(&UsersBody { app_id, users }).expect("user properties serialize")
}

/// Length of the bulk track body with no event: what every track request costs besides its
/// items.
pub fn track_overhead(app_id: &str) -> usize {
    track_body(app_id, &[]).len()
}

/// Length of the bulk add-user-properties body with no user.
pub fn users_overhead(app_id: &str) -> usize {
    users_body(app_id, &[]).len()
}

/// Serialized length of one item, counted without building the bytes.
pub fn serialized_len<T: Serialize + ?Sized>(item: &T) -> usize {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, item).expect("items serialize");
    counter.0
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A bulk body being filled: its exact length so far, against a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySize {
    max: usize,
    len: usize,
    items: usize,
}

impl BodySize {
    /// An empty body of `overhead` bytes that may grow to `max` bytes.
    pub fn new(overhead: usize, max: usize) -> Self {
        Self {
            max,
            len: overhead,
            items: 0,
        }
    }

    /// The body's length with one more item of `size` bytes.
    fn with(&self, size: usize) -> usize {
        self.len + size + usize::from(self.items > 0)
    }

    /// Whether an item of `size` bytes still fits. The first item always does: an item larger
    /// than the cap goes alone.
    pub fn fits(&self, size: usize) -> bool {
        self.items == 0 || self.with(size) <= self.max
    }

    /// Adds an item (whether or not it fits).
    pub fn add(&mut self, size: usize) {
        self.len = self.with(size);
        self.items += 1;
    }

    /// Adds the item if it fits; says whether it did.
    pub fn try_add(&mut self, size: usize) -> bool {
        let fits = self.fits(size);
        if fits {
            self.add(size);
        }
        fits
    }

    /// The body's exact length.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn items(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }
}

/// Splits items of the given serialized `sizes` into consecutive ranges, in order, such that
/// each range's bulk body (`overhead` + items + commas) is at most `max_body` bytes and holds
/// at most `max_items` items. Greedy: a range ends only when the next item would not fit. An
/// item larger than `max_body` on its own gets a range of its own. No item is left out.
pub fn split_by_size(
    sizes: &[usize],
    overhead: usize,
    max_body: usize,
    max_items: usize,
) -> Vec<Range<usize>> {
    let max_items = max_items.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut body = BodySize::new(overhead, max_body);
    for (i, &size) in sizes.iter().enumerate() {
        if body.items() >= max_items || !body.fits(size) {
            out.push(start..i);
            start = i;
            body = BodySize::new(overhead, max_body);
        }
        body.add(size);
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::heap::model::{Properties, PropertyValue};

    fn track(key: &str, props: usize, value_len: usize) -> TrackItem {
        let mut properties = Properties::new();
        for p in 0..props {
            properties.insert(
                format!("p{p}"),
                PropertyValue::Str("é\"x".repeat(value_len / 4 + 1)),
            );
        }
        TrackItem {
            identity: Some(format!("user-{key}")),
            user_id: None,
            event: "Email Sent".into(),
            timestamp: "2026-11-28T10:00:00Z".into(),
            idempotency_key: key.into(),
            properties,
        }
    }

    #[test]
    fn computed_body_length_is_the_serialized_length() {
        let items: Vec<TrackItem> = (0..7).map(|i| track(&i.to_string(), i, i * 10)).collect();
        let app_id = "1234567890";
        for n in 0..=items.len() {
            let refs: Vec<&TrackItem> = items[..n].iter().collect();
            let mut body = BodySize::new(track_overhead(app_id), usize::MAX);
            for item in &refs {
                body.add(serialized_len(*item));
            }
            let real = track_body(app_id, &refs);
            assert_eq!(body.len(), real.len(), "{n} items");
            // Same shape as the model's body.
            let owned: Vec<TrackItem> = items[..n].to_vec();
            let model = serde_json::to_vec(&crate::heap::model::BulkTrack {
                app_id,
                events: &owned,
            })
            .unwrap();
            assert_eq!(real, model);
        }
        let user = UserPropertiesItem {
            identity: "alice".into(),
            properties: track("k", 3, 5).properties,
        };
        let users = [&user, &user];
        let mut body = BodySize::new(users_overhead(app_id), usize::MAX);
        body.add(serialized_len(&user));
        body.add(serialized_len(&user));
        assert_eq!(body.len(), users_body(app_id, &users).len());
    }

    #[test]
    fn an_item_larger_than_the_cap_goes_alone() {
        let ranges = split_by_size(&[10, 500, 10, 10], 20, 100, 1000);
        assert_eq!(ranges, vec![0..1, 1..2, 2..4]);
        assert_eq!(split_by_size(&[500], 20, 100, 1000), vec![0..1]);
        assert!(split_by_size(&[], 20, 100, 1000).is_empty());
    }

    #[test]
    fn the_cap_is_inclusive_and_commas_count() {
        // 20 + 39 + 1 + 40 = 100: fits exactly; one byte more does not.
        assert_eq!(split_by_size(&[39, 40], 20, 100, 1000), vec![0..2]);
        assert_eq!(split_by_size(&[40, 40], 20, 100, 1000), vec![0..1, 1..2]);
    }

    #[test]
    fn the_item_count_caps_a_range_too() {
        assert_eq!(
            split_by_size(&[1; 5], 2, 1 << 20, 2),
            vec![0..2, 2..4, 4..5]
        );
    }

    proptest! {
        #[test]
        fn ranges_cover_every_item_once_in_order_within_the_cap(
            sizes in proptest::collection::vec(0usize..300, 0..60),
            overhead in 0usize..50,
            max_body in 1usize..1000,
            max_items in 1usize..20,
        ) {
            let ranges = split_by_size(&sizes, overhead, max_body, max_items);
            let mut next = 0;
            for r in &ranges {
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start);
                next = r.end;
                let len = r.len();
                prop_assert!(len <= max_items);
                let body = overhead + sizes[r.clone()].iter().sum::<usize>() + len - 1;
                prop_assert!(len == 1 || body <= max_body, "{:?} is {} bytes", r, body);
                // Greedy: the next item would not have fitted (or the count was reached).
                if r.end < sizes.len() {
                    prop_assert!(
                        len == max_items || body + 1 + sizes[r.end] > max_body,
                        "{:?} could have taken item {}", r, r.end
                    );
                }
            }
            prop_assert_eq!(next, sizes.len());
        }
    }
}
