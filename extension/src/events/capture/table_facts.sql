-- What add_data_listener checks about table $1 for the current user ($2: schema herald).
SELECT c.relkind::text, c.oid::pg_catalog.regclass::text,
       pg_catalog.quote_ident(n.nspname), pg_catalog.quote_ident(CURRENT_USER),
       c.relnamespace OPERATOR(pg_catalog.=) $2
         OR n.nspname OPERATOR(pg_catalog.=) ANY ('{pg_catalog,information_schema,pg_toast}')
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                       AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'),
       c.relpersistence OPERATOR(pg_catalog.=) 't',
       pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE'),
       pg_catalog.has_table_privilege(c.oid, 'SELECT'),
       pg_catalog.has_table_privilege(c.oid, 'TRIGGER'),
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary),
       NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                     JOIN pg_catalog.pg_attribute a
                       ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                      AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey)
                    WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary
                      AND NOT pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')),
       c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls
         AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE'))
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN pg_catalog.pg_roles r ON r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
 WHERE c.oid OPERATOR(pg_catalog.=) $1
