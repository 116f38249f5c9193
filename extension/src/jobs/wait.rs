//! `herald.await_jobs`: a job manager sleeps on its latch until a commit may have made a
//! job startable (a `startnow` submit, a freed slot of a limited class, a retry, a job
//! finished outside Herald) or the timeout passes.
use pgrx::prelude::*;

use crate::core::advisory::KeySpace;
use crate::core::errors;
use crate::core::wakeup;

/// `herald.await_jobs(timeout_ms)`: returns true when woken, false on timeout. The first
/// call makes this connection a job manager for the rest of the session (it holds the
/// managers' lock shared, which is how commits find it). Cancellable.
#[pg_extern(volatile, parallel_unsafe)]
fn await_jobs(timeout_ms: default!(Option<i32>, "1000")) -> bool {
    let timeout_ms = errors::required(timeout_ms, "timeout_ms").max(0);
    if !KeySpace::JobManagers.held_in_mode_by_me(0, pg_sys::ShareLock) {
        KeySpace::JobManagers.try_lock_for_session(0, pg_sys::ShareLock);
    }
    // A wake-up sent while this connection was busy (claiming, running) left the latch
    // set, and makes this return at once: nothing sent after the last look is lost.
    wakeup::sleep(timeout_ms)
}
