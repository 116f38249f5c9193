-- The job of limited class $1 to start next, if the class has room: the oldest waiting due
-- job of each concurrency key, if fewer than the class's max_running jobs of that key run
-- (running jobs older than its wait_timeout no longer count). The limits are read here,
-- in the statement's own snapshot, so that a limit changed a moment ago holds at once. No
-- row if the class is no longer limited (the next claim takes it as unlimited). With what
-- running it needs of its type (NULL when the type is gone) and of itself (with the
-- resources it declares).
-- (Due by clock_timestamp(), not now(): a claim's transaction may have begun before a
-- submit that committed since, or before the previous job's run in run_job_and_claim;
-- such a job is due, and skipping it would start a later one first.)
SELECT w.id, t.runner, t.target, t.newthread, t.owner::pg_catalog.oid,
       t.before_completion::pg_catalog.oid, t.after_completion::pg_catalog.oid,
       t.compensate::pg_catalog.oid, t.autofinish, t.gobackonerror, t.max_attempts,
       t.retry_delay, w.submitted_by::pg_catalog.oid, w.attempts,
       NULL::pg_catalog.timestamptz, w.resources
  FROM (SELECT DISTINCT ON (j.concurrency_key) j.id, j.concurrency_key, j.type,
               j.submitted_by, j.attempts, j.resources
          FROM herald.job j
         WHERE j.state OPERATOR(pg_catalog.=) 'CREATED' AND j.class OPERATOR(pg_catalog.=) $1
           AND j.run_after OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
         ORDER BY j.concurrency_key, j.id) w
  CROSS JOIN (SELECT c.max_running, c.wait_timeout FROM herald.job_class_setting c
               WHERE c.name OPERATOR(pg_catalog.=) $1 AND c.max_running IS NOT NULL) k
  LEFT JOIN herald.job_type t ON t.name OPERATOR(pg_catalog.=) w.type
 WHERE (SELECT pg_catalog.count(*) FROM herald.job r
         WHERE r.state OPERATOR(pg_catalog.=) ANY ('{STARTED,FINISHED}'::pg_catalog.text[]) AND r.class OPERATOR(pg_catalog.=) $1
           AND r.concurrency_key IS NOT DISTINCT FROM w.concurrency_key
           AND (k.wait_timeout IS NULL OR r.started_at OPERATOR(pg_catalog.>)
                (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) k.wait_timeout)))
       OPERATOR(pg_catalog.<) k.max_running
 ORDER BY w.id
 LIMIT 1
