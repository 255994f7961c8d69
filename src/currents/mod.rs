//! The Braze Currents wire model: parsing and structural validation of a batch.
//!
//! No I/O and no HTTP types live here. The check is deliberately narrow (product.md §3): an event
//! must be an object with a string `id` (at most 1024 bytes), a string `event_type` and an
//! integer `time` (within `i64`), none of them (nor `user`, `properties`) named twice. Everything
//! else — unknown event types, unknown fields, `null` or missing optional fields, an empty `user` —
//! is accepted, because Braze adds fields and types with little notice and answers a 400 by
//! dropping events for good. Events are kept as the exact bytes Braze sent ([`ValidEvent::raw`]):
//! the queue stores them verbatim, so a later mapping change or a dead-letter replay sees the
//! original event.

pub mod catalogue;
mod fields;
mod validate;

pub use validate::{
    BatchError, EventError, EventFields, MAX_ID_BYTES, ValidBatch, ValidEvent, object_entries,
    parse_batch, read_event, user_ids,
};
