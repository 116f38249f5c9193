-- Herald 0.6.0 -> 0.7.0.

-- Reports (issue #12): an output the device did not take for now is pending again after
-- its channel's retry delay (options.retry_seconds, doubled per attempt) until
-- options.max_attempts are used up.
ALTER TABLE herald.report_output ADD COLUMN next_at timestamptz;
-- Artefacts are compressed with lz4 where the server has it (faster than pglz).
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

-- Resource locks (issue #13). "LOCK" becomes a reserved event type (Herald's own events).
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
    PRIMARY KEY (resource, token)
);
COMMENT ON TABLE herald.lock_holder IS 'Herald resource lock holders; see the view herald.locks.';
SELECT pg_catalog.pg_extension_config_dump('herald.lock_holder', '');

------------------------------------------------------------------------------------------
-- Requests waiting for a grant, in ticket order per resource. A waiting session's row lives
-- in a subtransaction of its herald.lock_acquire call (never committed); see above.
------------------------------------------------------------------------------------------
CREATE TABLE herald.lock_request (
    resource     text NOT NULL,
    ticket       bigint NOT NULL,
    holder       text NOT NULL,
    count        integer NOT NULL,
    requested_at timestamptz NOT NULL,
    pid          integer NOT NULL,
    PRIMARY KEY (resource, ticket)
);
COMMENT ON TABLE herald.lock_request IS 'Herald resource lock requests that wait; see the view herald.locks.';

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

-- herald::locks::define::_wake_lock_waiters
CREATE  FUNCTION "_wake_lock_waiters"(
	"resource" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_wake_lock_waiters_wrapper';

-- herald::locks::define::drop_resource
CREATE  FUNCTION "drop_resource"(
	"name" TEXT /* Option < & str > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_resource_wrapper';

-- herald::locks::holders::expire_locks
CREATE  FUNCTION "expire_locks"() RETURNS INT /* i32 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'expire_locks_wrapper';

-- herald::locks::holders::force_release
CREATE  FUNCTION "force_release"(
	"resource" TEXT, /* Option < & str > */
	"token" bigint, /* Option < i64 > */
	"reason" TEXT /* Option < & str > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'force_release_wrapper';

-- herald::locks::acquire::lock_acquire
CREATE  FUNCTION "lock_acquire"(
	"resource" TEXT, /* Option < & str > */
	"holder" TEXT, /* Option < & str > */
	"count" INT DEFAULT 1, /* Option < i32 > */
	"lease" interval DEFAULT NULL, /* Option < Interval > */
	"wait" interval DEFAULT '0' /* Option < Interval > */
) RETURNS bigint /* Option < i64 > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_acquire_wrapper';

-- herald::locks::acquire::lock_acquire_all
CREATE  FUNCTION "lock_acquire_all"(
	"resources" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"holder" TEXT, /* Option < & str > */
	"count" INT DEFAULT 1, /* Option < i32 > */
	"lease" interval DEFAULT NULL, /* Option < Interval > */
	"wait" interval DEFAULT '0' /* Option < Interval > */
) RETURNS bigint[] /* :: std :: option :: Option < Vec < i64 > > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_acquire_all_wrapper';

-- herald::locks::holders::lock_check
CREATE  FUNCTION "lock_check"(
	"resource" TEXT, /* Option < & str > */
	"token" bigint /* Option < i64 > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_check_wrapper';

-- herald::locks::holders::lock_release
CREATE  FUNCTION "lock_release"(
	"resource" TEXT, /* Option < & str > */
	"holder" TEXT, /* Option < & str > */
	"token" bigint /* Option < i64 > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_release_wrapper';

-- herald::locks::holders::lock_renew
CREATE  FUNCTION "lock_renew"(
	"resource" TEXT, /* Option < & str > */
	"holder" TEXT, /* Option < & str > */
	"token" bigint, /* Option < i64 > */
	"lease" interval DEFAULT NULL /* Option < Interval > */
) RETURNS timestamp with time zone /* TimestampWithTimeZone */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_renew_wrapper';

-- herald::locks::status::lock_status
CREATE  FUNCTION "lock_status"() RETURNS TABLE (
	"resource" TEXT,  /* String */
	"role" TEXT,  /* String */
	"holder" TEXT,  /* String */
	"count" INT,  /* i32 */
	"token" bigint,  /* Option < i64 > */
	"position" INT,  /* Option < i32 > */
	"requested_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"acquired_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"expires_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"expired" bool,  /* bool */
	"pid" INT  /* Option < i32 > */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_status_wrapper';

-- requires:
--   listeners_triggers
--   locks::define::_wake_lock_waiters
--   locks::status::lock_status

-- Herald, resource locks: the trigger that wakes waiters when an operator changes a
-- resource, and the view herald.locks. Loaded after the Rust functions of

CREATE FUNCTION herald._resource_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM herald._wake_lock_waiters(NEW.name);
    RETURN NEW;
END
$$;

CREATE TRIGGER resource_changed
    AFTER UPDATE ON herald.resource
    FOR EACH ROW EXECUTE FUNCTION herald._resource_changed();

-- Every resource with its holders and its waiters (in the order they are served), one row
-- each; a resource nobody holds or awaits has one row with role NULL. Waiters are read as
-- a dirty snapshot sees them (they wait inside their own transactions); see
-- herald.lock_status().
CREATE VIEW herald.locks AS
SELECT r.name AS resource, r.kind, r.lock_limit, s.role, s.holder, s.count, s.token,
       s.position, s.requested_at, s.acquired_at, s.expires_at, s.expired,
       COALESCE(s.acquired_at, pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.-) s.requested_at AS waited,
       s.pid
  FROM herald.resource r
  LEFT JOIN herald.lock_status() s ON s.resource OPERATOR(pg_catalog.=) r.name
 ORDER BY r.name, s.role, s.position, s.token;
COMMENT ON VIEW herald.locks IS
    'Herald resource locks: each holder (count, token, acquired, expires) and waiters in order.';

-- herald::locks::define::resource
CREATE  FUNCTION "resource"(
	"name" TEXT, /* Option < & str > */
	"kind" TEXT DEFAULT 'exclusive', /* Option < & str > */
	"lock_limit" INT DEFAULT NULL, /* Option < i32 > */
	"default_lease" interval DEFAULT '24 hours' /* Option < Interval > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'resource_wrapper';

-- Nothing new is open to PUBLIC (sql/privileges.sql).
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'herald'::regnamespace
                AND p.proname = ANY (ARRAY['_resource_changed', '_wake_lock_waiters', 'drop_resource', 'expire_locks', 'force_release', 'lock_acquire', 'lock_acquire_all', 'lock_check', 'lock_release', 'lock_renew', 'lock_status', 'resource'])
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
