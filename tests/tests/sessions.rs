//! Session listeners across real sessions: waking on commit, cancellation, timeouts, and
//! clean-up when the owning session ends in every way a session can end (disconnect,
//! pg_terminate_backend, a client killed with kill -9 while idle or while waiting, a crashed
//! backend).
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::*;
use tokio_postgres::Client;

async fn pid_of(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn register(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Everything a session listener leaves behind: listener rows, session rows, unread events.
async fn leftovers(db: &Client, listener: i64) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM herald.listener WHERE id = $1),
                    (SELECT count(*) FROM herald.session),
                    (SELECT count(*) FROM herald.session_event WHERE listener = $1)",
            &[&listener],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn wait_until_gone(db: &Client, listener: i64, what: &str) {
    wait_for(
        db,
        &format!(
            "SELECT NOT EXISTS (SELECT 1 FROM herald.listener WHERE id = {listener})
                AND NOT EXISTS (SELECT 1 FROM herald.session_event WHERE listener = {listener})"
        ),
        30,
        what,
    )
    .await;
}

/// Wait until the backend `pid` sleeps inside herald.next_event.
async fn wait_until_waiting(db: &Client, pid: i32) {
    wait_for(
        db,
        &format!(
            "SELECT state = 'active' AND wait_event_type = 'Extension'
               FROM pg_stat_activity WHERE pid = {pid}"
        ),
        30,
        "the session to wait in next_event",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_session_is_woken_by_another_sessions_commit() {
    let (env, db) = Env::start_with("").await;
    let reader = env.connect().await;
    let id = register(
        &reader,
        "SELECT herald.add_event_listener('record', 'invoice')",
    )
    .await;
    let other = env.connect().await;
    let other_id = register(
        &other,
        "SELECT herald.add_event_listener('record', 'invoice')",
    )
    .await;
    let reader_pid = pid_of(&reader).await;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let row = reader
            .query_one(
                "SELECT e.id, e.action, e.listener FROM herald.next_event($1, '60 s') e",
                &[&id],
            )
            .await
            .unwrap();
        let got: (Option<i64>, Option<String>, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        (got, started.elapsed(), reader)
    });
    wait_until_waiting(&db, reader_pid).await;
    // an uncommitted event does not wake it; the commit does
    db.batch_execute("BEGIN; SELECT herald.emit('invoice', 'created'); SELECT pg_sleep(0.3);")
        .await
        .unwrap();
    assert!(
        !waiting.is_finished(),
        "woken before the producer committed"
    );
    db.batch_execute("COMMIT").await.unwrap();
    let ((event_id, action, listener), waited, reader) = waiting.await.unwrap();
    assert!(event_id.is_some(), "an event, not the timeout");
    assert_eq!(action.as_deref(), Some("created"));
    assert_eq!(listener, Some(id));
    assert!(
        waited < Duration::from_secs(30),
        "woken by the commit, not by the 60 s timeout ({waited:?})"
    );
    // the handler ran, in the reader's transaction
    assert_eq!(count(&db, "SELECT count(*) FROM handled").await, 1);
    // the other session got its own copy, still unread
    assert_eq!(leftovers(&db, other_id).await.2, 1);
    let row = other
        .query_one(
            "SELECT (herald.next_event($1, '0', false)).action",
            &[&other_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("created"));
    // nothing more: NULL after the timeout
    let row = reader
        .query_one("SELECT herald.next_event($1, '100 ms') IS NULL", &[&id])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_event_can_be_cancelled_and_the_listener_lives_on() {
    let (env, db) = Env::start_with("").await;
    let reader = env.connect().await;
    let id = register(
        &reader,
        "SELECT herald.add_event_listener('record', 'invoice')",
    )
    .await;
    let pid = pid_of(&reader).await;
    let waiting = tokio::spawn(async move {
        let r = reader
            .query_one("SELECT herald.next_event($1)", &[&id])
            .await;
        (r.map(|_| ()), reader)
    });
    wait_until_waiting(&db, pid).await;
    db.execute("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap();
    let (result, reader) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("cancel ends the wait")
        .unwrap();
    let err = result.expect_err("a cancelled wait is an error");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    // the session and its listener are still there and work
    db.batch_execute("SELECT herald.emit('invoice', 'after cancel')")
        .await
        .unwrap();
    let row = reader
        .query_one("SELECT (herald.next_event($1, '10 s')).action", &[&id])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("after cancel")
    );
    // statement_timeout ends a wait the same way
    reader
        .batch_execute("SET statement_timeout = '200ms'")
        .await
        .unwrap();
    let err = reader
        .query_one("SELECT herald.next_event($1)", &[&id])
        .await
        .expect_err("statement_timeout");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_refused_in_repeatable_read_but_looking_is_not() {
    let (env, _db) = Env::start_with("").await;
    let mut reader = env.connect().await;
    let id = register(
        &reader,
        "SELECT herald.add_event_listener('record', 'invoice')",
    )
    .await;
    let tx = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    let row = tx
        .query_one("SELECT herald.next_event($1, '0') IS NULL", &[&id])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let err = tx
        .query_one("SELECT herald.next_event($1, '1 s')", &[&id])
        .await
        .expect_err("waiting under REPEATABLE READ");
    assert!(
        err.to_string().contains("REPEATABLE READ")
            || format!("{err:?}").contains("REPEATABLE READ"),
        "{err:?}"
    );
}

/// Events for a session listener pile up; then the session ends. Listeners, unread events,
/// the session row and the capture trigger all go.
async fn ends_cleanly(end: &str) {
    let (env, db) = Env::start_with("CREATE TABLE t (id int PRIMARY KEY, qty int);").await;
    let reader = env.connect().await;
    let events = register(
        &reader,
        "SELECT herald.add_event_listener('record', 'invoice')",
    )
    .await;
    let data = register(&reader, "SELECT herald.add_data_listener('t', 'record')").await;
    let pid = pid_of(&reader).await;
    db.batch_execute(
        "SELECT herald.emit('invoice', 'created');
         INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    assert_eq!(leftovers(&db, events).await, (1, 1, 1));
    assert_eq!(leftovers(&db, data).await, (1, 1, 100));
    match end {
        "disconnect" => drop(reader),
        "terminate" => {
            db.execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
        }
        _ => unreachable!(),
    }
    wait_until_gone(&db, events, "the event listener to go with its session").await;
    wait_until_gone(&db, data, "the data listener to go with its session").await;
    assert_eq!(count(&db, "SELECT count(*) FROM herald.session").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM herald.session_event").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND NOT tgisinternal"
        )
        .await,
        0,
        "the capture trigger goes with the last listener"
    );
    // and writes go on without anyone listening
    db.batch_execute("INSERT INTO t VALUES (1000, 1)")
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM herald.session_event").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnecting_session_takes_its_listeners_and_events_with_it() {
    ends_cleanly("disconnect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_takes_its_listeners_and_events_with_it() {
    ends_cleanly("terminate").await;
}

/// A psql process connected to the cluster, fed through its standard input.
struct Psql {
    child: Child,
}

impl Psql {
    fn start(url: &str) -> Psql {
        let bindir = find_bindir().expect("PostgreSQL binaries");
        let child = Command::new(bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql");
        Psql { child }
    }

    fn send(&mut self, sql: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn kill9(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_with_kill_9_leaves_nothing_behind() {
    let (env, db) = Env::start_with("").await;
    // one client idle after registering, one blocked in next_event without a timeout
    let mut idle = Psql::start(&env.url());
    idle.send(
        "SET application_name = 'idle';
         SELECT herald.add_event_listener('record', 'invoice');\n",
    );
    let mut waiting = Psql::start(&env.url());
    waiting.send(
        "SET application_name = 'waiting';
         SELECT herald.add_event_listener('record', 'order') AS id \\gset
         SELECT herald.next_event(:id);\n",
    );
    wait_for(
        &db,
        "SELECT count(*) = 2 FROM herald.listener WHERE delivery = 'session'",
        30,
        "both psql sessions to register",
    )
    .await;
    let waiting_pid: i32 = db
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'waiting'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_until_waiting(&db, waiting_pid).await;
    db.batch_execute("SELECT herald.emit('invoice', 'unread')")
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM herald.session_event").await,
        1
    );
    idle.kill9();
    waiting.kill9();
    wait_for(
        &db,
        "SELECT NOT EXISTS (SELECT 1 FROM herald.listener)
            AND NOT EXISTS (SELECT 1 FROM herald.session)
            AND NOT EXISTS (SELECT 1 FROM herald.session_event)",
        30,
        "the killed clients' listeners, sessions and events to disappear",
    )
    .await;
    // the backend that was waiting is gone too, not left sleeping
    wait_for(
        &db,
        &format!("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {waiting_pid})"),
        30,
        "the waiting backend to notice its client is gone",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_backend_crash_dead_listeners_get_nothing_and_are_removed() {
    let (env, db) = Env::start_with("CREATE TABLE t (id int PRIMARY KEY);").await;
    let reader = env.connect().await;
    let id = register(&reader, "SELECT herald.add_data_listener('t', 'record')").await;
    let pid = pid_of(&reader).await;
    db.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    // kill -9 of a backend: the server resets every session and runs crash recovery
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(reader);
    // the reset reaches every other session, this one included
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.simple_query("SELECT 1").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the server resets after a backend crash"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(db);
    let db = loop {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&env.url(), tokio_postgres::NoTls).await
        {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            if client.simple_query("SELECT 1").await.is_ok() {
                break client;
            }
        }
        assert!(Instant::now() < deadline, "server back after the crash");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // the registration survived (herald.listener is logged) but its session did not
    assert_eq!(leftovers(&db, id).await, (1, 0, 0));
    db.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM herald.session_event").await,
        0,
        "no events for a dead session"
    );
    // the next registration removes the dead listener and its trigger
    register(
        &db,
        "SELECT herald.add_event_listener('record', 'x', sync => true)",
    )
    .await;
    assert_eq!(leftovers(&db, id).await, (0, 0, 0));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND NOT tgisinternal"
        )
        .await,
        0
    );
}
