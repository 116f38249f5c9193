-- Record an operator's resume of a held queue in the event log, deleting the held event
-- when it is skipped. $1 queue, $2/$3 held event and listener, $4 outcome, $5 skip?,
-- $6 the operator (the role that called resume_queue, not the extension owner)
WITH gone AS (
    DELETE FROM herald.event e
     WHERE $5 AND e.queue OPERATOR(pg_catalog.=) $1
       AND e.id OPERATOR(pg_catalog.=) $2 AND e.listener OPERATOR(pg_catalog.=) $3
 RETURNING e.*)
INSERT INTO herald.event_log (queue, event_id, listener, handler, type, action, outcome, error, details, node)
SELECT $1, $2, $3, l.handler::text, e.type, e.action, $4, q.last_error, e.details,
       $6
  FROM herald.queue_state q
  LEFT JOIN herald.listener l ON l.id OPERATOR(pg_catalog.=) $3
  LEFT JOIN (SELECT * FROM gone UNION ALL
             SELECT * FROM herald.event e2
              WHERE NOT $5 AND e2.queue OPERATOR(pg_catalog.=) $1
                AND e2.id OPERATOR(pg_catalog.=) $2
                AND e2.listener OPERATOR(pg_catalog.=) $3) e ON true
 WHERE q.queue OPERATOR(pg_catalog.=) $1
