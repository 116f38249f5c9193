//! Jobs: the job manager of a coordinator and its runners.
//! - [`manager`]: the timer- and wake-up-driven loop that rescues, alerts, claims, runs
//!   and completes jobs
//! - [`command`]: the `command` runner (an OS command, never through a shell)
//! - [`mail`]: outcome mails to a job's `notify_email`
//!
//! The `sql` runner is `herald.run_job` on the connection that claimed the job: the work
//! runs in the database, next to the data, as the job type's owner.
pub mod command;
pub mod mail;
pub mod manager;
