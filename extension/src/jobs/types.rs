//! Job types: `herald.create_job_type` and `herald.drop_job_type`.
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::callee::{self, Shape};
use super::first;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::listeners::event_types::is_admin;

/// `herald.create_job_type(name, target, runner, class, hooks..., flags..., retry policy,
/// submit_roles, resources)`: define what jobs of this type run. `resources`
/// (`{"printer": 1}`) are resource locks each job holds while it runs. The target and hooks run as the
/// current user, who owns the type. `command` types (OS commands) are for Herald
/// administrators only.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn create_job_type(
    name: Option<&str>,
    target: Option<&str>,
    runner: default!(Option<&str>, "'sql'"),
    class: default!(Option<&str>, "'default'"),
    after_creation: default!(Option<&str>, "NULL"),
    before_completion: default!(Option<&str>, "NULL"),
    after_completion: default!(Option<&str>, "NULL"),
    compensate: default!(Option<&str>, "NULL"),
    startnow: default!(Option<bool>, "false"),
    autofinish: default!(Option<bool>, "true"),
    newthread: default!(Option<bool>, "false"),
    gobackonerror: default!(Option<bool>, "false"),
    max_attempts: default!(Option<i32>, "1"),
    retry_delay: default!(Option<Interval>, "'10 seconds'"),
    submit_roles: default!(Option<Vec<Option<String>>>, "'{}'"),
    resources: default!(Option<pgrx::JsonB>, "NULL"),
) {
    catalog::require_primary("herald.create_job_type()");
    let resources = super::resources::declared(resources.as_ref());
    let name = errors::required(name, "name").trim().to_string();
    let runner = errors::required(runner, "runner").trim().to_lowercase();
    let class = errors::required(class, "class").trim().to_string();
    let startnow = errors::required(startnow, "startnow");
    let autofinish = errors::required(autofinish, "autofinish");
    let newthread = errors::required(newthread, "newthread");
    let gobackonerror = errors::required(gobackonerror, "gobackonerror");
    let max_attempts = errors::required(max_attempts, "max_attempts");
    let retry_delay = errors::required(retry_delay, "retry_delay");
    let submit_roles: Vec<String> = errors::required(submit_roles, "submit_roles")
        .into_iter()
        .map(|r| r.unwrap_or_else(|| errors::not_null("submit_roles element")))
        .collect();
    if name.is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "job type name must not be empty",
            None,
        );
    }
    if max_attempts < 1 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_attempts must be at least 1, not {max_attempts}"),
            Some("1 runs a job once; 3 runs it up to three times if it fails.".into()),
        );
    }
    if retry_delay.micros() < 0 || retry_delay.days() < 0 || retry_delay.months() < 0 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "retry_delay must not be negative",
            None,
        );
    }
    let target = match runner.as_str() {
        "sql" => {
            let target = errors::required(target, "target");
            let oid = callee::resolve(target, Shape::Target, "target");
            regprocedure_text(oid)
        }
        "command" => {
            if !is_admin() {
                raise(
                    Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    "permission denied to create a job type with runner 'command'",
                    Some(
                        "OS commands run on the coordinators' hosts: only Herald administrators \
                         (roles with the privileges of the extension's owner) may define them."
                            .into(),
                    ),
                );
            }
            let command = target.map(str::trim).unwrap_or("");
            if command.is_empty() {
                raise(
                    Code::ERRCODE_INVALID_PARAMETER_VALUE,
                    "a job type with runner 'command' needs the command to run as its target",
                    Some(
                        "For example target => '/usr/local/bin/export-ledger'; its arguments come \
                         from the job's params: {\"args\": [\"--year\", \"2026\"]}."
                            .into(),
                    ),
                );
            }
            command.to_string()
        }
        "report" => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "job types with runner 'report' are made by herald.report()",
            Some(
                "A report is a job type of its own: herald.report(name, query, format, ...)."
                    .into(),
            ),
        ),
        other => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown job runner \"{}\"", errors::shown(other)),
            Some("Runners: 'sql' (a function or procedure), 'command' (an OS command).".into()),
        ),
    };
    let hook = |value: Option<&str>, shape: Shape, what: &str| -> Option<String> {
        value.map(|v| regprocedure_text(callee::resolve(v, shape, what)))
    };
    let after_creation = hook(after_creation, Shape::Hook, "hook after_creation");
    let before_completion = hook(before_completion, Shape::Hook, "hook before_completion");
    let after_completion = hook(
        after_completion,
        Shape::AfterCompletion,
        "hook after_completion",
    );
    let compensate = hook(compensate, Shape::Hook, "hook compensate");
    let me = catalog::current_user();
    catalog::as_owner(|| {
        let class_exists = errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM herald.job_class WHERE name OPERATOR(pg_catalog.=) $1)",
            &[class.as_str().into()],
        ));
        if class_exists != Some(true) {
            raise(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("job class \"{}\" does not exist", errors::shown(&class)),
                Some(format!("Classes: {}.", class_names())),
            );
        }
        let exists = errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM herald.job_type WHERE name OPERATOR(pg_catalog.=) $1)",
            &[name.as_str().into()],
        ));
        if exists == Some(true) {
            raise(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("job type \"{}\" already exists", errors::shown(&name)),
                Some("Drop it first with herald.drop_job_type(), or choose another name.".into()),
            );
        }
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.job_type (name, runner, target, class, after_creation,
                 before_completion, after_completion, compensate, startnow, autofinish,
                 newthread, gobackonerror, max_attempts, retry_delay, owner, submit_roles,
                 resources)
             VALUES ($1, $2, $3, $4, $5::pg_catalog.regprocedure, $6::pg_catalog.regprocedure,
                     $7::pg_catalog.regprocedure, $8::pg_catalog.regprocedure, $9, $10, $11, $12,
                     $13, $14, $15::pg_catalog.oid::pg_catalog.regrole,
                     $16::pg_catalog.regrole[], $17)",
            &[
                name.as_str().into(),
                runner.as_str().into(),
                target.as_str().into(),
                class.as_str().into(),
                after_creation.into(),
                before_completion.into(),
                after_completion.into(),
                compensate.into(),
                startnow.into(),
                autofinish.into(),
                newthread.into(),
                gobackonerror.into(),
                max_attempts.into(),
                retry_delay.into(),
                me.into(),
                submit_roles.into(),
                resources.map(pgrx::JsonB).into(),
            ],
        ))
    });
}

/// `herald.drop_job_type(name)`: remove a type that has no jobs still to run. Its owner or
/// a Herald administrator may.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_job_type(name: Option<&str>) {
    catalog::require_primary("herald.drop_job_type()");
    let name = errors::required(name, "name");
    let admin = is_admin();
    let me = catalog::current_user();
    catalog::as_owner(|| {
        let found = first::<pg_sys::Oid>(
            "SELECT owner::pg_catalog.oid FROM herald.job_type
              WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
            &[name.into()],
        );
        let runner = first::<String>(
            "SELECT runner FROM herald.job_type WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        );
        if runner.as_deref() == Some("report") {
            raise(
                Code::ERRCODE_WRONG_OBJECT_TYPE,
                format!("job type \"{}\" is a report", errors::shown(name)),
                Some("Drop it with herald.drop_report().".into()),
            );
        }
        let owner = found;
        let Some(owner) = owner else {
            raise(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("job type \"{}\" does not exist", errors::shown(name)),
                None,
            );
        };
        if !admin && !catalog::has_privs_of_role(me, owner) {
            raise(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied to drop job type \"{}\"",
                    errors::shown(name)
                ),
                Some("Only its owner or a Herald administrator may drop a job type.".into()),
            );
        }
        let pending = errors::spi(Spi::get_one_with_args::<i64>(
            "SELECT pg_catalog.count(*) FROM herald.job
              WHERE type OPERATOR(pg_catalog.=) $1
                AND state OPERATOR(pg_catalog.=) ANY ('{CREATED,STARTED,FINISHED}'::pg_catalog.text[])",
            &[name.into()],
        ))
        .unwrap_or(0);
        if pending > 0 {
            raise(
                Code::ERRCODE_OBJECT_IN_USE,
                format!(
                    "job type \"{}\" has {pending} jobs that have not ended",
                    errors::shown(name)
                ),
                Some("Wait for them, or end them with herald.abort_job().".into()),
            );
        }
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.job_type WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ));
    });
}

/// `schema.name(argtypes)`, qualified whatever the search_path, so that it names the same
/// function when read back in another session.
fn regprocedure_text(oid: pg_sys::Oid) -> String {
    catalog::as_owner(|| {
        errors::spi(Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'
                    OPERATOR(pg_catalog.||) pg_catalog.quote_ident(p.proname)
                    OPERATOR(pg_catalog.||) '(' OPERATOR(pg_catalog.||)
                    pg_catalog.oidvectortypes(p.proargtypes) OPERATOR(pg_catalog.||) ')'
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
              WHERE p.oid OPERATOR(pg_catalog.=) $1",
            &[oid.into()],
        ))
    })
    .unwrap_or_default()
}

/// The names of every class, for hints.
pub fn class_names() -> String {
    catalog::as_owner(|| {
        errors::spi(Spi::get_one::<String>(
            "SELECT pg_catalog.string_agg(pg_catalog.quote_literal(name), ', ' ORDER BY name)
               FROM herald.job_class",
        ))
    })
    .unwrap_or_default()
}
