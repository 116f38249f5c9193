-- Every listener a producer may deliver to, with what the cache needs about its table
-- (primary key columns, columns its owner may not read) and its queue, and whether its
-- owner may still receive its events (`denied`: a SQLSTATE, a space and the reason; NULL
-- when it may). Listeners of sessions that have ended are left out: producers never write
-- for them.
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
       l.session_pid, q.event_run OPERATOR(pg_catalog.=) 1, l.session_start,
       CASE
       WHEN r.oid IS NULL THEN
           '42704 the owner of listener ' OPERATOR(pg_catalog.||) l.id
           OPERATOR(pg_catalog.||) ' (role oid ' OPERATOR(pg_catalog.||) l.owner::pg_catalog.oid
           OPERATOR(pg_catalog.||) ') no longer exists'
       WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                         WHERE p.oid OPERATOR(pg_catalog.=) l.handler::pg_catalog.oid) THEN
           '42883 the handler function of listener ' OPERATOR(pg_catalog.||) l.id
           OPERATOR(pg_catalog.||) ' no longer exists'
       WHEN NOT pg_catalog.has_function_privilege(r.oid, l.handler::pg_catalog.oid, 'EXECUTE') THEN
           '42501 permission denied for function ' OPERATOR(pg_catalog.||) l.handler::text
           OPERATOR(pg_catalog.||) ': its listener''s owner ' OPERATOR(pg_catalog.||)
           pg_catalog.quote_ident(r.rolname) OPERATOR(pg_catalog.||) ' may no longer execute it'
       WHEN u.type IS NOT NULL THEN
           '42501 permission denied for event type ' OPERATOR(pg_catalog.||)
           pg_catalog.quote_literal(u.type) OPERATOR(pg_catalog.||) ': the owner of listener '
           OPERATOR(pg_catalog.||) l.id OPERATOR(pg_catalog.||) ' ('
           OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.rolname)
           OPERATOR(pg_catalog.||) ') may no longer listen to it'
       WHEN l.kind OPERATOR(pg_catalog.=) 'system'
            AND NOT pg_catalog.pg_has_role(r.oid, (SELECT e.extowner FROM pg_catalog.pg_extension e
                                                    WHERE e.extname OPERATOR(pg_catalog.=) 'herald'),
                                           'USAGE') THEN
           '42501 the owner of system listener ' OPERATOR(pg_catalog.||) l.id
           OPERATOR(pg_catalog.||) ' (' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.rolname)
           OPERATOR(pg_catalog.||) ') is no longer a Herald administrator'
       WHEN c.oid IS NULL THEN NULL
       WHEN NOT pg_catalog.has_schema_privilege(r.oid, c.relnamespace, 'USAGE') THEN
           '42501 permission denied for schema ' OPERATOR(pg_catalog.||)
           pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) ' (listener '
           OPERATOR(pg_catalog.||) l.id OPERATOR(pg_catalog.||) ', owner '
           OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.rolname) OPERATOR(pg_catalog.||) ')'
       WHEN NOT pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT') THEN
           '42501 permission denied for table ' OPERATOR(pg_catalog.||) c.oid::pg_catalog.regclass::text
           OPERATOR(pg_catalog.||) ' (listener ' OPERATOR(pg_catalog.||) l.id
           OPERATOR(pg_catalog.||) ', owner ' OPERATOR(pg_catalog.||)
           pg_catalog.quote_ident(r.rolname) OPERATOR(pg_catalog.||) ')'
       WHEN l.sync AND NOT pg_catalog.has_table_privilege(r.oid, c.oid, 'TRIGGER') THEN
           '42501 permission denied for table ' OPERATOR(pg_catalog.||) c.oid::pg_catalog.regclass::text
           OPERATOR(pg_catalog.||) ': synchronous listener ' OPERATOR(pg_catalog.||) l.id
           OPERATOR(pg_catalog.||) ' needs its owner ' OPERATOR(pg_catalog.||)
           pg_catalog.quote_ident(r.rolname) OPERATOR(pg_catalog.||) ' to have TRIGGER on it'
       WHEN c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls
            AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE')) THEN
           '42501 table ' OPERATOR(pg_catalog.||) c.oid::pg_catalog.regclass::text
           OPERATOR(pg_catalog.||) ' has row-level security, which applies to the owner of listener '
           OPERATOR(pg_catalog.||) l.id OPERATOR(pg_catalog.||) ' ('
           OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.rolname) OPERATOR(pg_catalog.||) ')'
       END
  FROM herald.listener l
  LEFT JOIN herald.event_queue q ON q.name OPERATOR(pg_catalog.=) l.queue
  LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) l.owner::pg_catalog.oid
  LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.tbl::pg_catalog.oid
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  LEFT JOIN LATERAL (SELECT herald._unlistenable(r.oid, l.event_types) AS type
                      WHERE l.kind OPERATOR(pg_catalog.=) 'event') u ON true
 WHERE l.delivery OPERATOR(pg_catalog.<>) 'session'
    OR EXISTS (SELECT 1 FROM herald.session s
                WHERE s.pid OPERATOR(pg_catalog.=) l.session_pid
                  AND s.backend_start OPERATOR(pg_catalog.=) l.session_start)
 ORDER BY l.id
