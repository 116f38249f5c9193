-- Which of the queues $1 (held by one drainer connection) have something for their drainer
-- to do: the set-based form of has_work.sql, with the same meaning per queue (events in a
-- running, non-held queue, or a stopped or missing queue, so that the drainer lets go).
SELECT COALESCE(pg_catalog.array_agg(w.name ORDER BY w.ord), '{}')
  FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS w(name, ord)
 WHERE COALESCE((
    SELECT q.event_run OPERATOR(pg_catalog.=) 0
        OR (s.held_event IS NULL AND EXISTS (
                SELECT 1 FROM herald.event e
                 WHERE e.queue OPERATOR(pg_catalog.=) q.name
                   AND e.id OPERATOR(pg_catalog.>=) s.scan_from))
      FROM herald.event_queue q
      JOIN herald.queue_state s ON s.queue OPERATOR(pg_catalog.=) q.name
     WHERE q.name OPERATOR(pg_catalog.=) w.name), true)
