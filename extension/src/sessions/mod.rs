//! Session listeners: listeners with neither `queue` nor `sync`, owned by the session that
//! registered them and read with `herald.next_event(listener, timeout, handle)`.
//!
//! - A session that registers one gets a row in the unlogged `herald.session` (pid and
//!   backend start: together they name one session, even after the pid is reused). Its
//!   listeners carry the same pair.
//! - Producers store the listener's events in the unlogged `herald.session_event` and set the
//!   owning backend's latch at commit (`wakeup`); `next_event` sleeps on that latch.
//! - When the session ends (normal exit, a client that vanished, `pg_terminate_backend`), a
//!   `before_shmem_exit` callback removes its listeners, their unread events and its row, and
//!   drops capture triggers nobody needs any more.
//! - When a backend crashes, the server restarts every backend and crash recovery empties the
//!   unlogged tables. Listeners whose session has no row are dead: the listener cache leaves
//!   them out (producers never write for them) and the next registration removes them.
use pgrx::prelude::*;
use std::cell::Cell;

use crate::core::catalog;
use crate::core::errors;
use crate::core::plans;
use crate::listeners::{self, triggers};
use crate::model::listener::Delivery;
use crate::model::session::Session;

mod next_event;

thread_local! {
    static EXIT_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// The delivery a registration asks for (see `listeners::delivery`). Every registration
/// first removes what sessions that ended without cleaning up left behind.
pub fn delivery(queue: Option<&str>, sync: bool) -> Delivery {
    collect_garbage();
    listeners::delivery(queue, sync, join)
}

/// Make this session an owner of session listeners (idempotent) and make sure its listeners
/// go away with it.
fn join() -> Session {
    let me = Session::this();
    if !EXIT_CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers `on_exit` (a `#[pg_guard]`ed function) once per backend.
        unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    }
    let role = catalog::current_user();
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.session (pid, backend_start, role)
             VALUES ($1, $2, $3::pg_catalog.oid::pg_catalog.regrole) ON CONFLICT DO NOTHING",
            &[me.pid.into(), me.start_datum().into(), role.into()],
        ))
    });
    me
}

/// Remove listeners of sessions that are gone without cleaning up (a crash, or a failed exit
/// callback), and events left for listeners that no longer exist (an event committed by a
/// producer whose listener cache was a moment old when the listener's session ended).
pub fn collect_garbage() {
    let tables = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            // Sessions whose backend is gone (their exit callback failed or never ran).
            let sessions = plans::execute(
                client,
                "SELECT s.pid, s.backend_start FROM herald.session s",
                &[],
                &[],
            );
            let mut gone_pids = Vec::new();
            for i in 0..sessions.len() {
                if let Some(pid) = sessions.get::<i32>(i, 1) {
                    // SAFETY: a lookup in the proc array; null for a pid that is gone.
                    if unsafe { pg_sys::BackendPidGetProc(pid) }.is_null() {
                        gone_pids.push(pid);
                    }
                }
            }
            if !gone_pids.is_empty() {
                plans::execute(
                    client,
                    "DELETE FROM herald.session s WHERE s.pid OPERATOR(pg_catalog.=) ANY ($1)",
                    &[pg_sys::INT4ARRAYOID],
                    &[gone_pids.into_datum()],
                );
            }
            let dead = plans::execute(
                client,
                "DELETE FROM herald.listener l
                  WHERE l.delivery OPERATOR(pg_catalog.=) 'session'
                    AND NOT EXISTS (SELECT 1 FROM herald.session s
                                     WHERE s.pid OPERATOR(pg_catalog.=) l.session_pid
                                       AND s.backend_start OPERATOR(pg_catalog.=) l.session_start)
                 RETURNING l.tbl::pg_catalog.oid",
                &[],
                &[],
            );
            let tables: Vec<pg_sys::Oid> = (0..dead.len())
                .filter_map(|i| dead.get::<pg_sys::Oid>(i, 1))
                .collect();
            plans::execute(
                client,
                "DELETE FROM herald.session_event e
                  WHERE NOT EXISTS (SELECT 1 FROM herald.listener l
                                     WHERE l.id OPERATOR(pg_catalog.=) e.listener)",
                &[],
                &[],
            );
            tables
        })
    });
    for tbl in tables {
        triggers::drop_if_unused_nowait(tbl);
    }
}

/// Remove this session's listeners, their unread events and its session row.
fn leave() {
    let me = Session::this();
    let tables = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let args = [me.pid.into_datum(), me.start_datum().into_datum()];
            let types = [pg_sys::INT4OID, pg_sys::TIMESTAMPTZOID];
            let gone = plans::execute(
                client,
                "WITH gone AS (
                     DELETE FROM herald.listener l
                      WHERE l.session_pid OPERATOR(pg_catalog.=) $1
                        AND l.session_start OPERATOR(pg_catalog.=) $2
                     RETURNING l.id, l.tbl),
                 events AS (
                     DELETE FROM herald.session_event e
                      WHERE e.listener OPERATOR(pg_catalog.=) ANY (SELECT g.id FROM gone g))
                 SELECT g.tbl::pg_catalog.oid FROM gone g",
                &types,
                &args,
            );
            let tables: Vec<pg_sys::Oid> = (0..gone.len())
                .filter_map(|i| gone.get::<pg_sys::Oid>(i, 1))
                .collect();
            plans::execute(
                client,
                "DELETE FROM herald.session s
                  WHERE s.pid OPERATOR(pg_catalog.=) $1 AND s.backend_start OPERATOR(pg_catalog.=) $2",
                &types,
                &args,
            );
            tables
        })
    });
    for tbl in tables {
        triggers::drop_if_unused_nowait(tbl);
    }
}

/// `before_shmem_exit` callback: leave in a transaction of its own, as the server does for
/// temporary tables. An error here ends the (already ending) process with a FATAL message in
/// the server log, and the next registration's clean-up removes what was left.
#[pg_guard]
extern "C-unwind" fn on_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    // SAFETY: reads a backend global.
    if unsafe { pg_sys::MyDatabaseId } == pg_sys::InvalidOid {
        return;
    }
    // SAFETY: at backend exit, before shared memory is detached: end whatever transaction
    // was open and start a fresh one with a snapshot, as the server's own exit callbacks
    // (temporary tables) do; it is committed below.
    unsafe {
        pg_sys::AbortOutOfAnyTransaction();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let installed = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension
                         WHERE extname OPERATOR(pg_catalog.=) 'herald')",
    );
    if installed == Ok(Some(true)) {
        leave();
    }
    // SAFETY: pops the snapshot pushed above and commits the transaction started above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
}
