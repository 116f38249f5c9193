//! Bounded connections: a coordinator drains any number of queues within
//! `--max-connections` (default 16), so that a server with the default
//! `max_connections = 100` serves 500 running queues from three coordinators, with
//! exactly-once, per-queue order and failover as with few queues.
use herald_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const QUEUES: i32 = 500;
const ROUNDS: i32 = 10;

/// Emit one event into every queue (type `t<i>` goes to queue `q<i>`), `rounds` times, one
/// transaction per round; details carry the queue as `producer` and the round as `n`.
async fn emit_rounds(db: &tokio_postgres::Client, rounds: std::ops::Range<i32>) {
    for n in rounds {
        db.execute(
            "SELECT herald.emit('t' || i, 'made', jsonb_build_object('producer', i, 'n', $1::int))
               FROM generate_series(0, $2 - 1) i",
            &[&n, &QUEUES],
        )
        .await
        .expect("emit a round");
    }
}

/// The most connections each node had open, sampled from `pg_stat_activity`.
async fn sample_connections(db: &tokio_postgres::Client, most: &mut HashMap<String, i64>) {
    for row in db
        .query(
            "SELECT substr(application_name, 8), count(*) FROM pg_stat_activity
              WHERE application_name LIKE 'herald/%' GROUP BY 1",
            &[],
        )
        .await
        .expect("pg_stat_activity")
    {
        let (node, n): (String, i64) = (row.get(0), row.get(1));
        let seen = most.entry(node).or_default();
        *seen = (*seen).max(n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_queues_on_a_server_with_max_connections_100() {
    let cluster = PgCluster::start(&ClusterOptions {
        settings: vec![("max_connections".into(), "100".into())],
    })
    .expect("start a private PostgreSQL cluster");
    let env = Env { cluster };
    let db = env.connect().await;
    db.batch_execute("CREATE EXTENSION herald").await.unwrap();
    assert_eq!(
        count(&db, "SELECT current_setting('max_connections')::int8").await,
        100
    );
    db.batch_execute(RECORDER).await.unwrap();
    db.execute(
        "INSERT INTO herald.event_queue (name, event_run)
         SELECT 'q' || i, 1 FROM generate_series(0, $1 - 1) i",
        &[&QUEUES],
    )
    .await
    .unwrap();
    db.execute(
        "SELECT herald.add_event_listener('record', 't' || i, queue => 'q' || i)
           FROM generate_series(0, $1 - 1) i",
        &[&QUEUES],
    )
    .await
    .unwrap();
    let mut nodes: Vec<_> = ["a", "b", "c"].iter().map(|n| env.coordinator(n)).collect();
    wait_for(
        &db,
        "SELECT count(*) = 0 FROM herald.queue_status WHERE drainer IS NULL",
        60,
        "every queue claimed",
    )
    .await;
    let mut most = HashMap::new();
    emit_rounds(&db, 0..ROUNDS / 2).await;
    let half = (QUEUES * ROUNDS / 2) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&db, "SELECT count(*) FROM handled").await < half {
        sample_connections(&db, &mut most).await;
        assert!(
            Instant::now() < deadline,
            "the first half was not handled in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Kill the node that drains the most queues: the others take them over.
    let busiest: String = db
        .query_one(
            "SELECT substr(drainer, 8) FROM herald.queue_status
              GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    nodes
        .iter_mut()
        .find(|c| c.node == busiest)
        .unwrap()
        .kill9();
    emit_rounds(&db, ROUNDS / 2..ROUNDS).await;
    let all = (QUEUES * ROUNDS) as i64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while count(&db, "SELECT count(*) FROM handled").await < all {
        sample_connections(&db, &mut most).await;
        assert!(
            Instant::now() < deadline,
            "not every event was handled in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sample_connections(&db, &mut most).await;
    wait_for(
        &db,
        &format!(
            "SELECT count(*) = {QUEUES} FROM herald.queue_status
              WHERE drainer IS NOT NULL AND drainer <> 'herald/{busiest}'"
        ),
        60,
        "the surviving nodes drain every queue",
    )
    .await;

    // Exactly once, and each queue's events in emission order.
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT event_id) FROM handled",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (all, all));
    let misplaced = count(
        &db,
        "SELECT count(*) FROM handled WHERE queue <> 'q' || producer",
    )
    .await;
    assert_eq!(misplaced, 0);
    let out_of_order = count(
        &db,
        "SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY queue ORDER BY seq) AS prev
                                 FROM handled) x WHERE n <= prev",
    )
    .await;
    assert_eq!(out_of_order, 0, "each queue's events in emission order");
    let interleaved = count(
        &db,
        "SELECT count(*) FROM (SELECT xid FROM handled GROUP BY xid
                                HAVING count(DISTINCT node) > 1) x",
    )
    .await;
    assert_eq!(interleaved, 0, "a lookup is one node's transaction");

    eprintln!("most connections per node: {most:?}");
    // Every node stayed within its budget, the default --max-connections of 16.
    assert_eq!(most.len(), 3, "all three nodes were seen: {most:?}");
    for (node, n) in &most {
        assert!(*n <= 16, "node {node} used {n} connections (at most 16)");
    }
    // `herald status` shows how many connections each node uses.
    let out = std::process::Command::new(herald_bin())
        .args(["status", "--database-url", &env.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let survivor = ["a", "b", "c"].into_iter().find(|n| *n != busiest).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with(survivor)
            && l.split_whitespace()
                .nth(1)
                .is_some_and(|c| c.parse::<i64>().is_ok_and(|c| (1..=16).contains(&c)))),
        "status lists node {survivor} with its connections:\n{text}"
    );
}
