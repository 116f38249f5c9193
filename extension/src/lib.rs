//! Herald: a PostgreSQL extension for durable events, event queues, jobs and locks.
//!
//! `lib.rs` only wires the modules together; each concept lives in its own file:
//! - [`events`]: `herald.emit` and delivery of one event to its listeners
//! - [`capture`]: data-change capture (`herald.add_data_listener`, the capture trigger)
//! - [`listeners`]: registration, handler checks and the per-backend listener cache
//! - [`sessions`]: session listeners, `herald.next_event`, clean-up when a session ends
//! - [`queues`]: draining a queue (`herald.drain`), waiting for work, resuming held queues
//! - [`dispatch`]: building `herald.event` values and calling handlers in subtransactions
//! - [`wakeup`]: waking a queue's drainer at commit without NOTIFY
//! - [`plans`]: kept plans of Herald's internal statements
//! - [`raw`]: direct PostgreSQL calls for the producer hot paths, one error boundary per step
//! - [`catalog`]: backend-local lookups of Herald's own objects and owner switching
use pgrx::prelude::*;

mod capture;
mod catalog;
mod dispatch;
mod errors;
mod events;
mod listeners;
mod plans;
mod queues;
mod raw;
mod sessions;
mod wakeup;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
#[cfg(any(test, feature = "pg_test"))]
mod tests_capture;
#[cfg(any(test, feature = "pg_test"))]
mod tests_sessions;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../../sql/finalize.sql", name = "finalize", finalize);

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
