//! Reports and report groups end to end (issue #12), with four coordinators writing to one
//! file spool: every group is output exactly once and none is missing, however its last
//! members race; a coordinator killed in the middle of output has its output resolved by
//! the channel's policy.
//!
//! The race is made on purpose: the last two members of each group wait in their report
//! query (a barrier) until both run, so that they end at the same moment, on different
//! nodes as often as the runners allow.
use herald_tests::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const SETUP: &str = r#"
-- The barrier: the last two members of a group wait (up to a second) until both have
-- started, so that they end together.
CREATE FUNCTION barrier(p jsonb) RETURNS int LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    IF (p->>'n')::int < (p->>'of')::int - 1 THEN
        RETURN 0;
    END IF;
    WHILE (SELECT count(*) FROM herald.report_job r JOIN herald.job j ON j.id = r.job
            WHERE r.group_id = (p->>'g')::bigint AND r.member_no >= (p->>'of')::int - 1
              AND j.state = 'STARTED') < 2
          AND clock_timestamp() < t0 + interval '1 second' LOOP
        PERFORM pg_sleep(0.002);
    END LOOP;
    RETURN 1;
END $$;
SELECT herald.report('member', 'SELECT ($1->>''g'')::bigint AS g, ($1->>''n'')::int AS n, barrier($1) AS b', 'csv');
"#;

/// Create `groups` groups of 1–8 members (from `sessions` sessions), each sealed right
/// after its members are submitted; the number of members of each group.
async fn submit_groups(env: &Env, groups: i64, sessions: i64) -> HashMap<i64, i64> {
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let url = env.url();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let mut made = HashMap::new();
            for i in 0..groups / sessions {
                let members = (s * 7 + i * 5) % 8 + 1;
                c.batch_execute("BEGIN").await.unwrap();
                let g: i64 = c
                    .query_one(
                        "SELECT herald.create_report_group('invoice ' || $1::text, 'spool', 'hold')",
                        &[&(s * 100_000 + i).to_string()],
                    )
                    .await
                    .unwrap()
                    .get(0);
                for n in 1..=members {
                    c.execute(
                        "SELECT herald.submit_report('member', jsonb_build_object('g', $1::bigint, 'n', $2::int, 'of', $3::int), $1)",
                        &[&g, &(n as i32), &(members as i32)],
                    )
                    .await
                    .unwrap();
                }
                c.execute("SELECT herald.seal_group($1)", &[&g]).await.unwrap();
                c.batch_execute("COMMIT").await.unwrap();
                made.insert(g, members);
            }
            made
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn spool_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_coordinators_output_every_group_exactly_once() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let spool = env.cluster.dir.join("spool");
    let spool_arg = spool.to_string_lossy().into_owned();
    db.batch_execute("SELECT herald.output_channel('spool', 'file', 'invoices')")
        .await
        .unwrap();
    let nodes: Vec<_> = (0..4)
        .map(|i| {
            env.coordinator_with(
                &format!("node{i}"),
                &env.url(),
                &["--spool-dir", &spool_arg],
            )
        })
        .collect();
    let groups = 2000;
    let made = submit_groups(&env, groups, 4).await;
    assert_eq!(made.len() as i64, groups);
    wait_for(
        &db,
        &format!("SELECT count(*) = {groups} FROM herald.report_output WHERE state = 'sent'"),
        600,
        "every group's output sent",
    )
    .await;
    // One output record per group, sent once, by one node, decided once.
    assert_eq!(
        count(&db, "SELECT count(*) FROM herald.report_output").await,
        groups
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.report_output WHERE epoch = 1 AND attempts = 1"
        )
        .await,
        groups,
        "no output was claimed twice"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM herald.report_group WHERE state = 'output_claimed' AND decided_by IS NOT NULL").await,
        groups
    );
    // Every output lists all its members in order.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM herald.report_output o
              WHERE o.members = ARRAY(SELECT r.job FROM herald.report_job r
                                       WHERE r.group_id = o.group_id ORDER BY r.member_no)
                AND cardinality(o.failed) = 0"
        )
        .await,
        groups
    );
    // The spool holds exactly one file per group, none left half-written, each the
    // members' artefacts in order with the checksum the record has.
    let files = spool_files(&spool.join("invoices"));
    assert_eq!(
        files.len() as i64,
        groups,
        "one file per group: {:?}",
        &files[..files.len().min(5)]
    );
    let rows = db
        .query(
            "SELECT o.group_id, o.checksum,
                    (SELECT string_agg(convert_from(r.content, 'UTF8'), '' ORDER BY r.member_no)
                       FROM herald.report_job r WHERE r.group_id = o.group_id)
               FROM herald.report_output o",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let g: i64 = row.get(0);
        let checksum: String = row.get(1);
        let expected: String = row.get(2);
        let path = spool.join("invoices").join(format!("group-{g}.csv"));
        let content =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(content, expected, "group {g}");
        assert_eq!(
            content.matches("g,n,b\n").count() as i64,
            made[&g],
            "group {g}'s members"
        );
        assert_eq!(checksum.len(), 64);
    }
    // The race happened: last members of many groups ended on different nodes.
    let split = count(
        &db,
        "SELECT count(*) FROM herald.report_group g
          WHERE g.members >= 2
            AND (SELECT count(DISTINCT j.node) FROM herald.report_job r JOIN herald.job j ON j.id = r.job
                  WHERE r.group_id = g.id AND r.member_no >= g.members - 1) = 2",
    )
    .await;
    eprintln!("groups whose last two members ended on different nodes: {split}");
    assert!(split > 0, "the last members never raced on two nodes");
    for mut n in nodes {
        assert!(n.terminate().success());
    }
}

/// A coordinator that dies mid-output: its file output is written again by another node
/// (same name, same content), its print output becomes uncertain and is printed again
/// only when an operator reprints it, as a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_output_leaves_it_to_the_channel_policy() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    let spool = env.cluster.dir.join("spool");
    let spool_arg = spool.to_string_lossy().into_owned();
    // A printer that takes its time (a fake `lp` first on PATH), so that the node can be
    // killed while it prints; it records each job it got.
    let bin = env.cluster.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let printed = env.cluster.dir.join("printed");
    std::fs::write(
        bin.join("lp"),
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nsleep 3\nexit 0\n",
            printed.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", &bin.join("lp").to_string_lossy()])
        .status()
        .unwrap();
    db.batch_execute(
        "SELECT herald.output_channel('spool', 'file', 'invoices');
         SELECT herald.output_channel('printer', 'print', 'PDF');",
    )
    .await
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start = |node: &str| {
        let log = std::fs::File::create(env.cluster.dir.join(format!("{node}.log"))).unwrap();
        let child = std::process::Command::new(herald_bin())
            .args([
                "run",
                "--database-url",
                &env.url(),
                "--node",
                node,
                "--spool-dir",
                &spool_arg,
            ])
            .env("PATH", &path)
            .env("HERALD_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        child
    };
    let mut first = start("first");
    let g: i64 = db
        .query_one(
            "SELECT herald.create_report_group('to print', 'printer')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "SELECT herald.submit_report('member', jsonb_build_object('g', $1::bigint, 'n', 1, 'of', 1), $1)",
        &[&g],
    )
    .await
    .unwrap();
    db.execute("SELECT herald.seal_group($1)", &[&g])
        .await
        .unwrap();
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sending')"),
        30,
        "the print is being sent",
    )
    .await;
    // Kill it while the printer has the job (lp is still running).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !printed.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the printer got the job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = start("second");
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'uncertain')"),
        30,
        "the print left uncertain",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // (The printer got the job before the node died: whether it printed is what is
    // uncertain.)
    assert_eq!(
        std::fs::read_to_string(&printed)
            .unwrap_or_default()
            .lines()
            .count(),
        1,
        "an uncertain print is never printed again by itself"
    );
    db.execute(
        "SELECT herald.reprint_output(id) FROM herald.report_output WHERE group_id = $1",
        &[&g],
    )
    .await
    .unwrap();
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sent' AND as_copy AND node = 'second')"),
        30,
        "the copy printed",
    )
    .await;
    let printed = std::fs::read_to_string(&printed).unwrap();
    let jobs: Vec<&str> = printed.lines().collect();
    assert_eq!(jobs.len(), 2, "{printed}");
    assert!(
        !jobs[0].contains("0-copy.txt") && jobs[1].contains("0-copy.txt"),
        "the reprint has a COPY banner: {printed}"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

/// A CUPS print server for a test: Debian's cups with cups-pdf (which prints into
/// `$HOME/PDF`). Starts `cupsd` unless one runs already, adds a PDF queue, and on drop
/// removes the queue and stops what it started.
struct Cups {
    queue: String,
    started: Option<std::process::Child>,
}

impl Cups {
    fn start(queue: &str) -> Cups {
        let running = std::process::Command::new("lpstat")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("is running"))
            .unwrap_or(false);
        let started = (!running).then(|| {
            std::process::Command::new("/usr/sbin/cupsd")
                .arg("-f")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect(
                    "start cupsd (apt-get install cups printer-driver-cups-pdf; make setup does)",
                )
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let added = std::process::Command::new("lpadmin")
                .args([
                    "-p",
                    queue,
                    "-v",
                    "cups-pdf:/",
                    "-m",
                    "lsb/usr/cups-pdf/CUPS-PDF_opt.ppd",
                    "-E",
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if added {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "lpadmin could not add the {queue} queue"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Cups {
            queue: queue.to_string(),
            started,
        }
    }
}

impl Drop for Cups {
    fn drop(&mut self) {
        let _ = std::process::Command::new("lpadmin")
            .args(["-x", &self.queue])
            .status();
        if let Some(mut cupsd) = self.started.take() {
            let _ = cupsd.kill();
            let _ = cupsd.wait();
        }
    }
}

/// The PDFs cups-pdf wrote for print jobs titled `title...`.
fn printed_pdfs(title: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join("PDF");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(title))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A group printed through a real CUPS queue: one print job with every member, landing
/// as one PDF, with a CALLOUT event before and after the print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_prints_once_to_a_real_cups_queue() {
    let _cups = Cups::start("HERALD_E2E_PDF");
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute(
        "SELECT herald.output_channel('pdf', 'print', 'HERALD_E2E_PDF');
         CREATE TABLE callouts (action text, details jsonb);
         CREATE FUNCTION on_callout(e herald.event) RETURNS void LANGUAGE sql AS
           $$ INSERT INTO callouts VALUES (e.action, e.details) $$;
         SELECT herald.add_system_listener('on_callout', 'CALLOUT', sync => true);",
    )
    .await
    .unwrap();
    let title = format!("herald-e2e-{}", std::process::id());
    let mut node = env.coordinator("printer");
    let g: i64 = db
        .query_one("SELECT herald.create_report_group($1, 'pdf')", &[&title])
        .await
        .unwrap()
        .get(0);
    for n in 1..=3 {
        db.execute(
            "SELECT herald.submit_report('member', jsonb_build_object('g', $1::bigint, 'n', $2::int, 'of', 3), $1)",
            &[&g, &n],
        )
        .await
        .unwrap();
    }
    db.execute("SELECT herald.seal_group($1)", &[&g])
        .await
        .unwrap();
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sent')"),
        60,
        "the group printed",
    )
    .await;
    // cups-pdf writes the PDF after the job has left the queue: wait until it is whole.
    let whole = |pdfs: &[std::path::PathBuf]| {
        pdfs.first()
            .and_then(|p| std::fs::read(p).ok())
            .is_some_and(|b| b.starts_with(b"%PDF") && b.trim_ascii_end().ends_with(b"%%EOF"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !whole(&printed_pdfs(&title)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pdfs = printed_pdfs(&title);
    assert_eq!(pdfs.len(), 1, "one PDF for the group: {pdfs:?}");
    assert!(whole(&pdfs), "a whole PDF");
    assert_eq!(
        count(&db, "SELECT count(*) FROM callouts WHERE details->>'channel' = 'pdf' AND details->>'target' = 'HERALD_E2E_PDF'").await,
        2,
        "CALLOUT begin and end"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM callouts WHERE action = 'end' AND (details->>'ok')::boolean"
        )
        .await,
        1
    );
    for p in pdfs {
        let _ = std::fs::remove_file(p);
    }
    assert!(node.terminate().success());
}

/// A group mailed through a real SMTP server on the loopback: one mail with every member
/// attached, its Message-ID derived from the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_mailed_once_with_every_member_attached() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute(
        r#"SELECT herald.output_channel('books', 'email', 'books@erp.example', '{"subject": "Your invoices"}')"#,
    )
    .await
    .unwrap();
    let port = free_port();
    let maildir = env.cluster.dir.join("maildir");
    let _server = SmtpServer::start(port, &maildir);
    let smtp = format!("smtp://127.0.0.1:{port}");
    let mut node = env.coordinator_with("mailer", &env.url(), &["--smtp-url", &smtp]);
    let g: i64 = db
        .query_one(
            "SELECT herald.create_report_group('order 4711', 'books')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut jobs = Vec::new();
    for n in 1..=3 {
        let job: i64 = db
            .query_one(
                "SELECT herald.submit_report('member', jsonb_build_object('g', $1::bigint, 'n', $2::int, 'of', 3), $1)",
                &[&g, &n],
            )
            .await
            .unwrap()
            .get(0);
        jobs.push(job);
    }
    db.execute("SELECT herald.seal_group($1)", &[&g])
        .await
        .unwrap();
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sent')"),
        60,
        "the group mailed",
    )
    .await;
    let origin: String = db
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '.' || current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mails = mails(&maildir);
    assert_eq!(mails.len(), 1, "one mail for the group");
    let mail = &mails[0];
    assert!(
        mail.contains(&format!(
            "Message-ID: <herald-group-{g}.{origin}@herald.invalid>"
        )),
        "{mail}"
    );
    assert!(mail.contains("Subject: Your invoices"), "{mail}");
    assert!(mail.contains("To: books@erp.example"), "{mail}");
    for job in jobs {
        assert!(
            mail.contains(&format!("member-{job}.csv")),
            "attachment of job {job}: {mail}"
        );
    }
    assert!(node.terminate().success());
}

/// The output record of group `g`: state, node, epoch.
async fn output_of(db: &tokio_postgres::Client, g: i64) -> (String, String, i64) {
    let row = db
        .query_one(
            "SELECT state, coalesce(node, ''), epoch FROM herald.report_output WHERE group_id = $1",
            &[&g],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A sealed group of `members` members (report 'member') to `channel`.
async fn sealed_group(db: &tokio_postgres::Client, channel: &str, members: i32) -> i64 {
    let g: i64 = db
        .query_one("SELECT herald.create_report_group('case', $1)", &[&channel])
        .await
        .unwrap()
        .get(0);
    for n in 1..=members {
        db.execute(
            "SELECT herald.submit_report('member', jsonb_build_object('g', $1::bigint, 'n', $2::int, 'of', $3::int), $1)",
            &[&g, &n, &members],
        )
        .await
        .unwrap();
    }
    db.execute("SELECT herald.seal_group($1)", &[&g])
        .await
        .unwrap();
    g
}

/// A node killed in the middle of writing a group's file: another node writes the whole
/// file again under the same name, and nothing half-written is left in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_off_by_a_killed_node_is_written_again_whole() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute("SELECT herald.output_channel('spool', 'file', 'invoices')")
        .await
        .unwrap();
    let spool = env.cluster.dir.join("spool");
    let dir = spool.join("invoices");
    std::fs::create_dir_all(&dir).unwrap();
    let spool_arg = spool.to_string_lossy().into_owned();
    let mut first = env.coordinator_with("first", &env.url(), &["--spool-dir", &spool_arg]);
    // The group's number is the next one; the first node will write it through its own
    // temporary file, which is made a FIFO here: opening it blocks until someone reads, so
    // the node is caught mid-write, its output 'sending', the file not yet in place.
    let next: i64 = db
        .query_one(
            "SELECT coalesce(max(id), 0) + 1 FROM herald.report_group",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let fifo = dir.join(format!(".group-{next}.csv.tmp-{}", first.pid()));
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let g = sealed_group(&db, "spool", 3).await;
    assert_eq!(g, next);
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sending')"),
        60,
        "the first node writes the file",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(output_of(&db, g).await.0, "sending", "caught mid-write");
    assert!(!dir.join(format!("group-{g}.csv")).exists());
    first.kill9();
    let mut second = env.coordinator_with("second", &env.url(), &["--spool-dir", &spool_arg]);
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sent')"),
        60,
        "the second node writes the file again",
    )
    .await;
    assert_eq!(output_of(&db, g).await, ("sent".into(), "second".into(), 2));
    assert_eq!(
        spool_files(&dir),
        vec![format!("group-{g}.csv")],
        "one whole file, no temporary file left"
    );
    let expected: String = db
        .query_one(
            "SELECT string_agg(convert_from(content, 'UTF8'), '' ORDER BY member_no)
               FROM herald.report_job WHERE group_id = $1",
            &[&g],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("group-{g}.csv"))).unwrap(),
        expected
    );
    assert!(second.terminate().success());
}

/// A node killed while the mail server takes a group's mail (delivered, not yet
/// acknowledged): another node sends it again with the same Message-ID, so the two copies
/// are recognisably one mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_cut_off_by_a_killed_node_is_resent_with_the_same_message_id() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute("SELECT herald.output_channel('books', 'email', 'books@erp.example')")
        .await
        .unwrap();
    let port = free_port();
    let maildir = env.cluster.dir.join("maildir");
    let _server = SmtpServer::start_slow(port, &maildir, Duration::from_secs(3));
    let smtp = format!("smtp://127.0.0.1:{port}");
    let mut first = env.coordinator_with("first", &env.url(), &["--smtp-url", &smtp]);
    let g = sealed_group(&db, "books", 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while mails(&maildir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first node sends the mail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(output_of(&db, g).await.0, "sending");
    first.kill9();
    let mut second = env.coordinator_with("second", &env.url(), &["--smtp-url", &smtp]);
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sent')"),
        60,
        "the second node sends the mail again",
    )
    .await;
    assert_eq!(output_of(&db, g).await, ("sent".into(), "second".into(), 2));
    let ids: Vec<String> = mails(&maildir)
        .iter()
        .map(|m| {
            m.lines()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 2, "sent twice: {ids:?}");
    assert!(
        ids[0].contains(&format!("<herald-group-{g}.")) && ids[0] == ids[1],
        "{ids:?}"
    );
    assert!(second.terminate().success());
}

/// A mail server that is down for a while: the group's mail waits (pending, tried again
/// after the channel's delay) and goes out once the server is back, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_down_for_a_while_delays_the_mail_without_losing_it() {
    let (env, db) = Env::start().await;
    db.batch_execute(SETUP).await.unwrap();
    db.batch_execute(
        r#"SELECT herald.output_channel('books', 'email', 'books@erp.example', '{"retry_seconds": 1}')"#,
    )
    .await
    .unwrap();
    let port = free_port();
    let smtp = format!("smtp://127.0.0.1:{port}");
    let mut node = env.coordinator_with("mailer", &env.url(), &["--smtp-url", &smtp]);
    let g = sealed_group(&db, "books", 1).await;
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'pending' AND attempts >= 1 AND next_at IS NOT NULL AND error LIKE '%cannot reach%')"),
        60,
        "the output waits for the server",
    )
    .await;
    let maildir = env.cluster.dir.join("maildir");
    let _server = SmtpServer::start(port, &maildir);
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sent' AND attempts >= 2)"),
        60,
        "the mail sent once the server is back",
    )
    .await;
    assert_eq!(mails(&maildir).len(), 1);
    assert!(node.terminate().success());
}

/// A group of pdf reports written to a file channel: PDFs cannot be joined by appending
/// them, so each member is a PDF file of its own (`group-N.<job>.pdf`), each whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_group_is_one_whole_pdf_file_per_member() {
    let (env, db) = Env::start().await;
    db.batch_execute(
        "SELECT herald.report('slip', 'SELECT ($1->>''n'')::int AS n, ''Müller & Söhne'' AS customer', 'pdf');
         SELECT herald.output_channel('spool', 'file', 'slips');",
    )
    .await
    .unwrap();
    let spool = env.cluster.dir.join("spool");
    let spool_arg = spool.to_string_lossy().into_owned();
    let mut node = env.coordinator_with("pdf", &env.url(), &["--spool-dir", &spool_arg]);
    let g: i64 = db
        .query_one("SELECT herald.create_report_group('slips', 'spool')", &[])
        .await
        .unwrap()
        .get(0);
    for n in 1..=3 {
        db.execute(
            "SELECT herald.submit_report('slip', jsonb_build_object('n', $1::int), $2)",
            &[&n, &g],
        )
        .await
        .unwrap();
    }
    db.execute("SELECT herald.seal_group($1)", &[&g])
        .await
        .unwrap();
    wait_for(
        &db,
        &format!("SELECT EXISTS (SELECT FROM herald.report_output WHERE group_id = {g} AND state = 'sent')"),
        60,
        "the group's output",
    )
    .await;
    let jobs: Vec<i64> = db
        .query(
            "SELECT job FROM herald.report_job WHERE group_id = $1 ORDER BY member_no",
            &[&g],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dir = spool.join("slips");
    let mut expected: Vec<String> = jobs.iter().map(|j| format!("group-{g}.{j}.pdf")).collect();
    expected.sort();
    assert_eq!(spool_files(&dir), expected);
    for j in &jobs {
        let file = std::fs::read(dir.join(format!("group-{g}.{j}.pdf"))).unwrap();
        let stored: Vec<u8> = db
            .query_one("SELECT content FROM herald.report_job WHERE job = $1", &[j])
            .await
            .unwrap()
            .get(0);
        assert_eq!(file, stored, "the member's artefact, whole");
        assert!(file.starts_with(b"%PDF-") && file.trim_ascii_end().ends_with(b"%%EOF"));
    }
    assert!(node.terminate().success());
}
