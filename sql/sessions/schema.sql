-- Herald schema, session listeners: tables. Loaded by CREATE EXTENSION in the order lib.rs declares
-- (bootstrap, queues, listeners, events, sessions), before the functions that use them.

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
