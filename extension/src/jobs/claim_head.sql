-- The job of class $1 to start next, if the class has room: the oldest waiting due job of
-- each concurrency key, if fewer than $2 jobs of that key run (running jobs older than the
-- class's wait timeout $3 no longer count). NULL $2: the class is unlimited. With what
-- running it needs of its type (NULL when the type is gone) and of itself.
-- (Due by clock_timestamp(), not now(): a claim's transaction may have begun before a
-- submit that committed since, or before the previous job's run in run_job_and_claim;
-- such a job is due, and skipping it would start a later one first.)
SELECT w.id, t.runner, t.target, t.newthread, t.owner::pg_catalog.oid,
       t.before_completion::pg_catalog.oid, t.after_completion::pg_catalog.oid,
       t.compensate::pg_catalog.oid, t.autofinish, t.gobackonerror, t.max_attempts,
       t.retry_delay, w.submitted_by::pg_catalog.oid, w.attempts
  FROM (SELECT DISTINCT ON (j.concurrency_key) j.id, j.concurrency_key, j.type,
               j.submitted_by, j.attempts
          FROM herald.job j
         WHERE j.state OPERATOR(pg_catalog.=) 'CREATED' AND j.class OPERATOR(pg_catalog.=) $1
           AND j.run_after OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
         ORDER BY j.concurrency_key, j.id) w
  LEFT JOIN herald.job_type t ON t.name OPERATOR(pg_catalog.=) w.type
 WHERE $2 IS NULL
    OR (SELECT pg_catalog.count(*) FROM herald.job r
         WHERE r.state OPERATOR(pg_catalog.=) ANY ('{STARTED,FINISHED}'::pg_catalog.text[]) AND r.class OPERATOR(pg_catalog.=) $1
           AND r.concurrency_key IS NOT DISTINCT FROM w.concurrency_key
           AND ($3 IS NULL OR r.started_at OPERATOR(pg_catalog.>)
                (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) $3)))
       OPERATOR(pg_catalog.<) $2
 ORDER BY w.id
 LIMIT 1
