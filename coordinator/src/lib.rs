//! The Herald coordinator: a stateless sidecar that drains Herald's event queues.
//!
//! Any number of coordinators may run against one database; they are the cluster. All
//! state lives in PostgreSQL: a coordinator owns a queue for as long as its connection holds
//! the queue's advisory lock (`herald.claim_queue`).
//!
//! - [`coordinator`]: the supervisor that claims running queues and starts drainers
//! - [`drainer`]: one task per owned queue: lookup, then wait for work
//! - [`shutdown`]: the shared stop signal every task listens to
//! - [`db`]: how connections are opened and named (`herald/<node>`)
//! - [`status`]: `herald status`
//! - [`cluster`]: a private PostgreSQL cluster from the installed server binaries
//! - [`demo`]: `herald demo`
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod db;
pub mod demo;
pub mod drainer;
pub mod shutdown;
pub mod status;
