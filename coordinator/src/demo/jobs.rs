//! The jobs part of `herald demo`: ten users submit postings and reports at once, with
//! posting serialized (`max_running = 1`) and a wait timeout of two seconds. Postings run
//! one at a time in submission order, reports alongside; one posting hangs, the next one
//! starts beside it once the wait timeout has passed, and the WAIT_TIMEOUT alert arrives
//! through an ordinary listener and queue.
use std::time::{Duration, Instant};

use super::{pg, wait_until};
use crate::db;

const USERS: i32 = 10;
const PER_USER: i32 = 3;
/// The posting that hangs (user, n).
const HUNG: (i32, i32) = (4, 2);

const SETUP: &str = r#"
CREATE TABLE demo.job_runs (job_type text, usr int, n int, node text,
                            started timestamptz, ended timestamptz);
CREATE TABLE demo.alerts (action text, details jsonb, at timestamptz DEFAULT clock_timestamp());
-- A posting run: books for a while (one of them hangs), and records when and where it ran.
CREATE FUNCTION demo.post_ledger(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_sleep(CASE WHEN (p->>'hang')::boolean THEN 6 ELSE 0.08 END);
    INSERT INTO demo.job_runs VALUES ('posting', (p->>'user')::int, (p->>'n')::int,
        substr(current_setting('application_name'), 8), t0, clock_timestamp());
    RETURN jsonb_build_object('booked', (p->>'n')::int * 100);
END $$;
CREATE FUNCTION demo.print_report(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_sleep(0.3);
    INSERT INTO demo.job_runs VALUES ('report', (p->>'user')::int, (p->>'n')::int,
        substr(current_setting('application_name'), 8), t0, clock_timestamp());
    RETURN NULL;
END $$;
CREATE FUNCTION demo.record_alert(e herald.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO demo.alerts (action, details) SELECT e.action, e.details
     WHERE e.action IN ('WAIT_TIMEOUT', 'LONG_RUNNING')
$$;
SELECT herald.create_job_type('posting_run', 'demo.post_ledger', class => 'posting',
                              startnow => true, newthread => true);
SELECT herald.create_job_type('report_run', 'demo.print_report',
                              startnow => true, newthread => true);
UPDATE herald.job_class SET max_running = 1, wait_timeout = '2 seconds' WHERE name = 'posting';
INSERT INTO herald.event_queue (name, event_run) VALUES ('job_alerts', 1);
SELECT herald.add_system_listener('demo.record_alert', 'JOB', 'job_alerts');
"#;

pub(super) async fn run(
    admin: &tokio_postgres::Client,
    config: &tokio_postgres::Config,
) -> Result<(), String> {
    admin.batch_execute(SETUP).await.map_err(pg)?;
    println!(
        "\nJobs: {USERS} users each submit {PER_USER} postings and {PER_USER} reports at once; \
         posting is serialized (max_running = 1, wait_timeout 2 s)."
    );
    println!("  user {}'s posting {} hangs for 6 s ...", HUNG.0, HUNG.1);
    let started = Instant::now();
    let mut users = Vec::new();
    for user in 1..=USERS {
        let config = config.clone();
        users.push(tokio::spawn(async move { submit(config, user).await }));
    }
    for u in users {
        u.await.map_err(|e| e.to_string())??;
    }
    wait_until(
        admin,
        "SELECT NOT EXISTS (SELECT 1 FROM herald.job WHERE state NOT IN ('COMPLETED', 'STARTERROR', 'FINISHERROR', 'ABORTED'))",
        120,
    )
    .await?;
    wait_until(admin, "SELECT EXISTS (SELECT 1 FROM demo.alerts)", 20).await?;
    let elapsed = started.elapsed();
    report(admin, elapsed).await
}

/// One user's session: postings and reports, each submitted in its own transaction.
async fn submit(config: tokio_postgres::Config, user: i32) -> Result<(), String> {
    let client = db::connect(&config, "demo-user")
        .await
        .map_err(|e| e.to_string())?;
    for n in 1..=PER_USER {
        let params = serde_json::json!({"user": user, "n": n, "hang": (user, n) == HUNG});
        for job_type in ["posting_run", "report_run"] {
            client
                .execute(
                    "SELECT herald.submit_job($1, $2::text::jsonb)",
                    &[&job_type, &params.to_string()],
                )
                .await
                .map_err(pg)?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn report(admin: &tokio_postgres::Client, elapsed: Duration) -> Result<(), String> {
    let q = |sql: &'static str| async move { admin.query(sql, &[]).await.map_err(pg) };
    let alerts = q(
        "SELECT action, details->>'job', details->>'node', details->>'running_for'
                      FROM demo.alerts ORDER BY at",
    )
    .await?;
    for a in &alerts {
        println!(
            "  alert {}: posting job {} on {} has run {} while the next one waits; the next one starts beside it",
            a.get::<_, String>(0),
            a.get::<_, Option<String>>(1).unwrap_or_default(),
            a.get::<_, Option<String>>(2).unwrap_or_default(),
            a.get::<_, Option<String>>(3).unwrap_or_default(),
        );
    }
    // Postings: overlaps of two postings neither of which is the hung one, and whether they
    // started in submission (job id) order.
    let postings = q("WITH p AS (
                          SELECT j.id, j.node, j.started_at, j.ended_at, (j.params->>'hang')::boolean AS hang
                            FROM herald.job j WHERE j.type = 'posting_run')
                      SELECT (SELECT count(*) FROM p),
                             (SELECT count(*) FROM p a JOIN p b ON a.id < b.id
                               WHERE NOT a.hang AND NOT b.hang
                                 AND a.started_at < b.ended_at AND b.started_at < a.ended_at),
                             (SELECT bool_and(ordered) FROM (
                                  SELECT started_at >= lag(started_at) OVER (ORDER BY id) AS ordered
                                    FROM p) o),
                             (SELECT count(*) FROM p a JOIN p b ON a.hang AND NOT b.hang
                               WHERE b.started_at < a.ended_at AND b.started_at > a.started_at)")
    .await?;
    let p = &postings[0];
    let (count, overlaps, ordered, beside_hung): (i64, i64, Option<bool>, i64) =
        (p.get(0), p.get(1), p.get(2), p.get(3));
    println!(
        "  {count} postings: {} overlaps between them, started in submission order: {}; once its wait timeout had passed, {beside_hung} ran (one at a time) beside the hung one",
        overlaps,
        if ordered.unwrap_or(true) { "yes" } else { "NO" }
    );
    let reports = q("SELECT count(*),
                            (SELECT max(n) FROM (
                                 SELECT count(*) AS n FROM herald.job a JOIN herald.job b
                                   ON b.type = 'report_run' AND b.started_at <= a.started_at
                                  AND a.started_at < b.ended_at
                                WHERE a.type = 'report_run' GROUP BY a.id) x)
                       FROM herald.job WHERE type = 'report_run'")
    .await?;
    println!(
        "  {} reports ran alongside the postings, up to {} at once",
        reports[0].get::<_, i64>(0),
        reports[0].get::<_, Option<i64>>(1).unwrap_or(0)
    );
    let by_node = q("SELECT node, count(*) FILTER (WHERE type = 'posting_run'),
                            count(*) FILTER (WHERE type = 'report_run')
                       FROM herald.job GROUP BY node ORDER BY node")
    .await?;
    let parts: Vec<String> = by_node
        .iter()
        .map(|r| {
            format!(
                "{} {} postings + {} reports",
                r.get::<_, Option<String>>(0).unwrap_or_default(),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2)
            )
        })
        .collect();
    println!("  run by: {}", parts.join(", "));
    let failed: i64 = admin
        .query_one(
            "SELECT count(*) FROM herald.job WHERE state <> 'COMPLETED'",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    println!(
        "  all done in {:.1}s; {failed} jobs did not complete",
        elapsed.as_secs_f64()
    );
    Ok(())
}
