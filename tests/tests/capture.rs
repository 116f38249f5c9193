//! Data-change capture end to end: concurrent writers, a coordinator, exactly once and
//! per-row history in commit order.
use herald_tests::*;

const SETUP: &str = "
    CREATE TABLE stock (item int PRIMARY KEY, qty int NOT NULL, note text);
    CREATE TABLE history (seq bigserial PRIMARY KEY, event_id bigint, action text, item int,
                          old_qty int, new_qty int);
    CREATE FUNCTION on_stock(e herald.event) RETURNS void LANGUAGE sql AS $$
        INSERT INTO history (event_id, action, item, old_qty, new_qty)
        VALUES (e.id, e.action,
                coalesce((e.details->'new'->>'item')::int, (e.details->'old'->>'item')::int),
                (e.details->'old'->>'qty')::int, (e.details->'new'->>'qty')::int)
    $$;
    INSERT INTO herald.event_queue (name, event_run, event_amount_per_lookup) VALUES ('stock', 1, 50);
    SELECT herald.add_data_listener('stock', 'on_stock', 'INSERT=3,UPDATE=3,DELETE=3', queue => 'stock');
";

/// 4 sessions write 20,000 row changes concurrently; every change arrives exactly once and
/// each row's history (insert, updates, delete) arrives in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_every_change_once_in_commit_order() {
    let (env, db) = Env::start_with(SETUP).await;
    let _node = env.coordinator("a");
    // 4 writers share 100 items: each change is an insert (first), updates that
    // increment qty, or a delete followed by a re-insert; qty increases along each row's
    // life so that commit order is checkable.
    let mut writers = Vec::new();
    for w in 0..4 {
        let url = env.url();
        writers.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let upsert = client
                .prepare(
                    "INSERT INTO stock (item, qty) VALUES ($1, 1)
                     ON CONFLICT (item) DO UPDATE SET qty = stock.qty + 1",
                )
                .await
                .unwrap();
            let delete = client
                .prepare("DELETE FROM stock WHERE item = $1")
                .await
                .unwrap();
            let mut changes = 0;
            let mut i: i32 = 0;
            while changes < 5000 {
                let item = (i * 7 + w * 13) % 100;
                if i % 97 == 96 {
                    changes += client.execute(&delete, &[&item]).await.unwrap() as i32;
                } else {
                    client.execute(&upsert, &[&item]).await.unwrap();
                    changes += 1;
                }
                i += 1;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    wait_for(
        &db,
        "SELECT count(*) >= 20000 FROM history",
        180,
        "all changes handled",
    )
    .await;
    wait_for(
        &db,
        "SELECT backlog = 0 FROM herald.queue_status",
        30,
        "empty backlog",
    )
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM history").await,
        20000,
        "every change exactly once"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT event_id) FROM history").await,
        20000
    );
    // per row: each update's old qty is the previous event's new qty; after an insert qty = 1
    let broken = count(
        &db,
        "SELECT count(*) FROM (
             SELECT action, old_qty, new_qty,
                    lag(new_qty) OVER w AS prev_new, lag(action) OVER w AS prev_action
               FROM history WINDOW w AS (PARTITION BY item ORDER BY seq)) h
          WHERE (action = 'UPDATE' AND old_qty IS DISTINCT FROM prev_new)
             OR (action = 'DELETE' AND old_qty IS DISTINCT FROM prev_new)
             OR (action = 'INSERT' AND (new_qty <> 1 OR prev_action IN ('INSERT', 'UPDATE')))",
    )
    .await;
    assert_eq!(broken, 0, "each row's history arrives in commit order");
    // the final state matches the last event of each row
    let mismatched = count(
        &db,
        "SELECT count(*) FROM (SELECT DISTINCT ON (item) item, action, new_qty FROM history ORDER BY item, seq DESC) last
           FULL JOIN stock s USING (item)
          WHERE (last.action = 'DELETE') <> (s.item IS NULL) OR (s.item IS NOT NULL AND s.qty <> last.new_qty)",
    )
    .await;
    assert_eq!(mismatched, 0);
}

/// Listeners added and removed while other sessions write: nothing breaks, and a listener
/// sees exactly the changes committed while it existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_while_others_write() {
    let (env, db) = Env::start_with(SETUP).await;
    db.batch_execute(
        "CREATE TABLE seen2 (event_id bigint);
         CREATE FUNCTION second(e herald.event) RETURNS void LANGUAGE sql AS $$ INSERT INTO seen2 VALUES (e.id) $$;",
    )
    .await
    .unwrap();
    let _node = env.coordinator("a");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (url, stop) = (env.url(), stop.clone());
        writers.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .execute(
                        "INSERT INTO stock (item, qty) VALUES ($1, 1) ON CONFLICT (item) DO UPDATE SET qty = stock.qty + 1",
                        &[&((i * 3 + w) % 50)],
                    )
                    .await
                    .unwrap();
                i += 1;
            }
            i
        }));
    }
    for _ in 0..5 {
        let before = count(&db, "SELECT count(*) FROM seen2").await;
        let id: i64 = db
            .query_one(
                "SELECT herald.add_data_listener('stock', 'second', queue => 'stock')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        // Live until the listener has had changes handled (writers keep writing).
        wait_for(
            &db,
            &format!("SELECT count(*) > {before} FROM seen2"),
            30,
            "the temporary listener receives changes",
        )
        .await;
        db.execute("SELECT herald.remove_listener($1)", &[&id])
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    wait_for(
        &db,
        &format!("SELECT count(*) >= {written} FROM history"),
        120,
        "main listener caught up",
    )
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM history").await,
        written as i64,
        "the permanent listener saw every change"
    );
    let triggers = count(
        &db,
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'stock'::regclass AND NOT tgisinternal",
    )
    .await;
    assert_eq!(triggers, 2, "the trigger stays while a listener remains");
    assert!(
        count(&db, "SELECT count(*) FROM seen2").await > 0,
        "the temporary listeners received changes"
    );
}
