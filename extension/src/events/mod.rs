//! Events: where they come from and how each reaches its listeners.
//! - [`emit`]: user events (`herald.emit`, `herald.add_event_listener`)
//! - [`capture`]: data-change events (`herald.add_data_listener`, the capture trigger)
//! - [`system`]: listening to Herald's own events (`herald.add_system_listener`)
//!
//! Delivery to listeners is the layer below (`delivery`), shared with the system
//! events of other areas.
pub mod capture;
pub mod emit;
pub mod system;

/// Hook this area's caches into relcache invalidations (from `_PG_init`).
pub fn init() {
    capture::init();
}
