//! Defining reports and output channels.
//!
//! `herald.report` makes (or replaces) a report and its job type (runner `report`, the
//! same name): the query is checked when it is defined (it is prepared as the definer,
//! with `$1` jsonb), and so is the template. The report's owner, who defines it, is the
//! role its query runs as. Output channels act on the coordinators' hosts (files, printers,
//! mail): only Herald administrators define them.
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use std::ffi::CString;

use super::{is_admin, render};
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::spi::first;

const FORMATS: &[&str] = &["csv", "json", "text", "html", "pdf"];

/// `herald.report(name, query, format, template, statement_timeout, class, submit_roles,
/// max_attempts)`: define or replace a report. Its jobs are submitted with
/// `herald.submit_report`.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::too_many_arguments)]
fn report(
    name: Option<&str>,
    query: Option<&str>,
    format: Option<&str>,
    template: default!(Option<&str>, "NULL"),
    statement_timeout: default!(Option<Interval>, "'5 minutes'"),
    class: default!(Option<&str>, "'default'"),
    submit_roles: default!(Option<Vec<Option<String>>>, "'{}'"),
    max_attempts: default!(Option<i32>, "1"),
) {
    catalog::require_primary("herald.report()");
    let name = errors::required(name, "name").trim().to_string();
    let query = errors::required(query, "query");
    let format = errors::required(format, "format");
    let timeout = errors::required(statement_timeout, "statement_timeout");
    let class = errors::required(class, "class");
    let submit_roles: Vec<String> = errors::required(submit_roles, "submit_roles")
        .into_iter()
        .flatten()
        .collect();
    let max_attempts = errors::required(max_attempts, "max_attempts");
    if name.is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "report name must not be empty",
            None,
        );
    }
    if !FORMATS.contains(&format) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown report format \"{}\"", errors::shown(format)),
            Some("Formats: csv, json, text, html, pdf.".into()),
        );
    }
    if let Some(t) = template {
        if !matches!(format, "text" | "html" | "pdf") {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("a {format} report has no template"),
                Some("Templates render text, html and pdf reports.".into()),
            );
        }
        if let Err(e) = render::check_template(t) {
            raise(
                Code::ERRCODE_SYNTAX_ERROR,
                format!("report \"{}\": template error: {e}", errors::shown(&name)),
                None,
            );
        }
    }
    if timeout.micros() <= 0 && timeout.days() <= 0 && timeout.months() <= 0 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "statement_timeout must be positive",
            None,
        );
    }
    if max_attempts < 1 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "max_attempts must be at least 1",
            None,
        );
    }
    // Trailing semicolons would end the statement the query is wrapped in.
    let query = query.trim().trim_end_matches(';').trim_end().to_string();
    let me = catalog::current_user();
    check_query(&name, &query);
    let admin = is_admin();
    catalog::as_owner(|| {
        let class_known = first::<bool>(
            "SELECT true FROM herald.job_class WHERE name OPERATOR(pg_catalog.=) $1",
            &[class.into()],
        );
        if class_known.is_none() {
            raise(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("job class \"{}\" does not exist", errors::shown(class)),
                Some("See herald.job_class.".into()),
            );
        }
        let existing = Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT runner, owner::pg_catalog.oid FROM herald.job_type
                  WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                None,
                &[name.as_str().into()],
            ));
            rows.into_iter().next().map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<pg_sys::Oid>(2)
                        .ok()
                        .flatten()
                        .unwrap_or(pg_sys::InvalidOid),
                )
            })
        });
        match existing {
            Some((runner, _)) if runner != "report" => raise(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("a job type named \"{}\" exists", errors::shown(&name)),
                Some("A report is a job type of its own name: choose another name.".into()),
            ),
            Some((_, owner)) if !admin && !catalog::has_privs_of_role(me, owner) => raise(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied to replace report \"{}\"",
                    errors::shown(&name)
                ),
                Some("Only its owner or a Herald administrator may replace a report.".into()),
            ),
            Some(_) => {
                errors::spi(Spi::run_with_args(
                    "UPDATE herald.report SET query = $2, format = $3, template = $4,
                            statement_timeout = $5
                      WHERE name OPERATOR(pg_catalog.=) $1",
                    &[
                        name.as_str().into(),
                        query.as_str().into(),
                        format.into(),
                        template.into(),
                        timeout.into(),
                    ],
                ));
                errors::spi(Spi::run_with_args(
                    "UPDATE herald.job_type SET class = $2, submit_roles = $3::pg_catalog.regrole[],
                            max_attempts = $4
                      WHERE name OPERATOR(pg_catalog.=) $1",
                    &[
                        name.as_str().into(),
                        class.into(),
                        submit_roles.clone().into(),
                        max_attempts.into(),
                    ],
                ));
            }
            None => {
                errors::spi(Spi::run_with_args(
                    "INSERT INTO herald.report (name, query, format, template, statement_timeout, owner)
                     VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole)",
                    &[
                        name.as_str().into(),
                        query.as_str().into(),
                        format.into(),
                        template.into(),
                        timeout.into(),
                        me.into(),
                    ],
                ));
                // A report job starts as soon as its submit commits, beside other jobs.
                errors::spi(Spi::run_with_args(
                    "INSERT INTO herald.job_type (name, runner, target, class, startnow, newthread,
                                                  max_attempts, owner, submit_roles)
                     VALUES ($1, 'report', $1, $2, true, true, $3, $4::pg_catalog.regrole,
                             $5::pg_catalog.regrole[])",
                    &[
                        name.as_str().into(),
                        class.into(),
                        max_attempts.into(),
                        me.into(),
                        submit_roles.clone().into(),
                    ],
                ));
            }
        }
    });
}

/// Prepare the query as the definer (its owner), with `$1` jsonb: a query that does not
/// parse, names what the owner cannot see or returns no rows is refused now, not at its
/// first run.
fn check_query(name: &str, query: &str) {
    let Ok(text) = CString::new(query) else {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "a report query must not contain NUL bytes",
            None,
        );
    };
    let returns_rows = Spi::connect(|_client| {
        // SAFETY: SPI is connected; SPI_prepare raises on a query that does not parse or
        // plan, and the plan is freed here.
        unsafe {
            let mut types = [pg_sys::JSONBOID];
            let plan = pg_sys::SPI_prepare(text.as_ptr(), 1, types.as_mut_ptr());
            let rows = !plan.is_null() && pg_sys::SPI_is_cursor_plan(plan);
            if !plan.is_null() {
                pg_sys::SPI_freeplan(plan);
            }
            rows
        }
    });
    if !returns_rows {
        raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "the query of report \"{}\" returns no rows",
                errors::shown(name)
            ),
            Some("A report query is a SELECT; the job's params are $1 (jsonb).".into()),
        );
    }
}

/// `herald.drop_report(name)`: remove a report (and its job type) that has no jobs still
/// to run. Its owner or a Herald administrator may.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_report(name: Option<&str>) {
    catalog::require_primary("herald.drop_report()");
    let name = errors::required(name, "name");
    let me = catalog::current_user();
    let admin = is_admin();
    catalog::as_owner(|| {
        let owner = first::<pg_sys::Oid>(
            "SELECT owner::pg_catalog.oid FROM herald.report
              WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
            &[name.into()],
        );
        let Some(owner) = owner else {
            raise(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("report \"{}\" does not exist", errors::shown(name)),
                None,
            );
        };
        if !admin && !catalog::has_privs_of_role(me, owner) {
            raise(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied to drop report \"{}\"",
                    errors::shown(name)
                ),
                Some("Only its owner or a Herald administrator may drop a report.".into()),
            );
        }
        let pending = first::<i64>(
            "SELECT pg_catalog.count(*) FROM herald.job
              WHERE type OPERATOR(pg_catalog.=) $1
                AND state OPERATOR(pg_catalog.=) ANY ('{CREATED,STARTED,FINISHED}'::pg_catalog.text[])",
            &[name.into()],
        )
        .unwrap_or(0);
        if pending > 0 {
            raise(
                Code::ERRCODE_OBJECT_IN_USE,
                format!(
                    "report \"{}\" has {pending} jobs that have not ended",
                    errors::shown(name)
                ),
                Some("Wait for them, or end them with herald.abort_job().".into()),
            );
        }
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.job_type WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ));
        errors::spi(Spi::run_with_args(
            "DELETE FROM herald.report WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ));
    });
}

/// `herald.output_channel(name, kind, target, options)`: define or replace an output
/// channel. Herald administrators only.
#[pg_extern(volatile, parallel_unsafe)]
fn output_channel(
    name: Option<&str>,
    kind: Option<&str>,
    target: Option<&str>,
    options: default!(Option<pgrx::JsonB>, "'{}'"),
) {
    catalog::require_primary("herald.output_channel()");
    let name = errors::required(name, "name").trim().to_string();
    let kind = errors::required(kind, "kind");
    let target = errors::required(target, "target").trim().to_string();
    let options = errors::required(options, "options");
    if !is_admin() {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to define output channels",
            Some("Output channels write files, print and send mail on the coordinators' hosts: only Herald administrators define them.".into()),
        );
    }
    if name.is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "channel name must not be empty",
            None,
        );
    }
    if !options.0.is_object() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "channel options must be a JSON object",
            None,
        );
    }
    // How often and how soon an output the device did not take for now is tried again.
    for (key, integer) in [("retry_seconds", false), ("max_attempts", true)] {
        let Some(value) = options.0.get(key) else {
            continue;
        };
        let ok = if integer {
            value.as_i64().is_some_and(|n| (1..=1000).contains(&n))
        } else {
            value.as_f64().is_some_and(|n| n > 0.0 && n <= 86400.0)
        };
        if !ok {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("bad channel option {key}: {value}"),
                Some(if integer {
                    "max_attempts is a whole number from 1 to 1000.".into()
                } else {
                    "retry_seconds is a number of seconds above 0, at most 86400.".into()
                }),
            );
        }
    }
    let bad = match kind {
        "file" => (target.starts_with('/') || target.split('/').any(|p| p == ".."))
            .then_some("a file channel's target is a directory under the coordinators' --spool-dir, without '..' or a leading '/'"),
        "print" => target.is_empty().then_some("a print channel's target is a CUPS queue (lp -d) or an ipp:// printer URI"),
        "email" => (!target.split(',').all(|a| a.trim().contains('@')) || target.contains(['\r', '\n']))
            .then_some("an email channel's target is its recipients, comma-separated"),
        _ => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown channel kind \"{}\"", errors::shown(kind)),
            Some("Kinds: file, print, email.".into()),
        ),
    };
    if let Some(why) = bad {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "bad target \"{}\" for channel \"{}\"",
                errors::shown(&target),
                errors::shown(&name)
            ),
            Some(format!("{why}.")),
        );
    }
    let me = catalog::current_user();
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.output_channel (name, kind, target, options, owner)
             VALUES ($1, $2, $3, $4, $5::pg_catalog.regrole)
             ON CONFLICT (name) DO UPDATE
                SET kind = EXCLUDED.kind, target = EXCLUDED.target, options = EXCLUDED.options",
            &[
                name.as_str().into(),
                kind.into(),
                target.as_str().into(),
                options.into(),
                me.into(),
            ],
        ))
    });
}
