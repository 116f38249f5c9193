//! `ALTER EXTENSION herald UPDATE` from every earlier release gives exactly the objects of a
//! fresh install (the schema-diff check: a changed SQL surface without an upgrade script
//! fails here).
use herald_tests::*;

/// Every object of schema herald, one sorted line each.
const CATALOG: &str = r#"
SELECT line FROM (
  SELECT 'function ' || p.oid::regprocedure || ' returns ' || pg_get_function_result(p.oid)
         || ' args ' || pg_get_function_arguments(p.oid) || ' lang ' || l.lanname
         || ' secdef ' || p.prosecdef || ' volatile ' || p.provolatile::text || ' strict ' || p.proisstrict
         || ' config ' || coalesce(array_to_string(p.proconfig, ','), '') || ' src ' || md5(p.prosrc)
         || ' acl ' || coalesce(p.proacl::text, 'default') AS line
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
   WHERE p.pronamespace = 'herald'::regnamespace
  UNION ALL
  SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' collate ' || a.attcollation::regcollation::text || ' notnull ' || a.attnotnull || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
         || ' generated ' || a.attgenerated::text
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE c.relnamespace = 'herald'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'relation ' || c.relname || ' kind ' || c.relkind::text || ' options '
         || coalesce(array_to_string(c.reloptions, ','), '') || ' acl ' || CASE WHEN c.relacl IS NULL
                   OR c.relacl = acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner)
              THEN 'default' ELSE c.relacl::text END
    FROM pg_class c WHERE c.relnamespace = 'herald'::regnamespace
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'herald'::regnamespace
  UNION ALL
  SELECT 'constraint ' || r.conrelid::regclass || ' ' || r.conname || ' ' || pg_get_constraintdef(r.oid)
    FROM pg_constraint r WHERE r.connamespace = 'herald'::regnamespace
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = 'herald'::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
    FROM pg_class c WHERE c.relnamespace = 'herald'::regnamespace AND c.relkind = 'v'
  UNION ALL
  SELECT 'event trigger ' || e.evtname || ' ' || e.evtevent || ' ' || e.evtfoid::regproc::text
    FROM pg_event_trigger e
  UNION ALL
  SELECT 'dumped ' || c.oid::regclass || ' ' || coalesce(x.extcondition[i], '')
    FROM pg_extension x, generate_subscripts(x.extconfig, 1) i, pg_class c
   WHERE x.extname = 'herald' AND c.oid = x.extconfig[i]
  UNION ALL
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
    FROM pg_depend d JOIN pg_extension x ON x.oid = d.refobjid
   WHERE d.refclassid = 'pg_extension'::regclass AND x.extname = 'herald' AND d.deptype = 'e'
) x ORDER BY line
"#;

async fn catalog(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(CATALOG, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The releases whose install scripts `make install` copies from sql/releases.
const RELEASES: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_from_every_release_equals_a_fresh_install() {
    let (env, fresh) = Env::start().await;
    let expected = catalog(&fresh).await;
    let current: String = fresh
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'herald'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    fresh
        .batch_execute(r#"CREATE ROLE "Ops Team""#)
        .await
        .unwrap();
    for release in RELEASES {
        let db = format!("from_{}", release.replace('.', "_"));
        fresh
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let upgraded = connect(&env.cluster.url(&db)).await;
        upgraded
            .batch_execute(&format!("CREATE EXTENSION herald VERSION '{release}'"))
            .await
            .unwrap_or_else(|e| {
                panic!("the {release} install script is installed (make install copies sql/releases): {e:?}")
            });
        // a grant an operator made survives the upgrade
        upgraded
            .batch_execute(
                r#"GRANT USAGE ON SCHEMA herald TO "Ops Team";
                   GRANT SELECT ON herald.queue_status TO "Ops Team";"#,
            )
            .await
            .unwrap();
        // so does EXECUTE on submit_job, which 0.8.0 makes anew with a parameter more
        let has_jobs = !["0.1.0", "0.2.0", "0.3.0", "0.4.0"].contains(release);
        if has_jobs {
            upgraded
                .batch_execute(
                    r#"GRANT EXECUTE ON FUNCTION herald.submit_job(text, jsonb, text, text, timestamptz) TO "Ops Team""#,
                )
                .await
                .unwrap_or_else(|e| panic!("grant on submit_job in {release}: {e:?}"));
        }
        upgraded
            .batch_execute("ALTER EXTENSION herald UPDATE")
            .await
            .unwrap_or_else(|e| panic!("upgrade from {release}: {e:?}"));
        if has_jobs {
            let row = upgraded
                .query_one(
                    r#"SELECT has_function_privilege('Ops Team',
                           'herald.submit_job(text, jsonb, text, text, timestamptz, jsonb)', 'EXECUTE')"#,
                    &[],
                )
                .await
                .unwrap();
            assert!(
                row.get::<_, bool>(0),
                "EXECUTE on submit_job kept by the upgrade from {release}"
            );
            upgraded
                .batch_execute(
                    r#"REVOKE EXECUTE ON FUNCTION herald.submit_job(text, jsonb, text, text, timestamptz, jsonb) FROM "Ops Team""#,
                )
                .await
                .unwrap();
        }
        let version: String = upgraded
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'herald'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, current, "upgrade from {release}");
        let row = upgraded
            .query_one(
                r#"SELECT has_table_privilege('Ops Team', 'herald.queue_status', 'SELECT')"#,
                &[],
            )
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "grant on queue_status kept by the upgrade from {release}"
        );
        upgraded
            .batch_execute(
                r#"REVOKE SELECT ON herald.queue_status FROM "Ops Team";
                   REVOKE USAGE ON SCHEMA herald FROM "Ops Team";"#,
            )
            .await
            .unwrap();
        let got = catalog(&upgraded).await;
        let only_fresh: Vec<_> = expected.iter().filter(|l| !got.contains(l)).collect();
        let only_upgraded: Vec<_> = got.iter().filter(|l| !expected.contains(l)).collect();
        assert!(
            only_fresh.is_empty() && only_upgraded.is_empty(),
            "fresh install and upgrade from {release} differ\nonly in fresh:\n  {}\nonly in upgraded:\n  {}",
            only_fresh
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            only_upgraded
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
        // and the upgraded database works: data capture and a session listener
        upgraded
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY);
                 CREATE TABLE seen (id int);
                 CREATE FUNCTION rec(e herald.event) RETURNS void LANGUAGE sql AS
                   $$ INSERT INTO seen VALUES ((e.details->'new'->>'id')::int) $$;
                 SELECT herald.add_data_listener('t', 'rec', sync => true);
                 INSERT INTO t VALUES (42);",
            )
            .await
            .unwrap();
        assert_eq!(
            count(&upgraded, "SELECT count(*) FROM seen WHERE id = 42").await,
            1
        );
        let row = upgraded
            .query_one(
                "WITH l AS (SELECT herald.add_data_listener('t', 'rec') AS id)
                 SELECT l.id FROM l",
                &[],
            )
            .await
            .unwrap();
        let id: i64 = row.get(0);
        upgraded
            .batch_execute("INSERT INTO t VALUES (43)")
            .await
            .unwrap();
        let row = upgraded
            .query_one("SELECT (herald.next_event($1, '5 s')).action", &[&id])
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("INSERT"));
    }
}

/// A 0.3.0 database in use (an application's listeners on a queue, a user event type and a
/// partitioned table, events pending) keeps delivering after `ALTER EXTENSION herald
/// UPDATE`: the queue allows its listeners' owner, the type is declared and granted, and
/// the partitioned table's capture trigger gets its new name and captures its partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_database_keeps_delivering() {
    let (env, admin) = Env::start().await;
    admin.batch_execute("CREATE DATABASE in_use").await.unwrap();
    admin.batch_execute("CREATE ROLE app LOGIN").await.unwrap();
    let db = connect(&env.cluster.url("in_use")).await;
    db.batch_execute(
        "CREATE EXTENSION herald VERSION '0.3.0';
         CREATE SCHEMA app AUTHORIZATION app;
         GRANT USAGE ON SCHEMA herald TO app;
         GRANT EXECUTE ON FUNCTION herald.emit(text, text, jsonb),
               herald.add_event_listener(text, text, text, boolean),
               herald.add_data_listener(regclass, text, text, text, boolean) TO app;
         INSERT INTO herald.event_queue (name, event_run) VALUES ('q', 1);",
    )
    .await
    .unwrap();
    // What the application did under 0.3.0 (its library is gone once the new one is
    // installed, so the rows are written as 0.3.0 wrote them).
    db.batch_execute(
        "CREATE TABLE app.seen (type text, source text, details jsonb);
         CREATE FUNCTION app.rec(e herald.event) RETURNS void LANGUAGE sql AS
           $$ INSERT INTO app.seen VALUES (e.type, e.source, e.details) $$;
         CREATE TABLE app.pt (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE app.pt1 PARTITION OF app.pt FOR VALUES FROM (0) TO (100);
         ALTER TABLE app.seen OWNER TO app; ALTER FUNCTION app.rec(herald.event) OWNER TO app;
         ALTER TABLE app.pt OWNER TO app;
         INSERT INTO herald.listener (kind, handler, event_types, queue, owner)
         VALUES ('event', 'app.rec(herald.event)', '{invoice}', 'q', 'app'),
                ('data', 'app.rec(herald.event)', '{INSERT=2}', 'q', 'app');
         UPDATE herald.listener SET tbl = 'app.pt' WHERE kind = 'data';
         CREATE TRIGGER herald_capture AFTER INSERT OR UPDATE OR DELETE ON app.pt
             FOR EACH ROW EXECUTE FUNCTION herald._capture();
         CREATE TRIGGER herald_capture_truncate AFTER TRUNCATE ON app.pt
             FOR EACH STATEMENT EXECUTE FUNCTION herald._capture();
         INSERT INTO herald.event (id, queue, type, action, source, listener)
         SELECT nextval('herald.event_id_seq'), 'q', 'invoice', 'before', 'app', l.id
           FROM herald.listener l WHERE l.kind = 'event';",
    )
    .await
    .unwrap();
    // Between installing the new library and updating the database, Herald says what to do.
    let err = db
        .batch_execute("SELECT herald.emit('invoice', 'too early')")
        .await
        .expect_err("the new library refuses an old schema");
    assert!(
        err.as_db_error().is_some_and(|e| e
            .hint()
            .is_some_and(|h| h.contains("ALTER EXTENSION herald UPDATE"))),
        "{err:?}"
    );
    let app = connect(&format!(
        "{} user=app",
        env.cluster.url("in_use").replace(" user=postgres", "")
    ))
    .await;
    db.batch_execute("ALTER EXTENSION herald UPDATE")
        .await
        .unwrap();
    app.batch_execute("SELECT herald.emit('invoice', 'after'); INSERT INTO app.pt VALUES (1);")
        .await
        .unwrap();
    db.batch_execute("SELECT * FROM herald.drain('q')")
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM app.seen WHERE type = 'invoice'").await,
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM app.seen WHERE type = 'DATA' AND source = 'app.pt'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.pt'::regclass AND tgname = 'herald_capture_' || 'app.pt'::regclass::oid").await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.event_log WHERE outcome = 'withheld'"
        )
        .await,
        0
    );
}
