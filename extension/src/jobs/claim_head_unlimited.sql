-- The job of unlimited class $1 to start next: the waiting job due longest that no other
-- claim is taking now (their row locks are skipped, so concurrent claimers take the next
-- ones instead of colliding on the head) and that this claim may take: of one of the
-- runners $2 (NULL: any), and newthread unless $3 (inline). An unlimited class promises no
-- order, so a job that does not match is passed over, not waited for. A job whose type is
-- gone matches any claim (its run fails and ends it). With what running it needs of its
-- type (NULL when the type is gone) and of itself (with the resources it declares). ($4, $5): start after this
-- (run_after, id), where this backend's last claim of the class was, so that the probe
-- does not step again over the index entries of the jobs claimed since the last vacuum
-- (NULL: from the start).
SELECT j.id, t.runner, t.target, t.newthread, t.owner::pg_catalog.oid,
       t.before_completion::pg_catalog.oid, t.after_completion::pg_catalog.oid,
       t.compensate::pg_catalog.oid, t.autofinish, t.gobackonerror, t.max_attempts,
       t.retry_delay, j.submitted_by::pg_catalog.oid, j.attempts, j.run_after, j.resources
  FROM herald.job j
  LEFT JOIN herald.job_type t ON t.name OPERATOR(pg_catalog.=) j.type
 WHERE j.state OPERATOR(pg_catalog.=) 'CREATED' AND j.class OPERATOR(pg_catalog.=) $1
   AND j.run_after OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
   AND (j.run_after, j.id) OPERATOR(pg_catalog.>)
       (COALESCE($4, '-infinity'::pg_catalog.timestamptz), COALESCE($5, 0::pg_catalog.int8))
   -- (still unlimited in this statement's snapshot: a limit set a moment ago holds at once)
   AND NOT EXISTS (SELECT 1 FROM herald.job_class_setting c
                    WHERE c.name OPERATOR(pg_catalog.=) $1 AND c.max_running IS NOT NULL)
   AND (t.name IS NULL
        OR (($2 IS NULL OR t.runner OPERATOR(pg_catalog.=) ANY ($2)) AND ($3 OR t.newthread)))
 ORDER BY j.run_after, j.id
 LIMIT 1
   FOR UPDATE OF j SKIP LOCKED
