//! Helpers for the end-to-end tests: a private cluster with Herald installed, coordinator
//! processes that can be stopped or killed, and polling with a deadline.
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use herald_coordinator::cluster::{find_bindir, ClusterOptions, PgCluster};
use tokio_postgres::Client;

/// A private cluster with `CREATE EXTENSION herald` done in database `postgres`.
pub struct Env {
    pub cluster: PgCluster,
}

impl Env {
    pub async fn start() -> (Env, Client) {
        let cluster = PgCluster::start(&ClusterOptions::default())
            .expect("start a private PostgreSQL cluster");
        let env = Env { cluster };
        let client = env.connect().await;
        client
            .batch_execute("CREATE EXTENSION herald")
            .await
            .expect("CREATE EXTENSION herald (run `make install` first)");
        (env, client)
    }

    /// `start`, then the `RECORDER` table and handler, then `sql` (queues, listeners).
    pub async fn start_with(sql: &str) -> (Env, Client) {
        let (env, db) = Env::start().await;
        db.batch_execute(RECORDER).await.expect("recorder");
        db.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        (env, db)
    }

    pub fn url(&self) -> String {
        self.cluster.url("postgres")
    }

    pub async fn connect(&self) -> Client {
        connect(&self.url()).await
    }

    /// Start `herald run --node <node>` against this cluster.
    pub fn coordinator(&self, node: &str) -> Coordinator {
        self.coordinator_on(node, &self.url())
    }

    /// Start `herald run --node <node> --database-url <url>`.
    pub fn coordinator_on(&self, node: &str, url: &str) -> Coordinator {
        self.coordinator_with(node, url, &[])
    }

    /// Start `herald run --node <node> --database-url <url> <args>`.
    pub fn coordinator_with(&self, node: &str, url: &str, args: &[&str]) -> Coordinator {
        let log =
            std::fs::File::create(self.cluster.dir.join(format!("{node}.log"))).expect("log file");
        let child = Command::new(herald_bin())
            .args(["run", "--database-url", url, "--node", node])
            .args(args)
            .env("HERALD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn herald run");
        Coordinator {
            child: Some(child),
            node: node.to_string(),
        }
    }

    /// Run one of the cluster's client programs (pg_dump, pg_restore, ...) against it as
    /// the superuser; panics with its output if it fails.
    pub fn tool(&self, program: &str, args: &[&str]) {
        let bindir = find_bindir().expect("PostgreSQL binaries");
        let url = self.url();
        let port = url
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .expect("port");
        let out = Command::new(bindir.join(program))
            .args(["-h", "127.0.0.1", "-p", port, "-U", "postgres"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The connection string of another database of this cluster.
    pub fn url_of(&self, dbname: &str) -> String {
        self.cluster.url(dbname)
    }

    pub fn log_of(&self, node: &str) -> String {
        std::fs::read_to_string(self.cluster.dir.join(format!("{node}.log"))).unwrap_or_default()
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A running coordinator process; killed when dropped.
pub struct Coordinator {
    child: Option<Child>,
    pub node: String,
}

impl Coordinator {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process and its connections stay, it just does nothing (a stalled node).
    pub fn pause(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
    }

    /// SIGCONT after [`Coordinator::pause`].
    pub fn resume(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }

    /// SIGTERM, then wait (at most 30 s) for a graceful exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("coordinator already stopped");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "coordinator {} did not stop within 30 s of SIGTERM",
                    self.node
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The coordinator binary (built by `make test` before the tests run).
pub fn herald_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/herald");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p herald-coordinator` (make test does)",
        bin.display()
    );
    bin
}

/// `event_run = 0`, then wait until no coordinator holds the queue any more.
pub async fn stop_queue(client: &Client, queue: &str) {
    client
        .execute(
            "UPDATE herald.event_queue SET event_run = 0 WHERE name = $1",
            &[&queue],
        )
        .await
        .expect("stop the queue");
    wait_for(
        client,
        &format!("SELECT drainer IS NULL FROM herald.queue_status WHERE name = '{queue}'"),
        30,
        "the drainer lets go of a stopped queue",
    )
    .await;
}

/// Poll `sql` (returning one boolean; NULL counts as false) until true; panic with `what` after `seconds`.
pub async fn wait_for(client: &Client, sql: &str, seconds: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let ok: Option<bool> = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        if ok == Some(true) {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {seconds} s waiting for {what} ({sql})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A table and handler that record every handled event with the node and transaction that
/// handled it. `details` carry `producer` and `n` (position in that producer's stream).
pub const RECORDER: &str = r#"
CREATE TABLE handled (seq bigserial PRIMARY KEY, event_id bigint NOT NULL, queue text, type text,
                      action text, producer int, n int, node text, xid bigint);
CREATE FUNCTION record(e herald.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO handled (event_id, queue, type, action, producer, n, node, xid)
    VALUES (e.id, e.queue, e.type, e.action, (e.details->>'producer')::int, (e.details->>'n')::int,
            substr(current_setting('application_name'), 8), txid_current())
$$;
"#;

/// Emit `count` events of `type` from one session, `per_tx` per transaction, with
/// details `{"producer": producer, "n": i}`.
pub async fn produce(url: String, producer: i32, r#type: &'static str, count: i32, per_tx: i32) {
    let mut client = connect(&url).await;
    let mut n = 0;
    while n < count {
        let tx = client.transaction().await.expect("begin");
        let emit = tx.prepare("SELECT herald.emit($1, 'made', jsonb_build_object('producer', $2::int, 'n', $3::int))").await.unwrap();
        for _ in 0..per_tx.min(count - n) {
            tx.execute(&emit, &[&r#type, &producer, &n])
                .await
                .expect("emit");
            n += 1;
        }
        tx.commit().await.expect("commit");
    }
}

/// Assert exactly once and per-producer order for `queue` against `expected` events.
pub async fn assert_exactly_once_in_order(client: &Client, queue: &str, expected: i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT event_id) FROM handled WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap();
    let (total, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(distinct, expected, "queue {queue}: every event handled");
    assert_eq!(total, expected, "queue {queue}: no event handled twice");
    // Along each producer's stream (in handling order) both its own counter n and the
    // event ids must increase.
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE n <= prev_n), count(*) FILTER (WHERE event_id <= prev_id)
               FROM (SELECT n, event_id,
                            lag(n) OVER w AS prev_n, lag(event_id) OVER w AS prev_id
                       FROM handled WHERE queue = $1
                     WINDOW w AS (PARTITION BY producer ORDER BY seq)) x",
            &[&queue],
        )
        .await
        .unwrap();
    let (out_of_order, by_id_order): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        out_of_order, 0,
        "queue {queue}: each producer's events in emission order"
    );
    assert_eq!(
        by_id_order, 0,
        "queue {queue}: event ids increase along each producer's stream"
    );
}

/// A TCP port on the loopback that nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `python3 -m aiosmtpd` on `port`, storing every mail it accepts in the maildir `dir`.
pub struct SmtpServer(Child);

impl SmtpServer {
    pub fn start(port: u16, dir: &std::path::Path) -> SmtpServer {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (apt-get install python3-aiosmtpd; make test does)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer(child)
    }
}

/// An SMTP server that stores each mail it is given in the maildir `dir` at once, then
/// waits `delay` before it answers that it took it: a sender can be killed while the mail
/// is delivered but not yet acknowledged.
const SLOW_SMTP: &str = r#"
import asyncio, mailbox, sys, time
from aiosmtpd.controller import Controller
class Slow:
    def __init__(self, d, delay):
        self.box = mailbox.Maildir(d)
        self.delay = delay
    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.original_content)
        await asyncio.sleep(self.delay)
        return '250 OK'
c = Controller(Slow(sys.argv[2], float(sys.argv[3])), hostname='127.0.0.1', port=int(sys.argv[1]))
c.start()
while True:
    time.sleep(3600)
"#;

impl SmtpServer {
    pub fn start_slow(port: u16, dir: &std::path::Path, delay: Duration) -> SmtpServer {
        let child = Command::new("/usr/bin/python3")
            .args(["-c", SLOW_SMTP, &port.to_string()])
            .arg(dir)
            .arg(delay.as_secs_f64().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (apt-get install python3-aiosmtpd; make test does)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the slow SMTP server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer(child)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The mails in the maildir, as text.
pub fn mails(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    out
}
