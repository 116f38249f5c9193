-- Something for the drainer of queue $1 to do: events in a running, non-held queue, or a
-- stopped or missing queue (so that the drainer notices and lets go).
SELECT COALESCE((
    SELECT q.event_run OPERATOR(pg_catalog.=) 0
        OR (s.held_event IS NULL AND EXISTS (
                SELECT 1 FROM herald.event e
                 WHERE e.queue OPERATOR(pg_catalog.=) q.name
                   AND e.id OPERATOR(pg_catalog.>=) s.scan_from))
      FROM herald.event_queue q
      JOIN herald.queue_state s ON s.queue OPERATOR(pg_catalog.=) q.name
     WHERE q.name OPERATOR(pg_catalog.=) $1), true)
