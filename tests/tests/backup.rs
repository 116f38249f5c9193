//! Backup and restore (issue #10): everything a user created or is owed survives
//! `pg_dump`/`pg_restore`, whole and `--data-only`: queues and their settings, listeners
//! (resolved again by name in the new database), event types, pending events in order,
//! the event log, and the sequences behind ids.
use herald_tests::*;

const SETUP: &str = "
    CREATE TABLE stock (id int PRIMARY KEY, qty int);
    CREATE TABLE orders (id int PRIMARY KEY, customer text);
    INSERT INTO herald.event_queue (name, event_run, event_log_level, event_amount_per_lookup)
    VALUES ('q1', 0, 2, 7), ('q2', 0, 1, 5);
    SELECT herald.create_event_type('invoice');
    SELECT herald.add_event_listener('record', 'invoice', queue => 'q1');
    SELECT herald.add_event_listener('record', 'invoice', queue => 'q2');
    SELECT herald.add_data_listener('stock', 'record', queue => 'q1');
    SELECT herald.add_data_listener('orders', 'record', queue => 'q2');";

/// What a backup must carry: settings, listeners, types and pending events per queue.
const STATE: &str = "
    SELECT (SELECT string_agg(name || ':' || event_log_level || ':' || event_amount_per_lookup
                              || ':' || id, ',' ORDER BY name) FROM herald.event_queue)
        || ' | ' || (SELECT string_agg(kind || ':' || handler::text || ':' || coalesce(tbl::text, '-')
                              || ':' || coalesce(queue, '-') || ':' || owner::text, ',' ORDER BY id)
                     FROM herald.listener)
        || ' | ' || (SELECT string_agg(name || ':' || owner::text, ',') FROM herald.event_type)
        || ' | ' || (SELECT string_agg(queue || ':' || n, ',' ORDER BY queue)
                     FROM (SELECT queue, count(*) AS n FROM herald.event GROUP BY queue) e)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_and_restore_keep_every_queue_listener_and_pending_event() {
    let (env, admin) = Env::start_with(SETUP).await;
    let producers: Vec<_> = (0..2)
        .map(|p| tokio::spawn(produce(env.url(), p, "invoice", 100, 10)))
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    admin
        .batch_execute(
            "INSERT INTO stock SELECT g, g FROM generate_series(1, 50) g;
             INSERT INTO orders SELECT g, 'c' || g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let before: String = admin.query_one(STATE, &[]).await.unwrap().get(0);
    let next_id: i64 = admin
        .query_one("SELECT last_value FROM herald.event_id_seq", &[])
        .await
        .unwrap()
        .get(0);

    let dump = env.cluster.dir.join("herald.dump");
    let dump = dump.to_str().unwrap();
    env.tool("pg_dump", &["-Fc", "-f", dump, "postgres"]);
    admin
        .batch_execute("CREATE DATABASE restored")
        .await
        .unwrap();
    env.tool("pg_restore", &["-d", "restored", dump]);

    let restored = connect(&env.url_of("restored")).await;
    let after: String = restored.query_one(STATE, &[]).await.unwrap().get(0);
    assert_eq!(after, before, "queues, listeners, types and pending events");
    assert!(
        after.contains("q1:250") && after.contains("q2:230"),
        "{after}"
    );
    let restored_next: i64 = restored
        .query_one("SELECT last_value FROM herald.event_id_seq", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(restored_next, next_id, "event ids go on where they were");

    // Coordinators drain the restored backlog exactly once, in order; new writes to the
    // captured tables are captured without any manual step.
    restored
        .batch_execute("UPDATE herald.event_queue SET event_run = 1")
        .await
        .unwrap();
    let url = env.url_of("restored");
    let mut coordinators = [
        env.coordinator_on("r1", &url),
        env.coordinator_on("r2", &url),
    ];
    restored
        .batch_execute(
            "INSERT INTO stock VALUES (1000, 1); INSERT INTO orders VALUES (1000, 'new')",
        )
        .await
        .unwrap();
    wait_for(
        &restored,
        "SELECT count(*) = 251 + 231 FROM handled",
        90,
        "the restored backlog and the new writes handled",
    )
    .await;
    assert_exactly_once_in_order(&restored, "q1", 251).await;
    assert_exactly_once_in_order(&restored, "q2", 231).await;
    for c in coordinators.iter_mut() {
        assert!(c.terminate().success());
    }
    assert!(
        count(
            &restored,
            "SELECT count(*) FROM herald.event_log WHERE outcome = 'handled' AND queue = 'q1'"
        )
        .await
            >= 251
    );

    // --data-only into a database whose schema (and CREATE EXTENSION herald) came first.
    admin
        .batch_execute("CREATE DATABASE reloaded")
        .await
        .unwrap();
    env.tool("pg_restore", &["--schema-only", "-d", "reloaded", dump]);
    // --disable-triggers, as for any database with triggers: otherwise the capture
    // triggers would record the restored rows as new changes.
    env.tool(
        "pg_restore",
        &["--data-only", "--disable-triggers", "-d", "reloaded", dump],
    );
    let reloaded = connect(&env.url_of("reloaded")).await;
    let again: String = reloaded.query_one(STATE, &[]).await.unwrap().get(0);
    assert_eq!(again, before, "a data-only restore carries the same state");
    reloaded
        .batch_execute("INSERT INTO stock VALUES (2000, 1)")
        .await
        .unwrap();
    assert_eq!(
        count(
            &reloaded,
            "SELECT count(*) FROM herald.event WHERE queue = 'q1'"
        )
        .await,
        251
    );
    // Its queues work although their insert trigger did not run during the load.
    assert_eq!(
        count(
            &reloaded,
            "SELECT backlog FROM herald.queue_status WHERE name = 'q1'"
        )
        .await,
        251
    );
    let url = env.url_of("reloaded");
    reloaded
        .batch_execute("UPDATE herald.event_queue SET event_run = 1")
        .await
        .unwrap();
    let mut c = env.coordinator_on("d1", &url);
    wait_for(
        &reloaded,
        "SELECT count(*) = 251 + 230 FROM handled",
        90,
        "the data-only restore drained",
    )
    .await;
    assert_exactly_once_in_order(&reloaded, "q1", 251).await;
    assert!(c.terminate().success());
}
