//! In-database tests of jobs: submit in the caller's transaction, every transition, hooks
//! in the right transaction and as the right role, class limits, alerts, rescue, and bad
//! input. A pg_test runs in one backend, which plays the coordinator: it claims a job
//! (holding its claim lock) and runs it, as `herald run` does on its own connection.
#[pgrx::pg_schema]
mod tests {
    use crate::tests::helpers::*;
    use pgrx::prelude::*;

    /// Role `clerk` (owns the job types), schema `app` with a log of what ran as whom, a
    /// target that works, one that fails, hooks, and a queue `jobq` that receives every
    /// JOB event through a system listener.
    fn fixture() {
        run("CREATE ROLE clerk");
        run("CREATE SCHEMA app");
        run("GRANT USAGE ON SCHEMA app TO clerk");
        run("GRANT USAGE ON SCHEMA herald TO clerk");
        run("GRANT EXECUTE ON FUNCTION herald.create_job_type(text, text, text, text, text, text, text, text, boolean, boolean, boolean, boolean, integer, interval, text[], jsonb),
                  herald.submit_job(text, jsonb, text, text, timestamptz, jsonb),
                  herald.mark_job_finished(bigint, jsonb), herald.abort_job(bigint, text),
                  herald.retry_job(bigint) TO clerk");
        run(
            "CREATE TABLE app.log (what text, who text, job bigint, params jsonb, flag boolean,
                                   at timestamptz DEFAULT clock_timestamp())",
        );
        run("GRANT INSERT, SELECT ON app.log TO clerk");
        run(
            "CREATE FUNCTION app.work(p jsonb) RETURNS jsonb LANGUAGE sql AS
             $$ INSERT INTO app.log (what, who, params) VALUES ('work', current_user, p);
                SELECT jsonb_build_object('done', p->'n') $$",
        );
        run(
            "CREATE FUNCTION app.fail(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO app.log (what, who) VALUES ('fail', current_user);
                RAISE EXCEPTION 'posting failed: ledger locked'; END $$",
        );
        run("CREATE PROCEDURE app.proc(p jsonb) LANGUAGE sql AS
             $$ INSERT INTO app.log (what, who, params) VALUES ('proc', current_user, p) $$");
        for hook in ["after_creation", "before_completion", "compensate"] {
            run(&format!(
                "CREATE FUNCTION app.{hook}(job bigint, p jsonb) RETURNS void LANGUAGE sql AS
                 $$ INSERT INTO app.log (what, who, job) VALUES ('{hook}', current_user, job) $$"
            ));
        }
        run("CREATE FUNCTION app.after_completion(job bigint, p jsonb, c boolean) RETURNS void
             LANGUAGE sql AS
             $$ INSERT INTO app.log (what, who, job, flag) VALUES ('after_completion', current_user, job, c) $$");
        run(
            "CREATE FUNCTION app.refuse(job bigint, p jsonb) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'books not balanced'; END $$",
        );
        run("CREATE FUNCTION app.h(e herald.event) RETURNS void LANGUAGE sql AS $$ SELECT $$");
        run("INSERT INTO herald.event_queue (name) VALUES ('jobq')");
        run("SELECT herald.add_system_listener('app.h', 'JOB', 'jobq')");
    }

    fn state(job: i64) -> String {
        one::<String>(&format!("SELECT state FROM herald.job WHERE id = {job}")).unwrap()
    }

    fn submit(type_name: &str) -> i64 {
        one::<i64>(&format!(
            "SELECT herald.submit_job('{type_name}', '{{\"n\": 1}}')"
        ))
        .unwrap()
    }

    /// Claim the next job as node `n1`; its id.
    fn claim() -> Option<i64> {
        one::<i64>("SELECT (SELECT id FROM herald.claim_next_job('n1'))")
    }

    fn events(action: &str) -> i64 {
        count(&format!(
            "SELECT count(*) FROM herald.event WHERE type = 'JOB' AND action = '{action}'"
        ))
    }

    fn logged(what: &str) -> i64 {
        count(&format!(
            "SELECT count(*) FROM app.log WHERE what = '{what}'"
        ))
    }

    #[pg_test]
    fn a_job_goes_created_started_finished_completed_with_an_event_each_step() {
        fixture();
        run("SET ROLE clerk");
        run("SELECT herald.create_job_type('post', 'app.work', before_completion => 'app.before_completion',
                                           after_completion => 'app.after_completion')");
        let job = submit("post");
        run("RESET ROLE");
        assert_eq!(state(job), "CREATED");
        assert_eq!(claim(), Some(job));
        assert_eq!(state(job), "STARTED");
        assert_eq!(
            one::<String>(&format!("SELECT node FROM herald.job WHERE id = {job}")).as_deref(),
            Some("n1")
        );
        assert_eq!(events("1"), 1);
        let after = one::<String>(&format!("SELECT herald.run_job({job})"));
        assert_eq!(after.as_deref(), Some("FINISHED"));
        assert_eq!(state(job), "FINISHED");
        // The target ran as the type's owner, with the params, and its result is kept.
        assert_eq!(
            one::<String>("SELECT who FROM app.log WHERE what = 'work'").as_deref(),
            Some("clerk")
        );
        assert_eq!(
            one::<pgrx::JsonB>(&format!("SELECT result FROM herald.job WHERE id = {job}"))
                .unwrap()
                .0,
            serde_json::json!({"done": 1})
        );
        assert_eq!(
            one::<i64>("SELECT herald.complete_next_job('n1')"),
            Some(job)
        );
        assert_eq!(state(job), "COMPLETED");
        assert_eq!(logged("before_completion"), 1);
        assert_eq!(
            one::<bool>("SELECT flag FROM app.log WHERE what = 'after_completion'"),
            Some(true)
        );
        assert_eq!(events("2"), 2); // FINISHED, COMPLETED
        let details = one::<pgrx::JsonB>(
            "SELECT details FROM herald.event WHERE type = 'JOB' ORDER BY id DESC LIMIT 1",
        )
        .unwrap()
        .0;
        assert_eq!(details["state"], "COMPLETED");
        assert_eq!(details["job"], job);
        assert_eq!(details["node"], "n1");
        assert_eq!(one::<i64>("SELECT herald.complete_next_job('n1')"), None);
        assert_eq!(claim(), None);
    }

    /// Submits insert job rows directly while the table is Herald's own, and through a
    /// statement (which honours everything) once a DBA has added a trigger, a CHECK on a
    /// supplied column or an index of their own: the rows are the same, every index gets
    /// its entries (claims find the jobs) and the DBA's additions are obeyed.
    #[pg_test]
    fn a_submitted_row_is_the_same_whatever_was_added_to_the_job_table() {
        fixture();
        run("SELECT herald.create_job_type('w', 'app.work')");
        let row = |id: i64| {
            one::<String>(&format!(
                "SELECT concat_ws(' ', type, class, params, state, attempts, mail_attempts,
                                  concurrency_key, notify_email, submitted_by, node,
                                  submitted_at = now(), run_after = now())
                   FROM herald.job WHERE id = {id}"
            ))
            .unwrap()
        };
        let direct = one::<i64>(
            "SELECT herald.submit_job('w', '{\"n\": 1}', concurrency_key => 'k',
                                      notify_email => 'a@b.example')",
        )
        .unwrap();
        run("CREATE TABLE app.seen (job bigint)");
        run(
            "CREATE FUNCTION app.seen() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO app.seen VALUES (NEW.id); RETURN NEW; END $$",
        );
        run("CREATE TRIGGER seen AFTER INSERT ON herald.job FOR EACH ROW EXECUTE FUNCTION app.seen()");
        let with_trigger = one::<i64>(
            "SELECT herald.submit_job('w', '{\"n\": 1}', concurrency_key => 'k',
                                      notify_email => 'a@b.example')",
        )
        .unwrap();
        assert_eq!(row(direct), row(with_trigger));
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM app.seen WHERE job = {with_trigger}"
            )),
            1,
            "the trigger fired"
        );
        run("DROP TRIGGER seen ON herald.job");
        run("ALTER TABLE herald.job ADD CONSTRAINT no_w CHECK (type <> 'w') NOT VALID");
        assert_error("SELECT herald.submit_job('w')", "no_w");
        run("ALTER TABLE herald.job DROP CONSTRAINT no_w");
        // An index of the DBA's own whose predicate no new job meets gets no entries; the
        // others do: with sequential scans off, every job is found through Herald's.
        run("CREATE INDEX ended ON herald.job (id) WHERE state = 'COMPLETED'");
        let third = submit("w");
        run("SET LOCAL enable_seqscan = off");
        run("SET LOCAL enable_bitmapscan = off");
        assert_eq!(
            count("SELECT count(*) FROM herald.job WHERE state = 'CREATED' AND class = 'default'"),
            3
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.job WHERE state = 'COMPLETED'"),
            0
        );
        run("RESET enable_seqscan");
        run("RESET enable_bitmapscan");
        let mut claimed = vec![];
        while let Some(id) = claim() {
            claimed.push(id);
            run(&format!("SELECT herald.run_job({id})"));
        }
        claimed.sort();
        assert_eq!(claimed, vec![direct, with_trigger, third]);
    }

    #[pg_test]
    fn illegal_transitions_are_refused_with_the_state_named() {
        fixture();
        run("SELECT herald.create_job_type('post', 'app.work')");
        let job = submit("post");
        assert_error(
            &format!("SELECT herald.mark_job_finished({job})"),
            &format!("cannot finish job {job}: it is CREATED"),
        );
        assert_error(
            &format!("SELECT herald.retry_job({job})"),
            &format!("cannot retry job {job}: it is CREATED"),
        );
        assert_error(
            &format!("SELECT herald.run_job({job})"),
            "is not running on this connection",
        );
        assert_error(
            &format!("SELECT herald.finish_job({job})"),
            "is not running on this connection",
        );
        assert_error(
            &format!("SELECT herald.set_job_state({job}, 'STARTED', 'by hand')"),
            "cannot be set STARTED",
        );
        assert_error(
            &format!("SELECT herald.set_job_state({job}, 'DONE', 'by hand')"),
            "unknown job state",
        );
        assert_eq!(claim(), Some(job));
        run(&format!("SELECT herald.run_job({job})"));
        run("SELECT herald.complete_next_job('n1')");
        assert_error(
            &format!("SELECT herald.abort_job({job})"),
            &format!("cannot abort job {job}: it is COMPLETED"),
        );
        assert_error(
            &format!("SELECT herald.run_job({job})"),
            "is not running on this connection",
        );
        // An operator may still set any state, with an audit row.
        run(&format!(
            "SELECT herald.set_job_state({job}, 'ABORTED', 'booked twice')"
        ));
        assert_eq!(state(job), "ABORTED");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.job_audit WHERE job = {job} AND old_state = 'COMPLETED'
                   AND new_state = 'ABORTED' AND reason = 'booked twice'"
            )),
            1
        );
        run(&format!("SELECT herald.retry_job({job})"));
        assert_eq!(state(job), "CREATED");
        assert_eq!(claim(), Some(job));
        assert_eq!(
            one::<i32>(&format!("SELECT attempts FROM herald.job WHERE id = {job}")),
            Some(2)
        );
    }

    #[pg_test]
    fn a_rolled_back_submit_leaves_no_row_and_no_hook_effect() {
        fixture();
        run("SELECT herald.create_job_type('post', 'app.work', after_creation => 'app.after_creation', startnow => true)");
        run("DO $$ BEGIN
                 PERFORM herald.submit_job('post');
                 RAISE EXCEPTION 'the user cancels';
             EXCEPTION WHEN raise_exception THEN NULL; END $$");
        assert_eq!(count("SELECT count(*) FROM herald.job"), 0);
        assert_eq!(logged("after_creation"), 0);
        // A submit that stays runs the hook in the submitting transaction, as the owner.
        let job = submit("post");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM app.log WHERE what = 'after_creation' AND job = {job}"
            )),
            1
        );
        // A failing after_creation hook fails the submit.
        run("CREATE TABLE app.flag (x int)");
        run("SELECT herald.create_job_type('guarded', 'app.work', after_creation => 'app.refuse')");
        assert_error("SELECT herald.submit_job('guarded')", "books not balanced");
        assert_eq!(
            count("SELECT count(*) FROM herald.job WHERE type = 'guarded'"),
            0
        );
    }

    #[pg_test]
    fn a_failing_runner_leaves_starterror_retries_per_policy_and_compensates() {
        fixture();
        run("SELECT herald.create_job_type('flaky', 'app.fail', max_attempts => 2, retry_delay => '0',
                                           gobackonerror => true, compensate => 'app.compensate')");
        let job = submit("flaky");
        assert_eq!(claim(), Some(job));
        assert_eq!(
            one::<String>(&format!("SELECT herald.run_job({job})")).as_deref(),
            Some("CREATED")
        );
        // The target's own work was rolled back; the error is kept; compensate ran.
        assert_eq!(logged("fail"), 0);
        assert_eq!(logged("compensate"), 1);
        assert!(
            one::<String>(&format!("SELECT error FROM herald.job WHERE id = {job}"))
                .unwrap()
                .contains("ledger locked")
        );
        assert_eq!(events("RETRY"), 1);
        assert_eq!(claim(), Some(job));
        assert_eq!(
            one::<String>(&format!("SELECT herald.run_job({job})")).as_deref(),
            Some("STARTERROR")
        );
        assert_eq!(state(job), "STARTERROR");
        assert_eq!(claim(), None);
    }

    #[pg_test]
    fn before_completion_errors_mean_finisherror_and_after_completion_hears_false() {
        fixture();
        run(
            "SELECT herald.create_job_type('post', 'app.proc', before_completion => 'app.refuse',
                                           after_completion => 'app.after_completion')",
        );
        let job = submit("post");
        claim();
        run(&format!("SELECT herald.run_job({job})"));
        assert_eq!(logged("proc"), 1);
        run("SELECT herald.complete_next_job('n1')");
        assert_eq!(state(job), "FINISHERROR");
        assert!(
            one::<String>(&format!("SELECT error FROM herald.job WHERE id = {job}"))
                .unwrap()
                .contains("books not balanced")
        );
        assert_eq!(
            one::<bool>("SELECT flag FROM app.log WHERE what = 'after_completion'"),
            Some(false)
        );
    }

    #[pg_test]
    fn without_autofinish_a_job_waits_for_mark_job_finished() {
        fixture();
        run("SELECT herald.create_job_type('external', 'app.work', autofinish => false)");
        let job = submit("external");
        claim();
        assert_eq!(
            one::<String>(&format!("SELECT herald.run_job({job})")).as_deref(),
            Some("STARTED")
        );
        assert_eq!(state(job), "STARTED");
        // Its runner is done: nothing holds it, and it is not rescued as dead.
        assert_eq!(one::<i32>("SELECT herald.rescue_jobs()"), Some(0));
        run(&format!(
            "SELECT herald.mark_job_finished({job}, '{{\"printed\": 3}}')"
        ));
        assert_eq!(state(job), "FINISHED");
        run("SELECT herald.complete_next_job('n1')");
        assert_eq!(state(job), "COMPLETED");
    }

    #[pg_test]
    fn abort_ends_any_unfinished_job_and_compensates() {
        fixture();
        run("SELECT herald.create_job_type('post', 'app.work', compensate => 'app.compensate')");
        let waiting = submit("post");
        run(&format!(
            "SELECT herald.abort_job({waiting}, 'wrong period')"
        ));
        assert_eq!(state(waiting), "ABORTED");
        assert_eq!(logged("compensate"), 1);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.job_audit WHERE job = {waiting} AND action = 'abort'"
            )),
            1
        );
        assert_eq!(claim(), None);
        // A job that is aborted while it runs does not commit its work (here the target
        // itself plays the operator who aborts it).
        run(
            "CREATE FUNCTION app.aborted_meanwhile(p jsonb) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO app.log (what) VALUES ('meanwhile');
                UPDATE herald.job SET state = 'ABORTED' WHERE state = 'STARTED' $$",
        );
        run("SELECT herald.create_job_type('meanwhile', 'app.aborted_meanwhile')");
        let running = submit("meanwhile");
        assert_eq!(claim(), Some(running));
        assert_error(
            &format!("SELECT herald.run_job({running})"),
            "was ended while it ran",
        );
        assert_eq!(logged("meanwhile"), 0);
        assert_eq!(state(running), "STARTED");
    }

    #[pg_test]
    fn a_limited_class_starts_one_at_a_time_in_submission_order() {
        fixture();
        run("UPDATE herald.job_class SET max_running = 1 WHERE name = 'posting'");
        run(
            "SELECT herald.create_job_type('post', 'app.work', class => 'posting',
                                           before_completion => 'app.before_completion')",
        );
        run("SELECT herald.create_job_type('report', 'app.work')");
        let p1 = submit("post");
        let p2 = submit("post");
        let r1 = submit("report");
        assert_eq!(claim(), Some(p1));
        // The class is full: the report (another class) starts, the posting waits.
        assert_eq!(claim(), Some(r1));
        assert_eq!(claim(), None);
        run(&format!("SELECT herald.run_job({p1})"));
        // FINISHED still holds the slot until completion.
        assert_eq!(claim(), None);
        run("SELECT herald.complete_next_job('n1')");
        assert_eq!(claim(), Some(p2));
        // concurrency_key narrows the limit to jobs of the same key.
        let a1 =
            one::<i64>("SELECT herald.submit_job('post', '{}', concurrency_key => 'company 1')")
                .unwrap();
        let a2 =
            one::<i64>("SELECT herald.submit_job('post', '{}', concurrency_key => 'company 1')")
                .unwrap();
        let b1 =
            one::<i64>("SELECT herald.submit_job('post', '{}', concurrency_key => 'company 2')")
                .unwrap();
        assert_eq!(claim(), Some(a1));
        assert_eq!(claim(), Some(b1));
        assert_eq!(claim(), None);
        assert_eq!(state(a2), "CREATED");
        // max_running = 0 pauses the class.
        run("UPDATE herald.job_class SET max_running = 0 WHERE name = 'posting'");
        run(&format!("SELECT herald.run_job({a1})"));
        run("SELECT herald.complete_next_job('n1')");
        assert_eq!(claim(), None);
    }

    #[pg_test]
    fn a_claim_for_some_runners_skips_a_class_whose_next_job_has_another() {
        fixture();
        run("UPDATE herald.job_class SET max_running = 2 WHERE name = 'posting'");
        run("SELECT herald.create_job_type('cmd', '/bin/true', runner => 'command', class => 'posting')");
        run("SELECT herald.create_job_type('post', 'app.work', class => 'posting')");
        run("SELECT herald.create_job_type('report', 'app.work')");
        // (named notation, with the parameter names of the contract)
        let c1 = one::<i64>("SELECT herald.submit_job(type => 'cmd', params => '{}')").unwrap();
        let p1 = submit("post");
        let r1 = submit("report");
        let sql_only = "SELECT (SELECT id FROM herald.claim_next_job('n1', '{sql}'))";
        let command_only = "SELECT (SELECT id FROM herald.claim_next_job('n1', '{command}'))";
        // The posting class's next job is a command: a sql claim does not overtake it,
        // and takes the report of the other class instead.
        assert_eq!(one::<i64>(sql_only), Some(r1));
        assert_eq!(one::<i64>(sql_only), None);
        assert_eq!(state(p1), "CREATED");
        assert_eq!(one::<i64>(command_only), Some(c1));
        assert_eq!(one::<i64>(command_only), None);
        assert_eq!(one::<i64>(sql_only), Some(p1));
    }

    #[pg_test]
    fn a_claim_without_inline_takes_only_newthread_jobs() {
        fixture();
        run("UPDATE herald.job_class SET max_running = 5 WHERE name = 'posting'");
        run("SELECT herald.create_job_type('plain', 'app.work')");
        run("SELECT herald.create_job_type('threaded', 'app.work', newthread => true)");
        run("SELECT herald.create_job_type('plain_post', 'app.work', class => 'posting')");
        run("SELECT herald.create_job_type('threaded_post', 'app.work', class => 'posting', newthread => true)");
        let plain = submit("plain");
        let threaded = submit("threaded");
        let plain_post = submit("plain_post");
        let threaded_post = submit("threaded_post");
        let not_inline = "SELECT (SELECT id FROM herald.claim_next_job('n1', NULL, false))";
        // An unlimited class passes over the job this claim may not take; a limited one
        // keeps its order: its next job waits for a claim that may take it.
        assert_eq!(one::<i64>(not_inline), Some(threaded));
        assert_eq!(one::<i64>(not_inline), None);
        assert_eq!(state(plain), "CREATED");
        assert_eq!(state(threaded_post), "CREATED");
        // Limited classes are served first.
        let any = "SELECT (SELECT id FROM herald.claim_next_job('n1'))";
        assert_eq!(one::<i64>(any), Some(plain_post));
        assert_eq!(one::<i64>(not_inline), Some(threaded_post));
        assert_eq!(one::<i64>(any), Some(plain));
    }

    #[pg_test]
    fn an_outcome_mail_is_due_once_per_outcome_and_retried_until_sent() {
        fixture();
        run("SELECT herald.create_job_type('post', 'app.work')");
        run("SELECT herald.create_job_type('flaky', 'app.fail', max_attempts => 2, retry_delay => '0')");
        let job = one::<i64>(
            "SELECT herald.submit_job('post', '{}', notify_email => 'clerk@example.com')",
        )
        .unwrap();
        let mail = "SELECT (SELECT job FROM herald.claim_job_mail('n1'))";
        let mail_state = |job: i64| {
            one::<String>(&format!(
                "SELECT mail_state FROM herald.job WHERE id = {job}"
            ))
        };
        assert_eq!(one::<i64>(mail), None, "no mail before an outcome");
        assert_eq!(claim(), Some(job));
        // A type without completion hooks completes with its run.
        assert_eq!(
            one::<String>(&format!("SELECT herald.run_job({job})")).as_deref(),
            Some("COMPLETED")
        );
        assert_eq!(mail_state(job).as_deref(), Some("due"));
        let details =
            one::<pgrx::JsonB>("SELECT details FROM herald.claim_job_mail('n1')").unwrap();
        assert_eq!(details.0["state"], "COMPLETED");
        assert_eq!(details.0["job"], job);
        assert_eq!(mail_state(job).as_deref(), Some("sending"));
        assert_eq!(
            one::<i64>(mail),
            None,
            "a mail being sent is not claimed again"
        );
        // Only the sender records; a retry waits for its back-off.
        assert_eq!(
            one::<bool>(&format!(
                "SELECT herald.record_job_mail({job}, 'n2', 'sent')"
            )),
            Some(false)
        );
        assert_eq!(
            one::<bool>(&format!(
                "SELECT herald.record_job_mail({job}, 'n1', 'retry', 'connection refused')"
            )),
            Some(true)
        );
        assert_eq!(one::<i64>(mail), None, "not before its back-off");
        run(&format!(
            "UPDATE herald.job SET mail_next_at = now() - interval '1 second' WHERE id = {job}"
        ));
        assert_eq!(one::<i64>(mail), Some(job));
        run(&format!(
            "SELECT herald.record_job_mail({job}, 'n1', 'sent')"
        ));
        assert_eq!(mail_state(job).as_deref(), Some("sent"));
        assert_eq!(one::<i64>(mail), None, "sent once");
        // A failure followed by a retry is not an outcome; the last failure is.
        let flaky = one::<i64>(
            "SELECT herald.submit_job('flaky', '{}', notify_email => 'clerk@example.com')",
        )
        .unwrap();
        assert_eq!(claim(), Some(flaky));
        run(&format!("SELECT herald.run_job({flaky})"));
        assert_eq!(state(flaky), "CREATED");
        assert_eq!(mail_state(flaky), None);
        assert_eq!(claim(), Some(flaky));
        run(&format!("SELECT herald.run_job({flaky})"));
        assert_eq!(state(flaky), "STARTERROR");
        assert_eq!(mail_state(flaky).as_deref(), Some("due"));
        assert_error(
            &format!("SELECT herald.record_job_mail({flaky}, 'n1', 'maybe')"),
            "unknown mail outcome \"maybe\"",
        );
    }

    #[pg_test]
    fn the_wait_timeout_lets_the_next_job_start_and_alerts_once() {
        fixture();
        run(
            "UPDATE herald.job_class SET max_running = 1, wait_timeout = '1 millisecond',
                                         alert_after = '1 millisecond' WHERE name = 'posting'",
        );
        run("SELECT herald.create_job_type('post', 'app.work', class => 'posting')");
        let p1 = submit("post");
        let p2 = submit("post");
        assert_eq!(claim(), Some(p1));
        run("SELECT pg_sleep(0.01)");
        assert_eq!(one::<i32>("SELECT herald.check_job_alerts()"), Some(2));
        assert_eq!(events("WAIT_TIMEOUT"), 1);
        assert_eq!(events("LONG_RUNNING"), 1);
        assert_eq!(one::<i32>("SELECT herald.check_job_alerts()"), Some(0));
        assert_eq!(claim(), Some(p2));
        let details =
            one::<pgrx::JsonB>("SELECT details FROM herald.event WHERE action = 'WAIT_TIMEOUT'")
                .unwrap()
                .0;
        assert_eq!(details["job"], p1);
        assert_eq!(details["class"], "posting");
    }

    #[pg_test]
    fn a_job_whose_claim_is_gone_is_rescued_and_one_still_held_is_not() {
        fixture();
        run("SELECT herald.create_job_type('post', 'app.work', max_attempts => 3, retry_delay => '0')");
        let job = submit("post");
        assert_eq!(claim(), Some(job));
        assert_eq!(one::<i32>("SELECT herald.rescue_jobs()"), Some(0));
        assert_eq!(state(job), "STARTED");
        // The connection holding the claim goes away (here: the claim alone).
        run(&format!(
            "SELECT pg_advisory_unlock(herald._lock_space('job'), {job}::int)"
        ));
        assert_eq!(one::<i32>("SELECT herald.rescue_jobs()"), Some(1));
        assert_eq!(state(job), "CREATED");
        assert!(
            one::<String>(&format!("SELECT error FROM herald.job WHERE id = {job}"))
                .unwrap()
                .contains("lost the job's claim")
        );
    }

    #[pg_test]
    fn bad_input_gets_clear_errors() {
        fixture();
        assert_error(
            "SELECT herald.submit_job('nope')",
            "job type \"nope\" does not exist",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.work', class => 'nightly')",
            "job class \"nightly\" does not exist",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.nothing')",
            "target function app.nothing does not exist",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.h')",
            "must take (jsonb)",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.work', before_completion => 'app.work')",
            "hook before_completion function app.work must take (bigint, jsonb)",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.work', after_completion => 'app.compensate')",
            "must take (bigint, jsonb, boolean)",
        );
        assert_error(
            "SELECT herald.create_job_type('t', NULL, runner => 'command')",
            "needs the command to run",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.work', runner => 'shell')",
            "unknown job runner",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.work', max_attempts => 0)",
            "max_attempts must be at least 1",
        );
        assert_error(
            "SELECT herald.create_job_type('t', 'app.work', retry_delay => '-1 second')",
            "retry_delay must not be negative",
        );
        assert_error("SELECT herald.create_job_type(NULL, 'app.work')", "name");
        assert_error(
            "UPDATE herald.job_class SET max_running = -1 WHERE name = 'posting'",
            "job_class_max_running_not_negative",
        );
        assert_error(
            "UPDATE herald.job_class SET wait_timeout = '-1 minute' WHERE name = 'posting'",
            "job_class_wait_timeout_positive",
        );
        assert_error(
            "DELETE FROM herald.job_class WHERE name = 'posting'",
            "is built in",
        );
        run("SELECT herald.create_job_type('t', 'app.work')");
        assert_error(
            "SELECT herald.create_job_type('t', 'app.work')",
            "already exists",
        );
        assert_error(
            "SELECT herald.submit_job('t', '[1, 2]')",
            "must be a JSON object",
        );
        assert_error("SELECT herald.submit_job('t', NULL)", "params");
        assert_error(
            "SELECT herald.submit_job('t', notify_email => 'nobody')",
            "is not a mail address",
        );
        assert_error(
            "SELECT herald.abort_job(424242)",
            "job 424242 does not exist",
        );
        assert_error(
            "SELECT herald.add_system_listener('app.h', 'LOGIN', 'jobq')",
            "\"LOGIN\" is not available yet",
        );
        assert_error(
            "SELECT herald.add_system_listener('app.h', 'invoice', 'jobq')",
            "is not a system event type",
        );
        assert_error("SELECT herald.emit('JOB', '1')", "reserved");
    }

    #[pg_test]
    fn privileges_of_job_types() {
        fixture();
        run("CREATE ROLE outsider");
        run("GRANT USAGE ON SCHEMA herald TO outsider");
        run(
            "GRANT EXECUTE ON FUNCTION herald.submit_job(text, jsonb, text, text, timestamptz, jsonb),
                  herald.abort_job(bigint, text),
                  herald.add_system_listener(text, text, text, boolean) TO outsider",
        );
        run("SET ROLE clerk");
        assert_error(
            "SELECT herald.create_job_type('cmd', '/bin/true', runner => 'command')",
            "permission denied to create a job type with runner 'command'",
        );
        run("SELECT herald.create_job_type('post', 'app.work')");
        let job = submit("post");
        run("RESET ROLE");
        run("SET ROLE outsider");
        assert_error(
            "SELECT herald.submit_job('post')",
            "permission denied to submit jobs of type \"post\"",
        );
        assert_error(
            &format!("SELECT herald.abort_job({job})"),
            "permission denied to abort job",
        );
        assert_error(
            "SELECT herald.add_system_listener('app.h', 'JOB', 'jobq')",
            "permission denied to listen to system events",
        );
        run("RESET ROLE");
        run("UPDATE herald.job_type SET submit_roles = '{outsider}' WHERE name = 'post'");
        run("SET ROLE outsider");
        run("SELECT herald.submit_job('post')");
        run("RESET ROLE");
    }
}
