//! In-database tests of session listeners and `herald.next_event`. Waking across sessions,
//! cancellation and clean-up at session end need several sessions: tests/tests/sessions.rs.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::helpers::*;
    use pgrx::prelude::*;

    fn fixture() {
        run("CREATE TABLE seen (n serial, event_id bigint, type text, action text, details jsonb)");
        run(
            "CREATE FUNCTION rec(e herald.event) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO seen (event_id, type, action, details)
                VALUES (e.id, e.type, e.action, e.details) $$",
        );
        run("CREATE TABLE t (id int PRIMARY KEY, qty int)");
    }

    /// `next_event` as text: `type action details`, or None after the timeout.
    fn next(listener: i64, handle: bool) -> Option<String> {
        next_within(listener, handle, "0")
    }

    fn next_within(listener: i64, handle: bool, timeout: &str) -> Option<String> {
        one::<String>(&format!(
            "SELECT (SELECT e.type || ' ' || e.action || ' ' || e.details::text || ' ' || e.listener
                       FROM herald.next_event({listener}, '{timeout}', {handle}) e
                      WHERE e.id IS NOT NULL)"
        ))
    }

    #[pg_test]
    fn a_session_listener_reads_its_events_in_order_and_handles_them() {
        fixture();
        let id = one::<i64>("SELECT herald.add_event_listener('rec', 'invoice,order')").unwrap();
        assert_eq!(
            one::<String>(&format!(
                "SELECT delivery FROM herald.listener WHERE id = {id}"
            ))
            .unwrap(),
            "session"
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.listener l JOIN herald.session s
                    ON s.pid = l.session_pid AND s.backend_start = l.session_start
                 WHERE l.id = {id} AND s.pid = pg_backend_pid()"
            )),
            1
        );
        run("SELECT herald.emit('invoice', 'created', '{\"no\": 1}')");
        run("SELECT herald.emit('other', 'created', '{\"no\": 2}')");
        run("SELECT herald.emit('order', 'shipped', '{\"no\": 3}')");
        run("SELECT herald.emit('invoice', 'paid', '{\"no\": 4}')");
        assert_eq!(
            next(id, true).unwrap(),
            format!("invoice created {{\"no\": 1}} {id}")
        );
        assert_eq!(
            next(id, false).unwrap(),
            format!("order shipped {{\"no\": 3}} {id}")
        );
        assert_eq!(
            next(id, true).unwrap(),
            format!("invoice paid {{\"no\": 4}} {id}")
        );
        assert_eq!(next(id, true), None, "nothing left: NULL at once");
        // the handler ran for the handled ones only
        assert_eq!(
            one::<String>("SELECT string_agg(action, ',' ORDER BY n) FROM seen").unwrap(),
            "created,paid"
        );
        assert_eq!(count("SELECT count(*) FROM herald.session_event"), 0);
    }

    #[pg_test]
    fn session_data_listeners_get_their_changes() {
        fixture();
        let id =
            one::<i64>("SELECT herald.add_data_listener('t', 'rec', 'INSERT,UPDATE=1')").unwrap();
        run("INSERT INTO t VALUES (1, 5)");
        run("UPDATE t SET qty = 6 WHERE id = 1");
        run("DELETE FROM t");
        assert_eq!(
            next(id, true).unwrap(),
            format!("DATA INSERT {{\"new\": {{\"id\": 1, \"qty\": 5}}}} {id}")
        );
        assert_eq!(
            next(id, true).unwrap(),
            format!("DATA UPDATE {{\"key\": {{\"id\": 1}}}} {id}")
        );
        assert_eq!(next(id, true), None, "DELETE was not asked for");
        run(&format!("SELECT herald.remove_listener({id})"));
        assert_eq!(
            count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND tgname LIKE 'herald%'"),
            0
        );
    }

    #[pg_test]
    fn removing_a_session_listener_drops_its_unread_events() {
        fixture();
        let id = one::<i64>("SELECT herald.add_event_listener('rec', 'invoice')").unwrap();
        run("SELECT herald.emit('invoice', 'created')");
        assert_eq!(count("SELECT count(*) FROM herald.session_event"), 1);
        run(&format!("SELECT herald.remove_listener({id})"));
        assert_eq!(count("SELECT count(*) FROM herald.session_event"), 0);
        assert_error(
            &format!("SELECT herald.next_event({id})"),
            &format!("listener {id} does not exist"),
        );
    }

    #[pg_test]
    fn a_timeout_returns_null_after_waiting_that_long() {
        fixture();
        let id = one::<i64>("SELECT herald.add_event_listener('rec', 'invoice')").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(next_within(id, true, "300 ms"), None);
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(290),
            "returned after {waited:?}, before the timeout"
        );
        // an event that is there is returned at once, whatever the timeout
        run("SELECT herald.emit('invoice', 'created')");
        let started = std::time::Instant::now();
        assert!(next_within(id, true, "1 hour").is_some());
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    #[pg_test]
    fn next_event_checks_its_arguments_and_the_owner() {
        fixture();
        run("INSERT INTO herald.event_queue (name) VALUES ('q')");
        let queued =
            one::<i64>("SELECT herald.add_event_listener('rec', 'a', queue => 'q')").unwrap();
        let sync =
            one::<i64>("SELECT herald.add_event_listener('rec', 'a', sync => true)").unwrap();
        let mine = one::<i64>("SELECT herald.add_event_listener('rec', 'a')").unwrap();
        assert_error(
            &format!("SELECT herald.next_event({queued})"),
            "is not a session listener: it delivers into queue \"q\"",
        );
        assert_error(
            &format!("SELECT herald.next_event({sync})"),
            "is not a session listener: it delivers synchronously",
        );
        assert_error(
            "SELECT herald.next_event(NULL)",
            "listener id must not be NULL",
        );
        assert_error(
            &format!("SELECT herald.next_event({mine}, '-1 s')"),
            "timeout must not be negative",
        );
        assert_error(
            &format!("SELECT herald.next_event({mine}, '0', NULL)"),
            "handle must not be NULL",
        );
        // a listener of another session (as if registered by pid 1)
        run(&format!(
            "UPDATE herald.listener SET session_pid = 1 WHERE id = {mine}"
        ));
        assert_error(
            &format!("SELECT herald.next_event({mine})"),
            &format!("listener {mine} belongs to another session (pid 1)"),
        );
    }

    #[pg_test]
    fn a_failing_handler_reaches_the_caller_and_the_event_stays_unread() {
        fixture();
        run(
            "CREATE FUNCTION fussy(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'cannot handle %', e.action; END $$",
        );
        let id = one::<i64>("SELECT herald.add_event_listener('fussy', 'invoice')").unwrap();
        run("SELECT herald.emit('invoice', 'created')");
        assert_error(
            &format!("SELECT herald.next_event({id}, '0')"),
            "cannot handle created",
        );
        assert_eq!(count("SELECT count(*) FROM herald.session_event"), 1);
        assert_eq!(
            next(id, false).unwrap(),
            format!("invoice created {{}} {id}"),
            "read without the handler"
        );
        run("DROP FUNCTION fussy(herald.event)");
        run("SELECT herald.emit('invoice', 'again')");
        assert_error(
            &format!("SELECT herald.next_event({id}, '0')"),
            &format!("the handler function of listener {id} no longer exists"),
        );
    }

    #[pg_test]
    fn listeners_of_sessions_that_are_gone_are_skipped_and_removed() {
        fixture();
        let id = one::<i64>("SELECT herald.add_data_listener('t', 'rec')").unwrap();
        // as after a crash: the unlogged session row is gone
        run("DELETE FROM herald.session");
        run("SELECT herald._invalidate_listeners()");
        run("INSERT INTO t VALUES (1, 1)");
        assert_eq!(count("SELECT count(*) FROM herald.session_event"), 0);
        // the next registration removes the dead listener and its trigger goes
        let other =
            one::<i64>("SELECT herald.add_event_listener('rec', 'x', sync => true)").unwrap();
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.listener WHERE id = {id}"
            )),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND tgname LIKE 'herald%'"),
            0
        );
        assert!(other > id);
    }
}
