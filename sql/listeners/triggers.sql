-- Herald listeners: cache invalidation and clean-up when captured tables are dropped.
-- Loaded after the Rust functions they call.

-- Any change to listeners (through the API or by hand) invalidates every backend's
-- listener cache at commit.
CREATE FUNCTION herald._listener_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM herald._invalidate_listeners();
    RETURN NULL;
END
$$;

CREATE TRIGGER listener_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON herald.listener
    FOR EACH STATEMENT EXECUTE FUNCTION herald._listener_changed();

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
        DELETE FROM herald.session_event e WHERE e.listener = ANY (gone);
        DELETE FROM herald.listener l WHERE l.id = ANY (gone);
    END IF;
END
$$;
CREATE EVENT TRIGGER herald_on_drop ON sql_drop EXECUTE FUNCTION herald._on_drop();
