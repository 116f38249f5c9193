//! Phase 7: Herald's jobs against graphile-worker (npm `graphile-worker` 0.16, installed by
//! bench/run.sh into bench/graphile), on the same private cluster, in the same run.
//!
//! a. Throughput: a backlog of 20,000 no-op jobs, drained by three Herald coordinators (a
//!    `sql` job type calling a no-op function, `newthread`, the default 4 runners each) and
//!    by one graphile-worker process with concurrency 10 (a no-op JavaScript task). Both
//!    timed from starting the workers to an empty backlog; two rounds, interleaved, and
//!    the best of each.
//! b. Serialized postings: 200 jobs of class `posting` with `max_running = 1`, three
//!    coordinators: the time from one posting's completion (its commit) to the next one's
//!    start, from the jobs' own timestamps.
//! c. The price of a submit: `herald.submit_job` against `herald.emit` (one queue listener),
//!    single-statement transactions from 2 pgbench clients.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_coordinator::cluster::PgCluster;

use crate::{pg, pgbench, stop};

const JOBS: i32 = 20_000;
const POSTINGS: i32 = 200;

pub async fn run(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    herald_bin: &str,
    seconds: u64,
) -> Result<(), String> {
    db.batch_execute(
        "CREATE FUNCTION noop_job(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
         SELECT herald.create_job_type('noop_job', 'noop_job', newthread => true);
         SELECT herald.create_job_type('post_job', 'noop_job', class => 'posting',
                                       startnow => true, newthread => true);
         UPDATE herald.job_class SET max_running = 1 WHERE name = 'posting';",
    )
    .await
    .map_err(pg)?;

    // Durable commits for this phase (the cluster runs with fsync and synchronous_commit
    // off for the others): the figures are with durable commits.
    durable(db, true).await?;
    println!("\n7. Jobs, durable commits (fsync, synchronous_commit on): a backlog of {JOBS} no-op jobs; Herald with 3 coordinators vs graphile-worker (concurrency 10):");
    // Best of two for each, interleaved: this machine's rates drift by 10-20% from one
    // minute to the next, for both.
    let (mut herald_rate, mut graphile_rate): (f64, Option<f64>) = (0.0, None);
    for round in 1..=2 {
        let rate = herald_drain(cluster, db, herald_bin).await?;
        println!("   round {round}: herald, 3 coordinators      {rate:>10.0} jobs/s");
        herald_rate = herald_rate.max(rate);
        match graphile(cluster) {
            Ok(rate) => {
                println!("   round {round}: graphile-worker, 1 worker   {rate:>10.0} jobs/s");
                graphile_rate = Some(graphile_rate.unwrap_or(0.0).max(rate));
            }
            Err(e) => println!("   graphile-worker: not measured ({e})"),
        }
    }
    if let Some(rate) = graphile_rate {
        println!(
            "   best of 2: herald {herald_rate:.0}, graphile-worker {rate:.0} jobs/s; ratio herald / graphile-worker: {:.2}x   (target >= 1.5x)",
            herald_rate / rate
        );
    }
    let nodes: Vec<Child> = (1..=3)
        .map(|i| coordinator(cluster, herald_bin, &format!("jobs{i}")))
        .collect::<Result<_, _>>()?;

    // b. serialized postings
    println!("\n   {POSTINGS} postings, posting serialized (max_running = 1), 3 coordinators:");
    db.execute(
        "SELECT count(herald.submit_job('post_job')) FROM generate_series(1, $1)",
        &[&POSTINGS],
    )
    .await
    .map_err(pg)?;
    wait_for(
        db,
        "SELECT NOT EXISTS (SELECT 1 FROM herald.job WHERE state <> 'COMPLETED')",
        Duration::from_secs(300),
    )
    .await?;
    let row = db
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY gap),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY gap), max(gap),
                    count(*) FILTER (WHERE overlap)
               FROM (SELECT (extract(epoch FROM started_at - lag(ended_at) OVER w) * 1000)::float8 AS gap,
                            started_at < lag(ended_at) OVER w AS overlap
                       FROM herald.job WHERE type = 'post_job' WINDOW w AS (ORDER BY id)) x
              WHERE gap IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg)?;
    let (p50, p99, max, overlaps): (f64, f64, f64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    println!(
        "   completion commit -> next start: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms   (target p99 < 50 ms); {overlaps} overlaps"
    );
    for n in nodes {
        stop(n);
    }

    // c. submit vs emit, with commits that cost no flush (as in the other phases), so that
    // the comparison is of the work each does.
    durable(db, false).await?;
    println!("\n   Single-statement transactions, 2 clients, {seconds} s each (pgbench -M prepared), best of 2:");
    let (mut submit, mut emit) = (0f64, 0f64);
    for _ in 0..2 {
        db.batch_execute("DELETE FROM herald.job; DELETE FROM herald.event")
            .await
            .map_err(pg)?;
        db.batch_execute("VACUUM ANALYZE herald.job, herald.event")
            .await
            .map_err(pg)?;
        submit = submit.max(pgbench(
            cluster,
            "SELECT herald.submit_job('noop_job');",
            seconds,
        )?);
        emit = emit.max(pgbench(
            cluster,
            "SELECT herald.emit('bench', 'created', '{\"order\": 4711, \"amount\": 99.5}');",
            seconds,
        )?);
    }
    db.batch_execute("DELETE FROM herald.job; DELETE FROM herald.event")
        .await
        .map_err(pg)?;
    println!("   herald.submit_job {submit:>10.0} tps");
    println!("   herald.emit       {emit:>10.0} tps");
    println!(
        "   ratio submit_job / emit: {:.2}x   (target >= 0.5x: a submit costs at most twice an emit)",
        submit / emit
    );
    Ok(())
}

/// Turn durable commits on (fsync, synchronous_commit) or back off, for every session.
async fn durable(db: &tokio_postgres::Client, on: bool) -> Result<(), String> {
    let v = if on { "on" } else { "off" };
    for sql in [
        format!("ALTER SYSTEM SET fsync = {v}"),
        format!("ALTER SYSTEM SET synchronous_commit = {v}"),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        db.batch_execute(&sql).await.map_err(pg)?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

fn coordinator(cluster: &PgCluster, herald_bin: &str, node: &str) -> Result<Child, String> {
    Command::new(herald_bin)
        .args([
            "run",
            "--database-url",
            &cluster.url("postgres"),
            "--node",
            node,
        ])
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {herald_bin}: {e}"))
}

/// Herald's rate (jobs/s): a backlog of JOBS no-op jobs drained by three coordinators,
/// timed from starting them to an empty backlog; they are stopped afterwards.
async fn herald_drain(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    herald_bin: &str,
) -> Result<f64, String> {
    db.batch_execute("DELETE FROM herald.job")
        .await
        .map_err(pg)?;
    db.execute(
        "SELECT count(herald.submit_job('noop_job')) FROM generate_series(1, $1)",
        &[&JOBS],
    )
    .await
    .map_err(pg)?;
    db.batch_execute("VACUUM ANALYZE herald.job")
        .await
        .map_err(pg)?;
    let started = Instant::now();
    let nodes: Vec<Child> = (1..=3)
        .map(|i| coordinator(cluster, herald_bin, &format!("jobs{i}")))
        .collect::<Result<_, _>>()?;
    wait_for(
        db,
        "SELECT NOT EXISTS (SELECT 1 FROM herald.job WHERE state <> 'COMPLETED')",
        Duration::from_secs(600),
    )
    .await?;
    let rate = JOBS as f64 / started.elapsed().as_secs_f64();
    for n in nodes {
        stop(n);
    }
    Ok(rate)
}

async fn wait_for(db: &tokio_postgres::Client, sql: &str, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if db.query_one(sql, &[]).await.map_err(pg)?.get::<_, bool>(0) {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!("not done within {limit:?}: {sql}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// graphile-worker's rate (jobs/s) for the same backlog, from bench/graphile/drain.mjs.
fn graphile(cluster: &PgCluster) -> Result<f64, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphile");
    if !dir.join("node_modules/graphile-worker").exists() {
        return Err(
            "bench/graphile/node_modules is missing: run `npm ci` there (bench/run.sh does)".into(),
        );
    }
    let out = Command::new("node")
        .arg(dir.join("drain.mjs"))
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port),
        )
        .env("JOBS", JOBS.to_string())
        .env("CONCURRENCY", "10")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!(
                "drain.mjs failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let (jobs, secs) = (
        v["jobs"].as_f64().unwrap_or(0.0),
        v["seconds"].as_f64().unwrap_or(0.0),
    );
    if secs <= 0.0 {
        return Err(format!("unexpected output {line}"));
    }
    Ok(jobs / secs)
}
