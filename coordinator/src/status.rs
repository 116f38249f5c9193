//! `herald status`: queues, backlogs, and which node drains what.
use tokio_postgres::Client;

use crate::api::{self, ApiError};

pub async fn print(client: &Client) -> Result<(), ApiError> {
    if !api::extension_installed(client).await? {
        return Err(ApiError::NotInstalled);
    }
    let queues = api::queue_status(client).await?;
    println!(
        "{:<20} {:<8} {:>8} {:<20} {:>9} {:>7} {:>7} {:>8}  last error",
        "queue", "state", "backlog", "drainer", "handled", "failed", "skipped", "held at"
    );
    for q in &queues {
        let last_error: String = q
            .last_error
            .as_deref()
            .map(|e| e.chars().take(60).collect())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<8} {:>8} {:<20} {:>9} {:>7} {:>7} {:>8}  {}",
            q.name,
            q.state,
            q.backlog,
            q.drainer.as_deref().unwrap_or("-"),
            q.handled,
            q.failed,
            q.skipped,
            q.held_event
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            last_error,
        );
    }
    if queues.is_empty() {
        println!("(no queues: INSERT INTO herald.event_queue (name, event_run) VALUES ('MyEventQueue', 1);)");
    }
    let nodes = api::coordinator_nodes(client).await?;
    println!();
    println!(
        "{:<24} {:>11}  connected since",
        "coordinator node", "connections"
    );
    for n in &nodes {
        println!("{:<24} {:>11}  {}", n.node, n.connections, n.since);
    }
    if nodes.is_empty() {
        println!("(no coordinator is connected)");
    }
    Ok(())
}
