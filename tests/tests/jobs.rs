//! Jobs end to end (issue #11), with three coordinators: serialized postings never overlap
//! and start in submission order; without serialization they overlap; a concurrency key
//! serializes per key only; the wait timeout lets the next job start and alerts once; a
//! coordinator killed mid-job has its job found by its lost claim and retried, never run
//! twice at once; a coordinator that is only paused keeps its job; command jobs run without
//! a shell; hooks roll a submit back, fail a completion and compensate an abort.
//!
//! Postings check for overlap from the inside: each takes a transaction-level advisory
//! lock with `pg_try_advisory_xact_lock` and fails if another run holds it.
use herald_tests::*;
use std::time::Duration;
use tokio_postgres::Client;

const SETUP: &str = r#"
CREATE TABLE runs (job bigint, n int, key text, node text,
                   started timestamptz, ended timestamptz);
-- A posting: refuses to run beside another (same lock), records when it ran.
CREATE FUNCTION post(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    IF NOT pg_try_advisory_xact_lock(4242, coalesce(p->>'lock', '0')::int) THEN
        RAISE EXCEPTION 'another posting runs at the same time';
    END IF;
    PERFORM pg_sleep(coalesce((p->>'sleep')::float8, 0));
    INSERT INTO runs VALUES ((p->>'job')::bigint, (p->>'n')::int, p->>'key',
                             substr(current_setting('application_name'), 8), t0, clock_timestamp());
    RETURN jsonb_build_object('n', p->'n');
END $$;
-- A report: no lock, records when it ran.
CREATE FUNCTION report(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_sleep(coalesce((p->>'sleep')::float8, 0));
    INSERT INTO runs VALUES (NULL, (p->>'n')::int, p->>'key',
                             substr(current_setting('application_name'), 8), t0, clock_timestamp());
END $$;
SELECT herald.create_job_type('posting', 'post', class => 'posting');
SELECT herald.create_job_type('report', 'report', newthread => true);
"#;

async fn start(coordinators: usize) -> (Env, Client, Vec<Coordinator>) {
    let (env, db) = Env::start_with(SETUP).await;
    let nodes = (0..coordinators)
        .map(|i| env.coordinator(&format!("node{i}")))
        .collect();
    (env, db, nodes)
}

/// Submit `count` jobs of `type` from `sessions` concurrent sessions; params carry `n`
/// (the submission's number in its session), `session`, and `extra`.
async fn submit_concurrently(env: &Env, r#type: &str, sessions: i32, count: i32, extra: &str) {
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let (url, t, extra) = (env.url(), r#type.to_string(), extra.to_string());
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            for i in 0..count / sessions {
                let n = s * 1000 + i;
                c.execute(
                    &format!(
                        "SELECT herald.submit_job($1, jsonb_build_object('n', $2::int) || '{extra}'::jsonb)"
                    ),
                    &[&t, &n],
                )
                .await
                .expect("submit");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn wait_all_ended(db: &Client, seconds: u64) {
    wait_for(
        db,
        "SELECT count(*) = 0 FROM herald.job WHERE state IN ('CREATED', 'STARTED', 'FINISHED')",
        seconds,
        "every job to end",
    )
    .await;
}

/// The most runs of `runs` that were ever running at once (counting only the runs `b`
/// that pass `filter` beside each run `a`: `b.key = a.key` for one key's runs).
async fn max_overlap(db: &Client, filter: &str) -> i64 {
    count(
        db,
        &format!(
            "SELECT coalesce(max(c), 0)::int8 FROM (
                 SELECT (SELECT count(*) FROM runs b WHERE {filter}
                          AND b.started < a.ended AND a.started < b.ended) AS c
                   FROM runs a) x"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialized_postings_never_overlap_and_start_in_submission_order() {
    let (env, db, _nodes) = start(3).await;
    db.batch_execute("UPDATE herald.job_class SET max_running = 1 WHERE name = 'posting'")
        .await
        .unwrap();
    submit_concurrently(&env, "posting", 10, 200, "{}").await;
    wait_all_ended(&db, 120).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.job WHERE state = 'COMPLETED'"
        )
        .await,
        200,
        "every posting completed (none failed its overlap check)"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM runs").await, 200);
    // Recorded times: no run of a job started before the previous job's run ended.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM (SELECT started_at, lag(finished_at) OVER (ORDER BY started_at) AS prev
                                     FROM herald.job) x WHERE started_at < prev"
        )
        .await,
        0,
        "no two postings overlapped"
    );
    assert_eq!(max_overlap(&db, "true").await, 1);
    // Submission order: by start time, the job ids only grow.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM (SELECT id, lag(id) OVER (ORDER BY started_at) AS prev
                                     FROM herald.job) x WHERE id < prev"
        )
        .await,
        0,
        "postings started in submission order"
    );
    // Several nodes took part.
    assert!(count(&db, "SELECT count(DISTINCT node) FROM herald.job").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_serialization_postings_overlap() {
    let (env, db, _nodes) = start(3).await;
    db.batch_execute(
        "SELECT herald.create_job_type('parallel_posting', 'report', class => 'posting', newthread => true)",
    )
    .await
    .unwrap();
    submit_concurrently(&env, "parallel_posting", 4, 24, r#"{"sleep": 0.3}"#).await;
    wait_all_ended(&db, 60).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.job WHERE state = 'COMPLETED'"
        )
        .await,
        24
    );
    assert!(
        max_overlap(&db, "true").await > 1,
        "with max_running NULL (the default), postings run side by side"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_serializes_per_key_only() {
    let (env, db, _nodes) = start(3).await;
    db.batch_execute(
        "UPDATE herald.job_class SET max_running = 1 WHERE name = 'posting';
         SELECT herald.create_job_type('company_posting', 'report', class => 'posting', newthread => true);",
    )
    .await
    .unwrap();
    let c = env.connect().await;
    for i in 0..8 {
        for key in ["company 1", "company 2"] {
            c.execute(
                "SELECT herald.submit_job('company_posting',
                        jsonb_build_object('n', $1::int, 'key', $2::text, 'sleep', 0.15),
                        concurrency_key => $2)",
                &[&i, &key],
            )
            .await
            .unwrap();
        }
    }
    wait_all_ended(&db, 60).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.job WHERE state = 'COMPLETED'"
        )
        .await,
        16
    );
    assert_eq!(
        max_overlap(&db, "b.key = a.key").await,
        1,
        "one at a time per key"
    );
    assert!(
        max_overlap(&db, "true").await > 1,
        "the two companies post side by side"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_timeout_lets_the_next_job_start_and_fires_one_alert() {
    let (env, db, _nodes) = start(3).await;
    db.batch_execute(
        "UPDATE herald.job_class SET max_running = 1, wait_timeout = '1 second' WHERE name = 'posting';
         SELECT herald.create_job_type('stuck_posting', 'report', class => 'posting', newthread => true);
         INSERT INTO herald.event_queue (name) VALUES ('alerts');
         SELECT herald.add_system_listener('record', 'JOB', 'alerts');",
    )
    .await
    .unwrap();
    let c = env.connect().await;
    let stuck: i64 = c
        .query_one(
            "SELECT herald.submit_job('stuck_posting', '{\"n\": 1, \"sleep\": 4}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_for(
        &db,
        &format!("SELECT state = 'STARTED' FROM herald.job WHERE id = {stuck}"),
        20,
        "the stuck posting to start",
    )
    .await;
    let next: i64 = c
        .query_one(
            "SELECT herald.submit_job('stuck_posting', '{\"n\": 2}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_all_ended(&db, 60).await;
    let row = db
        .query_one(
            &format!(
                "SELECT b.started_at < a.finished_at, b.started_at >= a.started_at + interval '1 second'
                   FROM herald.job a, herald.job b WHERE a.id = {stuck} AND b.id = {next}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the next posting started beside the stuck one"
    );
    assert!(row.get::<_, bool>(1), "but only after the wait timeout");
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM herald.event WHERE queue = 'alerts' AND action = 'WAIT_TIMEOUT'
                    AND (details->>'job')::bigint = {stuck}"
            )
        )
        .await,
        1,
        "exactly one WAIT_TIMEOUT alert"
    );
}

/// Which coordinator runs `job`, once it runs.
async fn node_running(db: &Client, job: i64) -> String {
    wait_for(
        db,
        &format!("SELECT state = 'STARTED' FROM herald.job WHERE id = {job}"),
        20,
        "the job to start",
    )
    .await;
    db.query_one(
        &format!("SELECT node FROM herald.job WHERE id = {job}"),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_killed_coordinator_is_rescued_and_never_runs_twice_at_once() {
    let (env, db, mut nodes) = start(3).await;
    db.batch_execute(
        "SELECT herald.create_job_type('long_posting', 'post', max_attempts => 2, retry_delay => '0')",
    )
    .await
    .unwrap();
    let c = env.connect().await;
    let job: i64 = c
        .query_one(
            "SELECT herald.submit_job('long_posting', '{\"n\": 1, \"sleep\": 3}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let first = node_running(&db, job).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.iter_mut().find(|n| n.node == first).unwrap().kill9();
    wait_all_ended(&db, 60).await;
    let row = db
        .query_one(
            &format!("SELECT state, attempts, node, error FROM herald.job WHERE id = {job}"),
            &[],
        )
        .await
        .unwrap();
    let (state, attempts, node): (String, i32, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        state,
        "COMPLETED",
        "retried after its node died: {:?}",
        row.get::<_, Option<String>>(3)
    );
    assert_eq!(attempts, 2);
    assert_ne!(node, first, "another node ran the retry");
    // The retry's posting found no other run of it holding the lock, and only the retry's
    // work committed.
    assert_eq!(count(&db, "SELECT count(*) FROM runs").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_coordinator_keeps_its_job_and_finishes_it() {
    let (env, db, nodes) = start(3).await;
    db.batch_execute(
        "SELECT herald.create_job_type('slow_posting', 'post', max_attempts => 3, retry_delay => '0')",
    )
    .await
    .unwrap();
    let c = env.connect().await;
    let job: i64 = c
        .query_one(
            "SELECT herald.submit_job('slow_posting', '{\"n\": 1, \"sleep\": 6}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let runner = node_running(&db, job).await;
    let paused = nodes.iter().find(|n| n.node == runner).unwrap();
    paused.pause();
    // Other managers rescue every second; the paused node holds its claim all along.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during: (String, i32) = {
        let r = db
            .query_one(
                &format!("SELECT state, attempts FROM herald.job WHERE id = {job}"),
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    paused.resume();
    assert_eq!(
        during,
        ("STARTED".to_string(), 1),
        "a slow job is never declared dead and run again"
    );
    wait_all_ended(&db, 60).await;
    let r = db
        .query_one(
            &format!("SELECT state, attempts, node FROM herald.job WHERE id = {job}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "COMPLETED");
    assert_eq!(r.get::<_, i32>(1), 1);
    assert_eq!(r.get::<_, String>(2), runner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_jobs_run_without_a_shell_and_record_their_outcome() {
    let (env, db, _nodes) = start(2).await;
    db.batch_execute(
        "CREATE TABLE callouts (job bigint, action text, details jsonb);
         CREATE FUNCTION record_callout(e herald.event) RETURNS void LANGUAGE sql AS $$
             INSERT INTO callouts VALUES ((e.details->>'job')::bigint, e.action, e.details) $$;
         INSERT INTO herald.event_queue (name, event_run) VALUES ('callouts', 1);
         SELECT herald.add_system_listener('record_callout', 'CALLOUT', 'callouts');
         SELECT herald.create_job_type('echo', '/bin/echo', runner => 'command', newthread => true);
         SELECT herald.create_job_type('fails', '/bin/sh', runner => 'command', newthread => true);",
    )
    .await
    .unwrap();
    let c = env.connect().await;
    // An argument that a shell would expand, split or run: passed as it is.
    let echo: i64 = c
        .query_one(
            r#"SELECT herald.submit_job('echo', '{"args": ["total $HOME; rm -rf /tmp/x", "*"]}')"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let fails: i64 = c
        .query_one(
            r#"SELECT herald.submit_job('fails', '{"args": ["-c", "echo broken >&2; exit 3"]}')"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_all_ended(&db, 60).await;
    let ok = db
        .query_one(
            &format!(
                "SELECT state, result->>'stdout', (result->>'exit_code')::int,
                        (result->>'duration_ms') IS NOT NULL
                   FROM herald.job WHERE id = {echo}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ok.get::<_, String>(0), "COMPLETED");
    assert_eq!(
        ok.get::<_, String>(1),
        "total $HOME; rm -rf /tmp/x *\n",
        "the arguments reached the program untouched by any shell"
    );
    assert_eq!(ok.get::<_, i32>(2), 0);
    assert!(ok.get::<_, bool>(3), "the duration is recorded");
    let bad = db
        .query_one(
            &format!("SELECT state, error FROM herald.job WHERE id = {fails}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(bad.get::<_, String>(0), "STARTERROR");
    let error: String = bad.get(1);
    assert!(
        error.contains("exited with code 3") && error.contains("broken"),
        "the exit code and the stderr tail are the job's error: {error}"
    );
    // CALLOUT begin and end for each, delivered through the queue's listener.
    wait_for(
        &db,
        "SELECT count(*) = 4 FROM callouts",
        30,
        "four CALLOUT events",
    )
    .await;
    let end = db
        .query_one(
            &format!(
                "SELECT (details->>'exit_code')::int, (details->>'ok')::boolean
                   FROM callouts WHERE job = {fails} AND action = 'end'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(end.get::<_, i32>(0), 3);
    assert!(!end.get::<_, bool>(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_roll_back_a_submit_fail_a_completion_and_compensate_an_abort() {
    let (env, db, _nodes) = start(3).await;
    db.batch_execute(
        "CREATE TABLE hook_log (job bigint, hook text, ok boolean);
         CREATE FUNCTION refuse_creation(job bigint, p jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             IF p->>'refuse' = 'yes' THEN RAISE EXCEPTION 'no postings on Sundays'; END IF;
             INSERT INTO hook_log VALUES (job, 'after_creation', true);
         END $$;
         CREATE FUNCTION check_completion(job bigint, p jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             IF p->>'unbalanced' = 'yes' THEN RAISE EXCEPTION 'the ledger does not balance'; END IF;
         END $$;
         CREATE FUNCTION after_done(job bigint, p jsonb, ok boolean) RETURNS void LANGUAGE sql AS $$
             INSERT INTO hook_log VALUES (job, 'after_completion', ok) $$;
         CREATE FUNCTION undo(job bigint, p jsonb) RETURNS void LANGUAGE sql AS $$
             INSERT INTO hook_log VALUES (job, 'compensate', true) $$;
         SELECT herald.create_job_type('hooked', 'report', after_creation => 'refuse_creation',
                before_completion => 'check_completion', after_completion => 'after_done',
                compensate => 'undo', newthread => true, startnow => true);",
    )
    .await
    .unwrap();
    let c = env.connect().await;
    let submit = |params: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT herald.submit_job('hooked', $1::text::jsonb)",
                &[&params],
            )
            .await
        }
    };
    // after_creation fails: the submit fails with the hook's error and leaves nothing.
    let refused = submit(r#"{"n": 1, "refuse": "yes"}"#).await.unwrap_err();
    let message = refused.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("no postings on Sundays")),
        "{refused:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM herald.job").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM hook_log").await, 0);

    let good: i64 = submit(r#"{"n": 2}"#).await.unwrap().get(0);
    let unbalanced: i64 = submit(r#"{"n": 3, "unbalanced": "yes"}"#)
        .await
        .unwrap()
        .get(0);
    let long: i64 = submit(r#"{"n": 4, "sleep": 30}"#).await.unwrap().get(0);
    wait_for(
        &db,
        &format!("SELECT state = 'STARTED' FROM herald.job WHERE id = {long}"),
        20,
        "the long job to start",
    )
    .await;
    c.execute("SELECT herald.abort_job($1, 'wrong period')", &[&long])
        .await
        .unwrap();
    wait_all_ended(&db, 60).await;

    let state = |id: i64| {
        let db = &db;
        async move {
            let r = db
                .query_one(
                    &format!("SELECT state, coalesce(error, '') FROM herald.job WHERE id = {id}"),
                    &[],
                )
                .await
                .unwrap();
            (r.get::<_, String>(0), r.get::<_, String>(1))
        }
    };
    assert_eq!(state(good).await.0, "COMPLETED");
    let (s, error) = state(unbalanced).await;
    assert_eq!(s, "FINISHERROR");
    assert!(error.contains("the ledger does not balance"), "{error}");
    let (s, error) = state(long).await;
    assert_eq!(s, "ABORTED");
    assert!(error.contains("wrong period"), "{error}");
    let log = |id: i64| {
        let db = &db;
        async move {
            db.query(
                &format!("SELECT hook || ':' || ok FROM hook_log WHERE job = {id} ORDER BY hook"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        log(good).await,
        ["after_completion:true", "after_creation:true"]
    );
    assert_eq!(
        log(unbalanced).await,
        ["after_completion:false", "after_creation:true"]
    );
    assert_eq!(log(long).await, ["after_creation:true", "compensate:true"]);
    // The aborted run's work was cancelled and rolled back.
    assert_eq!(
        count(&db, "SELECT count(*) FROM runs WHERE n = 4").await,
        0,
        "the aborted run left no work behind"
    );
}
