//! Everything that knows Heap's server-side API: request shapes ([`model`]), bulk bodies
//! bounded in bytes ([`bulk`]), the HTTPS client ([`client`]) and the classification of its
//! answers ([`retry`]). Nothing here knows Braze.
//!
//! [`deletion`] is Heap's privacy API, which deletes users when Braze reports a user deletion
//! (product spec §7). It is a separate client because it is authenticated (an account API key
//! exchanged for a bearer token that lives 5 minutes, cached and renewed there), takes its own
//! batches (up to 10,000 users) and is followed up by status polls; deletion is idempotent at
//! Heap, so its callers may resubmit after a lost answer.

pub mod bulk;
pub mod client;
pub mod deletion;
pub mod model;
pub mod retry;
