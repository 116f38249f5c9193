//! The typed boundary to the extension: one Rust function per `herald.*` call the
//! coordinator makes (and the notification channel it listens to). Everything above this
//! module speaks in these types; the coordinator and `herald status` write no SQL against
//! schema `herald` anywhere else. (`herald demo` plays the application: its workload writes
//! the SQL an application would.)
use std::fmt;

use tokio_postgres::{Client, Statement};

/// Errors of the boundary: the database failed, or answered something this version does
/// not understand (an extension newer or older than the coordinator).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("extension \"herald\" is not installed in this database (CREATE EXTENSION herald;)")]
    NotInstalled,
    #[error("herald.{call} returned {value:?}, which this coordinator does not understand; are the extension and the coordinator of the same release?")]
    Unexpected {
        /// The function or view, without the schema: `drain`, `queue_status`.
        call: &'static str,
        value: String,
    },
}

/// A database error as a person reads it: the server's message and hint, not just
/// "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} (HINT: {hint})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// Whether the connected server is a standby (in recovery, read-only).
pub async fn in_recovery(client: &Client) -> Result<bool, ApiError> {
    Ok(client
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await?
        .get(0))
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

/// `LISTEN herald_queues`: the extension notifies this channel (payload: the queue's name)
/// when a queue is created, changed or deleted. The notifications arrive on the receiver
/// that `db::connect_listening` returned with `client`.
pub async fn listen_for_queue_changes(client: &Client) -> Result<(), ApiError> {
    client.batch_execute("LISTEN herald_queues").await?;
    Ok(())
}

/// The queues with `event_run = 1`, by name.
/// The running queues no connection drains now (nobody holds their drainer lock), by name.
/// A hint for whom to claim: `herald.claim_queue` decides.
pub async fn unclaimed_queues(client: &Client) -> Result<Vec<String>, ApiError> {
    Ok(client
        .query(
            "SELECT q.name FROM herald.event_queue q
              WHERE q.event_run = 1
                AND NOT EXISTS (
                    SELECT 1 FROM pg_catalog.pg_locks l
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                          WHERE d.datname = pg_catalog.current_database())
                       AND l.classid = herald._lock_space('queue')::oid
                       AND l.objid = q.id::oid)
              ORDER BY q.name",
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

/// A queue's state, as `herald.drain` and `herald.queue_status` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueState {
    Running,
    /// `event_run = 0`: the drainer should let go.
    Stopped,
    /// Held at a failing event until an operator resumes it.
    Held,
}

impl QueueState {
    /// The extension's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Running => "running",
            QueueState::Stopped => "stopped",
            QueueState::Held => "held",
        }
    }

    /// Parse the state `call` returned; an unknown name is an error, not a guess.
    fn parse(call: &'static str, value: &str) -> Result<QueueState, ApiError> {
        match value {
            "running" => Ok(QueueState::Running),
            "stopped" => Ok(QueueState::Stopped),
            "held" => Ok(QueueState::Held),
            other => Err(ApiError::Unexpected {
                call,
                value: other.to_string(),
            }),
        }
    }
}

/// The extension's name; honours width and alignment (`{:<8}`), for `herald status`.
impl fmt::Display for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
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

/// The statements a queue lane repeats, prepared once on its connection.
pub struct DrainerCalls {
    drain: Statement,
    await_queues: Statement,
}

impl DrainerCalls {
    pub async fn prepare(client: &Client) -> Result<DrainerCalls, ApiError> {
        Ok(DrainerCalls {
            drain: client
                .prepare("SELECT state, handled, failed, more FROM herald.drain($1, $2)")
                .await?,
            await_queues: client.prepare("SELECT herald.await_queues($1, $2)").await?,
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
            state: QueueState::parse("drain", row.get(0))?,
            handled: row.get(1),
            failed: row.get(2),
            more: row.get(3),
        })
    }

    /// `herald.await_queues`: sleep in the server until one of `queues` (held by this
    /// connection) has work, or was stopped, resumed or reconfigured, at most `timeout_ms`
    /// (0: only look). Returns the queues with work, in the order given.
    pub async fn await_queues(
        &self,
        client: &Client,
        queues: &[String],
        timeout_ms: i32,
    ) -> Result<Vec<String>, ApiError> {
        Ok(client
            .query_one(&self.await_queues, &[&queues, &timeout_ms])
            .await?
            .get(0))
    }
}

/// One row of `herald.queue_status`, as `herald status` shows it.
#[derive(Clone, Debug)]
pub struct QueueStatus {
    pub name: String,
    pub state: QueueState,
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
    rows.iter()
        .map(|r| {
            Ok(QueueStatus {
                name: r.get(0),
                state: QueueState::parse("queue_status", r.get(1))?,
                backlog: r.get(2),
                drainer: r.get(3),
                drained_by: r.get(4),
                handled: r.get(5),
                failed: r.get(6),
                skipped: r.get(7),
                held_event: r.get(8),
                last_error: r.get(9),
            })
        })
        .collect()
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

/// How a job's work is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    /// Work done in the database by `herald.run_job` on the claiming connection: a function
    /// or procedure (`sql`), or a report's generation (`report`).
    Sql,
    /// An OS command run by the coordinator.
    Command,
}

impl Runner {
    /// The extension's name for the runner.
    pub fn as_str(self) -> &'static str {
        match self {
            Runner::Sql => "sql",
            Runner::Command => "command",
        }
    }
}

/// A job this connection has claimed (`herald.claim_next_job`): it is STARTED and this
/// connection holds its claim until it reports the job's end.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub id: i64,
    pub r#type: String,
    pub runner: Runner,
    /// sql: the function; command: the program.
    pub target: String,
    pub params: serde_json::Value,
    /// Run beside other jobs; without it, one such job at a time per coordinator.
    pub newthread: bool,
}

/// `herald.claim_next_job`: start the next job of `runner` that may start now, claimed by
/// `client`; only a `newthread` one unless `inline`. (A class whose next job does not
/// match is left to another claim.)
pub async fn claim_next_job(
    client: &Client,
    node: &str,
    runner: Runner,
    inline: bool,
) -> Result<Option<ClaimedJob>, ApiError> {
    let runners = [runner.as_str()];
    let row = client
        .query_opt(CLAIM_NEXT_JOB, &[&node, &runners.as_slice(), &inline])
        .await?;
    row.map(|row| claimed_from(&row, 0)).transpose()
}

/// The runners whose jobs `herald.run_job` runs in the database.
const IN_DATABASE: [&str; 2] = ["sql", "report"];

const CLAIM_NEXT_JOB: &str = "SELECT id, job_type, runner, target, params::text, newthread
                                FROM herald.claim_next_job($1, $2, $3)";
const RUN_JOB_AND_CLAIM: &str =
    "SELECT state, next_id, next_type, 'sql', next_target, next_params::text, next_newthread
       FROM herald.run_job_and_claim($1, $2, $3)";

/// A connection that runs `sql` jobs, with its statements prepared once.
pub struct SqlRunner {
    pub client: Client,
    claim: tokio_postgres::Statement,
    run_and_claim: tokio_postgres::Statement,
}

impl SqlRunner {
    pub async fn new(client: Client) -> Result<SqlRunner, ApiError> {
        let claim = client.prepare(CLAIM_NEXT_JOB).await?;
        let run_and_claim = client.prepare(RUN_JOB_AND_CLAIM).await?;
        Ok(SqlRunner {
            client,
            claim,
            run_and_claim,
        })
    }

    /// `herald.claim_next_job(node, '{sql,report}', inline)`: the jobs run in the database.
    pub async fn claim(&self, node: &str, inline: bool) -> Result<Option<ClaimedJob>, ApiError> {
        let runners = IN_DATABASE;
        let row = self
            .client
            .query_opt(&self.claim, &[&node, &runners.as_slice(), &inline])
            .await?;
        row.map(|row| claimed_from(&row, 0)).transpose()
    }

    /// `herald.run_job_and_claim(job, node, inline)`: run a claimed job, then claim the next
    /// in the same transaction. The job's state and the next job.
    pub async fn run_and_claim(
        &self,
        job: i64,
        node: &str,
        inline: bool,
    ) -> Result<(String, Option<ClaimedJob>), ApiError> {
        let row = self
            .client
            .query_one(&self.run_and_claim, &[&job, &node, &inline])
            .await?;
        let next = match row.get::<_, Option<i64>>(1) {
            Some(_) => Some(claimed_from(&row, 1)?),
            None => None,
        };
        Ok((row.get(0), next))
    }
}

/// A claimed job from columns `at..at + 6` of `row`: id, type, runner, target, params
/// (as text), newthread.
fn claimed_from(row: &tokio_postgres::Row, at: usize) -> Result<ClaimedJob, ApiError> {
    let runner = match row.get::<_, &str>(at + 2) {
        "sql" | "report" => Runner::Sql,
        "command" => Runner::Command,
        other => {
            return Err(ApiError::Unexpected {
                call: "claim_next_job",
                value: other.to_string(),
            })
        }
    };
    let params: &str = row.get(at + 4);
    Ok(ClaimedJob {
        id: row.get(at),
        r#type: row.get(at + 1),
        runner,
        target: row.get(at + 3),
        params: serde_json::from_str(params).map_err(|_| ApiError::Unexpected {
            call: "claim_next_job",
            value: params.to_string(),
        })?,
        newthread: row.get(at + 5),
    })
}

/// `herald.run_job`: run a claimed `sql` job on the connection that claimed it; returns the
/// job's state afterwards (FINISHED, STARTED without autofinish, CREATED for a retry,
/// STARTERROR).
pub async fn run_job(client: &Client, job: i64) -> Result<String, ApiError> {
    Ok(client
        .query_one("SELECT herald.run_job($1)", &[&job])
        .await?
        .get(0))
}

/// `herald.finish_job`: a claimed job's runner (here: a command) did its work.
pub async fn finish_job(
    client: &Client,
    job: i64,
    result: &serde_json::Value,
) -> Result<bool, ApiError> {
    Ok(client
        .query_one(
            "SELECT herald.finish_job($1, $2::text::jsonb)",
            &[&job, &result.to_string()],
        )
        .await?
        .get(0))
}

/// `herald.fail_job`: a claimed job's runner failed; returns the job's state afterwards.
pub async fn fail_job(client: &Client, job: i64, error: &str) -> Result<String, ApiError> {
    Ok(client
        .query_one("SELECT herald.fail_job($1, $2)", &[&job, &error])
        .await?
        .get(0))
}

/// `herald.callout`: record a CALLOUT event (`begin`/`end`) of a claimed command job.
pub async fn callout(
    client: &Client,
    job: i64,
    action: &str,
    details: &serde_json::Value,
) -> Result<(), ApiError> {
    client
        .execute(
            "SELECT herald.callout($1, $2, $3::text::jsonb)",
            &[&job, &action, &details.to_string()],
        )
        .await?;
    Ok(())
}

/// `herald.complete_next_job`: complete the oldest FINISHED job; its id, None when none.
pub async fn complete_next_job(client: &Client, node: &str) -> Result<Option<i64>, ApiError> {
    Ok(client
        .query_one("SELECT herald.complete_next_job($1)", &[&node])
        .await?
        .get(0))
}

/// `herald.expire_locks`: remove lapsed resource-lock grants; how many.
pub async fn expire_locks(client: &Client) -> Result<i32, ApiError> {
    Ok(client
        .query_one("SELECT herald.expire_locks()", &[])
        .await?
        .get(0))
}

/// `herald.rescue_jobs`: retry or fail the jobs whose claim is gone; how many.
pub async fn rescue_jobs(client: &Client) -> Result<i32, ApiError> {
    Ok(client
        .query_one("SELECT herald.rescue_jobs()", &[])
        .await?
        .get(0))
}

/// `herald.check_job_alerts`: fire due WAIT_TIMEOUT and LONG_RUNNING alerts; how many.
pub async fn check_job_alerts(client: &Client) -> Result<i32, ApiError> {
    Ok(client
        .query_one("SELECT herald.check_job_alerts()", &[])
        .await?
        .get(0))
}

/// `herald.await_jobs`: sleep in the server until a commit may have made a job startable,
/// at most `timeout_ms`; true when woken.
pub async fn await_jobs(client: &Client, timeout_ms: i32) -> Result<bool, ApiError> {
    Ok(client
        .query_one("SELECT herald.await_jobs($1)", &[&timeout_ms])
        .await?
        .get(0))
}

/// Jobs of one class in one state, for `herald status`.
#[derive(Clone, Debug)]
pub struct JobCount {
    pub class: String,
    pub max_running: Option<i32>,
    pub state: String,
    pub jobs: i64,
}

/// How many jobs each class has in each state (ended jobs of the last day only).
pub async fn job_counts(client: &Client) -> Result<Vec<JobCount>, ApiError> {
    let rows = client
        .query(
            "SELECT j.class, c.max_running, j.state, count(*)::int8
               FROM herald.job j LEFT JOIN herald.job_class c ON c.name = j.class
              WHERE j.ended_at IS NULL OR j.ended_at > now() - interval '1 day'
              GROUP BY 1, 2, 3 ORDER BY 1, 3",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| JobCount {
            class: r.get(0),
            max_running: r.get(1),
            state: r.get(2),
            jobs: r.get(3),
        })
        .collect())
}

/// Report groups and outputs by state, for `herald status`: `kind` is `group` (state of
/// report groups) or `output <channel>`; ended ones of the last day only.
#[derive(Clone, Debug)]
pub struct ReportCount {
    pub kind: String,
    pub state: String,
    pub count: i64,
}

/// One row of `herald.locks`, for `herald status`.
#[derive(Clone, Debug)]
pub struct LockRow {
    pub resource: String,
    pub kind: String,
    pub limit: i32,
    /// 'holder', 'waiter', or None for a resource nobody holds.
    pub role: Option<String>,
    pub holder: Option<String>,
    pub count: Option<i32>,
    pub token: Option<i64>,
    pub position: Option<i32>,
    /// How long it has waited (waiter) or until its lease ends (holder), as text.
    pub info: Option<String>,
}

/// Every resource with its holders and waiters (`herald.locks`); None if this role may not
/// read the view (or the database has no locks yet).
pub async fn locks(client: &Client) -> Result<Option<Vec<LockRow>>, ApiError> {
    let allowed: bool = client
        .query_one(
            "SELECT to_regclass('herald.locks') IS NOT NULL
                AND has_table_privilege('herald.locks', 'SELECT')
                AND has_function_privilege('herald.lock_status()', 'EXECUTE')",
            &[],
        )
        .await?
        .get(0);
    if !allowed {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT resource, kind, lock_limit, role, holder, count, token, position,
                    CASE role WHEN 'waiter' THEN 'waits ' || date_trunc('second', waited)::text
                              WHEN 'holder' THEN CASE WHEN expired THEN 'lease expired'
                                   ELSE 'lease ends in ' || date_trunc('second', expires_at - now())::text END
                    END
               FROM herald.locks",
            &[],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| LockRow {
                resource: r.get(0),
                kind: r.get(1),
                limit: r.get(2),
                role: r.get(3),
                holder: r.get(4),
                count: r.get(5),
                token: r.get(6),
                position: r.get(7),
                info: r.get(8),
            })
            .collect(),
    ))
}

/// May this role read report groups and output records?
pub async fn can_read_reports(client: &Client) -> Result<bool, ApiError> {
    Ok(client
        .query_one(
            "SELECT has_table_privilege('herald.report_group', 'SELECT')
                AND has_table_privilege('herald.report_output', 'SELECT')",
            &[],
        )
        .await?
        .get(0))
}

pub async fn report_counts(client: &Client) -> Result<Vec<ReportCount>, ApiError> {
    let rows = client
        .query(
            "SELECT 'group', state, count(*)::int8 FROM herald.report_group
              WHERE state IN ('open', 'sealed', 'failed') OR created_at > now() - interval '1 day'
              GROUP BY 2
             UNION ALL
             SELECT 'output ' || channel, state, count(*)::int8 FROM herald.report_output
              WHERE ended_at IS NULL OR ended_at > now() - interval '1 day'
              GROUP BY 1, 2
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReportCount {
            kind: r.get(0),
            state: r.get(1),
            count: r.get(2),
        })
        .collect())
}

/// What waits for an operator: failed groups, and outputs that are uncertain or failed
/// (at most `limit`, the oldest first): (what, state, error).
pub async fn report_problems(
    client: &Client,
    limit: i64,
) -> Result<Vec<(String, String, String)>, ApiError> {
    let rows = client
        .query(
            "(SELECT 'group ' || id || ' (' || name || ')', state,
                     'a member failed: herald.retry_job(member) or herald.release_group(' || id || ')'
                FROM herald.report_group WHERE state = 'failed' ORDER BY id LIMIT $1)
             UNION ALL
             (SELECT 'output ' || id || ' to ' || channel, state, coalesce(error, '-')
                FROM herald.report_output WHERE state IN ('uncertain', 'failed')
               ORDER BY id LIMIT $1)",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// A job that runs or waits, for `herald status`.
#[derive(Clone, Debug)]
pub struct ActiveJob {
    pub id: i64,
    pub r#type: String,
    pub class: String,
    pub state: String,
    pub node: Option<String>,
    pub concurrency_key: Option<String>,
    /// How long it has run (running) or waited (waiting), as PostgreSQL prints an interval.
    pub age: String,
}

/// Running jobs (STARTED, FINISHED) and waiting ones (CREATED), the oldest first; at most
/// `limit` of each.
pub async fn active_jobs(client: &Client, limit: i64) -> Result<Vec<ActiveJob>, ApiError> {
    let rows = client
        .query(
            "(SELECT id, type, class, state, node, concurrency_key,
                     date_trunc('second', now() - started_at)::text
                FROM herald.job WHERE state IN ('STARTED', 'FINISHED') ORDER BY id LIMIT $1)
             UNION ALL
             (SELECT id, type, class, state, node, concurrency_key,
                     date_trunc('second', now() - submitted_at)::text
                FROM herald.job WHERE state = 'CREATED' ORDER BY id LIMIT $1)",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ActiveJob {
            id: r.get(0),
            r#type: r.get(1),
            class: r.get(2),
            state: r.get(3),
            node: r.get(4),
            concurrency_key: r.get(5),
            age: r.get(6),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_from_and_print_as_the_extension_names_them() {
        for state in [QueueState::Running, QueueState::Stopped, QueueState::Held] {
            assert_eq!(QueueState::parse("drain", state.as_str()).unwrap(), state);
        }
        assert_eq!(format!("[{:<8}]", QueueState::Held), "[held    ]");
    }

    #[test]
    fn an_unknown_state_is_a_clear_error() {
        let e = QueueState::parse("drain", "paused").unwrap_err();
        assert!(matches!(e, ApiError::Unexpected { call: "drain", .. }));
        assert!(e
            .to_string()
            .starts_with("herald.drain returned \"paused\""));
    }
}

/// An outcome mail a coordinator is now sending (`herald.claim_job_mail`).
#[derive(Clone, Debug)]
pub struct DueMail {
    pub job: i64,
    pub to: String,
    pub attempt: i32,
    /// The job and its outcome: type, class, state, node, duration_ms, error, result, ...
    pub details: serde_json::Value,
}

/// `herald.claim_job_mail`: the next due outcome mail, now marked as being sent by `node`.
pub async fn claim_job_mail(client: &Client, node: &str) -> Result<Option<DueMail>, ApiError> {
    let row = client
        .query_opt(
            "SELECT job, notify_email, attempt, details::text FROM herald.claim_job_mail($1)",
            &[&node],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let details: &str = row.get(3);
    Ok(Some(DueMail {
        job: row.get(0),
        to: row.get(1),
        attempt: row.get(2),
        details: serde_json::from_str(details).map_err(|_| ApiError::Unexpected {
            call: "claim_job_mail",
            value: details.to_string(),
        })?,
    }))
}

/// `herald.record_job_mail`: how the mail went (`sent`, `retry` or `failed`).
pub async fn record_job_mail(
    client: &Client,
    job: i64,
    node: &str,
    outcome: &str,
    error: Option<&str>,
) -> Result<bool, ApiError> {
    Ok(client
        .query_one(
            "SELECT herald.record_job_mail($1, $2, $3, $4)",
            &[&job, &node, &outcome, &error],
        )
        .await?
        .get(0))
}

/// An output record this connection claimed (`herald.claim_output`): `sending`, with the
/// epoch its end must be recorded with.
#[derive(Clone, Debug)]
pub struct ClaimedOutput {
    pub id: i64,
    pub epoch: i64,
    pub group_id: Option<i64>,
    pub job: Option<i64>,
    /// The group's name, or the report's (for a report without a group).
    pub name: String,
    pub channel: String,
    /// `file`, `print` or `email`.
    pub kind: String,
    pub target: String,
    pub options: serde_json::Value,
    /// Output again as a copy (an operator's reprint).
    pub as_copy: bool,
    /// The jobs whose artefacts go out, in member order.
    pub members: Vec<i64>,
    /// Failed members left out (an `output_partial` group).
    pub failed: Vec<i64>,
    /// The database the output comes from (its server's system identifier and name), for
    /// identifiers that must be unique beyond it (a mail's Message-ID).
    pub origin: String,
}

/// `herald.claim_output(node, kinds)`: claim the oldest pending output of a channel of one
/// of `kinds`.
pub async fn claim_output(
    client: &Client,
    node: &str,
    kinds: &[&str],
) -> Result<Option<ClaimedOutput>, ApiError> {
    let row = client
        .query_opt(
            "SELECT id, epoch, group_id, job, name, channel, kind, target, options::text,
                    as_copy, members, failed, origin
               FROM herald.claim_output($1, $2)",
            &[&node, &kinds],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let options: &str = row.get(8);
    Ok(Some(ClaimedOutput {
        id: row.get(0),
        epoch: row.get(1),
        group_id: row.get(2),
        job: row.get(3),
        name: row.get(4),
        channel: row.get(5),
        kind: row.get(6),
        target: row.get(7),
        options: serde_json::from_str(options).map_err(|_| ApiError::Unexpected {
            call: "claim_output",
            value: options.to_string(),
        })?,
        as_copy: row.get(9),
        members: row.get(10),
        failed: row.get(11),
        origin: row.get(12),
    }))
}

/// One artefact of an output (`herald.output_artefacts`).
#[derive(Clone, Debug)]
pub struct Artefact {
    pub job: i64,
    pub report: String,
    pub format: String,
    pub checksum: String,
    pub content: Vec<u8>,
}

/// `herald.output_artefacts(output)`: the artefacts an output sends, in member order.
pub async fn output_artefacts(client: &Client, output: i64) -> Result<Vec<Artefact>, ApiError> {
    Ok(client
        .query(
            "SELECT job, report, format, checksum, content FROM herald.output_artefacts($1)",
            &[&output],
        )
        .await?
        .iter()
        .map(|r| Artefact {
            job: r.get(0),
            report: r.get(1),
            format: r.get(2),
            checksum: r.get(3),
            content: r.get(4),
        })
        .collect())
}

/// How an output ended (`herald.record_output`'s state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputEnd {
    Sent,
    /// Not output; pending again after the channel's retry delay (or failed once its
    /// attempts are used up).
    Retry,
    Failed,
}

/// `herald.record_output`: the end of an output this connection claimed (with `error`
/// unless sent); false if the claim was superseded (its epoch is stale).
pub async fn record_output(
    client: &Client,
    output: &ClaimedOutput,
    end: OutputEnd,
    checksum: Option<&str>,
    error: Option<&str>,
) -> Result<bool, ApiError> {
    let state = match end {
        OutputEnd::Sent => "sent",
        OutputEnd::Retry => "retry",
        OutputEnd::Failed => "failed",
    };
    Ok(client
        .query_one(
            "SELECT herald.record_output($1, $2, $3, $4, $5)",
            &[&output.id, &output.epoch, &state, &checksum, &error],
        )
        .await?
        .get(0))
}

/// `herald.rescue_outputs`: resolve outputs whose node died mid-output; how many.
pub async fn rescue_outputs(client: &Client) -> Result<i32, ApiError> {
    Ok(client
        .query_one("SELECT herald.rescue_outputs()", &[])
        .await?
        .get(0))
}

/// `herald.await_outputs`: sleep until an output may be due (true) or the timeout passes.
pub async fn await_outputs(client: &Client, timeout_ms: i32) -> Result<bool, ApiError> {
    Ok(client
        .query_one("SELECT herald.await_outputs($1)", &[&timeout_ms])
        .await?
        .get(0))
}

/// `herald.output_callout`: a CALLOUT event for a device call of an output this connection
/// has claimed.
pub async fn output_callout(
    client: &Client,
    output: i64,
    action: &str,
    details: &serde_json::Value,
) -> Result<(), ApiError> {
    client
        .execute(
            "SELECT herald.output_callout($1, $2, $3::text::jsonb)",
            &[&output, &action, &details.to_string()],
        )
        .await?;
    Ok(())
}
