//! `properties_dropped_total`: values the mapping left out.
//!
//! Process-wide, unlike every other collector: the delivery lanes count what their mapping (a
//! pure function) reports as left out, and one process runs one forwarder, so its registry
//! exports this counter as its own; tests that run several apps in one process see the sum and
//! compare differences.

use std::sync::LazyLock;

use prometheus::{Error, IntCounterVec, Registry};

const NAME: &str = "currents_heap_properties_dropped_total";

/// The counter, with every [`crate::transform::DROP_REASONS`] series at 0; or why it cannot be
/// built (then [`register`] fails, and so does the start).
static PROPERTIES_DROPPED: LazyLock<Result<IntCounterVec, String>> = LazyLock::new(|| {
    let build = || {
        let (opts, labels) = super::described(NAME, "counter", true)?;
        let counter = IntCounterVec::new(opts, &labels)?;
        Ok::<_, Error>(super::zeroed(counter, crate::transform::DROP_REASONS))
    };
    build().map_err(|e| e.to_string())
});

/// Counts one value the mapping left out.
pub fn count_dropped_value(reason: crate::transform::DropReason) {
    if let Ok(counter) = &*PROPERTIES_DROPPED {
        counter.with_label_values(&[reason.as_str()]).inc();
    }
}

/// Registers the process-wide counter in `registry`.
pub(super) fn register(registry: &Registry) -> Result<(), Error> {
    let counter = PROPERTIES_DROPPED
        .as_ref()
        .map_err(|e| Error::Msg(e.clone()))?;
    super::register(registry, counter.clone())?;
    Ok(())
}
