-- Herald schema, resource locks: resources, holders, queued requests and the audit of
-- forced releases. Loaded by CREATE EXTENSION after the reports schema and before the Rust
-- functions of extension/src/locks/.
--
-- A lock's state is rows: a holder row per grant (its fencing token, count and lease), so
-- holders survive restarts and crashes. A waiting session's request is a row too, written
-- in a subtransaction of the waiting call that is rolled back when the wait ends (granted,
-- timed out, cancelled, or its backend died): others see it while it waits through a dirty
-- snapshot, as PostgreSQL's unique checks see rows in progress, and it never outlives its
-- waiter. Decisions are taken in Rust (extension/src/locks/), one at a time per resource.

------------------------------------------------------------------------------------------
-- Resources: exclusive (one holder), or shared by holders whose counts add up to at most
-- lock_limit. lock_limit 0 pauses a resource: nothing new is granted. Operators change
-- lock_limit at run time with plain SQL (waiters are woken when it commits).
------------------------------------------------------------------------------------------
CREATE TABLE herald.resource (
    name          text PRIMARY KEY
        CONSTRAINT resource_name_not_empty CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    kind          text NOT NULL DEFAULT 'exclusive'
        CONSTRAINT resource_kind CHECK (kind OPERATOR(pg_catalog.=) ANY ('{exclusive,shared}'::pg_catalog.text[])),
    lock_limit    integer NOT NULL DEFAULT 1
        CONSTRAINT resource_lock_limit_not_negative CHECK (lock_limit OPERATOR(pg_catalog.>=) 0),
    default_lease interval NOT NULL DEFAULT '24 hours'
        CONSTRAINT resource_default_lease_positive CHECK (default_lease OPERATOR(pg_catalog.>) '0'),
    created_by    regrole NOT NULL DEFAULT (CURRENT_USER)::regrole,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT resource_exclusive_limit CHECK (kind OPERATOR(pg_catalog.=) 'shared' OR lock_limit OPERATOR(pg_catalog.<=) 1)
);
COMMENT ON TABLE herald.resource IS
    'Herald resources (named locks); define them with herald.resource(), change lock_limit with UPDATE.';
SELECT pg_catalog.pg_extension_config_dump('herald.resource', '');

-- Fencing tokens: one sequence for every resource, so a token grows strictly per resource
-- and is never handed out twice.
CREATE SEQUENCE herald.lock_token_seq;
SELECT pg_catalog.pg_extension_config_dump('herald.lock_token_seq', '');
-- Arrival order of requests (taken before a request queues; not transactional).
CREATE SEQUENCE herald.lock_ticket_seq;

------------------------------------------------------------------------------------------
-- Holders: one row per grant. A grant holds until it is released, or until expires_at
-- (its lease) passes without a renewal: then it holds nothing, and the next decision on
-- the resource (or herald.expire_locks()) removes it and fires LOCK/EXPIRED.
------------------------------------------------------------------------------------------
CREATE TABLE herald.lock_holder (
    resource    text NOT NULL,
    token       bigint NOT NULL,
    holder      text NOT NULL,
    count       integer NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- When it was asked for (its wait started), for wait times.
    requested_at timestamptz NOT NULL,
    -- The job the grant is for (a job that declares resources), which releases it when it
    -- ends; NULL for a grant to a caller of herald.lock_acquire.
    job          bigint,
    PRIMARY KEY (resource, token)
);
COMMENT ON TABLE herald.lock_holder IS 'Herald resource lock holders; see the view herald.locks.';
SELECT pg_catalog.pg_extension_config_dump('herald.lock_holder', '');

------------------------------------------------------------------------------------------
-- Requests waiting for a grant, in ticket order per resource. A waiting session's row lives
-- in a subtransaction of its herald.lock_acquire call (never committed; pid is the
-- session's); see above. A job's request (job set, pid NULL) is committed: it waits in line
-- until a release grants it or the job ends.
------------------------------------------------------------------------------------------
CREATE TABLE herald.lock_request (
    resource     text NOT NULL,
    ticket       bigint NOT NULL,
    holder       text NOT NULL,
    count        integer NOT NULL,
    requested_at timestamptz NOT NULL,
    pid          integer,
    job          bigint,
    PRIMARY KEY (resource, ticket),
    CONSTRAINT lock_request_session_or_job CHECK ((pid IS NULL) OPERATOR(pg_catalog.<>) (job IS NULL))
);
COMMENT ON TABLE herald.lock_request IS 'Herald resource lock requests that wait; see the view herald.locks.';
-- (Only jobs' requests are ever committed: a dump keeps them, in line.)
SELECT pg_catalog.pg_extension_config_dump('herald.lock_request', '');
SELECT pg_catalog.pg_extension_config_dump('herald.lock_ticket_seq', '');

------------------------------------------------------------------------------------------
-- Forced releases (herald.force_release), who did them and why.
------------------------------------------------------------------------------------------
CREATE TABLE herald.lock_audit (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    resource text NOT NULL,
    holder   text NOT NULL,
    token    bigint NOT NULL,
    count    integer NOT NULL,
    action   text NOT NULL,
    by_role  text NOT NULL DEFAULT CURRENT_USER,
    reason   text
);
COMMENT ON TABLE herald.lock_audit IS 'Herald resource locks released by force, and by whom.';
SELECT pg_catalog.pg_extension_config_dump('herald.lock_audit', '');
SELECT pg_catalog.pg_extension_config_dump('herald.lock_audit_id_seq', '');
