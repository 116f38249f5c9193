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
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::delivery;
use crate::listeners::{self, cache, NewSource};
use crate::model::data::{Action, DataSpec};
use crate::model::event::EventRow;
use crate::model::listener::Source;
use crate::sessions;

mod json;
mod partitions;
mod row;
mod shapes;

/// Hook the capture caches into invalidations (from `_PG_init`).
pub fn init() {
    shapes::init();
    partitions::init();
}

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
    catalog::require_primary("herald.add_data_listener()");
    let handler = errors::required(handler, "handler");
    let events = errors::required(events, "events");
    let sync = errors::required(sync, "sync");
    let t = table_facts(tbl);
    let name = &t.name;
    match t.kind.as_str() {
        "r" | "p" => {}
        "" => raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("table with oid {} does not exist", tbl.to_u32()),
            None,
        ),
        _ => raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("\"{name}\" is not a table"),
            Some("Data listeners capture changes of ordinary and partitioned tables.".into()),
        ),
    }
    if t.internal {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("changes of {name} cannot be captured"),
            Some(
                "Herald's own tables and the system catalogs are never capturable; \
                 read herald.event_log or herald.queue_status instead."
                    .into(),
            ),
        );
    }
    if t.temporary {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("changes of temporary table {name} cannot be captured"),
            Some("A listener would outlive the table's session; use an ordinary table.".into()),
        );
    }
    if !t.schema_usage {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for schema {}", t.schema),
            Some("A role may only listen to changes of tables it may SELECT from.".into()),
        );
    }
    if !t.readable {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table {name}"),
            Some("A role may only listen to changes of tables it may SELECT from.".into()),
        );
    }
    if t.row_security {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "table {name} has row-level security, which applies to {}",
                t.role
            ),
            Some(
                "Events would show rows its policies hide. Listen as a role that \
                 bypasses row-level security (the table's owner, or a BYPASSRLS role)."
                    .into(),
            ),
        );
    }
    if sync && !t.trigger {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied for table {name}: a synchronous data listener needs TRIGGER"
            ),
            Some(
                "Its handler runs inside other roles' transactions, as a trigger would: \
                 GRANT TRIGGER ON TABLE ... to the listening role, or use a queue."
                    .into(),
            ),
        );
    }
    let handler_oid = listeners::resolve_handler(handler);
    let spec = DataSpec::parse(events);
    if spec.needs_key() && !t.has_key {
        raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("table {name} has no primary key, which level 1 (key only) needs"),
            Some("Add a primary key, or ask for levels 2 (changes) or 3 (full rows).".into()),
        );
    }
    if spec.needs_key() && !t.key_readable {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for a primary key column of table {name}"),
            Some(
                "Level 1 (key only) events show the whole primary key; ask for level 2 or 3."
                    .into(),
            ),
        );
    }
    let delivery = sessions::delivery(queue, sync);
    listeners::register(
        handler_oid,
        NewSource::DataChanges { table: tbl, spec },
        &delivery,
    )
}

/// What registering a data listener needs to know about its table, as the current user.
struct TableFacts {
    /// `relkind`, or empty when there is no such relation.
    kind: String,
    name: String,
    schema: String,
    role: String,
    /// In schema `herald`, a member of the extension, or a system catalog.
    internal: bool,
    temporary: bool,
    schema_usage: bool,
    readable: bool,
    trigger: bool,
    has_key: bool,
    key_readable: bool,
    /// Row-level security applies to the current user on this table.
    row_security: bool,
}

fn table_facts(tbl: pg_sys::Oid) -> TableFacts {
    let schema = catalog::oids().schema;
    errors::spi(Spi::connect(|client| {
        let rows = client.select(
            include_str!("table_facts.sql"),
            Some(1),
            &[tbl.into(), schema.into()],
        )?;
        let mut t = TableFacts {
            kind: String::new(),
            name: String::new(),
            schema: String::new(),
            role: String::new(),
            internal: false,
            temporary: false,
            schema_usage: false,
            readable: false,
            trigger: false,
            has_key: false,
            key_readable: false,
            row_security: false,
        };
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>(t);
        }
        let row = rows.first();
        let flag = |i: usize| row.get::<bool>(i).map(|b| b.unwrap_or(false));
        t.kind = row.get::<String>(1)?.unwrap_or_default();
        t.name = row.get::<String>(2)?.unwrap_or_default();
        t.schema = row.get::<String>(3)?.unwrap_or_default();
        t.role = row.get::<String>(4)?.unwrap_or_default();
        t.internal = flag(5)?;
        t.temporary = flag(6)?;
        t.schema_usage = flag(7)?;
        t.readable = flag(8)?;
        t.trigger = flag(9)?;
        t.has_key = flag(10)?;
        t.key_readable = flag(11)?;
        t.row_security = flag(12)?;
        Ok(t)
    }))
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
    let (relid, namespace) = unsafe { ((*rel).rd_id, (*(*rel).rd_rel).relnamespace) };
    if namespace == catalog::oids().schema {
        // Herald writes its own tables as the extension owner: capturing them would hand
        // its bookkeeping to listeners (and capturing herald.event would never end).
        raise(
            Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "herald._capture() must not be fired by Herald's own tables",
            Some("Drop the trigger: Herald's own tables are never capturable.".into()),
        );
    }
    cache::refresh();
    let set = cache::current();
    // SAFETY: the trigger data's trigger is valid for the whole call.
    let listened = partitions::listened_table(unsafe { &*data.tg_trigger }, relid);
    let table_listeners = set.on_table(listened);
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
    // A partition's row, for a parent's listeners: their columns mapped onto the partition's.
    let leaf = (listened != relid).then(|| partitions::leaf(listened, relid));
    let source_name = leaf
        .as_ref()
        .map_or(shape.source.as_str(), |l| l.source.as_str());
    // SAFETY: reads the current transaction's start time.
    let created_at = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let mut event_id: Option<i64> = None;
    for l in table_listeners.iter() {
        let Source::DataChanges(source) = &l.source else {
            continue;
        };
        let translated;
        let source = match &leaf {
            Some(leaf) => {
                translated = leaf.translate(source);
                &translated
            }
            None => source,
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
            source: Some(source_name),
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
