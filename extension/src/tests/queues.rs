//! In-database tests of queues, emit and listeners.
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::helpers::*;

    /// A queue `q`, a table `seen` and handlers `rec` (records) and `picky` (fails on 'boom').
    fn fixture() {
        run(
            "CREATE TABLE seen (n serial, event_id bigint, queue text, type text, action text,
                                 details jsonb, listener bigint)",
        );
        run(
            "CREATE FUNCTION rec(e herald.event) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO seen (event_id, queue, type, action, details, listener)
                VALUES (e.id, e.queue, e.type, e.action, e.details, e.listener) $$",
        );
        run(
            "CREATE FUNCTION picky(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN
                  INSERT INTO seen (event_id, queue, type, action, details, listener)
                  VALUES (e.id, e.queue, e.type, 'picky:' || e.action, e.details, e.listener);
                  IF e.action = 'boom' THEN RAISE EXCEPTION 'cannot handle %', e.id; END IF;
                END $$",
        );
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1)");
    }

    #[pg_test]
    fn queue_defaults_and_state() {
        run("INSERT INTO herald.event_queue (name) VALUES ('MyEventQueue')");
        let row = Spi::get_three::<i32, i16, i16>(
            "SELECT event_amount_per_lookup, event_hold_on_error, event_log_level
               FROM herald.event_queue WHERE name = 'MyEventQueue'",
        )
        .unwrap();
        assert_eq!(row, (Some(10), Some(0), Some(1)));
        assert_eq!(
            one::<String>("SELECT state FROM herald.queue_status WHERE name = 'MyEventQueue'")
                .unwrap(),
            "stopped"
        );
        run("UPDATE herald.event_queue SET event_run = 1 WHERE name = 'MyEventQueue'");
        assert_eq!(
            one::<String>("SELECT state FROM herald.queue_status WHERE name = 'MyEventQueue'")
                .unwrap(),
            "running"
        );
        assert_eq!(
            count("SELECT backlog FROM herald.queue_status WHERE name = 'MyEventQueue'"),
            0
        );
    }

    #[pg_test]
    fn bad_queue_settings_are_refused_with_clear_errors() {
        for (value, shown) in [
            ("0", "not 0"),
            ("-5", "not -5"),
            ("100000", "not 100000"),
            ("NULL", "not NULL"),
        ] {
            assert_error(
                &format!("INSERT INTO herald.event_queue (name, event_amount_per_lookup) VALUES ('z', {value})"),
                &format!("event_amount_per_lookup of queue \"z\" must be between 1 and 10000, {shown}"),
            );
        }
        run("INSERT INTO herald.event_queue (name) VALUES ('kept')");
        assert_error(
            "UPDATE herald.event_queue SET id = DEFAULT WHERE name = 'kept'",
            "the id of event queue \"kept\" cannot be changed",
        );
        run("DELETE FROM herald.event_queue WHERE name = 'kept'");
        assert_error(
            "INSERT INTO herald.event_queue (name, event_log_level) VALUES ('z', 4)",
            "event_log_level of queue \"z\" must be between 0 and 3",
        );
        assert_error(
            "INSERT INTO herald.event_queue (name, event_hold_on_error) VALUES ('z', 2)",
            "event_hold_on_error of queue \"z\" must be 0 or 1",
        );
        assert_error(
            "INSERT INTO herald.event_queue (name, event_run) VALUES ('z', 7)",
            "event_run of queue \"z\" must be 0",
        );
        assert_error(
            "INSERT INTO herald.event_queue (name) VALUES (NULL)",
            "an event queue needs a name",
        );
        assert_error(
            "INSERT INTO herald.event_queue (name) VALUES ('')",
            "an event queue needs a name",
        );
        // nothing half-written
        assert_eq!(count("SELECT count(*) FROM herald.event_queue"), 0);

        run("INSERT INTO herald.event_queue (name) VALUES ('dup')");
        assert_error(
            "INSERT INTO herald.event_queue (name) VALUES ('dup')",
            "event queue \"dup\" already exists",
        );
        assert_error(
            "UPDATE herald.event_queue SET event_amount_per_lookup = 0 WHERE name = 'dup'",
            "must be between 1 and 10000",
        );
        assert_error(
            "UPDATE herald.event_queue SET name = 'other' WHERE name = 'dup'",
            "cannot be renamed",
        );
        assert_eq!(
            count(
                "SELECT event_amount_per_lookup::int8 FROM herald.event_queue WHERE name = 'dup'"
            ),
            10
        );
    }

    #[pg_test]
    fn listener_registration_checks_its_arguments() {
        fixture();
        assert_error(
            "SELECT herald.add_event_listener('nope', 'x', queue => 'q')",
            "handler function nope(herald.event) does not exist",
        );
        run("CREATE FUNCTION wrongsig(i int) RETURNS void LANGUAGE sql AS $$ $$");
        assert_error(
            "SELECT herald.add_event_listener('wrongsig', 'x', queue => 'q')",
            "handler function wrongsig must take exactly one argument of type herald.event",
        );
        run("CREATE PROCEDURE aproc(e herald.event) LANGUAGE sql AS $$ $$");
        assert_error(
            "SELECT herald.add_event_listener('aproc', 'x', queue => 'q')",
            "must be a plain function",
        );
        assert_error(
            "SELECT herald.add_event_listener(NULL, 'x', queue => 'q')",
            "handler must not be NULL",
        );
        assert_error(
            "SELECT herald.add_event_listener('rec', NULL, queue => 'q')",
            "event_types must not be NULL",
        );
        assert_error(
            "SELECT herald.add_event_listener('rec', 'a,,b', queue => 'q')",
            "contains an empty type",
        );
        assert_error(
            "SELECT herald.add_event_listener('rec', '', queue => 'q')",
            "contains an empty type",
        );
        assert_error(
            "SELECT herald.add_event_listener('rec', 'LOGIN', queue => 'q')",
            "reserved for Herald's own events",
        );
        assert_error(
            "SELECT herald.add_event_listener('rec', 'x', queue => 'nosuch')",
            "event queue \"nosuch\" does not exist",
        );
        assert_error(
            "SELECT herald.add_event_listener('rec', 'x', queue => 'q', sync => true)",
            "either synchronous (sync => true) or queued",
        );
        assert_error(
            "SELECT herald.add_event_listener('rec', 'x', sync => NULL)",
            "sync must not be NULL",
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.listener"),
            0,
            "nothing half-written"
        );

        // schema-qualified and explicit-signature names work
        let a = one::<i64>("SELECT herald.add_event_listener('public.rec', 'x', queue => 'q')")
            .unwrap();
        let b =
            one::<i64>("SELECT herald.add_event_listener('rec(herald.event)', 'x', queue => 'q')")
                .unwrap();
        assert!(b > a);
        assert_error(
            "SELECT herald.remove_listener(424242)",
            "listener 424242 does not exist",
        );
        assert_error(
            "SELECT herald.remove_listener(NULL)",
            "listener id must not be NULL",
        );
        assert_error(
            "DELETE FROM herald.event_queue WHERE name = 'q'",
            "event queue \"q\" still has listeners",
        );
    }

    #[pg_test]
    fn handlers_edited_by_hand_or_returning_sets_are_refused() {
        fixture();
        run(
            "CREATE FUNCTION many(e herald.event) RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 $$",
        );
        assert_error(
            "SELECT herald.add_event_listener('many', 'x', queue => 'q')",
            "handler function many(herald.event) must not return a set",
        );
        let l = one::<i64>("SELECT herald.add_event_listener('rec', 'x', queue => 'q')").unwrap();
        run("CREATE FUNCTION wrongsig(i int) RETURNS void LANGUAGE sql AS $$ $$");
        // drain would call it with a herald.event: refused when the listener is edited
        assert_error(
            &format!(
                "UPDATE herald.listener SET handler = 'wrongsig(int)'::regprocedure WHERE id = {l}"
            ),
            "must be a function taking exactly one herald.event",
        );
        assert_error(
            &format!(
                "UPDATE herald.listener SET handler = 'many(herald.event)'::regprocedure WHERE id = {l}"
            ),
            "must be a function taking exactly one herald.event",
        );
        // a valid edit is fine, and the listener still works
        run(
            "CREATE FUNCTION rec2(e herald.event) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO seen (event_id, action) VALUES (e.id, 'rec2') $$",
        );
        run(&format!(
            "UPDATE herald.listener SET handler = 'rec2(herald.event)'::regprocedure WHERE id = {l}"
        ));
        run("SELECT herald.emit('x', 'go')");
        run("SELECT * FROM herald.drain('q')");
        assert_eq!(count("SELECT count(*) FROM seen WHERE action = 'rec2'"), 1);
    }

    #[pg_test]
    fn a_resume_is_logged_with_the_operator_who_made_it() {
        fixture();
        run("UPDATE herald.event_queue SET event_hold_on_error = 1 WHERE name = 'q'");
        run("SELECT herald.add_event_listener('picky', 't', queue => 'q')");
        run("SELECT herald.emit('t', 'boom')");
        run("SELECT * FROM herald.drain('q')");
        run("CREATE ROLE herald_test_ops");
        run("GRANT USAGE ON SCHEMA herald TO herald_test_ops");
        run("GRANT EXECUTE ON FUNCTION herald.resume_queue(text, text) TO herald_test_ops");
        run("SET LOCAL ROLE herald_test_ops");
        run("SELECT herald.resume_queue('q', 'skip')");
        run("RESET ROLE");
        assert_eq!(
            one::<String>("SELECT node FROM herald.event_log WHERE outcome = 'skipped'"),
            Some("herald_test_ops".into())
        );
    }

    #[pg_test]
    fn a_handler_cannot_drain_while_a_lookup_runs() {
        fixture();
        run(
            "CREATE FUNCTION nested(e herald.event) RETURNS void LANGUAGE sql AS
             $$ SELECT herald.drain('q') $$",
        );
        run("SELECT herald.add_event_listener('nested', 'n', queue => 'q')");
        run("SELECT herald.add_event_listener('rec', 'n', queue => 'q')");
        run("SELECT herald.emit('n', 'one')");
        run("SELECT herald.emit('n', 'two')");
        run("SELECT * FROM herald.drain('q')");
        // each event reached `rec` once; the nested drains failed instead of handing the
        // lookup's events out again
        assert_eq!(count("SELECT count(*) FROM seen"), 2);
        assert_eq!(count("SELECT count(DISTINCT event_id) FROM seen"), 2);
        assert_eq!(
            count(
                "SELECT count(*) FROM herald.event_log WHERE outcome = 'failed'
                  AND error LIKE 'herald.drain() cannot be called while a lookup is running%'"
            ),
            2
        );
        // and draining works again afterwards
        run("SELECT herald.emit('t', 'x')");
        run("SELECT * FROM herald.drain('q')");
    }

    #[pg_test]
    fn the_drainer_lock_of_a_queue_is_in_the_queue_key_space() {
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1)");
        let space = one::<i32>("SELECT herald._lock_space('queue')").unwrap();
        assert_eq!(one::<bool>("SELECT herald.claim_queue('q')"), Some(true));
        // the lock a coordinator takes is the one the key space names, on the queue's id
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM pg_locks l JOIN herald.event_queue q ON q.name = 'q'
                  WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                    AND l.classid = {space}::oid AND l.objid = q.id::oid AND l.objsubid = 2"
            )),
            1
        );
        assert_eq!(one::<bool>("SELECT herald.release_queue('q')"), Some(true));
        assert_error(
            "SELECT herald._lock_space('jobs?')",
            "unknown advisory lock space \"jobs?\" | Herald's lock spaces: queue, producers, job, job_managers, job_class, report_group, output, output_workers, lock_decision, lock_waiters, lock_graph.",
        );
    }

    #[pg_test]
    fn emit_checks_its_arguments() {
        assert_error(
            "SELECT herald.emit(NULL, 'x')",
            "event type must not be NULL",
        );
        assert_error(
            "SELECT herald.emit('t', NULL)",
            "event action must not be NULL",
        );
        assert_error(
            "SELECT herald.emit('t', 'x', NULL)",
            "event details must not be NULL",
        );
        assert_error(
            "SELECT herald.emit(' ', 'x')",
            "event type must not be empty",
        );
        assert_error(
            "SELECT herald.emit('t', '')",
            "event action must not be empty",
        );
        assert_error(
            "SELECT herald.emit('JOB', 'x')",
            "reserved for Herald's own events",
        );
        let a = one::<i64>("SELECT herald.emit('invoice', 'created')").unwrap();
        let b = one::<i64>("SELECT herald.emit('invoice', 'created', '{\"n\": 1}')").unwrap();
        assert!(b > a, "event ids increase");
        assert_eq!(
            count("SELECT count(*) FROM herald.event"),
            0,
            "no listener, nothing stored"
        );
    }

    #[pg_test]
    fn queued_events_are_stored_then_handled_in_order_and_acknowledged() {
        fixture();
        let l =
            one::<i64>("SELECT herald.add_event_listener('rec', 'invoice,order', queue => 'q')")
                .unwrap();
        run("SELECT herald.emit('other', 'ignored')");
        let first =
            one::<i64>("SELECT herald.emit('invoice', 'created', '{\"amount\": 5}')").unwrap();
        for i in 0..24 {
            run(&format!(
                "SELECT herald.emit('order', 'placed', '{{\"i\": {i}}}')"
            ));
        }
        let stored = Spi::get_three::<String, String, i64>(&format!(
            "SELECT queue, type, listener FROM herald.event WHERE id = {first}"
        ))
        .unwrap();
        assert_eq!(stored, (Some("q".into()), Some("invoice".into()), Some(l)));
        assert_eq!(count("SELECT count(*) FROM herald.event"), 25);
        assert_eq!(
            count("SELECT backlog FROM herald.queue_status WHERE name = 'q'"),
            25
        );

        // one lookup = event_amount_per_lookup events
        let r = Spi::get_three::<String, i32, bool>(
            "SELECT state, handled, more FROM herald.drain('q', 'test')",
        )
        .unwrap();
        assert_eq!(r, (Some("running".into()), Some(10), Some(true)));
        run("UPDATE herald.event_queue SET event_amount_per_lookup = 100 WHERE name = 'q'");
        let r = Spi::get_three::<String, i32, bool>(
            "SELECT state, handled, more FROM herald.drain('q', 'test')",
        )
        .unwrap();
        assert_eq!(r, (Some("running".into()), Some(15), Some(false)));

        assert_eq!(
            count("SELECT count(*) FROM herald.event"),
            0,
            "handled events are acknowledged"
        );
        assert_eq!(count("SELECT count(*) FROM seen"), 25);
        assert_eq!(
            count("SELECT count(*) FROM (SELECT event_id, lag(event_id) OVER (ORDER BY n) p FROM seen) x WHERE event_id < p"),
            0,
            "handled in emission order"
        );
        assert_eq!(
            one::<String>("SELECT details::text FROM seen ORDER BY n LIMIT 1").unwrap(),
            "{\"amount\": 5}"
        );
        assert_eq!(
            one::<String>("SELECT queue FROM seen LIMIT 1").unwrap(),
            "q"
        );
        assert_eq!(
            count("SELECT handled_count FROM herald.queue_status WHERE name = 'q'"),
            25
        );
        assert_eq!(
            one::<String>("SELECT drained_by FROM herald.queue_status WHERE name = 'q'").unwrap(),
            "test"
        );
        // nothing more to do: await_events times out and says so
        assert_eq!(
            one::<bool>("SELECT herald.await_events('q', 10)"),
            Some(false)
        );
    }

    #[pg_test]
    fn a_stopped_queue_is_not_drained() {
        fixture();
        run("SELECT herald.add_event_listener('rec', 'x', queue => 'q')");
        run("UPDATE herald.event_queue SET event_run = 0 WHERE name = 'q'");
        run("SELECT herald.emit('x', 'a')");
        let r =
            Spi::get_two::<String, i32>("SELECT state, handled FROM herald.drain('q')").unwrap();
        assert_eq!(r, (Some("stopped".into()), Some(0)));
        assert_eq!(
            count("SELECT count(*) FROM herald.event"),
            1,
            "kept for later"
        );
        // a stopped queue is "work" for its drainer, so that it lets go of the queue
        assert_eq!(
            one::<bool>("SELECT herald.await_events('q', 10)"),
            Some(true)
        );
        assert_error(
            "SELECT * FROM herald.drain('nosuch')",
            "event queue \"nosuch\" does not exist",
        );
        assert_error("SELECT * FROM herald.drain(NULL)", "queue must not be NULL");
        assert_eq!(
            one::<bool>("SELECT herald.await_events('nosuch', 10)"),
            Some(true)
        );
    }

    #[pg_test]
    fn await_queues_names_the_queues_with_work_for_their_drainer() {
        fixture();
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('q2', 1), ('q3', 1)");
        run("SELECT herald.add_event_listener('rec', 'x', queue => 'q')");
        run("SELECT herald.add_event_listener('rec', 'y', queue => 'q3')");
        assert_eq!(
            one::<Vec<String>>("SELECT herald.await_queues('{q,q2,q3}', 10)"),
            Some(vec![])
        );
        run("SELECT herald.emit('y', 'a')");
        run("SELECT herald.emit('x', 'a')");
        // In the order asked; a stopped or missing queue is work too (the drainer lets go).
        run("UPDATE herald.event_queue SET event_run = 0 WHERE name = 'q2'");
        assert_eq!(
            one::<Vec<String>>("SELECT herald.await_queues('{nosuch,q,q2,q3}', 0)"),
            Some(vec!["nosuch".into(), "q".into(), "q2".into(), "q3".into()])
        );
        run("SELECT * FROM herald.drain('q')");
        assert_eq!(
            one::<Vec<String>>("SELECT herald.await_queues('{q,q3}', 10)"),
            Some(vec!["q3".into()])
        );
        assert_eq!(
            one::<Vec<String>>("SELECT herald.await_queues('{}', 10)"),
            Some(vec![])
        );
        assert_error(
            "SELECT herald.await_queues(NULL, 10)",
            "queues must not be NULL",
        );
        assert_error(
            "SELECT herald.await_queues('{q,NULL}', 10)",
            "queues must not contain NULL",
        );
    }

    #[pg_test]
    fn fan_out_to_several_listeners_and_wildcards() {
        fixture();
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('q2', 1)");
        let a =
            one::<i64>("SELECT herald.add_event_listener('rec', 'invoice', queue => 'q')").unwrap();
        let b = one::<i64>("SELECT herald.add_event_listener('picky', 'invoice', queue => 'q')")
            .unwrap();
        let c = one::<i64>("SELECT herald.add_event_listener('rec', '*', queue => 'q2')").unwrap();
        run("SELECT herald.emit('invoice', 'created')");
        run("SELECT herald.emit('payment', 'received')");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.event WHERE listener = {a}"
            )),
            1
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.event WHERE listener = {b}"
            )),
            1
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.event WHERE listener = {c}"
            )),
            2
        );
        run("SELECT herald.drain('q')");
        run("SELECT herald.drain('q2')");
        assert_eq!(count("SELECT count(*) FROM seen WHERE queue = 'q'"), 2);
        assert_eq!(count("SELECT count(*) FROM seen WHERE queue = 'q2'"), 2);
        // removing a listener removes its pending events and stops delivery
        run("SELECT herald.emit('invoice', 'again')");
        run(&format!("SELECT herald.remove_listener({b})"));
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.event WHERE listener = {b}"
            )),
            0
        );
        run("SELECT herald.emit('invoice', 'after removal')");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.event WHERE listener = {a}"
            )),
            2
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.event WHERE listener = {b}"
            )),
            0
        );
    }

    #[pg_test]
    fn listeners_added_later_in_the_session_are_seen() {
        fixture();
        run("SELECT herald.emit('late', 'before')"); // loads the (empty) listener cache
        run("SELECT herald.add_event_listener('rec', 'late', queue => 'q')");
        run("SELECT herald.emit('late', 'after')");
        assert_eq!(
            count("SELECT count(*) FROM herald.event WHERE type = 'late'"),
            1
        );
    }

    #[pg_test]
    fn sync_handlers_run_in_the_producing_transaction_and_failures_do_not_abort_it() {
        fixture();
        run("SELECT herald.add_event_listener('picky', 'invoice', sync => true)");
        run("SELECT herald.add_event_listener('rec', 'invoice', sync => true)");
        let ok = one::<i64>("SELECT herald.emit('invoice', 'created')").unwrap();
        assert_eq!(
            count(&format!("SELECT count(*) FROM seen WHERE event_id = {ok}")),
            2
        );
        assert_eq!(
            one::<String>("SELECT queue FROM seen LIMIT 1"),
            None,
            "no queue for sync delivery"
        );

        // the failing handler's effects are rolled back, the other handler still runs,
        // the producer's statement succeeds, and the failure is logged
        let bad = one::<i64>("SELECT herald.emit('invoice', 'boom')").unwrap();
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM seen WHERE event_id = {bad} AND action = 'picky:boom'"
            )),
            0
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM seen WHERE event_id = {bad} AND action = 'boom'"
            )),
            1
        );
        let logged = one::<String>(&format!(
            "SELECT error FROM herald.event_log WHERE event_id = {bad} AND outcome = 'failed'"
        ));
        assert!(logged.unwrap().contains(&format!("cannot handle {bad}")));
        assert_eq!(
            count("SELECT count(*) FROM herald.event"),
            0,
            "sync delivery stores nothing"
        );
    }

    #[pg_test]
    fn hold_on_error_0_records_the_failure_and_goes_on() {
        fixture();
        run("SELECT herald.add_event_listener('picky', 'x', queue => 'q')");
        run("SELECT herald.emit('x', 'a')");
        let bad = one::<i64>("SELECT herald.emit('x', 'boom')").unwrap();
        run("SELECT herald.emit('x', 'c')");
        let r = Spi::get_three::<String, i32, i32>(
            "SELECT state, handled, failed FROM herald.drain('q')",
        )
        .unwrap();
        assert_eq!(r, (Some("running".into()), Some(2), Some(1)));
        assert_eq!(
            count("SELECT count(*) FROM seen"),
            2,
            "the failed handler's effect is rolled back"
        );
        assert_eq!(count("SELECT count(*) FROM herald.event"), 0);
        let q = Spi::get_two::<i64, String>(
            "SELECT failed_count, last_error FROM herald.queue_status WHERE name = 'q'",
        )
        .unwrap();
        assert_eq!(q.0, Some(1));
        assert!(q.1.unwrap().contains(&format!("cannot handle {bad}")));
        assert_eq!(count(&format!("SELECT count(*) FROM herald.event_log WHERE event_id = {bad} AND outcome = 'failed'")), 1);
    }

    #[pg_test]
    fn hold_on_error_1_holds_the_queue_until_resumed_with_retry_or_skip() {
        fixture();
        run("UPDATE herald.event_queue SET event_hold_on_error = 1 WHERE name = 'q'");
        run("SELECT herald.add_event_listener('picky', 'x', queue => 'q')");
        run("SELECT herald.emit('x', 'a')");
        let bad = one::<i64>("SELECT herald.emit('x', 'boom')").unwrap();
        run("SELECT herald.emit('x', 'c')");
        let r = Spi::get_three::<String, i32, i32>(
            "SELECT state, handled, failed FROM herald.drain('q')",
        )
        .unwrap();
        assert_eq!(r, (Some("held".into()), Some(1), Some(0)));
        assert_eq!(
            count("SELECT held_event FROM herald.queue_status WHERE name = 'q'"),
            bad
        );
        assert_eq!(
            one::<String>("SELECT state FROM herald.queue_status WHERE name = 'q'").unwrap(),
            "held"
        );
        // held: further lookups do nothing, and the drainer is not woken for it
        let r =
            Spi::get_two::<String, i32>("SELECT state, handled FROM herald.drain('q')").unwrap();
        assert_eq!(r, (Some("held".into()), Some(0)));
        assert_eq!(
            one::<bool>("SELECT herald.await_events('q', 10)"),
            Some(false)
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.event"),
            2,
            "held event and the one after it wait"
        );

        // retry: the held event is handed out again (and fails again)
        assert_eq!(
            one::<bool>("SELECT herald.resume_queue('q', 'retry')"),
            Some(true)
        );
        assert_eq!(count(&format!("SELECT count(*) FROM herald.event_log WHERE event_id = {bad} AND outcome = 'retried'")), 1);
        let r =
            Spi::get_two::<String, i32>("SELECT state, handled FROM herald.drain('q')").unwrap();
        assert_eq!(r, (Some("held".into()), Some(0)));

        // skip: dropped, recorded, the queue goes on
        assert_eq!(
            one::<bool>("SELECT herald.resume_queue('q', 'skip')"),
            Some(true)
        );
        assert_eq!(count(&format!("SELECT count(*) FROM herald.event_log WHERE event_id = {bad} AND outcome = 'skipped'")), 1);
        assert_eq!(
            count("SELECT skipped_count FROM herald.queue_status WHERE name = 'q'"),
            1
        );
        let r = Spi::get_three::<String, i32, i32>(
            "SELECT state, handled, failed FROM herald.drain('q')",
        )
        .unwrap();
        assert_eq!(r, (Some("running".into()), Some(1), Some(0)));
        assert_eq!(
            count("SELECT count(*) FROM seen WHERE action = 'picky:c'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM seen WHERE action = 'picky:boom'"),
            0
        );

        assert_error(
            "SELECT herald.resume_queue('q')",
            "event queue \"q\" is not held",
        );
        assert_error(
            "SELECT herald.resume_queue('q', 'jump')",
            "unknown resume action \"jump\"",
        );
        assert_error(
            "SELECT herald.resume_queue('nosuch')",
            "event queue \"nosuch\" does not exist",
        );
        assert_error("SELECT herald.resume_queue(NULL)", "queue must not be NULL");
    }

    #[pg_test]
    fn log_levels_write_what_they_promise() {
        fixture();
        run("SELECT herald.add_event_listener('picky', 'x', queue => 'q')");
        for level in 0..=3 {
            run(&format!(
                "UPDATE herald.event_queue SET event_log_level = {level} WHERE name = 'q'"
            ));
            let ok = one::<i64>(&format!(
                "SELECT herald.emit('x', 'fine', '{{\"level\": {level}}}')"
            ))
            .unwrap();
            let bad = one::<i64>("SELECT herald.emit('x', 'boom', '{\"secret\": 1}')").unwrap();
            run("SELECT herald.drain('q')");
            let rows = |id: i64, outcome: &str| {
                count(&format!("SELECT count(*) FROM herald.event_log WHERE event_id = {id} AND outcome = '{outcome}'"))
            };
            let with_details = |id: i64| {
                count(&format!("SELECT count(*) FROM herald.event_log WHERE event_id = {id} AND details IS NOT NULL"))
            };
            assert_eq!(
                rows(ok, "handled"),
                (level >= 2) as i64,
                "level {level}: handled events"
            );
            assert_eq!(
                rows(bad, "failed"),
                (level >= 1) as i64,
                "level {level}: failures"
            );
            assert_eq!(
                with_details(ok) + with_details(bad),
                if level == 3 { 2 } else { 0 },
                "level {level}: details"
            );
        }
        // at level 0 the failure still shows in the queue's status
        assert!(count("SELECT failed_count FROM herald.queue_status WHERE name = 'q'") >= 4);
    }

    #[pg_test]
    fn handlers_that_disappear_are_recorded_as_failures() {
        fixture();
        run("CREATE FUNCTION gone(e herald.event) RETURNS void LANGUAGE sql AS $$ SELECT 1 $$");
        run("SELECT herald.add_event_listener('gone', 'x', queue => 'q')");
        run("SELECT herald.emit('x', 'a')");
        run("DROP FUNCTION gone(herald.event)");
        let r = Spi::get_two::<i32, i32>("SELECT handled, failed FROM herald.drain('q')").unwrap();
        assert_eq!(r, (Some(0), Some(1)));
        assert!(
            one::<String>("SELECT last_error FROM herald.queue_status WHERE name = 'q'")
                .unwrap()
                .contains("no longer exists")
        );
    }

    #[pg_test]
    fn handler_results_of_any_type_and_null_are_accepted() {
        fixture();
        run("CREATE FUNCTION returns_null(e herald.event) RETURNS int LANGUAGE sql AS $$ SELECT NULL::int $$");
        run("SELECT herald.add_event_listener('returns_null', 'x', queue => 'q')");
        run("SELECT herald.emit('x', 'a')");
        let r = Spi::get_two::<i32, i32>("SELECT handled, failed FROM herald.drain('q')").unwrap();
        assert_eq!(r, (Some(1), Some(0)));
    }

    /// Event rows are inserted without the executor: indexes added to the event table by
    /// hand (plain or on an expression) get their entries, before and after invalidations
    /// of the table's cached layout.
    #[pg_test]
    fn event_rows_keep_every_index_of_the_event_table_current() {
        fixture();
        run("SELECT herald.add_event_listener('rec', 'x', queue => 'q')");
        run("SELECT herald.emit('x', 'first')");
        run("ANALYZE herald.event"); // a relcache invalidation of herald.event
        run("SELECT herald.emit('x', 'second')");
        run("CREATE INDEX event_by_action ON herald.event (action)");
        run("SELECT herald.emit('x', 'third')");
        run("CREATE INDEX event_by_lower_action ON herald.event (lower(action))");
        run("SELECT herald.emit('x', 'fourth')");
        run("DROP INDEX herald.event_by_lower_action");
        run("SELECT herald.emit('x', 'fifth')");
        run("SET LOCAL enable_seqscan = off");
        for (action, expected) in [("second", 1), ("third", 1), ("fourth", 1), ("fifth", 1)] {
            assert_eq!(
                count(&format!(
                    "SELECT count(*) FROM herald.event WHERE action = '{action}'"
                )),
                expected,
                "{action} through event_by_action"
            );
        }
        let plan = Spi::connect(|c| {
            c.select(
                "EXPLAIN SELECT count(*) FROM herald.event WHERE action = 'x'",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
        });
        assert!(plan.contains("event_by_action"), "{plan}");
        run("CREATE INDEX event_by_lower_action ON herald.event (lower(action))");
        run("SELECT herald.emit('x', 'sixth')");
        assert_eq!(
            count("SELECT count(*) FROM herald.event WHERE lower(action) = 'sixth'"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM herald.event"), 6);
    }
}
