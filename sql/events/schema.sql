-- Herald schema, events: tables. Loaded by CREATE EXTENSION in the order lib.rs declares
-- (bootstrap, queues, listeners, events, sessions), before the functions that use them.

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
        CHECK (outcome IN ('handled', 'failed', 'held', 'retried', 'skipped', 'withheld')),
    error     text,
    details   jsonb,
    node      text
);
CREATE INDEX event_log_queue_idx ON herald.event_log (queue, event_id);
COMMENT ON TABLE herald.event_log IS
    'What happened to events: failures (event_log_level >= 1), every handled event (>= 2), '
    'with details (3); operator retries and skips, and events withheld from a listener whose '
    'owner may not read them, are always recorded.';
-- pg_dump keeps pending events and the log, with the sequences that give ids and order.
SELECT pg_catalog.pg_extension_config_dump('herald.event', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_log', '');
SELECT pg_catalog.pg_extension_config_dump('herald.event_log_id_seq', '');
