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
const RELEASES: &[&str] = &["0.1.0", "0.2.0", "0.3.0"];

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
                panic!("the {release} install script is installed (make install copies sql/releases): {e}")
            });
        // a grant an operator made survives the upgrade
        upgraded
            .batch_execute(
                r#"GRANT USAGE ON SCHEMA herald TO "Ops Team";
                   GRANT SELECT ON herald.queue_status TO "Ops Team";"#,
            )
            .await
            .unwrap();
        upgraded
            .batch_execute("ALTER EXTENSION herald UPDATE")
            .await
            .unwrap_or_else(|e| panic!("upgrade from {release}: {e:?}"));
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
