//! Jobs: batch work that leaves the user's transaction, run by the coordinators.
//!
//! - [`types`]: `herald.create_job_type`, `herald.drop_job_type`
//! - [`callee`]: the user functions a job runs (its target and hooks), checked when a type
//!   is made and called as the type's owner
//! - [`submit`]: `herald.submit_job`, in the caller's transaction
//! - [`store`]: job rows inserted directly (heap and index entries, no statement)
//! - [`lifecycle`]: every state change, each one guarded UPDATE that emits a JOB event;
//!   claims (`herald.claim_next_job`), runs, completion, abort, retry, rescue
//! - [`alerts`]: WAIT_TIMEOUT and LONG_RUNNING, each once per run
//! - [`wait`]: `herald.await_jobs`, how managers sleep until a job may start
//! - [`mail`]: outcome mails to `notify_email`, at most once per outcome
//! - [`resources`]: jobs that declare resource locks, taken before a job starts and given
//!   back when it ends (the locks are the locks area's, reached through `model::gate`)
//!
//! A job that runs is claimed by the coordinator connection that runs it: the
//! session-level advisory lock `(job, id)`. A node that dies loses its connections and
//! with them its claims; `herald.rescue_jobs` finds STARTED jobs whose claim is gone and
//! applies their retry policy. A slow job keeps its claim and is never run twice.
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::core::advisory::{self, KeySpace};
use crate::core::catalog;
use crate::core::spi;
use crate::core::wakeup;

pub mod alerts;
pub mod callee;
pub mod lifecycle;
pub mod mail;
pub mod resources;
pub mod store;
pub mod submit;
pub mod types;
pub mod wait;

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    Started,
    Finished,
    Completed,
    StartError,
    FinishError,
    Aborted,
}

impl State {
    pub const ALL: &'static [State] = &[
        State::Created,
        State::Started,
        State::Finished,
        State::Completed,
        State::StartError,
        State::FinishError,
        State::Aborted,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            State::Created => "CREATED",
            State::Started => "STARTED",
            State::Finished => "FINISHED",
            State::Completed => "COMPLETED",
            State::StartError => "STARTERROR",
            State::FinishError => "FINISHERROR",
            State::Aborted => "ABORTED",
        }
    }

    pub fn parse(name: &str) -> Option<State> {
        let name = name.trim();
        State::ALL
            .iter()
            .copied()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// A job in this state holds a slot of its class.
    pub const fn is_active(self) -> bool {
        matches!(self, State::Started | State::Finished)
    }

    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::StartError | State::FinishError | State::Aborted
        )
    }
}

/// The key of a job's claim lock.
pub fn claim_key(job: i64) -> i32 {
    (job as u64 & 0xffff_ffff) as u32 as i32
}

/// The key of a class's lock: a stable hash of its name, the same in every backend.
pub fn class_key(class: &str) -> i32 {
    advisory::text_key(class)
}

/// The first column of the first row of `sql`, run as the extension owner; None when there
/// is no row (or it is NULL).
pub fn first<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    catalog::as_owner(|| spi::first(sql, args))
}

/// Wake every waiting job manager once the current transaction commits.
pub fn wake_managers_at_commit() {
    wakeup::wake_holders_at_commit(KeySpace::JobManagers, 0);
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn class_keys_are_stable() {
        assert_eq!(class_key("posting"), class_key("posting"));
        assert_ne!(class_key("posting"), class_key("default"));
        assert_eq!(claim_key(1), 1);
        assert_eq!(claim_key((1_i64 << 32) + 5), 5);
    }
}
