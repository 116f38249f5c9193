//! The job manager: one per coordinator, with its runners.
//!
//! The manager's connection (the control connection), each turn:
//! 1. once a second, rescues jobs whose claim is gone (`herald.rescue_jobs`: their node
//!    died) and fires due alerts (`herald.check_job_alerts`),
//! 2. completes FINISHED jobs (`herald.complete_next_job`) and sends outcome mails,
//! 3. claims `command` jobs while a runner is free, and runs each in a task of its own,
//! 4. tells the `sql` runners that a job may be startable, and
//! 5. waits in `herald.await_jobs` until a commit makes a job startable (a `startnow`
//!    submit, a slot of a limited class freed, a retry, a job finished outside Herald) or
//!    the tick passes.
//!
//! Each `sql` runner (at most `sql_runners`) is a task with a connection of its own that
//! claims a job (`herald.claim_next_job`), runs it there (`herald.run_job`) and claims the
//! next, without going back to the manager; when it finds none it sleeps until the
//! manager's next turn. A runner that found a job first wakes another idle one, so that a
//! backlog gets every runner at once. Without `newthread`, a coordinator runs one job at a
//! time (whoever holds the inline slot may claim such jobs); with it, jobs run beside each
//! other up to `--job-runners`.
//!
//! A job's claim is held by the connection that claimed it until the run ends: if this
//! coordinator dies, its connections close, the claims go, and any manager's next rescue
//! finds the job. `command` jobs are all claimed on one connection, which holds their
//! claims while the commands run outside the database and reports their ends, so that
//! running commands cost no connections. A command whose claim connection broke is
//! killed: its job is rescued, and never runs twice at once. Claim connections check for a
//! vanished client every second (`client_connection_check_interval`), so a job's statement
//! does not outlive its coordinator, and use TCP keepalives, so a dead host is noticed.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, OwnedMutexGuard};
use tokio_postgres::{Client, Config};
use tracing::Instrument;

use super::{command, mail};
use crate::api::{self, ApiError, ClaimedJob, Runner, SqlRunner};
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

/// What the manager and its runners share.
struct Shared {
    database: Config,
    node: String,
    shutdown: Shutdown,
    /// Jobs this coordinator runs at once (`--job-runners`).
    runners: usize,
    /// Jobs running now (`sql` and `command`).
    running: AtomicUsize,
    /// A runner was refused a slot: the next release wakes one.
    starved: AtomicBool,
    /// The manager has a session on a primary: runners may claim. (On a standby, or while
    /// the manager reconnects, they wait instead of failing in a loop.)
    ready: AtomicBool,
    /// A job may be startable: wakes one idle `sql` runner (which wakes the next when it
    /// finds a job).
    work: Notify,
    /// Held while a job without `newthread` runs: such jobs run one at a time.
    inline: Arc<tokio::sync::Mutex<()>>,
}

impl Shared {
    /// Take a runner slot, if one is free.
    fn reserve(&self) -> bool {
        let taken = self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.runners).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.starved.store(true, Ordering::Release);
        }
        taken
    }

    fn release(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        if self.starved.swap(false, Ordering::AcqRel) {
            self.work.notify_one();
        }
    }

    /// The inline slot if it is free: whoever holds it may claim jobs without `newthread`.
    fn try_inline(&self) -> Option<OwnedMutexGuard<()>> {
        self.inline.clone().try_lock_owned().ok()
    }
}

/// Run the job manager and its `sql` runners until shutdown, reconnecting with back-off
/// after failures. On shutdown nothing new starts, and the jobs that run are seen through.
pub async fn run(database: Config, node: String, settings: JobSettings, shutdown: Shutdown) {
    let shared = Arc::new(Shared {
        database,
        node,
        shutdown: shutdown.clone(),
        runners: settings.runners,
        running: AtomicUsize::new(0),
        starved: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        work: Notify::new(),
        inline: Arc::new(tokio::sync::Mutex::new(())),
    });
    let sql_runners: Vec<_> = (0..settings.sql_runners)
        .map(|_| tokio::spawn(sql_runner(shared.clone()).in_current_span()))
        .collect();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut manager = Manager {
        shared: shared.clone(),
        mailer: settings.mailer,
        holder: None,
        running_commands: 0,
        returned: mpsc::unbounded_channel(),
        mails_in_flight: 0,
        mailed: mpsc::unbounded_channel(),
    };
    while !shutdown.is_stopping() {
        match manager.session(&mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                shared.ready.store(false, Ordering::Release);
                tracing::warn!("job manager: {e}; retrying");
                manager.holder = None;
                service::pause(backoff.next_delay(), &shutdown).await;
            }
        }
    }
    manager.wait_for_commands().await;
    for runner in sql_runners {
        let _ = runner.await;
    }
}

/// A `sql` runner: claims and runs jobs on its own connection while it finds any, then
/// sleeps until the manager (or another runner) says a job may be startable.
async fn sql_runner(shared: Arc<Shared>) {
    let mut conn: Option<SqlRunner> = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut stop = shared.shutdown.clone();
    while !shared.shutdown.is_stopping() {
        // Registered before the look, so that a wake-up sent during it is not lost.
        let notified = shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match run_jobs(&shared, &mut conn).await {
            Ok(true) => {
                backoff.reset();
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("sql runner: {e}; retrying");
                if conn.as_ref().is_some_and(|c| c.client.is_closed()) {
                    conn = None;
                }
                service::pause(backoff.next_delay(), &shared.shutdown).await;
                continue;
            }
        }
        if service::unless_stopped(notified, &mut stop).await.is_none() {
            break;
        }
    }
}

/// Claim the next `sql` job on this runner's connection and run it, and each job claimed
/// with the run of the one before (`herald.run_job_and_claim`); false when there was none
/// (or no runner slot is free).
async fn run_jobs(shared: &Shared, conn: &mut Option<SqlRunner>) -> Result<bool, ApiError> {
    if !shared.ready.load(Ordering::Acquire) || !shared.reserve() {
        return Ok(false);
    }
    let ran = async {
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            let client = db::connect_runner(&shared.database, &shared.node).await?;
            *conn = Some(SqlRunner::new(client).await?);
        }
        let Some(runner) = conn.as_ref() else {
            return Ok(false);
        };
        let mut inline = shared.try_inline();
        let Some(mut job) = runner.claim(&shared.node, inline.is_some()).await? else {
            return Ok(false);
        };
        // More may wait: an idle runner looks too.
        shared.work.notify_one();
        loop {
            // The inline slot is kept only while a job without `newthread` runs.
            if job.newthread {
                inline = None;
            }
            let go_on = !shared.shutdown.is_stopping();
            if go_on && inline.is_none() {
                inline = shared.try_inline();
            }
            let next = run_sql(
                runner,
                &job,
                &shared.node,
                go_on.then_some(inline.is_some()),
            )
            .await;
            match next {
                Some(next) => job = next,
                None => break,
            }
        }
        Ok(true)
    }
    .await;
    shared.release();
    ran
}

/// Run a `sql` job claimed on `runner`; with `claim_next` (may it claim a job without
/// `newthread`?), claim the next job in the same transaction and return it. Errors are
/// logged: the job's state in the database says what happened.
async fn run_sql(
    runner: &SqlRunner,
    job: &ClaimedJob,
    node: &str,
    claim_next: Option<bool>,
) -> Option<ClaimedJob> {
    let span = tracing::info_span!("job", id = job.id, r#type = %job.r#type);
    async {
        tracing::debug!("started");
        let ran = match claim_next {
            Some(inline) => runner.run_and_claim(job.id, node, inline).await,
            None => api::run_job(&runner.client, job.id)
                .await
                .map(|state| (state, None)),
        };
        match ran {
            Ok((state, next)) => {
                tracing::debug!(%state, "ran");
                // A job whose type has completion hooks is FINISHED now: completed here at
                // once (or by any manager).
                if state == "FINISHED" {
                    if let Err(e) = complete_finished(&runner.client, node).await {
                        tracing::debug!("completion after the run: {e}");
                    }
                }
                next
            }
            Err(e) => {
                report_failure(&runner.client, job, &e.to_string()).await;
                None
            }
        }
    }
    .instrument(span)
    .await
}

struct Manager {
    shared: Arc<Shared>,
    /// The mail server for outcome mails; without it this node sends none.
    mailer: Option<Mailer>,
    /// The connection holding the claims of running `command` jobs.
    holder: Option<Arc<Client>>,
    running_commands: usize,
    /// Command jobs that ended.
    returned: (mpsc::UnboundedSender<()>, mpsc::UnboundedReceiver<()>),
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
        let shared = self.shared.clone();
        let control = db::connect(&shared.database, &shared.node).await?;
        if api::in_recovery(&control).await? {
            // A standby runs no jobs; look again after a while.
            service::pause(Duration::from_secs(2), &shared.shutdown).await;
            return Err(ApiError::Unexpected {
                call: "claim_next_job",
                value: "the server is a standby (read-only)".into(),
            });
        }
        backoff.reset();
        shared.ready.store(true, Ordering::Release);
        let mut stop = shared.shutdown.clone();
        // Rescue and alerts look at every running job: once a tick, however often the
        // manager is woken.
        let mut last_look: Option<Instant> = None;
        loop {
            self.take_back_returned();
            if shared.shutdown.is_stopping() {
                break;
            }
            if last_look.is_none_or(|t| t.elapsed() >= TICK) {
                last_look = Some(Instant::now());
                let rescued = api::rescue_jobs(&control).await?;
                if rescued > 0 {
                    tracing::warn!(rescued, "rescued jobs whose node lost its claim");
                }
                api::check_job_alerts(&control).await?;
            }
            complete_finished(&control, &shared.node).await?;
            self.record_mails(&control).await?;
            self.send_mails(&control).await?;
            self.start_command_jobs().await?;
            shared.work.notify_one();
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
        let Some(mailer) = self.mailer.clone() else {
            return Ok(());
        };
        while self.mails_in_flight < MAILS_AT_ONCE {
            let Some(mail) = api::claim_job_mail(control, &self.shared.node).await? else {
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
            // An outcome mail is sent at most once: one that may have gone out is not resent.
            Sent::Failed(e) | Sent::MaybeSent(e) => {
                tracing::warn!(job, "outcome mail failed: {e}");
                ("failed", Some(e.as_str()))
            }
        };
        api::record_job_mail(control, job, &self.shared.node, outcome, error).await?;
        Ok(())
    }

    /// Claim `command` jobs on the claims connection while a runner is free; each runs in
    /// a task of its own.
    async fn start_command_jobs(&mut self) -> Result<(), ApiError> {
        let shared = self.shared.clone();
        while !shared.shutdown.is_stopping() && shared.reserve() {
            let holder = match &self.holder {
                Some(h) if !h.is_closed() => h.clone(),
                _ => match db::connect_runner(&shared.database, &shared.node).await {
                    Ok(h) => {
                        let h = Arc::new(h);
                        self.holder = Some(h.clone());
                        h
                    }
                    Err(e) => {
                        shared.release();
                        return Err(e.into());
                    }
                },
            };
            let inline = shared.try_inline();
            let job =
                match api::claim_next_job(&holder, &shared.node, Runner::Command, inline.is_some())
                    .await
                {
                    Ok(Some(job)) => job,
                    Ok(None) => {
                        shared.release();
                        return Ok(());
                    }
                    Err(e) => {
                        shared.release();
                        tracing::warn!("claiming a job failed: {e}");
                        return Ok(());
                    }
                };
            tracing::debug!(job = job.id, r#type = %job.r#type, "started");
            self.running_commands += 1;
            let inline = if job.newthread { None } else { inline };
            let (shared, back) = (shared.clone(), self.returned.0.clone());
            tokio::spawn(
                async move {
                    run_claimed(&holder, &job, &shared.node).await;
                    drop(inline);
                    shared.release();
                    let _ = back.send(());
                }
                .in_current_span(),
            );
        }
        Ok(())
    }

    fn take_back_returned(&mut self) {
        while self.returned.1.try_recv().is_ok() {
            self.running_commands -= 1;
        }
    }

    async fn wait_for_commands(&mut self) {
        while self.running_commands > 0 {
            match self.returned.1.recv().await {
                Some(()) => self.running_commands -= 1,
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
        // A job whose type has completion hooks is FINISHED now and completed here at once
        // (or by any manager); one without is COMPLETED with its run.
        let finished = match job.runner {
            Runner::Sql => match api::run_job(conn, job.id).await {
                Ok(state) => {
                    tracing::debug!(%state, "ran");
                    state == "FINISHED"
                }
                Err(e) => {
                    report_failure(conn, job, &e.to_string()).await;
                    false
                }
            },
            Runner::Command => match command::run(conn, job).await {
                Ok(outcome) if outcome.ok => {
                    match api::finish_job(conn, job.id, &outcome.result).await {
                        Err(e) => tracing::warn!("cannot record the command's success: {e}"),
                        Ok(_) => tracing::debug!("command done"),
                    }
                    true
                }
                Ok(outcome) => {
                    let error = outcome.error.unwrap_or_else(|| "command failed".into());
                    report_failure(conn, job, &error).await;
                    false
                }
                Err(e) => {
                    report_failure(conn, job, &e.to_string()).await;
                    false
                }
            },
        };
        if finished {
            if let Err(e) = complete_finished(conn, node).await {
                tracing::debug!("completion after the run: {e}");
            }
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
