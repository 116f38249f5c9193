//! In-database tests of reports: generation in every format as the report's owner,
//! read-only and under its timeout; the failures that end a job in FINISHERROR; groups
//! output exactly once whenever they are sealed; failed members under each
//! `on_member_error`; output records fenced by epoch and rescued per channel. The test's
//! backend plays the coordinator: it claims and runs report jobs as `herald run` does.
#[pgrx::pg_schema]
mod tests {
    use crate::reports::groups;
    use crate::tests::helpers::*;
    use pgrx::prelude::*;

    /// What the commit of a member's end would do: decide its group (a test's
    /// transaction never commits).
    fn settle() {
        groups::decide_pending();
    }

    /// Role `clerk` owns the reports; table `app.invoice` (only clerk may read it); a
    /// file, a print and an email channel.
    fn fixture() {
        run("CREATE ROLE clerk");
        run("CREATE SCHEMA app");
        run("GRANT USAGE ON SCHEMA app TO clerk");
        run("GRANT USAGE ON SCHEMA herald TO clerk");
        run("GRANT EXECUTE ON FUNCTION herald.report(text, text, text, text, interval, text, text[], integer),
                  herald.submit_report(text, jsonb, bigint, text),
                  herald.create_report_group(text, text, text), herald.seal_group(bigint),
                  herald.release_group(bigint), herald.output_channel(text, text, text, jsonb) TO clerk");
        run("CREATE TABLE app.invoice (no int PRIMARY KEY, customer text, total numeric, note text)");
        run("INSERT INTO app.invoice VALUES (1, 'ACME', 9.50, 'a,b'), (2, 'Müller & Söhne', 120, NULL),
                                            (3, 'ACME', 1, 'say \"hi\"')");
        run("GRANT SELECT ON app.invoice TO clerk");
        run("CREATE TABLE app.written (who text)");
        run("GRANT INSERT ON app.written TO clerk");
        run("SELECT herald.output_channel('spool', 'file', 'invoices')");
        run("SELECT herald.output_channel('printer', 'print', 'PDF')");
        run("SELECT herald.output_channel('mail', 'email', 'books@example.com')");
        run("SET ROLE clerk");
        run("SELECT herald.report('invoices', 'SELECT no, customer, total, note FROM app.invoice
                                               WHERE customer = COALESCE($1->>''customer'', customer)
                                               ORDER BY no', 'csv')");
        run("RESET ROLE");
    }

    /// Claim and run every startable job, as a coordinator's runner would; the states
    /// the runs left.
    fn run_all() -> Vec<String> {
        let mut states = vec![];
        while let Some(id) = one::<i64>("SELECT (SELECT id FROM herald.claim_next_job('n1'))") {
            states.push(one::<String>(&format!("SELECT herald.run_job({id})")).unwrap());
            settle();
        }
        states
    }

    fn artefact(job: i64) -> String {
        one::<String>(&format!(
            "SELECT convert_from(content, 'UTF8') FROM herald.report_job WHERE job = {job}"
        ))
        .unwrap()
    }

    fn job_state(job: i64) -> String {
        one::<String>(&format!("SELECT state FROM herald.job WHERE id = {job}")).unwrap()
    }

    #[pg_test]
    fn a_report_is_generated_as_its_owner_in_every_format_with_checksum_and_size() {
        fixture();
        run("SET ROLE clerk");
        run("SELECT herald.report('inv_json', 'SELECT no, total FROM app.invoice ORDER BY no', 'json')");
        run("SELECT herald.report('inv_text', 'SELECT no, customer FROM app.invoice ORDER BY no', 'text')");
        run("SELECT herald.report('inv_html', 'SELECT customer FROM app.invoice WHERE no = 2', 'html')");
        run("SELECT herald.report('inv_pdf', 'SELECT no, customer FROM app.invoice ORDER BY no', 'pdf')");
        run("SELECT herald.report('inv_tpl', 'SELECT no, total, current_user AS who FROM app.invoice
                                               WHERE no = ($1->>''no'')::int', 'text',
                                  template => '{% for r in rows %}Invoice {{ r.no }} for {{ params.to }}: {{ r.total }} ({{ r.who }}){% endfor %}')");
        let csv = one::<i64>("SELECT herald.submit_report('invoices')").unwrap();
        let acme = one::<i64>(r#"SELECT herald.submit_report('invoices', '{"customer": "ACME"}')"#)
            .unwrap();
        let json = one::<i64>("SELECT herald.submit_report('inv_json')").unwrap();
        let text = one::<i64>("SELECT herald.submit_report('inv_text')").unwrap();
        let html = one::<i64>("SELECT herald.submit_report('inv_html')").unwrap();
        let pdf = one::<i64>("SELECT herald.submit_report('inv_pdf')").unwrap();
        let tpl =
            one::<i64>(r#"SELECT herald.submit_report('inv_tpl', '{"no": 1, "to": "ACME"}')"#)
                .unwrap();
        run("RESET ROLE");
        assert_eq!(run_all(), vec!["COMPLETED"; 7]);
        assert_eq!(
            artefact(csv),
            "no,customer,total,note\n1,ACME,9.50,\"a,b\"\n2,Müller & Söhne,120,\n3,ACME,1,\"say \"\"hi\"\"\"\n"
        );
        assert_eq!(
            artefact(acme),
            "no,customer,total,note\n1,ACME,9.50,\"a,b\"\n3,ACME,1,\"say \"\"hi\"\"\"\n"
        );
        assert_eq!(
            artefact(json),
            "[\n{\"no\":1,\"total\":9.50},\n{\"no\":2,\"total\":120},\n{\"no\":3,\"total\":1}\n]\n"
        );
        assert_eq!(
            artefact(text),
            "no | customer\n---+---------------\n1  | ACME\n2  | Müller & Söhne\n3  | ACME\n(3 rows)\n"
        );
        assert!(artefact(html).contains("<td>Müller &amp; Söhne</td>"));
        // A PDF document whose page shows the text table's lines in Courier, Latin-1 text
        // in its WinAnsi encoding (written in hex: the line of Müller & Söhne).
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.report_job
                  WHERE job = {pdf} AND substring(content FROM 1 FOR 5) = '%PDF-'::bytea
                    AND position('%%EOF'::bytea IN content) > 0
                    AND position('/BaseFont /Courier'::bytea IN content) > 0
                    AND position('(3  | ACME) Tj'::bytea IN content) > 0
                    AND position('<3220207C204DFC6C6C657220262053F6686E65> Tj'::bytea IN content) > 0"
            )),
            1
        );
        // The query ran as the report's owner, not as whoever ran the job.
        assert_eq!(artefact(tpl), "Invoice 1 for ACME: 9.5 (clerk)");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.report_job
                  WHERE job = {csv} AND size = length(content) AND rows = 3
                    AND checksum = encode(sha256(content), 'hex') AND generated_by = 'n1'"
            )),
            1
        );
        assert_eq!(
            one::<String>(&format!(
                "SELECT result->>'checksum' FROM herald.job WHERE id = {csv}"
            )),
            one::<String>(&format!(
                "SELECT checksum FROM herald.report_job WHERE job = {csv}"
            ))
        );
    }

    #[pg_test]
    fn failures_end_the_job_in_finisherror_with_the_reason() {
        fixture();
        run("CREATE FUNCTION app.write() RETURNS int LANGUAGE sql AS $$ INSERT INTO app.written VALUES (current_user) RETURNING 1 $$");
        run("SET ROLE clerk");
        run("SELECT herald.report('writes', 'SELECT app.write()', 'csv')");
        run("SELECT herald.report('slow', 'SELECT pg_sleep(5)', 'csv', statement_timeout => '200 ms')");
        run("SELECT herald.report('bad_param', 'SELECT ($1->>''no'')::int AS no', 'csv')");
        run("SELECT herald.report('divides', 'SELECT 1 / (no - no) FROM app.invoice', 'csv')");
        run("SELECT herald.report('missing', 'SELECT no FROM app.invoice', 'text', template => '{{ rows[0].nope }}')");
        let writes = one::<i64>("SELECT herald.submit_report('writes')").unwrap();
        let slow = one::<i64>("SELECT herald.submit_report('slow')").unwrap();
        let bad =
            one::<i64>(r#"SELECT herald.submit_report('bad_param', '{"no": "twelve"}')"#).unwrap();
        let divides = one::<i64>("SELECT herald.submit_report('divides')").unwrap();
        let missing = one::<i64>("SELECT herald.submit_report('missing')").unwrap();
        run("RESET ROLE");
        run_all();
        let error = |job: i64| {
            one::<String>(&format!(
                "SELECT state || ': ' || error FROM herald.job WHERE id = {job}"
            ))
            .unwrap()
        };
        assert!(
            error(writes).starts_with("FINISHERROR: "),
            "{}",
            error(writes)
        );
        assert!(
            error(writes).contains("read-only transaction"),
            "{}",
            error(writes)
        );
        assert_eq!(count("SELECT count(*) FROM app.written"), 0);
        assert!(
            error(slow).contains("statement_timeout of 200 ms"),
            "{}",
            error(slow)
        );
        assert!(
            error(bad).contains("invalid input syntax for type integer"),
            "{}",
            error(bad)
        );
        assert!(
            error(divides).contains("division by zero"),
            "{}",
            error(divides)
        );
        assert!(
            error(missing).contains("template error"),
            "{}",
            error(missing)
        );
        // The backend is fine and writable afterwards.
        run("INSERT INTO app.written VALUES ('after')");
    }

    #[pg_test]
    fn bad_definitions_and_submits_get_clear_errors() {
        fixture();
        assert_error(
            "SELECT herald.report('x', 'SELEC 1', 'csv')",
            "syntax error",
        );
        assert_error(
            "SELECT herald.report('x', 'SELECT 1', 'xlsx')",
            "unknown report format \"xlsx\"",
        );
        assert_error(
            "SELECT herald.report('x', 'SELECT 1', 'csv', template => 'x')",
            "a csv report has no template",
        );
        assert_error(
            "SELECT herald.report('x', 'SELECT 1', 'text', template => '{% for %}')",
            "template error",
        );
        assert_error(
            "SELECT herald.report('x', 'SELECT 1', 'csv', statement_timeout => '0')",
            "statement_timeout must be positive",
        );
        assert_error(
            "SELECT herald.report('x', 'CREATE TABLE y ()', 'csv')",
            "returns no rows",
        );
        assert_error(
            "SELECT herald.report(NULL, 'SELECT 1', 'csv')",
            "name must not be NULL",
        );
        run("CREATE FUNCTION app.noop(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT p $$");
        run("SELECT herald.create_job_type('plain', 'app.noop')");
        assert_error(
            "SELECT herald.report('plain', 'SELECT 1', 'csv')",
            "a job type named \"plain\" exists",
        );
        assert_error(
            "SELECT herald.create_job_type('r', 'x', runner => 'report')",
            "made by herald.report()",
        );
        assert_error("SELECT herald.drop_job_type('invoices')", "is a report");
        assert_error(
            "SELECT herald.submit_report('nope')",
            "report \"nope\" does not exist",
        );
        assert_error(
            "SELECT herald.submit_report('invoices', '[1]')",
            "params must be a JSON object",
        );
        assert_error(
            "SELECT herald.submit_report('invoices', output => 'nowhere')",
            "output channel \"nowhere\" does not exist",
        );
        assert_error(
            "SELECT herald.create_report_group('g', 'nowhere')",
            "output channel \"nowhere\" does not exist",
        );
        assert_error(
            "SELECT herald.create_report_group('g', 'spool', 'ignore')",
            "unknown on_member_error",
        );
        assert_error(
            "SELECT herald.output_channel('c', 'fax', 'x')",
            "unknown channel kind",
        );
        assert_error(
            "SELECT herald.output_channel('c', 'file', '../etc')",
            "bad target",
        );
        assert_error(
            "SELECT herald.output_channel('c', 'email', 'nobody')",
            "bad target",
        );
        assert_error(
            "SELECT herald.seal_group(424242)",
            "report group 424242 does not exist",
        );
        // Channels are for administrators; groups for their creators.
        run("SET ROLE clerk");
        assert_error(
            "SELECT herald.output_channel('c', 'file', 'x')",
            "permission denied to define output channels",
        );
        run("RESET ROLE");
        let g = one::<i64>("SELECT herald.create_report_group('g', 'spool')").unwrap();
        run("SET ROLE clerk");
        assert_error(
            &format!("SELECT herald.submit_report('invoices', group_id => {g})"),
            "permission denied for report group",
        );
        run("RESET ROLE");
        run("SELECT herald.drop_report('invoices')");
        assert_eq!(
            count("SELECT count(*) FROM herald.job_type WHERE name = 'invoices'"),
            0
        );
    }

    /// The group's output record: (state, members, failed).
    fn group_output(g: i64) -> Option<String> {
        one::<String>(&format!(
            "SELECT (SELECT state || ' ' || members::text || ' ' || failed::text
                       FROM herald.report_output WHERE group_id = {g})"
        ))
    }

    fn group_state(g: i64) -> String {
        one::<String>(&format!(
            "SELECT state FROM herald.report_group WHERE id = {g}"
        ))
        .unwrap()
    }

    #[pg_test]
    fn a_group_is_output_once_whenever_it_is_sealed() {
        fixture();
        run("SET ROLE clerk");
        // Sealed before its members end: the last one to end makes the output.
        let before = one::<i64>("SELECT herald.create_report_group('before', 'spool')").unwrap();
        let m1 = one::<i64>(&format!(
            "SELECT herald.submit_report('invoices', group_id => {before})"
        ))
        .unwrap();
        let m2 = one::<i64>(&format!(
            r#"SELECT herald.submit_report('invoices', '{{"customer": "ACME"}}', {before})"#
        ))
        .unwrap();
        assert_eq!(
            one::<String>(&format!("SELECT herald.seal_group({before})")).unwrap(),
            "sealed"
        );
        assert_error(
            &format!("SELECT herald.submit_report('invoices', group_id => {before})"),
            "is sealed (sealed): no more members may join",
        );
        // Sealed after they ended: the seal makes the output.
        let after = one::<i64>("SELECT herald.create_report_group('after', 'spool')").unwrap();
        let a1 = one::<i64>(&format!(
            "SELECT herald.submit_report('invoices', group_id => {after})"
        ))
        .unwrap();
        // An empty group sealed has nothing to output.
        let empty = one::<i64>("SELECT herald.create_report_group('empty', 'spool')").unwrap();
        assert_eq!(
            one::<String>(&format!("SELECT herald.seal_group({empty})")).unwrap(),
            "empty"
        );
        run("RESET ROLE");
        assert_eq!(group_output(before), None);
        assert_eq!(run_all().len(), 3);
        assert_eq!(group_state(before), "output_claimed");
        assert_eq!(
            group_output(before),
            Some(format!("pending {{{m1},{m2}}} {{}}"))
        );
        assert_eq!(group_state(after), "open");
        assert_eq!(group_output(after), None);
        run("SET ROLE clerk");
        assert_eq!(
            one::<String>(&format!("SELECT herald.seal_group({after})")).unwrap(),
            "output_claimed"
        );
        assert_error(
            &format!("SELECT herald.seal_group({after})"),
            "already sealed",
        );
        run("RESET ROLE");
        assert_eq!(group_output(after), Some(format!("pending {{{a1}}} {{}}")));
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.report_output WHERE group_id = {empty}"
            )),
            0
        );
    }

    #[pg_test]
    fn a_failed_member_holds_or_is_left_out_and_never_hangs_its_group() {
        fixture();
        run("SET ROLE clerk");
        run("SELECT herald.report('fails', 'SELECT 1 / ($1->>''d'')::int AS x', 'csv')");
        let held =
            one::<i64>("SELECT herald.create_report_group('held', 'spool', 'hold')").unwrap();
        let ok = one::<i64>(&format!(
            "SELECT herald.submit_report('invoices', group_id => {held})"
        ))
        .unwrap();
        let bad = one::<i64>(&format!(
            r#"SELECT herald.submit_report('fails', '{{"d": 0}}', {held})"#
        ))
        .unwrap();
        run(&format!("SELECT herald.seal_group({held})"));
        let partial =
            one::<i64>("SELECT herald.create_report_group('partial', 'spool', 'output_partial')")
                .unwrap();
        let p_ok = one::<i64>(&format!(
            "SELECT herald.submit_report('invoices', group_id => {partial})"
        ))
        .unwrap();
        let p_bad = one::<i64>(&format!(
            r#"SELECT herald.submit_report('fails', '{{"d": 0}}', {partial})"#
        ))
        .unwrap();
        run(&format!("SELECT herald.seal_group({partial})"));
        run("RESET ROLE");
        run_all();
        assert_eq!(job_state(bad), "FINISHERROR");
        assert_eq!(group_state(held), "failed");
        assert_eq!(group_output(held), None, "a held group outputs nothing");
        assert_eq!(group_state(partial), "output_claimed");
        assert_eq!(
            group_output(partial),
            Some(format!("pending {{{p_ok}}} {{{p_bad}}}"))
        );
        // The operator retries the failed member (fixed meanwhile): the group waits for it
        // again, and is output once it succeeds.
        run("SET ROLE clerk");
        run("SELECT herald.report('fails', 'SELECT 1 AS x', 'csv')");
        run("RESET ROLE");
        run(&format!("SELECT herald.retry_job({bad})"));
        settle();
        assert_eq!(group_state(held), "sealed");
        run_all();
        assert_eq!(
            group_output(held),
            Some(format!("pending {{{ok},{bad}}} {{}}"))
        );
        // Or releases the rest of a held group.
        run("SET ROLE clerk");
        run("SELECT herald.report('fails', 'SELECT 1 / 0 AS x', 'csv')");
        let again = one::<i64>("SELECT herald.create_report_group('again', 'spool')").unwrap();
        let a_ok = one::<i64>(&format!(
            "SELECT herald.submit_report('invoices', group_id => {again})"
        ))
        .unwrap();
        let a_bad = one::<i64>(&format!(
            "SELECT herald.submit_report('fails', group_id => {again})"
        ))
        .unwrap();
        run(&format!("SELECT herald.seal_group({again})"));
        run("RESET ROLE");
        run_all();
        assert_eq!(group_state(again), "failed");
        run("SET ROLE clerk");
        assert_eq!(
            one::<String>(&format!("SELECT herald.release_group({again})")).unwrap(),
            "output_claimed"
        );
        assert_error(
            &format!("SELECT herald.release_group({again})"),
            "nothing to release",
        );
        run("RESET ROLE");
        assert_eq!(
            group_output(again),
            Some(format!("pending {{{a_ok}}} {{{a_bad}}}"))
        );
        // An aborted member ends its group too: with nothing left that succeeded, the
        // group fails instead of outputting nothing.
        run("SET ROLE clerk");
        let ab =
            one::<i64>("SELECT herald.create_report_group('aborted', 'spool', 'output_partial')")
                .unwrap();
        let ab1 = one::<i64>(&format!(
            "SELECT herald.submit_report('invoices', group_id => {ab})"
        ))
        .unwrap();
        run(&format!("SELECT herald.seal_group({ab})"));
        run("RESET ROLE");
        run(&format!("SELECT herald.abort_job({ab1}, 'not needed')"));
        settle();
        assert_eq!(group_state(ab), "failed");
        assert_eq!(group_output(ab), None);
    }

    #[pg_test]
    fn output_is_claimed_fenced_by_epoch_and_rescued_per_channel() {
        fixture();
        let single =
            one::<i64>("SELECT herald.submit_report('invoices', output => 'spool')").unwrap();
        let stored_only = one::<i64>("SELECT herald.submit_report('invoices')").unwrap();
        let g = one::<i64>("SELECT herald.create_report_group('print', 'printer')").unwrap();
        let member = one::<i64>(&format!(
            "SELECT herald.submit_report('invoices', group_id => {g})"
        ))
        .unwrap();
        run(&format!("SELECT herald.seal_group({g})"));
        run_all();
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM herald.report_output WHERE job = {stored_only}"
            )),
            0
        );
        // The single report's output comes first: claimed, sending, epoch 1.
        let claim = one::<String>(
            "SELECT id || ' ' || epoch || ' ' || kind || ' ' || target || ' ' || members::text FROM herald.claim_output('n1')",
        )
        .unwrap();
        let out = one::<i64>(&format!(
            "SELECT id FROM herald.report_output WHERE job = {single}"
        ))
        .unwrap();
        assert_eq!(claim, format!("{out} 1 file invoices {{{single}}}"));
        assert_eq!(
            one::<String>(&format!(
                "SELECT convert_from(content, 'UTF8') FROM herald.output_artefacts({out})"
            )),
            Some(artefact(single))
        );
        // A stale epoch changes nothing; the claim's own records the end.
        assert!(!one::<bool>(&format!("SELECT herald.record_output({out}, 0, 'sent')")).unwrap());
        assert_eq!(
            one::<String>(&format!(
                "SELECT state FROM herald.report_output WHERE id = {out}"
            ))
            .unwrap(),
            "sending"
        );
        // (record_output released the claim: take it again as a claim would.)
        run(&format!(
            "SELECT pg_advisory_lock(herald._lock_space('output'), {out}::int)"
        ));
        assert!(one::<bool>(&format!(
            "SELECT herald.record_output({out}, 1, 'sent', 'abc')"
        ))
        .unwrap());
        assert_eq!(
            one::<String>(&format!(
                "SELECT state FROM herald.report_output WHERE id = {out}"
            ))
            .unwrap(),
            "sent"
        );
        // The group's print: claimed, then its claim is lost mid-output (the node died).
        let print = one::<i64>("SELECT id FROM herald.claim_output('n1')").unwrap();
        assert_eq!(
            print,
            one::<i64>(&format!(
                "SELECT id FROM herald.report_output WHERE group_id = {g}"
            ))
            .unwrap()
        );
        assert_eq!(
            count("SELECT herald.rescue_outputs()"),
            0,
            "a held claim is alive"
        );
        run(&format!(
            "SELECT pg_advisory_unlock(herald._lock_space('output'), {print}::int)"
        ));
        assert_eq!(count("SELECT herald.rescue_outputs()"), 1);
        assert_eq!(
            one::<String>(&format!(
                "SELECT state || ' ' || as_copy FROM herald.report_output WHERE id = {print}"
            ))
            .unwrap(),
            "uncertain false",
            "a print is never sent again by itself"
        );
        assert_eq!(count("SELECT count(*) FROM herald.claim_output('n1')"), 0);
        run(&format!("SELECT herald.reprint_output({print})"));
        let again = one::<String>("SELECT id || ' ' || epoch || ' ' || as_copy || ' ' || members::text FROM herald.claim_output('n2')").unwrap();
        assert_eq!(again, format!("{print} 2 true {{{member}}}"));
        assert_error(
            &format!("SELECT herald.mark_output_done({print})"),
            "is not uncertain or failed",
        );
        // A file output whose node died is simply written again.
        let f = one::<i64>("SELECT herald.submit_report('invoices', output => 'spool')").unwrap();
        run_all();
        let fo = one::<i64>("SELECT id FROM herald.claim_output('n1')").unwrap();
        assert_eq!(
            fo,
            one::<i64>(&format!(
                "SELECT id FROM herald.report_output WHERE job = {f}"
            ))
            .unwrap()
        );
        run(&format!(
            "SELECT pg_advisory_unlock(herald._lock_space('output'), {fo}::int)"
        ));
        assert_eq!(count("SELECT herald.rescue_outputs()"), 1);
        assert_eq!(
            one::<String>(&format!(
                "SELECT state FROM herald.report_output WHERE id = {fo}"
            ))
            .unwrap(),
            "pending"
        );
        assert_error(
            &format!("SELECT herald.record_output({fo}, 1, 'lost')"),
            "not \"lost\"",
        );
    }

    #[pg_test]
    fn an_output_refused_for_now_is_retried_later_until_its_attempts_are_used_up() {
        fixture();
        run(
            r#"SELECT herald.output_channel('flaky', 'email', 'books@example.com', '{"retry_seconds": 30, "max_attempts": 2}')"#,
        );
        assert_error(
            r#"SELECT herald.output_channel('bad', 'email', 'a@example.com', '{"max_attempts": 0}')"#,
            "bad channel option max_attempts",
        );
        assert_error(
            r#"SELECT herald.output_channel('bad', 'email', 'a@example.com', '{"retry_seconds": "soon"}')"#,
            "bad channel option retry_seconds",
        );
        let job = one::<i64>("SELECT herald.submit_report('invoices', output => 'flaky')").unwrap();
        run_all();
        let out = one::<i64>("SELECT id FROM herald.claim_output('n1')").unwrap();
        assert_eq!(
            out,
            one::<i64>(&format!(
                "SELECT id FROM herald.report_output WHERE job = {job}"
            ))
            .unwrap()
        );
        // The server was unreachable: pending again, not before its delay.
        assert!(one::<bool>(&format!(
            "SELECT herald.record_output({out}, 1, 'retry', NULL, 'cannot reach the server')"
        ))
        .unwrap());
        assert_eq!(
            one::<String>(&format!(
                "SELECT state || ' ' || attempts || ' ' || error || ' ' ||
                        (next_at BETWEEN clock_timestamp() + interval '25 s' AND clock_timestamp() + interval '31 s')
                   FROM herald.report_output WHERE id = {out}"
            ))
            .unwrap(),
            "pending 1 cannot reach the server true"
        );
        assert_eq!(
            count("SELECT count(*) FROM herald.claim_output('n1')"),
            0,
            "not due yet"
        );
        run(&format!(
            "UPDATE herald.report_output SET next_at = clock_timestamp() - interval '1 s' WHERE id = {out}"
        ));
        assert_eq!(
            one::<i64>("SELECT epoch FROM herald.claim_output('n1')"),
            Some(2)
        );
        // The last attempt refused too: failed, for an operator.
        assert!(one::<bool>(&format!(
            "SELECT herald.record_output({out}, 2, 'retry', NULL, 'cannot reach the server')"
        ))
        .unwrap());
        assert_eq!(
            one::<String>(&format!(
                "SELECT state || ' ' || error || ' ' || (next_at IS NULL) FROM herald.report_output WHERE id = {out}"
            ))
            .unwrap(),
            "failed cannot reach the server (after 2 attempts) true"
        );
        // Artefacts are read by the connection holding the output's claim (or an
        // administrator), not by whoever may call the function.
        run("CREATE ROLE node LOGIN");
        run("GRANT USAGE ON SCHEMA herald TO node");
        run("GRANT EXECUTE ON FUNCTION herald.output_artefacts(bigint) TO node");
        run("SET ROLE node");
        assert_error(
            &format!("SELECT count(*) FROM herald.output_artefacts({out})"),
            "is not being sent by this connection",
        );
        run("RESET ROLE");
    }
}
