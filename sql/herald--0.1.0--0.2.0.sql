-- Herald 0.1.0 -> 0.2.0: data-change capture (herald.add_data_listener).
-- tests/tests/upgrade.rs checks that an upgraded database matches a fresh 0.2.0 install.

-- complain if the script is sourced in psql rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION herald UPDATE" to load this file. \quit

ALTER TABLE herald.listener ADD COLUMN tbl regclass;   -- data listeners: the captured table
CREATE INDEX listener_tbl_idx ON herald.listener (tbl);

CREATE FUNCTION herald._capture() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'herald_capture';
COMMENT ON FUNCTION herald._capture() IS 'Herald''s data-change capture trigger (created by add_data_listener).';

CREATE FUNCTION herald.add_data_listener(
    tbl regclass, handler text, events text DEFAULT 'INSERT,UPDATE,DELETE',
    queue text DEFAULT NULL, sync boolean DEFAULT false)
RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'add_data_listener_wrapper';
COMMENT ON FUNCTION herald.add_data_listener(regclass, text, text, text, boolean) IS
    'Listen to data changes of a table; returns the listener id.';

-- Dropping a captured table removes its data listeners (and their pending events).
CREATE FUNCTION herald._on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone bigint[];
BEGIN
    SELECT array_agg(l.id) INTO gone
      FROM herald.listener l
     WHERE l.tbl IS NOT NULL
       AND l.tbl::oid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() d
                           WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0);
    IF gone IS NOT NULL THEN
        DELETE FROM herald.event e WHERE e.listener = ANY (gone);
        DELETE FROM herald.listener l WHERE l.id = ANY (gone);
    END IF;
END
$$;
CREATE EVENT TRIGGER herald_on_drop ON sql_drop EXECUTE FUNCTION herald._on_drop();

REVOKE ALL ON FUNCTION herald._capture(), herald._on_drop(),
                       herald.add_data_listener(regclass, text, text, text, boolean) FROM PUBLIC;
