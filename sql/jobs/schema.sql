-- Herald schema, jobs: tables. Loaded by CREATE EXTENSION after the sessions schema and
-- before the Rust functions of extension/src/jobs/.
--
-- A running job's claim is the session-level advisory lock
-- (herald._lock_space('job'), job id mod 2^32) held by the coordinator connection that
-- runs it: a node that dies loses its claims with its connections, and that, not a timer,
-- is how Herald finds its jobs (herald.rescue_jobs).

------------------------------------------------------------------------------------------
-- Job classes: how many jobs of a class may run at once, cluster-wide. DBAs tune them with
-- plain SQL on the view herald.job_class; 'default' and 'posting' always exist.
--
-- The view shows the built-in classes with their defaults until someone changes them, and
-- every class someone made or changed, which lives in herald.job_class_setting. Only that
-- table is dumped: a restore (whole or --data-only) brings back exactly what users set,
-- and never collides with the built-in rows a new CREATE EXTENSION has.
------------------------------------------------------------------------------------------
CREATE TABLE herald.job_class_setting (
    name         text PRIMARY KEY
        CONSTRAINT job_class_name_not_empty CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    -- NULL: unlimited. 0 pauses the class: nothing new starts.
    max_running  integer
        CONSTRAINT job_class_max_running_not_negative CHECK (max_running OPERATOR(pg_catalog.>=) 0),
    -- A running job of a full class that has run this long no longer holds its slot: the
    -- next waiting job may start beside it (and a WAIT_TIMEOUT alert fires once).
    wait_timeout interval
        CONSTRAINT job_class_wait_timeout_positive CHECK (wait_timeout OPERATOR(pg_catalog.>) '0'),
    -- A job running longer fires a LONG_RUNNING alert once.
    alert_after  interval
        CONSTRAINT job_class_alert_after_positive CHECK (alert_after OPERATOR(pg_catalog.>) '0')
);
COMMENT ON TABLE herald.job_class_setting IS
    'Job classes made or changed by users; read and change them through herald.job_class.';
SELECT pg_catalog.pg_extension_config_dump('herald.job_class_setting', '');

CREATE VIEW herald.job_class AS
SELECT s.name, s.max_running, s.wait_timeout, s.alert_after,
       s.name OPERATOR(pg_catalog.=) ANY ('{default,posting}'::pg_catalog.text[]) AS builtin
  FROM herald.job_class_setting s
UNION ALL
SELECT b.name, b.max_running, b.wait_timeout, b.alert_after, true
  FROM (VALUES ('default'::pg_catalog.text, NULL::integer, NULL::pg_catalog.interval,
                '4 hours'::pg_catalog.interval),
               ('posting', NULL, '10 minutes', '10 minutes')) b (name, max_running, wait_timeout, alert_after)
 WHERE NOT EXISTS (SELECT 1 FROM herald.job_class_setting s WHERE s.name OPERATOR(pg_catalog.=) b.name);
COMMENT ON VIEW herald.job_class IS
    'Herald job classes: max_running (NULL: unlimited) holds cluster-wide, waiting jobs start '
    'in submission order; UPDATE herald.job_class SET max_running = 1 WHERE name = ''posting'' '
    'serializes posting runs. INSERT, UPDATE and DELETE work as on a table.';

-- SECURITY DEFINER: whoever may change the view (herald_ops, say) changes the settings
-- table behind it, and nothing else.
CREATE FUNCTION herald._job_class_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.builtin
       AND (TG_OP = 'DELETE' OR NEW.name IS DISTINCT FROM OLD.name) THEN
        RAISE EXCEPTION 'job class "%" is built in and cannot be deleted or renamed', OLD.name
            USING ERRCODE = '42809',
                  HINT = 'Change its max_running, wait_timeout and alert_after instead.';
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND (TG_OP = 'DELETE' OR NEW.name IS DISTINCT FROM OLD.name)
       AND EXISTS (SELECT 1 FROM herald.job_type t WHERE t.class = OLD.name) THEN
        RAISE EXCEPTION 'job class "%" is used by job types', OLD.name
            USING ERRCODE = '2BP01',
                  HINT = 'Drop those types first (herald.drop_job_type()).';
    END IF;
    IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM herald.job_class c WHERE c.name = NEW.name) THEN
        RAISE EXCEPTION 'job class "%" already exists', NEW.name
            USING ERRCODE = '23505', HINT = 'Change it with UPDATE herald.job_class.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM herald.job_class_setting s WHERE s.name = OLD.name;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM herald.job_class_setting s WHERE s.name = OLD.name;
    END IF;
    INSERT INTO herald.job_class_setting (name, max_running, wait_timeout, alert_after)
    VALUES (NEW.name, NEW.max_running, NEW.wait_timeout, NEW.alert_after);
    NEW.builtin := NEW.name IN ('default', 'posting');
    RETURN NEW;
END
$$;
CREATE TRIGGER job_class_write INSTEAD OF INSERT OR UPDATE OR DELETE ON herald.job_class
    FOR EACH ROW EXECUTE FUNCTION herald._job_class_write();

------------------------------------------------------------------------------------------
-- Job types: what a job runs, as whom, and how. Made with herald.create_job_type().
------------------------------------------------------------------------------------------
CREATE TABLE herald.job_type (
    name              text PRIMARY KEY
        CONSTRAINT job_type_name_not_empty CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    -- 'sql': call target(params jsonb) in the database; 'command': run the OS command
    -- target with arguments from params (defined by Herald administrators only);
    -- 'report': generate the report target (made by herald.report()).
    runner            text NOT NULL
        CONSTRAINT job_type_runner CHECK (runner IN ('sql', 'command', 'report')),
    -- sql: the function or procedure, as regprocedure text; command: the program.
    target            text NOT NULL,
    -- A class of herald.job_class (checked when the type is made; a class in use cannot
    -- be deleted).
    class             text NOT NULL DEFAULT 'default',
    -- Hooks, SQL functions run as the type's owner:
    -- after_creation(job bigint, params jsonb), in the submitting transaction;
    -- before_completion(job bigint, params jsonb), an error means FINISHERROR;
    -- after_completion(job bigint, params jsonb, commit boolean);
    -- compensate(job bigint, params jsonb), on abort, and on error with gobackonerror.
    after_creation    regprocedure,
    before_completion regprocedure,
    after_completion  regprocedure,
    compensate        regprocedure,
    startnow          boolean NOT NULL DEFAULT false,
    autofinish        boolean NOT NULL DEFAULT true,
    newthread         boolean NOT NULL DEFAULT false,
    gobackonerror     boolean NOT NULL DEFAULT false,
    -- Retry policy: a job that fails (its runner errors or its node dies) is run again after
    -- retry_delay until it has been started max_attempts times.
    max_attempts      integer NOT NULL DEFAULT 1
        CONSTRAINT job_type_max_attempts_positive CHECK (max_attempts OPERATOR(pg_catalog.>=) 1),
    retry_delay       interval NOT NULL DEFAULT '10 seconds'
        CONSTRAINT job_type_retry_delay_not_negative CHECK (retry_delay OPERATOR(pg_catalog.>=) '0'),
    -- The role whose privileges the target and the hooks run with.
    owner             regrole NOT NULL DEFAULT (CURRENT_USER)::regrole,
    -- Roles (with their members) that may submit jobs of this type, beside its owner and
    -- Herald administrators.
    submit_roles      regrole[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Resource locks its jobs hold while they run, {"resource": count, ...} (NULL: none).
    resources         jsonb
);
COMMENT ON TABLE herald.job_type IS
    'Herald job types; use herald.create_job_type() and herald.drop_job_type().';
SELECT pg_catalog.pg_extension_config_dump('herald.job_type', '');

------------------------------------------------------------------------------------------
-- Jobs: one row per submitted job, kept after it ends (delete old ones as you like).
-- Every state change is a guarded UPDATE (WHERE state = ...) made by Herald's functions.
------------------------------------------------------------------------------------------
CREATE TABLE herald.job (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign keys here: pg_restore loads herald's tables in name order with their
    -- constraints in place, and job comes before job_type. herald.drop_job_type refuses
    -- a type with jobs that have not ended.
    type            text NOT NULL,
    -- The type's class when submitted.
    class           text NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}',
    state           text NOT NULL DEFAULT 'CREATED'
        -- (A single array constant rather than an IN list: every statement that writes
        -- the table reads its checks back from their stored form, and one constant is
        -- read far faster than seven.)
        CONSTRAINT job_state CHECK (state OPERATOR(pg_catalog.=) ANY
            ('{CREATED,STARTED,FINISHED,COMPLETED,STARTERROR,FINISHERROR,ABORTED}'::pg_catalog.text[])),
    -- Narrows the class limit to the jobs with the same key (NULL: the class's own).
    concurrency_key text,
    notify_email    text,
    submitted_by    regrole NOT NULL,
    submitted_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    run_after       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The run now or last: which node, since when; how many times it was started.
    node            text,
    attempts        integer NOT NULL DEFAULT 0,
    started_at      timestamptz,
    finished_at     timestamptz,
    ended_at        timestamptz,
    -- The backend holding the job's claim while its runner runs (NULL otherwise: queued,
    -- waiting for herald.mark_job_finished, or ended).
    claim_pid       integer,
    result          jsonb,
    error           text,
    -- Alerts fired for this run (each fires once).
    wait_alerted_at timestamptz,
    long_alerted_at timestamptz,
    -- The outcome mail to notify_email, once per outcome (at most once: 'sending' is
    -- committed before the mail server is called, and is never sent again): 'due' when
    -- the job reaches an outcome (COMPLETED, FINISHERROR, ABORTED, or STARTERROR without
    -- a retry); 'sending' by mail_node; 'sent'; 'retry' (the server could not be reached
    -- or refused for now: again at mail_next_at); 'failed' (refused for good).
    mail_state      text
        CONSTRAINT job_mail_state CHECK (mail_state OPERATOR(pg_catalog.=) ANY
            ('{due,sending,sent,retry,failed}'::pg_catalog.text[])),
    mail_node       text,
    mail_attempts   integer NOT NULL DEFAULT 0,
    mail_next_at    timestamptz,
    mail_error      text,
    -- The resource locks the job holds while it runs, {"resource": count, ...}: its type's
    -- and its own (NULL: none). A due job whose claim cannot have them all at once queues
    -- for them (FIFO with every other request) and waits with run_after 'infinity' until
    -- the release that lets it in makes it due again.
    resources       jsonb
);
-- Waiting jobs, by class in the order they fall due (run_after, id): an order the primary
-- key cannot give, so that claims never walk past ended jobs.
CREATE INDEX job_waiting_head_idx ON herald.job (class, run_after, id)
    WHERE state OPERATOR(pg_catalog.=) 'CREATED';
-- Waiting jobs of a class by concurrency key in submission order: a limited class's claim
-- reads the oldest of each key from here, whatever the statistics say of the class.
CREATE INDEX job_waiting_idx ON herald.job (class, concurrency_key, id)
    WHERE state OPERATOR(pg_catalog.=) 'CREATED';
CREATE INDEX job_active_idx ON herald.job (class, concurrency_key)
    WHERE state IN ('STARTED', 'FINISHED');
-- (No index on state alone: every state change would add an entry to it. Running jobs
-- are found through job_active_idx; ended jobs are only ever counted.)
CREATE INDEX job_mail_due_idx ON herald.job (id)
    WHERE mail_state IN ('due', 'retry');
COMMENT ON TABLE herald.job IS
    'Herald jobs: CREATED -> STARTED -> FINISHED -> COMPLETED, or STARTERROR, FINISHERROR, '
    'ABORTED. Submit with herald.submit_job(); `herald status` shows them by class and state.';
-- Jobs are pending work: a dump keeps every job, and a restored job that was running when
-- the dump was taken is found by herald.rescue_jobs (no claim holds it).
SELECT pg_catalog.pg_extension_config_dump('herald.job', '');
SELECT pg_catalog.pg_extension_config_dump('herald.job_id_seq', '');

------------------------------------------------------------------------------------------
-- What operators did to jobs by hand (herald.set_job_state, herald.abort_job,
-- herald.retry_job).
------------------------------------------------------------------------------------------
CREATE TABLE herald.job_audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job        bigint NOT NULL,
    action     text NOT NULL,
    old_state  text,
    new_state  text,
    reason     text,
    done_by    text NOT NULL DEFAULT CURRENT_USER,
    done_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX job_audit_job_idx ON herald.job_audit (job);
COMMENT ON TABLE herald.job_audit IS 'Operator actions on Herald jobs.';
SELECT pg_catalog.pg_extension_config_dump('herald.job_audit', '');
SELECT pg_catalog.pg_extension_config_dump('herald.job_audit_id_seq', '');
