//! The one batch builder: the Heap bulk request bodies of a batch of mapped events, bounded
//! in bytes. `serve` (the delivery lanes) and the `transform` subcommand both build their bodies
//! here, so what `transform` prints is what `serve` sends.
//!
//! Why bounded in bytes: Heap caps a bulk request at 1000 items but documents no body size (`heap-api.md` §(c)),
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

use std::collections::HashMap;
use std::io;
use std::ops::Range;

use serde::Serialize;

use crate::heap::model::{MAX_BULK_ITEMS, TrackItem, UserPropertiesItem};

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

/// The track requests of a batch, in order: consecutive ranges of `items`, each with its body
/// (at most `max_items` items, never more than [`MAX_BULK_ITEMS`], and at most `max_body`
/// bytes; an oversized item alone).
pub fn track_requests(
    app_id: &str,
    items: &[&TrackItem],
    max_items: usize,
    max_body: usize,
) -> Vec<(Range<usize>, Vec<u8>)> {
    let sizes: Vec<usize> = items.iter().map(|i| serialized_len(*i)).collect();
    let max_items = max_items.clamp(1, MAX_BULK_ITEMS);
    split_by_size(&sizes, track_overhead(app_id), max_body, max_items)
        .into_iter()
        .map(|r| {
            let body = track_body(app_id, &items[r.clone()]);
            (r, body)
        })
        .collect()
}

/// One add-user-properties request: the body and which updates (indexes into the batch's
/// updates) it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersRequest {
    pub members: Vec<usize>,
    pub body: Vec<u8>,
}

/// The add-user-properties requests of a batch. `updates` are `(event time, item)` pairs, the
/// time as the RFC 3339 UTC text of the Currents event.
///
/// Heap applies the items of one bulk request in no stated order, so the updates of one
/// profile are merged into one item first, the later event (by its time) winning each
/// property; then the merged items are cut into requests of at most [`MAX_BULK_ITEMS`] items
/// and `max_body` bytes. All updates of one identity travel in one request.
pub fn users_requests(
    app_id: &str,
    updates: &[(&str, &UserPropertiesItem)],
    max_body: usize,
) -> Vec<UsersRequest> {
    let (merged, part_of_update) = merge_by_identity(updates);
    let sizes: Vec<usize> = merged.iter().map(serialized_len).collect();
    let ranges = split_by_size(&sizes, users_overhead(app_id), max_body, MAX_BULK_ITEMS);
    let mut part_of_user = vec![0; merged.len()];
    for (k, range) in ranges.iter().enumerate() {
        part_of_user[range.clone()].fill(k);
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); ranges.len()];
    for (update, user) in part_of_update.into_iter().enumerate() {
        members[part_of_user[user]].push(update);
    }
    ranges
        .into_iter()
        .zip(members)
        .map(|(range, members)| {
            let users: Vec<&UserPropertiesItem> = merged[range].iter().collect();
            UsersRequest {
                members,
                body: users_body(app_id, &users),
            }
        })
        .collect()
}

/// One item per identity, in order of each identity's earliest update, and for each update
/// the index of the merged item it went into.
fn merge_by_identity(
    updates: &[(&str, &UserPropertiesItem)],
) -> (Vec<UserPropertiesItem>, Vec<usize>) {
    let mut order: Vec<usize> = (0..updates.len()).collect();
    // RFC 3339 UTC timestamps of one format sort as text; stable, so ties keep arrival order.
    order.sort_by(|&a, &b| updates[a].0.cmp(updates[b].0));
    let mut merged: Vec<UserPropertiesItem> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut into = vec![0; updates.len()];
    for i in order {
        let item = updates[i].1;
        into[i] = match index.get(item.identity.as_str()) {
            Some(&m) => {
                merged[m]
                    .properties
                    .extend(item.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
                m
            }
            None => {
                index.insert(&item.identity, merged.len());
                merged.push(item.clone());
                merged.len() - 1
            }
        };
    }
    (merged, into)
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

    fn props(identity: &str, pairs: &[(&str, &str)]) -> UserPropertiesItem {
        UserPropertiesItem {
            identity: identity.to_owned(),
            properties: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), PropertyValue::Str((*v).to_owned())))
                .collect(),
        }
    }

    #[test]
    fn two_updates_of_one_profile_merge_and_the_later_event_wins() {
        let newer = props("alice", &[("email", "new@x"), ("city", "Paris")]);
        let older = props("alice", &[("email", "old@x"), ("phone", "1")]);
        let bob = props("bob", &[("email", "b@x")]);
        let updates = [
            ("2026-01-02T00:00:00Z", &newer),
            ("2026-01-01T00:00:00Z", &bob),
            ("2026-01-01T00:00:00Z", &older),
        ];
        let requests = users_requests("7", &updates, usize::MAX);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].members, [0, 1, 2]);
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        let users = body["users"].as_array().unwrap();
        assert_eq!(users.len(), 2);
        let alice = users.iter().find(|u| u["identity"] == "alice").unwrap();
        assert_eq!(alice["properties"]["email"], "new@x");
        assert_eq!(alice["properties"].as_object().unwrap().len(), 3);
    }

    #[test]
    fn the_updates_of_one_identity_travel_in_one_request() {
        let big = "x".repeat(300);
        let items: Vec<UserPropertiesItem> = (0..6)
            .map(|i| {
                props(
                    &format!("user-{}", i % 3),
                    &[(&format!("p{i}"), big.as_str())],
                )
            })
            .collect();
        let updates: Vec<(&str, &UserPropertiesItem)> =
            items.iter().map(|i| ("2026-01-01T00:00:00Z", i)).collect();
        let requests = users_requests("7", &updates, 800);
        assert!(requests.len() > 1, "the cap splits the batch");
        let mut seen = vec![0; updates.len()];
        for r in &requests {
            assert!(r.body.len() <= 800 || r.members.iter().all(|m| m % 3 == r.members[0] % 3));
            for m in &r.members {
                seen[*m] += 1;
                // Every update of the same identity is in this request too.
                for other in (0..updates.len()).filter(|o| o % 3 == m % 3) {
                    assert!(r.members.contains(&other), "{m} and {other} apart");
                }
            }
        }
        assert!(
            seen.iter().all(|n| *n == 1),
            "each update in exactly one request"
        );
    }

    #[test]
    fn track_requests_cover_the_batch_in_order() {
        let items: Vec<TrackItem> = (0..5).map(|i| track(&i.to_string(), 2, 200)).collect();
        let refs: Vec<&TrackItem> = items.iter().collect();
        let one = serialized_len(&items[0]);
        let requests = track_requests("7", &refs, 1000, track_overhead("7") + 2 * one + 1);
        let ranges: Vec<Range<usize>> = requests.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, vec![0..2, 2..4, 4..5]);
        for (r, body) in &requests {
            assert_eq!(body, &track_body("7", &refs[r.clone()]));
        }
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
