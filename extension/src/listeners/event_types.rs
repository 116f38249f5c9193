//! Event types: who controls a user event type and who may listen to it.
//!
//! A role declares a type with `herald.create_event_type` and becomes its owner; the owner
//! (or a Herald administrator, a role with the privileges of the extension's owner) grants
//! other roles the right to listen with `herald.grant_listen`. `'*'`, every type, belongs to
//! the extension's owner. The listener cache re-checks the grants of every listener's owner
//! (`herald._unlistenable`), so a revoke withholds events from the next statement on.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::model::listener::RESERVED_TYPES;

/// Is the current user a Herald administrator (has the privileges of the extension owner)?
pub fn is_admin() -> bool {
    catalog::has_privs_of_role(catalog::current_user(), catalog::oids().owner)
}

/// Raise unless the current user may listen to every type of `types`.
pub fn require_listenable(types: &[String]) {
    let me = catalog::current_user();
    let refused = catalog::as_owner(|| {
        errors::spi(Spi::get_one_with_args::<String>(
            "SELECT herald._unlistenable($1, $2)",
            &[me.into(), types.to_vec().into()],
        ))
    });
    let Some(t) = refused else {
        return;
    };
    if t == "*" {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied for event type '*': only Herald administrators may listen to every type",
            Some("List the types to listen to, e.g. 'invoice,order'.".into()),
        );
    }
    match owner_of(&t) {
        None => raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied for event type {}: it is not declared",
                quote(&t)
            ),
            Some(format!(
                "Its producer declares it and grants it: SELECT herald.create_event_type({0}); \
                 SELECT herald.grant_listen({0}, {1});",
                quote(&t),
                quote(&catalog::role_name(me))
            )),
        ),
        Some(owner) => raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for event type {}", quote(&t)),
            Some(format!(
                "Its owner ({}) may grant it: SELECT herald.grant_listen({}, {});",
                catalog::role_name(owner),
                quote(&t),
                quote(&catalog::role_name(me))
            )),
        ),
    }
}

fn quote(s: &str) -> String {
    pgrx::spi::quote_literal(errors::shown(s))
}

fn owner_of(name: &str) -> Option<pg_sys::Oid> {
    catalog::as_owner(|| {
        errors::spi(Spi::connect(|client| {
            let rows = client.select(
                "SELECT t.owner::pg_catalog.oid FROM herald.event_type t
                  WHERE t.name OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[name.into()],
            )?;
            match rows.is_empty() {
                true => Ok(None),
                false => rows.first().get::<pg_sys::Oid>(1),
            }
        }))
    })
}

/// A type name as listeners name it: no commas (lists are comma-separated), not reserved.
fn checked_name(name: Option<&str>) -> String {
    let name = errors::required(name, "event type").trim().to_string();
    if name.is_empty() || name.contains(',') {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid event type name {}", quote(&name)),
            Some("An event type name is not empty and has no commas.".into()),
        );
    }
    if RESERVED_TYPES.contains(&name.as_str()) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("event type \"{name}\" is reserved for Herald's own events"),
            None,
        );
    }
    name
}

/// Raise unless the current user controls `name` (owns it, or is an administrator);
/// returns whether the type exists. `'*'` is controlled by administrators only.
fn require_control(name: &str) -> bool {
    let owner = owner_of(name);
    let controls =
        is_admin() || owner.is_some_and(|o| catalog::has_privs_of_role(catalog::current_user(), o));
    if !controls {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of event type {}", quote(name)),
            Some(match owner {
                Some(o) => format!("Its owner is {}.", catalog::role_name(o)),
                None if name == "*" => "'*' belongs to Herald administrators.".into(),
                None => format!(
                    "Declare it first: SELECT herald.create_event_type({});",
                    quote(name)
                ),
            }),
        );
    }
    owner.is_some()
}

/// `herald.create_event_type(name, owner)`: declare a user event type, owned by `owner`
/// (default: the current user, who must have the privileges of `owner`).
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION herald.create_event_type(name text, owner regrole DEFAULT NULL) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'create_event_type_wrapper';
COMMENT ON FUNCTION herald.create_event_type(text, regrole) IS
    'Declare a user event type; its owner decides who may listen to it (herald.grant_listen).';
"#
)]
fn create_event_type(name: Option<&str>, owner: Option<pg_sys::Oid>) {
    catalog::require_primary("herald's event type functions");
    let name = checked_name(name);
    if name == "*" {
        raise(
            Code::ERRCODE_DUPLICATE_OBJECT,
            "event type '*' always exists and belongs to Herald administrators",
            None,
        );
    }
    let me = catalog::current_user();
    let owner = owner.unwrap_or(me);
    if !catalog::has_privs_of_role(me, owner) {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "must be able to act as role {} to declare a type it owns",
                catalog::role_name(owner)
            ),
            None,
        );
    }
    let created = catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            let rows = client.update(
                "INSERT INTO herald.event_type (name, owner)
                 VALUES ($1, $2::pg_catalog.oid::pg_catalog.regrole)
                 ON CONFLICT (name) DO NOTHING RETURNING true",
                None,
                &[name.as_str().into(), owner.into()],
            )?;
            Ok::<_, pgrx::spi::SpiError>(Some(!rows.is_empty()))
        }))
    });
    if created != Some(true) {
        let existing = owner_of(&name).map(catalog::role_name).unwrap_or_default();
        raise(
            Code::ERRCODE_DUPLICATE_OBJECT,
            format!(
                "event type {} already exists (owner {existing})",
                quote(&name)
            ),
            Some(format!(
                "Ask its owner for a grant: SELECT herald.grant_listen({}, {});",
                quote(&name),
                quote(&catalog::role_name(me))
            )),
        );
    }
}

/// `herald.drop_event_type(name)`: forget a type and its grants. Its listeners stay, but
/// their events are withheld until a new grant (and logged as such).
#[pg_extern(volatile, parallel_unsafe)]
fn drop_event_type(name: Option<&str>) {
    catalog::require_primary("herald's event type functions");
    let name = checked_name(name);
    if !require_control(&name) {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("event type {} does not exist", quote(&name)),
            None,
        );
    }
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.event_type t WHERE t.name OPERATOR(pg_catalog.=) $1",
            &[name.as_str().into()],
        ))
    });
}

/// `herald.grant_listen(event_type, grantee)`: let `grantee` (and its members) listen to
/// `event_type`. Only its owner or an administrator may; `'*'` only an administrator.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION herald.grant_listen(event_type text, grantee regrole) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'grant_listen_wrapper';
COMMENT ON FUNCTION herald.grant_listen(text, regrole) IS
    'Let a role (and its members) listen to an event type; ''*'' grants every type.';
"#
)]
fn grant_listen(event_type: Option<&str>, grantee: Option<pg_sys::Oid>) {
    catalog::require_primary("herald's event type functions");
    let name = checked_name(event_type);
    let grantee = errors::required(grantee, "grantee");
    let exists = require_control(&name);
    if !exists && name != "*" {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("event type {} does not exist", quote(&name)),
            Some(format!(
                "Declare it first: SELECT herald.create_event_type({});",
                quote(&name)
            )),
        );
    }
    let owner = catalog::oids().owner;
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.event_type AS t (name, owner, granted_to)
             VALUES ($1, $3::pg_catalog.oid::pg_catalog.regrole,
                     ARRAY[$2::pg_catalog.oid::pg_catalog.regrole])
             ON CONFLICT (name) DO UPDATE
                SET granted_to = t.granted_to OPERATOR(pg_catalog.||) EXCLUDED.granted_to
              WHERE NOT $2::pg_catalog.oid::pg_catalog.regrole OPERATOR(pg_catalog.=) ANY (t.granted_to)",
            &[name.as_str().into(), grantee.into(), owner.into()],
        ))
    });
}

/// `herald.revoke_listen(event_type, grantee)`: take a grant back. The grantee's listeners
/// stay, but their events are withheld from the next statement on.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION herald.revoke_listen(event_type text, grantee regrole) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'revoke_listen_wrapper';
COMMENT ON FUNCTION herald.revoke_listen(text, regrole) IS
    'Take back a role''s right to listen to an event type.';
"#
)]
fn revoke_listen(event_type: Option<&str>, grantee: Option<pg_sys::Oid>) {
    catalog::require_primary("herald's event type functions");
    let name = checked_name(event_type);
    let grantee = errors::required(grantee, "grantee");
    require_control(&name);
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "UPDATE herald.event_type t
                SET granted_to = pg_catalog.array_remove(t.granted_to, $2::pg_catalog.oid::pg_catalog.regrole)
              WHERE t.name OPERATOR(pg_catalog.=) $1
                AND $2::pg_catalog.oid::pg_catalog.regrole OPERATOR(pg_catalog.=) ANY (t.granted_to)",
            &[name.as_str().into(), grantee.into()],
        ))
    });
}
