//! The resource-locks part of `herald demo`: three print jobs that declare the one printer
//! are submitted at once, so two contend for it and a third waits; they run one after the
//! other, in line. Then a label-printing session holds the printer with a short lease and
//! is killed (its backend terminated) while a print job waits: the grant outlives the
//! session until its lease expires, and the waiting job is granted the printer at once.
use std::time::Instant;

use super::{pg, wait_until};
use crate::db;

const SETUP: &str = r#"
SELECT herald.resource('printer', 'exclusive', 1, default_lease => '1 minute');
CREATE TABLE demo.prints (job bigint, node text, started timestamptz, ended timestamptz);
CREATE TABLE demo.lock_events (action text, details jsonb, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION demo.print_batch(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_sleep(0.5);
    INSERT INTO demo.prints VALUES ((p->>'batch')::bigint,
        substr(current_setting('application_name'), 8), t0, clock_timestamp());
END $$;
CREATE FUNCTION demo.record_lock(e herald.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO demo.lock_events (action, details) VALUES (e.action, e.details)
$$;
SELECT herald.add_system_listener('demo.record_lock', 'LOCK', sync => true);
SELECT herald.create_job_type('print_batch', 'demo.print_batch', startnow => true,
                              newthread => true, resources => '{"printer": 1}');
"#;

pub(super) async fn run(
    admin: &tokio_postgres::Client,
    config: &tokio_postgres::Config,
) -> Result<(), String> {
    admin.batch_execute(SETUP).await.map_err(pg)?;
    println!(
        "\nResource locks: three print jobs declare the one printer (exclusive) and are submitted at once."
    );
    for batch in 1..=3 {
        admin
            .execute(
                "SELECT herald.submit_job('print_batch', jsonb_build_object('batch', $1::int))",
                &[&batch],
            )
            .await
            .map_err(pg)?;
    }
    wait_until(
        admin,
        "SELECT count(*) = 2 FROM herald.locks WHERE resource = 'printer' AND role = 'waiter'",
        30,
    )
    .await?;
    let view = admin
        .query(
            "SELECT role, holder, coalesce(position::text, 'token ' || token) FROM herald.locks
              WHERE resource = 'printer' ORDER BY role, position",
            &[],
        )
        .await
        .map_err(pg)?;
    for r in &view {
        println!(
            "  herald.locks: {} {} ({})",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        );
    }
    wait_until(admin, "SELECT count(*) = 3 FROM demo.prints", 60).await?;
    let runs = admin
        .query(
            "SELECT job, node, to_char(started, 'HH24:MI:SS.MS'), to_char(ended, 'HH24:MI:SS.MS'),
                    (SELECT count(*) FROM demo.prints b WHERE b.job <> a.job
                        AND b.started < a.ended AND a.started < b.ended)
               FROM demo.prints a ORDER BY started",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut overlaps = 0;
    for r in &runs {
        overlaps += r.get::<_, i64>(4);
        println!(
            "  batch {} printed on {} from {} to {}",
            r.get::<_, i64>(0),
            r.get::<_, Option<String>>(1).unwrap_or_default(),
            r.get::<_, String>(2),
            r.get::<_, String>(3)
        );
    }
    println!("  overlapping prints: {overlaps}");

    // A session holds the printer with a 2-second lease; a print job waits in line; the
    // session is killed.
    let desk = db::connect(config, "demo-label-desk")
        .await
        .map_err(|e| e.to_string())?;
    let row = desk
        .query_one(
            "SELECT herald.lock_acquire('printer', 'label desk', lease => '2 seconds'),
                    pg_backend_pid()",
            &[],
        )
        .await
        .map_err(pg)?;
    let (token, pid): (Option<i64>, i32) = (row.get(0), row.get(1));
    let Some(token) = token else {
        return Err("the label desk did not get the printer".into());
    };
    let waiting: i64 = admin
        .query_one(
            "SELECT herald.submit_job('print_batch', '{\"batch\": 4}')",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    println!(
        "  the label desk holds the printer (token {token}, lease 2 s); batch 4 (job {waiting}) waits in line"
    );
    wait_until(
        admin,
        "SELECT count(*) = 1 FROM herald.locks WHERE resource = 'printer' AND role = 'waiter'",
        30,
    )
    .await?;
    let killed = Instant::now();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .map_err(pg)?;
    println!("  the label desk's session is killed; its grant stays until its lease expires ...");
    wait_until(admin, "SELECT count(*) = 4 FROM demo.prints", 60).await?;
    let after = killed.elapsed();
    let events = admin
        .query(
            "SELECT action, coalesce(details->>'holder', ''), to_char(at, 'HH24:MI:SS.MS')
               FROM demo.lock_events
              WHERE at >= (SELECT max(at) FROM demo.lock_events WHERE action = 'ACQUIRED'
                              AND details->>'holder' = 'label desk')
              ORDER BY at",
            &[],
        )
        .await
        .map_err(pg)?;
    for e in &events {
        println!(
            "  LOCK {:<8} {:<11} at {}",
            e.get::<_, String>(0),
            e.get::<_, String>(1),
            e.get::<_, String>(2)
        );
    }
    let expired: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM demo.lock_events WHERE action = 'EXPIRED'
                    AND (details->>'token')::bigint = {token}"
            ),
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    println!(
        "  the lease expired {expired} time(s); batch 4 was printed {:.1}s after the kill",
        after.as_secs_f64()
    );
    drop(desk);
    Ok(())
}
