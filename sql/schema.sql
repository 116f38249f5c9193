-- Herald schema: tables and types. Loaded first by CREATE EXTENSION (pgrx `bootstrap`).
-- Everything an operator needs to look at or repair is an ordinary table in schema herald.
-- Internal SQL is schema-qualified and uses pg_catalog operators so that a caller's
-- search_path can never redirect it.

-- The lock class shared by every advisory lock Herald takes: "HRLD".
-- (key1 = 1213353028, key2 = the queue's id) is the drainer lock of a queue.

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
    id                      integer GENERATED ALWAYS AS IDENTITY UNIQUE
);
COMMENT ON TABLE herald.event_queue IS
    'Herald event queues: settings (event_*) are changed with UPDATE and picked up by the '
    'running drainer after its current lookup. Status: herald.queue_status.';

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

------------------------------------------------------------------------------------------
-- Listeners: what ends up where, and which SQL function handles it.
------------------------------------------------------------------------------------------
CREATE TABLE herald.listener (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CONSTRAINT listener_kind CHECK (kind IN ('event', 'data', 'system')),
    handler     regprocedure NOT NULL,
    event_types text[] NOT NULL,
    queue       text REFERENCES herald.event_queue (name) ON DELETE RESTRICT,
    sync        boolean NOT NULL DEFAULT false,
    delivery    text GENERATED ALWAYS AS (
        CASE WHEN sync THEN 'sync' WHEN queue IS NOT NULL THEN 'queue' ELSE 'session' END) STORED,
    owner       regrole NOT NULL DEFAULT (CURRENT_USER)::regrole,
    session_pid integer,       -- session listeners: the owning backend's pid ...
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT listener_sync_or_queue CHECK (NOT (sync AND queue IS NOT NULL)),
    tbl         regclass,      -- data listeners: the captured table
    session_start timestamptz  -- ... and its start time (pid and start name one session)
);
CREATE INDEX listener_queue_idx ON herald.listener (queue);
CREATE INDEX listener_tbl_idx ON herald.listener (tbl);
COMMENT ON TABLE herald.listener IS
    'Herald listeners; use herald.add_*_listener() and herald.remove_listener() to change them.';

------------------------------------------------------------------------------------------
-- Events. The table is the persistent queue storage: one row per (event, queue listener),
-- deleted when handled. Its row type, herald.event, is also what every handler receives
-- (queue is NULL for synchronous and session delivery).
------------------------------------------------------------------------------------------
CREATE SEQUENCE herald.event_id_seq AS bigint;
CREATE TABLE herald.event (
    id         bigint      NOT NULL,
    -- "C": the key is compared bytewise on every insert and lookup (no locale rules)
    queue      text        COLLATE "C" NOT NULL,
    type       text        NOT NULL,
    action     text        NOT NULL,
    source     text,
    details    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    listener   bigint      NOT NULL,
    PRIMARY KEY (queue, id, listener)
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.01);
COMMENT ON TABLE herald.event IS
    'Pending events of all queues, in id order per queue; a row disappears when it is handled.';

------------------------------------------------------------------------------------------
-- Event log, written according to each queue's event_log_level.
------------------------------------------------------------------------------------------
CREATE TABLE herald.event_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    logged_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    queue     text,
    event_id  bigint NOT NULL,
    listener  bigint,
    handler   text,
    type      text,
    action    text,
    outcome   text NOT NULL CONSTRAINT event_log_outcome
        CHECK (outcome IN ('handled', 'failed', 'held', 'retried', 'skipped')),
    error     text,
    details   jsonb,
    node      text
);
CREATE INDEX event_log_queue_idx ON herald.event_log (queue, event_id);
COMMENT ON TABLE herald.event_log IS
    'What happened to events: failures (event_log_level >= 1), every handled event (>= 2), '
    'with details (3); operator retries and skips are always recorded.';

------------------------------------------------------------------------------------------
-- Session listeners (neither queue nor sync) belong to the session that registered them
-- and are read with herald.next_event(). Both tables are UNLOGGED: crash recovery empties
-- them, and a crash ends every session anyway. A listener whose session has no row here
-- is dead: producers skip it and the next registration removes it.
------------------------------------------------------------------------------------------
CREATE UNLOGGED TABLE herald.session (
    pid           integer     NOT NULL,
    backend_start timestamptz NOT NULL,
    role          regrole     NOT NULL,
    PRIMARY KEY (pid, backend_start)
);
COMMENT ON TABLE herald.session IS
    'Sessions that own session listeners; a row disappears when its session ends.';

CREATE UNLOGGED TABLE herald.session_event (
    listener   bigint      NOT NULL,
    id         bigint      NOT NULL,
    type       text        NOT NULL,
    action     text        NOT NULL,
    source     text,
    details    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (listener, id)
);
COMMENT ON TABLE herald.session_event IS
    'Unread events of session listeners, taken in id order by herald.next_event().';
