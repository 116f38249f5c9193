//! `herald.add_system_listener`: listen to Herald's own events. Available now: `JOB` (job
//! starts and stops, alerts), `CALLOUT` (OS commands run by the coordinators) and `LOCK`
//! (resource locks acquired, waited for, released, expired, forced). The other
//! system event types of the contract (`SYSTEM`, `LOGIN`, `CALLIN`) are refused with a
//! clear error until they exist.
//!
//! System events tell about every job and command of every role, so only Herald
//! administrators may listen to them; a listener whose owner stops being one gets none.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::listeners::event_types::is_admin;
use crate::listeners::{self, NewSource};
use crate::sessions;

/// System event types that Herald produces.
const AVAILABLE: &[&str] = &["JOB", "CALLOUT", "LOCK"];
/// System event types of the contract that are not produced yet.
const NOT_YET: &[&str] = &["SYSTEM", "LOGIN", "CALLIN"];

#[pg_extern(volatile, parallel_unsafe)]
fn add_system_listener(
    handler: Option<&str>,
    event_types: Option<&str>,
    queue: default!(Option<&str>, "NULL"),
    sync: default!(Option<bool>, "false"),
) -> i64 {
    let handler = errors::required(handler, "handler");
    catalog::require_primary("herald.add_system_listener()");
    let event_types = errors::required(event_types, "event_types");
    let sync = errors::required(sync, "sync");
    if !is_admin() {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to listen to system events",
            Some(
                "System events tell about every role's jobs and commands: only Herald \
                 administrators (roles with the privileges of the extension's owner) may \
                 listen to them."
                    .into(),
            ),
        );
    }
    let types: Vec<String> = listeners::parse_event_types(event_types)
        .into_iter()
        .map(|t| t.to_uppercase())
        .collect();
    for t in &types {
        if NOT_YET.contains(&t.as_str()) {
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("system event type \"{t}\" is not available yet"),
                Some(format!(
                    "Available system event types: {}.",
                    AVAILABLE.join(", ")
                )),
            );
        }
        if !AVAILABLE.contains(&t.as_str()) {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("\"{}\" is not a system event type", errors::shown(t)),
                Some(format!(
                    "System event types: {}. User events are listened to with \
                     herald.add_event_listener().",
                    AVAILABLE.join(", ")
                )),
            );
        }
    }
    let handler_oid = listeners::resolve_handler(handler);
    let delivery = sessions::delivery(queue, sync);
    listeners::register(handler_oid, NewSource::SystemEvents(&types), &delivery)
}
