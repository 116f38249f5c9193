//! Listeners: registration, handler checks, and the per-backend listener cache.
//!
//! The cache is what keeps `herald.emit` cheap: the listener table is read once per backend
//! and again only after a relcache invalidation of `herald.listener`, which the table's
//! statement trigger sends on every change.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::catalog;
use crate::errors::{self, raise};

/// Event types that belong to Herald's built-in sources; `emit` and
/// `add_event_listener` refuse them.
pub const RESERVED_TYPES: &[&str] = &["SYSTEM", "LOGIN", "JOB", "CALLIN", "CALLOUT", "DATA"];

/// A listener as the delivery code needs it.
#[derive(Debug)]
pub struct Listener {
    pub id: i64,
    pub handler: pg_sys::Oid,
    pub queue: Option<String>,
    pub queue_id: Option<i32>,
    /// The queue's `event_run` (the cache is reloaded when it changes): a stopped queue has
    /// no drainer to wake.
    pub queue_running: bool,
    pub sync: bool,
    /// For session listeners: the pid of the owning backend (woken at commit).
    pub session_pid: Option<i32>,
    pub owner: pg_sys::Oid,
    /// For data listeners: what to capture and how to shape it.
    pub data: Option<crate::capture::DataListenerInfo>,
}

/// All listeners by id, and user-event listeners by event type.
#[derive(Default, Debug)]
pub struct ListenerSet {
    by_type: HashMap<String, Vec<Rc<Listener>>>,
    any_type: Vec<Rc<Listener>>,
    by_id: HashMap<i64, Rc<Listener>>,
    by_table: HashMap<pg_sys::Oid, Vec<Rc<Listener>>>,
}

impl ListenerSet {
    /// The listener with this id, if it still exists.
    pub fn get(&self, id: i64) -> Option<Rc<Listener>> {
        self.by_id.get(&id).cloned()
    }

    /// Data listeners of a table, in registration order.
    pub fn on_table(&self, relid: pg_sys::Oid) -> &[Rc<Listener>] {
        self.by_table.get(&relid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Listeners of `event_type`, in registration order.
    pub fn matching(&self, event_type: &str) -> Vec<Rc<Listener>> {
        let mut out: Vec<Rc<Listener>> = self.any_type.clone();
        if let Some(ls) = self.by_type.get(event_type) {
            out.extend(ls.iter().cloned());
        }
        if !self.any_type.is_empty() {
            out.sort_by_key(|l| l.id);
        }
        out
    }
}

thread_local! {
    static CACHE: RefCell<Option<Rc<ListenerSet>>> = const { RefCell::new(None) };
    /// Tables with data listeners: DDL on them (columns, privileges) invalidates the cache.
    static CAPTURED: RefCell<std::collections::HashSet<pg_sys::Oid>> = RefCell::new(Default::default());
}

/// Does a relcache invalidation of `relid` concern the cache? (relcache callback; never raises)
pub fn is_captured(relid: pg_sys::Oid) -> bool {
    CAPTURED.with(|c| c.try_borrow().map(|c| c.contains(&relid)).unwrap_or(true))
}

/// Drop the cached listener set (relcache callback; never raises).
pub fn invalidate_cache() {
    crate::capture::invalidate_shapes();
    CACHE.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = None;
        }
    });
}

/// The current listener set, loading it if needed.
pub fn current() -> Rc<ListenerSet> {
    catalog::oids(); // registers the invalidation callback before we read
    if let Some(set) = CACHE.with(|c| c.borrow().clone()) {
        return set;
    }
    let set = Rc::new(load());
    CACHE.with(|c| *c.borrow_mut() = Some(set.clone()));
    set
}

fn load() -> ListenerSet {
    catalog::as_owner(|| {
        errors::spi(Spi::connect(|client| {
            let mut set = ListenerSet::default();
            let rows = client.select(
                "SELECT l.id, l.handler::pg_catalog.oid, l.event_types, l.queue, q.id, l.sync,
                        l.owner::pg_catalog.oid, l.kind, l.tbl::pg_catalog.oid,
                        (SELECT pg_catalog.array_agg(a.attnum::int4 ORDER BY a.attnum)
                           FROM pg_catalog.pg_index i
                           JOIN pg_catalog.pg_attribute a
                             ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                            AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey)
                          WHERE i.indrelid OPERATOR(pg_catalog.=) l.tbl::pg_catalog.oid AND i.indisprimary),
                        (SELECT pg_catalog.array_agg(a.attnum::int4)
                           FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid OPERATOR(pg_catalog.=) l.tbl::pg_catalog.oid
                            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
                            AND NOT pg_catalog.has_column_privilege(l.owner::pg_catalog.oid,
                                    l.tbl::pg_catalog.oid, a.attnum, 'SELECT')),
                        l.session_pid, q.event_run OPERATOR(pg_catalog.=) 1
                   FROM herald.listener l
                   LEFT JOIN herald.event_queue q ON q.name OPERATOR(pg_catalog.=) l.queue
                  WHERE l.delivery OPERATOR(pg_catalog.<>) 'session'
                     OR EXISTS (SELECT 1 FROM herald.session s
                                 WHERE s.pid OPERATOR(pg_catalog.=) l.session_pid
                                   AND s.backend_start OPERATOR(pg_catalog.=) l.session_start)
                  ORDER BY l.id",
                None,
                &[],
            )?;
            for row in rows {
                let listener = Rc::new(Listener {
                    id: row.get::<i64>(1)?.unwrap_or_default(),
                    handler: row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                    queue: row.get::<String>(4)?,
                    queue_id: row.get::<i32>(5)?,
                    queue_running: row.get::<bool>(13)?.unwrap_or(false),
                    sync: row.get::<bool>(6)?.unwrap_or(false),
                    session_pid: row.get::<i32>(12)?,
                    owner: row.get::<pg_sys::Oid>(7)?.unwrap_or(pg_sys::InvalidOid),
                    data: match row.get::<String>(8)?.as_deref() {
                        Some("data") => Some(crate::capture::DataListenerInfo {
                            spec: crate::capture::DataSpec::from_items(
                                &row.get::<Vec<String>>(3)?.unwrap_or_default(),
                            ),
                            key: crate::capture::Cols::of(
                                &row.get::<Vec<i32>>(10)?.unwrap_or_default(),
                            ),
                            hidden: crate::capture::Cols::of(
                                &row.get::<Vec<i32>>(11)?.unwrap_or_default(),
                            ),
                        }),
                        _ => None,
                    },
                });
                set.by_id.insert(listener.id, listener.clone());
                let kind = row.get::<String>(8)?;
                if kind.as_deref() == Some("data") {
                    if let Some(tbl) = row.get::<pg_sys::Oid>(9)? {
                        set.by_table.entry(tbl).or_default().push(listener.clone());
                    }
                }
                if kind.as_deref() != Some("event") {
                    continue;
                }
                let types: Vec<String> = row.get::<Vec<String>>(3)?.unwrap_or_default();
                for t in types {
                    if t == "*" {
                        set.any_type.push(listener.clone());
                    } else {
                        set.by_type.entry(t).or_default().push(listener.clone());
                    }
                }
            }
            CAPTURED.with(|c| *c.borrow_mut() = set.by_table.keys().copied().collect());
            Ok::<_, pgrx::spi::SpiError>(set)
        }))
    })
}

/// Resolve and check a handler: a function taking exactly one `herald.event`, which the
/// current user may execute. Accepts `name`, `schema.name` or `name(herald.event)`.
pub fn resolve_handler(handler: &str) -> pg_sys::Oid {
    let handler = handler.trim();
    if handler.is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "handler must not be empty",
            None,
        );
    }
    let with_args = if handler.contains('(') {
        handler.to_string()
    } else {
        format!("{handler}(herald.event)")
    };
    let hint_text = format!(
        "A handler is a function taking one herald.event, for example: \
         CREATE FUNCTION {}(e herald.event) RETURNS void LANGUAGE sql AS $$ ... $$;",
        handler.split('(').next().unwrap_or(handler)
    );
    let hint = Some(hint_text.clone());
    // to_regprocedure() never raises for a bad name; a syntax error in the text does.
    let found = errors::spi(Spi::connect(|client| {
        let rows = client.select(
            "SELECT p.oid, p.prokind::text, p.pronargs::int4,
                    p.proargtypes[0] OPERATOR(pg_catalog.=) 'herald.event'::pg_catalog.regtype,
                    pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
               FROM pg_catalog.pg_proc p
              WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure($1)",
            Some(1),
            &[with_args.as_str().into()],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>(None);
        }
        let row = rows.first();
        Ok(Some((
            row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<i32>(3)?.unwrap_or_default(),
            row.get::<bool>(4)?.unwrap_or(false),
            row.get::<bool>(5)?.unwrap_or(false),
        )))
    }));
    let Some((oid, kind, nargs, takes_event, may_execute)) = found else {
        // Say whether the name exists with another signature.
        let base = handler
            .split('(')
            .next()
            .unwrap_or(handler)
            .trim()
            .to_string();
        let others: Option<String> = errors::spi(Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.string_agg(p.oid::pg_catalog.regprocedure::text, ', ')
               FROM pg_catalog.pg_proc p
              WHERE p.proname OPERATOR(pg_catalog.=)
                    (pg_catalog.parse_ident($1))[pg_catalog.array_length(pg_catalog.parse_ident($1), 1)]
                AND (pg_catalog.array_length(pg_catalog.parse_ident($1), 1) OPERATOR(pg_catalog.>) 1
                     OR pg_catalog.pg_function_is_visible(p.oid))",
            &[base.as_str().into()],
        ));
        match others {
            Some(list) => raise(
                Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
                format!(
                    "handler function {base} must take exactly one argument of type herald.event"
                ),
                Some(format!("Found: {list}. {hint_text}")),
            ),
            None => raise(
                Code::ERRCODE_UNDEFINED_FUNCTION,
                format!("handler function {with_args} does not exist"),
                hint,
            ),
        }
    };
    if kind != "f" {
        raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("handler {with_args} must be a plain function, not a procedure or aggregate"),
            hint,
        );
    }
    if nargs != 1 || !takes_event {
        raise(
            Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
            format!(
                "handler function {with_args} must take exactly one argument of type herald.event"
            ),
            hint,
        );
    }
    if !may_execute {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for handler function {with_args}"),
            Some("The role registering a listener must be allowed to EXECUTE its handler.".into()),
        );
    }
    oid
}

/// Parse `'a,b, c'` into distinct, trimmed, non-empty names.
pub fn parse_event_types(spec: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in spec.split(',') {
        let t = part.trim();
        if t.is_empty() {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("event_types \"{spec}\" contains an empty type"),
                Some(
                    "List event types separated by commas, e.g. 'invoice,order', or '*' for all."
                        .into(),
                ),
            );
        }
        if RESERVED_TYPES.contains(&t) {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("event type \"{t}\" is reserved for Herald's own events"),
                Some(if t == "DATA" {
                    "Use herald.add_data_listener() for data-change events.".into()
                } else {
                    "Use herald.add_system_listener() for system events.".into()
                }),
            );
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    out
}

/// Check that a queue exists, with a clear error otherwise.
pub fn require_queue(queue: &str) {
    let exists = catalog::as_owner(|| {
        errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM herald.event_queue q WHERE q.name OPERATOR(pg_catalog.=) $1)",
            &[queue.into()],
        ))
    });
    if exists != Some(true) {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("event queue \"{queue}\" does not exist"),
            Some(format!(
                "Create it first: INSERT INTO herald.event_queue (name, event_run) VALUES ({}, 1);",
                pgrx::spi::quote_literal(queue)
            )),
        );
    }
}

/// Insert a listener row (as the extension owner, on behalf of the current user).
pub fn insert_listener(
    kind: &str,
    handler: pg_sys::Oid,
    event_types: &[String],
    queue: Option<&str>,
    sync: bool,
    tbl: Option<pg_sys::Oid>,
) -> i64 {
    let owner = catalog::current_user();
    crate::sessions::collect_garbage();
    let session = if queue.is_none() && !sync {
        Some(crate::sessions::join())
    } else {
        None
    };
    let pid = session.map(|s| s.pid);
    let start = session.and_then(|s| s.start_datum());
    let types: Vec<&str> = event_types.iter().map(String::as_str).collect();
    let id = catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            client
                .update(
                    "INSERT INTO herald.listener (kind, handler, event_types, queue, sync, owner,
                                                  session_pid, tbl, session_start)
                     VALUES ($1, $2::pg_catalog.oid::pg_catalog.regprocedure, $3, $4, $5,
                             $6::pg_catalog.oid::pg_catalog.regrole, $7,
                             $8::pg_catalog.oid::pg_catalog.regclass, $9)
                     RETURNING id",
                    // No row limit: a limited INSERT ... RETURNING never completes its
                    // ModifyTable node, so AFTER STATEMENT triggers would not fire.
                    None,
                    &[
                        kind.into(),
                        handler.into(),
                        types.into(),
                        queue.into(),
                        sync.into(),
                        owner.into(),
                        pid.into(),
                        tbl.into(),
                        start.into(),
                    ],
                )?
                .first()
                .get::<i64>(1)
        }))
    });
    id.expect("INSERT ... RETURNING id returned no id")
}

/// Validate the delivery mode shared by every `add_*_listener`.
pub fn check_delivery(queue: Option<&str>, sync: bool) {
    if let Some(q) = queue {
        if sync {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "a listener is either synchronous (sync => true) or queued (queue => ...), not both",
                Some("Drop one of the two arguments.".into()),
            );
        }
        require_queue(q);
    }
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
    let event_types = errors::required(event_types, "event_types");
    let sync = errors::required(sync, "sync");
    let handler_oid = resolve_handler(handler);
    let types = parse_event_types(event_types);
    check_delivery(queue, sync);
    insert_listener("event", handler_oid, &types, queue, sync, None)
}

/// `herald.remove_listener(id)`: remove a listener and its pending events.
#[pg_extern(volatile, parallel_unsafe)]
fn remove_listener(id: Option<i64>) {
    let id = errors::required(id, "listener id");
    let found = catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            let rows = client.update(
                "SELECT l.owner::pg_catalog.oid, l.tbl::pg_catalog.oid FROM herald.listener l
                  WHERE l.id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                None,
                &[id.into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            let row = rows.first();
            Ok::<_, pgrx::spi::SpiError>(Some((
                row.get::<pg_sys::Oid>(1)?,
                row.get::<pg_sys::Oid>(2)?,
            )))
        }))
    });
    let owner = found.and_then(|f| f.0);
    let tbl = found.and_then(|f| f.1);
    let Some(owner) = owner else {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("listener {id} does not exist"),
            Some("SELECT * FROM herald.listener; lists the listeners.".into()),
        );
    };
    if !catalog::has_privs_of_role(catalog::current_user(), owner) {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "only the owner of listener {id} ({}) may remove it",
                catalog::role_name(owner)
            ),
            None,
        );
    }
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.event e WHERE e.listener OPERATOR(pg_catalog.=) $1",
            &[id.into()],
        ));
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.session_event e WHERE e.listener OPERATOR(pg_catalog.=) $1",
            &[id.into()],
        ));
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.listener l WHERE l.id OPERATOR(pg_catalog.=) $1",
            &[id.into()],
        ));
    });
    if let Some(tbl) = tbl {
        crate::capture::drop_trigger_if_unused(tbl);
    }
}

/// `herald._invalidate_listeners()`: called by the listener table's statement trigger.
#[pg_extern(volatile, parallel_unsafe)]
fn _invalidate_listeners() {
    let rel = catalog::oids().listener_rel;
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
}
