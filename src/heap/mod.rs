//! Everything that knows Heap's server-side API: request shapes ([`model`]), bulk bodies
//! bounded in bytes ([`bulk`]), the HTTPS client ([`client`]) and the classification of its
//! answers ([`retry`]). Nothing here knows Braze.

pub mod bulk;
pub mod client;
pub mod model;
pub mod retry;
