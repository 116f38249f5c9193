//! One relcache callback per backend (plus syscache callbacks for privileges kept outside
//! relations), and the caches that hook into them.
//!
//! PostgreSQL calls the relcache callback when a relation's definition, privileges or
//! policies change (at the end of the changing transaction in other backends, at once in
//! the changing one) and with relid 0 when the whole relcache is reset. The syscache
//! callbacks fire when a function (its `EXECUTE` grants), a schema (`USAGE`), a role
//! (superuser, `BYPASSRLS`) or a role membership changes. The callback decides the scope once:
//! if the extension's own storage changed shape (or the extension went away), every cache
//! forgets everything; otherwise each hook is told which relation changed and decides for
//! itself. Hooks run inside the callback: they must not raise, query or allocate in
//! PostgreSQL memory, only drop what they keep.
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

use super::catalog;

/// What an invalidation concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole relcache, or the extension's own tables: forget everything.
    All,
    /// One other relation changed (columns, keys, privileges, policies...).
    Relation(pg_sys::Oid),
    /// A function, schema, role or role membership changed: whatever was derived from
    /// privileges other than a table's own is stale.
    Privileges,
}

/// A cache's reaction to an invalidation. Must never raise.
pub type Hook = fn(Scope);

thread_local! {
    static HOOKS: RefCell<Vec<Hook>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Call `hook` on every relcache invalidation in this backend (registered once per backend,
/// from the library's `_PG_init`).
pub fn register(hook: Hook) {
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: registers a callback for the life of the backend; the callback is a
        // `#[pg_guard]`ed function that never raises.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache), pg_sys::Datum::from(0)) };
        use pg_sys::SysCacheIdentifier::{AUTHMEMROLEMEM, AUTHOID, NAMESPACEOID, PROCOID};
        for cache in [PROCOID, NAMESPACEOID, AUTHOID, AUTHMEMROLEMEM] {
            // SAFETY: as above, for the catalogs that hold privileges kept outside tables.
            unsafe {
                pg_sys::CacheRegisterSyscacheCallback(
                    cache as i32,
                    Some(on_syscache),
                    pg_sys::Datum::from(0),
                )
            };
        }
    }
    HOOKS.with(|h| h.borrow_mut().push(hook));
}

#[pg_guard]
extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let scope = match catalog::cached() {
        // Nothing is known about the extension yet, so nothing above is cached either.
        None => Scope::All,
        Some(_) if relid == pg_sys::InvalidOid => Scope::All,
        Some(oids) if oids.storage().contains(&relid) => Scope::All,
        Some(_) => Scope::Relation(relid),
    };
    if scope == Scope::All {
        catalog::forget();
    }
    run_hooks(scope);
}

#[pg_guard]
extern "C-unwind" fn on_syscache(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    run_hooks(Scope::Privileges);
}

fn run_hooks(scope: Scope) {
    // `try_borrow`: a hook registered while another runs (never done) must not panic here.
    HOOKS.with(|h| {
        if let Ok(hooks) = h.try_borrow() {
            for hook in hooks.iter() {
                hook(scope);
            }
        }
    });
}
