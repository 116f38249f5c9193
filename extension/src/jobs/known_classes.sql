-- The job classes that have a row in job_class_setting, with their limit, and whether a
-- claim should look at them: unlimited ones always, limited ones only with a due waiting
-- job, found by one ordered probe of job_waiting_head_idx each (as class_due.sql: an order
-- no other path gives, so that the plan stays that probe whatever the statistics say).
SELECT s.name, s.max_running,
       s.max_running IS NULL
       OR (SELECT j.id FROM herald.job j
            WHERE j.state OPERATOR(pg_catalog.=) 'CREATED' AND j.class OPERATOR(pg_catalog.=) s.name
              AND j.run_after OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
            ORDER BY j.run_after, j.id
            LIMIT 1) IS NOT NULL
  FROM herald.job_class_setting s
