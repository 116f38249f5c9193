//! The extension's owner and the oids of its own objects (looked up once per backend), and
//! running code as another role.
//!
//! Callers only need `EXECUTE` on Herald's functions: the bookkeeping those functions do
//! (inserting events, updating queue status) runs as the owner of the extension, the way a
//! `SECURITY DEFINER` function would, but without the per-call cost of one. All internal
//! SQL is schema-qualified and uses `OPERATOR(pg_catalog.=)`, so a caller's `search_path`
//! cannot redirect it.
use pgrx::prelude::*;
use std::cell::Cell;

use super::errors;

thread_local! {
    static OIDS: Cell<Option<Oids>> = const { Cell::new(None) };
}

/// Oids of Herald's objects in this database, looked up once per backend.
#[derive(Clone, Copy, Debug)]
pub struct Oids {
    pub owner: pg_sys::Oid,
    pub event_seq: pg_sys::Oid,
    pub event_type: pg_sys::Oid,
    pub listener_rel: pg_sys::Oid,
    pub event_rel: pg_sys::Oid,
    pub session_event_rel: pg_sys::Oid,
    /// Schema `herald`.
    pub schema: pg_sys::Oid,
}

impl Oids {
    /// The tables whose shape the caches above depend on: a change to one of them (or the
    /// extension being dropped) makes every cache forget everything.
    pub fn storage(&self) -> [pg_sys::Oid; 2] {
        [self.event_rel, self.session_event_rel]
    }
}

/// Look up (once) the oids of Herald's objects.
pub fn oids() -> Oids {
    if let Some(oids) = OIDS.with(|c| c.get()) {
        return oids;
    }
    let row = errors::spi(Spi::connect(|client| {
        let table = client.select(
            "SELECT e.extowner, 'herald.event_id_seq'::pg_catalog.regclass::pg_catalog.oid,
                    'herald.event'::pg_catalog.regtype::pg_catalog.oid,
                    'herald.listener'::pg_catalog.regclass::pg_catalog.oid,
                    'herald.event'::pg_catalog.regclass::pg_catalog.oid,
                    'herald.session_event'::pg_catalog.regclass::pg_catalog.oid,
                    e.extnamespace, e.extversion
               FROM pg_catalog.pg_extension e
              WHERE e.extname OPERATOR(pg_catalog.=) 'herald'",
            Some(1),
            &[],
        )?;
        if table.is_empty() {
            return Ok((None, None, None, None, None, None, None, None));
        }
        let row = table.first();
        Ok::<_, pgrx::spi::SpiError>((
            row.get::<pg_sys::Oid>(1)?,
            row.get::<pg_sys::Oid>(2)?,
            row.get::<pg_sys::Oid>(3)?,
            row.get::<pg_sys::Oid>(4)?,
            row.get::<pg_sys::Oid>(5)?,
            row.get::<pg_sys::Oid>(6)?,
            row.get::<pg_sys::Oid>(7)?,
            row.get::<String>(8)?,
        ))
    }));
    let oids = match row {
        (
            Some(owner),
            Some(event_seq),
            Some(event_type),
            Some(listener_rel),
            Some(event_rel),
            Some(session_event_rel),
            Some(schema),
            Some(version),
        ) if version == env!("CARGO_PKG_VERSION") => Oids {
            owner,
            event_seq,
            event_type,
            listener_rel,
            event_rel,
            session_event_rel,
            schema,
        },
        (Some(_), .., Some(version)) => errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "the installed herald library is {} but this database has herald {version}",
                env!("CARGO_PKG_VERSION")
            ),
            Some("Finish the upgrade: ALTER EXTENSION herald UPDATE;".into()),
        ),
        _ => errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension \"herald\" is not installed in this database",
            Some("CREATE EXTENSION herald;".into()),
        ),
    };
    OIDS.with(|c| c.set(Some(oids)));
    oids
}

/// The oid of relation `name` (a table or index) in the extension's schema, through the
/// relation-name syscache. Raises if there is none (the library is newer than the SQL).
pub fn relation(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: a syscache lookup by name and namespace; it returns InvalidOid if not found.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), oids().schema) };
    if oid == pg_sys::InvalidOid {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("relation herald.{} is missing", name.to_string_lossy()),
            Some("Finish the upgrade: ALTER EXTENSION herald UPDATE;".into()),
        );
    }
    oid
}

/// Forget the cached oids (the invalidation callback does this when the extension's own
/// tables change, or the extension is dropped). Never raises.
pub fn forget() {
    OIDS.with(|c| c.set(None));
}

/// The cached oids, without looking them up (for invalidation hooks, which must not query).
pub fn cached() -> Option<Oids> {
    OIDS.with(|c| c.get())
}

/// Run `f` as the extension owner (for Herald's own bookkeeping), then switch back.
///
/// If `f` raises an error the (sub)transaction abort restores the user, as it does for
/// `SECURITY DEFINER` functions.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = oids().owner;
    as_user(owner, f)
}

/// Run `f` as `user` with a local user-id change (no `SET ROLE` possible inside).
pub fn as_user<R>(user: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain reads and writes of the backend's user id and security context.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            user,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let result = f();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

/// The `search_path` user code runs with: PostgreSQL's default, so that the session that
/// happens to run it (a producer, a coordinator) cannot point its unqualified names at
/// objects of its own. A function with its own `SET search_path` still gets that.
const RESTRICTED_SEARCH_PATH: &std::ffi::CStr = c"\"$user\", public";

/// Run user code (a handler) as `user` in a security-restricted operation, the way
/// PostgreSQL runs index expressions and `VACUUM`'s functions: no `SET ROLE`, no
/// `SET SESSION AUTHORIZATION`, no temporary tables, cursors or prepared statements that
/// would outlive the call, the default `search_path`, and every setting it changes is put
/// back when it returns.
///
/// If `f` raises an error the (sub)transaction abort restores the user, the security
/// context and the settings.
pub fn as_restricted<R>(user: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain reads and writes of the backend's user id and security context, and a
    // new GUC nesting level that the matching AtEOXact_GUC below (or an abort) pops; the
    // search_path is saved at that level (as a function's SET clause is), and the value is
    // a valid constant.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            user,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            RESTRICTED_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let result = f();
    // SAFETY: `false` reverts every setting made at `nest_level` or above (as VACUUM does
    // after running index functions); then the saved user and context come back.
    unsafe {
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    }
    result
}

/// Raise a clear error on a standby server: `what` writes (events, listeners, queue state).
pub fn require_primary(what: &str) {
    // SAFETY: reads the shared recovery state (a local flag once recovery has ended).
    if unsafe { pg_sys::RecoveryInProgress() } {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("{what} cannot run on a standby server"),
            Some(
                "Herald writes events and queue state: connect to the primary, e.g. with \
                 several hosts and target_session_attrs=read-write."
                    .into(),
            ),
        );
    }
}

/// The current user's oid.
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::GetUserId() }
}

/// Is `member` a superuser or does it have the privileges of `role`?
pub fn has_privs_of_role(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups by oid; an unknown oid simply has no privileges.
    unsafe { pg_sys::superuser_arg(member) || pg_sys::has_privs_of_role(member, role) }
}

/// Name of a role, for `source` and messages.
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: with `noerr` the lookup returns NULL for an unknown role instead of raising;
    // a non-NULL result is a NUL-terminated name palloc'd for us.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            format!("role {}", role.to_u32())
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// An SQL identifier, quoted as needed.
pub fn quote_ident(name: &std::ffi::CStr) -> String {
    // SAFETY: `name` is NUL-terminated; the result is the input or a palloc'd quoted copy.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::quote_identifier(name.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// `schema.name` of an open relation, each part quoted as needed.
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn qualified_name(rel: pg_sys::Relation) -> String {
    // SAFETY: an open relation has a valid `rd_rel` with a NUL-terminated name; its
    // namespace exists while the relation is open and locked.
    unsafe {
        let schema = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
        let name = (*(*rel).rd_rel).relname.data.as_ptr();
        format!(
            "{}.{}",
            quote_ident(std::ffi::CStr::from_ptr(schema)),
            quote_ident(std::ffi::CStr::from_ptr(name))
        )
    }
}
