//! The supervisor: keeps a control connection (LISTEN herald_queues), and every second or
//! on notification claims the running queues nobody drains and starts a drainer for each.
//! When the database goes away everything is dropped and claimed again once it is back.
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::config::RunConfig;
use crate::db;
use crate::drainer;
use crate::shutdown::Shutdown;

/// How often the supervisor looks for unclaimed queues (also the failover delay bound).
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("extension \"herald\" is not installed in the database; run CREATE EXTENSION herald; there first")]
    NotInstalled,
    #[error("cannot use the database: {0}")]
    Database(#[from] tokio_postgres::Error),
}

pub struct Coordinator {
    config: RunConfig,
    shutdown: Shutdown,
    drainers: HashMap<String, JoinHandle<()>>,
    spare: Option<Client>,
}

impl Coordinator {
    pub fn new(config: RunConfig, shutdown: Shutdown) -> Self {
        Coordinator {
            config,
            shutdown,
            drainers: HashMap::new(),
            spare: None,
        }
    }

    /// Run until shutdown. Fails only on bad configuration found at the first connection.
    pub async fn run(mut self) -> Result<(), FatalError> {
        let mut first = true;
        let mut backoff = Duration::from_millis(200);
        while !self.shutdown.is_stopping() {
            match self.session(first).await {
                Ok(()) => break,
                Err(FatalError::NotInstalled) if first => return Err(FatalError::NotInstalled),
                Err(e) => {
                    if first {
                        tracing::warn!("cannot reach the database yet: {e}; retrying");
                    } else {
                        tracing::warn!("lost the database: {e}; reconnecting");
                    }
                    self.spare = None;
                    let mut stop = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.stopped() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            // After the first successful contact, a missing extension is treated like an outage.
            first = false;
        }
        self.stop_drainers().await;
        tracing::info!(node = %self.config.node, "stopped");
        Ok(())
    }

    /// One connected period: returns Ok on shutdown, Err when the connection fails.
    async fn session(&mut self, first: bool) -> Result<(), FatalError> {
        let (control, mut notifications) =
            db::connect_listening(&self.config.database, &self.config.node).await?;
        let installed: bool = control
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'herald')",
                &[],
            )
            .await?
            .get(0);
        if !installed {
            return Err(FatalError::NotInstalled);
        }
        control.batch_execute("LISTEN herald_queues").await?;
        if first {
            tracing::info!(node = %self.config.node, "coordinator started");
        } else {
            tracing::info!(node = %self.config.node, "reconnected");
        }
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
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
            self.claim_running_queues(&control).await?;
        }
    }

    async fn claim_running_queues(&mut self, control: &Client) -> Result<(), FatalError> {
        self.drainers.retain(|_, handle| !handle.is_finished());
        let rows = control
            .query(
                "SELECT name FROM herald.event_queue WHERE event_run = 1 ORDER BY name",
                &[],
            )
            .await?;
        for row in rows {
            let queue: String = row.get(0);
            if self.drainers.contains_key(&queue) || self.shutdown.is_stopping() {
                continue;
            }
            let spare = match self.spare.take() {
                Some(c) if !c.is_closed() => c,
                _ => db::connect(&self.config.database, &self.config.node).await?,
            };
            let claimed: bool = match spare
                .query_one("SELECT herald.claim_queue($1)", &[&queue])
                .await
            {
                Ok(row) => row.get(0),
                Err(e) => {
                    tracing::warn!(queue = %queue, "claim failed: {e}");
                    continue;
                }
            };
            if !claimed {
                self.spare = Some(spare);
                continue;
            }
            let (q, node, shutdown) = (
                queue.clone(),
                self.config.node.clone(),
                self.shutdown.clone(),
            );
            let handle = tokio::spawn(async move {
                match drainer::run(spare, q.clone(), node, shutdown).await {
                    Ok(_) => {}
                    Err(e) => tracing::warn!(queue = %q, "drainer ended: {e}"),
                }
            });
            self.drainers.insert(queue, handle);
        }
        Ok(())
    }

    /// Wait for every drainer to finish its current lookup.
    async fn stop_drainers(&mut self) {
        for (_, handle) in self.drainers.drain() {
            let _ = handle.await;
        }
    }
}
