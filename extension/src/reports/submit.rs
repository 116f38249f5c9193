//! `herald.submit_report`: a report job, in the caller's transaction (a job of the report's
//! type, submitted as `herald.submit_job` would, with the same checks), and its place in a
//! group.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{first, group_key, require_channel, require_group_owner};
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::model::runner;

/// `herald.submit_report(report, params, group_id, output)`: submit a report job; its id. A
/// member of a group (`group_id`, while the group is open) is output with its group; a
/// report without one is output to `output` (a channel) on its own once generated, or only
/// stored when `output` is NULL.
#[pg_extern(volatile, parallel_unsafe)]
fn submit_report(
    report: Option<&str>,
    params: default!(Option<pgrx::JsonB>, "'{}'"),
    group_id: default!(Option<i64>, "NULL"),
    output: default!(Option<&str>, "NULL"),
) -> i64 {
    catalog::require_primary("herald.submit_report()");
    let report = errors::required(report, "report");
    let params = errors::required(params, "params");
    if !params.0.is_object() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "report params must be a JSON object",
            Some("For example '{\"invoice\": 4711}'; the query reads it as $1.".into()),
        );
    }
    let known = catalog::as_owner(|| {
        first::<bool>(
            "SELECT true FROM herald.report WHERE name OPERATOR(pg_catalog.=) $1",
            &[report.into()],
        )
    });
    if known.is_none() {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("report \"{}\" does not exist", errors::shown(report)),
            Some("Define it with herald.report().".into()),
        );
    }
    let member_no = match group_id {
        Some(group) => {
            if output.is_some() {
                raise(
                    Code::ERRCODE_INVALID_PARAMETER_VALUE,
                    "a member of a report group is output with its group",
                    Some("Leave output NULL; the group's channel is used.".into()),
                );
            }
            // Joins and the seal take the group's lock: a member joins an open group only.
            KeySpace::ReportGroup.lock_for_transaction(group_key(group), pg_sys::ExclusiveLock);
            let state = require_group_owner(group);
            if state != "open" {
                raise(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("report group {group} is sealed ({state}): no more members may join"),
                    Some("Create a new group with herald.create_report_group().".into()),
                );
            }
            catalog::as_owner(|| {
                first::<i32>(
                    "UPDATE herald.report_group SET members = members OPERATOR(pg_catalog.+) 1
                      WHERE id OPERATOR(pg_catalog.=) $1 RETURNING members",
                    &[group.into()],
                )
            })
        }
        None => {
            if let Some(channel) = output {
                require_channel(channel);
            }
            None
        }
    };
    let params_datum = params.into_datum().unwrap_or(pg_sys::Datum::from(0));
    let job = runner::submit(&runner::Submit {
        type_name: report,
        params: params_datum,
    });
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.report_job (job, report, group_id, member_no, output)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                job.into(),
                report.into(),
                group_id.into(),
                member_no.into(),
                output.into(),
            ],
        ))
    });
    job
}
