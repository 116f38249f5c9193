//! Event queues end to end: a real server, the installed extension, real coordinators.
use herald_tests::*;
use std::time::Duration;

/// Three queues, three coordinators, four producers, 10,000 events: every event's effect
/// exactly once, each producer's events in the order it emitted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_three_coordinators() {
    let (env, db) = Env::start_with(
        "INSERT INTO herald.event_queue (name, event_run) VALUES ('orders', 1), ('invoices', 1), ('all', 1);
         UPDATE herald.event_queue SET event_amount_per_lookup = 50 WHERE name = 'all';
         SELECT herald.add_event_listener('record', 'order', queue => 'orders');
         SELECT herald.add_event_listener('record', 'invoice', queue => 'invoices');
         SELECT herald.add_event_listener('record', '*', queue => 'all');",
    )
    .await;
    let _nodes: Vec<_> = ["a", "b", "c"].iter().map(|n| env.coordinator(n)).collect();

    let mut producers = Vec::new();
    for p in 0..4 {
        let (kind, per_tx) = if p % 2 == 0 {
            ("order", 1)
        } else {
            ("invoice", 5)
        };
        producers.push(tokio::spawn(produce(env.url(), p, kind, 2500, per_tx)));
    }
    for p in producers {
        p.await.unwrap();
    }
    wait_for(
        &db,
        "SELECT count(*) = 20000 FROM handled",
        180,
        "all events handled",
    )
    .await;
    wait_for(
        &db,
        "SELECT sum(backlog) = 0 FROM herald.queue_status",
        30,
        "empty backlogs",
    )
    .await;
    assert_exactly_once_in_order(&db, "orders", 5000).await;
    assert_exactly_once_in_order(&db, "invoices", 5000).await;
    assert_exactly_once_in_order(&db, "all", 10000).await;
    // each queue was drained by exactly one node at a time: lookups never interleave
    let interleaved = count(
        &db,
        "SELECT count(*) FROM (SELECT xid, count(DISTINCT node) c FROM handled GROUP BY xid) x WHERE c > 1",
    )
    .await;
    assert_eq!(interleaved, 0);
}

/// `kill -9` of the coordinator draining a queue, mid-stream: another one takes over,
/// nothing is lost and no effect is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_draining_coordinator() {
    let (env, db) = Env::start_with(
        "CREATE FUNCTION slow_record(e herald.event) RETURNS void LANGUAGE sql AS
           $$ SELECT pg_sleep(0.0005); SELECT record(e) $$;
         INSERT INTO herald.event_queue (name, event_run) VALUES ('work', 1);
         SELECT herald.add_event_listener('slow_record', 'job', queue => 'work');",
    )
    .await;
    let mut nodes: Vec<_> = ["a", "b", "c"].iter().map(|n| env.coordinator(n)).collect();
    let producer = tokio::spawn(produce(env.url(), 1, "job", 3000, 10));
    wait_for(
        &db,
        "SELECT count(*) >= 300 FROM handled",
        60,
        "draining to start",
    )
    .await;

    let drainer: String = db
        .query_one(
            "SELECT substr(drainer, 8) FROM herald.queue_status WHERE name = 'work'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let victim = nodes
        .iter_mut()
        .find(|n| n.node == drainer)
        .expect("the drainer is one of ours");
    victim.kill9();

    producer.await.unwrap();
    wait_for(
        &db,
        "SELECT count(*) >= 3000 FROM handled",
        120,
        "all events handled after the kill",
    )
    .await;
    wait_for(
        &db,
        "SELECT backlog = 0 FROM herald.queue_status WHERE name = 'work'",
        30,
        "empty backlog",
    )
    .await;
    assert_exactly_once_in_order(&db, "work", 3000).await;
    let others = count(
        &db,
        &format!("SELECT count(*) FROM handled WHERE node <> '{drainer}'"),
    )
    .await;
    assert!(others > 0, "another coordinator took over from {drainer}");
}

/// hold_on_error 0 records and goes on; 1 holds until resumed with retry or skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_on_error_and_resume() {
    let (env, db) = Env::start_with(
        "CREATE TABLE fixed (ok boolean);
         INSERT INTO fixed VALUES (false);
         CREATE FUNCTION fragile(e herald.event) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             IF e.action = 'boom' AND NOT (SELECT ok FROM fixed) THEN
                 RAISE EXCEPTION 'cannot handle event %', e.id;
             END IF;
             PERFORM record(e);
         END $$;
         INSERT INTO herald.event_queue (name, event_run, event_hold_on_error) VALUES ('q', 1, 1);
         SELECT herald.add_event_listener('fragile', 'x', queue => 'q');",
    )
    .await;
    let _node = env.coordinator("a");
    let emit = |action: &'static str| {
        let db = &db;
        async move {
            db.query_one("SELECT herald.emit('x', $1)", &[&action])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };

    // hold: the queue stops at the failing event, the event after it waits
    emit("a").await;
    let boom = emit("boom").await;
    emit("c").await;
    wait_for(
        &db,
        "SELECT state = 'held' FROM herald.queue_status WHERE name = 'q'",
        30,
        "queue held",
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT held_event FROM herald.queue_status WHERE name = 'q'"
        )
        .await,
        boom
    );
    assert_eq!(count(&db, "SELECT count(*) FROM handled").await, 1);
    assert_eq!(
        count(
            &db,
            "SELECT backlog FROM herald.queue_status WHERE name = 'q'"
        )
        .await,
        2
    );

    // retry after fixing the cause: the held event and the rest are handled, in order
    db.batch_execute("UPDATE fixed SET ok = true; SELECT herald.resume_queue('q', 'retry');")
        .await
        .unwrap();
    wait_for(
        &db,
        "SELECT count(*) = 3 FROM handled",
        30,
        "retried event handled",
    )
    .await;
    let actions: Vec<String> = db
        .query("SELECT action FROM handled ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["a", "boom", "c"]);

    // skip: the held event is dropped and recorded, the queue goes on
    db.batch_execute("UPDATE fixed SET ok = false")
        .await
        .unwrap();
    let boom2 = emit("boom").await;
    emit("d").await;
    wait_for(
        &db,
        "SELECT state = 'held' FROM herald.queue_status WHERE name = 'q'",
        30,
        "queue held again",
    )
    .await;
    db.batch_execute("SELECT herald.resume_queue('q', 'skip')")
        .await
        .unwrap();
    wait_for(
        &db,
        "SELECT count(*) = 4 FROM handled",
        30,
        "event after the skipped one",
    )
    .await;
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM handled WHERE event_id = {boom2}")
        )
        .await,
        0
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM herald.event_log WHERE event_id = {boom2} AND outcome = 'skipped'")).await,
        1
    );

    // hold_on_error = 0: the failure is recorded and the queue goes on at once
    db.batch_execute("UPDATE herald.event_queue SET event_hold_on_error = 0 WHERE name = 'q'")
        .await
        .unwrap();
    let boom3 = emit("boom").await;
    emit("e").await;
    wait_for(
        &db,
        "SELECT count(*) = 5 FROM handled",
        30,
        "event after the failed one",
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.queue_status WHERE name = 'q' AND state = 'running'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM herald.event_log WHERE event_id = {boom3} AND outcome = 'failed'")).await,
        1
    );
}

/// Log levels 0-3, written by the coordinator's lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_levels() {
    let (env, db) = Env::start_with(
        "CREATE FUNCTION picky(e herald.event) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN IF e.action = 'bad' THEN RAISE EXCEPTION 'bad event'; END IF; PERFORM record(e); END $$;
         INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1);
         SELECT herald.add_event_listener('picky', 'x', queue => 'q');",
    )
    .await;
    let _node = env.coordinator("a");
    for level in 0..=3i64 {
        db.batch_execute(&format!(
            "UPDATE herald.event_queue SET event_log_level = {level} WHERE name = 'q'"
        ))
        .await
        .unwrap();
        let good: i64 = db
            .query_one("SELECT herald.emit('x', 'good', '{\"k\": 1}')", &[])
            .await
            .unwrap()
            .get(0);
        let bad: i64 = db
            .query_one("SELECT herald.emit('x', 'bad', '{\"k\": 2}')", &[])
            .await
            .unwrap()
            .get(0);
        wait_for(
            &db,
            &format!("SELECT NOT EXISTS (SELECT 1 FROM herald.event WHERE id = {bad})"),
            30,
            "both handled",
        )
        .await;
        let logged = |id: i64, outcome: &'static str| {
            let db = &db;
            async move {
                count(db, &format!("SELECT count(*) FROM herald.event_log WHERE event_id = {id} AND outcome = '{outcome}'")).await
            }
        };
        assert_eq!(
            logged(good, "handled").await,
            (level >= 2) as i64,
            "level {level}: handled events"
        );
        assert_eq!(
            logged(bad, "failed").await,
            (level >= 1) as i64,
            "level {level}: failures"
        );
        let details = count(
            &db,
            &format!("SELECT count(*) FROM herald.event_log WHERE event_id IN ({good}, {bad}) AND details IS NOT NULL"),
        )
        .await;
        assert_eq!(
            details,
            if level == 3 { 2 } else { 0 },
            "level {level}: details only at 3"
        );
        if level >= 1 {
            let node = count(
                &db,
                &format!(
                    "SELECT count(*) FROM herald.event_log WHERE event_id = {bad} AND node = 'a'"
                ),
            )
            .await;
            assert_eq!(node, 1, "the log names the node");
        }
    }
}

/// Settings changed on a running cluster are picked up without restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reconfiguration() {
    let (env, db) = Env::start_with(
        "INSERT INTO herald.event_queue (name, event_run, event_amount_per_lookup) VALUES ('q', 0, 7);
         SELECT herald.add_event_listener('record', 'x', queue => 'q');",
    )
    .await;
    let _nodes = [env.coordinator("a"), env.coordinator("b")];
    produce(env.url(), 1, "x", 200, 200).await;
    // stopped: nothing is drained
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM handled").await,
        0,
        "a stopped queue is not drained"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.queue_status WHERE state = 'stopped'"
        )
        .await,
        1
    );

    // start it: lookups of 7
    db.batch_execute("UPDATE herald.event_queue SET event_run = 1 WHERE name = 'q'")
        .await
        .unwrap();
    wait_for(
        &db,
        "SELECT count(*) = 200 FROM handled",
        60,
        "queue started and drained",
    )
    .await;
    let max_per_lookup = count(
        &db,
        "SELECT max(c) FROM (SELECT count(*) c FROM handled GROUP BY xid) x",
    )
    .await;
    assert_eq!(max_per_lookup, 7);

    // stop it while running
    stop_queue(&db, "q").await;
    produce(env.url(), 2, "x", 100, 100).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM handled WHERE producer = 2").await,
        0,
        "stopped again"
    );

    // change the lookup size and start again: lookups of 25
    db.batch_execute("UPDATE herald.event_queue SET event_amount_per_lookup = 25, event_run = 1 WHERE name = 'q'")
        .await
        .unwrap();
    wait_for(
        &db,
        "SELECT count(*) = 100 FROM handled WHERE producer = 2",
        60,
        "restarted",
    )
    .await;
    let sizes: Vec<i64> = db
        .query(
            "SELECT count(*) FROM handled WHERE producer = 2 GROUP BY xid ORDER BY min(seq)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sizes, [25, 25, 25, 25]);

    // lookup size changed while the queue is being drained: the next lookups use it
    db.batch_execute(
        "CREATE FUNCTION slow_record(e herald.event) RETURNS void LANGUAGE sql AS
           $$ SELECT pg_sleep(0.002); SELECT record(e) $$;
         SELECT herald.add_event_listener('slow_record', 'slow', queue => 'q');",
    )
    .await
    .unwrap();
    stop_queue(&db, "q").await;
    produce(env.url(), 3, "slow", 600, 600).await;
    db.batch_execute(
        "UPDATE herald.event_queue SET event_amount_per_lookup = 5, event_run = 1 WHERE name = 'q'",
    )
    .await
    .unwrap();
    wait_for(
        &db,
        "SELECT count(*) >= 50 FROM handled WHERE producer = 3",
        60,
        "draining in lookups of 5",
    )
    .await;
    db.batch_execute("UPDATE herald.event_queue SET event_amount_per_lookup = 40 WHERE name = 'q'")
        .await
        .unwrap();
    wait_for(
        &db,
        "SELECT count(*) = 600 FROM handled WHERE producer = 3",
        60,
        "drained",
    )
    .await;
    let sizes: Vec<i64> = db
        .query(
            "SELECT count(*) FROM handled WHERE producer = 3 GROUP BY xid ORDER BY min(seq)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let switch = sizes
        .iter()
        .position(|n| *n != 5)
        .expect("the lookup size changed");
    assert!(switch >= 10, "lookups of 5 before the change: {sizes:?}");
    let after = &sizes[switch..sizes.len() - 1];
    assert!(
        !after.is_empty() && after.iter().all(|n| *n == 40),
        "lookups of 40 after it: {sizes:?}"
    );
    assert!(*sizes.last().unwrap() <= 40);
    assert_exactly_once_in_order(&db, "q", 900).await;
}

/// Events emitted while no coordinator runs, and across a server restart, are all handled
/// afterwards, exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_absent_coordinators_and_server_restarts() {
    let (mut env, db) = Env::start_with(
        "INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1);
         SELECT herald.add_event_listener('record', 'x', queue => 'q');",
    )
    .await;
    produce(env.url(), 1, "x", 500, 7).await;
    drop(db);

    env.cluster.restart().expect("restart the server");
    let db = env.connect().await;
    assert_eq!(
        count(&db, "SELECT backlog FROM herald.queue_status").await,
        500,
        "events are persistent"
    );

    let _node = env.coordinator("a");
    wait_for(&db, "SELECT count(*) >= 100 FROM handled", 60, "draining").await;
    drop(db);
    // restart under the running coordinator: it reconnects and goes on
    env.cluster.restart().expect("restart the server");
    let db = env.connect().await;
    produce(env.url(), 2, "x", 300, 3).await;
    wait_for(
        &db,
        "SELECT count(*) >= 800 FROM handled",
        90,
        "all handled after the restart",
    )
    .await;
    wait_for(
        &db,
        "SELECT backlog = 0 FROM herald.queue_status",
        30,
        "empty backlog",
    )
    .await;
    assert_exactly_once_in_order(&db, "q", 800).await;
    assert!(
        env.log_of("a").contains("reconnected"),
        "the coordinator reconnected:\n{}",
        env.log_of("a")
    );
}

/// SIGTERM stops a coordinator gracefully (exit 0); its queue moves to another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_a_graceful_stop() {
    let (env, db) = Env::start_with(
        "INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1);
         SELECT herald.add_event_listener('record', 'x', queue => 'q');",
    )
    .await;
    let mut a = env.coordinator("a");
    wait_for(
        &db,
        "SELECT drainer = 'herald/a' FROM herald.queue_status",
        30,
        "a drains q",
    )
    .await;
    let mut b = env.coordinator("b");
    let producer = tokio::spawn(produce(env.url(), 1, "x", 1000, 1));
    wait_for(&db, "SELECT count(*) >= 100 FROM handled", 60, "draining").await;
    let status = a.terminate();
    assert!(status.success(), "graceful exit, got {status}");
    producer.await.unwrap();
    wait_for(
        &db,
        "SELECT count(*) = 1000 FROM handled",
        60,
        "b took over",
    )
    .await;
    assert_exactly_once_in_order(&db, "q", 1000).await;
    assert!(count(&db, "SELECT count(*) FROM handled WHERE node = 'b'").await > 0);
    assert!(b.terminate().success());
}

/// Bad configuration: a readable message and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_reported() {
    let out = std::process::Command::new(herald_bin())
        .arg("run")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set DATABASE_URL or pass --database-url")
    );

    let out = std::process::Command::new(herald_bin())
        .args([
            "run",
            "--database-url",
            "postgres://x:y@localhost:notaport/db",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid database URL"));

    let out = std::process::Command::new(herald_bin())
        .args([
            "run",
            "--database-url",
            "host=127.0.0.1",
            "--node",
            "bad node!",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid node name"));

    // a database without the extension
    let cluster = PgCluster::start(&ClusterOptions::default()).unwrap();
    let out = std::process::Command::new(herald_bin())
        .args([
            "run",
            "--database-url",
            &cluster.url("postgres"),
            "--node",
            "a",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CREATE EXTENSION herald"));
    // `herald status` says the same, not just "db error".
    let out = std::process::Command::new(herald_bin())
        .args(["status", "--database-url", &cluster.url("postgres")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("extension \"herald\" is not installed"),
        "{stderr}"
    );
}

/// An event whose transaction commits late, after later events were handled and after
/// several lookups: it is handled, before anything its session emits afterwards. Lookups
/// are driven by hand so that the interleaving is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_committing_events_are_never_skipped() {
    let (env, db) = Env::start_with(
        "INSERT INTO herald.event_queue (name, event_run, event_amount_per_lookup) VALUES ('q', 1, 2);
         SELECT herald.add_event_listener('record', 'x', queue => 'q');",
    )
    .await;
    let slow = env.connect().await;
    let fast = env.connect().await;
    let drain = || async { db.batch_execute("SELECT herald.drain('q')").await.unwrap() };

    // An older transaction (smaller xid) commits an event with an id above an event of a
    // younger transaction that is still open: the floor must not pass the open one.
    let older = env.connect().await;
    older.batch_execute("BEGIN").await.unwrap();
    emit(&older, 3, 0).await;
    slow.batch_execute("BEGIN").await.unwrap();
    let early = emit(&slow, 1, 0).await; // committed last
    emit(&older, 3, 1).await;
    older.batch_execute("COMMIT").await.unwrap();
    for _ in 0..3 {
        drain().await;
    }
    assert_eq!(count(&db, "SELECT count(*) FROM handled").await, 2);
    let mut later = Vec::new();
    for round in 0..5 {
        for i in 0..3 {
            later.push(emit(&fast, 2, round * 3 + i).await);
        }
        for _ in 0..4 {
            drain().await;
        }
    }
    assert!(later.iter().all(|id| *id > early));
    assert_eq!(
        count(&db, "SELECT count(*) FROM handled").await,
        17,
        "the committed events are handled"
    );
    slow.batch_execute("COMMIT").await.unwrap();
    let after = emit(&slow, 1, 1).await;
    for _ in 0..4 {
        drain().await;
    }
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM handled WHERE event_id = {early}")
        )
        .await,
        1,
        "the late event is handled"
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM handled WHERE event_id = {after}")
        )
        .await,
        1
    );
    assert_exactly_once_in_order(&db, "q", 19).await;
    assert_eq!(count(&db, "SELECT count(*) FROM herald.event").await, 0);

    // and with a coordinator and many overlapping long transactions
    let _node = env.coordinator("a");
    let mut tasks = Vec::new();
    for p in 0..6 {
        let url = env.url();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            for t in 0..40 {
                let tx = client.transaction().await.unwrap();
                for i in 0..3 {
                    tx.execute(
                        "SELECT herald.emit('x', 'made', jsonb_build_object('producer', $1::int, 'n', $2::int))",
                        &[&(10 + p), &(t * 3 + i)],
                    )
                    .await
                    .unwrap();
                    if (t + p) % 7 == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    }
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for(
        &db,
        "SELECT count(*) = 19 + 720 FROM handled",
        60,
        "every event handled",
    )
    .await;
    assert_exactly_once_in_order(&db, "q", 739).await;
}

async fn emit(client: &tokio_postgres::Client, producer: i32, n: i32) -> i64 {
    client
        .query_one(
            "SELECT herald.emit('x', 'made', jsonb_build_object('producer', $1::int, 'n', $2::int))",
            &[&producer, &n],
        )
        .await
        .unwrap()
        .get(0)
}
