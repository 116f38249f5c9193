//! `herald.submit_job`: a job is a row made in the caller's transaction. If that
//! transaction rolls back, nothing is left: no row, no event, no wake-up (wake-ups are sent
//! at commit only).
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{callee, class_key, store, wake_managers_at_commit};
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::datum::JsonbDatum;
use crate::core::errors::{self, raise};
use crate::core::lookup;
use crate::listeners::event_types::is_admin;
use crate::model::runner;

/// What submitting needs of a job type.
struct TypeFacts {
    class: String,
    owner: pg_sys::Oid,
    after_creation: Option<pg_sys::Oid>,
    startnow: bool,
    may_submit: bool,
    limited: bool,
    resources: Option<pgrx::JsonB>,
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_herald_submit_job() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `herald.submit_job(type, params, concurrency_key, notify_email, run_after, resources)`:
/// queue a job; returns its id. `resources` (`{"printer": 1}`) adds resource locks to its
/// type's, or changes their counts. Runs the type's `after_creation` hook in this transaction (its error
/// rolls the submit back).
///
/// A submit is on the application's write path, so (like `herald.emit`) it is a plain
/// C-convention function: `params` goes from the argument to the row untouched (no parse
/// into serde values and back).
///
/// # Safety
/// Called by the function manager, with a call frame for the SQL signature below.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn herald_submit_job(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fmgr passes a valid call frame holding `nargs` arguments.
    let args = unsafe { (*fcinfo).args.as_slice((*fcinfo).nargs as usize) };
    let arg = |i: usize| args.get(i).filter(|a| !a.isnull).map(|a| a.value);
    // SAFETY: arguments 0, 2 and 3 are declared `text`.
    let text = |i: usize| arg(i).and_then(|d| unsafe { String::from_datum(d, false) });
    catalog::require_primary("herald.submit_job()");
    let type_name = errors::required(text(0), "type");
    let params = JsonbDatum(errors::required(arg(1), "params"));
    let concurrency_key = text(2);
    let notify_email = text(3);
    // SAFETY: argument 4 is declared `timestamptz`, a by-value datum.
    let run_after = arg(4).and_then(|d| unsafe { TimestampWithTimeZone::from_datum(d, false) });
    // SAFETY: argument 5 is declared `jsonb`.
    let resources = arg(5).and_then(|d| unsafe { pgrx::JsonB::from_datum(d, false) });
    // SAFETY: argument 1 is declared `jsonb`; the detoasted copy (if one is made) is read
    // for its root header only.
    let is_object = unsafe {
        let jsonb = pg_sys::pg_detoast_datum(params.0.cast_mut_ptr()) as *const pg_sys::Jsonb;
        (*jsonb).root.header & pg_sys::JB_FOBJECT != 0
    };
    if !is_object {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "job params must be a JSON object",
            Some("For example '{\"company\": 10, \"period\": \"2026-11\"}'.".into()),
        );
    }
    pg_sys::Datum::from(submit_job(
        &type_name,
        params,
        concurrency_key.as_deref(),
        notify_email.as_deref(),
        run_after,
        resources.as_ref(),
    ))
}

extension_sql!(
    r#"
CREATE FUNCTION herald.submit_job(
    "type" text,
    params jsonb DEFAULT '{}',
    concurrency_key text DEFAULT NULL,
    notify_email text DEFAULT NULL,
    run_after timestamptz DEFAULT NULL,
    resources jsonb DEFAULT NULL
) RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'herald_submit_job';
"#,
    name = "submit_job",
    requires = ["jobs_schema"],
);

/// Register how other areas submit jobs (from `_PG_init`): as `herald.submit_job` with
/// only a type and params.
pub fn init() {
    runner::register_submit(|job| {
        submit_job(
            job.type_name,
            JsonbDatum(job.params),
            None,
            None,
            None,
            None,
        )
    });
}

fn submit_job(
    type_name: &str,
    params: JsonbDatum,
    concurrency_key: Option<&str>,
    notify_email: Option<&str>,
    run_after: Option<TimestampWithTimeZone>,
    resources: Option<&pgrx::JsonB>,
) -> i64 {
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
    let Some(facts) = type_facts(type_name, me) else {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("job type \"{}\" does not exist", errors::shown(type_name)),
            Some("Create it with herald.create_job_type(); see herald.job_type.".into()),
        );
    };
    if !facts.may_submit && !is_admin() {
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
        // commit wakes the managers. The lock is taken before the job gets its id.
        KeySpace::JobClass.lock_for_transaction(class_key(&facts.class), pg_sys::ShareLock);
    }
    let resources = super::resources::of_job(facts.resources.as_ref(), resources)
        .map(|r| JsonbDatum(r.into_datum().unwrap_or(pg_sys::Datum::from(0))));
    let id = store::insert(&store::NewJob {
        type_name,
        class: &facts.class,
        params,
        concurrency_key,
        notify_email,
        submitted_by: me,
        run_after,
        resources,
    });
    if let Some(hook) = facts.after_creation {
        callee::call_hook(hook, facts.owner, id, params, None);
    }
    if facts.startnow || facts.limited {
        wake_managers_at_commit();
    }
    id
}

/// What submitting needs of job type `name`, read with the latest snapshot straight
/// through the keys of `herald.job_type` and `herald.job_class_setting` (a submit is on the
/// application's write path; a query per submit cost as much as the rest of it). None if
/// there is no such type.
fn type_facts(name: &str, me: pg_sys::Oid) -> Option<TypeFacts> {
    let job_type = catalog::relation(c"job_type");
    let mut facts = lookup::by_text_key(job_type, "name", name, |row| {
        let owner = row
            .get::<pg_sys::Oid>("owner")
            .unwrap_or(pg_sys::InvalidOid);
        let submit_roles = row
            .get::<Vec<pg_sys::Oid>>("submit_roles")
            .unwrap_or_default();
        TypeFacts {
            class: row.get::<String>("class").unwrap_or_default(),
            owner,
            after_creation: row.get::<pg_sys::Oid>("after_creation"),
            startnow: row.get::<bool>("startnow").unwrap_or(false),
            may_submit: catalog::has_privs_of_role(me, owner)
                || submit_roles
                    .iter()
                    .any(|r| catalog::has_privs_of_role(me, *r)),
            limited: false,
            resources: row.get::<pgrx::JsonB>("resources"),
        }
    })?;
    // (A built-in class without a setting row is unlimited.)
    let setting = catalog::relation(c"job_class_setting");
    facts.limited = lookup::by_text_key(setting, "name", &facts.class, |row| {
        row.get::<i32>("max_running").is_some()
    })
    .unwrap_or(false);
    Some(facts)
}
