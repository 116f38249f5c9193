//! The typed boundary to the extension: one Rust function per `herald.*` call the
//! coordinator makes. Everything above this module speaks in these types; no other module
//! writes SQL against schema `herald`.
use tokio_postgres::{Client, Statement};

/// Errors of the boundary: the database failed, or answered something this version does
/// not understand (an extension newer or older than the coordinator).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error("herald.{function} returned {value:?}, which this coordinator does not understand; are the extension and the coordinator of the same release?")]
    Unexpected {
        function: &'static str,
        value: String,
    },
}

/// Whether `CREATE EXTENSION herald` has run in the connected database.
pub async fn extension_installed(client: &Client) -> Result<bool, ApiError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'herald')",
            &[],
        )
        .await?
        .get(0))
}

/// The queues with `event_run = 1`, by name.
pub async fn running_queues(client: &Client) -> Result<Vec<String>, ApiError> {
    Ok(client
        .query(
            "SELECT name FROM herald.event_queue WHERE event_run = 1 ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `herald.claim_queue`: try to become the drainer of `queue` for the life of this
/// connection. False when another connection holds it (or the queue is gone).
pub async fn claim_queue(client: &Client, queue: &str) -> Result<bool, ApiError> {
    Ok(client
        .query_one("SELECT herald.claim_queue($1)", &[&queue])
        .await?
        .get(0))
}

/// `herald.release_queue`: stop being the drainer of `queue`.
pub async fn release_queue(client: &Client, queue: &str) -> Result<bool, ApiError> {
    Ok(client
        .query_one("SELECT herald.release_queue($1)", &[&queue])
        .await?
        .get(0))
}

/// A queue's state after a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueState {
    Running,
    /// `event_run = 0`: the drainer should let go.
    Stopped,
    /// Held at a failing event until an operator resumes it.
    Held,
}

impl QueueState {
    fn parse(value: &str) -> Result<QueueState, ApiError> {
        match value {
            "running" => Ok(QueueState::Running),
            "stopped" => Ok(QueueState::Stopped),
            "held" => Ok(QueueState::Held),
            other => Err(ApiError::Unexpected {
                function: "drain",
                value: other.to_string(),
            }),
        }
    }
}

/// What one lookup (`herald.drain`) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub state: QueueState,
    pub handled: i32,
    pub failed: i32,
    /// The lookup was full: more events are probably waiting.
    pub more: bool,
}

/// The statements a drainer repeats, prepared once on its connection.
pub struct DrainerCalls {
    drain: Statement,
    await_events: Statement,
}

impl DrainerCalls {
    pub async fn prepare(client: &Client) -> Result<DrainerCalls, ApiError> {
        Ok(DrainerCalls {
            drain: client
                .prepare("SELECT state, handled, failed, more FROM herald.drain($1, $2)")
                .await?,
            await_events: client.prepare("SELECT herald.await_events($1, $2)").await?,
        })
    }

    /// `herald.drain`: one lookup of `queue`, recorded as done by `node`.
    pub async fn drain(
        &self,
        client: &Client,
        queue: &str,
        node: &str,
    ) -> Result<Lookup, ApiError> {
        let row = client.query_one(&self.drain, &[&queue, &node]).await?;
        Ok(Lookup {
            state: QueueState::parse(row.get(0))?,
            handled: row.get(1),
            failed: row.get(2),
            more: row.get(3),
        })
    }

    /// `herald.await_events`: sleep in the server until `queue` has work (or was stopped,
    /// resumed or reconfigured), at most `timeout_ms`. Returns whether there is work.
    pub async fn await_events(
        &self,
        client: &Client,
        queue: &str,
        timeout_ms: i32,
    ) -> Result<bool, ApiError> {
        Ok(client
            .query_one(&self.await_events, &[&queue, &timeout_ms])
            .await?
            .get(0))
    }
}

/// One row of `herald.queue_status`, as `herald status` shows it.
#[derive(Clone, Debug)]
pub struct QueueStatus {
    pub name: String,
    pub state: String,
    pub backlog: i64,
    /// The connection (application_name) holding the drainer lock, if any.
    pub drainer: Option<String>,
    /// The node that made the last lookup.
    pub drained_by: Option<String>,
    pub handled: i64,
    pub failed: i64,
    pub skipped: i64,
    pub held_event: Option<i64>,
    pub last_error: Option<String>,
}

/// Every queue's status, by name.
pub async fn queue_status(client: &Client) -> Result<Vec<QueueStatus>, ApiError> {
    let rows = client
        .query(
            "SELECT name, state, backlog, drainer, drained_by, handled_count, failed_count,
                    skipped_count, held_event, last_error
               FROM herald.queue_status ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| QueueStatus {
            name: r.get(0),
            state: r.get(1),
            backlog: r.get(2),
            drainer: r.get(3),
            drained_by: r.get(4),
            handled: r.get(5),
            failed: r.get(6),
            skipped: r.get(7),
            held_event: r.get(8),
            last_error: r.get(9),
        })
        .collect())
}

/// A coordinator node seen in `pg_stat_activity` (its connections are named `herald/<node>`).
#[derive(Clone, Debug)]
pub struct NodeConnections {
    pub node: String,
    pub connections: i64,
    pub since: String,
}

/// The coordinator nodes connected to this database.
pub async fn coordinator_nodes(client: &Client) -> Result<Vec<NodeConnections>, ApiError> {
    let rows = client
        .query(
            "SELECT substr(application_name, 8) AS node, count(*)::int8, min(backend_start)::text
               FROM pg_stat_activity
              WHERE application_name LIKE 'herald/%' AND datname = current_database()
              GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| NodeConnections {
            node: r.get(0),
            connections: r.get(1),
            since: r.get(2),
        })
        .collect())
}
