//! Resource locks end to end (issue #13), with many sessions at once: strict FIFO, a shared
//! limit never exceeded (checked from inside the holders), deadlocks refused, a crashed
//! holder's lease expiring once, a stalled holder fenced off, restarts, and a release
//! racing an enqueue.
use herald_tests::*;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const SETUP: &str = r#"
SELECT herald.resource('printer');
SELECT herald.resource('ledger', 'shared', 3);
SELECT herald.resource('disk');
CREATE TABLE granted (n serial, who text);
CREATE TABLE lock_events (action text, source text, details jsonb);
CREATE FUNCTION on_lock(e herald.event) RETURNS void LANGUAGE sql AS
  $$ INSERT INTO lock_events VALUES (e.action, e.source, e.details) $$;
SELECT herald.add_system_listener('on_lock', 'LOCK', sync => true);
"#;

async fn acquire(c: &Client, resource: &str, holder: &str, count: i32, wait: &str) -> Option<i64> {
    c.query_one(
        "SELECT herald.lock_acquire($1, $2, $3, wait => $4::text::interval)",
        &[&resource, &holder, &count, &wait],
    )
    .await
    .unwrap()
    .get(0)
}

async fn release(c: &Client, resource: &str, holder: &str, token: i64) {
    c.execute(
        "SELECT herald.lock_release($1, $2, $3)",
        &[&resource, &holder, &token],
    )
    .await
    .unwrap();
}

async fn waiters(c: &Client, resource: &str) -> i64 {
    count(
        c,
        &format!(
            "SELECT count(*) FROM herald.locks WHERE resource = '{resource}' AND role = 'waiter'"
        ),
    )
    .await
}

async fn wait_waiters(c: &Client, resource: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiters(c, resource).await != n {
        assert!(Instant::now() < deadline, "{n} waiters on {resource}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 20 sessions queue on one exclusive resource, one after the other; each is granted in
/// its turn, strictly in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_waiters_are_granted_strictly_in_arrival_order() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let first = acquire(&db, "printer", "first", 1, "0").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = env.url();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let who = format!("w{i:02}");
            let t = acquire(&c, "printer", &who, 1, "60 s")
                .await
                .expect("granted");
            c.execute("INSERT INTO granted (who) VALUES ($1)", &[&who])
                .await
                .unwrap();
            release(&c, "printer", &who, t).await;
        }));
        // The next one arrives once this one waits.
        wait_waiters(&db, "printer", i + 1).await;
    }
    let order: Vec<String> = db
        .query(
            "SELECT holder FROM herald.locks WHERE resource = 'printer' AND role = 'waiter' ORDER BY position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("w{i:02}")).collect();
    assert_eq!(order, expected, "the view shows the waiters in order");
    release(&db, "printer", "first", first).await;
    for t in tasks {
        t.await.unwrap();
    }
    let granted: Vec<String> = db
        .query("SELECT who FROM granted ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(granted, expected);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM lock_events WHERE action = 'ACQUIRED'"
        )
        .await,
        21
    );
    assert_eq!(
        waiters(&db, "ledger").await + waiters(&db, "printer").await,
        0
    );
}

/// A shared resource with limit 3 under 8 sessions that take it again and again: inside
/// the holders, never more than 3 at once; raising the limit at run time lets more in,
/// lowering it lets none in until the holders are below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_holds_at_every_instant_and_can_change_at_run_time() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute(
        "CREATE TABLE inside (n int NOT NULL, max int NOT NULL);
         INSERT INTO inside VALUES (0, 0);",
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = env.url();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let who = format!("s{i}");
            for _ in 0..15 {
                let t = acquire(&c, "ledger", &who, 1, "60 s")
                    .await
                    .expect("granted");
                // In the protected section: count ourselves in, check, count out.
                let n: i32 = c
                    .query_one(
                        "UPDATE inside SET n = n + 1, max = greatest(max, n + 1) RETURNING n",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(n <= 3, "{n} holders inside a resource of limit 3");
                assert!(c
                    .query_one("SELECT herald.lock_check('ledger', $1)", &[&t])
                    .await
                    .unwrap()
                    .get::<_, bool>(0));
                tokio::time::sleep(Duration::from_millis(3)).await;
                c.execute("UPDATE inside SET n = n - 1", &[]).await.unwrap();
                release(&c, "ledger", &who, t).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let max: i32 = db
        .query_one("SELECT max FROM inside", &[])
        .await
        .unwrap()
        .get(0);
    assert!((2..=3).contains(&max), "shared: up to 3 at once, saw {max}");
    // Three hold; two wait.
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            acquire(&db, "ledger", &format!("h{i}"), 1, "0")
                .await
                .unwrap(),
        );
    }
    let mut waiting = Vec::new();
    for i in 0..2 {
        let url = env.url();
        waiting.push(tokio::spawn(async move {
            let c = connect(&url).await;
            acquire(&c, "ledger", &format!("x{i}"), 1, "60 s").await
        }));
        wait_waiters(&db, "ledger", i + 1).await;
    }
    // An operator raises the limit: both are let in at once, nobody released anything.
    db.batch_execute("UPDATE herald.resource SET lock_limit = 5 WHERE name = 'ledger'")
        .await
        .unwrap();
    for w in waiting {
        assert!(w.await.unwrap().is_some());
    }
    // Lowered to 2 with 5 holding: nothing new until fewer than 2 hold.
    db.batch_execute("UPDATE herald.resource SET lock_limit = 2 WHERE name = 'ledger'")
        .await
        .unwrap();
    assert_eq!(acquire(&db, "ledger", "late", 1, "0").await, None);
    for (i, t) in held.into_iter().enumerate() {
        release(&db, "ledger", &format!("h{i}"), t).await;
    }
    assert_eq!(
        acquire(&db, "ledger", "late", 1, "0").await,
        None,
        "2 still hold"
    );
}

/// Two holders each wait for the other's lock: the request that closes the cycle is
/// refused with an error naming it; the other goes on once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_between_two_holders_is_refused_when_it_would_form() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let b = connect(&env.url()).await;
    let a_printer = acquire(&db, "printer", "A", 1, "0").await.unwrap();
    let b_disk = acquire(&b, "disk", "B", 1, "0").await.unwrap();
    let url = env.url();
    let a_waits = tokio::spawn(async move {
        let a = connect(&url).await;
        acquire(&a, "disk", "A", 1, "60 s").await
    });
    wait_waiters(&db, "disk", 1).await;
    // `herald status` shows both holders and the waiter in its place.
    let out = std::process::Command::new(herald_bin())
        .args(["status", "--database-url", &env.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = |needle: &[&str]| text.lines().any(|l| needle.iter().all(|n| l.contains(n)));
    assert!(
        line(&["printer", "holder", "A", &a_printer.to_string()]),
        "{text}"
    );
    assert!(
        line(&["disk", "holder", "B", &b_disk.to_string()]),
        "{text}"
    );
    assert!(line(&["disk", "waiter", "A", "#1", "waits"]), "{text}");
    let refused = b
        .query_one(
            "SELECT herald.lock_acquire('printer', 'B', wait => '60 s')",
            &[],
        )
        .await
        .unwrap_err();
    let db_error = refused.as_db_error().expect("an SQL error");
    assert_eq!(
        db_error.code(),
        &tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    );
    let message = db_error.message();
    assert!(
        message.contains("B waits for printer held by A")
            && message.contains("A waits for disk held by B"),
        "{message}"
    );
    assert_eq!(
        waiters(&db, "printer").await,
        0,
        "the refused request left no trace"
    );
    release(&b, "disk", "B", b_disk).await;
    assert!(a_waits.await.unwrap().is_some());
    release(&db, "printer", "A", a_printer).await;
}

/// A holder whose backend is killed (kill -9: the server restarts every session) keeps
/// its grant in the table; its lease then expires exactly once and the next waiter is
/// granted within a second of it. The same with an immediate stop of the server while
/// locks are held and requests queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_loses_its_lock_when_its_lease_expires_once() {
    let (mut env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let holder = connect(&env.url()).await;
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let token: i64 = holder
        .query_one(
            "SELECT herald.lock_acquire('printer', 'crashing', lease => '3 s')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let url = env.url();
    let queued = tokio::spawn(async move {
        let c = connect(&url).await;
        c.query_one(
            "SELECT herald.lock_acquire('printer', 'queued', wait => '60 s')",
            &[],
        )
        .await
    });
    wait_waiters(&db, "printer", 1).await;
    // kill -9 of the holder's backend: PostgreSQL restarts every session.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        queued.await.unwrap().is_err(),
        "the waiting session died with the server's restart"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let db = loop {
        if let Ok(c) = tokio_postgres::connect(&env.url(), tokio_postgres::NoTls).await {
            tokio::spawn(c.1);
            if c.0.simple_query("SELECT 1").await.is_ok() {
                break c.0;
            }
        }
        assert!(Instant::now() < deadline, "the server is back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.locks WHERE role = 'holder' AND holder = 'crashing'"
        )
        .await,
        1,
        "the grant survived the crash"
    );
    assert_eq!(
        waiters(&db, "printer").await,
        0,
        "the dead waiter left the queue"
    );
    // Two new waiters: the first is granted once the lease passes, once.
    let expires: f64 = db
        .query_one(
            "SELECT extract(epoch FROM expires_at)::float8 FROM herald.lock_holder WHERE token = $1",
            &[&token],
        )
        .await
        .unwrap()
        .get(0);
    let mut next = Vec::new();
    for who in ["next", "after"] {
        let url = env.url();
        next.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let t = acquire(&c, "printer", who, 1, "60 s").await.unwrap();
            let at: f64 = c
                .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
                .await
                .unwrap()
                .get(0);
            release(&c, "printer", who, t).await;
            at
        }));
        wait_waiters(&db, "printer", if who == "next" { 1 } else { 2 }).await;
    }
    let granted_at = next.remove(0).await.unwrap();
    next.remove(0).await.unwrap();
    assert!(
        granted_at >= expires && granted_at - expires < 1.0,
        "granted {:.3} s after the lease passed",
        granted_at - expires
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM lock_events WHERE action = 'EXPIRED' AND (details->>'token')::bigint = {token}")).await,
        1,
        "expired exactly once"
    );
    // An immediate stop with a lock held and a request queued.
    let held = acquire(&db, "disk", "survivor", 1, "0").await.unwrap();
    let url = env.url();
    let queued = tokio::spawn(async move {
        let c = connect(&url).await;
        c.query_one(
            "SELECT herald.lock_acquire('disk', 'gone', wait => '60 s')",
            &[],
        )
        .await
    });
    wait_waiters(&db, "disk", 1).await;
    env.cluster.stop_immediate().unwrap();
    assert!(queued.await.unwrap().is_err());
    env.cluster.start_server().unwrap();
    let db = connect(&env.url()).await;
    assert!(db
        .query_one("SELECT herald.lock_check('disk', $1)", &[&held])
        .await
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(waiters(&db, "disk").await, 0);
    assert_eq!(
        acquire(&db, "disk", "other", 1, "0").await,
        None,
        "still held"
    );
    release(&db, "disk", "survivor", held).await;
    assert!(acquire(&db, "disk", "other", 1, "0").await.is_some());
}

/// A holder that stalls past its lease is fenced off: its protected write, guarded by
/// lock_check, is refused once the lease has passed and the next holder has the lock. A
/// renewal that fails (rolled back) while the holder is alive changes nothing: a second
/// release is refused and the resource never has two holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_holder_is_fenced_off_and_a_failed_renewal_changes_nothing() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute("CREATE TABLE ledger_rows (token bigint, written_by text)")
        .await
        .unwrap();
    let slow = connect(&env.url()).await;
    let t1: i64 = slow
        .query_one(
            "SELECT herald.lock_acquire('printer', 'slow', lease => '1 s')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A renewal whose transaction fails: as if it never happened.
    slow.batch_execute(&format!(
        "BEGIN; SELECT herald.lock_renew('printer', 'slow', {t1}, '1 hour'); ROLLBACK;"
    ))
    .await
    .unwrap();
    let url = env.url();
    let fast = tokio::spawn(async move {
        let c = connect(&url).await;
        let t2 = acquire(&c, "printer", "fast", 1, "30 s").await.unwrap();
        let wrote = c
            .execute(
                "INSERT INTO ledger_rows SELECT $1, 'fast' WHERE herald.lock_check('printer', $1)",
                &[&t2],
            )
            .await
            .unwrap();
        (t2, wrote)
    });
    // The slow holder stalls past its lease, then tries its write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (t2, fast_wrote) = fast.await.unwrap();
    assert!(t2 > t1);
    assert_eq!(fast_wrote, 1);
    let slow_wrote = slow
        .execute(
            "INSERT INTO ledger_rows SELECT $1, 'slow' WHERE herald.lock_check('printer', $1)",
            &[&t1],
        )
        .await
        .unwrap();
    assert_eq!(slow_wrote, 0, "the stale token's write is refused");
    let late = slow
        .execute("SELECT herald.lock_release('printer', 'slow', $1)", &[&t1])
        .await
        .unwrap_err();
    assert!(
        late.as_db_error()
            .unwrap()
            .message()
            .contains("no such grant"),
        "{late:?}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.lock_holder WHERE resource = 'printer'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM lock_events WHERE action = 'EXPIRED'"
        )
        .await,
        1
    );
}

/// A release that commits while a new request queues never strands the request: it is
/// granted (woken by the release, or seeing it when it looks), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_an_enqueue_never_strands_the_waiter() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let other = connect(&env.url()).await;
    for round in 0..200 {
        let t = acquire(&db, "printer", "holder", 1, "0").await.unwrap();
        let started = Instant::now();
        let (granted, ()) = tokio::join!(
            acquire(&other, "printer", "racer", 1, "10 s"),
            release(&db, "printer", "holder", t)
        );
        let granted = granted.unwrap_or_else(|| panic!("round {round}: the waiter was stranded"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: granted only after {:?}",
            started.elapsed()
        );
        release(&other, "printer", "racer", granted).await;
    }
}

/// A waiting session that is terminated, or whose wait is cancelled, leaves the queue at
/// once: the one behind it is granted with the next release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_or_cancelled_waiter_leaves_the_queue() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let t = acquire(&db, "printer", "holder", 1, "0").await.unwrap();
    let gone = connect(&env.url()).await;
    let gone_pid: i32 = gone
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let cancelled = connect(&env.url()).await;
    let cancel_token = cancelled.cancel_token();
    let g = tokio::spawn(async move {
        gone.query_one(
            "SELECT herald.lock_acquire('printer', 'gone', wait => '60 s')",
            &[],
        )
        .await
    });
    wait_waiters(&db, "printer", 1).await;
    let c = tokio::spawn(async move {
        cancelled
            .query_one(
                "SELECT herald.lock_acquire('printer', 'cancelled', wait => '60 s')",
                &[],
            )
            .await
    });
    wait_waiters(&db, "printer", 2).await;
    let url = env.url();
    let last = tokio::spawn(async move {
        let c = connect(&url).await;
        acquire(&c, "printer", "last", 1, "60 s").await
    });
    wait_waiters(&db, "printer", 3).await;
    db.execute("SELECT pg_terminate_backend($1)", &[&gone_pid])
        .await
        .unwrap();
    cancel_token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    assert!(g.await.unwrap().is_err());
    let e = c.await.unwrap().unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().code(),
        &tokio_postgres::error::SqlState::QUERY_CANCELED
    );
    wait_waiters(&db, "printer", 1).await;
    let started = Instant::now();
    release(&db, "printer", "holder", t).await;
    assert!(last.await.unwrap().is_some());
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A lapsed lease that nobody waits for is expired by a coordinator within about a second
/// (LOCK/EXPIRED once), so the view stops showing a holder that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_expires_a_lapsed_lease_nobody_waits_for() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let mut node = env.coordinator("expirer");
    let token: i64 = db
        .query_one(
            "SELECT herald.lock_acquire('printer', 'forgetful', lease => '1 s')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_for(
        &db,
        &format!(
            "SELECT NOT EXISTS (SELECT FROM herald.lock_holder WHERE token = {token})
                AND EXISTS (SELECT FROM lock_events WHERE action = 'EXPIRED')"
        ),
        10,
        "the coordinator expired the lease",
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM lock_events WHERE action = 'EXPIRED'"
        )
        .await,
        1
    );
    assert!(
        !env.log_of("expirer").contains("resource locks:"),
        "{}",
        env.log_of("expirer")
    );
    assert!(node.terminate().success());
}

/// Job types whose jobs declare resources: `print` holds the printer, `post` one of the
/// ledger's 3; each run checks from the inside that no run it must not overlap with runs
/// (a try-lock per printer, one per ledger slot) and records when it ran.
const JOB_SETUP: &str = r#"
CREATE TABLE runs (kind text, job bigint, node text, started timestamptz, ended timestamptz);
CREATE FUNCTION print_run(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    IF NOT pg_try_advisory_xact_lock(77, 0) THEN
        RAISE EXCEPTION 'another print job holds the printer';
    END IF;
    PERFORM pg_sleep(coalesce((p->>'sleep')::float8, 0.02));
    INSERT INTO runs VALUES ('print', (p->>'job')::bigint,
                             substr(current_setting('application_name'), 8), t0, clock_timestamp());
END $$;
CREATE FUNCTION post_run(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    IF NOT (pg_try_advisory_xact_lock(78, 1) OR pg_try_advisory_xact_lock(78, 2)
            OR pg_try_advisory_xact_lock(78, 3)) THEN
        RAISE EXCEPTION 'more than three postings hold the ledger';
    END IF;
    PERFORM pg_sleep(0.02);
    INSERT INTO runs VALUES ('post', NULL, substr(current_setting('application_name'), 8),
                             t0, clock_timestamp());
END $$;
SELECT herald.create_job_type('print', 'print_run', newthread => true,
                              resources => '{"printer": 1}');
SELECT herald.create_job_type('post', 'post_run', newthread => true,
                              resources => '{"ledger": 1}');
"#;

/// Jobs that declare resources, run by three coordinators: 40 print jobs never overlap,
/// 40 postings never exceed the ledger's limit of 3 (both checked from inside the runs and
/// from their recorded times), every job completes, and nothing is left held or queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_declare_resources_never_overlap() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute(JOB_SETUP).await.unwrap();
    let mut nodes: Vec<Coordinator> = (0..3)
        .map(|i| env.coordinator(&format!("node{i}")))
        .collect();
    let mut tasks = Vec::new();
    for s in 0..4 {
        let url = env.url();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            for _ in 0..10 {
                for t in ["print", "post"] {
                    c.execute("SELECT herald.submit_job($1)", &[&t])
                        .await
                        .unwrap_or_else(|e| panic!("submit in session {s}: {e}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for(
        &db,
        "SELECT count(*) = 0 FROM herald.job WHERE state IN ('CREATED', 'STARTED', 'FINISHED')",
        120,
        "every job to end",
    )
    .await;
    let failed: Vec<String> = db
        .query(
            "SELECT id || ' ' || state || ': ' || coalesce(error, '') FROM herald.job
              WHERE state <> 'COMPLETED'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(failed.is_empty(), "jobs that did not complete: {failed:?}");
    // The most runs of a kind running at one instant (the start of one of them).
    let overlap = |kind: &str| {
        format!(
            "SELECT coalesce(max(c), 0)::int8 FROM (
                 SELECT (SELECT count(*) FROM runs b WHERE b.kind = '{kind}'
                          AND b.started <= a.started AND a.started < b.ended) AS c
                   FROM runs a WHERE a.kind = '{kind}') x"
        )
    };
    assert_eq!(count(&db, "SELECT count(*) FROM runs").await, 80);
    // (They did contend: jobs waited in line for the printer.)
    assert!(
        count(
            &db,
            "SELECT count(*) FROM lock_events WHERE action = 'WAITING' AND source = 'printer'
                AND details->>'job' IS NOT NULL"
        )
        .await
            > 0
    );
    assert_eq!(
        count(&db, &overlap("print")).await,
        1,
        "print jobs overlapped"
    );
    assert!(
        count(&db, &overlap("post")).await <= 3,
        "more than 3 postings at once"
    );
    assert_eq!(
        count(
            &db,
            "SELECT (SELECT count(*) FROM herald.lock_holder) + (SELECT count(*) FROM herald.lock_request)"
        )
        .await,
        0,
        "nothing left held or queued"
    );
    for n in &mut nodes {
        assert!(n.terminate().success());
    }
}

/// A coordinator running a job that holds the printer is killed (`kill -9`): the job is
/// rescued when its lost claim is found, which gives the printer back, and the job that
/// waited in line for it is let in and completes. The printer is never left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_running_a_job_does_not_keep_its_resources() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute(JOB_SETUP).await.unwrap();
    let mut nodes: Vec<Coordinator> = (0..2)
        .map(|i| env.coordinator(&format!("node{i}")))
        .collect();
    let first: i64 = db
        .query_one("SELECT herald.submit_job('print', '{\"sleep\": 3}')", &[])
        .await
        .unwrap()
        .get(0);
    wait_for(
        &db,
        &format!("SELECT state = 'STARTED' FROM herald.job WHERE id = {first}"),
        20,
        "the first print job to start",
    )
    .await;
    let second: i64 = db
        .query_one("SELECT herald.submit_job('print')", &[])
        .await
        .unwrap()
        .get(0);
    // The second waits in line for the printer, shown as the job's waiter.
    wait_for(
        &db,
        &format!(
            "SELECT EXISTS (SELECT FROM herald.locks WHERE resource = 'printer'
                              AND role = 'waiter' AND holder = 'job {second}')"
        ),
        20,
        "the second job to wait for the printer",
    )
    .await;
    let node: String = db
        .query_one(
            &format!("SELECT node FROM herald.job WHERE id = {first}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    nodes.iter_mut().find(|n| n.node == node).unwrap().kill9();
    wait_for(
        &db,
        &format!("SELECT state = 'COMPLETED' FROM herald.job WHERE id = {second}"),
        60,
        "the waiting job to get the printer and complete",
    )
    .await;
    let row = db
        .query_one(
            &format!("SELECT state, coalesce(error, '') FROM herald.job WHERE id = {first}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "STARTERROR",
        "{}",
        row.get::<_, String>(1)
    );
    // Only the second job's run committed (the killed run's work rolled back with it).
    assert_eq!(count(&db, "SELECT count(*) FROM runs").await, 1);
    assert_eq!(
        count(
            &db,
            "SELECT (SELECT count(*) FROM herald.lock_holder) + (SELECT count(*) FROM herald.lock_request)"
        )
        .await,
        0,
        "the printer is not left held"
    );
    let released: i64 = count(
        &db,
        &format!(
            "SELECT count(*) FROM lock_events WHERE action = 'RELEASED'
                AND (details->>'job')::bigint = {first}"
        ),
    )
    .await;
    assert_eq!(released, 1, "the rescued job gave the printer back once");
    for n in &mut nodes {
        if n.node != node {
            assert!(n.terminate().success());
        }
    }
}
