//! The per-backend listener cache.
//!
//! It is what keeps `herald.emit` and the capture trigger cheap: the listener table is read
//! once per backend and again only after a relcache invalidation of `herald.listener` (its
//! statement trigger sends one on every change) or of a captured table (columns, keys,
//! privileges, row-level security or policies changed), or after a function, schema, role
//! or role membership changed.
//!
//! The cache also holds each listener's owner's privileges as they are now ([`Denial`]):
//! checked when the set is loaded, and so again from the first statement after any change
//! that could alter them.
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::core::catalog;
use crate::core::errors;
use crate::core::invalidation::{self, Scope};
use crate::core::plans;
use crate::model::data::{Cols, DataSpec};
use crate::model::listener::{DataSource, Delivery, Denial, Listener, QueueRef, Source};
use crate::model::session::Session;

/// All listeners by id, user-event listeners by event type, data listeners by table.
#[derive(Default, Debug)]
pub struct ListenerSet {
    by_type: HashMap<String, Vec<Rc<Listener>>>,
    any_type: Vec<Rc<Listener>>,
    by_id: HashMap<i64, Rc<Listener>>,
    by_table: HashMap<pg_sys::Oid, Vec<Rc<Listener>>>,
    by_system_type: HashMap<String, Vec<Rc<Listener>>>,
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

    /// Listeners of Herald's own events of `event_type`, in registration order.
    pub fn matching_system(&self, event_type: &str) -> Vec<Rc<Listener>> {
        self.by_system_type
            .get(event_type)
            .cloned()
            .unwrap_or_default()
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

    fn add(&mut self, listener: Listener) {
        let listener = Rc::new(listener);
        self.by_id.insert(listener.id, listener.clone());
        match &listener.source {
            Source::DataChanges(data) => {
                self.by_table
                    .entry(data.table)
                    .or_default()
                    .push(listener.clone());
            }
            Source::SystemEvents(types) => {
                for t in types {
                    self.by_system_type
                        .entry(t.clone())
                        .or_default()
                        .push(listener.clone());
                }
            }
            Source::UserEvents(types) => {
                for t in types {
                    if t == "*" {
                        self.any_type.push(listener.clone());
                    } else {
                        self.by_type
                            .entry(t.clone())
                            .or_default()
                            .push(listener.clone());
                    }
                }
            }
        }
    }
}

thread_local! {
    static CACHE: RefCell<Option<Rc<ListenerSet>>> = const { RefCell::new(None) };
    /// Moves on with every invalidation that concerns the listener set.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// Tables with data listeners: DDL on them (columns, privileges) invalidates the cache.
    static CAPTURED: RefCell<HashSet<pg_sys::Oid>> = RefCell::new(HashSet::new());
}

/// Does an invalidation concern the listener cache (and what is derived from it)? Never
/// raises: it runs inside the relcache callback.
pub fn concerns_listeners(scope: Scope) -> bool {
    match scope {
        Scope::All | Scope::Privileges => true,
        Scope::Relation(relid) => {
            catalog::cached().is_none_or(|oids| oids.listener_rel == relid)
                || CAPTURED.with(|c| c.try_borrow().map(|c| c.contains(&relid)).unwrap_or(true))
        }
    }
}

/// Hook the cache into relcache invalidations (from `_PG_init`).
pub fn init() {
    invalidation::register(|scope| {
        if concerns_listeners(scope) {
            GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
            CACHE.with(|c| {
                if let Ok(mut c) = c.try_borrow_mut() {
                    *c = None;
                }
            });
        }
    });
}

/// The current listener set, loading it if needed.
///
/// An invalidation can arrive while the set is being loaded (the load's own queries take
/// locks, which takes in pending invalidations), after the load's snapshot was taken: the
/// set just read may then miss the change. Each invalidation moves the generation on; a
/// set loaded across a move is used for this call but not kept, and the next call loads
/// again.
pub fn current() -> Rc<ListenerSet> {
    if let Some(set) = CACHE.with(|c| c.borrow().clone()) {
        return set;
    }
    let mut set = None;
    for _ in 0..3 {
        let before = GENERATION.with(|g| g.get());
        let loaded = Rc::new(load());
        if GENERATION.with(|g| g.get()) == before {
            CACHE.with(|c| *c.borrow_mut() = Some(loaded.clone()));
            return loaded;
        }
        set = Some(loaded);
    }
    set.expect("loaded at least once")
}

/// Make the listener set current: take in the invalidations other sessions committed
/// since this statement began, so that a registration committed before an emit or a
/// captured write started is seen by it, even inside an older open transaction.
pub fn refresh() {
    // SAFETY: processes pending shared invalidation messages, as PostgreSQL does whenever
    // it takes a lock; cheap when there are none.
    unsafe { pg_sys::AcceptInvalidationMessages() };
}

/// Read the listener table with the latest snapshot (see `plans::execute_latest`): the
/// cache outlives the transaction that loads it, so it must not hold an older
/// transaction's view.
fn load() -> ListenerSet {
    catalog::as_owner(|| {
        errors::spi(Spi::connect(|client| {
            let rows = plans::execute_latest(client, include_str!("load.sql"), &[], &[]);
            let mut set = ListenerSet::default();
            for r in 0..rows.len() {
                let types = rows.get::<Vec<String>>(r, 3).unwrap_or_default();
                let source = match (
                    rows.get::<String>(r, 8).as_deref(),
                    rows.get::<pg_sys::Oid>(r, 9),
                ) {
                    (Some("data"), Some(table)) => Source::DataChanges(DataSource {
                        table,
                        spec: DataSpec::from_items(&types),
                        key: Cols::of(&rows.get::<Vec<i32>>(r, 10).unwrap_or_default()),
                        hidden: Cols::of(&rows.get::<Vec<i32>>(r, 11).unwrap_or_default()),
                    }),
                    (Some("event"), _) => Source::UserEvents(types),
                    (Some("system"), _) => Source::SystemEvents(types),
                    _ => continue, // a kind this version does not deliver
                };
                let delivery = match (
                    rows.get::<bool>(r, 6).unwrap_or(false),
                    rows.get::<String>(r, 4),
                    rows.get::<i32>(r, 12),
                ) {
                    (true, _, _) => Delivery::Sync,
                    (false, Some(name), _) => Delivery::Queue(QueueRef {
                        name,
                        id: rows.get::<i32>(r, 5).unwrap_or_default(),
                        running: rows.get::<bool>(r, 13).unwrap_or(false),
                    }),
                    (false, None, Some(pid)) => Delivery::Session(Session {
                        pid,
                        start: rows.get::<pg_sys::TimestampTz>(r, 14).unwrap_or_default(),
                    }),
                    (false, None, None) => continue, // malformed by hand: nowhere to deliver
                };
                let id = rows.get::<i64>(r, 1).unwrap_or_default();
                let denied = match rows.get::<String>(r, 15) {
                    Some(reason) => Some(denial(&reason)),
                    None => hidden_key(id, &source),
                };
                set.add(Listener {
                    id,
                    handler: rows.get::<pg_sys::Oid>(r, 2).unwrap_or(pg_sys::InvalidOid),
                    owner: rows.get::<pg_sys::Oid>(r, 7).unwrap_or(pg_sys::InvalidOid),
                    source,
                    delivery,
                    denied,
                });
            }
            CAPTURED.with(|c| *c.borrow_mut() = set.by_table.keys().copied().collect());
            Ok::<_, pgrx::spi::SpiError>(set)
        }))
    })
}

/// A denial as `load.sql` writes it: a SQLSTATE, a space, the reason.
fn denial(reason: &str) -> Denial {
    let (code, message) = reason.split_at(reason.find(' ').unwrap_or(0));
    Denial {
        sqlstate: match code {
            "55000" => "55000",
            "42704" => "42704",
            "42883" => "42883",
            _ => "42501",
        },
        message: message.trim_start().to_string(),
    }
}

/// Key-level events show the primary key: all of it must be readable by the owner.
fn hidden_key(id: i64, source: &Source) -> Option<Denial> {
    let Source::DataChanges(data) = source else {
        return None;
    };
    if !data.spec.needs_key() {
        return None;
    }
    if data.key.is_empty() {
        return Some(Denial {
            sqlstate: "55000",
            message: format!(
                "the table of listener {id} has no primary key any more, which key-level (1) \
                 events need"
            ),
        });
    }
    data.key.intersects(&data.hidden).then(|| Denial {
        sqlstate: "42501",
        message: format!(
            "permission denied for a primary key column of the table of listener {id}: \
             key-level (1) events need every key column to be readable by its owner"
        ),
    })
}
