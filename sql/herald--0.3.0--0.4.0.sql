-- Herald 0.3.0 -> 0.4.0.
-- Layout: the advisory-lock key spaces are defined once, in Rust, and SQL asks
-- herald._lock_space() for them. Listeners edited by hand are checked like registered ones
-- (herald._listener_check), and a queue's id (the key of its drainer lock) can no longer
-- be changed.
-- Privileges (docs/privileges.md): event types with grants, queue listener_roles, events
-- withheld from listeners whose owners may not have them, roles named by Herald kept from
-- DROP ROLE.
-- Operations (docs/operations.md): pg_dump keeps queues, listeners, types, pending events
-- and the log; queue deletion waits for producers; stricter queue names; capture triggers
-- of partitioned tables renamed.
-- tests/tests/upgrade.rs checks that an upgraded database matches a fresh install.

-- complain if the script is sourced in psql rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION herald UPDATE" to load this file. \quit

CREATE FUNCTION herald._lock_space("name" text) RETURNS integer
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_lock_space_wrapper';
REVOKE ALL ON FUNCTION herald._lock_space(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION herald._lock_space(text) TO PUBLIC;

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

-- functions are not open to PUBLIC (as in a fresh install)
REVOKE ALL ON FUNCTION herald._listener_check() FROM PUBLIC;

-- Events withheld from a listener whose owner may no longer read them are logged as such.
ALTER TABLE herald.event_log DROP CONSTRAINT event_log_outcome;
ALTER TABLE herald.event_log ADD CONSTRAINT event_log_outcome
    CHECK (outcome IN ('handled', 'failed', 'held', 'retried', 'skipped', 'withheld'));
COMMENT ON TABLE herald.event_log IS
    'What happened to events: failures (event_log_level >= 1), every handled event (>= 2), '
    'with details (3); operator retries and skips, and events withheld from a listener whose '
    'owner may not read them, are always recorded.';

-- Attaching a listener to a queue needs the queue's permission (listener_roles), and
-- listening to a user event type needs its owner's grant (herald.event_type). Existing
-- listeners keep working: each queue allows the owners of the listeners it has, and each
-- type they listen to is declared, owned by the extension's owner (a Herald administrator)
-- and granted to those owners. '*' listeners of roles that are not administrators have
-- their events withheld until an administrator runs herald.grant_listen('*', role).
ALTER TABLE herald.event_queue ADD COLUMN listener_roles regrole[] NOT NULL DEFAULT '{}';
UPDATE herald.event_queue q
   SET listener_roles = (SELECT array_agg(DISTINCT l.owner) FROM herald.listener l
                          WHERE l.queue = q.name)
 WHERE EXISTS (SELECT 1 FROM herald.listener l WHERE l.queue = q.name);

CREATE TABLE herald.event_type (
    name       text PRIMARY KEY
        CONSTRAINT event_type_name_not_empty CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    owner      regrole NOT NULL,
    granted_to regrole[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE herald.event_type IS
    'User event types and the roles that may listen to them; use herald.create_event_type(), '
    'herald.grant_listen() and herald.revoke_listen().';
INSERT INTO herald.event_type (name, owner, granted_to)
SELECT t.name, CURRENT_USER::regrole, array_agg(DISTINCT l.owner)
  FROM herald.listener l, unnest(l.event_types) AS t(name)
 WHERE l.kind = 'event' AND t.name <> '*'
 GROUP BY t.name;

CREATE FUNCTION herald._unlistenable(role oid, types text[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.name
      FROM unnest(types) AS t(name)
     WHERE NOT (
           pg_has_role(role, (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'herald'),
                       'USAGE')
        OR EXISTS (SELECT 1 FROM herald.event_type et
                    WHERE et.name IN (t.name, '*')
                      AND (pg_has_role(role, et.owner::oid, 'USAGE')
                           OR EXISTS (SELECT 1 FROM unnest(et.granted_to) g
                                       WHERE pg_has_role(role, g::oid, 'USAGE')))))
     LIMIT 1
$$;

CREATE TRIGGER event_type_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON herald.event_type
    FOR EACH STATEMENT EXECUTE FUNCTION herald._listener_changed();

CREATE FUNCTION herald.create_event_type(name text, owner regrole DEFAULT NULL) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'create_event_type_wrapper';
COMMENT ON FUNCTION herald.create_event_type(text, regrole) IS
    'Declare a user event type; its owner decides who may listen to it (herald.grant_listen).';
CREATE FUNCTION herald.drop_event_type("name" text) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'drop_event_type_wrapper';
CREATE FUNCTION herald.grant_listen(event_type text, grantee regrole) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'grant_listen_wrapper';
COMMENT ON FUNCTION herald.grant_listen(text, regrole) IS
    'Let a role (and its members) listen to an event type; ''*'' grants every type.';
CREATE FUNCTION herald.revoke_listen(event_type text, grantee regrole) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'revoke_listen_wrapper';
COMMENT ON FUNCTION herald.revoke_listen(text, regrole) IS
    'Take back a role''s right to listen to an event type.';
REVOKE ALL ON FUNCTION herald._unlistenable(oid, text[]), herald.create_event_type(text, regrole),
    herald.drop_event_type(text), herald.grant_listen(text, regrole),
    herald.revoke_listen(text, regrole) FROM PUBLIC;

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

REVOKE ALL ON FUNCTION herald._role_references(), herald._sync_role_references() FROM PUBLIC;
-- Grant the marker to every role named today.
UPDATE herald.event_queue SET listener_roles = listener_roles WHERE false;

-- Deleting a queue waits for producers that may still commit events into it (without
-- making new producers wait behind it).
CREATE FUNCTION herald._wait_for_producers(queue_id integer) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_wait_for_producers_wrapper';
REVOKE ALL ON FUNCTION herald._wait_for_producers(integer) FROM PUBLIC;
CREATE OR REPLACE FUNCTION herald._event_queue_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- Wait for producers that may still commit events into the queue, then drop them.
        PERFORM herald._wait_for_producers(OLD.id);
        DELETE FROM herald.event e WHERE e.queue = OLD.name;
        PERFORM pg_notify('herald_queues', OLD.name);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO herald.queue_state (queue) VALUES (NEW.name);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.event_run IS DISTINCT FROM OLD.event_run THEN
        PERFORM herald._invalidate_listeners();   -- producers cache whether a queue runs
    END IF;
    PERFORM herald._wake_queue(NEW.id);
    PERFORM pg_notify('herald_queues', NEW.name);
    RETURN NEW;
END
$$;

-- pg_dump keeps queues, listeners (not session listeners), event types, pending events,
-- the log and their sequences (docs/operations.md, "Backup and restore").
SELECT pg_catalog.pg_extension_config_dump('herald.event_queue', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_queue_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('herald.listener',
                                           'WHERE delivery OPERATOR(pg_catalog.<>) ''session''');
SELECT pg_catalog.pg_extension_config_dump('herald.listener_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_type', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_log', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_log_id_seq', '');

-- queue_status finds the drainer lock through herald._lock_space(), and shows a queue whose
-- state row is missing (restored with triggers disabled).
CREATE OR REPLACE VIEW herald.queue_status AS
SELECT q.name,
       CASE WHEN s.held_event IS NOT NULL THEN 'held'
            WHEN q.event_run = 1 THEN 'running'
            ELSE 'stopped' END AS state,
       q.event_run,
       q.event_amount_per_lookup,
       q.event_hold_on_error,
       q.event_log_level,
       (SELECT count(*) FROM herald.event e
         WHERE e.queue = q.name AND e.id >= coalesce(s.scan_from, 0)) AS backlog,
       (SELECT min(e.created_at) FROM herald.event e
         WHERE e.queue = q.name AND e.id >= coalesce(s.scan_from, 0)) AS oldest_event_at,
       (SELECT a.application_name
          FROM pg_catalog.pg_locks l
          JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                              WHERE d.datname = pg_catalog.current_database())
           AND l.classid = herald._lock_space('queue')::oid AND l.objid = q.id::oid AND l.objsubid = 2
         LIMIT 1) AS drainer,
       s.drained_by,
       s.last_lookup_at,
       s.held_event,
       s.last_error,
       s.last_error_at,
       coalesce(s.handled_count, 0) AS handled_count,
       coalesce(s.failed_count, 0) AS failed_count,
       coalesce(s.skipped_count, 0) AS skipped_count
  FROM herald.event_queue q
  -- LEFT: a queue restored with triggers disabled gets its state row at its first lookup.
  LEFT JOIN herald.queue_state s ON s.queue = q.name;

-- Queue settings: the id can no longer be changed; names are not blank and have at most 63
-- characters (new queues). Claim and release use herald._lock_space() and refuse NULL
-- instead of returning it.
CREATE OR REPLACE FUNCTION herald._event_queue_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM herald.listener l WHERE l.queue = OLD.name) THEN
            RAISE EXCEPTION 'event queue "%" still has listeners', OLD.name
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = 'Remove them first: SELECT herald.remove_listener(id) FROM herald.listener WHERE queue = '
                             || quote_literal(OLD.name) || ';';
        END IF;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.name IS DISTINCT FROM OLD.name THEN
        RAISE EXCEPTION 'event queue "%" cannot be renamed', OLD.name
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Create a queue with the new name and register the listeners on it.';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the id of event queue "%" cannot be changed', OLD.name
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'It keys the queue''s drainer lock: a new id would let a second coordinator drain the queue.';
    END IF;
    IF NEW.name IS NULL OR btrim(NEW.name) = '' THEN
        RAISE EXCEPTION 'an event queue needs a name'
            USING ERRCODE = 'not_null_violation',
                  HINT = 'INSERT INTO herald.event_queue (name) VALUES (''MyEventQueue'');';
    END IF;
    IF TG_OP = 'INSERT' AND length(NEW.name) > 63 THEN
        RAISE EXCEPTION 'event queue name "%..." is too long (% characters)', left(NEW.name, 20), length(NEW.name)
            USING ERRCODE = 'name_too_long',
                  HINT = 'A queue name has at most 63 characters, like an identifier.';
    END IF;
    IF NEW.event_amount_per_lookup IS NULL OR NEW.event_amount_per_lookup NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'event_amount_per_lookup of queue "%" must be between 1 and 10000, not %',
                NEW.name, coalesce(NEW.event_amount_per_lookup::text, 'NULL')
            USING ERRCODE = 'check_violation',
                  HINT = 'It is how many events one lookup reads and handles; the default is 10.';
    END IF;
    IF NEW.event_hold_on_error IS NULL OR NEW.event_hold_on_error NOT IN (0, 1) THEN
        RAISE EXCEPTION 'event_hold_on_error of queue "%" must be 0 or 1, not %',
                NEW.name, coalesce(NEW.event_hold_on_error::text, 'NULL')
            USING ERRCODE = 'check_violation',
                  HINT = '0 records a failure and goes on; 1 holds the queue at the failing event.';
    END IF;
    IF NEW.event_log_level IS NULL OR NEW.event_log_level NOT BETWEEN 0 AND 3 THEN
        RAISE EXCEPTION 'event_log_level of queue "%" must be between 0 and 3, not %',
                NEW.name, coalesce(NEW.event_log_level::text, 'NULL')
            USING ERRCODE = 'check_violation',
                  HINT = '0: nothing, 1: failures, 2: every handled event, 3: with details.';
    END IF;
    IF NEW.event_run IS NULL OR NEW.event_run NOT IN (0, 1) THEN
        RAISE EXCEPTION 'event_run of queue "%" must be 0 (stopped) or 1 (running), not %',
                NEW.name, coalesce(NEW.event_run::text, 'NULL')
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM herald.event_queue q WHERE q.name = NEW.name) THEN
        RAISE EXCEPTION 'event queue "%" already exists', NEW.name
            USING ERRCODE = 'unique_violation',
                  HINT = 'Change its settings with UPDATE herald.event_queue SET ... WHERE name = '
                         || quote_literal(NEW.name) || ';';
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE FUNCTION herald.claim_queue(queue text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue IS NULL THEN
        RAISE EXCEPTION 'queue must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN coalesce((SELECT pg_try_advisory_lock(herald._lock_space('queue'), q.id)
                       FROM herald.event_queue q WHERE q.name = queue), false);
END
$$;
CREATE OR REPLACE FUNCTION herald.release_queue(queue text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue IS NULL THEN
        RAISE EXCEPTION 'queue must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN coalesce((SELECT pg_advisory_unlock(herald._lock_space('queue'), q.id)
                       FROM herald.event_queue q WHERE q.name = queue), false);
END
$$;

-- Capture triggers of partitioned tables carry the table's oid in their names, so that a
-- partition can have triggers of its own next to the clones of its parent's.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgname, c.oid, c.oid::regclass AS rel
               FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
              WHERE c.relkind = 'p' AND tg.tgparentid = 0
                AND tg.tgfoid = 'herald._capture()'::regprocedure
                AND tg.tgname IN ('herald_capture', 'herald_capture_truncate')
    LOOP
        EXECUTE format('ALTER TRIGGER %I ON %s RENAME TO %I', t.tgname, t.rel, t.tgname || '_' || t.oid);
    END LOOP;
END
$$;
