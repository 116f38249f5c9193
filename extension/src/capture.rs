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
use std::cell::RefCell;
use std::collections::HashMap;

use crate::catalog;
use crate::dispatch::EventRow;
use crate::errors::{self, raise};
use crate::events;
use crate::listeners;
use crate::raw;

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

/// A set of columns of a table, by attribute index (attnum - 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cols(Vec<u64>);

impl Cols {
    /// From 1-based attnums.
    pub fn of(attnums: &[i32]) -> Cols {
        let mut c = Cols::default();
        for &a in attnums {
            if a > 0 {
                c.insert((a - 1) as usize);
            }
        }
        c
    }
    fn insert(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    fn minus(&self, other: &Cols) -> Cols {
        let mut out = self.clone();
        for (i, w) in out.0.iter_mut().enumerate() {
            *w &= !other.0.get(i).copied().unwrap_or(0);
        }
        out.trim()
    }
    fn trim(mut self) -> Cols {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        self
    }
}

/// What the cache keeps per data listener besides the common fields.
#[derive(Debug, Clone, Default)]
pub struct DataListenerInfo {
    pub spec: DataSpec,
    /// Primary key columns of the table.
    pub key: Cols,
    /// Columns the listener's owner may not read: never shown in its events.
    pub hidden: Cols,
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

/// As `drop_trigger_if_unused`, but never waits for a lock on the table: a session that is
/// ending must not hang behind a long transaction. A trigger left behind costs one cache
/// lookup per row and goes with the next registration's clean-up or removal.
pub fn drop_trigger_if_unused_nowait(tbl: pg_sys::Oid) {
    let locked = unsafe {
        pg_sys::ConditionalLockRelationOid(tbl, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE)
    };
    if locked {
        drop_trigger_if_unused(tbl);
    }
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
    let row = RowChange::new(rel, old, new);
    let mut event_id: Option<i64> = None;
    let shape = shapes::of(rel);
    let created_at = pg_sys::GetCurrentTransactionStartTimestamp();
    for l in table_listeners.iter() {
        let Some(info) = &l.data else { continue };
        let level = info.spec.level(action);
        if level == 0 {
            continue;
        }
        let Some(details) = row.details(action, level, info, &shape) else {
            continue; // an UPDATE that changed nothing this listener may see
        };
        let id = *event_id.get_or_insert_with(events::next_event_id);
        let value = EventRow {
            id,
            queue: None,
            r#type: "DATA",
            action: action.name(),
            source: Some(&shape.source),
            details,
            created_at,
            listener: l.id,
        };
        events::deliver(&value, l);
    }
    pg_sys::Datum::from(0)
}

/// One row change seen by the trigger, with both rows deformed once.
struct RowChange {
    rel: pg_sys::Relation,
    old: Option<Row>,
    new: Option<Row>,
    /// All live columns of the table.
    all: Cols,
}

struct Row {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Row {
    unsafe fn deform(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Row {
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        Row { values, nulls }
    }
}

impl RowChange {
    unsafe fn new(
        rel: pg_sys::Relation,
        old: Option<pg_sys::HeapTuple>,
        new: Option<pg_sys::HeapTuple>,
    ) -> RowChange {
        let desc = (*rel).rd_att;
        let mut all = Cols::default();
        for (i, a) in (*desc)
            .attrs
            .as_slice((*desc).natts as usize)
            .iter()
            .enumerate()
        {
            if !a.attisdropped {
                all.insert(i);
            }
        }
        RowChange {
            rel,
            old: old.map(|t| Row::deform(t, desc)),
            new: new.map(|t| Row::deform(t, desc)),
            all,
        }
    }

    fn desc(&self) -> pg_sys::TupleDesc {
        unsafe { (*self.rel).rd_att }
    }

    /// The `details` of one listener's event, or None when an UPDATE changed nothing it
    /// would see at level 2. Built straight from the deformed rows (see `json`).
    unsafe fn details(
        &self,
        action: Action,
        level: u8,
        info: &DataListenerInfo,
        shape: &shapes::Shape,
    ) -> Option<pg_sys::Datum> {
        let visible = self.all.minus(&info.hidden);
        let parts: Vec<(&'static str, &Row, Cols)> = match (action, level) {
            (Action::Truncate, _) => vec![],
            (_, 1) => {
                let row = self.new.as_ref().or(self.old.as_ref()).expect("a row");
                vec![("key", row, info.key.clone())]
            }
            (Action::Update, 2) => {
                let changed = visible.minus(&self.unchanged_columns());
                if changed.is_empty() {
                    return None;
                }
                vec![
                    ("old", self.old.as_ref()?, changed.clone()),
                    ("new", self.new.as_ref()?, changed),
                ]
            }
            (Action::Update, _) => vec![
                ("old", self.old.as_ref()?, visible.clone()),
                ("new", self.new.as_ref()?, visible),
            ],
            (Action::Insert, _) => vec![("new", self.new.as_ref()?, visible)],
            (Action::Delete, _) => vec![("old", self.old.as_ref()?, visible)],
        };
        Some(json::details(self.desc(), shape, &parts))
    }

    /// Columns whose old and new values are identical (binary comparison).
    unsafe fn unchanged_columns(&self) -> Cols {
        let (Some(old), Some(new)) = (&self.old, &self.new) else {
            return Cols::default();
        };
        let desc = self.desc();
        let mut out = Cols::default();
        for (i, a) in (*desc)
            .attrs
            .as_slice((*desc).natts as usize)
            .iter()
            .enumerate()
        {
            let same = match (old.nulls[i], new.nulls[i]) {
                (true, true) => true,
                (false, false) => {
                    datums_identical(old.values[i], new.values[i], a.attbyval, a.attlen)
                }
                _ => false,
            };
            if same {
                out.insert(i);
            }
        }
        out
    }
}

/// What the trigger keeps per captured table and backend: the `source` name of its events
/// and, per column, the `to_jsonb` call info for types `json::details` does not convert
/// itself. Forgotten with the listener cache (any DDL on a captured table).
mod shapes {
    use super::*;

    pub struct Shape {
        pub source: String,
        /// Per attribute: its type, and the `to_jsonb` info when the type needs one.
        pub columns: Vec<(pg_sys::Oid, *mut pg_sys::FmgrInfo)>,
    }

    thread_local! {
        static SHAPES: RefCell<HashMap<pg_sys::Oid, std::rc::Rc<Shape>>> = RefCell::new(HashMap::new());
    }

    /// The shape of an open captured table.
    pub unsafe fn of(rel: pg_sys::Relation) -> std::rc::Rc<Shape> {
        let relid = (*rel).rd_id;
        let desc = (*rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        if let Some(shape) = SHAPES.with(|s| s.borrow().get(&relid).cloned()) {
            let current = shape.columns.len() == attrs.len()
                && shape
                    .columns
                    .iter()
                    .zip(attrs)
                    .all(|(c, a)| c.0 == a.atttypid);
            if current {
                return shape;
            }
        }
        let columns = attrs
            .iter()
            .map(|a| {
                let info = if a.attisdropped || json::converts(a.atttypid) {
                    std::ptr::null_mut()
                } else {
                    json::to_jsonb_info(a.atttypid)
                };
                (a.atttypid, info)
            })
            .collect();
        let shape = std::rc::Rc::new(Shape {
            source: catalog::qualified_name(rel),
            columns,
        });
        SHAPES.with(|s| s.borrow_mut().insert(relid, shape.clone()));
        shape
    }

    /// Forget every table. Never raises.
    pub fn invalidate() {
        SHAPES.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.clear();
            }
        });
    }
}

/// Forget cached table names (called when the listener cache is invalidated).
pub fn invalidate_shapes() {
    shapes::invalidate();
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

/// Building `details` jsonb without SPI and without going through a record: the trigger
/// pushes each column's value straight into a jsonb builder. Common scalar types are
/// converted here, exactly as `to_jsonb` converts them; every other type goes through
/// `to_jsonb(value)` called with fmgr.
mod json {
    use super::*;
    use pg_sys::JsonbIteratorToken::{WJB_BEGIN_OBJECT, WJB_END_OBJECT, WJB_KEY, WJB_VALUE};

    thread_local! {
        /// `to_jsonb` call info per value type (kept for the backend's life).
        static TO_JSONB: RefCell<HashMap<pg_sys::Oid, *mut pg_sys::FmgrInfo>> = RefCell::new(HashMap::new());
    }

    /// Does `scalar` convert values of this type itself (always, or in the common case:
    /// numeric NaN and infinities still go through `to_jsonb`)?
    pub fn converts(type_oid: pg_sys::Oid) -> bool {
        #[cfg(not(feature = "pg13"))]
        if matches!(
            type_oid,
            pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID
        ) {
            return true;
        }
        matches!(
            type_oid,
            pg_sys::BOOLOID | pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::JSONBOID
        )
    }

    /// `{"name": {"column": value, ...}, ...}` for each `(name, row, columns)` part, built
    /// inside one error boundary (see `raw`).
    pub unsafe fn details(
        desc: pg_sys::TupleDesc,
        shape: &shapes::Shape,
        parts: &[(&'static str, &Row, Cols)],
    ) -> pg_sys::Datum {
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        raw::guarded(|| build(attrs, shape, parts))
    }

    /// # Safety
    /// Inside `raw::guarded`; `shape` describes the table of `attrs` (checked by `shapes::of`).
    unsafe fn build(
        attrs: &[pg_sys::FormData_pg_attribute],
        shape: &shapes::Shape,
        parts: &[(&'static str, &Row, Cols)],
    ) -> pg_sys::Datum {
        unsafe {
            let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
            raw::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
            for (name, row, cols) in parts {
                let mut key = string(name.as_ptr() as *mut std::ffi::c_char, name.len());
                raw::pushJsonbValue(&mut state, WJB_KEY, &mut key);
                raw::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
                for (i, a) in attrs.iter().enumerate() {
                    if !cols.contains(i) || a.attisdropped {
                        continue;
                    }
                    let attname = a.attname.data.as_ptr() as *mut std::ffi::c_char;
                    let mut key =
                        string(attname, std::ffi::CStr::from_ptr(attname).to_bytes().len());
                    raw::pushJsonbValue(&mut state, WJB_KEY, &mut key);
                    let mut value =
                        scalar(a.atttypid, shape.columns[i].1, row.values[i], row.nulls[i]);
                    raw::pushJsonbValue(&mut state, WJB_VALUE, &mut value);
                }
                raw::pushJsonbValue(&mut state, WJB_END_OBJECT, std::ptr::null_mut());
            }
            let result = raw::pushJsonbValue(&mut state, WJB_END_OBJECT, std::ptr::null_mut());
            pg_sys::Datum::from(raw::JsonbValueToJsonb(result))
        }
    }

    fn string(ptr: *mut std::ffi::c_char, len: usize) -> pg_sys::JsonbValue {
        let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
        v.type_ = pg_sys::jbvType::jbvString;
        v.val.string.val = ptr;
        v.val.string.len = len as i32;
        v
    }

    /// One column value as a jsonb value (pushJsonbValue copies nothing until the end, so
    /// the pointers must stay valid until `JsonbValueToJsonb`; they point into the row or
    /// into memory of the current context). Inside `raw::guarded`; `info` is the type's
    /// `to_jsonb` info unless `converts(type_oid)`.
    unsafe fn scalar(
        type_oid: pg_sys::Oid,
        info: *mut pg_sys::FmgrInfo,
        datum: pg_sys::Datum,
        null: bool,
    ) -> pg_sys::JsonbValue {
        unsafe {
            let mut v: pg_sys::JsonbValue = std::mem::zeroed();
            if null {
                v.type_ = pg_sys::jbvType::jbvNull;
                return v;
            }
            match type_oid {
                pg_sys::BOOLOID => {
                    v.type_ = pg_sys::jbvType::jbvBool;
                    v.val.boolean = datum.value() != 0;
                    return v;
                }
                #[cfg(not(feature = "pg13"))]
                pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => {
                    let n = match type_oid {
                        pg_sys::INT2OID => datum.value() as i16 as i64,
                        pg_sys::INT4OID => datum.value() as i32 as i64,
                        _ => datum.value() as i64,
                    };
                    v.type_ = pg_sys::jbvType::jbvNumeric;
                    v.val.numeric = raw::int64_to_numeric(n);
                    return v;
                }
                pg_sys::NUMERICOID => {
                    let n = raw::pg_detoast_datum(datum.cast_mut_ptr()) as pg_sys::Numeric;
                    // NaN and infinities are not JSON numbers: to_jsonb makes them strings
                    if !raw::numeric_is_nan(n) && !numeric_is_inf(n) {
                        v.type_ = pg_sys::jbvType::jbvNumeric;
                        v.val.numeric = n;
                        return v;
                    }
                }
                pg_sys::TEXTOID | pg_sys::VARCHAROID => {
                    let t = raw::pg_detoast_datum_packed(datum.cast_mut_ptr());
                    return string(
                        pgrx::varlena::vardata_any(t) as *mut std::ffi::c_char,
                        pgrx::varlena::varsize_any_exhdr(t),
                    );
                }
                pg_sys::JSONBOID => {
                    let jb = raw::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
                    return binary(jb);
                }
                _ => {}
            }
            // Everything else: to_jsonb(value), embedded (pushJsonbValue unpacks binary values).
            binary(call(info, datum).cast_mut_ptr::<pg_sys::Jsonb>())
        }
    }

    unsafe fn binary(jb: *mut pg_sys::Jsonb) -> pg_sys::JsonbValue {
        unsafe {
            let mut v: pg_sys::JsonbValue = std::mem::zeroed();
            v.type_ = pg_sys::jbvType::jbvBinary;
            v.val.binary.data = &mut (*jb).root;
            v.val.binary.len =
                (pgrx::varlena::varsize(jb as *const pg_sys::varlena) - pg_sys::VARHDRSZ) as i32;
            v
        }
    }

    #[cfg(not(feature = "pg13"))]
    unsafe fn numeric_is_inf(n: pg_sys::Numeric) -> bool {
        unsafe { raw::numeric_is_inf(n) }
    }

    #[cfg(feature = "pg13")]
    unsafe fn numeric_is_inf(_n: pg_sys::Numeric) -> bool {
        false // numeric has no infinities before PostgreSQL 14
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

    /// One-argument call of a builtin, inside `raw::guarded`.
    unsafe fn call(info: *mut pg_sys::FmgrInfo, arg: pg_sys::Datum) -> pg_sys::Datum {
        unsafe {
            let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                + std::mem::size_of::<pg_sys::NullableDatum>();
            let fcinfo = raw::palloc0(size) as pg_sys::FunctionCallInfo;
            (*fcinfo).flinfo = info;
            (*fcinfo).nargs = 1;
            (*fcinfo).fncollation = pg_sys::DEFAULT_COLLATION_OID;
            (*fcinfo).args.as_mut_slice(1)[0] = pg_sys::NullableDatum {
                value: arg,
                isnull: false,
            };
            let f = (*info).fn_addr.unwrap_unchecked(); // fmgr_info always sets it
            f(fcinfo)
        }
    }

    /// The `to_jsonb` call info for values of a type (looked up once per backend).
    pub unsafe fn to_jsonb_info(value_type: pg_sys::Oid) -> *mut pg_sys::FmgrInfo {
        if let Some(info) = TO_JSONB.with(|m| m.borrow().get(&value_type).copied()) {
            return info;
        }
        let info = polymorphic(pg_sys::F_TO_JSONB, pg_sys::JSONBOID, &[value_type]);
        TO_JSONB.with(|m| m.borrow_mut().insert(value_type, info));
        info
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
