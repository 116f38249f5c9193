//! An attacker's view of the privilege model (docs/privileges.md, issue #9): every role is a
//! real non-superuser login with exactly the documented grants (sql/examples/grants.sql),
//! plus `other_app`, a second application with the same grants as `herald_app`.
//!
//! Each test tries one class of attack: running code under another identity, reading what
//! plain SQL would not show, holding another application's queue, and crashing the server
//! through internal functions. Each asserts that nothing was gained or leaked, and every
//! test ends by checking that no backend died (the postmaster log).
use herald_tests::*;
use tokio_postgres::Client;

const GRANTS: &str = include_str!("../../sql/examples/grants.sql");

/// The private cluster with the documented roles, and a connection per role.
struct World {
    env: Env,
    admin: Client,
    /// The victim application: owns schema `app`, event type `invoice`, queue `app_queue`.
    app: Client,
    /// The attacker: a second application with the same grants, owning schema `other`.
    other: Client,
    ops: Client,
    coordinator: Client,
}

impl World {
    async fn new() -> World {
        let (env, admin) = Env::start().await;
        admin
            .batch_execute(
                "CREATE ROLE herald_app LOGIN; CREATE ROLE herald_ops LOGIN;
                 CREATE ROLE herald_coordinator LOGIN; CREATE ROLE other_app LOGIN;
                 CREATE SCHEMA app AUTHORIZATION herald_app;
                 CREATE SCHEMA other AUTHORIZATION other_app;
                 GRANT USAGE ON SCHEMA app TO other_app;",
            )
            .await
            .unwrap();
        admin.batch_execute(GRANTS).await.expect("grants.sql");
        // The second application gets the application grants of grants.sql, verbatim.
        let app_grants: String = GRANTS
            .split("-- 2. Operators")
            .next()
            .unwrap()
            .replace("herald_app", "other_app");
        admin.batch_execute(&app_grants).await.unwrap();
        let url = |role: &str| {
            format!(
                "{} user={role}",
                env.cluster.url("postgres").replace(" user=postgres", "")
            )
        };
        let app = connect(&url("herald_app")).await;
        let other = connect(&url("other_app")).await;
        let ops = connect(&url("herald_ops")).await;
        let coordinator = connect(&url("herald_coordinator")).await;
        ops.batch_execute(
            "INSERT INTO herald.event_queue (name, event_run, listener_roles)
             VALUES ('app_queue', 1, '{herald_app}'), ('other_queue', 1, '{other_app}')",
        )
        .await
        .unwrap();
        app.batch_execute(
            "CREATE TABLE app.orders (id int PRIMARY KEY, customer text, amount int, margin int);
             CREATE TABLE app.seen (ran_as text, type text, details jsonb);
             CREATE FUNCTION app.record(e herald.event) RETURNS void LANGUAGE sql AS
               $$ INSERT INTO app.seen VALUES (current_user, e.type, e.details) $$;
             SELECT herald.create_event_type('invoice');",
        )
        .await
        .unwrap();
        // What other_app may see of app's data with plain SQL: two columns of orders.
        app.batch_execute("GRANT SELECT (id, customer) ON app.orders TO other_app")
            .await
            .unwrap();
        other
            .batch_execute(
                "CREATE TABLE other.loot (ran_as text, type text, details jsonb);
                 GRANT INSERT ON other.loot TO PUBLIC;
                 GRANT USAGE ON SCHEMA other TO PUBLIC;
                 CREATE FUNCTION other.record(e herald.event) RETURNS void LANGUAGE sql AS
                   $$ INSERT INTO other.loot VALUES (current_user, e.type, e.details) $$;
                 CREATE FUNCTION other.escalate(e herald.event) RETURNS void LANGUAGE plpgsql AS
                   $$ BEGIN
                        INSERT INTO other.loot VALUES (current_user, e.type, e.details);
                        EXECUTE 'ALTER ROLE other_app SUPERUSER';
                        EXECUTE 'GRANT herald_app TO other_app';
                      END $$;
                 GRANT EXECUTE ON FUNCTION other.record(herald.event),
                                           other.escalate(herald.event) TO PUBLIC;",
            )
            .await
            .unwrap();
        World {
            env,
            admin,
            app,
            other,
            ops,
            coordinator,
        }
    }

    /// One lookup of other_app's queue, by the coordinator's login.
    async fn drain_other_queue(&self) {
        ok(
            &self.coordinator,
            "SELECT * FROM herald.drain('other_queue', 'c1')",
        )
        .await;
    }

    /// Nothing gained: other_app is no superuser, no member of herald_app, and its loot holds
    /// only what it could read with plain SQL (rows of `ran_as = other_app`; no margin).
    async fn assert_nothing_gained(&self) {
        assert_eq!(
            count(&self.admin, "SELECT count(*) FROM pg_roles WHERE rolname = 'other_app' AND (rolsuper OR rolcreaterole OR rolbypassrls)").await,
            0,
            "other_app gained a role attribute"
        );
        assert_eq!(
            count(
                &self.admin,
                "SELECT count(*) FROM pg_auth_members WHERE member = 'other_app'::regrole"
            )
            .await,
            0,
            "other_app gained a membership"
        );
        assert_eq!(
            count(
                &self.admin,
                "SELECT count(*) FROM other.loot WHERE ran_as <> 'other_app'"
            )
            .await,
            0,
            "code of other_app ran as another role"
        );
        assert_eq!(
            count(&self.admin, "SELECT count(*) FROM other.loot WHERE details::text LIKE '%margin%' OR details::text LIKE '%amount%' OR details::text LIKE '%secret%'").await,
            0,
            "other_app read a column it may not SELECT"
        );
    }

    /// No backend died: the postmaster restarts every session after a crash.
    fn assert_no_crash(&self) {
        let log = std::fs::read_to_string(self.env.cluster.dir.join("server.log")).unwrap();
        assert!(
            !log.contains("terminated by signal") && !log.contains("server processes terminated"),
            "a backend crashed:\n{log}"
        );
    }
}

/// The error `sql` raises (message and detail), failing if it succeeds.
async fn refused(client: &Client, sql: &str) -> String {
    let err = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("must be refused: {sql}"));
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    format!("{} {}", db.message(), db.detail().unwrap_or(""))
}

async fn ok(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_never_runs_under_another_identity() {
    let w = World::new().await;
    ok(
        &w.app,
        "CREATE TABLE app.ledger (id int PRIMARY KEY, note text);
         GRANT SELECT, INSERT ON app.ledger TO other_app;",
    )
    .await;
    // Herald's own tables, written as the extension owner, are not capturable.
    for table in [
        "herald.listener",
        "herald.event",
        "herald.event_log",
        "herald.event_queue",
        "herald.event_type",
        "herald.session_event",
    ] {
        for how in ["sync => true", "queue => 'other_queue'"] {
            let e = refused(
                &w.other,
                &format!("SELECT herald.add_data_listener('{table}', 'other.escalate', {how})"),
            )
            .await;
            assert!(
                e.contains("cannot be captured") || e.contains("permission denied"),
                "{table}: {e}"
            );
        }
    }
    // A table it may only read: a synchronous listener needs TRIGGER, as a trigger does.
    let e = refused(
        &w.other,
        "SELECT herald.add_data_listener('app.ledger', 'other.escalate', 'INSERT=3', sync => true)",
    )
    .await;
    assert!(e.contains("needs TRIGGER"), "{e}");
    // Given TRIGGER, its sync handler runs as other_app, never as the producer.
    ok(&w.app, "GRANT TRIGGER ON app.ledger TO other_app").await;
    ok(
        &w.other,
        "SELECT herald.add_data_listener('app.ledger', 'other.escalate', 'INSERT=2', sync => true)",
    )
    .await;
    ok(&w.app, "INSERT INTO app.ledger VALUES (1, 'acme')").await;
    ok(&w.admin, "INSERT INTO app.ledger VALUES (2, 'bolt')").await;
    // User events: a sync listener of every type, or of app's type, is refused.
    let e = refused(
        &w.other,
        "SELECT herald.add_event_listener('other.escalate', '*', sync => true)",
    )
    .await;
    assert!(e.contains("only Herald administrators"), "{e}");
    let e = refused(
        &w.other,
        "SELECT herald.add_event_listener('other.escalate', 'invoice', sync => true)",
    )
    .await;
    assert!(
        e.contains("permission denied for event type 'invoice'"),
        "{e}"
    );
    // Its own type, emitted by the admin: runs as other_app.
    ok(&w.other, "SELECT herald.create_event_type('payout')").await;
    ok(
        &w.other,
        "SELECT herald.add_event_listener('other.escalate', 'payout', sync => true)",
    )
    .await;
    ok(&w.admin, "SELECT herald.emit('payout', 'made')").await;
    ok(&w.app, "SELECT herald.emit('payout', 'made')").await;
    // Through the coordinator's drains: as the listener's owner too, whatever the
    // coordinator's search_path.
    ok(
        &w.other,
        "SELECT herald.add_event_listener('other.escalate', 'payout', queue => 'other_queue')",
    )
    .await;
    ok(&w.app, "SELECT herald.emit('payout', 'queued')").await;
    ok(
        &w.coordinator,
        "SET search_path = other, public; SELECT * FROM herald.drain('other_queue', 'c1')",
    )
    .await;
    // Every escalation failed in its own subtransaction and was logged; the producers'
    // statements went through.
    assert!(
        count(&w.admin, "SELECT count(*) FROM herald.event_log WHERE outcome = 'failed' AND error LIKE '%superuser%'").await >= 4
    );
    assert_eq!(count(&w.admin, "SELECT count(*) FROM app.ledger").await, 2);
    w.assert_nothing_gained().await;

    // The producer's search_path does not reach app's handler: other_app emits app's type
    // with a trap function first in its path.
    ok(
        &w.app,
        "CREATE FUNCTION app.label() RETURNS text LANGUAGE sql AS $$ SELECT 'app' $$;
         CREATE FUNCTION app.uses_path(e herald.event) RETURNS void LANGUAGE plpgsql
           SET search_path = app AS $$ BEGIN INSERT INTO app.seen VALUES (label(), e.type, NULL); END $$;
         CREATE FUNCTION app.trusting(e herald.event) RETURNS void LANGUAGE plpgsql
           AS $$ BEGIN INSERT INTO app.seen VALUES (coalesce(current_setting('search_path'), ''), e.type, NULL); END $$;
         SELECT herald.add_event_listener('app.uses_path', 'invoice', sync => true);
         SELECT herald.add_event_listener('app.trusting', 'invoice', sync => true);",
    )
    .await;
    ok(
        &w.other,
        "CREATE FUNCTION other.label() RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
         SET search_path = other, app, public;
         SELECT herald.emit('invoice', 'forged');",
    )
    .await;
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM app.seen WHERE ran_as = 'app'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM app.seen WHERE ran_as = '\"$user\", public'"
        )
        .await,
        1,
        "handlers run with the default search_path"
    );
    // Restricted: a handler cannot switch roles or leave a setting behind in the producer.
    ok(
        &w.other,
        "CREATE FUNCTION other.lingers(e herald.event) RETURNS void LANGUAGE plpgsql AS
           $$ BEGIN
                PERFORM set_config('statement_timeout', '1ms', false);
                IF e.action = 'role' THEN EXECUTE 'SET ROLE herald_app'; END IF;
                IF e.action = 'auth' THEN EXECUTE 'SET SESSION AUTHORIZATION herald_app'; END IF;
                IF e.action = 'temp' THEN EXECUTE 'CREATE TEMP TABLE kept (x int)'; END IF;
              END $$;
         SELECT herald.add_event_listener('other.lingers', 'payout', sync => true);",
    )
    .await;
    for action in ["plain", "role", "auth", "temp"] {
        ok(&w.app, &format!("SELECT herald.emit('payout', '{action}')")).await;
    }
    let timeout: String = w
        .app
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "0", "a handler's setting outlived its call");
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM pg_class WHERE relname = 'kept'"
        )
        .await,
        0
    );
    w.assert_nothing_gained().await;
    w.assert_no_crash();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_never_show_what_plain_sql_would_not() {
    let w = World::new().await;
    // Registered while other_app could read the whole table; then app narrows it to two
    // columns. Events leave out the rest; key-level events, whose key it lost, stop.
    ok(&w.app, "GRANT SELECT ON app.orders TO other_app").await;
    ok(
        &w.other,
        "SELECT herald.add_data_listener('app.orders', 'other.record', 'INSERT=3,UPDATE=3', queue => 'other_queue');
         SELECT herald.add_data_listener('app.orders', 'other.record', 'DELETE=1', queue => 'other_queue');",
    )
    .await;
    ok(
        &w.app,
        "REVOKE SELECT ON app.orders FROM other_app;
         GRANT SELECT (id, customer) ON app.orders TO other_app;",
    )
    .await;
    ok(&w.app, "INSERT INTO app.orders VALUES (1, 'acme', 100, 30)").await;
    w.drain_other_queue().await;
    assert_eq!(
        count(&w.admin, "SELECT count(*) FROM other.loot WHERE details = '{\"new\": {\"id\": 1, \"customer\": \"acme\"}}'").await,
        1
    );
    ok(&w.app, "REVOKE SELECT (id) ON app.orders FROM other_app").await;
    ok(&w.app, "DELETE FROM app.orders WHERE id = 1").await;
    ok(&w.app, "INSERT INTO app.orders VALUES (2, 'bolt', 200, 60)").await;
    w.drain_other_queue().await;
    assert_eq!(
        count(&w.admin, "SELECT count(*) FROM other.loot WHERE details::text LIKE '%\"id\"%' AND details::text NOT LIKE '%acme%'").await,
        0,
        "no key column after SELECT (id) was revoked"
    );
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM other.loot WHERE details = '{\"new\": {\"customer\": \"bolt\"}}'"
        )
        .await,
        1
    );
    // Every privilege revoked while app's session stays open: withheld from its next
    // statement on, and logged where operators look.
    ok(&w.app, "REVOKE ALL ON app.orders FROM other_app").await;
    ok(&w.app, "INSERT INTO app.orders VALUES (3, 'crux', 300, 90)").await;
    ok(&w.app, "UPDATE app.orders SET amount = 1").await;
    w.drain_other_queue().await;
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM other.loot WHERE details::text LIKE '%crux%'"
        )
        .await,
        0
    );
    assert!(
        count(&w.ops, "SELECT count(*) FROM herald.event_log WHERE outcome = 'withheld' AND queue = 'other_queue'").await >= 4
    );

    // Membership: SELECT through a group; leaving the group withholds at once, in an open
    // producer session.
    ok(
        &w.admin,
        "CREATE ROLE order_readers; GRANT SELECT (id, customer) ON app.orders TO order_readers;
         GRANT order_readers TO other_app;",
    )
    .await;
    ok(
        &w.app,
        "INSERT INTO app.orders VALUES (4, 'dyne', 400, 120)",
    )
    .await;
    w.drain_other_queue().await;
    ok(&w.admin, "REVOKE order_readers FROM other_app").await;
    ok(
        &w.app,
        "INSERT INTO app.orders VALUES (5, 'echo', 500, 150)",
    )
    .await;
    w.drain_other_queue().await;
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM other.loot WHERE details::text LIKE '%dyne%'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM other.loot WHERE details::text LIKE '%echo%'"
        )
        .await,
        0
    );

    // Row-level security: refused for a role it applies to; switched on later, withheld.
    ok(
        &w.app,
        "CREATE TABLE app.private (id int PRIMARY KEY, owner_name text, body text);
         GRANT SELECT ON app.private TO other_app;
         ALTER TABLE app.private ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON app.private USING (owner_name = current_user);",
    )
    .await;
    let e = refused(
        &w.other,
        "SELECT herald.add_data_listener('app.private', 'other.record', queue => 'other_queue')",
    )
    .await;
    assert!(e.contains("row-level security"), "{e}");
    ok(&w.app, "ALTER TABLE app.private DISABLE ROW LEVEL SECURITY").await;
    ok(
        &w.other,
        "SELECT herald.add_data_listener('app.private', 'other.record', queue => 'other_queue')",
    )
    .await;
    ok(&w.app, "ALTER TABLE app.private ENABLE ROW LEVEL SECURITY").await;
    ok(
        &w.app,
        "INSERT INTO app.private VALUES (1, 'herald_app', 'diary')",
    )
    .await;
    w.drain_other_queue().await;
    let visible = count(&w.other, "SELECT count(*) FROM app.private").await;
    assert_eq!(visible, 0, "plain SQL shows other_app no row");
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM other.loot WHERE details::text LIKE '%diary%'"
        )
        .await,
        0
    );

    // A table given by oid still needs USAGE on its schema.
    let oid: u32 = w
        .admin
        .query_one("SELECT 'app.orders'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    ok(
        &w.admin,
        "REVOKE USAGE ON SCHEMA app FROM other_app; GRANT SELECT ON app.orders TO other_app",
    )
    .await;
    let e = refused(
        &w.other,
        &format!("SELECT herald.add_data_listener({oid}::oid::regclass, 'other.record', queue => 'other_queue')"),
    )
    .await;
    assert!(e.contains("permission denied for schema app"), "{e}");

    // User events: app's type needs app's grant, and a revoked grant withholds (events
    // already queued included: delivery checks the privileges of the moment).
    ok(&w.app, "SELECT herald.grant_listen('invoice', 'other_app')").await;
    ok(
        &w.other,
        "SELECT herald.add_event_listener('other.record', 'invoice', queue => 'other_queue')",
    )
    .await;
    ok(&w.app, "SELECT herald.emit('invoice', 'one', '{\"n\": 1}')").await;
    w.drain_other_queue().await;
    ok(
        &w.app,
        "SELECT herald.revoke_listen('invoice', 'other_app')",
    )
    .await;
    ok(&w.app, "SELECT herald.emit('invoice', 'two', '{\"n\": 2}')").await;
    w.drain_other_queue().await;
    assert_eq!(
        count(
            &w.admin,
            "SELECT count(*) FROM other.loot WHERE type = 'invoice'"
        )
        .await,
        1
    );
    // Herald's storage stays closed.
    for table in ["herald.event", "herald.session_event", "herald.event_log"] {
        refused(&w.other, &format!("SELECT * FROM {table}")).await;
    }
    w.assert_nothing_gained().await;
    w.assert_no_crash();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_application_holds_or_stalls_another_ones_queue() {
    let w = World::new().await;
    ok(&w.app, "SELECT herald.grant_listen('invoice', 'other_app')").await;
    let e = refused(
        &w.other,
        "SELECT herald.add_event_listener('other.escalate', 'invoice', queue => 'app_queue')",
    )
    .await;
    assert!(
        e.contains("permission denied for event queue \"app_queue\""),
        "{e}"
    );
    // The queue's identity is fixed: no second drainer through a new id.
    let e = refused(
        &w.ops,
        "UPDATE herald.event_queue SET id = DEFAULT WHERE name = 'app_queue'",
    )
    .await;
    assert!(!e.is_empty());
    // Nor through a queue deleted and re-created under a drainer: the stale drainer is told.
    ok(&w.coordinator, "SELECT herald.claim_queue('app_queue')").await;
    ok(
        &w.ops,
        "DELETE FROM herald.event_queue WHERE name = 'app_queue';
         INSERT INTO herald.event_queue (name, event_run, listener_roles) VALUES ('app_queue', 1, '{herald_app}')",
    )
    .await;
    let e = refused(
        &w.coordinator,
        "SELECT * FROM herald.drain('app_queue', 'c1')",
    )
    .await;
    assert!(e.contains("drainer lock of a deleted queue"), "{e}");
    // Another session that drains it meanwhile keeps the first one out.
    let second = connect(&format!(
        "{} user=herald_coordinator",
        w.env.cluster.url("postgres").replace(" user=postgres", "")
    ))
    .await;
    ok(&second, "SELECT herald.claim_queue('app_queue')").await;
    ok(&w.coordinator, "SELECT pg_advisory_unlock_all()").await;
    let e = refused(
        &w.coordinator,
        "SELECT * FROM herald.drain('app_queue', 'c1')",
    )
    .await;
    assert!(e.contains("is drained by another session"), "{e}");
    // A handler cannot drain (nested drain) even when its owner could.
    ok(
        &w.admin,
        "GRANT EXECUTE ON FUNCTION herald.drain(text, text) TO other_app",
    )
    .await;
    ok(
        &w.other,
        "CREATE FUNCTION other.drains(e herald.event) RETURNS void LANGUAGE sql AS
           $$ SELECT count(*) FROM herald.drain('other_queue') $$;
         SELECT herald.create_event_type('tick');
         SELECT herald.add_event_listener('other.drains', 'tick', queue => 'other_queue');
         SELECT herald.emit('tick', 'x');",
    )
    .await;
    ok(
        &w.admin,
        "SELECT * FROM herald.drain('other_queue', 'admin')",
    )
    .await;
    assert_eq!(
        count(&w.admin, "SELECT count(*) FROM herald.event_log WHERE error LIKE '%cannot be called while a lookup is running%'").await,
        1
    );
    // A role named by Herald cannot be dropped from under its listeners.
    let e = refused(&w.admin, "DROP ROLE other_app").await;
    assert!(e.contains("herald._role_references()"), "{e}");
    // Only its owner removes a listener.
    let theirs: i64 = w
        .admin
        .query_one(
            "SELECT min(id) FROM herald.listener WHERE owner = 'other_app'::regrole",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let e = refused(&w.app, &format!("SELECT herald.remove_listener({theirs})")).await;
    assert!(e.contains("only the owner"), "{e}");
    w.assert_nothing_gained().await;
    w.assert_no_crash();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misused_internals_never_crash_the_server() {
    let w = World::new().await;
    ok(
        &w.admin,
        "SELECT herald.add_data_listener('app.orders', 'app.record', queue => 'app_queue')",
    )
    .await;
    // The capture function as a statement trigger, a BEFORE trigger, on Herald's own table.
    for trigger in [
        "CREATE TRIGGER bad AFTER INSERT ON app.orders FOR EACH STATEMENT EXECUTE FUNCTION herald._capture()",
        "CREATE TRIGGER bad BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION herald._capture()",
    ] {
        ok(&w.admin, trigger).await;
        refused(&w.app, "INSERT INTO app.orders VALUES (1, 'a', 1, 1)").await;
        ok(&w.admin, "DROP TRIGGER bad ON app.orders").await;
    }
    ok(&w.admin, "CREATE TRIGGER bad AFTER INSERT ON herald.event_type FOR EACH ROW EXECUTE FUNCTION herald._capture()").await;
    refused(&w.app, "SELECT herald.create_event_type('crash')").await;
    ok(&w.admin, "DROP TRIGGER bad ON herald.event_type").await;
    refused(&w.admin, "SELECT herald._capture()").await;
    // A listener edited by hand to a handler of another signature.
    ok(
        &w.admin,
        "CREATE FUNCTION public.wrong(x int) RETURNS void LANGUAGE sql AS $$ SELECT 1 $$",
    )
    .await;
    refused(
        &w.admin,
        "UPDATE herald.listener SET handler = 'public.wrong(int)'::regprocedure",
    )
    .await;
    // A dropped handler, then a lookup: a failure, not a crash.
    ok(&w.app, "INSERT INTO app.orders VALUES (2, 'b', 2, 2)").await;
    ok(&w.app, "DROP FUNCTION app.record(herald.event)").await;
    ok(
        &w.coordinator,
        "SELECT * FROM herald.drain('app_queue', 'c1')",
    )
    .await;
    assert!(
        count(
            &w.ops,
            "SELECT count(*) FROM herald.event_log WHERE error LIKE '%no longer exists%'"
        )
        .await
            >= 1
    );
    w.assert_nothing_gained().await;
    w.assert_no_crash();
}
