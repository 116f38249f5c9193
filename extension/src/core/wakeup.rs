//! Setting another backend's latch once the current transaction commits, without NOTIFY.
//!
//! A waiter (a coordinator's drainer, a session in `herald.next_event`) sleeps on its process
//! latch. A transaction that has work for it remembers the target and, once its commit is
//! visible and its locks are released, sets the waiter's latch. A target is either "whoever holds advisory lock `key` in
//! key space `space`" (found in the lock manager at commit) or one backend by pid. Cost on
//! the producer: one lock-table probe per target per commit; no NOTIFY (whose commit-time
//! database lock serializes concurrent producers).
//!
//! Race-freedom is the waiter's part: it resets its latch, then checks for work with a fresh
//! snapshot, then sleeps. A producer whose commit the check missed commits after the check
//! started, so it finds the waiter waiting (holding its lock) and sets the latch, which makes
//! the sleep return at once.
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

use super::advisory::KeySpace;
use super::ffi;

/// Whom to wake at commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// Every backend holding advisory lock `key` of a key space.
    Holders(KeySpace, i32),
    /// The backend with this pid.
    Backend(i32),
    /// As `Holders`, also when the transaction is rolled back.
    HoldersAtEnd(KeySpace, i32),
}

thread_local! {
    static PENDING: RefCell<Vec<Target>> = const { RefCell::new(Vec::new()) };
    /// Targets of a transaction that has committed, woken once it has released its locks.
    static COMMITTED: RefCell<Vec<Target>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Wake whoever holds advisory lock `key` of `space` when (and only if) the current
/// transaction commits.
pub fn wake_holders_at_commit(space: KeySpace, key: i32) {
    wake_at_commit(Target::Holders(space, key));
}

/// Wake whoever holds advisory lock `key` of `space` when the current transaction ends,
/// committed or rolled back (a waiter that leaves a queue by an error lets the next one
/// look again).
pub fn wake_holders_at_end(space: KeySpace, key: i32) {
    wake_at_commit(Target::HoldersAtEnd(space, key));
}

/// Wake whoever holds advisory lock `key` of `space` now (for work that others see before
/// this transaction commits, through a dirty snapshot).
pub fn wake_holders_now(space: KeySpace, key: i32) {
    wake_holders(space, key);
}

/// Wake the backend with `pid` when (and only if) the current transaction commits.
pub fn wake_backend_at_commit(pid: i32) {
    wake_at_commit(Target::Backend(pid));
}

fn wake_at_commit(target: Target) {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        // One pair of callbacks for the life of the backend; a transaction only pushes
        // targets.
        // SAFETY: both are `#[pg_guard]`ed functions that never raise.
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_xact_end), std::ptr::null_mut());
            pg_sys::RegisterResourceReleaseCallback(Some(after_locks), std::ptr::null_mut());
        }
    }
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        if !pending.contains(&target) {
            pending.push(target);
        }
    });
}

/// Transaction callback: at commit (visible now), hand the targets to [`after_locks`];
/// on abort hand over only those to wake at either end, and forget the rest. (Subtransaction aborts keep them: a spurious wake-up only costs
/// the woken a look.)
#[pg_guard]
extern "C-unwind" fn at_xact_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            let targets = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            COMMITTED.with(|c| c.borrow_mut().extend(targets));
        }
        // A prepared transaction commits later, elsewhere: its work is found by the
        // waiter's periodic look instead.
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            let targets = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            COMMITTED.with(|c| {
                c.borrow_mut().extend(
                    targets
                        .into_iter()
                        .filter(|t| matches!(t, Target::HoldersAtEnd(..))),
                )
            });
        }
        pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            PENDING.with(|p| p.borrow_mut().clear());
        }
        _ => {}
    }
}

/// Resource-release callback: wake the committed transaction's targets once it has released
/// its locks, not before. Whoever is woken (the next posting of a serialized class, say)
/// then finds none of this transaction's locks held: its row locks, and the transaction
/// advisory locks its user code took (a posting run guarding itself with
/// `pg_try_advisory_xact_lock`), are gone by then.
#[pg_guard]
extern "C-unwind" fn after_locks(
    phase: pg_sys::ResourceReleasePhase::Type,
    is_commit: bool,
    is_top_level: bool,
    _arg: *mut std::ffi::c_void,
) {
    if phase != pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS || !is_top_level {
        return;
    }
    let targets = COMMITTED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    for target in targets {
        match target {
            Target::Holders(space, key) if is_commit => wake_holders(space, key),
            Target::Backend(pid) if is_commit => wake_backend(pid),
            Target::HoldersAtEnd(space, key) => wake_holders(space, key),
            _ => {}
        }
    }
}

/// Set the latch of every backend holding advisory lock `key` of `space` right now.
fn wake_holders(space: KeySpace, key: i32) {
    let tag = space.tag(key);
    let mut count: std::ffi::c_int = 0;
    // SAFETY: `tag` is a valid advisory lock tag; the result is an array of `count` virtual
    // transaction ids (palloc'd), read before anything else is allocated.
    let holders = unsafe {
        pg_sys::GetLockConflicts(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, &mut count)
    };
    for i in 0..count.max(0) as usize {
        // SAFETY: `i < count`, within the array returned above; a PGPROC found for a live
        // backend stays valid (procs live in shared memory for the server's life), and
        // setting its latch is what latches are for.
        unsafe {
            let proc = ffi::proc_of(&*holders.add(i));
            if !proc.is_null() {
                pg_sys::SetLatch(&mut (*proc).procLatch);
            }
        }
    }
}

/// Set the latch of the backend with `pid`, if it still exists.
fn wake_backend(pid: i32) {
    // SAFETY: BackendPidGetProc returns null for an unknown pid; a PGPROC lives in shared
    // memory for the server's life, so setting its latch is safe even if it just exited.
    unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if !proc.is_null() {
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}

/// The waiter's side: sleep on this backend's latch until it is set (a commit woke it, or
/// a wake-up arrived while it was busy, which makes this return at once) or `timeout_ms`
/// passes; then reset it and serve interrupts (a cancel raises here). True when woken.
pub fn sleep(timeout_ms: i32) -> bool {
    // SAFETY: waits on this backend's own latch, then resets it; WL_EXIT_ON_PM_DEATH ends
    // the backend if the postmaster dies, as every backend wait does.
    let events = unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout_ms.max(1) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        events
    };
    pg_sys::check_for_interrupts!();
    events & pg_sys::WL_LATCH_SET as i32 != 0
}

/// Reset the latch, look, sleep until the latch is set or `deadline`; repeat until `look`
/// finds something. The reset comes before the look, so a commit the look missed sets the
/// latch afterwards and ends the sleep at once.
pub fn wait_until<T>(
    deadline: std::time::Instant,
    mut look: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        // SAFETY: resets this backend's own latch.
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        if let Some(found) = look() {
            return Some(found);
        }
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            return None;
        }
        // SAFETY: waits on this backend's own latch; WL_EXIT_ON_PM_DEATH ends the backend if
        // the postmaster dies.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                remaining.as_millis().max(1) as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
        }
        pg_sys::check_for_interrupts!();
    }
}
