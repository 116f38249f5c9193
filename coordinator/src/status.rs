//! `herald status`: queues, backlogs, and which node drains what.
use tokio_postgres::Client;

pub async fn print(client: &Client) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT name, state, backlog, coalesce(drainer, '-'), coalesce(drained_by, '-'),
                    handled_count, failed_count, skipped_count,
                    coalesce(held_event::text, '-'), coalesce(left(last_error, 60), '-')
               FROM herald.queue_status ORDER BY name",
            &[],
        )
        .await?;
    println!(
        "{:<20} {:<8} {:>8} {:<20} {:>9} {:>7} {:>7} {:>8}  last error",
        "queue", "state", "backlog", "drainer", "handled", "failed", "skipped", "held at"
    );
    for r in &rows {
        println!(
            "{:<20} {:<8} {:>8} {:<20} {:>9} {:>7} {:>7} {:>8}  {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
            r.get::<_, String>(3),
            r.get::<_, i64>(5),
            r.get::<_, i64>(6),
            r.get::<_, i64>(7),
            r.get::<_, String>(8),
            r.get::<_, String>(9),
        );
    }
    if rows.is_empty() {
        println!("(no queues: INSERT INTO herald.event_queue (name, event_run) VALUES ('MyEventQueue', 1);)");
    }
    let nodes = client
        .query(
            "SELECT substr(application_name, 8) AS node, count(*)::int8, min(backend_start)::text
               FROM pg_stat_activity
              WHERE application_name LIKE 'herald/%' AND datname = current_database()
              GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    println!();
    println!(
        "{:<24} {:>11}  connected since",
        "coordinator node", "connections"
    );
    for r in &nodes {
        println!(
            "{:<24} {:>11}  {}",
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, String>(2)
        );
    }
    if nodes.is_empty() {
        println!("(no coordinator is connected)");
    }
    Ok(())
}
