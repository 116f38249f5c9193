-- Herald schema, reports: definitions, output channels, groups, artefacts and output
-- records. Loaded by CREATE EXTENSION after the jobs schema and before the Rust functions
-- of extension/src/reports/.
--
-- A report is a job type with runner 'report' (made by herald.report()): a report job has
-- the job lifecycle, run by the coordinators' sql runners. Its run generates the artefact
-- in the database (the query as the report's owner, read-only, under a statement
-- timeout), stores it, and in the same transaction decides whether its group is ready
-- (see extension/src/reports/groups.rs). Output to devices (files, printers, mail) is done
-- by coordinators, one claim per output record, fenced by the record's epoch.

------------------------------------------------------------------------------------------
-- Reports: a query and how its rows are rendered.
------------------------------------------------------------------------------------------
CREATE TABLE herald.report (
    name              text PRIMARY KEY
        CONSTRAINT report_name_not_empty CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    -- Receives the job's params as $1 (jsonb, bound).
    query             text NOT NULL,
    format            text NOT NULL
        CONSTRAINT report_format CHECK (format OPERATOR(pg_catalog.=) ANY ('{csv,json,text,html,pdf}'::pg_catalog.text[])),
    -- A minijinja template for text, html and pdf (NULL: a plain table).
    template          text,
    statement_timeout interval NOT NULL DEFAULT '5 minutes'
        CONSTRAINT report_statement_timeout_positive CHECK (statement_timeout OPERATOR(pg_catalog.>) '0'),
    -- The role the query runs as (its job type's owner).
    owner             regrole NOT NULL DEFAULT (CURRENT_USER)::regrole,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE herald.report IS 'Herald reports; define them with herald.report().';
SELECT pg_catalog.pg_extension_config_dump('herald.report', '');

------------------------------------------------------------------------------------------
-- Output channels: where output goes.
--   file:  target is a directory under the coordinator's --spool-dir; each output is
--          written there atomically (a temporary file, then rename) under a name made of
--          the group (or job) and its checksum, so writing it again is harmless.
--   print: target is a CUPS queue (lp -d target) or an ipp:// printer URI.
--   email: target is the recipients (comma-separated); options.subject.
-- An output the device did not take for now (the mail server is unreachable, lp could not
-- queue the job, the spool directory could not be written) is pending again after
-- options.retry_seconds (default 60, doubled per attempt, at most an hour), and failed
-- once options.max_attempts (default 5) are used up.
------------------------------------------------------------------------------------------
CREATE TABLE herald.output_channel (
    name       text PRIMARY KEY
        CONSTRAINT output_channel_name_not_empty CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    kind       text NOT NULL
        CONSTRAINT output_channel_kind CHECK (kind OPERATOR(pg_catalog.=) ANY ('{file,print,email}'::pg_catalog.text[])),
    target     text NOT NULL,
    options    jsonb NOT NULL DEFAULT '{}',
    owner      regrole NOT NULL DEFAULT (CURRENT_USER)::regrole,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE herald.output_channel IS
    'Herald output channels (file, print, email); define them with herald.output_channel().';
SELECT pg_catalog.pg_extension_config_dump('herald.output_channel', '');

------------------------------------------------------------------------------------------
-- Report groups: the reports of one business case, output together exactly once.
--   open           members may join (herald.submit_report(..., group_id))
--   sealed         no more members; output once every member has ended
--   output_claimed the group's one output record exists (made by the transaction that saw
--                  the group ready, under the group's lock)
--   failed         a member failed and on_member_error is 'hold': nothing is output until
--                  an operator retries the member (herald.retry_job) or releases the rest
--                  (herald.release_group)
--   empty          sealed without members: nothing to output
------------------------------------------------------------------------------------------
CREATE TABLE herald.report_group (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL,
    output          text NOT NULL,
    on_member_error text NOT NULL DEFAULT 'hold'
        CONSTRAINT report_group_on_member_error CHECK (on_member_error OPERATOR(pg_catalog.=) ANY ('{hold,output_partial}'::pg_catalog.text[])),
    state           text NOT NULL DEFAULT 'open'
        CONSTRAINT report_group_state CHECK (state OPERATOR(pg_catalog.=) ANY ('{open,sealed,output_claimed,failed,empty}'::pg_catalog.text[])),
    members         integer NOT NULL DEFAULT 0,
    created_by      regrole NOT NULL DEFAULT (CURRENT_USER)::regrole,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    sealed_at       timestamptz,
    -- Who saw the group ready (the node whose transaction made its output record), when.
    decided_by      text,
    decided_at      timestamptz
);
COMMENT ON TABLE herald.report_group IS
    'Herald report groups: members join until herald.seal_group(); the group is output once '
    'when every member has ended.';
SELECT pg_catalog.pg_extension_config_dump('herald.report_group', '');
SELECT pg_catalog.pg_extension_config_dump('herald.report_group_id_seq', '');

------------------------------------------------------------------------------------------
-- Report jobs: which report, which group (member_no: the order of output), and the
-- artefact once generated. Artefacts up to herald.artefact_inline_limit (1 MB by
-- default) are kept in content; larger ones are written to the database server's
-- herald.artefact_directory and only their path is kept.
------------------------------------------------------------------------------------------
CREATE TABLE herald.report_job (
    job          bigint PRIMARY KEY,
    report       text NOT NULL,
    group_id     bigint,
    member_no    integer,
    -- The channel of a report without a group (NULL: none, the artefact is only stored).
    output       text,
    format       text,
    content      bytea,
    path         text,
    size         bigint,
    -- sha256 of the artefact, hex.
    checksum     text,
    rows         bigint,
    generated_at timestamptz,
    generated_by text
);
CREATE INDEX report_job_group_idx ON herald.report_job (group_id, member_no)
    WHERE group_id IS NOT NULL;
-- Artefacts compress well (text); lz4, where the server has it, compresses a large one
-- several times faster than the default pglz, which otherwise costs as much as making it.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_settings
                WHERE name OPERATOR(pg_catalog.=) 'default_toast_compression'
                  AND 'lz4' OPERATOR(pg_catalog.=) ANY (enumvals)) THEN
        ALTER TABLE herald.report_job ALTER COLUMN content SET COMPRESSION lz4;
    END IF;
END
$$;
COMMENT ON TABLE herald.report_job IS 'Herald report jobs and their artefacts.';
SELECT pg_catalog.pg_extension_config_dump('herald.report_job', '');

------------------------------------------------------------------------------------------
-- Output records, one per destination of a group (or of a report without a group):
--   pending -> sending -> sent | failed | uncertain, and sending -> pending (due at
--   next_at) when the device refused for now
-- 'sending' is committed before the device is called. A claim (herald.claim_output)
-- bumps epoch; the end is recorded only with the epoch of the claim that made it, so a
-- stale node never records over a newer claim. The claim is held by the claiming
-- connection (a session advisory lock, as for jobs): a record left 'sending' without it
-- (its node died) is resolved by its channel's policy (herald.rescue_outputs): file and
-- email go back to pending, print becomes uncertain (never printed again by itself).
------------------------------------------------------------------------------------------
CREATE TABLE herald.report_output (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id    bigint,
    job         bigint,
    channel     text NOT NULL,
    state       text NOT NULL DEFAULT 'pending'
        CONSTRAINT report_output_state CHECK (state OPERATOR(pg_catalog.=) ANY ('{pending,sending,sent,failed,uncertain}'::pg_catalog.text[])),
    epoch       bigint NOT NULL DEFAULT 0,
    attempts    integer NOT NULL DEFAULT 0,
    -- Output again as a copy (an operator's "reprint as copy" of an uncertain print).
    as_copy     boolean NOT NULL DEFAULT false,
    -- The jobs output, in member order, and those left out (failed members of an
    -- output_partial group).
    members     bigint[] NOT NULL DEFAULT '{}',
    failed      bigint[] NOT NULL DEFAULT '{}',
    node        text,
    claim_pid   integer,
    checksum    text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    sending_at  timestamptz,
    ended_at    timestamptz,
    -- A pending output tried again later (after a device refused for now): not before.
    next_at     timestamptz,
    CONSTRAINT report_output_of_one CHECK ((group_id IS NULL) OPERATOR(pg_catalog.<>) (job IS NULL))
);
CREATE UNIQUE INDEX report_output_group_idx ON herald.report_output (group_id, channel)
    WHERE group_id IS NOT NULL;
CREATE UNIQUE INDEX report_output_job_idx ON herald.report_output (job, channel)
    WHERE job IS NOT NULL;
CREATE INDEX report_output_open_idx ON herald.report_output (id)
    WHERE state OPERATOR(pg_catalog.=) ANY ('{pending,sending}'::pg_catalog.text[]);
COMMENT ON TABLE herald.report_output IS
    'Herald output records: pending -> sending -> sent | failed | uncertain, fenced by epoch.';
SELECT pg_catalog.pg_extension_config_dump('herald.report_output', '');
SELECT pg_catalog.pg_extension_config_dump('herald.report_output_id_seq', '');
