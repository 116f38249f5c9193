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

/// What a backup must carry of jobs: classes as users set them, types, every job with its
/// state and params, the audit, and where job ids go on.
const JOB_STATE: &str = "
    SELECT (SELECT string_agg(name || ':' || coalesce(max_running::text, '-') || ':'
                              || coalesce(wait_timeout::text, '-'), ',' ORDER BY name)
              FROM herald.job_class)
        || ' | ' || (SELECT string_agg(name || ':' || target || ':' || class || ':' || max_attempts
                                       || ':' || owner::text, ',' ORDER BY name) FROM herald.job_type)
        || ' | ' || (SELECT string_agg(id || ':' || type || ':' || state || ':' || params::text,
                                       ',' ORDER BY id) FROM herald.job)
        || ' | ' || (SELECT string_agg(job || ':' || action || ':' || new_state, ',' ORDER BY id)
                       FROM herald.job_audit)
        || ' | ' || (SELECT last_value FROM herald.job_id_seq)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_and_restore_keep_job_classes_types_and_waiting_jobs() {
    let (env, admin) = Env::start_with(
        "CREATE TABLE posted (n int, at timestamptz DEFAULT clock_timestamp());
         CREATE FUNCTION post(p jsonb) RETURNS jsonb LANGUAGE sql AS $$
             INSERT INTO posted (n) VALUES ((p->>'n')::int); SELECT NULL::jsonb $$;
         UPDATE herald.job_class SET max_running = 1, wait_timeout = '5 minutes' WHERE name = 'posting';
         INSERT INTO herald.job_class (name, max_running) VALUES ('nightly', 2);
         SELECT herald.create_job_type('posting_run', 'post', class => 'posting', max_attempts => 3);
         SELECT herald.create_job_type('nightly_run', 'post', class => 'nightly');
         SELECT herald.submit_job('posting_run', jsonb_build_object('n', g)) FROM generate_series(1, 20) g;
         SELECT herald.submit_job('nightly_run', '{\"n\": 100}');
         SELECT herald.abort_job(21, 'not tonight');",
    )
    .await;
    let before: String = admin.query_one(JOB_STATE, &[]).await.unwrap().get(0);
    assert!(
        before.contains("nightly:2:-") && before.contains("21:nightly_run:ABORTED"),
        "{before}"
    );
    let dump = env.cluster.dir.join("jobs.dump");
    let dump = dump.to_str().unwrap();
    env.tool("pg_dump", &["-Fc", "-f", dump, "postgres"]);
    admin
        .batch_execute("CREATE DATABASE restored")
        .await
        .unwrap();
    env.tool("pg_restore", &["-d", "restored", dump]);
    let restored = connect(&env.url_of("restored")).await;
    let after: String = restored.query_one(JOB_STATE, &[]).await.unwrap().get(0);
    assert_eq!(
        after, before,
        "classes, types, jobs, audit and the id sequence"
    );

    // The restored backlog runs, serialized and in submission order, and new jobs get new
    // ids.
    let mut c = env.coordinator_on("r1", &env.url_of("restored"));
    let next: i64 = restored
        .query_one(
            "SELECT herald.submit_job('posting_run', '{\"n\": 21}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 22);
    wait_for(
        &restored,
        "SELECT count(*) = 21 FROM herald.job WHERE state = 'COMPLETED'",
        60,
        "the restored postings to run",
    )
    .await;
    assert_eq!(
        count(
            &restored,
            "SELECT count(*) FROM (SELECT n, lag(n) OVER (ORDER BY at) AS prev FROM posted) x
              WHERE prev IS NOT NULL AND n <> prev + 1"
        )
        .await,
        0,
        "in submission order"
    );
    assert!(c.terminate().success());
}
