//! Data-change capture: `herald.add_data_listener` and the capture trigger.
//!
//! The first data listener on a table creates one row trigger (`herald_capture`) and one
//! TRUNCATE trigger (`herald_capture_truncate`) on it; removing the last listener drops them.
//! The trigger is a plain C-convention function: it reads the table's listeners from the
//! per-backend cache, builds each listener's `details` with `to_jsonb` called through fmgr
//! (no SPI), and hands the event to the same delivery code as `herald.emit`.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use std::cell::RefCell;
use std::collections::HashMap;

use crate::catalog;
use crate::dispatch::EventValue;
use crate::errors::{self, raise};
use crate::events;
use crate::listeners::{self, Listener};

/// What a data listener asked for, per action: 0 off, 1 key, 2 changes, 3 full rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataSpec {
    pub insert: u8,
    pub update: u8,
    pub delete: u8,
    pub truncate: bool,
}

impl DataSpec {
    /// Parse `'INSERT,UPDATE=1,DELETE=3,TRUNCATE'`. A bare action means level 2 (TRUNCATE: on).
    pub fn parse(spec: &str) -> DataSpec {
        let hint = || {
            Some(
                "List actions INSERT, UPDATE, DELETE, each optionally =0 (off), =1 (key), =2 (changes, \
                 the default) or =3 (full rows), and TRUNCATE, e.g. 'INSERT,UPDATE=1,DELETE=3'."
                    .to_string(),
            )
        };
        let bad = |msg: String| -> ! { raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, msg, hint()) };
        let mut seen: Vec<String> = Vec::new();
        let mut out = DataSpec::default();
        if spec.trim().is_empty() {
            bad("the events spec is empty".into());
        }
        for part in spec.split(',') {
            let part = part.trim();
            let (action, level) = match part.split_once('=') {
                Some((a, l)) => (a.trim().to_ascii_uppercase(), Some(l.trim())),
                None => (part.to_ascii_uppercase(), None),
            };
            if action.is_empty() {
                bad(format!("the events spec \"{spec}\" has an empty entry"));
            }
            if seen.contains(&action) {
                bad(format!(
                    "action {action} appears twice in the events spec \"{spec}\""
                ));
            }
            seen.push(action.clone());
            let level: u8 = match level {
                None => 2,
                Some(l) => match l.parse::<u8>() {
                    Ok(n) if n <= 3 => n,
                    _ => bad(format!("level \"{l}\" of {action} must be 0, 1, 2 or 3")),
                },
            };
            match action.as_str() {
                "INSERT" => out.insert = level,
                "UPDATE" => out.update = level,
                "DELETE" => out.delete = level,
                "TRUNCATE" => match level {
                    0 => out.truncate = false,
                    1 | 2 => out.truncate = true,
                    _ => bad("TRUNCATE is on (TRUNCATE or TRUNCATE=1) or off (=0)".into()),
                },
                other => bad(format!("unknown action \"{other}\" in the events spec")),
            }
        }
        if out == DataSpec::default() {
            bad(format!("the events spec \"{spec}\" turns every action off"));
        }
        out
    }

    /// Stored form in `herald.listener.event_types`.
    pub fn items(&self) -> Vec<String> {
        let mut v = vec![
            format!("INSERT={}", self.insert),
            format!("UPDATE={}", self.update),
            format!("DELETE={}", self.delete),
        ];
        if self.truncate {
            v.push("TRUNCATE".into());
        }
        v
    }

    pub fn from_items(items: &[String]) -> DataSpec {
        let mut out = DataSpec::default();
        for item in items {
            let (action, level) = item.split_once('=').unwrap_or((item.as_str(), "1"));
            let level: u8 = level.parse().unwrap_or(0);
            match action {
                "INSERT" => out.insert = level,
                "UPDATE" => out.update = level,
                "DELETE" => out.delete = level,
                "TRUNCATE" => out.truncate = level > 0,
                _ => {}
            }
        }
        out
    }

    fn needs_key(&self) -> bool {
        self.insert == 1 || self.update == 1 || self.delete == 1
    }

    fn level(&self, action: Action) -> u8 {
        match action {
            Action::Insert => self.insert,
            Action::Update => self.update,
            Action::Delete => self.delete,
            Action::Truncate => self.truncate as u8,
        }
    }
}

/// What the cache keeps per data listener besides the common fields.
#[derive(Debug, Clone, Default)]
pub struct DataListenerInfo {
    pub spec: DataSpec,
    /// Primary key columns of the table.
    pub key: Vec<String>,
    /// Columns the listener's owner may not read: never shown in its events.
    pub hidden: Vec<String>,
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
    listeners::check_delivery(queue, sync);
    if queue.is_none() && !sync {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            "session listeners (neither queue nor sync) are not available in this version",
            Some("Pass queue => 'MyEventQueue' or sync => true.".into()),
        );
    }
    let id = listeners::insert_listener("data", handler_oid, &spec.items(), queue, sync, Some(tbl));
    ensure_trigger(tbl);
    id
}

/// Create the capture triggers on `tbl` unless they exist (as the extension owner).
fn ensure_trigger(tbl: pg_sys::Oid) {
    catalog::as_owner(|| {
        let exists = errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                             WHERE t.tgrelid OPERATOR(pg_catalog.=) $1
                               AND t.tgname OPERATOR(pg_catalog.=) 'herald_capture')",
            &[tbl.into()],
        ));
        if exists != Some(true) {
            let name = regclass_text(tbl);
            errors::spi(Spi::run(&format!(
                "CREATE TRIGGER herald_capture AFTER INSERT OR UPDATE OR DELETE ON {name}
                     FOR EACH ROW EXECUTE FUNCTION herald._capture();
                 CREATE TRIGGER herald_capture_truncate AFTER TRUNCATE ON {name}
                     FOR EACH STATEMENT EXECUTE FUNCTION herald._capture();"
            )));
        }
    });
}

/// Drop the capture triggers of `tbl` if no data listener is left on it.
pub fn drop_trigger_if_unused(tbl: pg_sys::Oid) {
    catalog::as_owner(|| {
        let used = errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM herald.listener l
                             WHERE l.tbl::pg_catalog.oid OPERATOR(pg_catalog.=) $1)
                 OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1)",
            &[tbl.into()],
        ));
        if used != Some(true) {
            let name = regclass_text(tbl);
            errors::spi(Spi::run(&format!(
                "DROP TRIGGER IF EXISTS herald_capture ON {name};
                 DROP TRIGGER IF EXISTS herald_capture_truncate ON {name};"
            )));
        }
    });
}

/// The table's name, schema-qualified and quoted as needed.
fn regclass_text(tbl: pg_sys::Oid) -> String {
    errors::spi(Spi::get_one_with_args::<String>(
        "SELECT $1::pg_catalog.regclass::text",
        &[tbl.into()],
    ))
    .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
            Action::Truncate => "TRUNCATE",
        }
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_herald_capture() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The capture trigger: `herald._capture()`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn herald_capture(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let context = (*fcinfo).context;
    if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
        raise(
            Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "herald._capture() may only be called as a trigger",
            None,
        );
    }
    let data = context as *mut pg_sys::TriggerData;
    let event = (*data).tg_event;
    let action = match event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => Action::Insert,
        pg_sys::TRIGGER_EVENT_UPDATE => Action::Update,
        pg_sys::TRIGGER_EVENT_DELETE => Action::Delete,
        _ => Action::Truncate,
    };
    let rel = (*data).tg_relation;
    let relid = (*rel).rd_id;
    let set = listeners::current();
    let table_listeners = set.on_table(relid);
    if table_listeners.is_empty() {
        return pg_sys::Datum::from(0);
    }
    let (old, new) = match action {
        Action::Insert => (None, Some((*data).tg_trigtuple)),
        Action::Update => (Some((*data).tg_trigtuple), Some((*data).tg_newtuple)),
        Action::Delete => (Some((*data).tg_trigtuple), None),
        Action::Truncate => (None, None),
    };
    let row = RowChange { rel, old, new };
    let mut event_id: Option<i64> = None;
    let source = relation_name(rel);
    let created_at = pg_sys::GetCurrentTransactionStartTimestamp();
    for l in table_listeners.iter() {
        let Some(info) = &l.data else { continue };
        let level = info.spec.level(action);
        if level == 0 {
            continue;
        }
        let Some(details) = row.details(action, level, info) else {
            continue; // an UPDATE that changed nothing this listener may see
        };
        let id = *event_id.get_or_insert_with(|| events::next_event_id());
        let value = EventValue {
            id,
            queue: None,
            r#type: "DATA".into(),
            action: action.name().into(),
            source: Some(source.clone()),
            details,
            created_at,
            listener: l.id,
        };
        deliver(&value, l);
    }
    pg_sys::Datum::from(0)
}

fn deliver(value: &EventValue, l: &Listener) {
    if l.queue.is_some() {
        events::enqueue(value, l);
    } else if l.sync {
        events::deliver_sync(value, l);
    }
}

unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    let schema = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
    let name = (*(*rel).rd_rel).relname.data.as_ptr();
    let q = |p: *const std::ffi::c_char| {
        std::ffi::CStr::from_ptr(pg_sys::quote_identifier(p))
            .to_string_lossy()
            .into_owned()
    };
    format!("{}.{}", q(schema), q(name))
}

/// One row change seen by the trigger.
struct RowChange {
    rel: pg_sys::Relation,
    old: Option<pg_sys::HeapTuple>,
    new: Option<pg_sys::HeapTuple>,
}

impl RowChange {
    /// The `details` of one listener's event, or None when an UPDATE changed nothing it
    /// would see at level 2.
    unsafe fn details(
        &self,
        action: Action,
        level: u8,
        info: &DataListenerInfo,
    ) -> Option<pg_sys::Datum> {
        let pairs: Vec<(&str, pg_sys::Datum)> = match (action, level) {
            (Action::Truncate, _) => vec![],
            (_, 1) => {
                let tuple = self.new.or(self.old).expect("a row");
                let drop = self.columns_except(&info.key);
                vec![("key", self.row_json(tuple, &drop))]
            }
            (Action::Update, 2) => {
                let unchanged = self.unchanged_columns();
                let mut drop = unchanged;
                drop.extend(info.hidden.iter().cloned());
                if self.visible_count(&drop) == 0 {
                    return None;
                }
                vec![
                    ("old", self.row_json(self.old.unwrap(), &drop)),
                    ("new", self.row_json(self.new.unwrap(), &drop)),
                ]
            }
            (Action::Update, _) => vec![
                ("old", self.row_json(self.old.unwrap(), &info.hidden)),
                ("new", self.row_json(self.new.unwrap(), &info.hidden)),
            ],
            (Action::Insert, _) => vec![("new", self.row_json(self.new.unwrap(), &info.hidden))],
            (Action::Delete, _) => vec![("old", self.row_json(self.old.unwrap(), &info.hidden))],
        };
        Some(json::object(&pairs))
    }

    fn tupdesc(&self) -> pg_sys::TupleDesc {
        unsafe { (*self.rel).rd_att }
    }

    fn attributes(&self) -> Vec<(usize, String, bool, i16)> {
        unsafe {
            let desc = self.tupdesc();
            let natts = (*desc).natts as usize;
            (*desc)
                .attrs
                .as_slice(natts)
                .iter()
                .enumerate()
                .filter(|(_, a)| !a.attisdropped)
                .map(|(i, a)| {
                    let name = std::ffi::CStr::from_ptr(a.attname.data.as_ptr())
                        .to_string_lossy()
                        .into_owned();
                    (i, name, a.attbyval, a.attlen)
                })
                .collect()
        }
    }

    fn columns_except(&self, keep: &[String]) -> Vec<String> {
        self.attributes()
            .into_iter()
            .map(|a| a.1)
            .filter(|n| !keep.contains(n))
            .collect()
    }

    fn visible_count(&self, dropped: &[String]) -> usize {
        self.attributes()
            .iter()
            .filter(|a| !dropped.contains(&a.1))
            .count()
    }

    /// Columns whose old and new values are identical (binary comparison).
    unsafe fn unchanged_columns(&self) -> Vec<String> {
        let desc = self.tupdesc();
        let (old, new) = (self.old.unwrap(), self.new.unwrap());
        let mut out = Vec::new();
        for (i, name, byval, len) in self.attributes() {
            let attnum = (i + 1) as i32;
            let (mut null_old, mut null_new) = (false, false);
            let a = pg_sys::heap_getattr(old, attnum, desc, &mut null_old);
            let b = pg_sys::heap_getattr(new, attnum, desc, &mut null_new);
            let same = match (null_old, null_new) {
                (true, true) => true,
                (false, false) => datums_identical(a, b, byval, len),
                _ => false,
            };
            if same {
                out.push(name);
            }
        }
        out
    }

    /// `to_jsonb(row) - dropped`.
    unsafe fn row_json(&self, tuple: pg_sys::HeapTuple, dropped: &[String]) -> pg_sys::Datum {
        let desc = self.tupdesc();
        let row = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
        let full = json::to_jsonb((*desc).tdtypeid, pg_sys::Datum::from(row));
        if dropped.is_empty() {
            full
        } else {
            json::without_keys(full, dropped)
        }
    }
}

/// Binary identity of two attribute values (as `datumIsEqual`): an unchanged TOASTed value
/// keeps the same toast pointer, so it compares identical without being fetched.
unsafe fn datums_identical(a: pg_sys::Datum, b: pg_sys::Datum, byval: bool, len: i16) -> bool {
    if byval {
        return a == b;
    }
    let (pa, pb) = (a.cast_mut_ptr::<u8>(), b.cast_mut_ptr::<u8>());
    let size = |p: *mut u8| -> usize {
        match len {
            -1 => pgrx::varlena::varsize_any(p as *const pg_sys::varlena),
            -2 => {
                std::ffi::CStr::from_ptr(p as *const std::ffi::c_char)
                    .to_bytes()
                    .len()
                    + 1
            }
            n => n as usize,
        }
    };
    let (sa, sb) = (size(pa), size(pb));
    sa == sb && std::slice::from_raw_parts(pa, sa) == std::slice::from_raw_parts(pb, sb)
}

/// jsonb built through fmgr, without SPI.
mod json {
    use super::*;

    thread_local! {
        /// to_jsonb call info per row type, and jsonb_build_object per argument count.
        static TO_JSONB: RefCell<HashMap<pg_sys::Oid, *mut pg_sys::FmgrInfo>> = RefCell::new(HashMap::new());
        static BUILD: RefCell<HashMap<usize, *mut pg_sys::FmgrInfo>> = RefCell::new(HashMap::new());
    }

    /// FmgrInfo for a polymorphic builtin, with a fake call expression that tells it the
    /// argument types (as the executor would).
    unsafe fn polymorphic(
        function: u32,
        result: pg_sys::Oid,
        arg_types: &[pg_sys::Oid],
    ) -> *mut pg_sys::FmgrInfo {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let mut args: *mut pg_sys::List = std::ptr::null_mut();
        for t in arg_types {
            let c = pg_sys::makeNullConst(*t, -1, pg_sys::InvalidOid);
            args = pg_sys::lappend(args, c as *mut std::ffi::c_void);
        }
        let expr = pg_sys::makeFuncExpr(
            pg_sys::Oid::from(function),
            result,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        let info =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info_cxt(pg_sys::Oid::from(function), info, pg_sys::TopMemoryContext);
        (*info).fn_expr = expr as *mut pg_sys::Node;
        pg_sys::MemoryContextSwitchTo(old);
        info
    }

    unsafe fn call(info: *mut pg_sys::FmgrInfo, args: &[pg_sys::Datum]) -> pg_sys::Datum {
        let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
            + args.len() * std::mem::size_of::<pg_sys::NullableDatum>();
        let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
        (*fcinfo).flinfo = info;
        (*fcinfo).nargs = args.len() as i16;
        (*fcinfo).fncollation = pg_sys::DEFAULT_COLLATION_OID;
        let slots = (*fcinfo).args.as_mut_slice(args.len());
        for (slot, value) in slots.iter_mut().zip(args) {
            *slot = pg_sys::NullableDatum {
                value: *value,
                isnull: false,
            };
        }
        let f = (*info).fn_addr.expect("builtin has an address");
        let result = pg_sys::ffi::pg_guard_ffi_boundary(|| f(fcinfo));
        pg_sys::pfree(fcinfo as *mut std::ffi::c_void);
        result
    }

    pub unsafe fn to_jsonb(row_type: pg_sys::Oid, row: pg_sys::Datum) -> pg_sys::Datum {
        let info = TO_JSONB.with(|m| {
            *m.borrow_mut()
                .entry(row_type)
                .or_insert_with(|| polymorphic(pg_sys::F_TO_JSONB, pg_sys::JSONBOID, &[row_type]))
        });
        call(info, &[row])
    }

    /// `{"k1": v1, ...}` from jsonb values.
    pub unsafe fn object(pairs: &[(&str, pg_sys::Datum)]) -> pg_sys::Datum {
        let n = pairs.len() * 2;
        let info = BUILD.with(|m| {
            *m.borrow_mut().entry(n).or_insert_with(|| {
                let types: Vec<pg_sys::Oid> = (0..n)
                    .map(|i| {
                        if i % 2 == 0 {
                            pg_sys::TEXTOID
                        } else {
                            pg_sys::JSONBOID
                        }
                    })
                    .collect();
                polymorphic(pg_sys::F_JSONB_BUILD_OBJECT_ANY, pg_sys::JSONBOID, &types)
            })
        });
        let mut args = Vec::with_capacity(n);
        for (k, v) in pairs {
            args.push(k.into_datum().expect("text"));
            args.push(*v);
        }
        call(info, &args)
    }

    /// `j - keys`.
    pub unsafe fn without_keys(j: pg_sys::Datum, keys: &[String]) -> pg_sys::Datum {
        let array = keys
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .into_datum()
            .expect("array");
        thread_local! {
            static DELETE: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
        }
        let oid = DELETE.with(|c| {
            if c.get() == pg_sys::InvalidOid {
                c.set(pg_sys::fmgr_internal_function(
                    c"jsonb_delete_array".as_ptr(),
                ));
            }
            c.get()
        });
        pg_sys::OidFunctionCall2Coll(oid, pg_sys::DEFAULT_COLLATION_OID, j, array)
    }
}

extension_sql!(
    r#"
CREATE FUNCTION herald._capture() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'herald_capture';
COMMENT ON FUNCTION herald._capture() IS 'Herald''s data-change capture trigger (created by add_data_listener).';
"#,
    name = "capture_trigger",
    requires = ["schema"],
);
