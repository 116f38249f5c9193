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

-- A role that Herald's tables name (a listener's owner, an event type's owner or grantee,
-- a queue's listener role) cannot be dropped, as with any object it owns or privilege it
-- holds: each such role holds EXECUTE on herald._role_references(), and PostgreSQL records
-- that grant in pg_shdepend. DROP ROLE then fails with "privileges for function
-- herald._role_references()" until the role's listeners, types and queue permissions are
-- removed; no listener is orphaned and no stale role oid can be reused. The function does
-- nothing; herald._sync_role_references() keeps the grants in step with the tables.
CREATE FUNCTION herald._role_references() RETURNS void LANGUAGE sql AS $$ $$;
COMMENT ON FUNCTION herald._role_references() IS
    'Granted to every role Herald''s tables name, so that DROP ROLE cannot leave them dangling.';

CREATE FUNCTION herald._sync_role_references() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    marker CONSTANT regprocedure := 'herald._role_references()';
    r regrole;
BEGIN
    FOR r IN
        WITH named AS (
            SELECT l.owner::oid AS role FROM herald.listener l
            UNION SELECT t.owner::oid FROM herald.event_type t
            UNION SELECT g::oid FROM herald.event_type t, unnest(t.granted_to) g
            UNION SELECT g::oid FROM herald.event_queue q, unnest(q.listener_roles) g)
        SELECT n.role::regrole FROM named n JOIN pg_roles o ON o.oid = n.role
         WHERE n.role NOT IN (SELECT a.grantee FROM pg_proc p, aclexplode(p.proacl) a
                               WHERE p.oid = marker)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', marker, r);
    END LOOP;
    FOR r IN
        SELECT a.grantee::regrole FROM pg_proc p, aclexplode(p.proacl) a
         WHERE p.oid = marker AND a.grantee <> p.proowner AND a.grantee <> 0
           AND a.grantee NOT IN (SELECT l.owner::oid FROM herald.listener l
                                 UNION SELECT t.owner::oid FROM herald.event_type t
                                 UNION SELECT g::oid FROM herald.event_type t, unnest(t.granted_to) g
                                 UNION SELECT g::oid FROM herald.event_queue q, unnest(q.listener_roles) g)
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %s', marker, r);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER listener_roles
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON herald.listener
    FOR EACH STATEMENT EXECUTE FUNCTION herald._sync_role_references();
CREATE TRIGGER event_type_roles
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON herald.event_type
    FOR EACH STATEMENT EXECUTE FUNCTION herald._sync_role_references();
CREATE TRIGGER event_queue_roles
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON herald.event_queue
    FOR EACH STATEMENT EXECUTE FUNCTION herald._sync_role_references();

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
