//! Phase 8, reports (issue #12), two comparisons in one run:
//!
//! a. The price of exactly-once: 1,000 groups of 5 members (a trivial query, a file
//!    channel, 3 coordinators) against the same 5,000 reports submitted without groups,
//!    each output on its own to the same channel. Reports per second from the submit to
//!    the last output sent. Target: grouped ≥ 0.8× ungrouped.
//! b. Generating a 100,000-row query as CSV (the report job's run: query, render, store)
//!    against `psql -c "\copy (query) to file csv"` on the same data. Target ≥ 0.5×.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_coordinator::cluster::{find_bindir, PgCluster};

const GROUPS: i64 = 1000;
const MEMBERS: i64 = 5;
const ROWS: i64 = 100_000;

fn pg(e: tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

async fn wait_for(db: &tokio_postgres::Client, sql: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let done: bool = db.query_one(sql, &[]).await.map_err(pg)?.get(0);
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for: {sql}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn coordinator(
    cluster: &PgCluster,
    herald_bin: &str,
    node: &str,
    spool: &str,
) -> Result<Child, String> {
    Command::new(herald_bin)
        .args([
            "run",
            "--database-url",
            &cluster.url("postgres"),
            "--node",
            node,
            "--spool-dir",
            spool,
        ])
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {herald_bin}: {e}"))
}

fn stop(mut child: Child) {
    // SAFETY: signals a child process of ours by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// Reports per second of one round: submit (grouped or not) with three coordinators
/// running, until every output is sent.
async fn round(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    herald_bin: &str,
    spool: &str,
    grouped: bool,
) -> Result<f64, String> {
    db.batch_execute(
        "DELETE FROM herald.report_output; DELETE FROM herald.report_job;
         DELETE FROM herald.report_group; DELETE FROM herald.job;",
    )
    .await
    .map_err(pg)?;
    let nodes: Vec<Child> = (1..=3)
        .map(|i| coordinator(cluster, herald_bin, &format!("reports{i}"), spool))
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // connected and idle
    let started = Instant::now();
    let mut sessions = Vec::new();
    for s in 0..4 {
        let url = cluster.url("postgres");
        sessions.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map_err(pg)?;
            tokio::spawn(conn);
            for g in 0..GROUPS / 4 {
                c.batch_execute("BEGIN").await.map_err(pg)?;
                if grouped {
                    let id: i64 = c
                        .query_one("SELECT herald.create_report_group('g', 'bench_spool')", &[])
                        .await
                        .map_err(pg)?
                        .get(0);
                    c.execute(
                        "SELECT herald.submit_report('trivial', jsonb_build_object('n', n), $1)
                           FROM generate_series(1, $2::int) n",
                        &[&id, &(MEMBERS as i32)],
                    )
                    .await
                    .map_err(pg)?;
                    c.execute("SELECT herald.seal_group($1)", &[&id]).await.map_err(pg)?;
                } else {
                    c.execute(
                        "SELECT herald.submit_report('trivial', jsonb_build_object('n', n), output => 'bench_spool')
                           FROM generate_series(1, $1::int) n",
                        &[&(MEMBERS as i32)],
                    )
                    .await
                    .map_err(pg)?;
                }
                c.batch_execute("COMMIT").await.map_err(pg)?;
                let _ = (s, g);
            }
            Ok::<_, String>(())
        }));
    }
    for s in sessions {
        s.await.map_err(|e| e.to_string())??;
    }
    let outputs = if grouped { GROUPS } else { GROUPS * MEMBERS };
    wait_for(
        db,
        &format!("SELECT count(*) = {outputs} FROM herald.report_output WHERE state = 'sent'"),
        Duration::from_secs(600),
    )
    .await?;
    let rate = (GROUPS * MEMBERS) as f64 / started.elapsed().as_secs_f64();
    for n in nodes {
        stop(n);
    }
    Ok(rate)
}

pub async fn run(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    herald_bin: &str,
) -> Result<(), String> {
    let spool = cluster.dir.join("bench-spool");
    let spool = spool.to_string_lossy().into_owned();
    db.batch_execute(
        "SELECT herald.report('trivial', 'SELECT ($1->>''n'')::int AS n, ''row'' AS what', 'csv');
         SELECT herald.output_channel('bench_spool', 'file', 'reports');
         CREATE TABLE bench_rows AS
         SELECT g AS id, 'customer ' || (g % 977) AS customer, (g * 1.25)::numeric(12,2) AS amount,
                now() - g * interval '1 minute' AS at, md5(g::text) AS note
           FROM generate_series(1, 100000) g;",
    )
    .await
    .map_err(pg)?;
    db.batch_execute(&format!(
        "SELECT herald.report('rows', 'SELECT * FROM bench_rows ORDER BY id LIMIT {ROWS}', 'csv')"
    ))
    .await
    .map_err(pg)?;

    println!("\n8. Reports: {GROUPS} groups x {MEMBERS} members vs the same {} reports without groups (trivial query, file channel, 3 coordinators), best of 2 interleaved:", GROUPS * MEMBERS);
    let (mut grouped, mut single) = (0f64, 0f64);
    for r in 1..=2 {
        let g = round(cluster, db, herald_bin, &spool, true).await?;
        println!("   round {r}: grouped       {g:>8.0} reports/s");
        let s = round(cluster, db, herald_bin, &spool, false).await?;
        println!("   round {r}: without groups {s:>7.0} reports/s");
        grouped = grouped.max(g);
        single = single.max(s);
    }
    println!(
        "   ratio grouped / without groups: {:.2}x   (target >= 0.8x: the price of exactly-once)",
        grouped / single
    );

    println!("\n   A {ROWS}-row query as CSV: the report job's run (query, render, store) vs psql \\copy to a file, best of 3:");
    db.batch_execute(
        "DELETE FROM herald.report_output; DELETE FROM herald.report_job;
         DELETE FROM herald.report_group; DELETE FROM herald.job;",
    )
    .await
    .map_err(pg)?;
    let node = coordinator(cluster, herald_bin, "csv", &spool)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut herald = f64::MAX;
    let mut size = 0i64;
    for _ in 0..3 {
        let job: i64 = db
            .query_one("SELECT herald.submit_report('rows')", &[])
            .await
            .map_err(pg)?
            .get(0);
        wait_for(
            db,
            &format!("SELECT state = 'COMPLETED' FROM herald.job WHERE id = {job}"),
            Duration::from_secs(120),
        )
        .await?;
        let row = db
            .query_one(
                "SELECT extract(epoch FROM ended_at - started_at)::float8, (result->>'size')::int8
                   FROM herald.job WHERE id = $1",
                &[&job],
            )
            .await
            .map_err(pg)?;
        herald = herald.min(row.get::<_, f64>(0));
        size = row.get(1);
    }
    stop(node);
    let bindir = find_bindir().ok_or("PostgreSQL binaries not found")?;
    let out_file = cluster.dir.join("copy.csv");
    let mut psql = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let status = Command::new(bindir.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                "postgres",
                "-X",
                "-q",
                "-c",
            ])
            .arg(format!(
                "\\copy (SELECT * FROM bench_rows ORDER BY id LIMIT {ROWS}) to '{}' csv header",
                out_file.display()
            ))
            .status()
            .map_err(|e| format!("psql: {e}"))?;
        if !status.success() {
            return Err("psql \\copy failed".into());
        }
        psql = psql.min(started.elapsed().as_secs_f64());
    }
    let copied = std::fs::metadata(&out_file).map(|m| m.len()).unwrap_or(0);
    println!(
        "   herald report (csv)   {:>7.1} ms   ({size} bytes)",
        herald * 1000.0
    );
    println!(
        "   psql \\copy ... csv    {:>7.1} ms   ({copied} bytes)",
        psql * 1000.0
    );
    println!(
        "   ratio herald / psql (speed): {:.2}x   (target >= 0.5x)",
        psql / herald
    );
    Ok(())
}
