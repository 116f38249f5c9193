//! `herald status`: queues, backlogs, and which node drains what; jobs by class and state,
//! what runs where and what waits for which class; report groups and outputs by state, and
//! what waits for an operator; resource locks with their holders and waiters.
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
    print_jobs(client).await?;
    print_reports(client).await?;
    print_locks(client).await?;
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

async fn print_jobs(client: &Client) -> Result<(), ApiError> {
    let counts = api::job_counts(client).await?;
    println!();
    println!(
        "{:<16} {:>11} {:<12} {:>7}",
        "job class", "max_running", "state", "jobs"
    );
    for c in &counts {
        println!(
            "{:<16} {:>11} {:<12} {:>7}",
            c.class,
            c.max_running
                .map(|m| m.to_string())
                .unwrap_or_else(|| "unlimited".into()),
            c.state,
            c.jobs
        );
    }
    if counts.is_empty() {
        println!("(no jobs in the last day)");
        return Ok(());
    }
    let active = api::active_jobs(client, 20).await?;
    if active.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "{:>8} {:<20} {:<12} {:<10} {:<20} {:<12} for",
        "job", "type", "class", "state", "node", "key"
    );
    for j in &active {
        let node = match j.state.as_str() {
            "CREATED" => format!("waits for {}", j.class),
            _ => j.node.clone().unwrap_or_else(|| "-".into()),
        };
        println!(
            "{:>8} {:<20} {:<12} {:<10} {:<20} {:<12} {}",
            j.id,
            j.r#type,
            j.class,
            j.state,
            node,
            j.concurrency_key.as_deref().unwrap_or("-"),
            j.age
        );
    }
    Ok(())
}

async fn print_reports(client: &Client) -> Result<(), ApiError> {
    if !api::can_read_reports(client).await? {
        println!();
        println!("(reports: this role may not read herald.report_group and herald.report_output; herald_ops may)");
        return Ok(());
    }
    let counts = api::report_counts(client).await?;
    if counts.is_empty() {
        return Ok(());
    }
    println!();
    println!("{:<28} {:<16} {:>7}", "reports", "state", "count");
    for c in &counts {
        println!("{:<28} {:<16} {:>7}", c.kind, c.state, c.count);
    }
    let problems = api::report_problems(client, 20).await?;
    if problems.is_empty() {
        return Ok(());
    }
    println!();
    println!("{:<36} {:<10} for an operator", "waiting", "state");
    for (what, state, error) in &problems {
        let error: String = error.chars().take(80).collect();
        println!("{what:<36} {state:<10} {error}");
    }
    Ok(())
}

async fn print_locks(client: &Client) -> Result<(), ApiError> {
    let Some(rows) = api::locks(client).await? else {
        println!();
        println!("(locks: this role may not read herald.locks; herald_ops may)");
        return Ok(());
    };
    if rows.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "{:<20} {:<10} {:>5} {:<7} {:<20} {:>5} {:>10}  ",
        "resource", "kind", "limit", "role", "holder", "count", "token/pos"
    );
    for r in &rows {
        let which = match (r.token, r.position) {
            (Some(t), _) => t.to_string(),
            (None, Some(p)) => format!("#{p}"),
            _ => "-".into(),
        };
        println!(
            "{:<20} {:<10} {:>5} {:<7} {:<20} {:>5} {:>10}  {}",
            r.resource,
            r.kind,
            r.limit,
            r.role.as_deref().unwrap_or("free"),
            r.holder.as_deref().unwrap_or("-"),
            r.count.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            which,
            r.info.as_deref().unwrap_or(""),
        );
    }
    Ok(())
}
