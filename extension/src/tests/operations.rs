//! In-database tests of the correctness defects of issue #10 (operations): cancels,
//! orphan events, and the smaller wrong results. The races between sessions are in the
//! end-to-end suite (tests/tests/operations.rs).
#[pgrx::pg_schema]
mod tests {
    use crate::tests::helpers::*;
    use pgrx::prelude::*;

    fn fixture() {
        run("CREATE TABLE seen (n serial, action text, details jsonb)");
        run(
            "CREATE FUNCTION rec(e herald.event) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO seen (action, details) VALUES (e.action, e.details) $$",
        );
        run(
            "CREATE FUNCTION cancels(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN
                  IF e.action = 'cancel' THEN
                    RAISE EXCEPTION 'canceling statement due to user request' USING ERRCODE = 'query_canceled';
                  END IF;
                  INSERT INTO seen (action) VALUES (e.action);
                END $$",
        );
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1)");
    }

    #[pg_test]
    fn a_cancel_in_a_handler_cancels_the_whole_lookup() {
        fixture();
        run("SELECT herald.create_event_type('t')");
        run("SELECT herald.add_event_listener('cancels', 't', queue => 'q')");
        run("SELECT herald.emit('t', 'one')");
        run("SELECT herald.emit('t', 'cancel')");
        run("SELECT herald.emit('t', 'three')");
        let err = error_of("SELECT herald.drain('q')");
        assert!(err.contains("canceling statement"), "{err}");
        // Nothing of the lookup stayed: no effect, no log line, every event still queued.
        assert_eq!(count("SELECT count(*) FROM seen"), 0);
        assert_eq!(count("SELECT count(*) FROM herald.event_log"), 0);
        assert_eq!(
            count("SELECT count(*) FROM herald.event WHERE queue = 'q'"),
            3
        );
    }

    #[pg_test]
    fn a_cancel_in_a_sync_handler_cancels_the_producer() {
        fixture();
        run("SELECT herald.add_event_listener('cancels', 't', sync => true)");
        let err = error_of("SELECT herald.emit('t', 'cancel')");
        assert!(err.contains("canceling statement"), "{err}");
        run("SELECT herald.emit('t', 'fine')");
        assert_eq!(count("SELECT count(*) FROM seen"), 1);
    }

    #[pg_test]
    fn a_handler_that_deletes_its_own_queue_does_not_wedge_it() {
        fixture();
        run(
            "CREATE FUNCTION leaves(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN
                  PERFORM herald.remove_listener(e.listener);
                  DELETE FROM herald.event_queue WHERE name = e.queue;
                END $$",
        );
        run("SELECT herald.add_event_listener('leaves', 't', queue => 'q')");
        run("SELECT herald.emit('t', 'go')");
        assert_eq!(
            one::<String>("SELECT state FROM herald.drain('q')").as_deref(),
            Some("stopped")
        );
        assert_eq!(count("SELECT count(*) FROM herald.event_queue"), 0);
        assert_eq!(count("SELECT count(*) FROM herald.event"), 0);
    }

    #[pg_test]
    fn removing_the_listener_a_queue_is_held_at_releases_it() {
        fixture();
        run("UPDATE herald.event_queue SET event_hold_on_error = 1");
        let l =
            one::<i64>("SELECT herald.add_event_listener('cancels', 't', queue => 'q')").unwrap();
        run("SELECT herald.add_event_listener('rec', 't', queue => 'q')");
        run(
            "CREATE OR REPLACE FUNCTION cancels(e herald.event) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'no'; END $$",
        );
        run("SELECT herald.emit('t', 'x')");
        assert_eq!(
            one::<String>("SELECT state FROM herald.drain('q')").as_deref(),
            Some("held")
        );
        run(&format!("SELECT herald.remove_listener({l})"));
        assert_eq!(
            one::<String>("SELECT state FROM herald.queue_status").as_deref(),
            Some("running")
        );
        run("SELECT herald.drain('q')");
        assert_eq!(count("SELECT count(*) FROM seen"), 1);
    }
}
