-- A queue's settings and floor, locking its state row for the lookup ($1: the queue).
SELECT q.event_amount_per_lookup, q.event_hold_on_error, q.event_log_level,
       q.event_run, s.held_event IS NOT NULL, s.scan_from, s.mark_id,
       COALESCE(pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())
                OPERATOR(pg_catalog.>=) s.mark_xmax, false), q.id
  FROM herald.queue_state s
  JOIN herald.event_queue q ON q.name OPERATOR(pg_catalog.=) s.queue
 WHERE s.queue OPERATOR(pg_catalog.=) $1
   FOR NO KEY UPDATE OF s
