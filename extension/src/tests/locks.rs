//! Resource locks in one session: bad input, grants and tokens, limits, leases, fences,
//! self-deadlock, operators. (Waiting sessions, FIFO and crashes: tests/tests/locks.rs.)
#[pgrx::pg_schema]
mod tests {
    use crate::tests::helpers::*;
    use pgrx::prelude::*;

    fn fixture() {
        run("SELECT herald.resource('printer')");
        run("SELECT herald.resource('ledger', 'shared', 3)");
        run("CREATE ROLE clerk");
        run("GRANT USAGE ON SCHEMA herald TO clerk");
        run("GRANT EXECUTE ON FUNCTION herald.lock_acquire(text, text, integer, interval, interval),
                  herald.lock_release(text, text, bigint), herald.resource(text, text, integer, interval),
                  herald.force_release(text, bigint, text) TO clerk");
    }

    fn token(sql: &str) -> i64 {
        one::<i64>(sql).unwrap_or_else(|| panic!("no grant: {sql}"))
    }

    #[pg_test]
    fn bad_requests_get_clear_errors_and_change_nothing() {
        fixture();
        assert_error(
            "SELECT herald.lock_acquire('nope', 'a')",
            "resource \"nope\" does not exist",
        );
        assert_error("SELECT herald.lock_acquire(NULL, 'a')", "resource");
        assert_error("SELECT herald.lock_acquire('printer', NULL)", "holder");
        assert_error(
            "SELECT herald.lock_acquire('printer', ' ')",
            "holder must not be empty",
        );
        assert_error(
            "SELECT herald.lock_acquire('printer', 'a', 0)",
            "count must be at least 1",
        );
        assert_error(
            "SELECT herald.lock_acquire('printer', 'a', 2)",
            "is exclusive: count must be 1",
        );
        assert_error(
            "SELECT herald.lock_acquire('ledger', 'a', 4)",
            "count 4 is more than the lock_limit 3",
        );
        assert_error(
            "SELECT herald.lock_acquire('printer', 'a', lease => '-1 s')",
            "lease must be positive",
        );
        assert_error(
            "SELECT herald.lock_acquire('printer', 'a', wait => '-1 s')",
            "wait must not be negative",
        );
        assert_error("SELECT herald.lock_acquire('printer', 'a', NULL)", "count");
        assert_error(
            "SELECT herald.lock_acquire_all('{printer,printer}', 'a')",
            "must not name a resource twice",
        );
        assert_error(
            "SELECT herald.resource('x', 'exclusive', 2)",
            "lock_limit 1",
        );
        assert_error(
            "SELECT herald.resource('x', 'shared')",
            "needs a lock_limit",
        );
        assert_error(
            "SELECT herald.resource('x', 'shared', -1)",
            "must not be negative",
        );
        assert_error(
            "SELECT herald.resource('x', 'odd', 1)",
            "unknown resource kind",
        );
        assert_error(
            "SELECT herald.resource('x', 'shared', 2, '0 s')",
            "default_lease must be positive",
        );
        let t = token("SELECT herald.lock_acquire('printer', 'a')");
        assert_error(
            &format!("SELECT herald.lock_release('printer', 'b', {t})"),
            "it is held by \"a\", not \"b\"",
        );
        assert_error(
            &format!("SELECT herald.lock_release('printer', 'a', {})", t + 1000),
            "no such grant",
        );
        run(&format!("SELECT herald.lock_release('printer', 'a', {t})"));
        assert_error(
            &format!("SELECT herald.lock_release('printer', 'a', {t})"),
            "no such grant",
        );
        assert_error(
            &format!("SELECT herald.lock_renew('printer', 'a', {t})"),
            "no such grant",
        );
        assert_eq!(count("SELECT count(*) FROM herald.lock_holder"), 0);
    }

    #[pg_test]
    fn grants_have_growing_tokens_and_respect_kind_and_limit() {
        fixture();
        let a = token("SELECT herald.lock_acquire('printer', 'a')");
        assert_eq!(
            one::<i64>("SELECT herald.lock_acquire('printer', 'b')"),
            None,
            "an exclusive resource has one holder"
        );
        assert!(one::<bool>(&format!("SELECT herald.lock_check('printer', {a})")).unwrap());
        run(&format!("SELECT herald.lock_release('printer', 'a', {a})"));
        assert!(!one::<bool>(&format!("SELECT herald.lock_check('printer', {a})")).unwrap());
        let b = token("SELECT herald.lock_acquire('printer', 'b')");
        assert!(b > a, "tokens grow: {a} then {b}");
        // Shared, limit 3: counts add up.
        let l1 = token("SELECT herald.lock_acquire('ledger', 'x', 2)");
        assert_eq!(
            one::<i64>("SELECT herald.lock_acquire('ledger', 'y', 2)"),
            None
        );
        let l2 = token("SELECT herald.lock_acquire('ledger', 'y', 1)");
        assert!(l2 > l1);
        assert_eq!(
            count(
                "SELECT sum(count) FROM herald.locks WHERE resource = 'ledger' AND role = 'holder'"
            ),
            3
        );
        // An operator lowers the limit with plain SQL: nothing new fits, holders keep theirs.
        run("UPDATE herald.resource SET lock_limit = 0 WHERE name = 'ledger'");
        run(&format!("SELECT herald.lock_release('ledger', 'y', {l2})"));
        assert_eq!(
            one::<i64>("SELECT herald.lock_acquire('ledger', 'z', 1)"),
            None,
            "paused"
        );
        assert!(one::<bool>(&format!("SELECT herald.lock_check('ledger', {l1})")).unwrap());
        run("UPDATE herald.resource SET lock_limit = 3 WHERE name = 'ledger'");
        let z = token("SELECT herald.lock_acquire('ledger', 'z', 1)");
        run(&format!("SELECT herald.lock_release('ledger', 'z', {z})"));
        // All or nothing.
        assert_eq!(
            one::<Vec<i64>>("SELECT herald.lock_acquire_all('{ledger,printer}', 'w')"),
            None,
            "the printer is held, so neither is granted"
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.lock_holder WHERE holder = 'w'"),
            0
        );
        run(&format!("SELECT herald.lock_release('printer', 'b', {b})"));
        let both =
            one::<Vec<i64>>("SELECT herald.lock_acquire_all('{printer,ledger}', 'w')").unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(
            one::<String>("SELECT string_agg(resource || '=' || token, ',' ORDER BY resource) FROM herald.lock_holder WHERE holder = 'w'"),
            Some(format!("ledger={},printer={}", both[1], both[0]))
        );
    }

    #[pg_test]
    fn a_lapsed_lease_holds_nothing_and_expires_once() {
        fixture();
        let t = token("SELECT herald.lock_acquire('printer', 'a', lease => '50 ms')");
        let renewed = one::<bool>(&format!(
            "SELECT herald.lock_renew('printer', 'a', {t}, '60 ms') > clock_timestamp()"
        ));
        assert_eq!(renewed, Some(true));
        run("SELECT pg_sleep(0.1)");
        assert!(!one::<bool>(&format!("SELECT herald.lock_check('printer', {t})")).unwrap());
        assert_error(
            &format!("SELECT herald.lock_renew('printer', 'a', {t})"),
            "its lease expired at",
        );
        assert_error(
            &format!("SELECT herald.lock_release('printer', 'a', {t})"),
            "its lease expired at",
        );
        assert!(
            one::<bool>("SELECT expired FROM herald.locks WHERE resource = 'printer'").unwrap()
        );
        // The next grant removes the lapsed one (once), and so would herald.expire_locks().
        let next = token("SELECT herald.lock_acquire('printer', 'b')");
        assert!(next > t);
        assert_eq!(
            count("SELECT count(*) FROM herald.lock_holder WHERE resource = 'printer'"),
            1
        );
        let u = token("SELECT herald.lock_acquire('ledger', 'c', lease => '10 ms')");
        run("SELECT pg_sleep(0.05)");
        assert_eq!(count("SELECT herald.expire_locks()"), 1);
        assert_eq!(count("SELECT herald.expire_locks()"), 0);
        assert!(!one::<bool>(&format!("SELECT herald.lock_check('ledger', {u})")).unwrap());
    }

    #[pg_test]
    fn a_holder_waiting_for_what_it_holds_is_refused_as_a_deadlock() {
        fixture();
        token("SELECT herald.lock_acquire('printer', 'a')");
        assert_error(
            "SELECT herald.lock_acquire('printer', 'a', wait => '10 s')",
            "deadlock: this request of a would close a cycle: a waits for printer held by a",
        );
        // The refused request left no trace in the queue.
        assert_eq!(
            count("SELECT count(*) FROM herald.locks WHERE role = 'waiter'"),
            0
        );
        // A wait that runs out returns NULL and leaves the queue too.
        assert_eq!(
            one::<i64>("SELECT herald.lock_acquire('printer', 'b', wait => '50 ms')"),
            None
        );
        assert_eq!(count("SELECT count(*) FROM herald.lock_request"), 0);
    }

    #[pg_test]
    fn only_administrators_define_resources_and_force_releases() {
        fixture();
        let t = token("SELECT herald.lock_acquire('printer', 'a')");
        run("SET ROLE clerk");
        assert_error(
            "SELECT herald.resource('mine')",
            "permission denied to define resources",
        );
        assert_error(
            &format!("SELECT herald.force_release('printer', {t}, 'mine now')"),
            "permission denied",
        );
        assert_eq!(
            one::<i64>("SELECT herald.lock_acquire('printer', 'clerk')"),
            None
        );
        run("RESET ROLE");
        run(&format!(
            "SELECT herald.force_release('printer', {t}, 'holder crashed')"
        ));
        assert_eq!(
            one::<String>("SELECT holder || ' ' || action || ' ' || reason FROM herald.lock_audit"),
            Some("a FORCED holder crashed".into())
        );
        assert_error(
            &format!("SELECT herald.force_release('printer', {t}, 'again')"),
            "has no grant",
        );
        assert_error("SELECT herald.drop_resource('nope')", "does not exist");
        token("SELECT herald.lock_acquire('ledger', 'x')");
        assert_error(
            "SELECT herald.drop_resource('ledger')",
            "is held or awaited",
        );
        run("SELECT herald.drop_resource('printer')");
    }

    /// A job type `print` whose jobs hold `printer`, and `post` whose jobs hold 2 of
    /// `ledger` (shared, limit 3); their target logs the job's run.
    fn job_fixture() {
        fixture();
        run("CREATE SCHEMA app");
        run("CREATE TABLE app.log (what text, at timestamptz DEFAULT clock_timestamp())");
        run(
            "CREATE FUNCTION app.work(p jsonb) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO app.log (what) VALUES (p->>'n') $$",
        );
        run(
            "CREATE FUNCTION app.fail(p jsonb) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'paper jam'; END $$",
        );
        run("SELECT herald.create_job_type('print', 'app.work', resources => '{\"printer\": 1}')");
        run("SELECT herald.create_job_type('print_fails', 'app.fail', resources => '{\"printer\": 1}')");
        run("SELECT herald.create_job_type('post', 'app.work', resources => '{\"ledger\": 2}')");
    }

    fn submit(type_name: &str, n: i32) -> i64 {
        one::<i64>(&format!(
            "SELECT herald.submit_job('{type_name}', '{{\"n\": {n}}}')"
        ))
        .unwrap()
    }

    fn claim() -> Option<i64> {
        one::<i64>("SELECT (SELECT id FROM herald.claim_next_job('n1'))")
    }

    fn job_state(job: i64) -> String {
        one::<String>(&format!("SELECT state FROM herald.job WHERE id = {job}")).unwrap()
    }

    /// The holders (`role` 'holder', by token) or waiters ('waiter', in line) of
    /// `resource` as `herald.locks` shows them.
    fn in_view(resource: &str, role: &str) -> Vec<String> {
        let mut out = Vec::new();
        Spi::connect(|c| {
            for row in c
                .select(
                    &format!(
                        "SELECT holder FROM herald.locks
                          WHERE resource = '{resource}' AND role = '{role}'
                          ORDER BY position, token"
                    ),
                    None,
                    &[],
                )
                .unwrap()
            {
                out.push(row.get::<String>(1).unwrap().unwrap());
            }
        });
        out
    }

    fn holders(resource: &str) -> Vec<String> {
        in_view(resource, "holder")
    }

    fn waiters(resource: &str) -> Vec<String> {
        in_view(resource, "waiter")
    }

    #[pg_test]
    fn a_job_that_declares_resources_starts_only_holding_them_and_gives_them_back() {
        job_fixture();
        let first = submit("print", 1);
        let second = submit("print", 2);
        assert_eq!(claim(), Some(first));
        assert_eq!(holders("printer"), vec![format!("job {first}")]);
        // Nobody but the job ends its grant (an administrator may force it).
        let job_token = token(&format!(
            "SELECT token FROM herald.lock_holder WHERE job = {first}"
        ));
        for call in ["lock_release", "lock_renew"] {
            assert_error(
                &format!("SELECT herald.{call}('printer', 'job {first}', {job_token})"),
                &format!("is held by job {first}"),
            );
        }
        // The second waits in line for the printer and is not due meanwhile.
        assert_eq!(claim(), None);
        assert_eq!(job_state(second), "CREATED");
        assert_eq!(waiters("printer"), vec![format!("job {second}")]);
        assert_eq!(
            one::<bool>(&format!(
                "SELECT run_after = 'infinity' FROM herald.job WHERE id = {second}"
            )),
            Some(true)
        );
        // A session that asks meanwhile is not granted: the first job holds it.
        assert_eq!(
            one::<i64>("SELECT herald.lock_acquire('printer', 'clerk')"),
            None
        );
        // The first job's end hands the printer to the second, which is due again.
        assert_eq!(
            one::<String>(&format!("SELECT herald.run_job({first})")).as_deref(),
            Some("COMPLETED")
        );
        assert_eq!(holders("printer"), vec![format!("job {second}")]);
        assert!(waiters("printer").is_empty());
        assert_eq!(claim(), Some(second));
        run(&format!("SELECT herald.run_job({second})"));
        assert!(holders("printer").is_empty());
        // A failing run gives them back too (STARTERROR).
        let failing = submit("print_fails", 3);
        assert_eq!(claim(), Some(failing));
        assert_eq!(holders("printer").len(), 1);
        assert_eq!(
            one::<String>(&format!("SELECT herald.run_job({failing})")).as_deref(),
            Some("STARTERROR")
        );
        assert!(holders("printer").is_empty());
        // A job that waits in line and is aborted leaves the line.
        let holder = token("SELECT herald.lock_acquire('printer', 'clerk')");
        let queued = submit("print", 4);
        assert_eq!(claim(), None);
        assert_eq!(waiters("printer"), vec![format!("job {queued}")]);
        run(&format!("SELECT herald.abort_job({queued})"));
        assert!(waiters("printer").is_empty());
        run(&format!(
            "SELECT herald.lock_release('printer', 'clerk', {holder})"
        ));
        assert_eq!(
            count("SELECT count(*) FROM herald.lock_holder")
                + count("SELECT count(*) FROM herald.lock_request"),
            0
        );
    }

    #[pg_test]
    fn jobs_share_a_resource_up_to_its_limit_and_a_session_release_lets_the_next_in() {
        job_fixture();
        let session = token("SELECT herald.lock_acquire('ledger', 'clerk', 2)");
        let a = submit("post", 1);
        let b = submit("post", 2);
        // 2 of 3 are held: neither job (2 each) fits; both wait in arrival order.
        assert_eq!(claim(), None);
        assert_eq!(
            waiters("ledger"),
            vec![format!("job {a}"), format!("job {b}")]
        );
        run(&format!(
            "SELECT herald.lock_release('ledger', 'clerk', {session})"
        ));
        // The release lets the first in (2 of 3); the second still does not fit.
        assert_eq!(holders("ledger"), vec![format!("job {a}")]);
        assert_eq!(waiters("ledger"), vec![format!("job {b}")]);
        assert_eq!(claim(), Some(a));
        assert_eq!(claim(), None);
        run(&format!("SELECT herald.run_job({a})"));
        assert_eq!(claim(), Some(b));
        // A raised limit lets a waiting job in as well.
        let c = submit("post", 3);
        assert_eq!(claim(), None);
        run("UPDATE herald.resource SET lock_limit = 4 WHERE name = 'ledger'");
        assert_eq!(claim(), Some(c));
        assert_eq!(
            count("SELECT sum(count) FROM herald.lock_holder WHERE resource = 'ledger'"),
            4
        );
        // A limit lowered below a waiting job's count: the job leaves the line and its
        // claim ends it with the reason, instead of blocking everyone behind it.
        let d = submit("post", 4);
        assert_eq!(claim(), None);
        assert_eq!(waiters("ledger"), vec![format!("job {d}")]);
        run("UPDATE herald.resource SET lock_limit = 1 WHERE name = 'ledger'");
        assert!(waiters("ledger").is_empty());
        assert_eq!(claim(), None);
        assert_eq!(job_state(d), "STARTERROR");
        assert!(
            one::<String>(&format!("SELECT error FROM herald.job WHERE id = {d}"))
                .unwrap()
                .contains("more than the lock_limit 1")
        );
    }

    #[pg_test]
    fn declared_resources_are_checked() {
        job_fixture();
        assert_error(
            "SELECT herald.create_job_type('t1', 'app.work', resources => '{\"nope\": 1}')",
            "resource \"nope\" does not exist",
        );
        assert_error(
            "SELECT herald.create_job_type('t1', 'app.work', resources => '{\"printer\": 2}')",
            "is exclusive",
        );
        assert_error(
            "SELECT herald.create_job_type('t1', 'app.work', resources => '{\"ledger\": 4}')",
            "more than the lock_limit 3",
        );
        assert_error(
            "SELECT herald.create_job_type('t1', 'app.work', resources => '{\"ledger\": 0}')",
            "must be at least 1",
        );
        assert_error(
            "SELECT herald.create_job_type('t1', 'app.work', resources => '[\"printer\"]')",
            "must be a JSON object",
        );
        assert_error(
            "SELECT herald.create_job_type('t1', 'app.work', resources => '{\"printer\": \"one\"}')",
            "must be an integer",
        );
        assert_error(
            "SELECT herald.submit_job('post', resources => '{\"nope\": 1}')",
            "resource \"nope\" does not exist",
        );
        // Declaring resources needs what taking locks needs.
        run("CREATE ROLE typist");
        run("GRANT USAGE ON SCHEMA herald, app TO typist");
        run("GRANT EXECUTE ON FUNCTION herald.create_job_type(text, text, text, text, text, text, text, text, boolean, boolean, boolean, boolean, integer, interval, text[], jsonb),
                  herald.submit_job(text, jsonb, text, text, timestamptz, jsonb) TO typist");
        run("SET ROLE typist");
        assert_error(
            "SELECT herald.create_job_type('t2', 'app.work', resources => '{\"printer\": 1}')",
            "permission denied to declare resources",
        );
        run("SELECT herald.create_job_type('t3', 'app.work')");
        assert_error(
            "SELECT herald.submit_job('t3', resources => '{\"printer\": 1}')",
            "permission denied to declare resources",
        );
        run("SELECT herald.submit_job('t3')");
        run("RESET ROLE");
        run("DELETE FROM herald.job WHERE type = 't3'");
        // A job's own resources are added to its type's; a count it names wins.
        let id = one::<i64>(
            "SELECT herald.submit_job('post', '{}', resources => '{\"printer\": 1, \"ledger\": 1}')",
        )
        .unwrap();
        assert_eq!(
            one::<pgrx::JsonB>(&format!("SELECT resources FROM herald.job WHERE id = {id}"))
                .unwrap()
                .0,
            serde_json::json!({"ledger": 1, "printer": 1})
        );
        // A resource dropped after its job was submitted: the job cannot start, and says why.
        run("SELECT herald.resource('scanner')");
        let orphan =
            one::<i64>("SELECT herald.submit_job('print', '{}', resources => '{\"scanner\": 1}')")
                .unwrap();
        run("SELECT herald.drop_resource('scanner')");
        run(&format!(
            "UPDATE herald.job SET state = 'ABORTED' WHERE id = {id}"
        ));
        assert_eq!(claim(), None);
        assert_eq!(job_state(orphan), "STARTERROR");
        assert!(
            one::<String>(&format!("SELECT error FROM herald.job WHERE id = {orphan}"))
                .unwrap()
                .contains("resource \"scanner\" does not exist")
        );
    }
}
