//! Waking a queue's drainer (or a session waiting in `herald.next_event`) when new work
//! commits, without NOTIFY.
//!
//! The coordinator that drains a queue holds a session-level advisory lock on it
//! (`herald.claim_queue`), and waits for work inside `herald.await_events`, which sleeps on
//! its process latch. A transaction that adds work to a queue remembers the queue and, once
//! its commit is visible, looks up who holds the queue's lock in the lock manager and sets
//! that backend's latch. Cost on the producer: one lock-table probe per queue per commit;
//! no NOTIFY (whose commit-time database lock serializes concurrent producers).
//!
//! Race-freedom: `await_events` resets its latch, then checks for work with a fresh
//! snapshot, then sleeps. A producer whose commit the check missed commits after the check
//! started, so it finds the drainer inside `await_events` (holding the lock and in a
//! transaction) and sets the latch, which makes the sleep return at once.
//!
//! Session listeners are woken the same way, addressed by the owning backend's pid (a
//! session listener has exactly one reader: the session that registered it).
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

/// Advisory lock class of all Herald locks: "HRLD".
pub const LOCK_CLASS: u32 = 1213353028;

/// Who to wake at commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// The drainer of the queue with this id.
    Queue(i32),
    /// The backend with this pid (the owner of a session listener).
    Backend(i32),
}

thread_local! {
    static PENDING: RefCell<Vec<Target>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

// Not in pgrx's bindings; exported by the server (storage/sinvaladt.h) in PG 13-16.
// It only reads shared memory under a lock and never raises.
#[cfg(not(feature = "pg17"))]
unsafe extern "C" {
    fn BackendIdGetProc(backend_id: std::ffi::c_int) -> *mut pg_sys::PGPROC;
}

/// Wake the drainer of queue `queue_id` when (and only if) the current transaction commits.
pub fn wake_at_commit(queue_id: i32) {
    wake_target_at_commit(Target::Queue(queue_id));
}

/// Wake the backend with `pid` when (and only if) the current transaction commits.
pub fn wake_backend_at_commit(pid: i32) {
    wake_target_at_commit(Target::Backend(pid));
}

fn wake_target_at_commit(target: Target) {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        // One callback for the life of the backend; a transaction only pushes targets.
        unsafe { pg_sys::RegisterXactCallback(Some(at_xact_end), std::ptr::null_mut()) };
    }
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        if !pending.contains(&target) {
            pending.push(target);
        }
    });
}

/// Transaction callback: wake the targets once the commit is visible; forget them on abort.
/// (Subtransaction aborts keep them: a spurious wake-up only costs the woken a look.)
#[pg_guard]
unsafe extern "C-unwind" fn at_xact_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            let targets = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            for target in targets {
                match target {
                    Target::Queue(queue) => wake_now(queue),
                    Target::Backend(pid) => wake_backend(pid),
                }
            }
        }
        // A prepared transaction commits later, elsewhere: its events are found by the
        // drainer's periodic look instead.
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            PENDING.with(|p| p.borrow_mut().clear());
        }
        _ => {}
    }
}

/// Set the latch of every backend holding the drainer lock of `queue_id` right now.
fn wake_now(queue_id: i32) {
    unsafe {
        let mut tag: pg_sys::LOCKTAG = std::mem::zeroed();
        tag.locktag_field1 = pg_sys::MyDatabaseId.to_u32();
        tag.locktag_field2 = LOCK_CLASS;
        tag.locktag_field3 = queue_id as u32;
        tag.locktag_field4 = 2; // two int4 keys, as pg_advisory_lock(int4, int4)
        tag.locktag_type = pg_sys::LockTagType::LOCKTAG_ADVISORY as u8;
        tag.locktag_lockmethodid = pg_sys::USER_LOCKMETHOD as u8;
        let mut count: std::ffi::c_int = 0;
        let holders =
            pg_sys::GetLockConflicts(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, &mut count);
        for i in 0..count.max(0) as usize {
            let vxid = *holders.add(i);
            #[cfg(not(feature = "pg17"))]
            let proc = BackendIdGetProc(vxid.backendId);
            #[cfg(feature = "pg17")]
            let proc = pg_sys::ProcNumberGetProc(vxid.procNumber);
            if !proc.is_null() {
                pg_sys::SetLatch(&mut (*proc).procLatch);
            }
        }
    }
}

/// Set the latch of the backend with `pid`, if it still exists.
fn wake_backend(pid: i32) {
    unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if !proc.is_null() {
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}

/// `herald._wake_queue(queue_id)`: used by the event_queue trigger so that a settings change
/// reaches a waiting drainer at once.
#[pg_extern(volatile, parallel_unsafe)]
fn _wake_queue(queue_id: i32) {
    wake_at_commit(queue_id);
}
