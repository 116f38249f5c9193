-- The classes with waiting jobs, found by a skip scan of job_waiting_head_idx: one index
-- probe per class, not a pass over every waiting job. (A claim uses it only to find jobs
-- of classes that no longer exist.)
WITH RECURSIVE c (class) AS (
    (SELECT j.class FROM herald.job j
      WHERE j.state OPERATOR(pg_catalog.=) 'CREATED'
      ORDER BY j.class LIMIT 1)
    UNION ALL
    SELECT (SELECT j.class FROM herald.job j
             WHERE j.state OPERATOR(pg_catalog.=) 'CREATED'
               AND j.class OPERATOR(pg_catalog.>) c.class
             ORDER BY j.class LIMIT 1)
      FROM c WHERE c.class IS NOT NULL
)
SELECT c.class FROM c WHERE c.class IS NOT NULL
