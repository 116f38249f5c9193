-- Herald, resource locks: the trigger that wakes waiters when an operator changes a
-- resource, and the view herald.locks. Loaded after the Rust functions of
-- extension/src/locks/.

CREATE FUNCTION herald._resource_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM herald._wake_lock_waiters(NEW.name);
    RETURN NEW;
END
$$;

CREATE TRIGGER resource_changed
    AFTER UPDATE ON herald.resource
    FOR EACH ROW EXECUTE FUNCTION herald._resource_changed();

-- Every resource with its holders and its waiters (in the order they are served), one row
-- each; a resource nobody holds or awaits has one row with role NULL. Waiters are read as
-- a dirty snapshot sees them (they wait inside their own transactions); see
-- herald.lock_status().
CREATE VIEW herald.locks AS
SELECT r.name AS resource, r.kind, r.lock_limit, s.role, s.holder, s.count, s.token,
       s.position, s.requested_at, s.acquired_at, s.expires_at, s.expired,
       COALESCE(s.acquired_at, pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.-) s.requested_at AS waited,
       s.pid
  FROM herald.resource r
  LEFT JOIN herald.lock_status() s ON s.resource OPERATOR(pg_catalog.=) r.name
 ORDER BY r.name, s.role, s.position, s.token;
COMMENT ON VIEW herald.locks IS
    'Herald resource locks: each holder (count, token, acquired, expires) and waiters in order.';
