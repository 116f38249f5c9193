//! The job manager: one per coordinator. Each turn it
//! 1. rescues jobs whose claim is gone (`herald.rescue_jobs`: their node died) and fires
//!    due alerts (`herald.check_job_alerts`),
//! 2. completes FINISHED jobs (`herald.complete_next_job`),
//! 3. claims and starts jobs while it has a free runner (`herald.claim_next_job`): a
//!    `newthread` job runs in a task of its own, any other inline, before the next claim,
//! 4. waits in `herald.await_jobs` until a commit makes a job startable (a `startnow`
//!    submit, a slot freed, a retry, a job finished outside Herald) or the tick passes.
//!
//! A job's claim is held by the connection that claimed it until the run ends: if this
//! coordinator dies, its connections close, the claims go, and any manager's next rescue
//! finds the job. A `sql` job runs on the runner connection that claimed it (one job at a
//! time per connection, at most `sql_runners` of them); `command` jobs are all claimed on
//! one connection, which holds their claims while the commands run outside the database
//! and reports their ends, so that running commands cost no connections. A command whose
//! claim connection broke is killed: its job is rescued, and never runs twice at once.
//! Claim connections check for a vanished client every second
//! (`client_connection_check_interval`), so a job's statement does not outlive its
//! coordinator, and use TCP keepalives, so a dead host is noticed.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{Client, Config};
use tracing::Instrument;

use super::{command, mail};
use crate::api::{self, ApiError, ClaimedJob, Runner};
use crate::db;
use crate::service::{self, Backoff};
use crate::shutdown::Shutdown;
use crate::smtp::{Mailer, Sent};

/// The longest wait between two turns.
const TICK: Duration = Duration::from_secs(1);

/// How a coordinator runs jobs.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Jobs this coordinator runs at once.
    pub runners: usize,
    /// Connections that run `sql` jobs (so: `sql` jobs at once).
    pub sql_runners: usize,
    /// The mail server for outcome mails; without it this node sends none.
    pub mailer: Option<Mailer>,
}

/// Outcome mails sent at once.
const MAILS_AT_ONCE: usize = 4;

/// A job that ran in a task of its own has ended; a `sql` job gives its connection back.
enum Ended {
    Sql(Client),
    Command,
}

/// Run the job manager until shutdown, reconnecting with back-off after failures. On
/// shutdown it starts nothing new and waits for the jobs that run.
pub async fn run(database: Config, node: String, settings: JobSettings, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut manager = Manager {
        database,
        node,
        settings,
        shutdown: shutdown.clone(),
        idle: Vec::new(),
        holder: None,
        running_sql: 0,
        running_commands: 0,
        returned: mpsc::unbounded_channel(),
        mails_in_flight: 0,
        mailed: mpsc::unbounded_channel(),
    };
    while !shutdown.is_stopping() {
        match manager.session(&mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!("job manager: {e}; retrying");
                manager.idle.clear();
                manager.holder = None;
                service::pause(backoff.next_delay(), &shutdown).await;
            }
        }
    }
    manager.wait_for_runs().await;
}

struct Manager {
    database: Config,
    node: String,
    settings: JobSettings,
    shutdown: Shutdown,
    /// Runner connections for `sql` jobs, holding no claim.
    idle: Vec<Client>,
    /// The connection holding the claims of running `command` jobs.
    holder: Option<Arc<Client>>,
    /// Jobs running now, inline or in tasks of their own.
    running_sql: usize,
    running_commands: usize,
    returned: (mpsc::UnboundedSender<Ended>, mpsc::UnboundedReceiver<Ended>),
    /// Outcome mails being sent, and how each went.
    mails_in_flight: usize,
    mailed: (
        mpsc::UnboundedSender<Mailed>,
        mpsc::UnboundedReceiver<Mailed>,
    ),
}

/// How the outcome mail of a job went.
type Mailed = (i64, Sent);

impl Manager {
    async fn session(&mut self, backoff: &mut Backoff) -> Result<(), ApiError> {
        let control = db::connect(&self.database, &self.node).await?;
        if api::in_recovery(&control).await? {
            // A standby runs no jobs; look again after a while.
            service::pause(Duration::from_secs(2), &self.shutdown).await;
            return Err(ApiError::Unexpected {
                call: "claim_next_job",
                value: "the server is a standby (read-only)".into(),
            });
        }
        backoff.reset();
        let mut stop = self.shutdown.clone();
        loop {
            self.take_back_returned();
            if self.shutdown.is_stopping() {
                break;
            }
            let rescued = api::rescue_jobs(&control).await?;
            if rescued > 0 {
                tracing::warn!(rescued, "rescued jobs whose node lost its claim");
            }
            api::check_job_alerts(&control).await?;
            complete_finished(&control, &self.node).await?;
            self.record_mails(&control).await?;
            self.send_mails(&control).await?;
            self.start_jobs(&control).await?;
            let wait = api::await_jobs(&control, TICK.as_millis() as i32);
            match service::unless_stopped(wait, &mut stop).await {
                Some(woken) => {
                    woken?;
                }
                None => break,
            }
        }
        // Mails being sent are seen through and recorded, so that none stays "sending".
        while self.mails_in_flight > 0 {
            match self.mailed.1.recv().await {
                Some((job, sent)) => self.record_mail(&control, job, sent).await?,
                None => break,
            }
        }
        Ok(())
    }

    /// Claim due outcome mails and send them in tasks of their own (a slow mail server
    /// holds up nothing else).
    async fn send_mails(&mut self, control: &Client) -> Result<(), ApiError> {
        let Some(mailer) = self.settings.mailer.clone() else {
            return Ok(());
        };
        while self.mails_in_flight < MAILS_AT_ONCE {
            let Some(mail) = api::claim_job_mail(control, &self.node).await? else {
                break;
            };
            self.mails_in_flight += 1;
            let (mailer, back) = (mailer.clone(), self.mailed.0.clone());
            tokio::spawn(
                async move {
                    let sent = match mail::outcome_message(mailer.from(), &mail) {
                        Ok(message) => mailer.send(message).await,
                        Err(e) => Sent::Failed(e),
                    };
                    let _ = back.send((mail.job, sent));
                }
                .in_current_span(),
            );
        }
        Ok(())
    }

    async fn record_mails(&mut self, control: &Client) -> Result<(), ApiError> {
        while let Ok((job, sent)) = self.mailed.1.try_recv() {
            self.record_mail(control, job, sent).await?;
        }
        Ok(())
    }

    async fn record_mail(
        &mut self,
        control: &Client,
        job: i64,
        sent: Sent,
    ) -> Result<(), ApiError> {
        self.mails_in_flight -= 1;
        let (outcome, error) = match &sent {
            Sent::Sent => {
                tracing::info!(job, "outcome mail sent");
                ("sent", None)
            }
            Sent::Retry(e) => {
                tracing::warn!(job, "outcome mail not sent, will retry: {e}");
                ("retry", Some(e.as_str()))
            }
            Sent::Failed(e) => {
                tracing::warn!(job, "outcome mail failed: {e}");
                ("failed", Some(e.as_str()))
            }
        };
        api::record_job_mail(control, job, &self.node, outcome, error).await?;
        Ok(())
    }

    fn running(&self) -> usize {
        self.running_sql + self.running_commands
    }

    /// Claim and start jobs while a runner is free: `sql` jobs on a free runner
    /// connection, `command` jobs on the claims connection.
    async fn start_jobs(&mut self, control: &Client) -> Result<(), ApiError> {
        while !self.shutdown.is_stopping() {
            self.take_back_returned();
            let mut started = false;
            if self.running() < self.settings.runners
                && self.running_sql < self.settings.sql_runners
            {
                started |= self.start_sql_job(control).await?;
            }
            if self.running() < self.settings.runners {
                started |= self.start_command_job(control).await?;
            }
            if !started {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn start_sql_job(&mut self, control: &Client) -> Result<bool, ApiError> {
        let conn = match self.idle.pop() {
            Some(c) if !c.is_closed() => c,
            _ => db::connect_runner(&self.database, &self.node).await?,
        };
        let job = match api::claim_next_job(&conn, &self.node, Runner::Sql).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                self.idle.push(conn);
                return Ok(false);
            }
            Err(e) => {
                tracing::warn!("claiming a job failed: {e}");
                return Ok(false);
            }
        };
        tracing::info!(job = job.id, r#type = %job.r#type, "started");
        self.running_sql += 1;
        if job.newthread {
            let (node, back) = (self.node.clone(), self.returned.0.clone());
            tokio::spawn(
                async move {
                    run_claimed(&conn, &job, &node).await;
                    let _ = back.send(Ended::Sql(conn));
                }
                .in_current_span(),
            );
        } else {
            run_claimed(&conn, &job, &self.node).await;
            self.running_sql -= 1;
            self.idle.push(conn);
            complete_finished(control, &self.node).await?;
        }
        Ok(true)
    }

    async fn start_command_job(&mut self, control: &Client) -> Result<bool, ApiError> {
        let holder = match &self.holder {
            Some(h) if !h.is_closed() => h.clone(),
            _ => {
                let h = Arc::new(db::connect_runner(&self.database, &self.node).await?);
                self.holder = Some(h.clone());
                h
            }
        };
        let job = match api::claim_next_job(&holder, &self.node, Runner::Command).await {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::warn!("claiming a job failed: {e}");
                return Ok(false);
            }
        };
        tracing::info!(job = job.id, r#type = %job.r#type, "started");
        self.running_commands += 1;
        if job.newthread {
            let (node, back) = (self.node.clone(), self.returned.0.clone());
            tokio::spawn(
                async move {
                    run_claimed(&holder, &job, &node).await;
                    let _ = back.send(Ended::Command);
                }
                .in_current_span(),
            );
        } else {
            run_claimed(&holder, &job, &self.node).await;
            self.running_commands -= 1;
            complete_finished(control, &self.node).await?;
        }
        Ok(true)
    }

    fn take_back_returned(&mut self) {
        while let Ok(ended) = self.returned.1.try_recv() {
            self.ended(ended);
        }
    }

    fn ended(&mut self, ended: Ended) {
        match ended {
            Ended::Sql(conn) => {
                self.running_sql -= 1;
                if !conn.is_closed() {
                    self.idle.push(conn);
                }
            }
            Ended::Command => self.running_commands -= 1,
        }
    }

    async fn wait_for_runs(&mut self) {
        while self.running() > 0 {
            match self.returned.1.recv().await {
                Some(ended) => self.ended(ended),
                None => break,
            }
        }
    }
}

/// Complete every FINISHED job nobody completes now.
async fn complete_finished(client: &Client, node: &str) -> Result<(), ApiError> {
    while let Some(job) = api::complete_next_job(client, node).await? {
        tracing::debug!(job, "completed");
    }
    Ok(())
}

/// Run a job claimed on `conn` and report its end there. Errors are logged: the job's
/// state in the database says what happened, and a connection that broke took the claim
/// with it (the job is rescued).
async fn run_claimed(conn: &Client, job: &ClaimedJob, node: &str) {
    let span = tracing::info_span!("job", id = job.id, r#type = %job.r#type);
    async {
        match job.runner {
            Runner::Sql => match api::run_job(conn, job.id).await {
                Ok(state) => tracing::info!(%state, "ran"),
                Err(e) => report_failure(conn, job, &e.to_string()).await,
            },
            Runner::Command => match command::run(conn, job).await {
                Ok(outcome) if outcome.ok => {
                    if let Err(e) = api::finish_job(conn, job.id, &outcome.result).await {
                        tracing::warn!("cannot record the command's success: {e}");
                    } else {
                        tracing::info!("command done");
                    }
                }
                Ok(outcome) => {
                    let error = outcome.error.unwrap_or_else(|| "command failed".into());
                    report_failure(conn, job, &error).await;
                }
                Err(e) => report_failure(conn, job, &e.to_string()).await,
            },
        }
        if let Err(e) = complete_finished(conn, node).await {
            tracing::debug!("completion after the run: {e}");
        }
    }
    .instrument(span)
    .await
}

async fn report_failure(conn: &Client, job: &ClaimedJob, error: &str) {
    if conn.is_closed() {
        tracing::warn!("the job's connection broke ({error}); it will be rescued");
        return;
    }
    match api::fail_job(conn, job.id, error).await {
        Ok(state) => tracing::warn!(%state, "failed: {error}"),
        Err(e) => tracing::warn!("failed ({error}), and recording that failed too: {e}"),
    }
}
