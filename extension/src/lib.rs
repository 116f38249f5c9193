//! Herald: a PostgreSQL extension for durable events, event queues, jobs and locks.
//!
//! `lib.rs` only wires the layers together. Dependencies point down only (a module may use
//! the layers listed before its own, never after; areas never use each other), and every
//! coupling is a `use` line at the top of its file: `tests/tests/layers.rs` fails when a
//! cycle, an upward edge or an inline `crate::` path appears.
//!
//! 1. [`core`]: PostgreSQL mechanics that know no Herald concept (errors, direct calls, kept
//!    plans, owner switching, subtransactions, advisory-lock key spaces, commit-time
//!    wake-ups, the invalidation registry)
//! 2. [`model`]: plain data: an event, a listener (source and delivery), data specs
//! 3. [`handlers`]: calling a handler function with a `herald.event`, as its owner
//! 4. [`listeners`]: registering and removing listeners, the per-backend listener cache,
//!    capture triggers' existence
//! 5. [`sessions`]: session listeners (`herald.next_event`), clean-up at session end
//! 6. [`delivery`]: one event to every listener of its type (queue, session or handler
//!    now), event-row storage; shared by user events and every area's system events
//! 7. areas, which never use each other: [`events`] (emit, capture, system listeners),
//!    [`queues`] (drain, wait, resume), [`jobs`] (types, classes, the lifecycle, claims,
//!    alerts), [`reports`] (reports, groups, artefacts, output records) and [`locks`]
//!    (resources, grants with fencing tokens, FIFO waiters, deadlock refusal); they meet
//!    in the layers below (the jobs area runs report jobs through [`model::runner`]);
//!    monitor comes next
//!
//! SQL data definition lives in `sql/<area>/`, loaded in the order declared below.
//!
//! # Unsafe code
//!
//! Herald calls PostgreSQL's C API directly where pgrx has no safe wrapper or where the
//! wrapper's cost matters on a producer's write path. The rules, enforced by the lints
//! below and by `cargo clippy` in `make test`:
//! - every `unsafe` block starts with a `// SAFETY:` comment saying why it is sound: which
//!   pointer is valid and why, which memory context owns what, which error boundary an
//!   `ERROR` longjmps to;
//! - every `unsafe fn` has a `# Safety` section stating what its caller must guarantee, and
//!   its body is written as if it were safe (`unsafe_op_in_unsafe_fn`);
//! - resources PostgreSQL expects to be released (opened relations) are RAII guards
//!   ([`core::relation`]), never "this closes `rel`" comments;
//! - code that runs without pgrx's per-call error boundary follows [`core::ffi`]'s rules.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use pgrx::prelude::*;

pub mod core;
pub mod delivery;
pub mod events;
pub mod handlers;
pub mod jobs;
pub mod listeners;
pub mod locks;
pub mod model;
pub mod queues;
pub mod reports;
pub mod sessions;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

// Data definition, per area, in load order (the Rust functions come between the tables
// and the triggers and views that call them; privileges come last).
extension_sql_file!("../../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../../sql/queues/schema.sql",
    name = "queues_schema",
    requires = ["bootstrap"]
);
extension_sql_file!(
    "../../sql/listeners/schema.sql",
    name = "listeners_schema",
    requires = ["queues_schema"]
);
extension_sql_file!(
    "../../sql/events/schema.sql",
    name = "events_schema",
    requires = ["listeners_schema"]
);
extension_sql_file!(
    "../../sql/sessions/schema.sql",
    name = "sessions_schema",
    requires = ["events_schema"]
);
extension_sql_file!(
    "../../sql/jobs/schema.sql",
    name = "jobs_schema",
    requires = ["sessions_schema"]
);
extension_sql_file!(
    "../../sql/reports/schema.sql",
    name = "reports_schema",
    requires = ["jobs_schema"]
);
extension_sql_file!(
    "../../sql/locks/schema.sql",
    name = "locks_schema",
    requires = ["reports_schema"]
);
extension_sql_file!(
    "../../sql/queues/triggers.sql",
    name = "queues_triggers",
    requires = [
        "locks_schema",
        queues::wait::_wake_queue,
        queues::wait::_wait_for_producers,
        listeners::_invalidate_listeners,
        core::advisory::_lock_space
    ]
);
extension_sql_file!(
    "../../sql/listeners/triggers.sql",
    name = "listeners_triggers",
    requires = ["queues_triggers", listeners::_invalidate_listeners]
);
extension_sql_file!(
    "../../sql/locks/triggers.sql",
    name = "locks_triggers",
    requires = [
        "listeners_triggers",
        locks::define::_wake_lock_waiters,
        locks::status::lock_status
    ]
);
extension_sql_file!("../../sql/privileges.sql", name = "privileges", finalize);

/// Called when a backend loads the library: hook each cache into relcache invalidations.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    handlers::init();
    listeners::cache::init();
    delivery::init();
    events::init();
    jobs::callee::init();
    jobs::store::init();
    jobs::submit::init();
    jobs::resources::init();
    reports::init();
    locks::for_jobs::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
