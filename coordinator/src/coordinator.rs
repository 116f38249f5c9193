//! The coordinator: keeps a control connection (LISTEN herald_queues), and every second or
//! on notification gives the running queues nobody drains to its queue lanes
//! (`queues::claims`). When the database goes away everything is dropped and claimed again
//! once it is back. Beside it run the job manager (`jobs::manager`) and the output worker
//! (`reports::output`), with connections of their own. All of them together stay within
//! `--max-connections` (`config::Budget`).
use std::time::Duration;
use tracing::{instrument, Instrument};

use crate::api::{self, ApiError};
use crate::config::RunConfig;
use crate::db;
use crate::jobs::manager::{self as job_manager, JobSettings};
use crate::locks;
use crate::queues::claims::Claims;
use crate::reports::{channels, output as report_output};
use crate::service::{self, Backoff};
use crate::shutdown::Shutdown;

/// How often the coordinator looks for unclaimed queues (also the failover delay bound).
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Why a connected period ended.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Fatal at the first contact: bad configuration, the operator must act.
    #[error("extension \"herald\" is not installed in the database; run CREATE EXTENSION herald; there first")]
    NotInstalled,
    /// Retried: the database is unreachable, restarting, or the connection broke.
    #[error("cannot use the database: {0}")]
    Database(#[from] ApiError),
}

impl From<tokio_postgres::Error> for RunError {
    fn from(e: tokio_postgres::Error) -> Self {
        RunError::Database(ApiError::Database(e))
    }
}

pub struct Coordinator {
    config: RunConfig,
    shutdown: Shutdown,
    claims: Claims,
}

impl Coordinator {
    pub fn new(config: RunConfig, shutdown: Shutdown) -> Self {
        let claims = Claims::new(
            config.database.clone(),
            config.node.clone(),
            config.budget.lanes,
            shutdown.clone(),
        );
        Coordinator {
            config,
            shutdown,
            claims,
        }
    }

    /// Run until shutdown. Fails only on bad configuration found at the first connection;
    /// every other failure is retried with back-off.
    #[instrument(name = "coordinator", skip_all, fields(node = %self.config.node))]
    pub async fn run(mut self) -> Result<(), RunError> {
        // The job manager keeps its own connections (and reconnects on its own); it starts
        // once the first contact shows the configuration is good.
        let mut jobs = None;
        let mut first = true;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !self.shutdown.is_stopping() {
            match self.session(first, &mut backoff, &mut jobs).await {
                Ok(()) => break,
                Err(RunError::NotInstalled) if first => return Err(RunError::NotInstalled),
                Err(e) => {
                    if first {
                        tracing::warn!("cannot reach the database yet: {e}; retrying");
                    } else {
                        tracing::warn!("lost the database: {e}; reconnecting");
                    }
                    service::pause(backoff.next_delay(), &self.shutdown).await;
                }
            }
            // After the first attempt (whether it connected or not), a missing extension is
            // treated like an outage and every failure is logged as a lost database.
            first = false;
        }
        self.claims.stop().await;
        if let Some((jobs, outputs)) = jobs {
            let _ = jobs.await;
            let _ = outputs.await;
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// One connected period: returns Ok on shutdown, Err when the connection fails.
    async fn session(
        &mut self,
        first: bool,
        backoff: &mut Backoff,
        jobs: &mut Option<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)>,
    ) -> Result<(), RunError> {
        let (control, mut notifications) =
            db::connect_listening(&self.config.database, &self.config.node).await?;
        if !api::extension_installed(&control).await? {
            return Err(RunError::NotInstalled);
        }
        if jobs.is_none() {
            let settings = JobSettings {
                runners: self.config.job_runners,
                sql_runners: self.config.budget.sql_runners,
                mailer: self.config.mailer.clone(),
            };
            let outputs = report_output::OutputSettings {
                spool_dir: self.config.spool_dir.clone(),
                mailer: self.config.mailer.clone(),
                print: channels::lp_available(),
            };
            *jobs = Some((
                tokio::spawn(
                    job_manager::run(
                        self.config.database.clone(),
                        self.config.node.clone(),
                        settings,
                        self.shutdown.clone(),
                    )
                    .in_current_span(),
                ),
                tokio::spawn(
                    report_output::run(
                        self.config.database.clone(),
                        self.config.node.clone(),
                        outputs,
                        self.shutdown.clone(),
                    )
                    .in_current_span(),
                ),
            ));
        }
        backoff.reset();
        if first {
            tracing::info!("coordinator started");
        } else {
            tracing::info!("reconnected");
        }
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.shutdown.clone();
        // A standby is read-only: nothing to drain until it is promoted.
        if api::in_recovery(&control).await? {
            tracing::info!("connected to a standby (read-only); idle until it is promoted");
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.stopped() => return Ok(()),
                }
                if !api::in_recovery(&control).await? {
                    tracing::info!("the server was promoted; draining");
                    break;
                }
            }
        }
        api::listen_for_queue_changes(&control).await?;
        let mut expiry = locks::Expiry::default();
        loop {
            tokio::select! {
                _ = tick.tick() => expiry.run(&control).await?,
                n = notifications.recv() => {
                    if n.is_none() {
                        // The control connection ended.
                        control.simple_query("SELECT 1").await?;
                    }
                    // Coalesce a burst of notifications into one scan.
                    while notifications.try_recv().is_ok() {}
                }
                _ = stop.stopped() => return Ok(()),
            }
            self.claims.claim_running_queues(&control).await?;
        }
    }
}
