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

    #[pg_test]
    fn small_wrong_results_are_right() {
        fixture();
        // A renamed schema shows in the next event's source, in the same session.
        run("CREATE SCHEMA shop");
        run("CREATE TABLE shop.item (id int PRIMARY KEY, big text)");
        run("SELECT herald.add_data_listener('shop.item', 'rec', 'INSERT,UPDATE=2,DELETE=1', sync => true)");
        run("INSERT INTO shop.item VALUES (1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g))");
        run("ALTER SCHEMA shop RENAME TO store");
        run(
            "CREATE FUNCTION src(e herald.event) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO seen (action, details) VALUES (e.source, e.details) $$",
        );
        run("SELECT herald.add_data_listener('store.item', 'src', 'INSERT', sync => true)");
        run("INSERT INTO store.item VALUES (2, 'x')");
        assert_eq!(
            count("SELECT count(*) FROM seen WHERE action = 'store.item'"),
            1
        );
        // A value rewritten to itself is no change at level 2.
        run("DELETE FROM seen");
        run("UPDATE store.item SET big = big || '' WHERE id = 1");
        assert_eq!(count("SELECT count(*) FROM seen"), 0);
        run("UPDATE store.item SET big = big || 'y' WHERE id = 1");
        assert_eq!(count("SELECT count(*) FROM seen"), 1);
        // Key-level events of a table that lost its primary key are withheld, with the
        // reason, not sent with an empty key.
        run("ALTER TABLE store.item DROP CONSTRAINT item_pkey");
        run("DELETE FROM store.item WHERE id = 2");
        assert_eq!(
            count("SELECT count(*) FROM seen WHERE details = '{\"key\": {}}'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.event_log WHERE outcome = 'withheld' AND error LIKE '%no primary key any more%'"),
            1
        );
        // Emitted types are trimmed like listener types; so is the reserved-type check.
        run("DELETE FROM seen");
        run("SELECT herald.add_event_listener('rec', 'invoice', sync => true)");
        run("SELECT herald.emit(' invoice ', 'trimmed')");
        assert_eq!(
            count("SELECT count(*) FROM seen WHERE action = 'trimmed'"),
            1
        );
        assert_error("SELECT herald.emit('SYSTEM ', 'x')", "reserved");
        // Queue names: not blank, not huge; claims need a name.
        assert_error(
            "INSERT INTO herald.event_queue (name) VALUES ('   ')",
            "needs a name",
        );
        assert_error(
            "INSERT INTO herald.event_queue (name) VALUES (repeat('q', 5000))",
            "is too long",
        );
        assert_error("SELECT herald.claim_queue(NULL)", "must not be NULL");
        assert_error("SELECT herald.release_queue(NULL)", "must not be NULL");
        // A huge argument is not echoed back in full.
        let err = error_of("SELECT herald.add_event_listener(repeat('h', 1000000), 'x')");
        assert!(
            err.len() < 1000,
            "{} characters: {}",
            err.len(),
            &err[..200]
        );
        let err =
            error_of("SELECT herald.add_event_listener('rec', 'x', queue => repeat('q', 1000000))");
        assert!(
            err.len() < 1000,
            "{} characters: {}",
            err.len(),
            &err[..200]
        );
    }
}
