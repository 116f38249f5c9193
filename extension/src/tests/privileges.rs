//! In-database tests of the privilege model (docs/privileges.md): code runs as its owner in
//! a restricted context, and an owner's privileges are checked when its events are
//! delivered, not only when it registered. Roles are switched with SET ROLE inside the
//! test's transaction; the end-to-end suite (tests/tests/attacks.rs) does the same with
//! real logins.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::helpers::*;
    use pgrx::prelude::*;

    /// Roles `mallory` (an application) and `alice` (another one), a table `app.t` owned
    /// by alice, a handler `app.rec` recording who ran it, and a queue `q`.
    fn fixture() {
        run("CREATE ROLE mallory");
        run("CREATE ROLE alice");
        run("CREATE SCHEMA app AUTHORIZATION alice");
        run("GRANT USAGE ON SCHEMA app TO mallory");
        run("GRANT USAGE ON SCHEMA herald TO mallory, alice");
        run("GRANT EXECUTE ON FUNCTION herald.emit(text, text, jsonb),
                  herald.add_event_listener(text, text, text, boolean),
                  herald.add_data_listener(regclass, text, text, text, boolean),
                  herald.remove_listener(bigint) TO mallory, alice");
        run("CREATE TABLE app.t (id int PRIMARY KEY, secret text, note text)");
        run("ALTER TABLE app.t OWNER TO alice");
        run("CREATE TABLE app.seen (ran_as text, details jsonb)");
        run("GRANT INSERT ON app.seen TO PUBLIC");
        run(
            "CREATE FUNCTION app.rec(e herald.event) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO app.seen VALUES (current_user, e.details) $$",
        );
        run("INSERT INTO herald.event_queue (name, event_run, listener_roles) VALUES ('q', 1, '{mallory,alice}')");
    }

    fn withheld() -> i64 {
        count("SELECT count(*) FROM herald.event_log WHERE outcome = 'withheld'")
    }

    #[pg_test]
    fn herald_tables_and_catalogs_are_never_capturable() {
        fixture();
        for table in [
            "herald.listener",
            "herald.event",
            "herald.event_log",
            "herald.event_queue",
            "herald.session_event",
            "pg_catalog.pg_class",
        ] {
            assert_error(
                &format!("SELECT herald.add_data_listener('{table}', 'app.rec', sync => true)"),
                "cannot be captured",
            );
            assert_error(
                &format!("SELECT herald.add_data_listener('{table}', 'app.rec', queue => 'q')"),
                "cannot be captured",
            );
        }
        // A capture trigger made by hand on Herald's own table refuses to run.
        run("CREATE TRIGGER by_hand AFTER INSERT ON herald.event_log FOR EACH ROW EXECUTE FUNCTION herald._capture()");
        assert_error(
            "INSERT INTO herald.event_log (event_id, outcome) VALUES (1, 'failed')",
            "must not be fired by Herald's own tables",
        );
    }

    #[pg_test]
    fn a_sync_handler_runs_as_its_owner_not_as_the_producer() {
        fixture();
        run("GRANT SELECT, TRIGGER ON app.t TO mallory");
        run("GRANT INSERT ON app.t TO PUBLIC");
        // Mallory's handler tries to use whoever fires it.
        run(
            "CREATE FUNCTION app.grab(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN
                  INSERT INTO app.seen VALUES (current_user, NULL);
                  EXECUTE 'ALTER ROLE mallory SUPERUSER';
                END $$",
        );
        run("ALTER FUNCTION app.grab(herald.event) OWNER TO mallory");
        run("SET ROLE mallory");
        one::<i64>("SELECT herald.add_data_listener('app.t', 'app.grab', 'INSERT', sync => true)");
        run("RESET ROLE");
        // The superuser (and alice) now write to the table.
        run("INSERT INTO app.t (id) VALUES (1)");
        run("SET ROLE alice");
        run("INSERT INTO app.t (id) VALUES (2)");
        run("RESET ROLE");
        assert_eq!(
            count("SELECT count(*) FROM pg_roles WHERE rolname = 'mallory' AND rolsuper"),
            0,
            "the handler must not run with the producer's rights"
        );
        // Each failed call rolled back its own subtransaction and was logged.
        assert_eq!(count("SELECT count(*) FROM app.seen"), 0);
        assert_eq!(
            count("SELECT count(*) FROM herald.event_log WHERE outcome = 'failed' AND error LIKE '%superuser%'"),
            2
        );
        assert_eq!(count("SELECT count(*) FROM app.t"), 2);
    }

    #[pg_test]
    fn handlers_run_restricted_and_leave_no_settings_behind() {
        fixture();
        run("GRANT SELECT, TRIGGER ON app.t TO mallory");
        run(
            "CREATE FUNCTION app.sets(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN
                  PERFORM set_config('work_mem', '1234kB', false);
                  INSERT INTO app.seen VALUES (current_user, NULL);
                  IF e.action = 'UPDATE' THEN EXECUTE 'SET ROLE alice'; END IF;
                END $$",
        );
        run("ALTER FUNCTION app.sets(herald.event) OWNER TO mallory");
        run("SET ROLE mallory");
        one::<i64>("SELECT herald.add_data_listener('app.t', 'app.sets', sync => true)");
        run("RESET ROLE");
        run("SET work_mem = '4MB'");
        run("INSERT INTO app.t (id) VALUES (1)");
        assert_eq!(one::<String>("SHOW work_mem").unwrap(), "4MB");
        assert_eq!(
            one::<String>("SELECT string_agg(ran_as, ',') FROM app.seen").unwrap(),
            "mallory"
        );
        run("UPDATE app.t SET note = 'x'");
        assert_eq!(
            count("SELECT count(*) FROM herald.event_log WHERE error LIKE '%cannot set parameter \"role\"%'"),
            1,
            "SET ROLE inside a handler is refused"
        );
        assert_eq!(
            one::<String>("SELECT current_user::text").unwrap(),
            "postgres"
        );
    }

    #[pg_test]
    fn registration_needs_the_privileges_the_events_need() {
        fixture();
        // No SELECT at all.
        run("SET ROLE mallory");
        assert_error(
            "SELECT herald.add_data_listener('app.t', 'app.rec', queue => 'q')",
            "permission denied for table app.t",
        );
        run("RESET ROLE");
        // A synchronous listener needs TRIGGER, as a trigger would.
        run("GRANT SELECT ON app.t TO mallory");
        run("SET ROLE mallory");
        assert_error(
            "SELECT herald.add_data_listener('app.t', 'app.rec', sync => true)",
            "needs TRIGGER",
        );
        run("RESET ROLE");
        // A table passed by oid still needs USAGE on its schema.
        run("REVOKE USAGE ON SCHEMA app FROM mallory");
        let oid = one::<pg_sys::Oid>("SELECT 'app.t'::regclass::oid").unwrap();
        run("SET ROLE mallory");
        assert_error(
            &format!(
                "SELECT herald.add_data_listener({}::oid::regclass, 'app.rec', queue => 'q')",
                oid.to_u32()
            ),
            "permission denied for schema app",
        );
        run("RESET ROLE");
        run("GRANT USAGE ON SCHEMA app TO mallory");
        // Key-level events need every key column.
        run("REVOKE SELECT ON app.t FROM mallory");
        run("GRANT SELECT (secret, note) ON app.t TO mallory");
        run("SET ROLE mallory");
        assert_error(
            "SELECT herald.add_data_listener('app.t', 'app.rec', 'DELETE=1', queue => 'q')",
            "permission denied for table app.t",
        );
        run("RESET ROLE");
        // Row-level security that applies to the listener's owner: refused.
        run("GRANT SELECT ON app.t TO mallory");
        run("ALTER TABLE app.t ENABLE ROW LEVEL SECURITY");
        run("CREATE POLICY own ON app.t USING (note = current_user)");
        run("SET ROLE mallory");
        assert_error(
            "SELECT herald.add_data_listener('app.t', 'app.rec', queue => 'q')",
            "has row-level security",
        );
        run("RESET ROLE");
        // ... but not for the table's owner, to whom it does not apply.
        run("SET ROLE alice");
        one::<i64>("SELECT herald.add_data_listener('app.t', 'app.rec', queue => 'q')");
        run("RESET ROLE");
        // Temporary tables would orphan their listeners.
        run("CREATE TEMP TABLE tmp (id int)");
        assert_error(
            "SELECT herald.add_data_listener('tmp', 'app.rec', queue => 'q')",
            "temporary table",
        );
    }

    #[pg_test]
    fn revoked_privileges_withhold_events_from_the_next_statement_on() {
        fixture();
        run("CREATE ROLE readers");
        run("GRANT SELECT ON app.t TO readers");
        run("GRANT readers TO mallory");
        run("GRANT INSERT, UPDATE ON app.t TO PUBLIC");
        run("SET ROLE mallory");
        let l = one::<i64>("SELECT herald.add_data_listener('app.t', 'app.rec', queue => 'q')")
            .unwrap();
        run("RESET ROLE");
        run("INSERT INTO app.t VALUES (1, 's1', 'n')");
        assert_eq!(count("SELECT count(*) FROM herald.event"), 1);
        // Membership revoked in this open session: the next statement withholds.
        run("REVOKE readers FROM mallory");
        run("INSERT INTO app.t VALUES (2, 's2', 'n')");
        assert_eq!(count("SELECT count(*) FROM herald.event"), 1);
        assert_eq!(withheld(), 1);
        // Granted again, then RLS switched on: withheld again.
        run("GRANT readers TO mallory");
        run("INSERT INTO app.t VALUES (3, 's3', 'n')");
        assert_eq!(count("SELECT count(*) FROM herald.event"), 2);
        run("ALTER TABLE app.t ENABLE ROW LEVEL SECURITY");
        run("INSERT INTO app.t VALUES (4, 's4', 'n')");
        assert_eq!(count("SELECT count(*) FROM herald.event"), 2);
        assert_eq!(withheld(), 2);
        run("ALTER TABLE app.t DISABLE ROW LEVEL SECURITY");
        // Column revoked: events leave the column out.
        run("REVOKE readers FROM mallory");
        run("GRANT SELECT (id, note) ON app.t TO mallory");
        run("UPDATE app.t SET secret = 'changed', note = 'm' WHERE id = 1");
        let d = one::<String>(&format!(
            "SELECT details::text FROM herald.event WHERE listener = {l} ORDER BY id DESC LIMIT 1"
        ))
        .unwrap();
        assert!(!d.contains("secret") && !d.contains("changed"), "{d}");
        // Schema USAGE revoked: withheld.
        run("REVOKE USAGE ON SCHEMA app FROM mallory");
        run("INSERT INTO app.t VALUES (5, 's5', 'n')");
        assert_eq!(withheld(), 3);
        // Every withheld line says why, and none carries the row.
        assert_eq!(
            count("SELECT count(*) FROM herald.event_log WHERE outcome = 'withheld' AND details IS NULL AND error LIKE '%(42501)'"),
            3
        );
    }

    #[pg_test]
    fn a_revoked_handler_is_not_called_by_the_drainer() {
        fixture();
        run("GRANT SELECT ON app.t TO mallory");
        run("GRANT INSERT ON app.t TO PUBLIC");
        // A SECURITY DEFINER handler, executable by mallory through a grant.
        run(
            "CREATE FUNCTION app.priv(e herald.event) RETURNS void LANGUAGE sql SECURITY DEFINER AS
             $$ INSERT INTO app.seen VALUES (current_user, e.details) $$",
        );
        run("REVOKE EXECUTE ON FUNCTION app.priv(herald.event) FROM PUBLIC");
        run("GRANT EXECUTE ON FUNCTION app.priv(herald.event) TO mallory");
        run("SET ROLE mallory");
        one::<i64>("SELECT herald.add_data_listener('app.t', 'app.priv', queue => 'q')");
        run("RESET ROLE");
        run("INSERT INTO app.t VALUES (1, 's', 'n')");
        run("REVOKE EXECUTE ON FUNCTION app.priv(herald.event) FROM mallory");
        run("SELECT herald.drain('q')");
        assert_eq!(count("SELECT count(*) FROM app.seen"), 0);
        let error = one::<String>("SELECT last_error FROM herald.queue_status WHERE name = 'q'")
            .unwrap_or_default();
        assert!(error.contains("permission denied for function"), "{error}");
    }

    #[pg_test]
    fn user_event_types_need_their_owners_grant() {
        fixture();
        run(
            "GRANT EXECUTE ON FUNCTION herald.create_event_type(text, regrole),
                  herald.grant_listen(text, regrole), herald.revoke_listen(text, regrole),
                  herald.drop_event_type(text) TO mallory, alice",
        );
        run("SET ROLE mallory");
        assert_error(
            "SELECT herald.add_event_listener('app.rec', '*', queue => 'q')",
            "only Herald administrators may listen to every type",
        );
        assert_error(
            "SELECT herald.add_event_listener('app.rec', 'invoice', sync => true)",
            "it is not declared",
        );
        run("RESET ROLE");
        run("SET ROLE alice");
        run("SELECT herald.create_event_type('invoice')");
        let own =
            one::<i64>("SELECT herald.add_event_listener('app.rec', 'invoice', queue => 'q')");
        assert!(own.is_some(), "an owner listens to its own type");
        run("RESET ROLE");
        run("SET ROLE mallory");
        assert_error(
            "SELECT herald.add_event_listener('app.rec', 'invoice,order', sync => true)",
            "Its owner (alice) may grant it",
        );
        assert_error(
            "SELECT herald.grant_listen('invoice', 'mallory')",
            "must be owner of event type",
        );
        assert_error(
            "SELECT herald.grant_listen('*', 'mallory')",
            "must be owner of event type",
        );
        assert_error(
            "SELECT herald.create_event_type('invoice')",
            "already exists (owner alice)",
        );
        assert_error(
            "SELECT herald.create_event_type('mine', 'alice')",
            "must be able to act as role alice",
        );
        assert_error(
            "SELECT herald.drop_event_type('invoice')",
            "must be owner of event type",
        );
        run("RESET ROLE");
        run("SET ROLE alice");
        run("SELECT herald.grant_listen('invoice', 'mallory')");
        run("SELECT herald.grant_listen('invoice', 'mallory')"); // idempotent
        run("RESET ROLE");
        run("SET ROLE mallory");
        let l = one::<i64>("SELECT herald.add_event_listener('app.rec', 'invoice', sync => true)")
            .unwrap();
        run("SELECT herald.emit('invoice', 'created', '{\"n\": 1}')");
        run("RESET ROLE");
        assert_eq!(
            count("SELECT count(*) FROM app.seen WHERE ran_as = 'mallory'"),
            1
        );
        // Revoked: withheld from the next statement on, and logged.
        run("SET ROLE alice");
        run("SELECT herald.revoke_listen('invoice', 'mallory')");
        run("SELECT herald.emit('invoice', 'created', '{\"n\": 2}')");
        run("RESET ROLE");
        assert_eq!(
            count("SELECT count(*) FROM app.seen WHERE ran_as = 'mallory'"),
            1
        );
        assert_eq!(
            count(&format!("SELECT count(*) FROM herald.event_log WHERE outcome = 'withheld' AND listener = {l} AND error LIKE '%event type ''invoice''%'")),
            1
        );
        // '*' is granted by administrators only, and then works.
        run("SELECT herald.grant_listen('*', 'mallory')");
        run("SET ROLE mallory");
        one::<i64>("SELECT herald.add_event_listener('app.rec', '*', sync => true)");
        run("RESET ROLE");
        assert_eq!(
            one::<String>("SELECT string_agg(g::text, ',') FROM herald.event_type, unnest(granted_to) g WHERE name = '*'").unwrap(),
            "mallory"
        );
    }

    #[pg_test]
    fn attaching_to_a_queue_needs_the_operators_permission() {
        fixture();
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('payroll', 1)");
        run("GRANT SELECT ON app.t TO mallory");
        run("SET ROLE mallory");
        assert_error(
            "SELECT herald.add_data_listener('app.t', 'app.rec', queue => 'payroll')",
            "permission denied for event queue \"payroll\"",
        );
        run("RESET ROLE");
        run("CREATE ROLE payroll_apps");
        run("GRANT payroll_apps TO mallory");
        run("UPDATE herald.event_queue SET listener_roles = '{payroll_apps}' WHERE name = 'payroll'");
        run("SET ROLE mallory");
        one::<i64>("SELECT herald.add_data_listener('app.t', 'app.rec', queue => 'payroll')");
        run("RESET ROLE");
    }

    #[pg_test]
    fn a_drainer_notices_that_its_queue_was_recreated() {
        fixture();
        assert_eq!(one::<bool>("SELECT herald.claim_queue('q')"), Some(true));
        run("SELECT herald.drain('q')");
        run("DELETE FROM herald.event_queue WHERE name = 'q'");
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1)");
        let err = error_of("SELECT herald.drain('q')");
        run("SELECT pg_advisory_unlock_all()");
        assert!(
            err.contains("holds the drainer lock of a deleted queue"),
            "{err}"
        );
        // Without any claim, a manual drain takes the lock for its transaction.
        run("SELECT herald.drain('q')");
        assert_eq!(
            count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid::int8 = herald._lock_space('queue')"),
            1
        );
    }

    #[pg_test]
    fn a_role_named_by_herald_cannot_be_dropped() {
        fixture();
        run("GRANT SELECT ON app.t TO mallory");
        run("SET ROLE mallory");
        let l = one::<i64>("SELECT herald.add_data_listener('app.t', 'app.rec', queue => 'q')")
            .unwrap();
        run("RESET ROLE");
        run("REVOKE ALL ON app.t FROM mallory");
        run("REVOKE ALL ON SCHEMA app FROM mallory");
        run("REVOKE ALL ON SCHEMA herald FROM mallory");
        run("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA herald FROM mallory");
        run("UPDATE herald.event_queue SET listener_roles = '{alice}'");
        assert_error(
            "DROP ROLE mallory",
            "privileges for function herald._role_references()",
        );
        run(&format!("SELECT herald.remove_listener({l})"));
        run("DROP ROLE mallory");
        // Named only as a queue's listener role, or as an event type's grantee: the same.
        assert_error(
            "DROP ROLE alice",
            "privileges for function herald._role_references()",
        );
    }

    #[pg_test]
    fn a_handlers_own_sqlstate_is_logged_as_raised() {
        fixture();
        run(
            "CREATE FUNCTION app.fails(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'no stock' USING ERRCODE = 'HR042'; END $$",
        );
        run("SELECT herald.add_data_listener('app.t', 'app.fails', sync => true)");
        run("SELECT herald.add_data_listener('app.t', 'app.fails', queue => 'q')");
        run("INSERT INTO app.t (id) VALUES (1)");
        run("SELECT herald.drain('q')");
        assert_eq!(
            count("SELECT count(*) FROM herald.event_log WHERE outcome = 'failed' AND error = 'no stock (HR042)'"),
            2
        );
    }

    #[pg_test]
    fn the_producers_search_path_does_not_reach_a_handler() {
        fixture();
        run("GRANT SELECT, TRIGGER ON app.t TO mallory");
        run("GRANT INSERT ON app.t TO alice");
        run("CREATE FUNCTION public.note_it() RETURNS text LANGUAGE sql AS $$ SELECT 'mine' $$");
        run("CREATE SCHEMA trap AUTHORIZATION alice");
        run("CREATE FUNCTION trap.note_it() RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$");
        run("ALTER FUNCTION trap.note_it() OWNER TO alice");
        run("GRANT USAGE ON SCHEMA trap TO PUBLIC");
        run(
            "CREATE FUNCTION app.uses_path(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO app.seen VALUES (note_it(), NULL); END $$",
        );
        run("ALTER FUNCTION app.uses_path(herald.event) OWNER TO mallory");
        run("SET ROLE mallory");
        one::<i64>("SELECT herald.add_data_listener('app.t', 'app.uses_path', sync => true)");
        run("RESET ROLE");
        run("SET ROLE alice");
        run("SET search_path = trap, public");
        run("INSERT INTO app.t (id) VALUES (1)");
        run("RESET search_path");
        run("RESET ROLE");
        assert_eq!(
            one::<String>("SELECT string_agg(ran_as, ',') FROM app.seen").unwrap(),
            "mine"
        );
    }
}
