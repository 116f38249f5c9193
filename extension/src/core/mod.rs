//! The low layer: PostgreSQL mechanics that know nothing of events, listeners or queues.
//!
//! Everything above may use this layer; nothing here uses anything above it.
//! - [`errors`]: user mistakes become a clear `ERROR` with a hint
//! - [`ffi`]: direct calls into PostgreSQL, one error boundary per step
//! - [`plans`]: kept, generic plans of internal statements
//! - [`spi`]: statements run once: the first value of the first row
//! - [`datum`]: datum wrappers pgrx lacks (a jsonb passed through untouched)
//! - [`catalog`]: the extension's owner and the oids of its own objects, owner switching
//! - [`relation`]: opened relations that close themselves
//! - [`lookup`]: one row by its text key, read straight through the key's index
//! - [`subxact`]: running code in an internal subtransaction
//! - [`fmgr`]: calling a SQL function with one argument, with kept call info
//! - [`advisory`]: every advisory-lock key space Herald uses, in one place
//! - [`wakeup`]: setting another backend's latch once the current transaction commits
//! - [`xact`]: work run just before the current transaction commits
//! - [`invalidation`]: one relcache callback, and the caches that hook into it
pub mod advisory;
pub mod catalog;
pub mod datum;
pub mod errors;
pub mod ffi;
pub mod fmgr;
pub mod invalidation;
pub mod lookup;
pub mod plans;
pub mod relation;
pub mod spi;
pub mod subxact;
pub mod wakeup;
pub mod xact;
