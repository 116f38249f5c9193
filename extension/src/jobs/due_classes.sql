-- Classes with waiting due jobs, the one waiting longest first, with their limits (a job
-- whose class was deleted counts as unlimited).
SELECT j.class, c.max_running, c.wait_timeout
  FROM herald.job j
  LEFT JOIN herald.job_class c ON c.name OPERATOR(pg_catalog.=) j.class
 WHERE j.state OPERATOR(pg_catalog.=) 'CREATED'
   AND j.run_after OPERATOR(pg_catalog.<=) pg_catalog.now()
 GROUP BY j.class, c.max_running, c.wait_timeout
 ORDER BY pg_catalog.min(j.id)
