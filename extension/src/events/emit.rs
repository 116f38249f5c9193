//! `herald.emit` (user events) and `herald.add_event_listener`.
//!
//! `emit` is on the application's hot path, so it is a plain C-convention function: the
//! `details` jsonb datum is passed through to storage and handlers untouched (no parse, no
//! re-serialisation), listeners come from the per-backend cache, rows are inserted
//! directly (see `store`), and drainers are woken at commit through their latch.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::delivery;
use crate::listeners::{self, NewSource};
use crate::model::listener::RESERVED_TYPES;
use crate::sessions;

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_herald_emit() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `herald.emit(type text, action text, details jsonb DEFAULT '{}') RETURNS bigint`
///
/// # Safety
/// Called by the function manager, with a call frame for the SQL signature above.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn herald_emit(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fmgr passes a valid call frame holding `nargs` arguments.
    let args = unsafe { (*fcinfo).args.as_slice((*fcinfo).nargs as usize) };
    catalog::require_primary("herald.emit()");
    let text_arg = |i: usize, what: &str| -> String {
        match args.get(i) {
            Some(a) if !a.isnull => {
                // SAFETY: arguments 1 and 2 are declared `text`, and this one is not NULL.
                unsafe { String::from_datum(a.value, false) }.unwrap_or_default()
            }
            _ => errors::not_null(what),
        }
    };
    // Listener types are trimmed when registered; so is the emitted type.
    let r#type = text_arg(0, "event type").trim().to_string();
    let action = text_arg(1, "event action");
    let details = match args.get(2) {
        Some(a) if !a.isnull => a.value,
        Some(_) => errors::not_null("event details"),
        None => pgrx::JsonB(serde_json::json!({})).into_datum().unwrap(),
    };
    if r#type.trim().is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "event type must not be empty",
            None,
        );
    }
    if action.trim().is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "event action must not be empty",
            None,
        );
    }
    if RESERVED_TYPES.contains(&r#type.as_str()) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "event type \"{}\" is reserved for Herald's own events",
                r#type
            ),
            Some("Choose another type name for user events, e.g. 'invoice'.".into()),
        );
    }
    pg_sys::Datum::from(emit(&r#type, &action, details))
}

/// Deliver one user event to every listener of its type; returns the event id.
pub fn emit(r#type: &str, action: &str, details: pg_sys::Datum) -> i64 {
    let source = catalog::role_name(catalog::current_user());
    delivery::publish(r#type, action, &source, details)
}

/// `herald.add_event_listener(handler, event_types, queue, sync)`: listen to user events
/// emitted with `herald.emit`.
#[pg_extern(volatile, parallel_unsafe)]
fn add_event_listener(
    handler: Option<&str>,
    event_types: Option<&str>,
    queue: default!(Option<&str>, "NULL"),
    sync: default!(Option<bool>, "false"),
) -> i64 {
    let handler = errors::required(handler, "handler");
    catalog::require_primary("herald.add_event_listener()");
    let event_types = errors::required(event_types, "event_types");
    let sync = errors::required(sync, "sync");
    let handler_oid = listeners::resolve_handler(handler);
    let types = listeners::parse_event_types(event_types);
    listeners::refuse_reserved(&types);
    listeners::event_types::require_listenable(&types);
    let delivery = sessions::delivery(queue, sync);
    listeners::register(handler_oid, NewSource::UserEvents(&types), &delivery)
}

extension_sql!(
    r#"
CREATE FUNCTION herald.emit(type text, action text, details jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'herald_emit';
COMMENT ON FUNCTION herald.emit(text, text, jsonb) IS
    'Emit a user event to every listener of its type; returns the event id.';
"#,
    name = "emit",
    requires = ["events_schema"],
);
