//! Outcome mails (`notify_email` on a job): when a job reaches an outcome its mail becomes
//! due (`transition.sql`); a coordinator with a mail server claims it (`sending`, committed
//! before the server is called), sends it, and records how it went. A mail is sent at most
//! once per outcome: one left `sending` by a coordinator that died is not sent again. A
//! server that cannot be reached, or refuses for now, is tried again with a growing delay;
//! the job itself is never held up by its mail.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::catalog;
use crate::core::errors::{self, raise};

/// Tries before a mail that keeps failing for now is given up.
const MAX_ATTEMPTS: i32 = 20;

/// `herald.claim_job_mail(node)`: the next due outcome mail, now being sent by `node`.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn claim_job_mail(
    node: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(job, i64),
        name!(notify_email, String),
        name!(attempt, i32),
        name!(details, pgrx::JsonB),
    ),
> {
    catalog::require_primary("herald.claim_job_mail()");
    let node = errors::required(node, "node");
    let row = catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            let rows = client.update(include_str!("claim_mail.sql"), Some(1), &[node.into()])?;
            if rows.is_empty() {
                return Ok::<_, pgrx::spi::SpiError>(None);
            }
            let r = rows.first();
            Ok(Some((
                r.get::<i64>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<i32>(3)?.unwrap_or_default(),
                r.get::<pgrx::JsonB>(4)?
                    .unwrap_or(pgrx::JsonB(serde_json::json!({}))),
            )))
        }))
    });
    TableIterator::new(row)
}

/// `herald.record_job_mail(job, node, outcome, error)`: how the mail `node` claimed went:
/// `sent`, `retry` (not sent: tried again after a delay that doubles from 5 s up to 10 min,
/// at most 20 times), or `failed` (refused for good, or perhaps sent: never again). False
/// if that mail is not being sent by `node` (an operator changed it meanwhile).
#[pg_extern(volatile, parallel_unsafe)]
fn record_job_mail(
    job: Option<i64>,
    node: Option<&str>,
    outcome: Option<&str>,
    error: default!(Option<&str>, "NULL"),
) -> bool {
    catalog::require_primary("herald.record_job_mail()");
    let job = errors::required(job, "job");
    let node = errors::required(node, "node");
    let outcome = errors::required(outcome, "outcome");
    if !["sent", "retry", "failed"].contains(&outcome) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown mail outcome \"{}\"", errors::shown(outcome)),
            Some("Outcomes: sent, retry, failed.".into()),
        );
    }
    catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            Ok::<_, pgrx::spi::SpiError>(
                !client
                    .update(
                        "UPDATE herald.job SET
                                mail_state = CASE WHEN $3 OPERATOR(pg_catalog.=) 'retry'
                                                   AND mail_attempts OPERATOR(pg_catalog.>=) $5
                                                  THEN 'failed' ELSE $3 END,
                                mail_error = $4,
                                mail_next_at = CASE WHEN $3 OPERATOR(pg_catalog.=) 'retry' THEN
                                    pg_catalog.now() OPERATOR(pg_catalog.+) LEAST(
                                        '5 seconds'::pg_catalog.interval
                                            OPERATOR(pg_catalog.*) pg_catalog.power(2, LEAST(mail_attempts, 12) OPERATOR(pg_catalog.-) 1),
                                        '10 minutes'::pg_catalog.interval) END
                          WHERE id OPERATOR(pg_catalog.=) $1
                            AND mail_state OPERATOR(pg_catalog.=) 'sending'
                            AND mail_node OPERATOR(pg_catalog.=) $2",
                        None,
                        &[
                            job.into(),
                            node.into(),
                            outcome.into(),
                            error.into(),
                            MAX_ATTEMPTS.into(),
                        ],
                    )?
                    .is_empty(),
            )
        }))
    })
}
