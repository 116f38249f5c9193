//! A listener: what it listens to (its source), how its events reach its handler (its
//! delivery), and whose privileges its handler runs with (its owner).
use pgrx::prelude::*;

use super::data::{Cols, DataSpec};
use super::session::Session;

/// Event types that belong to Herald's built-in sources; `emit` and `add_event_listener`
/// refuse them.
pub const RESERVED_TYPES: &[&str] = &[
    "SYSTEM", "LOGIN", "JOB", "CALLIN", "CALLOUT", "DATA", "LOCK",
];

/// A listener as the delivery code needs it.
#[derive(Debug)]
pub struct Listener {
    pub id: i64,
    /// The handler function: takes one `herald.event`.
    pub handler: pg_sys::Oid,
    /// The role that registered the listener; its handler runs as this role.
    pub owner: pg_sys::Oid,
    pub source: Source,
    pub delivery: Delivery,
    /// Why this listener may not be delivered to now, if it may not: its owner lost a
    /// privilege its events need, or its owner or handler no longer exists.
    pub denied: Option<Denial>,
}

/// A listener's events are withheld: they would show its owner what the owner may not
/// read, or run code the owner may not run. Delivery fails visibly with this error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `42501` (insufficient privilege), `42704` (undefined object), `42883` (undefined
    /// function) or `55000` (object not in prerequisite state).
    pub sqlstate: &'static str,
    pub message: String,
}

impl Denial {
    /// The error code to raise.
    pub fn code(&self) -> pgrx::PgSqlErrorCode {
        use pgrx::PgSqlErrorCode as Code;
        match self.sqlstate {
            "42704" => Code::ERRCODE_UNDEFINED_OBJECT,
            "42883" => Code::ERRCODE_UNDEFINED_FUNCTION,
            "55000" => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            _ => Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
        }
    }
}

/// What a listener listens to.
#[derive(Debug, Clone)]
pub enum Source {
    /// User events (`herald.emit`) of these types; `"*"` stands for every type.
    UserEvents(Vec<String>),
    /// Herald's own events of these types (`JOB`, `CALLOUT`, ...), never matched by `"*"`.
    SystemEvents(Vec<String>),
    /// Changes of the rows of a table.
    DataChanges(DataSource),
}

/// A data listener's table and what it asks for.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub table: pg_sys::Oid,
    pub spec: DataSpec,
    /// Primary key columns of the table.
    pub key: Cols,
    /// Columns the listener's owner may not read: never shown in its events.
    pub hidden: Cols,
}

/// How a listener's events reach its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Stored in a queue and handled by the queue's drainer, in order.
    Queue(QueueRef),
    /// Handled inside the producing transaction.
    Sync,
    /// Kept for the session that registered the listener, read with `herald.next_event`.
    Session(Session),
}

/// The queue a listener delivers into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRef {
    pub name: String,
    pub id: i32,
    /// The queue's `event_run` (listener caches are reloaded when it changes): a stopped
    /// queue has no drainer to wake.
    pub running: bool,
}

impl Delivery {
    /// The queue, for queued delivery.
    pub fn queue(&self) -> Option<&QueueRef> {
        match self {
            Delivery::Queue(q) => Some(q),
            _ => None,
        }
    }

    pub fn is_sync(&self) -> bool {
        matches!(self, Delivery::Sync)
    }
}
