//! Defining resources. Herald administrators define them; operators change `lock_limit`
//! with plain SQL (`UPDATE herald.resource SET lock_limit = 0 WHERE name = ...` pauses
//! one), and the trigger below wakes its waiters when that commits.
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{is_admin, wake_waiters_at_commit};
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::spi::first;

/// `herald.resource(name, kind, lock_limit, default_lease)`: define or change a resource.
/// `kind` is `exclusive` (one holder; `lock_limit` 1, or 0 to pause) or `shared` (holders
/// whose counts add up to at most `lock_limit`).
#[pg_extern(volatile, parallel_unsafe)]
fn resource(
    name: Option<&str>,
    kind: default!(Option<&str>, "'exclusive'"),
    lock_limit: default!(Option<i32>, "NULL"),
    default_lease: default!(Option<Interval>, "'24 hours'"),
) {
    catalog::require_primary("herald.resource()");
    let name = errors::required(name, "name").trim().to_string();
    let kind = errors::required(kind, "kind");
    let lease = errors::required(default_lease, "default_lease");
    if !is_admin() {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to define resources",
            Some("Herald administrators define resources; operators may change lock_limit (UPDATE herald.resource).".into()),
        );
    }
    if name.is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "resource name must not be empty",
            None,
        );
    }
    let limit = match (kind, lock_limit) {
        ("exclusive", None) => 1,
        ("exclusive", Some(l)) if (0..=1).contains(&l) => l,
        ("exclusive", Some(l)) => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("an exclusive resource has lock_limit 1 (or 0 to pause it), not {l}"),
            Some("For several holders at once, use kind 'shared'.".into()),
        ),
        ("shared", None) => raise(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "a shared resource needs a lock_limit",
            Some("lock_limit: how many (counted) holders it takes at once.".into()),
        ),
        ("shared", Some(l)) if l >= 0 => l,
        ("shared", Some(l)) => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("lock_limit must not be negative, not {l}"),
            Some("0 pauses the resource.".into()),
        ),
        (other, _) => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown resource kind \"{}\"", errors::shown(other)),
            Some("Kinds: exclusive, shared.".into()),
        ),
    };
    let positive = catalog::as_owner(|| {
        first::<bool>(
            "SELECT $1::pg_catalog.interval OPERATOR(pg_catalog.>) '0'",
            &[lease.into()],
        )
    });
    if positive != Some(true) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "default_lease must be positive",
            Some(
                "A holder that neither renews nor releases loses the lock after its lease.".into(),
            ),
        );
    }
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.resource (name, kind, lock_limit, default_lease)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE
                SET kind = EXCLUDED.kind, lock_limit = EXCLUDED.lock_limit,
                    default_lease = EXCLUDED.default_lease",
            &[
                name.as_str().into(),
                kind.into(),
                limit.into(),
                lease.into(),
            ],
        ))
    });
    wake_waiters_at_commit(&name);
}

/// `herald.drop_resource(name)`: remove a resource nobody holds. Herald administrators only.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_resource(name: Option<&str>) {
    catalog::require_primary("herald.drop_resource()");
    let name = errors::required(name, "name");
    if !is_admin() {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to drop resources",
            None,
        );
    }
    super::resource(name);
    let held = super::state::read(name);
    if !held.holders.is_empty() || !held.requests.is_empty() {
        raise(
            Code::ERRCODE_OBJECT_IN_USE,
            format!(
                "resource \"{}\" is held or awaited ({} holders, {} waiting)",
                errors::shown(name),
                held.holders.len(),
                held.requests.len()
            ),
            Some("Release its holders first (herald.force_release).".into()),
        );
    }
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.resource WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ))
    });
}

/// `herald._wake_lock_waiters(resource)`: used by the trigger on `herald.resource` (see
/// sql/locks/triggers.sql): a changed limit may let waiters in, so they look again when the
/// change commits.
#[pg_extern(volatile, parallel_unsafe)]
fn _wake_lock_waiters(resource: &str) {
    wake_waiters_at_commit(resource);
    super::for_jobs::promote(resource);
}
