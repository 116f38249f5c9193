-- When the next due job of class $1 fell due (run_after, id), by one probe of
-- job_waiting_head_idx: an order the primary key cannot give, so that no plan walks the
-- key past ended jobs. No row: nothing of the class is due.
SELECT j.run_after, j.id
  FROM herald.job j
 WHERE j.state OPERATOR(pg_catalog.=) 'CREATED' AND j.class OPERATOR(pg_catalog.=) $1
   AND j.run_after OPERATOR(pg_catalog.<=) pg_catalog.now()
 ORDER BY j.run_after, j.id
 LIMIT 1
