//! Herald event queues against pgmq, side by side on one private cluster, one run.
//!
//! 1. Producer: single-event transactions from 2 pgbench clients, `herald.emit` (one queue
//!    listener) vs `pgmq.send`.
//! 2. Drain: a backlog handled by one consumer, Herald's coordinator with
//!    `event_amount_per_lookup = 10` and a no-op SQL handler vs pgmq `read` + `delete`
//!    in batches of 10.
//! 3. Latency from the producer's commit to the handler's start at 500 events/s.
//! 7. Jobs against graphile-worker (see `jobs`).
//! 8. Reports: the price of exactly-once, CSV generation against `\copy` (see `reports`).
//! 9. Resource locks against single-row UPDATEs and advisory locks; hand-off latency
//!    (see `locks`).
//!
//! Prints figures and ratios; never fails on timing.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_coordinator::cluster::{find_bindir, ClusterOptions, PgCluster};

mod jobs;
mod locks;
mod reports;

const SECONDS: u64 = 10;
const BACKLOG: i32 = 50_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let herald_bin = std::env::var("HERALD_BIN").unwrap_or_else(|_| "target/release/herald".into());
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SECONDS);
    let options = ClusterOptions {
        settings: [
            ("synchronous_commit", "off"),
            ("shared_buffers", "256MB"),
            ("track_commit_timestamp", "on"),
            ("max_wal_size", "4GB"),
            ("autovacuum_naptime", "10s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    let cluster = PgCluster::start(&options).map_err(|e| e.to_string())?;
    let db = connect(&cluster.url("postgres")).await;
    db.batch_execute(
        "CREATE EXTENSION herald;
         CREATE FUNCTION noop(e herald.event) RETURNS void LANGUAGE sql AS $$ SELECT $$;
         INSERT INTO herald.event_queue (name, event_run) VALUES ('bench', 0);
         SELECT herald.add_event_listener('noop', 'bench', queue => 'bench');",
    )
    .await
    .map_err(|e| format!("herald set-up: {e}"))?;
    // pgmq's URL parser requires a password; the private cluster trusts local connections.
    let sqlx_url = format!(
        "postgres://postgres:unused@127.0.0.1:{}/postgres",
        cluster.port
    );
    let pgmq = pgmq::PGMQueueExt::new(sqlx_url, 2)
        .await
        .map_err(|e| format!("pgmq pool: {e}"))?;
    pgmq.install_sql_from_embedded()
        .await
        .map_err(|e| format!("pgmq install: {e}"))?;
    db.batch_execute("SELECT pgmq.create('bench')")
        .await
        .map_err(|e| format!("pgmq.create: {e}"))?;
    let version: String = db
        .query_one("SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname = 'pgmq'), 'sql-only (crate 0.33.7)')", &[])
        .await
        .map_err(pg)?
        .get(0);
    println!("Herald vs pgmq ({version}) on one private PostgreSQL cluster; synchronous_commit=off, {} cores", cores());

    // BENCH_ONLY=emit,drain,latency,capture runs a subset (all by default); `scale` (the
    // limits of docs/scaling.md) runs only when asked for.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |phase: &str| {
        (only.is_empty() && phase != "scale") || only.split(',').any(|p| p.trim() == phase)
    };

    // 1. producers
    if wanted("emit") {
        println!("\n1. Single-event transactions, 2 clients, {seconds} s each (pgbench -M prepared), best of 2:");
        let mut emit_tps: f64 = 0.0;
        let mut send_tps: f64 = 0.0;
        for _ in 0..2 {
            emit_tps = emit_tps.max(pgbench(
                &cluster,
                "SELECT herald.emit('bench', 'created', '{\"order\": 4711, \"amount\": 99.5}');",
                seconds,
            )?);
            send_tps = send_tps.max(pgbench(
                &cluster,
                "SELECT pgmq.send('bench', '{\"order\": 4711, \"amount\": 99.5}');",
                seconds,
            )?);
            for sql in [
                "TRUNCATE herald.event",
                "TRUNCATE pgmq.q_bench",
                "VACUUM ANALYZE herald.event",
                "VACUUM ANALYZE pgmq.q_bench",
            ] {
                db.batch_execute(sql).await.map_err(pg)?;
            }
        }
        println!("   herald.emit  {emit_tps:>10.0} tps");
        println!("   pgmq.send    {send_tps:>10.0} tps");
        println!(
            "   ratio        {:>10.2}x   (target >= 1.5x)",
            emit_tps / send_tps
        );
    }

    // 2. drain
    if wanted("drain") {
        println!("\n2. Drain a backlog of {BACKLOG} events with one consumer, 10 per lookup:");
        for sql in [
        format!("SELECT herald.emit('bench', 'created', jsonb_build_object('order', g)) FROM generate_series(1, {BACKLOG}) g"),
        format!("SELECT pgmq.send_batch('bench', array_agg(jsonb_build_object('order', g))) FROM generate_series(1, {BACKLOG}) g"),
        "VACUUM ANALYZE herald.event".to_string(),
        "VACUUM ANALYZE pgmq.q_bench".to_string(),
    ] {
        db.batch_execute(&sql).await.map_err(pg)?;
    }
        let herald_rate = drain_herald(&cluster, &db, &herald_bin).await?;
        let pgmq_rate = drain_pgmq(&cluster).await?;
        println!("   herald coordinator        {herald_rate:>10.0} events/s");
        println!("   pgmq read+delete (10)     {pgmq_rate:>10.0} events/s");
        println!(
            "   ratio                     {:>10.2}x   (target >= 2x)",
            herald_rate / pgmq_rate
        );
    }

    // 3. latency
    if wanted("latency") {
        println!(
            "\n3. Commit-to-handler latency at 500 events/s for {seconds} s, one coordinator:"
        );
        let (p50, p99, max, n) = latency(&cluster, &db, &herald_bin, seconds).await?;
        println!(
        "   {n} events: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms   (target p99 < 10 ms)"
    );
    }

    // 4. capture
    if wanted("capture") {
        capture(&cluster, &db, seconds).await?;
    }

    // 7. jobs
    if wanted("jobs") {
        jobs::run(&cluster, &db, &herald_bin, seconds).await?;
    }

    // 8. reports
    if wanted("reports") {
        reports::run(&cluster, &db, &herald_bin).await?;
    }

    // 9. locks
    if wanted("locks") {
        locks::run(&cluster, &db, seconds).await?;
    }

    // 5. scale (docs/scaling.md)
    if wanted("scale") {
        scale(&cluster, &db, &herald_bin).await?;
    }
    Ok(())
}

/// The limits of one server: many queues drained by several coordinators at once, and bulk
/// capture. Not a comparison with a peer: figures for docs/scaling.md.
async fn scale(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    herald_bin: &str,
) -> Result<(), String> {
    const PER_QUEUE: i32 = 1000;
    println!("\n5. Many queues, several coordinators, a backlog of {PER_QUEUE} events per queue, 10 per lookup:");
    for (queues, coordinator_count) in [(10, 3), (50, 1), (50, 3), (50, 6), (150, 3)] {
        let run = format!("s{queues}c{coordinator_count}");
        let mut setup = String::from("DELETE FROM herald.event;");
        for q in 0..queues {
            setup.push_str(&format!(
                "INSERT INTO herald.event_queue (name, event_run) VALUES ('{run}_{q}', 0);
                 SELECT herald.add_event_listener('noop', '{run}_{q}', queue => '{run}_{q}');
                 SELECT herald.emit('{run}_{q}', 'x') FROM generate_series(1, {PER_QUEUE});"
            ));
        }
        db.batch_execute(&setup).await.map_err(pg)?;
        db.batch_execute("VACUUM ANALYZE herald.event")
            .await
            .map_err(pg)?;
        let coordinators: Vec<_> = (0..coordinator_count)
            .map(|_| start_coordinator(cluster, herald_bin))
            .collect::<Result<_, _>>()?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let started = Instant::now();
        db.batch_execute(&format!(
            "UPDATE herald.event_queue SET event_run = 1 WHERE name LIKE '{run}\\_%'"
        ))
        .await
        .map_err(pg)?;
        let total = (queues * PER_QUEUE) as i64;
        let mut connections = 0i64;
        loop {
            let row = db
                .query_one(
                    &format!(
                        "SELECT (SELECT coalesce(sum(handled_count), 0)::int8 FROM herald.queue_state
                                  WHERE queue LIKE '{run}\\_%'),
                                (SELECT count(*) FROM pg_stat_activity
                                  WHERE application_name LIKE 'herald/%')"
                    ),
                    &[],
                )
                .await
                .map_err(pg)?;
            let done: i64 = row.get(0);
            connections = connections.max(row.get(1));
            if done >= total {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!(
                    "{queues} queues: only {done} of {total} handled in 300 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        for c in coordinators {
            stop(c);
        }
        println!(
            "   {queues:>4} queues, {coordinator_count} coordinators: {total:>6} events in {elapsed:>5.2} s = {:>7.0} events/s, {connections} coordinator connections",
            total as f64 / elapsed
        );
        db.batch_execute(&format!(
            "UPDATE herald.event_queue SET event_run = 0 WHERE name LIKE '{run}\\_%'"
        ))
        .await
        .map_err(pg)?;
    }

    println!("\n6. Bulk capture: one INSERT of 100000 rows (4 columns), best of 3:");
    db.batch_execute(
        "CREATE TABLE bulk_plain (id int PRIMARY KEY, customer int, amount numeric, note text);
         CREATE TABLE bulk_cap (id int PRIMARY KEY, customer int, amount numeric, note text);
         INSERT INTO herald.event_queue (name) VALUES ('bulk');
         SELECT herald.add_data_listener('bulk_cap', 'noop', 'INSERT', queue => 'bulk');",
    )
    .await
    .map_err(pg)?;
    let mut rates = [0f64; 2];
    for _ in 0..3 {
        for (i, table) in ["bulk_plain", "bulk_cap"].iter().enumerate() {
            for sql in [format!("TRUNCATE {table}"), "TRUNCATE herald.event".into()] {
                db.batch_execute(&sql).await.map_err(pg)?;
            }
            let started = Instant::now();
            db.batch_execute(&format!(
                "INSERT INTO {table} SELECT g, g % 1000, g * 1.5, 'note ' || g FROM generate_series(1, 100000) g"
            ))
            .await
            .map_err(pg)?;
            rates[i] = rates[i].max(100000.0 / started.elapsed().as_secs_f64());
        }
    }
    println!("   no listener        {:>9.0} rows/s", rates[0]);
    println!(
        "   herald listener    {:>9.0} rows/s   {:.2}x of no listener",
        rates[1],
        rates[1] / rates[0]
    );
    Ok(())
}

/// The server's message for database errors (tokio-postgres only says "db error").
fn pg(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Data-change capture: the same write with no listener, with one Herald queue listener at
/// level 2, and with the do-it-yourself PL/pgSQL trigger that stores `to_jsonb(NEW)`. As a
/// reference, also with a rule that writes a bare two-column row per change: no trigger, no
/// payload, the least any design that stores one row per change can cost.
async fn capture(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    seconds: u64,
) -> Result<(), String> {
    let wide_cols: Vec<String> = (1..20)
        .map(|i| format!("c{i} int NOT NULL DEFAULT {i}"))
        .collect();
    for sql in [
        "CREATE TABLE cap (id bigserial PRIMARY KEY, customer int NOT NULL, amount numeric NOT NULL, note text)".to_string(),
        format!("CREATE TABLE wide (id int PRIMARY KEY, {})", wide_cols.join(", ")),
        "INSERT INTO wide (id) SELECT g FROM generate_series(1, 10000) g".to_string(),
        "CREATE TABLE diy_event (id bigserial PRIMARY KEY, tbl text, op text, row jsonb, created_at timestamptz DEFAULT now())".to_string(),
        "CREATE FUNCTION diy_capture() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO diy_event (tbl, op, row) VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(NEW));
             RETURN NULL;
         END $$".to_string(),
        "CREATE TABLE bare_event (id bigserial PRIMARY KEY, v int)".to_string(),
        "INSERT INTO herald.event_queue (name) VALUES ('cap')".to_string(),
        "VACUUM ANALYZE wide".to_string(),
    ] {
        db.batch_execute(&sql).await.map_err(pg)?;
    }
    for (what, table, script, action, target_plain, target_diy) in [
        (
            "single-row INSERT",
            "cap",
            "INSERT INTO cap (customer, amount, note) VALUES (42, 99.5, 'order');",
            "INSERT",
            0.85,
            1.15,
        ),
        (
            "UPDATE of one column, 20-column row",
            "wide",
            "\\set id random(1, 10000)\nUPDATE wide SET c5 = c5 + 1 WHERE id = :id;",
            "UPDATE",
            0.85,
            1.15,
        ),
    ] {
        println!("\n4. {what}, 2 clients, {seconds} s each, best of 3 (interleaved):");
        let mut plain: f64 = 0.0;
        let mut herald: f64 = 0.0;
        let mut diy: f64 = 0.0;
        let mut bare: f64 = 0.0;
        for _ in 0..3 {
            plain = plain.max(pgbench(cluster, script, seconds)?);
            let id: i64 = db
                .query_one(
                    &format!("SELECT herald.add_data_listener('{table}', 'noop', queue => 'cap')"),
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            herald = herald.max(pgbench(cluster, script, seconds)?);
            db.execute("SELECT herald.remove_listener($1)", &[&id])
                .await
                .map_err(pg)?;
            db.batch_execute(&format!(
                "CREATE TRIGGER diy AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION diy_capture()"
            ))
            .await
            .map_err(pg)?;
            diy = diy.max(pgbench(cluster, script, seconds)?);
            db.batch_execute(&format!("DROP TRIGGER diy ON {table}"))
                .await
                .map_err(pg)?;
            db.batch_execute(&format!(
                "CREATE RULE bare AS ON {action} TO {table} DO ALSO INSERT INTO bare_event (v) VALUES (1)"
            ))
            .await
            .map_err(pg)?;
            bare = bare.max(pgbench(cluster, script, seconds)?);
            db.batch_execute(&format!("DROP RULE bare ON {table}"))
                .await
                .map_err(pg)?;
            for sql in [
                "TRUNCATE herald.event, diy_event, bare_event",
                "VACUUM ANALYZE bare_event",
                "VACUUM ANALYZE herald.event",
                "VACUUM ANALYZE diy_event",
            ] {
                db.batch_execute(sql).await.map_err(pg)?;
            }
            db.batch_execute(&format!("VACUUM ANALYZE {table}"))
                .await
                .map_err(pg)?;
        }
        println!("   no listener              {plain:>10.0} tps");
        println!("   herald listener (level 2) {herald:>9.0} tps   {:.2}x of no listener (target >= {target_plain}x)", herald / plain);
        println!("   PL/pgSQL to_jsonb trigger {diy:>9.0} tps   herald is {:.2}x of it (target >= {target_diy}x)", herald / diy);
        println!("   reference: rule writing a bare row {bare:>6.0} tps   {:.2}x of no listener (no trigger, no payload)", bare / plain);
    }
    Ok(())
}

/// TPS of `sql` from 2 pgbench clients.
fn pgbench(cluster: &PgCluster, sql: &str, seconds: u64) -> Result<f64, String> {
    let script = cluster.dir.join("bench.sql");
    std::fs::write(&script, format!("{sql}\n")).map_err(|e| e.to_string())?;
    let bin = find_bindir()
        .ok_or("no PostgreSQL binaries")?
        .join("pgbench");
    let out = Command::new(bin)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-f",
        ])
        .arg(&script)
        .arg("postgres")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "pgbench failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn start_coordinator(cluster: &PgCluster, herald_bin: &str) -> Result<std::process::Child, String> {
    Command::new(herald_bin)
        .args(["run", "--database-url", &cluster.url("postgres"), "--node", "bench"])
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {herald_bin} (run `cargo build --release -p herald-coordinator`): {e}"))
}

fn stop(mut child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

async fn drain_herald(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    herald_bin: &str,
) -> Result<f64, String> {
    let coordinator = start_coordinator(cluster, herald_bin)?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // connected and idle
    let started = Instant::now();
    db.batch_execute("UPDATE herald.event_queue SET event_run = 1 WHERE name = 'bench'")
        .await
        .map_err(pg)?;
    // Poll the queue's one-row counter (a count(*) over the table would steal a core).
    loop {
        let done: i64 = db
            .query_one(
                "SELECT handled_count FROM herald.queue_state WHERE queue = 'bench'",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        if done >= BACKLOG as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    db.batch_execute("UPDATE herald.event_queue SET event_run = 0 WHERE name = 'bench'")
        .await
        .map_err(pg)?;
    stop(coordinator);
    Ok(BACKLOG as f64 / elapsed)
}

async fn drain_pgmq(cluster: &PgCluster) -> Result<f64, String> {
    let client = connect(&cluster.url("postgres")).await;
    let read = client
        .prepare("SELECT msg_id FROM pgmq.read('bench', 30, 10)")
        .await
        .map_err(pg)?;
    let delete = client
        .prepare("SELECT pgmq.delete('bench', $1::bigint[])")
        .await
        .map_err(pg)?;
    let started = Instant::now();
    let mut total = 0;
    loop {
        let ids: Vec<i64> = client
            .query(&read, &[])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            break;
        }
        total += ids.len();
        client.query(&delete, &[&ids]).await.map_err(pg)?;
    }
    if total != BACKLOG as usize {
        return Err(format!("pgmq drained {total} of {BACKLOG}"));
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn latency(
    cluster: &PgCluster,
    db: &tokio_postgres::Client,
    herald_bin: &str,
    seconds: u64,
) -> Result<(f64, f64, f64, i64), String> {
    db.batch_execute(
        "CREATE TABLE lat (event_id bigint, ms float8);
         CREATE FUNCTION measure(e herald.event) RETURNS void LANGUAGE sql AS $$
             INSERT INTO lat
             SELECT e.id, extract(epoch FROM clock_timestamp() - pg_xact_commit_timestamp(ev.xmin)) * 1000
               FROM herald.event ev
              WHERE ev.queue = e.queue AND ev.id = e.id AND ev.listener = e.listener
         $$;
         INSERT INTO herald.event_queue (name, event_run) VALUES ('lat', 1);
         SELECT herald.add_event_listener('measure', 'lat', queue => 'lat');",
    )
    .await
    .map_err(pg)?;
    let coordinator = start_coordinator(cluster, herald_bin)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let producer = connect(&cluster.url("postgres")).await;
    let emit = producer
        .prepare("SELECT herald.emit('lat', 'tick')")
        .await
        .map_err(pg)?;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = 500 * seconds as i64;
    for _ in 0..total {
        tick.tick().await;
        producer.execute(&emit, &[]).await.map_err(pg)?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = db
            .query_one("SELECT count(*) FROM lat", &[])
            .await
            .map_err(pg)?
            .get(0);
        if n >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(coordinator);
    let row = db
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                    max(ms), count(*) FROM lat",
            &[],
        )
        .await
        .map_err(pg)?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}
