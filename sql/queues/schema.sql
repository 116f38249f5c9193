-- Herald schema, event queues: tables. Loaded by CREATE EXTENSION in the order lib.rs declares
-- (bootstrap, queues, listeners, events, sessions), before the functions that use them.
-- The drainer lock of a queue is the advisory lock (herald._lock_space('queue'), id).

------------------------------------------------------------------------------------------
-- Event queues: one row per queue. DBAs create, tune, start and stop queues with plain SQL.
------------------------------------------------------------------------------------------
CREATE TABLE herald.event_queue (
    name                    text PRIMARY KEY
        CONSTRAINT event_queue_name_not_empty CHECK (name OPERATOR(pg_catalog.<>) ''),
    event_amount_per_lookup integer  NOT NULL DEFAULT 10
        CONSTRAINT event_amount_per_lookup_between_1_and_10000
        CHECK (event_amount_per_lookup BETWEEN 1 AND 10000),
    event_hold_on_error     smallint NOT NULL DEFAULT 0
        CONSTRAINT event_hold_on_error_is_0_or_1 CHECK (event_hold_on_error IN (0, 1)),
    event_log_level         smallint NOT NULL DEFAULT 1
        CONSTRAINT event_log_level_between_0_and_3 CHECK (event_log_level BETWEEN 0 AND 3),
    event_run               smallint NOT NULL DEFAULT 0
        CONSTRAINT event_run_is_0_or_1 CHECK (event_run IN (0, 1)),
    created_at              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Stable number used for the queue's drainer lock (names may be long; ids are cheap).
    id                      integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- Roles (with their members) that may attach listeners to this queue; Herald
    -- administrators always may.
    listener_roles          regrole[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE herald.event_queue IS
    'Herald event queues: settings (event_*) are changed with UPDATE and picked up by the '
    'running drainer after its current lookup. Status: herald.queue_status.';
-- pg_dump keeps the queues and their settings (docs/operations.md, "Backup and restore").
-- Their runtime state (herald.queue_state) is rebuilt by the insert trigger: a restored
-- queue starts with a fresh scan floor and counters, and a queue that holds on errors
-- holds again at its failing event.
SELECT pg_catalog.pg_extension_config_dump('herald.event_queue', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_queue_id_seq', '');

------------------------------------------------------------------------------------------
-- Runtime state of each queue, written by every lookup. Kept apart from the settings so
-- that a lookup updates a lean row (no checks, triggers or generated columns) and a DBA's
-- UPDATE of the settings never waits for a lookup.
------------------------------------------------------------------------------------------
CREATE TABLE herald.queue_state (
    queue          text PRIMARY KEY REFERENCES herald.event_queue (name) ON DELETE CASCADE,
    held_event     bigint,
    held_listener  bigint,
    last_error     text,
    last_error_at  timestamptz,
    handled_count  bigint NOT NULL DEFAULT 0,
    failed_count   bigint NOT NULL DEFAULT 0,
    skipped_count  bigint NOT NULL DEFAULT 0,
    drained_by     text,
    last_lookup_at timestamptz,
    -- Scan floor: every event of this queue with id < scan_from is handled or will never
    -- exist, so lookups start there instead of wading through the dead index entries of
    -- handled events. It advances to mark_id once every transaction that was running when
    -- the mark was set (xid < mark_xmax) has ended; see docs/architecture.md.
    scan_from      bigint NOT NULL DEFAULT 0,
    mark_id        bigint,
    mark_xmax      xid8
) WITH (fillfactor = 20);
COMMENT ON TABLE herald.queue_state IS
    'Runtime state of each event queue, maintained by Herald; read it through herald.queue_status.';
