-- The next due outcome mail (oldest job first), now 'sending' by node $1: committed by
-- the caller before it calls the mail server, so that no mail is ever sent twice. With
-- what the mail tells: the job, its outcome, duration, error and result.
UPDATE herald.job j SET mail_state = 'sending', mail_node = $1,
       mail_attempts = j.mail_attempts OPERATOR(pg_catalog.+) 1
 WHERE j.id OPERATOR(pg_catalog.=) (
           SELECT d.id FROM herald.job d
            WHERE d.mail_state OPERATOR(pg_catalog.=) ANY ('{due,retry}'::pg_catalog.text[])
              AND (d.mail_next_at IS NULL OR d.mail_next_at OPERATOR(pg_catalog.<=) pg_catalog.now())
            ORDER BY d.id
            LIMIT 1
              FOR UPDATE SKIP LOCKED)
   AND j.mail_state OPERATOR(pg_catalog.=) ANY ('{due,retry}'::pg_catalog.text[])
RETURNING j.id, j.notify_email, j.mail_attempts,
          pg_catalog.jsonb_build_object(
              'job', j.id, 'type', j.type, 'class', j.class, 'state', j.state,
              'node', j.node, 'attempts', j.attempts, 'submitted_by', j.submitted_by::text,
              'submitted_at', j.submitted_at, 'started_at', j.started_at,
              'ended_at', j.ended_at,
              'duration_ms', pg_catalog.round(pg_catalog.date_part('epoch',
                  j.ended_at OPERATOR(pg_catalog.-) j.started_at) OPERATOR(pg_catalog.*) 1000),
              'error', j.error, 'result', j.result)
