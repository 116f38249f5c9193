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

-- 2. Operators who create, tune, start, stop and resume queues, and read the log. A queue's
--    listener_roles names the roles whose listeners may use it, e.g.
--    INSERT INTO herald.event_queue (name, event_run, listener_roles)
--    VALUES ('app_queue', 1, '{herald_app}');
GRANT USAGE ON SCHEMA herald TO herald_ops;
GRANT SELECT, INSERT, UPDATE, DELETE ON herald.event_queue TO herald_ops;
GRANT SELECT ON herald.queue_status, herald.event, herald.event_log, herald.listener,
                 herald.event_type TO herald_ops;
GRANT EXECUTE ON FUNCTION herald.resume_queue(text, text) TO herald_ops;

-- 3. The login role the coordinators (`herald run`) use. It needs no table privileges:
--    lookups do their bookkeeping as the extension owner and run handlers as their owners.
GRANT USAGE ON SCHEMA herald TO herald_coordinator;
GRANT SELECT ON herald.event_queue, herald.queue_status TO herald_coordinator;
GRANT EXECUTE ON FUNCTION herald.claim_queue(text), herald.release_queue(text),
                          herald.drain(text, text), herald.await_events(text, integer)
    TO herald_coordinator;
