-- Herald 0.2.0 -> 0.3.0: session listeners (neither queue nor sync) and herald.next_event.
-- tests/tests/upgrade.rs checks that an upgraded database matches a fresh install.

-- complain if the script is sourced in psql rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION herald UPDATE" to load this file. \quit

ALTER TABLE herald.listener ADD COLUMN session_start timestamptz;

-- Queue names in the event table's key compare bytewise (rewrites herald.event and its
-- primary key: on a large backlog this takes a while, under an exclusive lock). The
-- queue_status view reads the column, so it is recreated, keeping the grants made on it.
CREATE TEMP TABLE herald_queue_status_acl AS
    SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = 'herald.queue_status'::regclass;
DROP VIEW herald.queue_status;
ALTER TABLE herald.event ALTER COLUMN queue SET DATA TYPE text COLLATE "C";
CREATE VIEW herald.queue_status AS
SELECT q.name,
       CASE WHEN s.held_event IS NOT NULL THEN 'held'
            WHEN q.event_run = 1 THEN 'running'
            ELSE 'stopped' END AS state,
       q.event_run,
       q.event_amount_per_lookup,
       q.event_hold_on_error,
       q.event_log_level,
       (SELECT count(*) FROM herald.event e
         WHERE e.queue = q.name AND e.id >= s.scan_from) AS backlog,
       (SELECT min(e.created_at) FROM herald.event e
         WHERE e.queue = q.name AND e.id >= s.scan_from) AS oldest_event_at,
       (SELECT a.application_name
          FROM pg_catalog.pg_locks l
          JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                              WHERE d.datname = pg_catalog.current_database())
           AND l.classid = 1213353028::oid AND l.objid = q.id::oid AND l.objsubid = 2
         LIMIT 1) AS drainer,
       s.drained_by,
       s.last_lookup_at,
       s.held_event,
       s.last_error,
       s.last_error_at,
       s.handled_count,
       s.failed_count,
       s.skipped_count
  FROM herald.event_queue q
  JOIN herald.queue_state s ON s.queue = q.name;
COMMENT ON VIEW herald.queue_status IS
    'Queues with their backlog and the coordinator connection (application_name) draining them.';
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable
               FROM herald_queue_status_acl s, pg_catalog.aclexplode(s.relacl) a
              WHERE a.grantee <> a.grantor LOOP
        EXECUTE pg_catalog.format('GRANT %s ON herald.queue_status TO %s%s', g.privilege_type,
                CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
DROP TABLE herald_queue_status_acl;

CREATE UNLOGGED TABLE herald.session (
    pid           integer     NOT NULL,
    backend_start timestamptz NOT NULL,
    role          regrole     NOT NULL,
    PRIMARY KEY (pid, backend_start)
);
COMMENT ON TABLE herald.session IS
    'Sessions that own session listeners; a row disappears when its session ends.';

CREATE UNLOGGED TABLE herald.session_event (
    listener   bigint      NOT NULL,
    id         bigint      NOT NULL,
    type       text        NOT NULL,
    action     text        NOT NULL,
    source     text,
    details    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (listener, id)
);
COMMENT ON TABLE herald.session_event IS
    'Unread events of session listeners, taken in id order by herald.next_event().';

CREATE FUNCTION herald.next_event(listener bigint, timeout interval DEFAULT NULL,
                                  handle boolean DEFAULT true)
RETURNS herald.event LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'herald_next_event';
COMMENT ON FUNCTION herald.next_event(bigint, interval, boolean) IS
    'Wait for the next event of one of this session''s listeners (NULL after timeout); '
    'runs its handler when handle is true.';
REVOKE ALL ON FUNCTION herald.next_event(bigint, interval, boolean) FROM PUBLIC;

-- Dropping a captured table also removes the unread events of its session listeners.
CREATE OR REPLACE FUNCTION herald._on_drop() RETURNS event_trigger
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

-- Producers skip the commit-time wake-up probe for stopped queues, so starting or stopping
-- a queue refreshes every backend's listener cache.
CREATE OR REPLACE FUNCTION herald._event_queue_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
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
