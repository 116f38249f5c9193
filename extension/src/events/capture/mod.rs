//! Data-change capture: `herald.add_data_listener` and the capture trigger.
//!
//! The first data listener on a table creates one row trigger (`herald_capture`) and one
//! TRUNCATE trigger (`herald_capture_truncate`) on it; removing the last listener drops them.
//! The trigger is a plain C-convention function: it reads the table's listeners from the
//! per-backend cache, builds each listener's `details` jsonb straight from the deformed rows
//! (no SPI, no intermediate records), and hands the event to the same delivery code as
//! `herald.emit`.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use self::row::RowChange;
use super::delivery;
use crate::core::errors::{self, raise};
use crate::listeners::{self, cache, NewSource};
use crate::model::data::{Action, DataSpec};
use crate::model::event::EventRow;
use crate::model::listener::Source;
use crate::sessions;

mod json;
mod row;
mod shapes;

pub use shapes::init;

/// `herald.add_data_listener(tbl, handler, events, queue, sync)`. The SQL signature is
/// written out to declare `tbl` as `regclass` (its datum is the table's oid).
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION herald.add_data_listener(
    tbl regclass, handler text, events text DEFAULT 'INSERT,UPDATE,DELETE',
    queue text DEFAULT NULL, sync boolean DEFAULT false)
RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'add_data_listener_wrapper';
COMMENT ON FUNCTION herald.add_data_listener(regclass, text, text, text, boolean) IS
    'Listen to data changes of a table; returns the listener id.';
"#
)]
fn add_data_listener(
    tbl: Option<pg_sys::Oid>,
    handler: Option<&str>,
    events: Option<&str>,
    queue: Option<&str>,
    sync: Option<bool>,
) -> i64 {
    let tbl = errors::required(tbl, "table");
    let handler = errors::required(handler, "handler");
    let events = errors::required(events, "events");
    let sync = errors::required(sync, "sync");
    let (kind, readable, has_key, name) = errors::spi(Spi::connect(|client| {
        let rows = client.select(
            "SELECT c.relkind::text, pg_catalog.has_table_privilege(c.oid, 'SELECT'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                             WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary),
                    c.oid::pg_catalog.regclass::text
               FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[tbl.into()],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>((None, false, false, String::new()));
        }
        let row = rows.first();
        Ok((
            row.get::<String>(1)?,
            row.get::<bool>(2)?.unwrap_or(false),
            row.get::<bool>(3)?.unwrap_or(false),
            row.get::<String>(4)?.unwrap_or_default(),
        ))
    }));
    match kind.as_deref() {
        Some("r") | Some("p") => {}
        None => raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("table with oid {} does not exist", tbl.to_u32()),
            None,
        ),
        Some(_) => raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("\"{name}\" is not a table"),
            Some("Data listeners capture changes of ordinary and partitioned tables.".into()),
        ),
    }
    if !readable {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table {name}"),
            Some("A role may only listen to changes of tables it may SELECT from.".into()),
        );
    }
    let handler_oid = listeners::resolve_handler(handler);
    let spec = DataSpec::parse(events);
    if spec.needs_key() && !has_key {
        raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("table {name} has no primary key, which level 1 (key only) needs"),
            Some("Add a primary key, or ask for levels 2 (changes) or 3 (full rows).".into()),
        );
    }
    let delivery = sessions::delivery(queue, sync);
    listeners::register(
        handler_oid,
        NewSource::DataChanges { table: tbl, spec },
        &delivery,
    )
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_herald_capture() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The capture trigger: `herald._capture()`.
///
/// # Safety
/// Called by the function manager; checks itself that it runs as a trigger.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn herald_capture(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fmgr passes a valid call frame; its context, when set, is a node whose tag
    // says what it is, and a TriggerData stays valid for the whole call.
    let data = unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            raise(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "herald._capture() may only be called as a trigger",
                None,
            );
        }
        &*(context as *const pg_sys::TriggerData)
    };
    let action = match data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => Action::Insert,
        pg_sys::TRIGGER_EVENT_UPDATE => Action::Update,
        pg_sys::TRIGGER_EVENT_DELETE => Action::Delete,
        _ => Action::Truncate,
    };
    // Only the triggers add_data_listener creates are valid: AFTER ... FOR EACH ROW for row
    // changes and AFTER TRUNCATE FOR EACH STATEMENT. Anything else would read tuples that
    // are not there (a statement trigger) or swallow the row (a BEFORE trigger).
    let after = data.tg_event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_AFTER;
    let per_row = data.tg_event & pg_sys::TRIGGER_EVENT_ROW != 0;
    if !after || per_row == (action == Action::Truncate) {
        raise(
            Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "herald._capture() must be fired AFTER each row (or AFTER TRUNCATE for each statement)",
            Some(
                "Do not create triggers on herald._capture() by hand: herald.add_data_listener() \
                 creates the right ones."
                    .into(),
            ),
        );
    }
    let rel = data.tg_relation;
    // SAFETY: the trigger's relation is open for the whole call.
    let relid = unsafe { (*rel).rd_id };
    let set = cache::current();
    let table_listeners = set.on_table(relid);
    if table_listeners.is_empty() {
        return pg_sys::Datum::from(0);
    }
    let (old, new) = match action {
        Action::Insert => (None, Some(data.tg_trigtuple)),
        Action::Update => (Some(data.tg_trigtuple), Some(data.tg_newtuple)),
        Action::Delete => (Some(data.tg_trigtuple), None),
        Action::Truncate => (None, None),
    };
    // SAFETY: `rel` and the trigger tuples stay valid for the whole call.
    let row = unsafe { RowChange::new(rel, old, new) };
    // SAFETY: `rel` is open.
    let shape = unsafe { shapes::of(rel) };
    // SAFETY: reads the current transaction's start time.
    let created_at = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let mut event_id: Option<i64> = None;
    for l in table_listeners.iter() {
        let Source::DataChanges(source) = &l.source else {
            continue;
        };
        let level = source.spec.level(action);
        if level == 0 {
            continue;
        }
        let Some(details) = row.details(action, level, source, &shape) else {
            continue; // an UPDATE that changed nothing this listener may see
        };
        let id = *event_id.get_or_insert_with(delivery::next_event_id);
        let event = EventRow {
            id,
            queue: None,
            r#type: "DATA",
            action: action.name(),
            source: Some(&shape.source),
            details,
            created_at,
            listener: l.id,
        };
        delivery::deliver(&event, l);
    }
    pg_sys::Datum::from(0)
}

extension_sql!(
    r#"
CREATE FUNCTION herald._capture() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'herald_capture';
COMMENT ON FUNCTION herald._capture() IS 'Herald''s data-change capture trigger (created by add_data_listener).';
"#,
    name = "capture_trigger",
    requires = ["events_schema"],
);
