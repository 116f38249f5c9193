//! In-database tests of data-change capture.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::helpers::*;
    use pgrx::prelude::*;

    /// A table `t`, a sink `seen`, a recording handler `rec` and a queue `q`.
    fn fixture() {
        run("CREATE TABLE seen (n serial, listener bigint, action text, source text, details jsonb)");
        run(
            "CREATE FUNCTION rec(e herald.event) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO seen (listener, action, source, details)
                VALUES (e.listener, e.action, e.source, e.details) $$",
        );
        run("CREATE TABLE t (id int PRIMARY KEY, qty int, note text, tags text[], doc jsonb, pt point)");
        run("INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1)");
    }

    fn details(listener: i64) -> Vec<String> {
        Spi::connect(|c| {
            c.select(&format!("SELECT action || ' ' || details::text FROM seen WHERE listener = {listener} ORDER BY n"), None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap())
                .collect()
        })
    }

    #[pg_test]
    fn the_capture_function_refuses_triggers_it_was_not_made_for() {
        fixture();
        let l = one::<i64>("SELECT herald.add_data_listener('t', 'rec', queue => 'q')").unwrap();
        assert!(l > 0);
        // a statement-level trigger has no rows: it used to crash the backend
        run("CREATE TRIGGER by_hand AFTER INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION herald._capture()");
        assert_error(
            "INSERT INTO t (id, qty) VALUES (1, 1)",
            "herald._capture() must be fired AFTER each row",
        );
        run("DROP TRIGGER by_hand ON t");
        // a BEFORE trigger would swallow the row it returns NULL for
        run("CREATE TRIGGER by_hand BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION herald._capture()");
        assert_error(
            "INSERT INTO t (id, qty) VALUES (2, 2)",
            "herald.add_data_listener() creates the right ones",
        );
        run("DROP TRIGGER by_hand ON t");
        // the real triggers still work, and nothing was lost or half-written
        run("INSERT INTO t (id, qty) VALUES (3, 3)");
        assert_eq!(count("SELECT count(*) FROM t"), 1);
        assert_eq!(
            count("SELECT count(*) FROM herald.event WHERE queue = 'q'"),
            1
        );
    }

    #[pg_test]
    fn every_level_and_action_gets_exactly_what_it_asked_for() {
        fixture();
        let key = one::<i64>("SELECT herald.add_data_listener('t', 'rec', 'INSERT=1,UPDATE=1,DELETE=1', sync => true)").unwrap();
        let diff = one::<i64>("SELECT herald.add_data_listener('t', 'rec', sync => true)").unwrap();
        let full = one::<i64>("SELECT herald.add_data_listener('t', 'rec', 'INSERT=3,UPDATE=3,DELETE=3,TRUNCATE', sync => true)").unwrap();
        let only_delete = one::<i64>(
            "SELECT herald.add_data_listener('t', 'rec', 'INSERT=0,DELETE', sync => true)",
        )
        .unwrap();
        run("INSERT INTO t VALUES (1, 5, 'a', '{x,y}', '{\"k\": [1, 2]}', '(1,2)')");
        run("UPDATE t SET qty = 6 WHERE id = 1");
        run("UPDATE t SET qty = 6 WHERE id = 1"); // changes nothing
        run("DELETE FROM t WHERE id = 1");
        run("TRUNCATE t");
        assert_eq!(
            details(key),
            [
                "INSERT {\"key\": {\"id\": 1}}",
                "UPDATE {\"key\": {\"id\": 1}}",
                "UPDATE {\"key\": {\"id\": 1}}",
                "DELETE {\"key\": {\"id\": 1}}",
            ]
        );
        assert_eq!(
            details(diff),
            [
                "INSERT {\"new\": {\"id\": 1, \"pt\": \"(1,2)\", \"doc\": {\"k\": [1, 2]}, \"qty\": 5, \"note\": \"a\", \"tags\": [\"x\", \"y\"]}}",
                "UPDATE {\"new\": {\"qty\": 6}, \"old\": {\"qty\": 5}}",
                "DELETE {\"old\": {\"id\": 1, \"pt\": \"(1,2)\", \"doc\": {\"k\": [1, 2]}, \"qty\": 6, \"note\": \"a\", \"tags\": [\"x\", \"y\"]}}",
            ],
            "level 2: an update that changes nothing produces no event"
        );
        let f = details(full);
        assert_eq!(
            f.len(),
            5,
            "levels 1 and 3 report an update even when nothing changed"
        );
        assert!(
            f[2].starts_with("UPDATE {\"new\": {\"id\": 1,")
                && f[2].contains("\"old\": {\"id\": 1,"),
            "{}",
            f[2]
        );
        assert_eq!(f[4], "TRUNCATE {}");
        assert_eq!(details(only_delete).len(), 1);
        assert_eq!(
            one::<String>("SELECT source FROM seen LIMIT 1").unwrap(),
            "public.t"
        );
    }

    #[pg_test]
    fn queued_data_events_are_handled_by_a_lookup() {
        fixture();
        let l = one::<i64>("SELECT herald.add_data_listener('t', 'rec', queue => 'q')").unwrap();
        run("INSERT INTO t (id, qty) SELECT g, g FROM generate_series(1, 5) g");
        run("UPDATE t SET qty = qty + 1 WHERE id <= 2");
        assert_eq!(
            count("SELECT count(*) FROM herald.event WHERE type = 'DATA'"),
            7
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.event WHERE action = 'UPDATE'"),
            2
        );
        run("SELECT herald.drain('q')");
        assert_eq!(details(l).len(), 7);
        assert_eq!(count("SELECT count(*) FROM herald.event"), 0);
    }

    #[pg_test]
    fn bad_specs_and_tables_get_clear_errors() {
        fixture();
        for (spec, msg) in [
            ("INSERT=7", "level \"7\" of INSERT must be 0, 1, 2 or 3"),
            ("UPSERT", "unknown action \"UPSERT\""),
            ("INSERT=1,INSERT=2", "action INSERT appears twice"),
            ("", "the events spec is empty"),
            ("INSERT,,DELETE", "has an empty entry"),
            ("INSERT=0,UPDATE=0,DELETE=0", "turns every action off"),
            ("TRUNCATE=3", "TRUNCATE is on"),
            ("INSERT=x", "level \"x\" of INSERT"),
        ] {
            assert_error(
                &format!("SELECT herald.add_data_listener('t', 'rec', '{spec}', queue => 'q')"),
                msg,
            );
        }
        run("CREATE TABLE nopk (a int)");
        assert_error(
            "SELECT herald.add_data_listener('nopk', 'rec', 'INSERT=1', queue => 'q')",
            "has no primary key",
        );
        run("SELECT herald.add_data_listener('nopk', 'rec', 'INSERT=2,DELETE=3', queue => 'q')");
        run("CREATE VIEW v AS SELECT 1 AS a");
        assert_error(
            "SELECT herald.add_data_listener('v', 'rec', queue => 'q')",
            "\"v\" is not a table",
        );
        assert_error(
            "SELECT herald.add_data_listener(NULL, 'rec', queue => 'q')",
            "table must not be NULL",
        );
        assert_error(
            "SELECT herald.add_data_listener('t', 'nope', queue => 'q')",
            "does not exist",
        );
        assert_error(
            "SELECT herald.add_data_listener('t', 'rec', queue => 'nosuch')",
            "event queue \"nosuch\" does not exist",
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.listener WHERE tbl = 't'::regclass"),
            0,
            "nothing half-written"
        );
        assert_eq!(count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND NOT tgisinternal"), 0);
    }

    #[pg_test]
    fn the_trigger_comes_with_the_first_listener_and_goes_with_the_last() {
        fixture();
        let triggers = || {
            count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND NOT tgisinternal")
        };
        let a = one::<i64>("SELECT herald.add_data_listener('t', 'rec', queue => 'q')").unwrap();
        assert_eq!(triggers(), 2);
        let b = one::<i64>("SELECT herald.add_data_listener('t', 'rec', sync => true)").unwrap();
        assert_eq!(triggers(), 2);
        run(&format!("SELECT herald.remove_listener({a})"));
        assert_eq!(triggers(), 2);
        run("INSERT INTO t (id) VALUES (1)");
        assert_eq!(details(b).len(), 1);
        assert_eq!(
            count("SELECT count(*) FROM herald.event"),
            0,
            "the removed listener gets nothing"
        );
        run(&format!("SELECT herald.remove_listener({b})"));
        assert_eq!(triggers(), 0);
        run("INSERT INTO t (id) VALUES (2)");
        assert_eq!(count("SELECT count(*) FROM seen"), 1);
    }

    #[pg_test]
    fn ddl_on_captured_tables_is_handled() {
        fixture();
        let l = one::<i64>(
            "SELECT herald.add_data_listener('t', 'rec', 'INSERT=3,UPDATE,DELETE', sync => true)",
        )
        .unwrap();
        run("INSERT INTO t (id, qty) VALUES (1, 1)");
        run("ALTER TABLE t ADD COLUMN extra int DEFAULT 7");
        run("ALTER TABLE t RENAME COLUMN note TO remark");
        run("ALTER TABLE t DROP COLUMN tags");
        run("INSERT INTO t (id, qty, remark) VALUES (2, 2, 'r')");
        run("UPDATE t SET extra = 8 WHERE id = 1");
        let d = details(l);
        assert!(
            d[1].contains("\"extra\": 7")
                && d[1].contains("\"remark\": \"r\"")
                && !d[1].contains("tags"),
            "{}",
            d[1]
        );
        assert_eq!(
            d[2],
            "UPDATE {\"new\": {\"extra\": 8}, \"old\": {\"extra\": 7}}"
        );
        // TRUNCATE only for listeners that asked for it
        run("TRUNCATE t");
        assert_eq!(
            count("SELECT count(*) FROM seen WHERE action = 'TRUNCATE'"),
            0
        );
        // DROP TABLE: the listeners go away, nothing else breaks
        run("DROP TABLE t");
        assert_eq!(count("SELECT count(*) FROM herald.listener"), 0);
        run("SELECT herald.emit('x', 'still works')");
    }

    #[pg_test]
    fn quoted_names_other_schemas_and_toasted_values() {
        fixture();
        run("CREATE SCHEMA \"Sales Dept\"");
        run("CREATE TABLE \"Sales Dept\".\"Order Lines\" (\"Line Id\" int PRIMARY KEY, body text, c t)");
        let l = one::<i64>("SELECT herald.add_data_listener('\"Sales Dept\".\"Order Lines\"', 'rec', 'INSERT=3,UPDATE=2', sync => true)").unwrap();
        run("INSERT INTO \"Sales Dept\".\"Order Lines\" VALUES (1, repeat('x', 100000), ROW(1, 2, 'n', NULL, NULL, NULL))");
        run("UPDATE \"Sales Dept\".\"Order Lines\" SET c = ROW(1, 3, 'n', NULL, NULL, NULL)");
        assert_eq!(
            one::<String>("SELECT source FROM seen LIMIT 1").unwrap(),
            "\"Sales Dept\".\"Order Lines\""
        );
        assert_eq!(
            count("SELECT length(details->'new'->>'body') FROM seen WHERE action = 'INSERT'"),
            100000
        );
        let d = details(l);
        assert_eq!(d[1], "UPDATE {\"new\": {\"c\": {\"id\": 1, \"pt\": null, \"doc\": null, \"qty\": 3, \"note\": \"n\", \"tags\": null}}, \"old\": {\"c\": {\"id\": 1, \"pt\": null, \"doc\": null, \"qty\": 2, \"note\": \"n\", \"tags\": null}}}",
            "the unchanged TOASTed column is not in the diff");
    }

    #[pg_test]
    fn permissions_are_enforced() {
        fixture();
        run("CREATE ROLE herald_reader");
        run("CREATE ROLE herald_stranger");
        run("GRANT USAGE ON SCHEMA herald TO herald_reader, herald_stranger");
        run("GRANT EXECUTE ON FUNCTION herald.add_data_listener(regclass, text, text, text, boolean) TO herald_reader, herald_stranger");
        run("GRANT EXECUTE ON FUNCTION rec(herald.event) TO herald_reader, herald_stranger");
        run("GRANT SELECT (id, qty) ON t TO herald_reader");
        run("SET ROLE herald_stranger");
        let err = error_of("SELECT herald.add_data_listener('t', 'rec', sync => true)");
        run("RESET ROLE");
        assert!(err.contains("permission denied for table t"), "{err}");
        // column privileges: the reader's events never show what it cannot read
        run("SET ROLE herald_reader");
        let err = error_of("SELECT herald.add_data_listener('t', 'rec', sync => true)");
        run("RESET ROLE");
        assert!(
            err.contains("permission denied for table t"),
            "column SELECT is not table SELECT: {err}"
        );
        run("GRANT SELECT ON t TO herald_reader");
        run("UPDATE herald.event_queue SET listener_roles = '{herald_reader}' WHERE name = 'q'");
        run("SET ROLE herald_reader");
        let l = one::<i64>("SELECT herald.add_data_listener('t', 'rec', queue => 'q')").unwrap();
        run("RESET ROLE");
        run("REVOKE SELECT ON t FROM herald_reader");
        run("GRANT SELECT (id, qty) ON t TO herald_reader");
        run("INSERT INTO t VALUES (1, 5, 'secret', '{s}', '{}', '(0,0)')");
        let d = one::<String>(&format!(
            "SELECT details::text FROM herald.event WHERE listener = {l}"
        ))
        .unwrap();
        assert_eq!(d, "{\"new\": {\"id\": 1, \"qty\": 5}}");
    }

    #[pg_test]
    fn details_are_exactly_what_to_jsonb_makes_of_every_type() {
        fixture();
        run("CREATE DOMAIN positive AS int CHECK (VALUE > 0)");
        run("CREATE TYPE pair AS (a int, b text)");
        run(
            "CREATE TABLE typed (id int PRIMARY KEY, s smallint, b bigint, n numeric, f4 real,
                                 f8 double precision, ok boolean, t text, v varchar(10), c char(4),
                                 j json, jb jsonb, ts timestamptz, d date, iv interval, u uuid,
                                 by bytea, arr int[], pr pair, dom positive, nul text)",
        );
        let l =
            one::<i64>("SELECT herald.add_data_listener('typed', 'rec', 'INSERT=3', sync => true)")
                .unwrap();
        for values in [
            "1, 1, 9007199254740993, 12.500, 1.5, -2.25e-10, true, 'a \"quoted\" \\ text', 'vc', 'ch',
             '{\"x\": [1, {\"y\": null}]}', '{\"k\": {\"z\": 1.0}}', '2026-11-22 10:00+02', '2026-11-22',
             '1 day 2 hours', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', '{1,NULL,3}', '(7,\"x\")', 5, NULL",
            "2, -32768, -9223372036854775808, 'NaN', 'Infinity', '-Infinity', false, '', NULL, NULL,
             'null', '\"str\"', NULL, NULL, NULL, NULL, NULL, '{}', NULL, NULL, NULL",
            "3, 0, 0, '-Infinity', 'NaN', 0, NULL, repeat('long ', 2000), NULL, NULL,
             '[]', '[1, \"two\", [3]]', NULL, NULL, NULL, NULL, NULL, NULL, '(,)', NULL, NULL",
        ] {
            run(&format!("INSERT INTO typed VALUES ({values})"));
        }
        let mismatches = count(&format!(
            "SELECT count(*) FROM seen s JOIN typed r ON r.id = (s.details->'new'->>'id')::int
              WHERE s.listener = {l} AND s.details->'new' IS DISTINCT FROM to_jsonb(r)"
        ));
        let which = one::<String>(&format!(
            "SELECT string_agg(r.id || ':' || k || ' got ' || coalesce(s.details->'new'->k, 'null'::jsonb)::text
                               || ' want ' || coalesce(to_jsonb(r)->k, 'null'::jsonb)::text, '; ')
               FROM seen s JOIN typed r ON r.id = (s.details->'new'->>'id')::int,
                    jsonb_object_keys(to_jsonb(r)) k
              WHERE s.listener = {l} AND (s.details->'new'->k) IS DISTINCT FROM (to_jsonb(r)->k)"
        ));
        assert_eq!(
            mismatches, 0,
            "details differ from to_jsonb(row): {which:?}"
        );
        assert_eq!(
            count(&format!("SELECT count(*) FROM seen WHERE listener = {l}")),
            3
        );
        // and the text forms are identical too (key order, number formatting)
        let differ = count(&format!(
            "SELECT count(*) FROM seen s JOIN typed r ON r.id = (s.details->'new'->>'id')::int
              WHERE s.listener = {l} AND (s.details->'new')::text <> to_jsonb(r)::text"
        ));
        assert_eq!(differ, 0);
    }

    #[pg_test]
    fn partitioned_tables_capture_every_row_once_with_the_parent_as_source() {
        fixture();
        run("CREATE TABLE pt (id int PRIMARY KEY, note text) PARTITION BY RANGE (id)");
        run("CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (100)");
        run("CREATE TABLE pt2 PARTITION OF pt FOR VALUES FROM (100) TO (200)");
        // A partition's own listener first, then the parent's: no trigger name clash.
        let own = one::<i64>(
            "SELECT herald.add_data_listener('pt1', 'rec', 'INSERT,UPDATE,DELETE=1', queue => 'q')",
        )
        .unwrap();
        let parent = one::<i64>(
            "SELECT herald.add_data_listener('pt', 'rec', 'INSERT,UPDATE,DELETE=1', queue => 'q')",
        )
        .unwrap();
        run("INSERT INTO pt VALUES (1, 'through the parent'), (150, 'other partition')");
        run("INSERT INTO pt1 VALUES (2, 'directly')");
        // A partition with another column order, attached after registration.
        run("CREATE TABLE pt3 (note text, id int NOT NULL)");
        run("ALTER TABLE pt ATTACH PARTITION pt3 FOR VALUES FROM (200) TO (300)");
        run("INSERT INTO pt VALUES (250, 'attached later')");
        run("UPDATE pt SET note = 'moved' WHERE id = 250");
        run("DELETE FROM pt WHERE id = 250");
        // Detached: no longer the parent's.
        run("ALTER TABLE pt DETACH PARTITION pt2");
        run("INSERT INTO pt2 VALUES (160, 'detached')");
        run("SELECT herald.drain('q')");
        assert_eq!(
            details(parent),
            vec![
                "INSERT {\"new\": {\"id\": 1, \"note\": \"through the parent\"}}",
                "INSERT {\"new\": {\"id\": 150, \"note\": \"other partition\"}}",
                "INSERT {\"new\": {\"id\": 2, \"note\": \"directly\"}}",
                "INSERT {\"new\": {\"id\": 250, \"note\": \"attached later\"}}",
                "UPDATE {\"new\": {\"note\": \"moved\"}, \"old\": {\"note\": \"attached later\"}}",
                "DELETE {\"key\": {\"id\": 250}}",
            ]
        );
        assert_eq!(
            details(own),
            vec![
                "INSERT {\"new\": {\"id\": 1, \"note\": \"through the parent\"}}",
                "INSERT {\"new\": {\"id\": 2, \"note\": \"directly\"}}",
            ]
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM seen WHERE listener = {parent} AND source = 'public.pt'"
            )),
            6
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM seen WHERE listener = {own} AND source = 'public.pt1'"
            )),
            2
        );
        // Removing the partition's listener keeps the parent's capture, and the other way.
        run(&format!("SELECT herald.remove_listener({own})"));
        run("INSERT INTO pt1 VALUES (3, 'after')");
        run("SELECT herald.drain('q')");
        let own =
            one::<i64>("SELECT herald.add_data_listener('pt1', 'rec', 'INSERT', queue => 'q')")
                .unwrap();
        run(&format!("SELECT herald.remove_listener({parent})"));
        run("INSERT INTO pt1 VALUES (4, 'own only')");
        run("SELECT herald.drain('q')");
        assert_eq!(
            count("SELECT count(*) FROM seen WHERE details->'new'->>'note' = 'after'"),
            1
        );
        assert_eq!(
            count(&format!("SELECT count(*) FROM seen WHERE listener = {own}")),
            1
        );
    }
}
