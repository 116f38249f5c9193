-- Herald privilege model: what a DBA grants to each kind of role.
-- Nothing in schema herald is open to PUBLIC. Replace the role names with your own;
-- the roles must exist (CREATE ROLE ... LOGIN). The end-to-end test runs this file as is.

-- 1. Applications that emit events and register listeners for their own handlers.
--    Every handler runs as the role that registered its listener, in a security-restricted
--    operation. A role may only register handlers it may EXECUTE, listen to tables it may
--    SELECT (and TRIGGER, for synchronous listeners), listen to event types it owns or was
--    granted (herald.create_event_type, herald.grant_listen), attach listeners to queues
--    whose listener_roles include it, only remove its own listeners, and only read
--    (next_event) the session listeners of its own session.
GRANT USAGE ON SCHEMA herald TO herald_app;
GRANT EXECUTE ON FUNCTION herald.emit(text, text, jsonb) TO herald_app;
GRANT EXECUTE ON FUNCTION herald.add_event_listener(text, text, text, boolean),
                          herald.add_data_listener(regclass, text, text, text, boolean),
                          herald.remove_listener(bigint),
                          herald.next_event(bigint, interval, boolean) TO herald_app;
GRANT EXECUTE ON FUNCTION herald.create_event_type(text, regrole),
                          herald.drop_event_type(text),
                          herald.grant_listen(text, regrole),
                          herald.revoke_listen(text, regrole) TO herald_app;
GRANT SELECT ON herald.listener, herald.event_type TO herald_app;
--    Jobs: a role that creates a job type owns it (its target and hooks run as that role);
--    it, the type's submit_roles and administrators may submit its jobs, and a job's
--    submitter may finish, abort or retry it.
GRANT EXECUTE ON FUNCTION herald.create_job_type(text, text, text, text, text, text, text, text,
                              boolean, boolean, boolean, boolean, integer, interval, text[], jsonb),
                          herald.drop_job_type(text),
                          herald.submit_job(text, jsonb, text, text, timestamptz, jsonb),
                          herald.mark_job_finished(bigint, jsonb),
                          herald.abort_job(bigint, text),
                          herald.retry_job(bigint) TO herald_app;
GRANT SELECT ON herald.job_type, herald.job_class TO herald_app;
--    Reports: a role that defines a report owns it (its query runs as that role, read-only);
--    groups are added to, sealed and released by their creator. Output channels are
--    defined by administrators (they act on the coordinators' hosts).
GRANT EXECUTE ON FUNCTION herald.report(text, text, text, text, interval, text, text[], integer),
                          herald.drop_report(text),
                          herald.submit_report(text, jsonb, bigint, text),
                          herald.create_report_group(text, text, text),
                          herald.seal_group(bigint), herald.release_group(bigint) TO herald_app;
GRANT SELECT ON herald.report, herald.output_channel, herald.report_group TO herald_app;
--    Resource locks: acquire, renew, release and fence-check (a holder acts with its
--    token); resources are defined by administrators.
GRANT EXECUTE ON FUNCTION herald.lock_acquire(text, text, integer, interval, interval),
                          herald.lock_acquire_all(text[], text, integer, interval, interval),
                          herald.lock_renew(text, text, bigint, interval),
                          herald.lock_release(text, text, bigint),
                          herald.lock_check(text, bigint),
                          herald.lock_status() TO herald_app;
GRANT SELECT ON herald.resource, herald.locks TO herald_app;

-- 2. Operators who create, tune, start, stop and resume queues, and read the log. A queue's
--    listener_roles names the roles whose listeners may use it, e.g.
--    INSERT INTO herald.event_queue (name, event_run, listener_roles)
--    VALUES ('app_queue', 1, '{herald_app}');
GRANT USAGE ON SCHEMA herald TO herald_ops;
GRANT SELECT, INSERT, UPDATE, DELETE ON herald.event_queue TO herald_ops;
GRANT SELECT ON herald.queue_status, herald.event, herald.event_log, herald.listener,
                 herald.event_type TO herald_ops;
GRANT EXECUTE ON FUNCTION herald.resume_queue(text, text) TO herald_ops;
--    Jobs: tune classes (UPDATE herald.job_class SET max_running = 1 WHERE name = 'posting'),
--    watch jobs, abort and retry them (herald.set_job_state is for administrators).
GRANT SELECT, INSERT, UPDATE, DELETE ON herald.job_class TO herald_ops;
GRANT SELECT ON herald.job, herald.job_type, herald.job_audit TO herald_ops;
GRANT EXECUTE ON FUNCTION herald.abort_job(bigint, text), herald.retry_job(bigint) TO herald_ops;
--    Reports: watch groups and output (reprinting an uncertain print and marking it done
--    are for administrators).
GRANT SELECT ON herald.report, herald.output_channel, herald.report_group, herald.report_job,
                 herald.report_output TO herald_ops;
--    Resource locks: watch them, pause or resize a resource
--    (UPDATE herald.resource SET lock_limit = 0 WHERE name = 'printer'); forcing a release
--    is for administrators.
GRANT SELECT, UPDATE (lock_limit, default_lease) ON herald.resource TO herald_ops;
GRANT SELECT ON herald.locks, herald.lock_audit TO herald_ops;
GRANT EXECUTE ON FUNCTION herald.lock_status() TO herald_ops;

-- 3. The login role the coordinators (`herald run`) use. It needs no table privileges:
--    lookups do their bookkeeping as the extension owner and run handlers as their owners.
GRANT USAGE ON SCHEMA herald TO herald_coordinator;
GRANT SELECT ON herald.event_queue, herald.queue_status TO herald_coordinator;
GRANT EXECUTE ON FUNCTION herald.claim_queue(text), herald.release_queue(text),
                          herald.drain(text, text), herald.await_events(text, integer),
                          herald.await_queues(text[], integer)
    TO herald_coordinator;
--    Jobs: claiming, running (targets and hooks run as their types' owners), completing,
--    rescuing, alerts, outcome mails; and what `herald status` shows.
GRANT EXECUTE ON FUNCTION herald.claim_next_job(text, text[], boolean), herald.run_job(bigint),
                          herald.run_job_and_claim(bigint, text, boolean),
                          herald.finish_job(bigint, jsonb), herald.fail_job(bigint, text),
                          herald.complete_next_job(text), herald.rescue_jobs(),
                          herald.check_job_alerts(), herald.await_jobs(integer),
                          herald.callout(bigint, text, jsonb),
                          herald.claim_job_mail(text), herald.record_job_mail(bigint, text, text, text)
    TO herald_coordinator;
GRANT SELECT ON herald.job, herald.job_class TO herald_coordinator;
--    Reports: report jobs run through herald.run_job like sql jobs (their queries as the
--    reports' owners); output: claiming, reading artefacts, recording, rescuing, waiting.
GRANT EXECUTE ON FUNCTION herald.claim_output(text, text[]), herald.output_artefacts(bigint),
                          herald.record_output(bigint, bigint, text, text, text),
                          herald.rescue_outputs(), herald.await_outputs(integer),
                          herald.output_callout(bigint, text, jsonb)
    TO herald_coordinator;
--    Resource locks: lapsed leases are expired every second.
GRANT EXECUTE ON FUNCTION herald.expire_locks() TO herald_coordinator;
