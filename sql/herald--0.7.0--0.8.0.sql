-- Herald 0.7.0 -> 0.8.0.

-- Jobs that declare resources (issue #13): a job type's and a job's resource locks, held
-- while the job runs; jobs' requests wait in line as committed rows.
ALTER TABLE herald.job_type ADD COLUMN resources jsonb;
ALTER TABLE herald.job ADD COLUMN resources jsonb;
ALTER TABLE herald.lock_holder ADD COLUMN job bigint;
ALTER TABLE herald.lock_request ALTER COLUMN pid DROP NOT NULL;
ALTER TABLE herald.lock_request ADD COLUMN job bigint;
ALTER TABLE herald.lock_request ADD CONSTRAINT lock_request_session_or_job
    CHECK ((pid IS NULL) OPERATOR(pg_catalog.<>) (job IS NULL));
SELECT pg_catalog.pg_extension_config_dump('herald.lock_request', '');
SELECT pg_catalog.pg_extension_config_dump('herald.lock_ticket_seq', '');

-- herald.create_job_type and herald.submit_job take `resources`. The functions are made
-- anew (a parameter more); EXECUTE granted on the old ones is granted on the new ones.
DO $$
DECLARE
    type_grantees text[];
    submit_grantees text[];
    g text;
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT a.grantee::pg_catalog.regrole::pg_catalog.text) INTO type_grantees
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'herald.create_job_type(text, text, text, text, text, text, text, text, boolean, boolean, boolean, boolean, integer, interval, text[])'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner AND a.grantee OPERATOR(pg_catalog.<>) 0;
    SELECT pg_catalog.array_agg(DISTINCT a.grantee::pg_catalog.regrole::pg_catalog.text) INTO submit_grantees
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) 'herald.submit_job(text, jsonb, text, text, timestamptz)'::pg_catalog.regprocedure
       AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner AND a.grantee OPERATOR(pg_catalog.<>) 0;

    DROP FUNCTION herald.create_job_type(text, text, text, text, text, text, text, text, boolean, boolean, boolean, boolean, integer, interval, text[]);
    DROP FUNCTION herald.submit_job(text, jsonb, text, text, timestamptz);

    CREATE FUNCTION herald.create_job_type(
        "name" TEXT,
        "target" TEXT,
        "runner" TEXT DEFAULT 'sql',
        "class" TEXT DEFAULT 'default',
        "after_creation" TEXT DEFAULT NULL,
        "before_completion" TEXT DEFAULT NULL,
        "after_completion" TEXT DEFAULT NULL,
        "compensate" TEXT DEFAULT NULL,
        "startnow" bool DEFAULT false,
        "autofinish" bool DEFAULT true,
        "newthread" bool DEFAULT false,
        "gobackonerror" bool DEFAULT false,
        "max_attempts" INT DEFAULT 1,
        "retry_delay" interval DEFAULT '10 seconds',
        "submit_roles" TEXT[] DEFAULT '{}',
        "resources" jsonb DEFAULT NULL
    ) RETURNS void
    VOLATILE PARALLEL UNSAFE
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'create_job_type_wrapper';

    CREATE FUNCTION herald.submit_job(
        "type" text,
        params jsonb DEFAULT '{}',
        concurrency_key text DEFAULT NULL,
        notify_email text DEFAULT NULL,
        run_after timestamptz DEFAULT NULL,
        resources jsonb DEFAULT NULL
    ) RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'herald_submit_job';

    -- Nothing new is open to PUBLIC (sql/privileges.sql).
    REVOKE ALL ON FUNCTION herald.create_job_type(text, text, text, text, text, text, text, text, boolean, boolean, boolean, boolean, integer, interval, text[], jsonb) FROM PUBLIC;
    REVOKE ALL ON FUNCTION herald.submit_job(text, jsonb, text, text, timestamptz, jsonb) FROM PUBLIC;
    FOREACH g IN ARRAY COALESCE(type_grantees, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION herald.create_job_type(text, text, text, text, text, text, text, text, boolean, boolean, boolean, boolean, integer, interval, text[], jsonb) TO %s', g);
    END LOOP;
    FOREACH g IN ARRAY COALESCE(submit_grantees, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION herald.submit_job(text, jsonb, text, text, timestamptz, jsonb) TO %s', g);
    END LOOP;
END
$$;

-- Reports (issue #12): format pdf (the text rendering set on A4 pages in Courier).
ALTER TABLE herald.report DROP CONSTRAINT report_format;
ALTER TABLE herald.report ADD CONSTRAINT report_format
    CHECK (format OPERATOR(pg_catalog.=) ANY ('{csv,json,text,html,pdf}'::pg_catalog.text[]));
