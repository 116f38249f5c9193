-- Herald: privileges. Loaded last by CREATE EXTENSION (pgrx `finalize`).

------------------------------------------------------------------------------------------
-- Privileges: nothing is open to PUBLIC. See docs/privileges.md for the grants per role.
------------------------------------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA herald FROM PUBLIC;

-- herald._lock_space() returns a constant; views and functions of every role use it.
GRANT EXECUTE ON FUNCTION herald._lock_space(text) TO PUBLIC;
