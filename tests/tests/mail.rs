//! Outcome mails through a real SMTP server on the loopback (Debian's python3-aiosmtpd,
//! delivering into a maildir): a job completes while the mail server is down, its mail is
//! retried and sent once the server is up, and no outcome is ever mailed twice, with two
//! coordinators sending.
use herald_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_mails_wait_for_a_down_server_and_are_never_sent_twice() {
    let (env, db) = Env::start().await;
    db.batch_execute(
        "CREATE FUNCTION post(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{\"posted\": 3}'::jsonb $$;
         CREATE FUNCTION refuse(job bigint, p jsonb) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'books not balanced'; END $$;
         SELECT herald.create_job_type('post', 'post', startnow => true);
         SELECT herald.create_job_type('strict_post', 'post', before_completion => 'refuse', startnow => true);",
    )
    .await
    .unwrap();
    let port = free_port();
    let maildir = env.cluster.dir.join("maildir");
    let smtp = format!("smtp://127.0.0.1:{port}");
    let args = [
        "--smtp-url",
        smtp.as_str(),
        "--mail-from",
        "Herald <herald@erp.example>",
    ];
    let _nodes = [
        env.coordinator_with("a", &env.url(), &args),
        env.coordinator_with("b", &env.url(), &args),
    ];
    let mut jobs = Vec::new();
    for (t, n) in [("post", 3), ("strict_post", 2)] {
        for _ in 0..n {
            let id: i64 = db
                .query_one(
                    "SELECT herald.submit_job($1, '{}', notify_email => 'clerk@erp.example')",
                    &[&t],
                )
                .await
                .unwrap()
                .get(0);
            jobs.push(id);
        }
    }
    // The mail server is down: the jobs end all the same, and their mails wait.
    wait_for(
        &db,
        "SELECT count(*) FILTER (WHERE state = 'COMPLETED') = 3
            AND count(*) FILTER (WHERE state = 'FINISHERROR') = 2 FROM herald.job",
        60,
        "every job ended",
    )
    .await;
    wait_for(
        &db,
        "SELECT bool_and(mail_state = 'retry' AND mail_error LIKE '%cannot reach%') FROM herald.job",
        60,
        "every mail waiting for the server",
    )
    .await;
    assert!(mails(&maildir).is_empty());

    // The server comes up: every outcome is mailed, once.
    let _server = SmtpServer::start(port, &maildir);
    wait_for(
        &db,
        "SELECT bool_and(mail_state = 'sent') FROM herald.job",
        90,
        "every mail sent",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = mails(&maildir);
    assert_eq!(got.len(), 5, "one mail per outcome");
    for id in &jobs {
        let theirs: Vec<&String> = got
            .iter()
            .filter(|m| m.contains(&format!("Message-ID: <herald-job-{id}-")))
            .collect();
        assert_eq!(theirs.len(), 1, "job {id} mailed once");
        let m = theirs[0];
        assert!(m.contains("To: clerk@erp.example"), "{m}");
        assert!(m.contains("From: Herald <herald@erp.example>"), "{m}");
        assert!(m.contains(&format!("Subject: Herald job {id} (")), "{m}");
        assert!(m.contains("Duration:"), "{m}");
    }
    let failed = got.iter().filter(|m| m.contains(") failed")).count();
    assert_eq!(failed, 2, "the FINISHERROR outcomes say so");
    assert_eq!(
        got.iter()
            .filter(|m| m.contains("books not balanced"))
            .count(),
        2
    );
    // Sent by whichever node claimed each; recorded as such.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.job WHERE mail_node IN ('a', 'b')"
        )
        .await,
        5
    );
}
