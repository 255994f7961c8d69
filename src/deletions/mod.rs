//! Deletions on their way to Heap (product.md §7): one [`Submitter`] per Heap account walks the
//! ledger the store keeps — submit what is pending, poll what is submitted — until every
//! deletion is `complete`.
//!
//! Why the ledger drives everything: ingest records a deletion (and purges the user's events)
//! in the transaction that acknowledges it; from then on the ledger row is the only state. The
//! submitter holds nothing that a crash could lose: a row is `pending_submit` until Heap's
//! `deletion_request_id` is recorded with it (`submitted`), and `submitted` until Heap says
//! `complete`. A crash after Heap accepted a request but before its id was recorded leaves the
//! row `pending_submit`, so it is sent again: harmless, a deletion is idempotent at Heap.
//!
//! Why a settling delay before a submission: a lane may have had an event of the user in a
//! request already on its way to Heap when the deletion purged the queue. Submitting only rows
//! older than the Heap request timeout lets every such request finish first, so Heap deletes
//! after the last event of the user, not before it.
//!
//! Pacing and retries: one request to Heap's deletion API at a time per account, at least
//! `deletion_request_interval` apart; a transient failure (no answer, 408, 429, 5xx) waits the
//! delivery backoff (or Heap's `Retry-After`); a final refusal (a wrong key, a refused request)
//! marks the rows `failed` with Heap's message until `currents-heap deletions retry`.

mod submitter;

pub use submitter::{DeletionConfig, Submitter, SubmitterStep};
