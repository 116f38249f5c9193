//! Events: where they come from and how each reaches its listeners.
//! - [`emit`]: user events (`herald.emit`, `herald.add_event_listener`)
//! - [`capture`]: data-change events (`herald.add_data_listener`, the capture trigger)
//! - [`delivery`]: one event to one listener: its queue, its session, or its handler now
//! - [`store`]: event rows inserted directly into Herald's event tables
pub mod capture;
pub mod delivery;
pub mod emit;
pub mod store;

/// Hook this area's caches into relcache invalidations (from `_PG_init`).
pub fn init() {
    store::init();
    capture::init();
}
