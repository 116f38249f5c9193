-- Herald listeners: cache invalidation and clean-up when captured tables are dropped.
-- Loaded after the Rust functions they call.

-- A listener edited by hand must still name a valid handler: drain calls it with a
-- herald.event, and a function of another signature would be called with the wrong
-- argument. (herald.add_*_listener check the same, with more detailed errors.)
CREATE FUNCTION herald._listener_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_proc p
                    WHERE p.oid = NEW.handler::oid AND p.prokind = 'f' AND p.pronargs = 1
                      AND p.proargtypes[0] = 'herald.event'::regtype AND NOT p.proretset) THEN
        RAISE EXCEPTION 'handler % of listener % must be a function taking exactly one herald.event and returning one value',
                NEW.handler, NEW.id
            USING ERRCODE = 'invalid_function_definition',
                  HINT = 'A handler is a function taking one herald.event, for example: '
                         'CREATE FUNCTION h(e herald.event) RETURNS void LANGUAGE sql AS $h$ ... $h$;';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER listener_check
    BEFORE INSERT OR UPDATE OF handler ON herald.listener
    FOR EACH ROW EXECUTE FUNCTION herald._listener_check();

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

-- Grants on event types change who may receive what: every cache reloads.
CREATE TRIGGER event_type_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON herald.event_type
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
