//! What a holder does with its grant: renew its lease, release it, check its fence inside
//! a protected write; and what operators and coordinators do: force a release, expire
//! lapsed leases. Each change is one guarded statement on the holder's row (resource,
//! token, and holder where a holder acts), so a stale token or a second release changes
//! nothing and gets a clear error.
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{event, holder_name, is_admin, wake_waiters_at_commit};
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::core::spi::first;

/// `herald.lock_renew(resource, holder, token, lease)`: extend the lease of a grant that
/// still holds to `lease` from now (NULL: the resource's default). Returns the new end of
/// the lease.
#[pg_extern(volatile, parallel_unsafe)]
fn lock_renew(
    resource: Option<&str>,
    holder: Option<&str>,
    token: Option<i64>,
    lease: default!(Option<Interval>, "NULL"),
) -> TimestampWithTimeZone {
    catalog::require_primary("herald.lock_renew()");
    let resource = errors::required(resource, "resource");
    let holder = holder_name(holder);
    let token = errors::required(token, "token");
    if let Some(lease) = &lease {
        if !lease.is_positive() {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "lease must be positive",
                None,
            );
        }
    }
    super::resource(resource);
    let renewed = catalog::as_owner(|| {
        first::<TimestampWithTimeZone>(
            "UPDATE herald.lock_holder h
                SET expires_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) COALESCE($4, r.default_lease)
               FROM herald.resource r
              WHERE r.name OPERATOR(pg_catalog.=) h.resource
                AND h.resource OPERATOR(pg_catalog.=) $1 AND h.token OPERATOR(pg_catalog.=) $3
                AND h.holder OPERATOR(pg_catalog.=) $2 AND h.job IS NULL
                AND h.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
              RETURNING h.expires_at",
            &[
                resource.into(),
                holder.as_str().into(),
                token.into(),
                lease.into(),
            ],
        )
    });
    renewed.unwrap_or_else(|| not_held(resource, &holder, token, "renew"))
}

/// `herald.lock_release(resource, holder, token)`: give a grant back. Only its holder with
/// its token may; anything else (a stale token, a second release, a lapsed lease) is an
/// error and changes nothing.
#[pg_extern(volatile, parallel_unsafe)]
fn lock_release(resource: Option<&str>, holder: Option<&str>, token: Option<i64>) {
    catalog::require_primary("herald.lock_release()");
    let resource = errors::required(resource, "resource");
    let holder = holder_name(holder);
    let token = errors::required(token, "token");
    super::resource(resource);
    let released = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = plans::execute(
                client,
                "DELETE FROM herald.lock_holder
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $3
                    AND holder OPERATOR(pg_catalog.=) $2 AND job IS NULL
                    AND expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
                  RETURNING count",
                &[pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::INT8OID],
                &[
                    resource.into_datum(),
                    holder.as_str().into_datum(),
                    token.into_datum(),
                ],
            );
            (!rows.is_empty()).then(|| rows.get::<i32>(0, 1).unwrap_or(0))
        })
    });
    let Some(count) = released else {
        not_held(resource, &holder, token, "release")
    };
    wake_waiters_at_commit(resource);
    super::for_jobs::promote(resource);
    event(
        "RELEASED",
        resource,
        serde_json::json!({"holder": holder, "token": token, "count": count}),
    );
}

/// Why `holder` cannot act on `token` of `resource`.
fn not_held(resource: &str, holder: &str, token: i64, what: &str) -> ! {
    let found = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT holder, expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp(),
                        expires_at::pg_catalog.text, job
                   FROM herald.lock_holder
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2",
                None,
                &[resource.into(), token.into()],
            ));
            rows.into_iter().next().map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<bool>(2).ok().flatten().unwrap_or(false),
                    r.get::<String>(3).ok().flatten().unwrap_or_default(),
                    r.get::<i64>(4).ok().flatten(),
                )
            })
        })
    });
    let (message, hint) = match found {
        Some((_, _, _, Some(job))) => (
            format!(
                "cannot {what} lock {token} on resource \"{}\": it is held by job {job}",
                errors::shown(resource)
            ),
            "A job's grants are released when the job ends; an administrator may end one \
             with herald.force_release.",
        ),
        Some((other, _, _, _)) if other != holder => (
            format!(
                "cannot {what} lock {token} on resource \"{}\": it is held by \"{}\", not \"{}\"",
                errors::shown(resource),
                errors::shown(&other),
                errors::shown(holder)
            ),
            "Only the holder a grant was made to may renew or release it.",
        ),
        Some((_, true, expired, _)) => (
            format!(
                "cannot {what} lock {token} on resource \"{}\": its lease expired at {expired}",
                errors::shown(resource)
            ),
            "An expired grant holds nothing: acquire the resource again.",
        ),
        _ => (
            format!(
                "cannot {what} lock {token} on resource \"{}\": no such grant (released, expired or never made)",
                errors::shown(resource)
            ),
            "The token is stale: acquire the resource again.",
        ),
    };
    raise(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        message,
        Some(hint.into()),
    )
}

/// `herald.lock_check(resource, token)`: true while grant `token` holds `resource`. Call
/// it inside the transaction of the write it protects: the grant's row is then locked
/// until that transaction ends, so the grant cannot lapse into someone else's hands
/// before the write commits (an expiry waits for it).
#[pg_extern(volatile, parallel_unsafe)]
fn lock_check(resource: Option<&str>, token: Option<i64>) -> bool {
    let resource = errors::required(resource, "resource");
    let token = errors::required(token, "token");
    catalog::as_owner(|| {
        first::<bool>(
            "SELECT true FROM herald.lock_holder
              WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                AND expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
              FOR KEY SHARE",
            &[resource.into(), token.into()],
        )
    })
    .unwrap_or(false)
}

/// Remove lapsed grant `token` of `resource` (its lease has passed) and fire LOCK/EXPIRED,
/// once: whoever removes the row fires it. False if it was gone or renewed meanwhile.
pub fn expire(resource: &str, token: i64) -> bool {
    let expired = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = errors::spi(client.update(
                "DELETE FROM herald.lock_holder
                  WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                    AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
                  RETURNING holder, count, expires_at::pg_catalog.text",
                None,
                &[resource.into(), token.into()],
            ));
            rows.into_iter().next().map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<i32>(2).ok().flatten().unwrap_or(0),
                    r.get::<String>(3).ok().flatten().unwrap_or_default(),
                )
            })
        })
    });
    let Some((holder, count, expired_at)) = expired else {
        return false;
    };
    wake_waiters_at_commit(resource);
    event(
        "EXPIRED",
        resource,
        serde_json::json!({"holder": holder, "token": token, "count": count, "expired_at": expired_at}),
    );
    true
}

/// `herald.expire_locks()`: remove every lapsed grant (firing LOCK/EXPIRED for each), wake
/// the waiters of its resource and let in the jobs next in line; how many grants lapsed. Coordinators call it every second; the
/// head waiter of a resource also expires the grants it waits for by itself.
#[pg_extern(volatile, parallel_unsafe)]
fn expire_locks() -> i32 {
    catalog::require_primary("herald.expire_locks()");
    let lapsed: Vec<(String, i64)> = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = errors::spi(client.update(
                "SELECT resource, token FROM herald.lock_holder
                  WHERE expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
                  ORDER BY resource, token FOR UPDATE SKIP LOCKED",
                None,
                &[],
            ));
            rows.into_iter()
                .filter_map(|r| {
                    Some((
                        r.get::<String>(1).ok().flatten()?,
                        r.get::<i64>(2).ok().flatten()?,
                    ))
                })
                .collect()
        })
    });
    let expired = lapsed
        .into_iter()
        .filter(|(resource, token)| expire(resource, *token))
        .count() as i32;
    // Jobs next in line are let in (the line may also have moved without a release: a
    // waiting session ahead gave up).
    super::for_jobs::promote_all();
    expired
}

/// `herald.force_release(resource, token, reason)`: an operator takes a grant away from
/// its holder (a holder known dead, say): writes an audit row and fires LOCK/FORCED.
/// Herald administrators only.
#[pg_extern(volatile, parallel_unsafe)]
fn force_release(resource: Option<&str>, token: Option<i64>, reason: Option<&str>) {
    catalog::require_primary("herald.force_release()");
    let resource = errors::required(resource, "resource");
    let token = errors::required(token, "token");
    let reason = errors::required(reason, "reason");
    if !is_admin() {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied for herald.force_release()",
            Some("Only Herald administrators take locks away from their holders.".into()),
        );
    }
    let by = catalog::role_name(catalog::current_user());
    let forced = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = errors::spi(client.update(
                "WITH gone AS (
                     DELETE FROM herald.lock_holder
                      WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
                      RETURNING resource, holder, token, count)
                 INSERT INTO herald.lock_audit (resource, holder, token, count, action, by_role, reason)
                 SELECT resource, holder, token, count, 'FORCED', $4, $3 FROM gone
                 RETURNING holder, count",
                None,
                &[resource.into(), token.into(), reason.into(), by.as_str().into()],
            ));
            rows.into_iter().next().map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<i32>(2).ok().flatten().unwrap_or(0),
                )
            })
        })
    });
    let Some((holder, count)) = forced else {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "resource \"{}\" has no grant {token}",
                errors::shown(resource)
            ),
            Some("See herald.locks.".into()),
        );
    };
    wake_waiters_at_commit(resource);
    super::for_jobs::promote(resource);
    event(
        "FORCED",
        resource,
        serde_json::json!({"holder": holder, "token": token, "count": count, "reason": reason, "by": by}),
    );
}
