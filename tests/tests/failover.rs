//! Standby failover (issue #10): a primary with a synchronous streaming standby, three
//! coordinators on a multi-host connection string, producers emitting; the primary is
//! stopped the way a crash stops it and the standby is promoted. Every acknowledged event
//! is handled exactly once and in order, and no handler's effect is doubled. A coordinator
//! connected to the standby alone stays idle until the promotion, then drains.
use herald_tests::*;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const SETUP: &str = "
    INSERT INTO herald.event_queue (name, event_run, event_amount_per_lookup) VALUES ('q', 1, 20);
    SELECT herald.add_event_listener('record', 'f', queue => 'q');";

const PER_PRODUCER: i32 = 400;

/// Emit `PER_PRODUCER` events, one per transaction; returns the positions `n` whose commit
/// was acknowledged. After an error it reconnects (through every host) and goes on with
/// the next position: an unacknowledged emit may or may not have committed.
async fn producer(url: String, producer: i32) -> Vec<i32> {
    let mut acked = Vec::new();
    let mut client: Option<Client> = None;
    for n in 0..PER_PRODUCER {
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Some(c)
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
                Err(e) => panic!("producer {producer} cannot reconnect: {e}"),
            };
        }
        let c = client.as_ref().unwrap();
        let emitted = c
            .execute(
                "SELECT herald.emit('f', 'made', jsonb_build_object('producer', $1::int, 'n', $2::int))",
                &[&producer, &n],
            )
            .await;
        match emitted {
            Ok(_) => acked.push(n),
            Err(_) => client = None,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_over_with_nothing_lost_or_doubled() {
    let (mut env, admin) = Env::start_with(SETUP).await;
    let standby = env.cluster.standby().expect("a streaming standby");
    env.cluster
        .configure(&[("synchronous_standby_names", "*")])
        .unwrap();
    env.cluster.reload().unwrap();
    wait_for(
        &admin,
        "SELECT count(*) = 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
        30,
        "a synchronous standby",
    )
    .await;

    // Herald's functions on a standby: a clear error.
    let on_standby = connect(&standby.url("postgres")).await;
    let err = on_standby
        .batch_execute("SELECT herald.emit('f', 'on the standby')")
        .await
        .expect_err("a standby is read-only");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("cannot run on a standby server")),
        "{err:?}"
    );

    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        env.cluster.port, standby.port
    );
    let mut idle = env.coordinator_on("s1", &standby.url("postgres"));
    let mut coordinators: Vec<_> = (1..=3)
        .map(|i| env.coordinator_on(&format!("c{i}"), &both))
        .collect();
    let producers: Vec<_> = (0..2)
        .map(|p| tokio::spawn(producer(both.clone(), p)))
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.cluster.stop_immediate().expect("crash the primary");
    tokio::time::sleep(Duration::from_millis(500)).await;
    standby.promote().expect("promote the standby");

    let mut acked: Vec<(i32, i32)> = Vec::new();
    for (p, handle) in producers.into_iter().enumerate() {
        acked.extend(handle.await.unwrap().into_iter().map(|n| (p as i32, n)));
    }
    let primary = connect(&both).await;
    wait_for(
        &primary,
        &format!(
            "SELECT (SELECT backlog FROM herald.queue_status WHERE name = 'q') = 0
                AND (SELECT count(*) FROM handled) >= {}",
            acked.len()
        ),
        120,
        "every event handled on the new primary",
    )
    .await;

    // Every acknowledged event handled, none twice, each producer's in order.
    let handled: Vec<(i32, i32)> = primary
        .query("SELECT producer, n FROM handled", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<_> = acked.iter().filter(|a| !handled.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never handled: {missing:?}"
    );
    let distinct = count(&primary, "SELECT count(DISTINCT event_id) FROM handled").await;
    assert_exactly_once_in_order(&primary, "q", distinct).await;
    assert_eq!(
        count(&primary, "SELECT count(*) FROM (SELECT producer, n FROM handled GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0,
        "no handler effect doubled"
    );
    assert!(
        acked.len() > PER_PRODUCER as usize,
        "producers went on after the failover ({} acknowledged)",
        acked.len()
    );

    // The coordinator of the standby stayed idle, without an error loop, and took over.
    let log = env.log_of("s1");
    assert!(log.contains("idle until it is promoted"), "{log}");
    assert!(log.contains("promoted"), "{log}");
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings <= 2, "an error loop on the standby:\n{log}");
    assert!(idle.terminate().success());
    for c in coordinators.iter_mut() {
        assert!(c.terminate().success());
    }
}
