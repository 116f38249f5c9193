//! `herald demo`: the embedded default. A private PostgreSQL cluster, the extension, three
//! coordinators, and an ERP-like stream of invoice and payment events from four producers;
//! one coordinator is stopped half-way. Then it reports what was handled, where, in what
//! order. Then ten users submit postings and reports at once ([`jobs`]), print jobs contend
//! for one printer and a killed holder's lease expires ([`locks`]), and four coordinators
//! output 500 groups of invoices exactly once to a file spool ([`reports`]).
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{ClusterOptions, PgCluster};
use crate::config::DemoArgs;
use crate::db;

mod jobs;
mod locks;
mod reports;

const SETUP: &str = r#"
CREATE EXTENSION IF NOT EXISTS herald;
CREATE SCHEMA demo;
CREATE TABLE demo.handled (seq bigserial PRIMARY KEY, queue text, event_id bigint, type text,
                           action text, producer int, n int, node text);
CREATE TABLE demo.ledger (account text PRIMARY KEY, balance numeric NOT NULL);
CREATE TABLE demo.checked (event_id bigint);

-- Records who handled what, in which order (the drainer's application_name is herald/<node>).
CREATE FUNCTION demo.record(e herald.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO demo.handled (queue, event_id, type, action, producer, n, node)
    VALUES (e.queue, e.id, e.type, e.action, (e.details->>'producer')::int, (e.details->>'n')::int,
            substr(current_setting('application_name'), 8))
$$;
-- Posts a payment to the ledger; a non-positive amount is an error (recorded, queue goes on).
CREATE FUNCTION demo.post_payment(e herald.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (e.details->>'amount')::numeric <= 0 THEN
        RAISE EXCEPTION 'payment % has a non-positive amount %', e.id, e.details->>'amount';
    END IF;
    INSERT INTO demo.ledger VALUES (e.details->>'account', (e.details->>'amount')::numeric)
    ON CONFLICT (account) DO UPDATE SET balance = demo.ledger.balance + EXCLUDED.balance;
    PERFORM demo.record(e);
END
$$;
-- Synchronous check, inside the producer's transaction.
CREATE FUNCTION demo.check_invoice(e herald.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO demo.checked VALUES (e.id)
$$;

INSERT INTO herald.event_queue (name, event_run) VALUES ('invoices', 1);
INSERT INTO herald.event_queue (name, event_run, event_amount_per_lookup) VALUES ('payments', 1, 5);
INSERT INTO herald.event_queue (name, event_run, event_amount_per_lookup, event_log_level)
    VALUES ('audit', 1, 50, 0);
SELECT herald.add_event_listener('demo.record', 'invoice', queue => 'invoices');
SELECT herald.add_event_listener('demo.post_payment', 'payment', queue => 'payments');
SELECT herald.add_event_listener('demo.record', '*', queue => 'audit');
SELECT herald.add_event_listener('demo.check_invoice', 'invoice', sync => true);
"#;

struct Node {
    name: String,
    child: Child,
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let producers = 4u32;
    let per_producer = args.events.max(producers) / producers;
    println!("herald demo: starting a private PostgreSQL cluster ...");
    let cluster = PgCluster::start(&ClusterOptions::default()).map_err(|e| e.to_string())?;
    let url = cluster.url("postgres");
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let admin = db::connect(&config, "demo")
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if let Err(e) = admin.batch_execute(SETUP).await {
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or(e.to_string());
        return Err(format!(
            "setting up the demo failed: {msg}\n(is the extension installed? run `make install`)"
        ));
    }
    println!(
        "  cluster on port {}, extension installed, 3 queues and 4 listeners created",
        cluster.port
    );

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spool = cluster.dir.join("spool");
    let mut nodes: Vec<Node> = Vec::new();
    for i in 1..=args.coordinators.max(1) {
        let name = format!("node-{i}");
        let log = std::fs::File::create(cluster.dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .args([
                "run",
                "--database-url",
                &url,
                "--node",
                &name,
                "--spool-dir",
            ])
            .arg(&spool)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a coordinator: {e}"))?;
        nodes.push(Node { name, child });
    }
    println!("  started {} coordinators: {}", nodes.len(), names(&nodes));
    wait_until(
        &admin,
        "SELECT count(*) = 3 FROM herald.queue_status WHERE drainer IS NOT NULL",
        30,
    )
    .await?;
    print_drainers(&admin, "  queues claimed:").await?;

    println!(
        "  emitting {} events ({} producers x {}: invoices and payments, every 50th payment invalid) ...",
        per_producer * producers,
        producers,
        per_producer
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            produce(config, p, per_producer).await
        }));
    }
    // Half-way, stop the coordinator that drains the invoices: another one takes over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim: Option<String> = admin
        .query_one(
            "SELECT substr(drainer, 8) FROM herald.queue_status WHERE name = 'invoices'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if let Some(victim) = victim {
        if let Some(node) = nodes.iter().find(|n| n.name == victim) {
            println!("  stopping {victim} (SIGTERM) while it drains 'invoices' ...");
            unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
        }
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    wait_until(
        &admin,
        "SELECT coalesce(sum(backlog), 0) = 0 FROM herald.queue_status",
        120,
    )
    .await?;
    let elapsed = started.elapsed();
    print_drainers(&admin, "  after the stop, queues are drained by:").await?;
    report(&admin, per_producer * producers, elapsed).await?;
    jobs::run(&admin, &config).await?;
    locks::run(&admin, &config).await?;

    // Four coordinators for the reports: the one stopped above is replaced, and more are
    // started if the demo runs fewer.
    let mut running = 0;
    for node in &mut nodes {
        if matches!(node.child.try_wait(), Ok(None)) {
            running += 1;
        }
    }
    let mut next = nodes.len() + 1;
    while running < 4 {
        let name = format!("node-{next}");
        let log = std::fs::File::create(cluster.dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .args([
                "run",
                "--database-url",
                &url,
                "--node",
                &name,
                "--spool-dir",
            ])
            .arg(&spool)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a coordinator: {e}"))?;
        nodes.push(Node { name, child });
        running += 1;
        next += 1;
    }
    reports::run(&admin, &config, &spool, running).await?;

    for node in &mut nodes {
        unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
    }
    for node in &mut nodes {
        let _ = node.child.wait();
    }
    println!("\nAll coordinators stopped; the private cluster is removed.");
    drop(cluster);
    Ok(())
}

async fn produce(config: tokio_postgres::Config, producer: u32, count: u32) -> Result<(), String> {
    let client = db::connect(&config, "demo-producer")
        .await
        .map_err(|e| e.to_string())?;
    let emit = client
        .prepare("SELECT herald.emit($1, $2, $3::text::jsonb)")
        .await
        .map_err(|e| e.to_string())?;
    for n in 0..count {
        let (kind, action) = if n % 2 == 0 {
            ("invoice", "created")
        } else {
            ("payment", "received")
        };
        let amount = if kind == "payment" && n % 100 == 49 {
            -1
        } else {
            10 + (n % 90) as i64
        };
        let details = format!(
            r#"{{"producer": {producer}, "n": {n}, "account": "acc-{}", "amount": {amount}}}"#,
            n % 7
        );
        client
            .execute(&emit, &[&kind, &action, &details])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn report(
    admin: &tokio_postgres::Client,
    emitted: u32,
    elapsed: Duration,
) -> Result<(), String> {
    let q =
        |sql: &'static str| async move { admin.query(sql, &[]).await.map_err(|e| e.to_string()) };
    println!(
        "\nWhat happened ({} events emitted, all queues drained after {:.1}s):",
        emitted,
        elapsed.as_secs_f64()
    );
    println!("\n  {:<10} {:<8} {:>8}", "queue", "node", "handled");
    for r in q("SELECT queue, node, count(*) FROM demo.handled GROUP BY 1, 2 ORDER BY 1, 2").await?
    {
        println!(
            "  {:<10} {:<8} {:>8}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        );
    }
    let once = q(
        "SELECT queue, count(*), count(DISTINCT event_id) FROM demo.handled GROUP BY 1 ORDER BY 1",
    )
    .await?;
    println!("\n  exactly once:");
    for r in once {
        let (total, distinct) = (r.get::<_, i64>(1), r.get::<_, i64>(2));
        println!(
            "    {:<10} {} handled, {} distinct events{}",
            r.get::<_, String>(0),
            total,
            distinct,
            if total == distinct {
                ""
            } else {
                "  <-- DUPLICATES"
            }
        );
    }
    let order = q("SELECT queue, count(*) FILTER (WHERE n < prev) FROM (
             SELECT queue, n, lag(n) OVER (PARTITION BY queue, producer ORDER BY seq) AS prev
               FROM demo.handled) x GROUP BY 1 ORDER BY 1")
    .await?;
    println!("\n  order (each producer's events handled in the order it emitted them):");
    for r in order {
        let bad = r.get::<_, i64>(1);
        println!(
            "    {:<10} {}",
            r.get::<_, String>(0),
            if bad == 0 {
                "in order".to_string()
            } else {
                format!("{bad} out of order")
            }
        );
    }
    for r in q(
        "SELECT name, handled_count, failed_count, coalesce(last_error, '-') FROM herald.queue_status ORDER BY name",
    )
    .await?
    {
        if r.get::<_, i64>(2) > 0 {
            println!(
                "\n  {} failed events in '{}' were recorded and skipped past (hold_on_error = 0); last: {}",
                r.get::<_, i64>(2),
                r.get::<_, String>(0),
                r.get::<_, String>(3)
            );
        }
    }
    let checked = q("SELECT count(*) FROM demo.checked").await?;
    println!(
        "  {} invoices were checked synchronously inside their producers' transactions",
        checked[0].get::<_, i64>(0)
    );
    let ledger = q("SELECT count(*), coalesce(sum(balance), 0)::text FROM demo.ledger").await?;
    println!(
        "  ledger: {} accounts, total balance {}",
        ledger[0].get::<_, i64>(0),
        ledger[0].get::<_, String>(1)
    );
    Ok(())
}

async fn print_drainers(admin: &tokio_postgres::Client, title: &str) -> Result<(), String> {
    let rows = admin
        .query("SELECT name, coalesce(substr(drainer, 8), '(none)') FROM herald.queue_status ORDER BY name", &[])
        .await
        .map_err(|e| e.to_string())?;
    let parts: Vec<String> = rows
        .iter()
        .map(|r| format!("{} -> {}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    println!("{title} {}", parts.join(", "));
    Ok(())
}

/// A database error as the demo prints it: the server's message.
pub(super) fn pg(e: tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

pub(super) async fn wait_until(
    admin: &tokio_postgres::Client,
    sql: &str,
    seconds: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let ok: bool = admin
            .query_one(sql, &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {seconds}s waiting for: {sql}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
