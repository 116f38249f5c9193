//! Phase 9, resource locks (issue #13), in one run:
//!
//! a. Uncontended acquire + release, each in its own transaction, from 2 pgbench clients
//!    (each on a resource of its own), against the same number of single-row `UPDATE`s
//!    (the least a durable state change costs) and `pg_advisory_lock` + unlock (the
//!    non-durable ceiling). Target: ≥ 0.5× the UPDATEs.
//! b. Hand-off with 10 waiters on one exclusive resource: from the moment a holder's
//!    release has committed to the next waiter's acquire returning. Target: p99 < 5 ms.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_coordinator::cluster::PgCluster;

const WAITERS: usize = 10;
const HANDOFFS: usize = 2000;

pub async fn run(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    seconds: u64,
) -> Result<(), String> {
    db.batch_execute(
        "SELECT herald.resource('bench_r0'); SELECT herald.resource('bench_r1');
         SELECT herald.resource('bench_handoff');
         CREATE TABLE bench_lock_row (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO bench_lock_row VALUES (0, 0), (1, 0);",
    )
    .await
    .map_err(super::pg)?;
    println!(
        "\n9. Resource locks: uncontended acquire + release (each its own transaction), 2 clients, {seconds} s each, best of 2:"
    );
    let (mut herald, mut update, mut advisory) = (0f64, 0f64, 0f64);
    for _ in 0..2 {
        herald = herald.max(super::pgbench(
            cluster,
            "SELECT herald.lock_acquire('bench_r' || :client_id, 'c' || :client_id) AS t \\gset\n\
             SELECT herald.lock_release('bench_r' || :client_id, 'c' || :client_id, :t);",
            seconds,
        )?);
        update = update.max(super::pgbench(
            cluster,
            "UPDATE bench_lock_row SET n = n + 1 WHERE id = :client_id;\n\
             UPDATE bench_lock_row SET n = n + 1 WHERE id = :client_id;",
            seconds,
        )?);
        advisory = advisory.max(super::pgbench(
            cluster,
            "SELECT pg_advisory_lock(:client_id);\nSELECT pg_advisory_unlock(:client_id);",
            seconds,
        )?);
        for sql in ["VACUUM ANALYZE herald.lock_holder", "VACUUM bench_lock_row"] {
            db.batch_execute(sql).await.map_err(super::pg)?;
        }
    }
    // Each script is two transactions.
    println!("   herald acquire+release  {:>10.0} tx/s", herald * 2.0);
    println!("   single-row UPDATE       {:>10.0} tx/s", update * 2.0);
    println!(
        "   pg_advisory_lock+unlock {:>10.0} statements/s (not durable: the ceiling)",
        advisory * 2.0
    );
    println!(
        "   ratio to UPDATE         {:>10.2}x   (target >= 0.5x)",
        herald / update
    );

    // b. hand-off
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..WAITERS {
        let url = cluster.url("postgres");
        let (released_at, samples) = (released_at.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let c = super::connect(&url).await;
            let who = format!("w{w}");
            loop {
                if samples.lock().unwrap().len() >= HANDOFFS {
                    return Ok::<(), String>(());
                }
                let token: Option<i64> = c
                    .query_one(
                        "SELECT herald.lock_acquire('bench_handoff', $1, wait => '30 s')",
                        &[&who],
                    )
                    .await
                    .map_err(super::pg)?
                    .get(0);
                let granted = Instant::now();
                let token = token.ok_or("a waiter timed out")?;
                if let Some(at) = released_at.lock().unwrap().take() {
                    samples
                        .lock()
                        .unwrap()
                        .push(granted.saturating_duration_since(at));
                }
                c.execute(
                    "SELECT herald.lock_release('bench_handoff', $1, $2)",
                    &[&who, &token],
                )
                .await
                .map_err(super::pg)?;
                *released_at.lock().unwrap() = Some(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let mut samples = samples.lock().unwrap().clone();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "   hand-off, {WAITERS} waiters, {} hand-offs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms   (target p99 < 5 ms)",
        samples.len(),
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    Ok(())
}
