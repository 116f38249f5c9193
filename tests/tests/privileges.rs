//! The documented privilege model (sql/examples/grants.sql) with non-superuser roles.
use herald_tests::*;

const GRANTS: &str = include_str!("../../sql/examples/grants.sql");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_superuser_setup_works_and_is_confined() {
    let (env, admin) = Env::start().await;
    admin
        .batch_execute(
            "CREATE ROLE herald_app LOGIN; CREATE ROLE herald_ops LOGIN; CREATE ROLE herald_coordinator LOGIN;
             CREATE ROLE other_app LOGIN;
             CREATE SCHEMA app AUTHORIZATION herald_app;",
        )
        .await
        .unwrap();
    admin
        .batch_execute(GRANTS)
        .await
        .expect("grants.sql applies");
    admin
        .batch_execute("GRANT USAGE ON SCHEMA herald TO other_app")
        .await
        .unwrap();
    let as_role = |role: &str| {
        format!(
            "{} user={role}",
            env.cluster.url("postgres").replace(" user=postgres", "")
        )
    };

    // operators create the queue
    let ops = connect(&as_role("herald_ops")).await;
    ops.batch_execute(
        "INSERT INTO herald.event_queue (name, event_run, listener_roles)
         VALUES ('app_queue', 1, '{herald_app}')",
    )
    .await
    .unwrap();

    // the application registers a handler of its own and emits
    let app = connect(&as_role("herald_app")).await;
    app.batch_execute(
        "CREATE TABLE app.seen (event_id bigint, handled_as text, source text);
         CREATE FUNCTION app.on_invoice(e herald.event) RETURNS void LANGUAGE sql AS
           $$ INSERT INTO app.seen VALUES (e.id, current_user, e.source) $$;
         SELECT herald.create_event_type('invoice');",
    )
    .await
    .unwrap();
    let listener: i64 = app
        .query_one(
            "SELECT herald.add_event_listener('app.on_invoice', 'invoice', queue => 'app_queue')",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // the coordinator runs with its own unprivileged login role
    let coord_url = as_role("herald_coordinator");
    let log = std::fs::File::create(env.cluster.dir.join("coord.log")).unwrap();
    let mut coord = std::process::Command::new(herald_bin())
        .args(["run", "--database-url", &coord_url, "--node", "c1"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    for _ in 0..20 {
        app.execute("SELECT herald.emit('invoice', 'created')", &[])
            .await
            .unwrap();
    }
    let waited = async {
        wait_for(
            &admin,
            "SELECT count(*) = 20 FROM app.seen",
            60,
            "events handled by the app's handler",
        )
        .await
    };
    waited.await;
    assert_eq!(
        count(&admin, "SELECT count(*) FROM app.seen WHERE handled_as = 'herald_app' AND source = 'herald_app'").await,
        20,
        "the handler ran as the listener's owner, and source names the emitting role"
    );

    // a session listener of the app: handled as its owner, gone with the app's session
    let session: i64 = app
        .query_one(
            "SELECT herald.add_event_listener('app.on_invoice', 'invoice')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    app.execute("SELECT herald.emit('invoice', 'for the session')", &[])
        .await
        .unwrap();
    let row = app
        .query_one("SELECT (herald.next_event($1, '10 s')).action", &[&session])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("for the session")
    );
    // once by the session, once through the app's queue listener
    wait_for(
        &admin,
        "SELECT count(*) = 22 FROM app.seen WHERE handled_as = 'herald_app'",
        30,
        "the session's handler and the queue's handler",
    )
    .await;
    denied(&app, "SELECT * FROM herald.session_event").await;
    let short = connect(&as_role("herald_app")).await;
    let gone: i64 = short
        .query_one(
            "SELECT herald.add_event_listener('app.on_invoice', 'invoice')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(short);
    wait_for(
        &admin,
        &format!("SELECT NOT EXISTS (SELECT 1 FROM herald.listener WHERE id = {gone})"),
        30,
        "an unprivileged session's listener to go with it",
    )
    .await;
    app.batch_execute(&format!("SELECT herald.remove_listener({session})"))
        .await
        .unwrap();

    // confinement: each role can do its job and no more
    denied(&app, "SELECT * FROM herald.drain('app_queue')").await;
    denied(&app, "UPDATE herald.event_queue SET event_run = 0").await;
    denied(&app, "SELECT herald.resume_queue('app_queue')").await;
    denied(&app, "DELETE FROM herald.event").await;
    let other = connect(&as_role("other_app")).await;
    denied(&other, "SELECT herald.emit('invoice', 'forged')").await;
    // the app may not use a handler it cannot execute
    admin
        .batch_execute(
            "CREATE FUNCTION public.private_handler(e herald.event) RETURNS void LANGUAGE sql AS $$ SELECT 1 $$;
             REVOKE EXECUTE ON FUNCTION public.private_handler(herald.event) FROM PUBLIC;",
        )
        .await
        .unwrap();
    let err = app
        .batch_execute(
            "SELECT herald.add_event_listener('public.private_handler', 'x', queue => 'app_queue')",
        )
        .await
        .expect_err("registering a handler the role cannot execute");
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("permission denied for handler function"));
    // only the owner (or a superuser) removes a listener
    admin
        .batch_execute("GRANT EXECUTE ON FUNCTION herald.remove_listener(bigint) TO other_app")
        .await
        .unwrap();
    let err = other
        .batch_execute(&format!("SELECT herald.remove_listener({listener})"))
        .await
        .expect_err("removing someone else's listener");
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("only the owner of listener"));
    app.batch_execute(&format!("SELECT herald.remove_listener({listener})"))
        .await
        .unwrap();

    unsafe { libc::kill(coord.id() as i32, libc::SIGTERM) };
    assert!(coord.wait().unwrap().success());
}

async fn denied(client: &tokio_postgres::Client, sql: &str) {
    let err = client.batch_execute(sql).await.expect_err(sql);
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("permission denied") || msg.contains("only the owner"),
        "{sql}: {msg}"
    );
}
