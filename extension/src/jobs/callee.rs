//! The user functions a job runs: its target (runner `sql`) and its type's hooks. Each is
//! checked when the type is made (it exists, has the right arguments, and the type's owner
//! may execute it) and called as the type's owner, in a security-restricted operation
//! (contract section 9): never as the submitter, the coordinator or the extension owner.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use std::cell::RefCell;
use std::collections::HashMap;

use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::invalidation::{self, Scope};
use crate::core::plans;

/// The arguments a function must take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A job target: `(params jsonb)`, a function or a procedure.
    Target,
    /// `after_creation`, `before_completion`, `compensate`: `(job bigint, params jsonb)`.
    Hook,
    /// `after_completion`: `(job bigint, params jsonb, commit boolean)`.
    AfterCompletion,
}

impl Shape {
    fn args(self) -> &'static str {
        match self {
            Shape::Target => "jsonb",
            Shape::Hook => "bigint, jsonb",
            Shape::AfterCompletion => "bigint, jsonb, boolean",
        }
    }

    fn example(self, name: &str) -> String {
        match self {
            Shape::Target => format!(
                "CREATE FUNCTION {name}(params jsonb) RETURNS jsonb LANGUAGE sql AS $$ ... $$; \
                 (a procedure taking (params jsonb) works too)"
            ),
            Shape::Hook => format!(
                "CREATE FUNCTION {name}(job bigint, params jsonb) RETURNS void LANGUAGE sql AS $$ ... $$;"
            ),
            Shape::AfterCompletion => format!(
                "CREATE FUNCTION {name}(job bigint, params jsonb, commit boolean) RETURNS void \
                 LANGUAGE sql AS $$ ... $$;"
            ),
        }
    }
}

/// Resolve `name` (`fn`, `schema.fn` or `fn(argtypes)`) as a function of `shape` that the
/// current user may execute; `what` names it in errors ("target", "hook after_creation").
/// Returns its oid.
pub fn resolve(name: &str, shape: Shape, what: &str) -> pg_sys::Oid {
    let name = name.trim();
    if name.is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} must not be empty"),
            None,
        );
    }
    let base = name.split('(').next().unwrap_or(name).trim().to_string();
    let hint_text = format!(
        "The {what} is a function taking ({}), for example: {}",
        shape.args(),
        shape.example(&errors::shown(&base))
    );
    let hint = Some(hint_text.clone());
    let with_args = if name.contains('(') {
        name.to_string()
    } else {
        format!("{name}({})", shape.args())
    };
    let found = errors::spi(Spi::connect(|client| {
        let rows = client.select(
            "SELECT p.oid, p.prokind::pg_catalog.text,
                    pg_catalog.oidvectortypes(p.proargtypes) OPERATOR(pg_catalog.=) $2,
                    pg_catalog.has_function_privilege(p.oid, 'EXECUTE'), p.proretset
               FROM pg_catalog.pg_proc p
              WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure($1)",
            Some(1),
            &[with_args.as_str().into(), pg_args(shape).into()],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>(None);
        }
        let row = rows.first();
        Ok(Some((
            row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<bool>(3)?.unwrap_or(false),
            row.get::<bool>(4)?.unwrap_or(false),
            row.get::<bool>(5)?.unwrap_or(false),
        )))
    }));
    let shown = errors::shown(&base);
    let Some((oid, kind, args_ok, may_execute, returns_set)) = found else {
        let others: Option<String> = errors::spi(Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.string_agg(p.oid::pg_catalog.regprocedure::pg_catalog.text, ', ')
               FROM pg_catalog.pg_proc p
              WHERE p.proname OPERATOR(pg_catalog.=)
                    (pg_catalog.parse_ident($1))[pg_catalog.array_length(pg_catalog.parse_ident($1), 1)]
                AND (pg_catalog.array_length(pg_catalog.parse_ident($1), 1) OPERATOR(pg_catalog.>) 1
                     OR pg_catalog.pg_function_is_visible(p.oid))",
            &[base.as_str().into()],
        ));
        match others {
            Some(list) => raise(
                Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
                format!(
                    "{what} function {shown} must take ({}), but it takes other arguments",
                    shape.args()
                ),
                Some(format!("Found: {list}. {hint_text}")),
            ),
            None => raise(
                Code::ERRCODE_UNDEFINED_FUNCTION,
                format!("{what} function {shown} does not exist"),
                hint,
            ),
        }
    };
    let procedure_ok = shape == Shape::Target && kind == "p";
    if kind != "f" && !procedure_ok {
        raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{what} {shown} must be a plain function"),
            hint,
        );
    }
    if returns_set {
        raise(
            Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
            format!("{what} function {shown} must not return a set"),
            hint,
        );
    }
    if !args_ok {
        raise(
            Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
            format!("{what} function {shown} must take ({})", shape.args()),
            hint,
        );
    }
    if !may_execute {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for {what} function {shown}"),
            Some("The owner of a job type must be allowed to EXECUTE its functions.".into()),
        );
    }
    oid
}

/// The argument list as `oidvectortypes` prints it.
fn pg_args(shape: Shape) -> &'static str {
    match shape {
        Shape::Target => "jsonb",
        Shape::Hook => "bigint, jsonb",
        Shape::AfterCompletion => "bigint, jsonb, boolean",
    }
}

/// How to call a function: its qualified name, whether it is a procedure, and whether it
/// returns nothing.
#[derive(Clone)]
struct Call {
    name: String,
    procedure: bool,
    void: bool,
}

fn describe(oid: pg_sys::Oid) -> Call {
    let row = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(
                client,
                "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'
                    OPERATOR(pg_catalog.||) pg_catalog.quote_ident(p.proname),
                    p.prokind OPERATOR(pg_catalog.=) 'p',
                    p.prorettype OPERATOR(pg_catalog.=) 'pg_catalog.void'::pg_catalog.regtype
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
              WHERE p.oid OPERATOR(pg_catalog.=) $1",
                &[pg_sys::OIDOID],
                &[oid.into_datum()],
            );
            if rows.is_empty() {
                return (None, None, None);
            }
            (
                rows.get::<String>(0, 1),
                rows.get::<bool>(0, 2),
                rows.get::<bool>(0, 3),
            )
        })
    });
    match row {
        (Some(name), Some(procedure), Some(void)) => Call {
            name,
            procedure,
            void,
        },
        _ => raise(
            Code::ERRCODE_UNDEFINED_FUNCTION,
            format!("function with oid {} no longer exists", oid.to_u32()),
            Some("Recreate the job type with herald.create_job_type().".into()),
        ),
    }
}

thread_local! {
    /// Job targets this backend has resolved: the target as a job type names it
    /// (`schema.fn(jsonb)`) and how to call it. Forgotten whenever a function changes
    /// (created, dropped, replaced, granted) or Herald's storage does, so that a target is
    /// resolved again by its name, as a job type's target always is.
    static TARGETS: RefCell<HashMap<String, Call>> = RefCell::new(HashMap::new());
}

/// Hook the target cache into invalidations (from `_PG_init`).
pub fn init() {
    invalidation::register(|scope| {
        if matches!(scope, Scope::All | Scope::Privileges) {
            // (try_borrow_mut: should an invalidation arrive while a lookup fills the
            // cache, the entry is kept until the next one; it was resolved after the
            // change.)
            TARGETS.with(|t| {
                if let Ok(mut t) = t.try_borrow_mut() {
                    t.clear();
                }
            });
        }
    });
}

/// How to call the job target named `target` (`schema.fn(jsonb)`); raises if it no
/// longer exists.
fn resolve_target(target: &str) -> Call {
    if let Some(call) = TARGETS.with(|t| t.borrow().get(target).cloned()) {
        return call;
    }
    let oid = catalog::as_owner(|| {
        Spi::connect(|client| {
            plans::execute(
                client,
                "SELECT pg_catalog.to_regprocedure($1)::pg_catalog.oid",
                &[pg_sys::TEXTOID],
                &[target.into_datum()],
            )
            .get::<pg_sys::Oid>(0, 1)
        })
    });
    let Some(oid) = oid else {
        raise(
            Code::ERRCODE_UNDEFINED_FUNCTION,
            format!("target function {} no longer exists", errors::shown(target)),
            Some("Recreate the function, or the job type with herald.create_job_type().".into()),
        );
    };
    let call = describe(oid);
    TARGETS.with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.insert(target.to_string(), call.clone());
        }
    });
    call
}

/// Call a job's target (as its type names it) with its params as `owner`; returns what it
/// returned, as jsonb (NULL for a procedure or a void function). Errors propagate.
pub fn call_target(target: &str, owner: pg_sys::Oid, params: pgrx::JsonB) -> Option<pgrx::JsonB> {
    let call = resolve_target(target);

    catalog::as_restricted(owner, || {
        if call.procedure {
            errors_pass(Spi::run_with_args(
                &format!("CALL {}($1)", call.name),
                &[params.into()],
            ));
            None
        } else if call.void {
            errors_pass(Spi::run_with_args(
                &format!("SELECT {}($1)", call.name),
                &[params.into()],
            ));
            None
        } else {
            // A kept plan per function and owner (a plan may inline a SQL function, whose
            // EXECUTE privilege is checked when it is planned, so the plan is the owner's).
            let sql = format!(
                "SELECT pg_catalog.to_jsonb({}($1)) /* owner {} */",
                call.name,
                owner.to_u32()
            );
            Spi::connect(|client| {
                plans::execute_built(client, &sql, &[pg_sys::JSONBOID], &[params.into_datum()])
                    .get::<pgrx::JsonB>(0, 1)
            })
        }
    })
}

/// Call a hook `(job, params [, commit])` as `owner`. Errors propagate.
pub fn call_hook(
    hook: pg_sys::Oid,
    owner: pg_sys::Oid,
    job: i64,
    params: impl IntoDatum,
    commit: Option<bool>,
) {
    let call = describe(hook);
    catalog::as_restricted(owner, || match commit {
        Some(commit) => errors_pass(Spi::run_with_args(
            &format!("SELECT {}($1, $2, $3)", call.name),
            &[job.into(), params.into(), commit.into()],
        )),
        None => errors_pass(Spi::run_with_args(
            &format!("SELECT {}($1, $2)", call.name),
            &[job.into(), params.into()],
        )),
    })
}

/// User code's own errors arrive as raised PostgreSQL errors (not SpiError); an SpiError
/// here is Herald's bug, reported as such.
fn errors_pass<T>(result: Result<T, pgrx::spi::SpiError>) -> T {
    errors::spi(result)
}
