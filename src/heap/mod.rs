//! Everything that knows Heap's server-side API: request shapes ([`model`]), the HTTPS client
//! ([`client`]) and the classification of its answers ([`retry`]). Nothing here knows Braze.

pub mod client;
pub mod model;
pub mod retry;
