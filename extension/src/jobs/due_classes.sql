-- Classes with waiting jobs, with their limits from job_class_setting (a built-in class
-- without a row there, like a class that was deleted, is unlimited), found by a skip scan
-- of job_waiting_head_idx: one index probe per class, not a pass over every waiting job,
-- so that a claim costs the same with ten waiting jobs or a million. (Whether a class has
-- a job due now is the claim's own probe.)
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
SELECT c.class, k.max_running, k.wait_timeout
  FROM c
  LEFT JOIN herald.job_class_setting k ON k.name OPERATOR(pg_catalog.=) c.class
 WHERE c.class IS NOT NULL
