//! Every advisory-lock key space Herald uses, defined here and nowhere else.
//!
//! Herald's advisory locks take two int4 keys, as `pg_advisory_lock(int4, int4)` does: the
//! first names the key space, the second the object (a queue's id, ...). SQL code gets a
//! space's number from `herald._lock_space(name)` (immutable, so the planner folds it), so
//! the numbers below are the only place they are written.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::errors::raise;

/// A key space of Herald's advisory locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpace {
    /// Held (session level) by the coordinator connection that drains a queue; key: the
    /// queue's id. "HRLD".
    QueueDrainer,
    /// Held shared (transaction level) by every transaction that stores an event in a
    /// queue, and exclusively by whoever removes the queue or one of its listeners, so
    /// that no event of an uncommitted producer outlives its listener; key: the queue's
    /// id. "HRLP".
    QueueProducers,
    /// Held (session level) by the coordinator connection whose runner runs a job: the
    /// job's claim. Key: the job's id mod 2^32 (two jobs 2^32 ids apart never both run).
    /// "HRLJ".
    JobClaim,
    /// Held shared (session level) by every job manager while it waits for work, so that a
    /// commit that makes a job startable can wake them all; key: 0. "HRLM".
    JobManagers,
    /// Held (transaction level) while a job of a limited class is chosen to start, so that
    /// the class's limit holds across concurrent claims; key: the class name's hash.
    /// "HRLC".
    JobClass,
    /// Held (transaction level) by whoever decides whether a report group is ready (the
    /// transaction that ends a member, seals or releases the group), so that when the last
    /// members end at once on two nodes only one of them sees the group ready; key: the
    /// group's id mod 2^32. "HRLG".
    ReportGroup,
    /// Held (session level) by the coordinator connection that performs an output (the
    /// output's claim); key: the output record's id mod 2^32. "HRLO".
    OutputClaim,
    /// Held shared (session level) by every coordinator's output worker while it waits for
    /// work, so that a commit that makes an output due can wake them all; key: 0. "HRLW".
    OutputWorkers,
    /// Held (session level, for the moment of a decision) by whoever decides whether a
    /// request for a resource lock can be granted, so that two deciders never both see the
    /// same free capacity; key: the resource name's hash. "HRLR".
    LockDecision,
    /// Held shared (session level) by every backend waiting for a resource lock, so that a
    /// release (or a limit raised) can wake the waiters of that resource; key: the resource
    /// name's hash. "HRLQ".
    LockWaiters,
    /// Held (session level, for the moment of the check) while a new wait for resource locks
    /// is checked for a deadlock, so that two requests closing one cycle at once are seen
    /// by one of the checks; key: 0. "HRLY".
    LockGraph,
}

impl KeySpace {
    /// Every key space, for lookups by name.
    pub const ALL: &'static [KeySpace] = &[
        KeySpace::QueueDrainer,
        KeySpace::QueueProducers,
        KeySpace::JobClaim,
        KeySpace::JobManagers,
        KeySpace::JobClass,
        KeySpace::ReportGroup,
        KeySpace::OutputClaim,
        KeySpace::OutputWorkers,
        KeySpace::LockDecision,
        KeySpace::LockWaiters,
        KeySpace::LockGraph,
    ];

    /// The first key of locks in this space. Numbers stay below 2^31 so that they read the
    /// same as `int4` keys and as `pg_locks.classid` (an oid).
    pub const fn number(self) -> u32 {
        match self {
            KeySpace::QueueDrainer => 0x4852_4C44,
            KeySpace::QueueProducers => 0x4852_4C50,
            KeySpace::JobClaim => 0x4852_4C4A,
            KeySpace::JobManagers => 0x4852_4C4D,
            KeySpace::JobClass => 0x4852_4C43,
            KeySpace::ReportGroup => 0x4852_4C47,
            KeySpace::OutputClaim => 0x4852_4C4F,
            KeySpace::OutputWorkers => 0x4852_4C57,
            KeySpace::LockDecision => 0x4852_4C52,
            KeySpace::LockWaiters => 0x4852_4C51,
            KeySpace::LockGraph => 0x4852_4C59,
        }
    }

    /// The name SQL code uses for the space.
    pub const fn name(self) -> &'static str {
        match self {
            KeySpace::QueueDrainer => "queue",
            KeySpace::QueueProducers => "producers",
            KeySpace::JobClaim => "job",
            KeySpace::JobManagers => "job_managers",
            KeySpace::JobClass => "job_class",
            KeySpace::ReportGroup => "report_group",
            KeySpace::OutputClaim => "output",
            KeySpace::OutputWorkers => "output_workers",
            KeySpace::LockDecision => "lock_decision",
            KeySpace::LockWaiters => "lock_waiters",
            KeySpace::LockGraph => "lock_graph",
        }
    }

    /// The lock-manager tag of lock `key` in this space, in the current database.
    pub fn tag(self, key: i32) -> pg_sys::LOCKTAG {
        // SAFETY: LOCKTAG is a plain C struct of integers; all-zero is a valid value.
        let mut tag: pg_sys::LOCKTAG = unsafe { std::mem::zeroed() };
        // SAFETY: reads a backend global set at connection time.
        tag.locktag_field1 = unsafe { pg_sys::MyDatabaseId }.to_u32();
        tag.locktag_field2 = self.number();
        tag.locktag_field3 = key as u32;
        tag.locktag_field4 = 2; // two int4 keys, as pg_advisory_lock(int4, int4)
        tag.locktag_type = pg_sys::LockTagType::LOCKTAG_ADVISORY as u8;
        tag.locktag_lockmethodid = pg_sys::USER_LOCKMETHOD as u8;
        tag
    }

    /// Does this backend hold lock `key` of this space (exclusive, at session or
    /// transaction level), as `pg_advisory_lock(space, key)` takes it?
    pub fn held_by_me(self, key: i32) -> bool {
        let tag = self.tag(key);
        // SAFETY: a lookup in this backend's own lock table with a valid tag.
        unsafe { pg_sys::LockHeldByMe(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) }
    }

    /// Does this backend hold lock `key` of this space in `mode` (at any level)?
    pub fn held_in_mode_by_me(self, key: i32, mode: u32) -> bool {
        let tag = self.tag(key);
        // SAFETY: a lookup in this backend's own lock table with a valid tag.
        unsafe { pg_sys::LockHeldByMe(&tag, mode as pg_sys::LOCKMODE) }
    }

    /// Take lock `key` of this space in `mode` until the end of the transaction, waiting for
    /// it. True if this transaction did not hold it yet.
    pub fn lock_for_transaction(self, key: i32, mode: u32) -> bool {
        let tag = self.tag(key);
        // SAFETY: a transaction-level lock with a valid tag; the lock manager releases it
        // at the end of the transaction (a wait can be cancelled as any lock wait).
        let result = unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, false, false) };
        result == pg_sys::LockAcquireResult::LOCKACQUIRE_OK
    }

    /// Take lock `key` of this space exclusively until the end of the transaction, without
    /// queueing ahead of new shared requests: wait for the transactions holding it now to
    /// end (`WaitForLockers`, as `CREATE INDEX CONCURRENTLY` does), then take it when it is
    /// free. A queued exclusive request would make every new shared request wait behind it;
    /// a producer waiting there while holding a row lock another producer waits for would
    /// close a deadlock. After many rounds without a free moment it queues after all.
    pub fn lock_exclusive_between_holders(self, key: i32) {
        let tag = self.tag(key);
        let mode = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;
        for _ in 0..100 {
            // SAFETY: a conditional transaction-level lock with a valid tag.
            let result = unsafe { pg_sys::LockAcquire(&tag, mode, false, true) };
            if result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
                return;
            }
            // SAFETY: waits for the transactions that hold a conflicting lock now (not for
            // later ones); cancellable like any lock wait.
            unsafe { pg_sys::WaitForLockers(tag, mode, false) };
            pg_sys::check_for_interrupts!();
        }
        self.lock_for_transaction(key, pg_sys::ExclusiveLock);
    }

    /// Take lock `key` of this space in `mode` at session level, waiting for it (a cancel
    /// ends the wait with an error), and hold it until the guard is dropped (also when an
    /// error unwinds past it).
    pub fn hold_for_session(self, key: i32, mode: u32) -> SessionHold {
        let tag = self.tag(key);
        // SAFETY: a session-level lock with a valid tag, waited for as any lock wait (a
        // cancel raises, and the wait is left). The guard releases exactly this hold.
        unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, true, false) };
        SessionHold {
            space: self,
            key,
            mode,
        }
    }

    /// Take lock `key` of this space in `mode` at session level (kept across transactions
    /// until [`KeySpace::unlock_session`] or the end of the session), without waiting. False
    /// if a conflicting lock is held by another session.
    pub fn try_lock_for_session(self, key: i32, mode: u32) -> bool {
        let tag = self.tag(key);
        // SAFETY: a session-level lock with a valid tag; `dontWait` returns at once. The
        // lock manager keeps it across transactions, including aborted ones, until it is
        // released or the backend exits.
        let result = unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, true, true) };
        result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }

    /// [`KeySpace::hold_for_session`] without waiting: None if another backend holds it.
    pub fn try_hold_for_session(self, key: i32, mode: u32) -> Option<SessionHold> {
        self.try_lock_for_session(key, mode).then_some(SessionHold {
            space: self,
            key,
            mode,
        })
    }

    /// Release one session-level hold of lock `key` in `mode`; false if this backend did
    /// not hold it.
    pub fn unlock_session(self, key: i32, mode: u32) -> bool {
        let tag = self.tag(key);
        // SAFETY: lookups in, and a release from, this backend's own lock table with a valid
        // tag; LockRelease is only called for a lock held in that mode, so it never warns.
        unsafe {
            if !pg_sys::LockHeldByMe(&tag, mode as pg_sys::LOCKMODE) {
                return false;
            }
            pg_sys::LockRelease(&tag, mode as pg_sys::LOCKMODE, true)
        }
    }

    /// Take lock `key` of this space until the end of the transaction, without waiting, as
    /// `pg_try_advisory_xact_lock(space, key)` does. False if another session holds it.
    pub fn try_lock_for_transaction(self, key: i32) -> bool {
        let tag = self.tag(key);
        // SAFETY: a transaction-level lock with a valid tag; `dontWait` returns at once, and
        // the lock manager releases it at the end of the transaction.
        let result = unsafe {
            pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, true)
        };
        result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }
}

/// A session-level advisory lock held until this guard is dropped
/// ([`KeySpace::hold_for_session`]).
#[must_use]
pub struct SessionHold {
    space: KeySpace,
    key: i32,
    mode: u32,
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        self.space.unlock_session(self.key, self.mode);
    }
}

/// The key of a named object (a class, a resource): a stable hash of its name (FNV-1a),
/// the same in every backend. Two names with one hash share a lock, which only
/// serializes them.
pub fn text_key(name: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// `herald._lock_space(name)`: the first key of Herald's advisory locks of one kind.
#[pg_extern(immutable, parallel_safe, strict)]
fn _lock_space(name: &str) -> i32 {
    match KeySpace::ALL.iter().find(|s| s.name() == name) {
        Some(space) => space.number() as i32,
        None => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "unknown advisory lock space \"{}\"",
                super::errors::shown(name)
            ),
            Some(format!(
                "Herald's lock spaces: {}.",
                KeySpace::ALL
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ),
    }
}
