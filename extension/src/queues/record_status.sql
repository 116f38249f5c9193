-- Acknowledge (delete) the done events by their ctids ($12) and record a lookup's outcome
-- in one statement; returns how many events were deleted.
--   $1 queue, $2 handled, $3 failed, $4 last error, $5/$6 held event and listener,
--   $7 node, $8 scan_from, $9 mark_id, $10 new mark?, $11 the next xid to be assigned
WITH gone AS (
    DELETE FROM herald.event e
     WHERE e.ctid OPERATOR(pg_catalog.=) ANY ($12)
       AND e.queue OPERATOR(pg_catalog.=) $1
    RETURNING 1)
UPDATE herald.queue_state s
   SET handled_count = s.handled_count OPERATOR(pg_catalog.+) $2,
       failed_count = s.failed_count OPERATOR(pg_catalog.+) $3,
       last_error = COALESCE($4, s.last_error),
       last_error_at = CASE WHEN $4 IS NULL THEN s.last_error_at ELSE pg_catalog.now() END,
       held_event = $5,
       held_listener = $6,
       drained_by = COALESCE($7, s.drained_by),
       last_lookup_at = pg_catalog.now(),
       scan_from = $8,
       mark_id = $9,
       mark_xmax = CASE WHEN $9 IS NULL THEN NULL
                        WHEN $10 THEN $11
                        ELSE s.mark_xmax END
 WHERE s.queue OPERATOR(pg_catalog.=) $1
RETURNING (SELECT pg_catalog.count(*) FROM gone)
