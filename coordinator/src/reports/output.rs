//! The output worker: one per coordinator, on a connection of its own (which holds the
//! claim of the output it sends). Each turn it
//! 1. once a second, resolves outputs whose node died mid-output (`herald.rescue_outputs`:
//!    files and mails go out again, prints become uncertain),
//! 2. claims pending outputs of the channels this node can serve (file with `--spool-dir`,
//!    print where `lp` is installed, email with `--smtp-url`) and sends each: the claim
//!    commits `sending` before the device is called, the end is recorded with the claim's
//!    epoch,
//! 3. sleeps in `herald.await_outputs` until a commit makes an output due, or the tick.
//!
//! If this coordinator dies while sending, its connection closes, the claim goes, and any
//! worker's next rescue applies the channel's policy.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config};
use tracing::Instrument;

use super::channels::{self, ChannelError};
use crate::api::{self, ApiError, ClaimedOutput};
use crate::db;
use crate::service::{self, Backoff};
use crate::shutdown::Shutdown;
use crate::smtp::Mailer;

const TICK: Duration = Duration::from_secs(1);

/// What this node can send output to.
#[derive(Clone, Debug, Default)]
pub struct OutputSettings {
    /// Where file channels write (`--spool-dir`); without it this node writes no files.
    pub spool_dir: Option<PathBuf>,
    /// The mail server (`--smtp-url`); without it this node sends no mail.
    pub mailer: Option<Mailer>,
    /// `lp` is installed here.
    pub print: bool,
}

impl OutputSettings {
    fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.spool_dir.is_some() {
            kinds.push("file");
        }
        if self.print {
            kinds.push("print");
        }
        if self.mailer.is_some() {
            kinds.push("email");
        }
        kinds
    }
}

/// Run the output worker until shutdown, reconnecting with back-off. On shutdown the
/// output being sent is finished first.
pub async fn run(database: Config, node: String, settings: OutputSettings, shutdown: Shutdown) {
    let kinds = settings.kinds();
    if kinds.is_empty() {
        tracing::info!("output: no channel kind available here (no --spool-dir, lp or --smtp-url); not sending output");
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shutdown.is_stopping() {
        match session(&database, &node, &settings, &kinds, &shutdown, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!("output worker: {e}; retrying");
                service::pause(backoff.next_delay(), &shutdown).await;
            }
        }
    }
}

async fn session(
    database: &Config,
    node: &str,
    settings: &OutputSettings,
    kinds: &[&str],
    shutdown: &Shutdown,
    backoff: &mut Backoff,
) -> Result<(), ApiError> {
    let client = db::connect_runner(database, node).await?;
    // A standby is read-only: nothing to send until it is promoted (quietly: the
    // coordinator says so once).
    while api::in_recovery(&client).await? {
        service::pause(TICK, shutdown).await;
        if shutdown.is_stopping() {
            return Ok(());
        }
    }
    backoff.reset();
    let mut stop = shutdown.clone();
    let mut last_rescue: Option<Instant> = None;
    while !shutdown.is_stopping() {
        if last_rescue.is_none_or(|t| t.elapsed() >= TICK) {
            let rescued = api::rescue_outputs(&client).await?;
            if rescued > 0 {
                tracing::info!(rescued, "outputs of stopped nodes resolved");
            }
            last_rescue = Some(Instant::now());
        }
        if !kinds.is_empty() {
            while !shutdown.is_stopping() {
                let Some(output) = api::claim_output(&client, node, kinds).await? else {
                    break;
                };
                send(&client, settings, &output).await?;
            }
        }
        let wait = api::await_outputs(&client, TICK.as_millis() as i32);
        if service::unless_stopped(wait, &mut stop).await.is_none() {
            break;
        }
    }
    Ok(())
}

/// Send one claimed output through its channel and record how it went.
async fn send(
    client: &Client,
    settings: &OutputSettings,
    output: &ClaimedOutput,
) -> Result<(), ApiError> {
    let span = tracing::info_span!("output", id = output.id, channel = %output.channel);
    send_in_span(client, settings, output)
        .instrument(span)
        .await
}

async fn send_in_span(
    client: &Client,
    settings: &OutputSettings,
    output: &ClaimedOutput,
) -> Result<(), ApiError> {
    // An artefact that cannot be read (gone from the artefact directory, say) fails this
    // output for good: recorded, not retried by every node in turn.
    let artefacts = match api::output_artefacts(client, output.id).await {
        Ok(artefacts) => artefacts,
        Err(ApiError::Database(e)) if e.as_db_error().is_some() => {
            let error = ApiError::Database(e).to_string();
            tracing::warn!("output failed: {error}");
            api::record_output(client, output, api::OutputEnd::Failed, None, Some(&error)).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let details = serde_json::json!({
        "target": output.target, "kind": output.kind, "copy": output.as_copy,
        "members": output.members,
    });
    let callout = output.kind != "file";
    if callout {
        api::output_callout(client, output.id, "begin", &details).await?;
    }
    let started = Instant::now();
    let result = match output.kind.as_str() {
        "file" => match &settings.spool_dir {
            Some(spool) => channels::file(spool, output, &artefacts).map(|(_, sum)| sum),
            None => Err(ChannelError::Retry("this node has no --spool-dir".into())),
        },
        "print" => channels::print(output, &artefacts).await,
        "email" => match &settings.mailer {
            Some(mailer) => channels::email(mailer, output, &artefacts).await,
            None => Err(ChannelError::Retry("this node has no --smtp-url".into())),
        },
        other => Err(ChannelError::Failed(format!(
            "unknown channel kind {other:?}"
        ))),
    };
    if callout {
        let mut end = details.clone();
        end["ok"] = serde_json::json!(result.is_ok());
        end["duration_ms"] = serde_json::json!(started.elapsed().as_millis() as u64);
        if let Err(e) = &result {
            end["error"] = serde_json::json!(e.message());
        }
        api::output_callout(client, output.id, "end", &end).await?;
    }
    let counted = match &result {
        Ok(sum) => {
            api::record_output(client, output, api::OutputEnd::Sent, Some(sum), None).await?
        }
        Err(ChannelError::Retry(e)) => {
            tracing::warn!("output not sent, to be tried again: {e}");
            api::record_output(client, output, api::OutputEnd::Retry, None, Some(e)).await?
        }
        Err(ChannelError::Failed(e)) => {
            tracing::warn!("output failed: {e}");
            api::record_output(client, output, api::OutputEnd::Failed, None, Some(e)).await?
        }
    };
    if counted {
        tracing::debug!("sent");
    } else {
        tracing::warn!(
            "output was claimed again meanwhile (its epoch moved on): this send is not recorded"
        );
    }
    Ok(())
}
