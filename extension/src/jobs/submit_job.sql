-- Submit a job of type $1 (params $2, concurrency key $3, notify email $4, submitted by
-- $5, run after $6) in one statement, if the type exists, $5 may submit it ($7: an
-- administrator may any) and its class is unlimited (a built-in class without a row in
-- job_class_setting is) or $8 (the caller holds the class's lock). Returns the job's id and what the submit needs of the type; no
-- row when nothing was inserted.
WITH t AS (
    SELECT t.name, t.class, t.owner::pg_catalog.oid AS owner,
           t.after_creation::pg_catalog.oid AS after_creation, t.startnow
      FROM herald.job_type t
     WHERE t.name OPERATOR(pg_catalog.=) $1
       AND ($7
            OR pg_catalog.pg_has_role($5, t.owner::pg_catalog.oid, 'USAGE')
            OR EXISTS (SELECT 1 FROM pg_catalog.unnest(t.submit_roles) r
                        WHERE pg_catalog.pg_has_role($5, r::pg_catalog.oid, 'USAGE')))
       AND ($8 OR NOT EXISTS (SELECT 1 FROM herald.job_class_setting c
                        WHERE c.name OPERATOR(pg_catalog.=) t.class AND c.max_running IS NOT NULL))
), ins AS (
    INSERT INTO herald.job (type, class, params, concurrency_key, notify_email, submitted_by,
                            run_after)
    SELECT t.name, t.class, $2, $3, $4, $5::pg_catalog.regrole, COALESCE($6, pg_catalog.now())
      FROM t
    RETURNING id
)
SELECT ins.id, t.class, t.owner, t.after_creation, t.startnow
  FROM ins CROSS JOIN t
