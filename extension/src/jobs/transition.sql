-- One guarded state change of a job: $1 job, $2 new state, $3 the states it may leave,
-- $4 node (for STARTED), $5 result (FINISHED), $6 error, $7 delay before a retry (CREATED),
-- $8 true: only if this backend holds the job's run (claim_pid), $9 true: STARTED to
-- COMPLETED through FINISHED in this one change (a type without completion hooks; the
-- FINISHED columns are set as well), $10 true: someone listens to JOB events.
-- Returns the job as the JOB event's details (NULL without $10), its type and params,
-- whether its end may let another job start or has a mail to send (its class is limited,
-- it has a notify_email; a built-in class without a row in job_class_setting is
-- unlimited), its type's runner, its node, and whether it declares resources.
UPDATE herald.job j SET
       state = $2,
       node = CASE WHEN $2 OPERATOR(pg_catalog.=) 'STARTED' THEN $4
                   WHEN $2 OPERATOR(pg_catalog.=) 'CREATED' THEN NULL ELSE j.node END,
       attempts = CASE WHEN $2 OPERATOR(pg_catalog.=) 'STARTED'
                       THEN j.attempts OPERATOR(pg_catalog.+) 1 ELSE j.attempts END,
       started_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'STARTED' THEN pg_catalog.clock_timestamp()
                         WHEN $2 OPERATOR(pg_catalog.=) 'CREATED' THEN NULL ELSE j.started_at END,
       finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'FINISHED' OR $9 THEN pg_catalog.clock_timestamp()
                          WHEN $2 OPERATOR(pg_catalog.=) ANY ('{CREATED,STARTED}'::pg_catalog.text[]) THEN NULL ELSE j.finished_at END,
       ended_at = CASE WHEN $2 OPERATOR(pg_catalog.=) ANY ('{COMPLETED,STARTERROR,FINISHERROR,ABORTED}'::pg_catalog.text[])
                       THEN pg_catalog.clock_timestamp() END,
       claim_pid = CASE WHEN $2 OPERATOR(pg_catalog.=) 'STARTED' THEN pg_catalog.pg_backend_pid() END,
       result = CASE WHEN $2 OPERATOR(pg_catalog.=) 'FINISHED' OR $9 THEN $5
                     WHEN $2 OPERATOR(pg_catalog.=) ANY ('{CREATED,STARTED}'::pg_catalog.text[]) THEN NULL ELSE j.result END,
       error = CASE WHEN $6 IS NOT NULL THEN $6
                    WHEN $2 OPERATOR(pg_catalog.=) ANY ('{STARTED,FINISHED,COMPLETED}'::pg_catalog.text[]) THEN NULL ELSE j.error END,
       run_after = CASE WHEN $2 OPERATOR(pg_catalog.=) 'CREATED'
                        THEN pg_catalog.now() OPERATOR(pg_catalog.+) COALESCE($7, '0'::pg_catalog.interval)
                        ELSE j.run_after END,
       wait_alerted_at = CASE WHEN $2 OPERATOR(pg_catalog.=) ANY ('{CREATED,STARTED}'::pg_catalog.text[]) THEN NULL ELSE j.wait_alerted_at END,
       long_alerted_at = CASE WHEN $2 OPERATOR(pg_catalog.=) ANY ('{CREATED,STARTED}'::pg_catalog.text[]) THEN NULL ELSE j.long_alerted_at END,
       -- An outcome makes its mail due; a retry right after a failure takes it back (the
       -- failure was not the outcome).
       mail_state = CASE WHEN j.notify_email IS NOT NULL
                          AND $2 OPERATOR(pg_catalog.=) ANY ('{COMPLETED,STARTERROR,FINISHERROR,ABORTED}'::pg_catalog.text[])
                         THEN 'due'
                         WHEN $2 OPERATOR(pg_catalog.=) 'CREATED' AND j.mail_state OPERATOR(pg_catalog.=) 'due'
                         THEN NULL ELSE j.mail_state END,
       mail_attempts = CASE WHEN $2 OPERATOR(pg_catalog.=) ANY ('{COMPLETED,STARTERROR,FINISHERROR,ABORTED}'::pg_catalog.text[])
                            THEN 0 ELSE j.mail_attempts END,
       mail_next_at = CASE WHEN $2 OPERATOR(pg_catalog.=) ANY ('{COMPLETED,STARTERROR,FINISHERROR,ABORTED}'::pg_catalog.text[])
                           THEN NULL ELSE j.mail_next_at END
 WHERE j.id OPERATOR(pg_catalog.=) $1
   AND j.state OPERATOR(pg_catalog.=) ANY ($3)
   AND (NOT $8 OR j.claim_pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())
RETURNING CASE WHEN $10 THEN pg_catalog.jsonb_build_object(
              'job', j.id, 'type', j.type, 'class', j.class, 'state', j.state,
              'node', j.node, 'attempt', j.attempts, 'concurrency_key', j.concurrency_key,
              'submitted_by', j.submitted_by::text, 'started_at', j.started_at,
              'ended_at', COALESCE(j.ended_at, j.finished_at),
              'duration_ms', pg_catalog.round(pg_catalog.date_part('epoch',
                  COALESCE(j.ended_at, j.finished_at, pg_catalog.clock_timestamp())
                  OPERATOR(pg_catalog.-) j.started_at) OPERATOR(pg_catalog.*) 1000),
              'error', j.error, 'result', j.result) END,
          j.type,
          j.params,
          j.notify_email IS NOT NULL
          OR EXISTS (SELECT 1 FROM herald.job_class_setting c
                      WHERE c.name OPERATOR(pg_catalog.=) j.class AND c.max_running IS NOT NULL),
          (SELECT t.runner FROM herald.job_type t WHERE t.name OPERATOR(pg_catalog.=) j.type),
          j.node,
          j.resources IS NOT NULL
