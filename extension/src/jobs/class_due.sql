-- The next due waiting job of class $1, if any: one probe of job_waiting_head_idx, whose
-- order (run_after, id) no other path gives, so that the plan stays this probe whatever
-- the statistics say (a limited class's own claim query may scan the class's waiting jobs).
SELECT j.id
  FROM herald.job j
 WHERE j.state OPERATOR(pg_catalog.=) 'CREATED' AND j.class OPERATOR(pg_catalog.=) $1
   AND j.run_after OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
 ORDER BY j.run_after, j.id
 LIMIT 1
