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
-- pg_dump keeps listeners (handlers, tables, queues and owners by name, so that a restore
-- into another database resolves them again), except session listeners, whose sessions
-- end with the dump.
SELECT pg_catalog.pg_extension_config_dump('herald.listener',
                                           'WHERE delivery OPERATOR(pg_catalog.<>) ''session''');
SELECT pg_catalog.pg_extension_config_dump('herald.listener_id_seq', '');

------------------------------------------------------------------------------------------
-- Event types: who controls a user event type, and who may listen to it. Listening to a
-- type needs its owner's grant (or being a Herald administrator: a role with the
-- privileges of the extension's owner). '*' (every type) belongs to the extension's owner.
------------------------------------------------------------------------------------------
CREATE TABLE herald.event_type (
    name       text PRIMARY KEY
        CONSTRAINT event_type_name_not_empty CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    owner      regrole NOT NULL,
    granted_to regrole[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE herald.event_type IS
    'User event types and the roles that may listen to them; use herald.create_event_type(), '
    'herald.grant_listen() and herald.revoke_listen().';
SELECT pg_catalog.pg_extension_config_dump('herald.event_type', '');

-- The first of `types` that `role` may not listen to (NULL: it may listen to all).
CREATE FUNCTION herald._unlistenable(role oid, types text[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.name
      FROM unnest(types) AS t(name)
     WHERE NOT (
           pg_has_role(role, (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'herald'),
                       'USAGE')
        OR EXISTS (SELECT 1 FROM herald.event_type et
                    WHERE et.name IN (t.name, '*')
                      AND (pg_has_role(role, et.owner::oid, 'USAGE')
                           OR EXISTS (SELECT 1 FROM unnest(et.granted_to) g
                                       WHERE pg_has_role(role, g::oid, 'USAGE')))))
     LIMIT 1
$$;
