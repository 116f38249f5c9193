-- Herald 0.2.0 -> 0.3.0: session listeners (neither queue nor sync) and herald.next_event.
-- tests/tests/upgrade.rs checks that an upgraded database matches a fresh install.

ALTER TABLE herald.listener ADD COLUMN session_start timestamptz;

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

CREATE FUNCTION herald.next_event(listener bigint, timeout interval DEFAULT NULL,
                                  handle boolean DEFAULT true)
RETURNS herald.event LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'herald_next_event';
COMMENT ON FUNCTION herald.next_event(bigint, interval, boolean) IS
    'Wait for the next event of one of this session''s listeners (NULL after timeout); '
    'runs its handler when handle is true.';
REVOKE ALL ON FUNCTION herald.next_event(bigint, interval, boolean) FROM PUBLIC;

-- Dropping a captured table also removes the unread events of its session listeners.
CREATE OR REPLACE FUNCTION herald._on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone bigint[];
BEGIN
    SELECT array_agg(l.id) INTO gone
      FROM herald.listener l
     WHERE l.tbl IS NOT NULL
       AND l.tbl::oid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() d
                           WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0);
    IF gone IS NOT NULL THEN
        DELETE FROM herald.event e WHERE e.listener = ANY (gone);
        DELETE FROM herald.session_event e WHERE e.listener = ANY (gone);
        DELETE FROM herald.listener l WHERE l.id = ANY (gone);
    END IF;
END
$$;
