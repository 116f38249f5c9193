//! Events: where they come from and how each reaches its listeners.
//! - [`emit`]: user events (`herald.emit`, `herald.add_event_listener`)
//! - [`capture`]: data-change events (`herald.add_data_listener`, the capture trigger)
//!
//! Delivery to listeners is the layer below (`delivery`), shared with the system
//! events of other areas.
pub mod capture;
pub mod emit;

/// Hook this area's caches into relcache invalidations (from `_PG_init`).
pub fn init() {
    capture::init();
}
