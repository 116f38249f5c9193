-- Every listener a producer may deliver to, with what the cache needs about its table
-- (primary key columns, columns its owner may not read) and its queue. Listeners of
-- sessions that have ended are left out: producers never write for them.
SELECT l.id, l.handler::pg_catalog.oid, l.event_types, l.queue, q.id, l.sync,
       l.owner::pg_catalog.oid, l.kind, l.tbl::pg_catalog.oid,
       (SELECT pg_catalog.array_agg(a.attnum::int4 ORDER BY a.attnum)
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a
            ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
           AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey)
         WHERE i.indrelid OPERATOR(pg_catalog.=) l.tbl::pg_catalog.oid AND i.indisprimary),
       (SELECT pg_catalog.array_agg(a.attnum::int4)
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid OPERATOR(pg_catalog.=) l.tbl::pg_catalog.oid
           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
           AND NOT pg_catalog.has_column_privilege(l.owner::pg_catalog.oid,
                   l.tbl::pg_catalog.oid, a.attnum, 'SELECT')),
       l.session_pid, q.event_run OPERATOR(pg_catalog.=) 1, l.session_start
  FROM herald.listener l
  LEFT JOIN herald.event_queue q ON q.name OPERATOR(pg_catalog.=) l.queue
 WHERE l.delivery OPERATOR(pg_catalog.<>) 'session'
    OR EXISTS (SELECT 1 FROM herald.session s
                WHERE s.pid OPERATOR(pg_catalog.=) l.session_pid
                  AND s.backend_start OPERATOR(pg_catalog.=) l.session_start)
 ORDER BY l.id
