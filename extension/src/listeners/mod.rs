//! Listeners: checking and registering them, removing them, and the per-backend cache.
//!
//! The registration functions of each source live with the source (`herald.add_event_listener`
//! and `herald.add_data_listener` in the events area); they check their arguments with the
//! helpers here and call [`register`].
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::model::data::DataSpec;
use crate::model::listener::{Delivery, QueueRef, RESERVED_TYPES};
use crate::model::session::Session;

pub mod cache;
pub mod event_types;
pub mod triggers;

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
        errors::shown(handler.split('(').next().unwrap_or(handler))
    );
    let shown = errors::shown(&with_args);
    let hint = Some(hint_text.clone());
    // to_regprocedure() never raises for a bad name; a syntax error in the text does.
    let found = errors::spi(Spi::connect(|client| {
        let rows = client.select(
            "SELECT p.oid, p.prokind::text, p.pronargs::int4,
                    p.proargtypes[0] OPERATOR(pg_catalog.=) 'herald.event'::pg_catalog.regtype,
                    pg_catalog.has_function_privilege(p.oid, 'EXECUTE'), p.proretset
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
            row.get::<bool>(6)?.unwrap_or(false),
        )))
    }));
    let Some((oid, kind, nargs, takes_event, may_execute, returns_set)) = found else {
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
                    "handler function {} must take exactly one argument of type herald.event",
                    errors::shown(&base)
                ),
                Some(format!("Found: {list}. {hint_text}")),
            ),
            None => raise(
                Code::ERRCODE_UNDEFINED_FUNCTION,
                format!("handler function {shown} does not exist"),
                hint,
            ),
        }
    };
    if kind != "f" {
        raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("handler {shown} must be a plain function, not a procedure or aggregate"),
            hint,
        );
    }
    if returns_set {
        raise(
            Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
            format!("handler function {shown} must not return a set"),
            hint,
        );
    }
    if nargs != 1 || !takes_event {
        raise(
            Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
            format!("handler function {shown} must take exactly one argument of type herald.event"),
            hint,
        );
    }
    if !may_execute {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for handler function {shown}"),
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
                format!(
                    "event_types \"{}\" contains an empty type",
                    errors::shown(spec)
                ),
                Some(
                    "List event types separated by commas, e.g. 'invoice,order', or '*' for all."
                        .into(),
                ),
            );
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    out
}

/// Raise if one of `types` is reserved for Herald's own events (user event listeners).
pub fn refuse_reserved(types: &[String]) {
    for t in types {
        if RESERVED_TYPES.contains(&t.as_str()) {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "event type \"{}\" is reserved for Herald's own events",
                    errors::shown(t)
                ),
                Some(if t == "DATA" {
                    "Use herald.add_data_listener() for data-change events.".into()
                } else {
                    "Choose another type name for user events, e.g. 'invoice'; Herald's \
                     system events (JOB, CALLOUT, LOCK) are listened to with herald.add_system_listener()."
                        .into()
                }),
            );
        }
    }
}

/// The queue named `queue`, with a clear error if it does not exist or the current user may
/// not attach listeners to it (see `herald.event_queue.listener_roles`).
pub fn require_queue(queue: &str) -> QueueRef {
    let me = catalog::current_user();
    let found = catalog::as_owner(|| {
        errors::spi(Spi::connect(|client| {
            let rows = client.select(
                "SELECT q.id, q.event_run OPERATOR(pg_catalog.=) 1,
                        EXISTS (SELECT 1 FROM pg_catalog.unnest(q.listener_roles) r
                                 WHERE pg_catalog.pg_has_role($2, r::pg_catalog.oid, 'USAGE'))
                   FROM herald.event_queue q
                  WHERE q.name OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[queue.into(), me.into()],
            )?;
            if rows.is_empty() {
                return Ok::<_, pgrx::spi::SpiError>(None);
            }
            let row = rows.first();
            Ok(Some((
                row.get::<i32>(1)?.unwrap_or_default(),
                row.get::<bool>(2)?.unwrap_or(false),
                row.get::<bool>(3)?.unwrap_or(false),
            )))
        }))
    });
    if let Some((_, _, false)) = found {
        if !event_types::is_admin() {
            raise(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied for event queue \"{}\"", errors::shown(queue)),
                Some(format!(
                    "An operator may let your role attach listeners to it: UPDATE herald.event_queue \
                     SET listener_roles = listener_roles || {}::regrole WHERE name = {};",
                    pgrx::spi::quote_literal(catalog::role_name(me)),
                    pgrx::spi::quote_literal(errors::shown(queue))
                )),
            );
        }
    }
    let Some((id, running, _)) = found else {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("event queue \"{}\" does not exist", errors::shown(queue)),
            Some(format!(
                "Create it first: INSERT INTO herald.event_queue (name, event_run) VALUES ({}, 1);",
                pgrx::spi::quote_literal(errors::shown(queue))
            )),
        );
    };
    QueueRef {
        name: queue.to_string(),
        id,
        running,
    }
}

/// The delivery a registration asks for: `queue => 'Q'`, `sync => true`, or neither (a
/// session listener of this session: `this_session` makes this session an owner of session
/// listeners and returns it).
pub fn delivery(
    queue: Option<&str>,
    sync: bool,
    this_session: impl FnOnce() -> Session,
) -> Delivery {
    match (queue, sync) {
        (Some(_), true) => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "a listener is either synchronous (sync => true) or queued (queue => ...), not both",
            Some("Drop one of the two arguments.".into()),
        ),
        (Some(q), false) => Delivery::Queue(require_queue(q)),
        (None, true) => Delivery::Sync,
        (None, false) => Delivery::Session(this_session()),
    }
}

/// What a new listener listens to.
pub enum NewSource<'a> {
    /// User events of these types (`"*"`: every type).
    UserEvents(&'a [String]),
    /// Changes of a table's rows.
    DataChanges { table: pg_sys::Oid, spec: DataSpec },
    /// Herald's own events of these types.
    SystemEvents(&'a [String]),
}

/// Insert a listener row (as the extension owner, on behalf of the current user); returns
/// its id. A data listener's table gets its capture triggers.
pub fn register(handler: pg_sys::Oid, source: NewSource<'_>, delivery: &Delivery) -> i64 {
    let owner = catalog::current_user();
    let (kind, event_types, tbl) = match &source {
        NewSource::UserEvents(types) => ("event", types.to_vec(), None),
        NewSource::DataChanges { table, spec } => ("data", spec.items(), Some(*table)),
        NewSource::SystemEvents(types) => ("system", types.to_vec(), None),
    };
    let types: Vec<&str> = event_types.iter().map(String::as_str).collect();
    let (queue, sync, session) = match delivery {
        Delivery::Queue(q) => (Some(q.name.as_str()), false, None),
        Delivery::Sync => (None, true, None),
        Delivery::Session(s) => (None, false, Some(*s)),
    };
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
                        session.map(|s| s.pid).into(),
                        tbl.into(),
                        session.and_then(|s| s.start_datum()).into(),
                    ],
                )?
                .first()
                .get::<i64>(1)
        }))
    });
    if let Some(tbl) = tbl {
        triggers::ensure_capture_trigger(tbl);
    }
    id.expect("INSERT ... RETURNING id returned no id")
}

/// `herald.remove_listener(id)`: remove a listener and its pending events.
#[pg_extern(volatile, parallel_unsafe)]
fn remove_listener(id: Option<i64>) {
    let id = errors::required(id, "listener id");
    catalog::require_primary("herald.remove_listener()");
    let found = catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            let rows = client.update(
                "SELECT l.owner::pg_catalog.oid, l.tbl::pg_catalog.oid, q.id
                   FROM herald.listener l
                   LEFT JOIN herald.event_queue q ON q.name OPERATOR(pg_catalog.=) l.queue
                  WHERE l.id OPERATOR(pg_catalog.=) $1 FOR UPDATE OF l",
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
                row.get::<i32>(3)?,
            )))
        }))
    });
    let owner = found.and_then(|f| f.0);
    let tbl = found.and_then(|f| f.1);
    let queue_id = found.and_then(|f| f.2);
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
    if let Some(queue_id) = queue_id {
        // Wait for the producers that may still commit events for this listener (see
        // delivery::enqueue); the DELETE below then sees their events.
        KeySpace::QueueProducers.lock_exclusive_between_holders(queue_id);
    }
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.event e WHERE e.listener OPERATOR(pg_catalog.=) $1",
            &[id.into()],
        ));
        // A queue held at one of its events lets go: the event is gone.
        errors::spi(Spi::run_with_args(
            "UPDATE herald.queue_state s SET held_event = NULL, held_listener = NULL
              WHERE s.held_listener OPERATOR(pg_catalog.=) $1",
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
        triggers::drop_if_unused(tbl);
    }
}

/// `herald._invalidate_listeners()`: called by the listener table's statement trigger.
#[pg_extern(volatile, parallel_unsafe)]
fn _invalidate_listeners() {
    // Not `catalog::oids()`: this runs from triggers during `ALTER EXTENSION herald UPDATE`
    // too, when the schema may be of another version than this library.
    let rel = match catalog::cached() {
        Some(oids) => oids.listener_rel,
        None => errors::spi(Spi::get_one::<pg_sys::Oid>(
            "SELECT 'herald.listener'::pg_catalog.regclass::pg_catalog.oid",
        ))
        .unwrap_or(pg_sys::InvalidOid),
    };
    // SAFETY: queues a relcache invalidation of an existing relation, sent at commit.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
}
