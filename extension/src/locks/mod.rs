//! Durable resource locks: exclusive, or shared up to a limit; strict FIFO waiters woken by
//! the release that frees them; leases with fencing tokens; deadlocks refused when they
//! would form.
//!
//! - [`define`]: `herald.resource`, `herald.drop_resource`, and the wake-up when an
//!   operator changes a limit
//! - [`state`]: what holds and what waits on a resource, read as a dirty snapshot sees it
//!   (grants and waits of other transactions in progress included)
//! - [`acquire`]: `herald.lock_acquire`, `herald.lock_acquire_all`: decide, or queue and
//!   sleep on the latch until a release, a timeout or a cancel
//! - [`graph`]: the waits-for check that refuses a request closing a cycle
//! - [`holders`]: `herald.lock_renew`, `herald.lock_release`, `herald.lock_check`,
//!   `herald.force_release`, `herald.expire_locks`
//! - [`status`]: `herald.lock_status()`, behind the view `herald.locks`
//! - [`for_jobs`]: jobs that declare resources (the locks side of `model::gate`): their
//!   requests wait in line as committed rows, and whatever frees capacity lets them in
//!
//! A holder is a row of `herald.lock_holder` (committed with the acquiring transaction).
//! A waiting session's request is a row of `herald.lock_request` written in a
//! subtransaction of its call, rolled back when the wait ends, so it never outlives the
//! wait; others see it meanwhile through a dirty snapshot. Decisions on one resource are
//! taken one at a time (the resource's `LockDecision` advisory lock, held for the moment
//! of the decision only), against holders and requests as the dirty snapshot shows them:
//! a grant another transaction has made but not yet committed counts as held, a release
//! not yet committed still holds.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::advisory::{self, KeySpace};
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::lookup;
use crate::core::wakeup;
use crate::delivery;
use crate::listeners::event_types;

pub mod acquire;
pub mod define;
pub mod for_jobs;
pub mod graph;
pub mod holders;
pub mod state;
pub mod status;

/// A resource as its row reads now.
#[derive(Clone, Debug)]
pub struct Resource {
    pub name: String,
    pub shared: bool,
    pub limit: i32,
}

/// The resource `name`, read with the latest snapshot through its key.
pub fn find_resource(name: &str) -> Option<Resource> {
    let table = catalog::relation(c"resource");
    lookup::by_text_key(table, "name", name, |row| Resource {
        name: name.to_string(),
        shared: row.get::<String>("kind").as_deref() == Some("shared"),
        limit: row.get::<i32>("lock_limit").unwrap_or(0),
    })
}

/// The resource `name` (see [`find_resource`]); raises if there is none.
pub fn resource(name: &str) -> Resource {
    find_resource(name).unwrap_or_else(|| {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("resource \"{}\" does not exist", errors::shown(name)),
            Some("Define it with herald.resource(name, kind, lock_limit).".into()),
        )
    })
}

/// The key of a resource's advisory locks.
pub fn key(resource: &str) -> i32 {
    advisory::text_key(resource)
}

/// Wake the waiters of `resource` once this transaction commits.
pub fn wake_waiters_at_commit(resource: &str) {
    wakeup::wake_holders_at_commit(KeySpace::LockWaiters, key(resource));
}

/// A `LOCK` system event (`action` on `resource`), if anyone listens.
pub fn event(action: &str, resource: &str, details: serde_json::Value) {
    if delivery::has_system_listeners("LOCK") {
        let datum = pgrx::JsonB(details)
            .into_datum()
            .unwrap_or(pg_sys::Datum::from(0));
        delivery::publish_system("LOCK", action, resource, datum);
    }
}

fn is_admin() -> bool {
    event_types::is_admin()
}

/// Now, as timestamps are stored (microseconds since 2000-01-01).
pub fn now() -> i64 {
    // SAFETY: reads the clock; never raises.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A holder name: not empty, not NULL.
fn holder_name(holder: Option<&str>) -> String {
    let holder = errors::required(holder, "holder");
    if holder.trim().is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "holder must not be empty",
            Some("A holder names who holds the lock: a job, a worker, a session.".into()),
        );
    }
    holder.to_string()
}
