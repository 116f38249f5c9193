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
}
