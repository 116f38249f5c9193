//! The Herald coordinator: a stateless sidecar that drains Herald's event queues and runs
//! its jobs.
//!
//! Any number of coordinators may run against one database; they are the cluster. All
//! state lives in PostgreSQL: a coordinator owns a queue for as long as its connection holds
//! the queue's advisory lock (`herald.claim_queue`).
//!
//! Layers, bottom to top (a module uses only those below it; areas never use each other;
//! `tests/tests/layers.rs` checks this):
//! 1. [`shutdown`] (the shared stop signal), [`smtp`] (sending mail, each message at most
//!    once)
//! 2. [`config`] (command line and environment), [`service`] (back-off and the interruptible waits every task shares), [`db`]
//!    (connections, named `herald/<node>`), [`cluster`] (a private PostgreSQL cluster from
//!    the installed server binaries)
//! 3. [`api`]: the typed boundary to the extension, one function per `herald.*` call
//! 4. areas, each a folder of tasks built on `api`, `db`, `service` and `shutdown` only:
//!    [`queues`] (claiming queues, draining them), [`jobs`] (the job manager and the
//!    runners), [`reports`] (the output worker and its channels), [`locks`] (expiring
//!    lapsed leases). Later, when there is code for them: `maintenance/` (tasks on an
//!    elected node) and `web/` (the dashboard). What two areas share moves down a layer.
//! 5. [`coordinator`] (wires the areas to one control connection), [`status`]
//!    (`herald status`)
//! 6. [`demo`] (`herald demo`)
//!
//! `main.rs` only parses the command line, builds the runtime and starts a
//! [`coordinator::Coordinator`] (or `status`, or `demo`).
pub mod api;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod db;
pub mod demo;
pub mod jobs;
pub mod locks;
pub mod queues;
pub mod reports;
pub mod service;
pub mod shutdown;
pub mod smtp;
pub mod status;
