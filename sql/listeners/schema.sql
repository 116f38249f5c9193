-- Herald schema, listeners: tables. Loaded by CREATE EXTENSION in the order lib.rs declares
-- (bootstrap, queues, listeners, events, sessions), before the functions that use them.

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
