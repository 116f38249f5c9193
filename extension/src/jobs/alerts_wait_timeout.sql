-- WAIT_TIMEOUT alerts due now, each marked so that it fires once per run: a running job of a
-- limited class that has run longer than the class's wait_timeout while a job of its class
-- and key waits.
WITH due AS (
    UPDATE herald.job r SET wait_alerted_at = pg_catalog.clock_timestamp()
      FROM herald.job_class c
     WHERE c.name OPERATOR(pg_catalog.=) r.class
       AND c.max_running IS NOT NULL AND c.wait_timeout IS NOT NULL
       AND r.state OPERATOR(pg_catalog.=) ANY ('{STARTED,FINISHED}'::pg_catalog.text[])
       AND r.wait_alerted_at IS NULL
       AND r.started_at OPERATOR(pg_catalog.<=) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) c.wait_timeout)
       AND EXISTS (SELECT 1 FROM herald.job w
                    WHERE w.state OPERATOR(pg_catalog.=) 'CREATED'
                      AND w.class OPERATOR(pg_catalog.=) r.class
                      AND w.concurrency_key IS NOT DISTINCT FROM r.concurrency_key
                      AND w.run_after OPERATOR(pg_catalog.<=) pg_catalog.now())
    RETURNING 'WAIT_TIMEOUT'::pg_catalog.text AS action, r.id, r.type, r.class, r.node,
              r.started_at, r.concurrency_key, c.wait_timeout AS limit_
)
SELECT a.action, a.type,
       pg_catalog.jsonb_build_object(
           'job', a.id, 'type', a.type, 'class', a.class, 'node', a.node,
           'concurrency_key', a.concurrency_key, 'started_at', a.started_at,
           'running_for', (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.started_at)::pg_catalog.text,
           'limit', a.limit_::pg_catalog.text)
  FROM due a
 ORDER BY a.id
