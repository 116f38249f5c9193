-- Herald privilege model: what a DBA grants to each kind of role.
-- Nothing in schema herald is open to PUBLIC. Replace the role names with your own;
-- the roles must exist (CREATE ROLE ... LOGIN). The end-to-end test runs this file as is.

-- 1. Applications that emit events and register listeners for their own handlers.
--    Listener handlers run as the role that registered them (queued and session delivery)
--    or as the producing session's role (sync delivery). A role may only register handlers
--    it may EXECUTE, only remove its own listeners, and only read (next_event) the session
--    listeners of its own session.
GRANT USAGE ON SCHEMA herald TO herald_app;
GRANT EXECUTE ON FUNCTION herald.emit(text, text, jsonb) TO herald_app;
GRANT EXECUTE ON FUNCTION herald.add_event_listener(text, text, text, boolean),
                          herald.add_data_listener(regclass, text, text, text, boolean),
                          herald.remove_listener(bigint),
                          herald.next_event(bigint, interval, boolean) TO herald_app;
GRANT SELECT ON herald.listener TO herald_app;

-- 2. Operators who create, tune, start, stop and resume queues, and read the log.
GRANT USAGE ON SCHEMA herald TO herald_ops;
GRANT SELECT, INSERT, UPDATE, DELETE ON herald.event_queue TO herald_ops;
GRANT SELECT ON herald.queue_status, herald.event, herald.event_log, herald.listener TO herald_ops;
GRANT EXECUTE ON FUNCTION herald.resume_queue(text, text) TO herald_ops;

-- 3. The login role the coordinators (`herald run`) use. It needs no table privileges:
--    lookups do their bookkeeping as the extension owner and run handlers as their owners.
GRANT USAGE ON SCHEMA herald TO herald_coordinator;
GRANT SELECT ON herald.event_queue, herald.queue_status TO herald_coordinator;
GRANT EXECUTE ON FUNCTION herald.claim_queue(text), herald.release_queue(text),
                          herald.drain(text, text), herald.await_events(text, integer)
    TO herald_coordinator;
