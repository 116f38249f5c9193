//! Correctness under concurrency and interruption (issue #10): registrations seen by open
//! transactions, lookups aborted as a whole by a cancel or a timeout, and no event outliving
//! its listener or queue.
use herald_tests::*;
use std::time::Duration;

/// A queue `q`, the recording table `seen`, and a handler `rec` that records each event.
const SETUP: &str = "
    INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1);
    CREATE TABLE seen (event_id bigint, action text);
    CREATE FUNCTION rec(e herald.event) RETURNS void LANGUAGE sql AS
      $$ INSERT INTO seen VALUES (e.id, e.action) $$;
    CREATE FUNCTION slow(e herald.event) RETURNS void LANGUAGE sql AS
      $$ SELECT pg_sleep(0.2); INSERT INTO seen VALUES (e.id, e.action) $$;
    CREATE TABLE stock (id int PRIMARY KEY, qty int);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_seen_by_transactions_already_open() {
    let (env, admin) = Env::start_with(SETUP).await;
    let producer = env.connect().await;
    for isolation in ["READ COMMITTED", "REPEATABLE READ"] {
        admin
            .batch_execute(
                "DELETE FROM seen; SELECT herald.remove_listener(id) FROM herald.listener",
            )
            .await
            .unwrap();
        // A user event listener registered while the producer's transaction is open.
        producer
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL {isolation}; SELECT herald.emit('late', '1');"
            ))
            .await
            .unwrap();
        admin
            .batch_execute("SELECT herald.add_event_listener('rec', 'late', queue => 'q')")
            .await
            .unwrap();
        producer
            .batch_execute(
                "SELECT herald.emit('late', '2'); SELECT herald.emit('late', '3'); COMMIT",
            )
            .await
            .unwrap();
        assert_eq!(
            count(
                &admin,
                "SELECT count(*) FROM herald.event WHERE type = 'late'"
            )
            .await,
            2,
            "{isolation}: emits after the registration committed reach the queue"
        );
        // A second data listener on a table that is already captured.
        admin
            .batch_execute(
                "SELECT herald.add_data_listener('stock', 'rec', 'INSERT', queue => 'q')",
            )
            .await
            .unwrap();
        producer
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL {isolation}; INSERT INTO stock VALUES (1, 1);"
            ))
            .await
            .unwrap();
        admin
            .batch_execute(
                "SELECT herald.add_data_listener('stock', 'rec', 'INSERT', queue => 'q')",
            )
            .await
            .unwrap();
        producer
            .batch_execute("INSERT INTO stock VALUES (2, 2); COMMIT; DELETE FROM stock;")
            .await
            .unwrap();
        assert_eq!(
            count(
                &admin,
                "SELECT count(*) FROM herald.event WHERE type = 'DATA'"
            )
            .await,
            3,
            "{isolation}: the second listener gets the row written after it committed"
        );
        admin
            .batch_execute("DELETE FROM herald.event")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_or_timeout_aborts_a_lookup_as_a_whole() {
    let (env, admin) = Env::start_with(SETUP).await;
    admin
        .batch_execute(
            "UPDATE herald.event_queue SET event_amount_per_lookup = 20;
             SELECT herald.add_event_listener('slow', 'job', queue => 'q');
             SELECT herald.emit('job', 'n' || g) FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    // statement_timeout: the lookup fails, nothing of it commits.
    let drainer = env.connect().await;
    let err = drainer
        .batch_execute("SET statement_timeout = '1s'; SELECT * FROM herald.drain('q', 'test')")
        .await
        .expect_err("the lookup outlives its timeout");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{err:?}"
    );
    let untouched = "SELECT count(*) FROM herald.event WHERE queue = 'q'";
    assert_eq!(count(&admin, untouched).await, 20);
    assert_eq!(count(&admin, "SELECT count(*) FROM seen").await, 0);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM herald.event_log").await,
        0
    );
    // pg_cancel_backend: the same.
    drainer
        .batch_execute("RESET statement_timeout")
        .await
        .unwrap();
    let pid: i32 = drainer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let lookup = tokio::spawn(async move {
        drainer
            .batch_execute("SELECT * FROM herald.drain('q', 'test')")
            .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap();
    let err = lookup.await.unwrap().expect_err("a cancelled lookup fails");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("57014"));
    assert_eq!(count(&admin, untouched).await, 20);
    assert_eq!(count(&admin, "SELECT count(*) FROM seen").await, 0);
    // A coordinator then hands every event out exactly once.
    let mut c = env.coordinator("c1");
    wait_for(
        &admin,
        "SELECT count(*) = 20 FROM seen",
        60,
        "all events handled",
    )
    .await;
    assert_eq!(
        count(&admin, "SELECT count(DISTINCT event_id) FROM seen").await,
        20
    );
    assert!(c.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_outlives_its_listener_or_queue() {
    let (env, admin) = Env::start_with(SETUP).await;
    let listener: i64 = admin
        .query_one(
            "SELECT herald.add_event_listener('rec', 'o', queue => 'q')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A producer's event is not committed yet when the listener is removed.
    let producer = env.connect().await;
    producer
        .batch_execute("BEGIN; SELECT herald.emit('o', 'uncommitted');")
        .await
        .unwrap();
    let remover = env.connect().await;
    let removal = tokio::spawn(async move {
        remover
            .batch_execute(&format!(
                "SELECT herald.remove_listener({listener}); DELETE FROM herald.event_queue WHERE name = 'q';"
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !removal.is_finished(),
        "the removal waits for the producer that may still commit an event for it"
    );
    producer.batch_execute("COMMIT").await.unwrap();
    removal.await.unwrap().expect("removal");
    assert_eq!(count(&admin, "SELECT count(*) FROM herald.event").await, 0);
    // A producer that starts after the removal committed stores nothing; a queue re-created
    // under the name finds nothing of the old one.
    producer
        .batch_execute("SELECT herald.emit('o', 'after')")
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1)")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT * FROM herald.drain('q', 'test')")
        .await
        .unwrap();
    assert_eq!(count(&admin, "SELECT count(*) FROM herald.event").await, 0);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM herald.event_log").await,
        0
    );
}

/// Writes through a partitioned table and directly into its partitions, while partitions
/// are attached and detached: each row of the table is captured exactly once, with the
/// table as source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_attached_and_detached_during_writes() {
    let (env, admin) = Env::start_with(SETUP).await;
    admin
        .batch_execute(
            "CREATE TABLE got (id int, source text);
             CREATE FUNCTION got_it(e herald.event) RETURNS void LANGUAGE sql AS
               $$ INSERT INTO got VALUES ((e.details->'new'->>'id')::int, e.source) $$;
             CREATE TABLE pt (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);
             CREATE TABLE p0 PARTITION OF pt FOR VALUES FROM (0) TO (100000);
             CREATE TABLE p1 PARTITION OF pt FOR VALUES FROM (100000) TO (200000);
             CREATE TABLE p3 PARTITION OF pt FOR VALUES FROM (300000) TO (400000);
             INSERT INTO pt SELECT g, 'old' FROM generate_series(300000, 300009) g;
             SELECT herald.add_data_listener('pt', 'got_it', 'INSERT', queue => 'q');
             CREATE TABLE pnew (note text, id int NOT NULL);",
        )
        .await
        .unwrap();
    let writer = |sql: &'static str, from: i32| {
        let url = env.url();
        tokio::spawn(async move {
            let c = connect(&url).await;
            for i in 0..300 {
                c.execute(sql, &[&(from + i)]).await.unwrap();
            }
        })
    };
    let through_parent = writer("INSERT INTO pt VALUES ($1, 'parent')", 0);
    let direct = writer("INSERT INTO p1 VALUES ($1, 'direct')", 100000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin
        .batch_execute("ALTER TABLE pt ATTACH PARTITION pnew FOR VALUES FROM (200000) TO (300000)")
        .await
        .unwrap();
    let attached = writer("INSERT INTO pt VALUES ($1, 'attached')", 200000);
    admin
        .batch_execute("ALTER TABLE pt DETACH PARTITION p3")
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO p3 VALUES (399999, 'detached')")
        .await
        .unwrap();
    for w in [through_parent, direct, attached] {
        w.await.unwrap();
    }
    let mut c = env.coordinator("c1");
    wait_for(
        &admin,
        "SELECT count(*) = 900 FROM got",
        60,
        "every row captured",
    )
    .await;
    assert!(c.terminate().success());
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM got WHERE source <> 'public.pt'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&admin, "SELECT count(DISTINCT id) FROM got").await,
        900,
        "each row once"
    );
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM pt WHERE note <> 'old' AND id NOT IN (SELECT id FROM got)"
        )
        .await,
        0
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM got WHERE id >= 300000").await,
        0
    );
}
