-- LONG_RUNNING alerts due now, each marked so that it fires once per run: a job running
-- longer than its class's alert_after.
WITH due AS (
    UPDATE herald.job r SET long_alerted_at = pg_catalog.clock_timestamp()
      FROM herald.job_class c
     WHERE c.name OPERATOR(pg_catalog.=) r.class AND c.alert_after IS NOT NULL
       AND r.state OPERATOR(pg_catalog.=) ANY ('{STARTED,FINISHED}'::pg_catalog.text[])
       AND r.long_alerted_at IS NULL
       AND r.started_at OPERATOR(pg_catalog.<=) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) c.alert_after)
    RETURNING 'LONG_RUNNING'::pg_catalog.text AS action, r.id, r.type, r.class, r.node,
              r.started_at, r.concurrency_key, c.alert_after AS limit_
)
SELECT a.action, a.type,
       pg_catalog.jsonb_build_object(
           'job', a.id, 'type', a.type, 'class', a.class, 'node', a.node,
           'concurrency_key', a.concurrency_key, 'started_at', a.started_at,
           'running_for', (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.started_at)::pg_catalog.text,
           'limit', a.limit_::pg_catalog.text)
  FROM due a
 ORDER BY a.id
