//! `herald.submit_job`: a job is a row made in the caller's transaction. If that
//! transaction rolls back, nothing is left: no row, no event, no wake-up (wake-ups are sent
//! at commit only).
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{callee, class_key, wake_managers_at_commit};
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::listeners::event_types::is_admin;

/// What submitting needs of a job type.
struct TypeFacts {
    class: String,
    owner: pg_sys::Oid,
    after_creation: Option<pg_sys::Oid>,
    startnow: bool,
    may_submit: bool,
    limited: bool,
}

/// `herald.submit_job(type, params, concurrency_key, notify_email, run_after)`: queue a job;
/// returns its id. Runs the type's `after_creation` hook in this transaction (its error
/// rolls the submit back). (Its SQL is written out so that the first parameter is called
/// `type`, as the contract names it, for `herald.submit_job(type => ...)`.)
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION "submit_job"(
    "type" TEXT,
    "params" jsonb DEFAULT '{}',
    "concurrency_key" TEXT DEFAULT NULL,
    "notify_email" TEXT DEFAULT NULL,
    "run_after" timestamp with time zone DEFAULT NULL
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#
)]
fn submit_job(
    r#type: Option<&str>,
    params: default!(Option<pgrx::JsonB>, "'{}'"),
    concurrency_key: default!(Option<&str>, "NULL"),
    notify_email: default!(Option<&str>, "NULL"),
    run_after: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> i64 {
    catalog::require_primary("herald.submit_job()");
    let type_name = errors::required(r#type, "type");
    let params = errors::required(params, "params");
    if !params.0.is_object() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "job params must be a JSON object",
            Some("For example '{\"company\": 10, \"period\": \"2026-11\"}'.".into()),
        );
    }
    if let Some(email) = notify_email {
        if !email.contains('@') || email.trim() != email || email.contains(['\r', '\n']) {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "notify_email \"{}\" is not a mail address",
                    errors::shown(email)
                ),
                None,
            );
        }
    }
    let me = catalog::current_user();
    let admin = is_admin();
    // The common case in one statement: the type exists, the caller may submit, and its
    // class is unlimited (a limited class's lock must be taken before the job gets its
    // id). Otherwise nothing is inserted, and the checks below say why or take the lock.
    if let Some((id, facts)) = insert_job(
        type_name,
        &params,
        concurrency_key,
        notify_email,
        run_after,
        me,
        admin,
        false,
    ) {
        return created(id, &facts, params);
    }
    let facts = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(
                client,
                "SELECT t.class, t.owner::pg_catalog.oid, t.after_creation::pg_catalog.oid,
                        t.startnow,
                        pg_catalog.pg_has_role($2, t.owner::pg_catalog.oid, 'USAGE')
                          OR EXISTS (SELECT 1 FROM pg_catalog.unnest(t.submit_roles) r
                                      WHERE pg_catalog.pg_has_role($2, r::pg_catalog.oid, 'USAGE')),
                        -- (a built-in class without a setting row is unlimited)
                        EXISTS (SELECT 1 FROM herald.job_class_setting c
                                 WHERE c.name OPERATOR(pg_catalog.=) t.class
                                   AND c.max_running IS NOT NULL)
                   FROM herald.job_type t
                  WHERE t.name OPERATOR(pg_catalog.=) $1",
                &[pg_sys::TEXTOID, pg_sys::OIDOID],
                &[type_name.into_datum(), me.into_datum()],
            );
            if rows.is_empty() {
                return None;
            }
            Some(TypeFacts {
                class: rows.get::<String>(0, 1).unwrap_or_default(),
                owner: rows.get::<pg_sys::Oid>(0, 2).unwrap_or(pg_sys::InvalidOid),
                after_creation: rows.get::<pg_sys::Oid>(0, 3),
                startnow: rows.get::<bool>(0, 4).unwrap_or(false),
                may_submit: rows.get::<bool>(0, 5).unwrap_or(false),
                limited: rows.get::<bool>(0, 6).unwrap_or(false),
            })
        })
    });
    let Some(facts) = facts else {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("job type \"{}\" does not exist", errors::shown(type_name)),
            Some("Create it with herald.create_job_type(); see herald.job_type.".into()),
        );
    };
    if !admin && !facts.may_submit {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to submit jobs of type \"{}\"",
                errors::shown(type_name)
            ),
            Some(
                "The type's owner, members of its submit_roles and Herald administrators may \
                 submit its jobs."
                    .into(),
            ),
        );
    }
    if facts.limited {
        // A claim of this class waits for no submitter but skips the class while one is
        // in flight, so that jobs start in id order (see lifecycle::claim_next_job); the
        // commit wakes the managers.
        KeySpace::JobClass.lock_for_transaction(class_key(&facts.class), pg_sys::ShareLock);
    }
    // (Its lock taken, the class may have a job inserted; the checks were made above.)
    let Some((id, _)) = insert_job(
        type_name,
        &params,
        concurrency_key,
        notify_email,
        run_after,
        me,
        admin,
        true,
    ) else {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "job type \"{}\" was dropped meanwhile",
                errors::shown(type_name)
            ),
            None,
        );
    };
    created(id, &facts, params)
}

/// A job was inserted: its type's `after_creation` hook, and the managers' wake-up at
/// commit if it may start now.
fn created(id: i64, facts: &TypeFacts, params: pgrx::JsonB) -> i64 {
    if let Some(hook) = facts.after_creation {
        callee::call_hook(hook, facts.owner, id, params, None);
    }
    if facts.startnow || facts.limited {
        wake_managers_at_commit();
    }
    id
}

/// Insert the job if its type exists, `me` may submit it (or is an administrator) and its
/// class is unlimited (or `limited_ok`: the caller holds the class lock), in one
/// statement (`submit_job.sql`); its id and what the rest of the submit needs of the
/// type. None: nothing was inserted.
#[allow(clippy::too_many_arguments)]
fn insert_job(
    type_name: &str,
    params: &pgrx::JsonB,
    concurrency_key: Option<&str>,
    notify_email: Option<&str>,
    run_after: Option<TimestampWithTimeZone>,
    me: pg_sys::Oid,
    admin: bool,
    limited_ok: bool,
) -> Option<(i64, TypeFacts)> {
    use pg_sys::{BOOLOID, JSONBOID, OIDOID, TEXTOID, TIMESTAMPTZOID};
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(
                client,
                include_str!("submit_job.sql"),
                &[
                    TEXTOID,
                    JSONBOID,
                    TEXTOID,
                    TEXTOID,
                    OIDOID,
                    TIMESTAMPTZOID,
                    BOOLOID,
                    BOOLOID,
                ],
                &[
                    type_name.into_datum(),
                    pgrx::JsonB(params.0.clone()).into_datum(),
                    concurrency_key.into_datum(),
                    notify_email.into_datum(),
                    me.into_datum(),
                    run_after.into_datum(),
                    admin.into_datum(),
                    limited_ok.into_datum(),
                ],
            );
            if rows.is_empty() {
                return None;
            }
            Some((
                rows.get::<i64>(0, 1)?,
                TypeFacts {
                    class: rows.get::<String>(0, 2).unwrap_or_default(),
                    owner: rows.get::<pg_sys::Oid>(0, 3).unwrap_or(pg_sys::InvalidOid),
                    after_creation: rows.get::<pg_sys::Oid>(0, 4),
                    startnow: rows.get::<bool>(0, 5).unwrap_or(false),
                    may_submit: true,
                    limited: false,
                },
            ))
        })
    })
}
