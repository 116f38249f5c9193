//! A session: one backend, named by its pid and start time (together they name one session
//! even after the pid is reused).
use pgrx::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub pid: i32,
    pub start: pg_sys::TimestampTz,
}

impl Session {
    /// This backend's session.
    pub fn this() -> Session {
        // SAFETY: reads backend globals set at start-up.
        unsafe {
            Session {
                pid: pg_sys::MyProcPid,
                start: pg_sys::MyStartTimestamp,
            }
        }
    }

    /// The backend start as a `timestamptz` argument.
    pub fn start_datum(self) -> Option<pgrx::datum::TimestampWithTimeZone> {
        pgrx::datum::TimestampWithTimeZone::try_from(self.start).ok()
    }
}
