//! In-database tests of the SQL surface (run by `cargo pgrx test`). Each test runs in its
//! own transaction, which is rolled back afterwards.
pub mod helpers;

mod capture;
mod jobs;
mod locks;
mod operations;
mod privileges;
mod queues;
mod reports;
mod sessions;
