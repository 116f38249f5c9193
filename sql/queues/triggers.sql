-- Herald event queues: checks, wake-ups, the drainer claim and the status view. Loaded
-- after the Rust functions they call.

------------------------------------------------------------------------------------------
-- Event queue settings: clear errors for bad input, wake-ups for changes.
------------------------------------------------------------------------------------------
CREATE FUNCTION herald._event_queue_check() RETURNS trigger
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

CREATE TRIGGER event_queue_check
    BEFORE INSERT OR UPDATE OR DELETE ON herald.event_queue
    FOR EACH ROW EXECUTE FUNCTION herald._event_queue_check();

-- A change of settings wakes the queue's drainer (it re-reads them before its next lookup)
-- and tells every coordinator to look at the set of running queues.
CREATE FUNCTION herald._event_queue_changed() RETURNS trigger
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

CREATE TRIGGER event_queue_changed
    AFTER INSERT OR UPDATE OR DELETE ON herald.event_queue
    FOR EACH ROW EXECUTE FUNCTION herald._event_queue_changed();

------------------------------------------------------------------------------------------
-- Coordinator API: the drainer lock of a queue is a session-level advisory lock.
------------------------------------------------------------------------------------------
CREATE FUNCTION herald.claim_queue(queue text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue IS NULL THEN
        RAISE EXCEPTION 'queue must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN coalesce((SELECT pg_try_advisory_lock(herald._lock_space('queue'), q.id)
                       FROM herald.event_queue q WHERE q.name = queue), false);
END
$$;
COMMENT ON FUNCTION herald.claim_queue(text) IS
    'Try to become the drainer of a queue for the rest of this session (coordinators only).';

CREATE FUNCTION herald.release_queue(queue text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue IS NULL THEN
        RAISE EXCEPTION 'queue must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN coalesce((SELECT pg_advisory_unlock(herald._lock_space('queue'), q.id)
                       FROM herald.event_queue q WHERE q.name = queue), false);
END
$$;

------------------------------------------------------------------------------------------
-- Monitoring.
------------------------------------------------------------------------------------------
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
COMMENT ON VIEW herald.queue_status IS
    'Queues with their backlog and the coordinator connection (application_name) draining them.';
