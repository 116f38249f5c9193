//! Output records: `pending → sending → sent | failed | uncertain`, one per group (or per
//! report without a group) and channel, performed by coordinators.
//!
//! A coordinator claims a pending record (`herald.claim_output`): it becomes `sending`,
//! its epoch grows by one, and the claiming connection holds the record's claim (a
//! session-level advisory lock) until it records the end (`herald.record_output`), which
//! counts only with the epoch of that claim. `sending` is committed before the device is
//! called. A record left `sending` without its claim (the node died mid-output) is
//! resolved by `herald.rescue_outputs` per its channel's policy: file and email go back to
//! pending (a file is rewritten under the same name, a mail resent with the same
//! Message-ID), print becomes `uncertain` and fires an alert (a CALLOUT event), and is
//! never printed again by itself: an operator reprints it as a copy
//! (`herald.reprint_output`) or marks it done (`herald.mark_output_done`).
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::output_key;
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::spi::first;
use crate::core::wakeup;
use crate::delivery;

/// Make the output record of a group (`group`) or of a report without one (`job`), and
/// wake the output workers when this transaction commits.
pub fn create(
    group: Option<i64>,
    job: Option<i64>,
    channel: &str,
    members: &[i64],
    failed: &[i64],
    node: Option<&str>,
) {
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.report_output (group_id, job, channel, members, failed, node)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
            &[
                group.into(),
                job.into(),
                channel.into(),
                members.to_vec().into(),
                failed.to_vec().into(),
                node.into(),
            ],
        ))
    });
    wakeup::wake_holders_at_commit(KeySpace::OutputWorkers, 0);
}

/// `herald.claim_output(node, kinds)`: claim the oldest pending output record (of a
/// channel of one of `kinds`; NULL: any) for this connection: `sending`, epoch + 1, held
/// by this connection until `herald.record_output`. No row when none is pending.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn claim_output(
    node: Option<&str>,
    kinds: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(epoch, i64),
        name!(group_id, Option<i64>),
        name!(job, Option<i64>),
        name!(name, String),
        name!(channel, String),
        name!(kind, String),
        name!(target, String),
        name!(options, pgrx::JsonB),
        name!(as_copy, bool),
        name!(members, Vec<i64>),
        name!(failed, Vec<i64>),
        name!(origin, String),
    ),
> {
    catalog::require_primary("herald.claim_output()");
    let node = errors::required(node, "node");
    let kinds: Option<Vec<String>> = kinds.map(|k| k.into_iter().flatten().collect());
    // Candidates in order; the first whose claim lock is free and that is still pending
    // when its row lock is taken is ours.
    let candidates: Vec<i64> = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT o.id FROM herald.report_output o
                   JOIN herald.output_channel c ON c.name OPERATOR(pg_catalog.=) o.channel
                  WHERE o.state OPERATOR(pg_catalog.=) 'pending'
                    AND (o.next_at IS NULL OR o.next_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp())
                    AND ($1::pg_catalog.text[] IS NULL OR c.kind OPERATOR(pg_catalog.=) ANY ($1))
                  ORDER BY o.id LIMIT 16",
                None,
                &[kinds.into()],
            ));
            rows.into_iter()
                .filter_map(|r| r.get::<i64>(1).ok().flatten())
                .collect()
        })
    });
    for id in candidates {
        if !KeySpace::OutputClaim.try_lock_for_session(output_key(id), pg_sys::ExclusiveLock) {
            continue;
        }
        let claimed = catalog::as_owner(|| {
            Spi::connect_mut(|client| {
                let rows = errors::spi(client.update(
                    "UPDATE herald.report_output o
                        SET state = 'sending', epoch = o.epoch OPERATOR(pg_catalog.+) 1,
                            attempts = o.attempts OPERATOR(pg_catalog.+) 1, node = $2,
                            claim_pid = pg_catalog.pg_backend_pid(),
                            sending_at = pg_catalog.clock_timestamp(), next_at = NULL,
                            error = NULL
                       FROM herald.output_channel c
                      WHERE o.id OPERATOR(pg_catalog.=) $1
                        AND o.state OPERATOR(pg_catalog.=) 'pending'
                        AND c.name OPERATOR(pg_catalog.=) o.channel
                      RETURNING o.id, o.epoch, o.group_id, o.job,
                                COALESCE((SELECT g.name FROM herald.report_group g
                                           WHERE g.id OPERATOR(pg_catalog.=) o.group_id),
                                         (SELECT r.report FROM herald.report_job r
                                           WHERE r.job OPERATOR(pg_catalog.=) o.job)),
                                o.channel, c.kind, c.target, c.options, o.as_copy,
                                o.members, o.failed,
                                (SELECT s.system_identifier::pg_catalog.text
                                   FROM pg_catalog.pg_control_system() s)
                                OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.current_database()",
                    None,
                    &[id.into(), node.into()],
                ));
                rows.into_iter().next().map(|r| {
                    (
                        r.get::<i64>(1).ok().flatten().unwrap_or(id),
                        r.get::<i64>(2).ok().flatten().unwrap_or(0),
                        r.get::<i64>(3).ok().flatten(),
                        r.get::<i64>(4).ok().flatten(),
                        r.get::<String>(5).ok().flatten().unwrap_or_default(),
                        r.get::<String>(6).ok().flatten().unwrap_or_default(),
                        r.get::<String>(7).ok().flatten().unwrap_or_default(),
                        r.get::<String>(8).ok().flatten().unwrap_or_default(),
                        r.get::<pgrx::JsonB>(9)
                            .ok()
                            .flatten()
                            .unwrap_or(pgrx::JsonB(serde_json::json!({}))),
                        r.get::<bool>(10).ok().flatten().unwrap_or(false),
                        r.get::<Vec<i64>>(11).ok().flatten().unwrap_or_default(),
                        r.get::<Vec<i64>>(12).ok().flatten().unwrap_or_default(),
                        r.get::<String>(13).ok().flatten().unwrap_or_default(),
                    )
                })
            })
        });
        match claimed {
            Some(row) => return TableIterator::once(row),
            None => {
                KeySpace::OutputClaim.unlock_session(output_key(id), pg_sys::ExclusiveLock);
            }
        }
    }
    TableIterator::new(std::iter::empty())
}

/// `herald.output_artefacts(output)`: the artefacts an output record outputs, in member
/// order: job, report, format, checksum, content (read from the artefact directory for
/// large ones).
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn output_artefacts(
    output: Option<i64>,
) -> TableIterator<
    'static,
    (
        name!(job, i64),
        name!(report, String),
        name!(format, String),
        name!(checksum, String),
        name!(content, Vec<u8>),
    ),
> {
    let id = errors::required(output, "output");
    // The artefacts are the reports' output, readable by whoever performs it: the
    // connection holding the output's claim, or a Herald administrator.
    if !super::is_admin() && claimed_by_me(id).is_none() {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("output {id} is not being sent by this connection"),
            Some("Claim it first with herald.claim_output().".into()),
        );
    }
    let rows: Vec<(i64, String, String, String, Option<Vec<u8>>, Option<String>)> =
        catalog::as_owner(|| {
            Spi::connect(|client| {
                let rows = errors::spi(client.select(
                    "SELECT r.job, r.report, r.format, r.checksum, r.content, r.path
                       FROM herald.report_output o
                       CROSS JOIN LATERAL pg_catalog.unnest(o.members) WITH ORDINALITY AS m (job, n)
                       JOIN herald.report_job r ON r.job OPERATOR(pg_catalog.=) m.job
                      WHERE o.id OPERATOR(pg_catalog.=) $1
                      ORDER BY m.n",
                    None,
                    &[id.into()],
                ));
                rows.into_iter()
                    .map(|r| {
                        (
                            r.get::<i64>(1).ok().flatten().unwrap_or(0),
                            r.get::<String>(2).ok().flatten().unwrap_or_default(),
                            r.get::<String>(3).ok().flatten().unwrap_or_default(),
                            r.get::<String>(4).ok().flatten().unwrap_or_default(),
                            r.get::<Vec<u8>>(5).ok().flatten(),
                            r.get::<String>(6).ok().flatten(),
                        )
                    })
                    .collect()
            })
        });
    let mut out = Vec::with_capacity(rows.len());
    for (job, report, format, checksum, content, path) in rows {
        let content = match (content, path) {
            (Some(c), _) => c,
            (None, Some(path)) => std::fs::read(&path).unwrap_or_else(|e| {
                raise(
                    Code::ERRCODE_IO_ERROR,
                    format!("could not read the artefact of job {job} at {path}: {e}"),
                    None,
                )
            }),
            (None, None) => raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("job {job} has no artefact"),
                None,
            ),
        };
        out.push((job, report, format, checksum, content));
    }
    TableIterator::new(out)
}

/// `herald.record_output(output, epoch, state, checksum, error)`: the end of an output
/// this connection claimed: `sent`, `failed`, or `retry` (the device did not take it for
/// now: pending again after the channel's retry delay, doubled per attempt, or `failed`
/// once its attempts are used up). It counts only if `epoch` is still the record's (a
/// newer claim has a higher one) and the record is `sending`; returns whether it counted.
/// Releases the claim.
#[pg_extern(volatile, parallel_unsafe)]
fn record_output(
    output: Option<i64>,
    epoch: Option<i64>,
    state: Option<&str>,
    checksum: default!(Option<&str>, "NULL"),
    error: default!(Option<&str>, "NULL"),
) -> bool {
    let id = errors::required(output, "output");
    let epoch = errors::required(epoch, "epoch");
    let state = errors::required(state, "state");
    if !matches!(state, "sent" | "failed" | "retry") {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "an output ends 'sent', 'failed' or 'retry', not \"{}\"",
                errors::shown(state)
            ),
            None,
        );
    }
    let counted = catalog::as_owner(|| {
        first::<i64>(
            "UPDATE herald.report_output o
                SET state = CASE WHEN $3 OPERATOR(pg_catalog.<>) 'retry' THEN $3
                                 WHEN o.attempts OPERATOR(pg_catalog.>=) r.max_attempts THEN 'failed'
                                 ELSE 'pending' END,
                    checksum = COALESCE($4, o.checksum),
                    error = CASE WHEN $3 OPERATOR(pg_catalog.=) 'retry'
                                  AND o.attempts OPERATOR(pg_catalog.>=) r.max_attempts
                                 THEN $5 OPERATOR(pg_catalog.||) ' (after '
                                      OPERATOR(pg_catalog.||) o.attempts OPERATOR(pg_catalog.||) ' attempts)'
                                 ELSE $5 END,
                    ended_at = CASE WHEN $3 OPERATOR(pg_catalog.=) 'retry'
                                     AND o.attempts OPERATOR(pg_catalog.<) r.max_attempts
                                    THEN NULL ELSE pg_catalog.clock_timestamp() END,
                    next_at = CASE WHEN $3 OPERATOR(pg_catalog.=) 'retry'
                                    AND o.attempts OPERATOR(pg_catalog.<) r.max_attempts
                                   THEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)
                                        pg_catalog.make_interval(secs => LEAST(3600,
                                            r.retry_seconds OPERATOR(pg_catalog.*)
                                            (2 OPERATOR(pg_catalog.^) (o.attempts OPERATOR(pg_catalog.-) 1)))) END,
                    claim_pid = NULL
               FROM (SELECT COALESCE((c.options OPERATOR(pg_catalog.->>) 'retry_seconds')::pg_catalog.float8, 60) AS retry_seconds,
                            COALESCE((c.options OPERATOR(pg_catalog.->>) 'max_attempts')::pg_catalog.int4, 5) AS max_attempts
                       FROM herald.report_output x
                       LEFT JOIN herald.output_channel c ON c.name OPERATOR(pg_catalog.=) x.channel
                      WHERE x.id OPERATOR(pg_catalog.=) $1) r
              WHERE o.id OPERATOR(pg_catalog.=) $1 AND o.epoch OPERATOR(pg_catalog.=) $2
                AND o.state OPERATOR(pg_catalog.=) 'sending'
              RETURNING o.id",
            &[
                id.into(),
                epoch.into(),
                state.into(),
                checksum.into(),
                error.into(),
            ],
        )
    })
    .is_some();
    KeySpace::OutputClaim.unlock_session(output_key(id), pg_sys::ExclusiveLock);
    counted
}

/// `herald.rescue_outputs()`: resolve output records left `sending` by a claim that is gone
/// (its node died): file and email back to pending, print to `uncertain` with an alert.
/// Returns how many were resolved.
#[pg_extern(volatile, parallel_unsafe)]
fn rescue_outputs() -> i32 {
    catalog::require_primary("herald.rescue_outputs()");
    let sending: Vec<(i64, String, String)> = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT o.id, c.kind, o.channel FROM herald.report_output o
                   JOIN herald.output_channel c ON c.name OPERATOR(pg_catalog.=) o.channel
                  WHERE o.state OPERATOR(pg_catalog.=) 'sending'",
                None,
                &[],
            ));
            rows.into_iter()
                .filter_map(|r| {
                    Some((
                        r.get::<i64>(1).ok().flatten()?,
                        r.get::<String>(2).ok().flatten()?,
                        r.get::<String>(3).ok().flatten()?,
                    ))
                })
                .collect()
        })
    });
    let mut resolved = 0;
    for (id, kind, channel) in sending {
        // A claim held anywhere (this session included) is alive.
        if KeySpace::OutputClaim.held_by_me(output_key(id))
            || !KeySpace::OutputClaim.try_lock_for_transaction(output_key(id))
        {
            continue;
        }
        let to = if kind == "print" {
            "uncertain"
        } else {
            "pending"
        };
        let moved = catalog::as_owner(|| {
            first::<i64>(
                "UPDATE herald.report_output
                    SET state = $2, claim_pid = NULL,
                        error = 'its node stopped during output'
                  WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'sending'
                  RETURNING id",
                &[id.into(), to.into()],
            )
        })
        .is_some();
        if !moved {
            continue;
        }
        resolved += 1;
        if to == "uncertain" {
            errors::warning(
                format!("herald: output {id} to printer channel {channel} is uncertain: its node stopped while printing; reprint it as a copy (herald.reprint_output) or mark it done (herald.mark_output_done)"),
                None,
            );
            if delivery::has_system_listeners("CALLOUT") {
                let details = pgrx::JsonB(serde_json::json!({"output": id, "channel": channel}));
                let datum = details.into_datum().unwrap_or(pg_sys::Datum::from(0));
                delivery::publish_system("CALLOUT", "UNCERTAIN", &channel, datum);
            }
        } else {
            wakeup::wake_holders_at_commit(KeySpace::OutputWorkers, 0);
        }
    }
    resolved
}

/// `herald.reprint_output(output)`: an uncertain (or failed) output is output again, marked
/// as a copy. Herald administrators only.
#[pg_extern(volatile, parallel_unsafe)]
fn reprint_output(output: Option<i64>) {
    operator_resolves(output, "pending", "herald.reprint_output()");
}

/// `herald.mark_output_done(output)`: an uncertain (or failed) output is done (the
/// operator checked the device). Herald administrators only.
#[pg_extern(volatile, parallel_unsafe)]
fn mark_output_done(output: Option<i64>) {
    operator_resolves(output, "sent", "herald.mark_output_done()");
}

fn operator_resolves(output: Option<i64>, to: &str, what: &str) {
    catalog::require_primary(what);
    let id = errors::required(output, "output");
    if !super::is_admin() {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for {what}"),
            Some("Only Herald administrators resolve uncertain output.".into()),
        );
    }
    let done = catalog::as_owner(|| {
        first::<i64>(
            "UPDATE herald.report_output
                SET state = $2, as_copy = ($2 OPERATOR(pg_catalog.=) 'pending'),
                    ended_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'sent'
                                    THEN pg_catalog.clock_timestamp() END,
                    error = CASE WHEN $2 OPERATOR(pg_catalog.=) 'sent'
                                 THEN 'marked done by ' OPERATOR(pg_catalog.||) CURRENT_USER
                                 ELSE error END
              WHERE id OPERATOR(pg_catalog.=) $1
                AND state OPERATOR(pg_catalog.=) ANY ('{uncertain,failed}'::pg_catalog.text[])
              RETURNING id",
            &[id.into(), to.into()],
        )
    });
    if done.is_none() {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("output {id} is not uncertain or failed"),
            Some("See herald.report_output.".into()),
        );
    }
    if to == "pending" {
        wakeup::wake_holders_at_commit(KeySpace::OutputWorkers, 0);
    }
}

/// `herald.await_outputs(timeout_ms)`: sleep until a commit may have made an output due,
/// or the timeout passes; true when woken. The first call makes this connection an output
/// worker for the rest of the session. Cancellable.
#[pg_extern(volatile, parallel_unsafe)]
fn await_outputs(timeout_ms: default!(Option<i32>, "1000")) -> bool {
    let timeout_ms = errors::required(timeout_ms, "timeout_ms").max(0);
    if !KeySpace::OutputWorkers.held_in_mode_by_me(0, pg_sys::ShareLock) {
        KeySpace::OutputWorkers.try_lock_for_session(0, pg_sys::ShareLock);
    }
    wakeup::sleep(timeout_ms)
}

/// `herald.output_callout(output, action, details)`: a CALLOUT event (action `begin` or
/// `end`) for a device call of an output this connection has claimed (each print, each
/// mail); the event's source is the channel.
#[pg_extern(volatile, parallel_unsafe)]
fn output_callout(output: Option<i64>, action: Option<&str>, details: Option<pgrx::JsonB>) {
    let id = errors::required(output, "output");
    let action = errors::required(action, "action");
    let details = errors::required(details, "details");
    if !matches!(action, "begin" | "end") {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown CALLOUT action \"{}\"", errors::shown(action)),
            Some("Actions: 'begin', 'end'.".into()),
        );
    }
    let claimed = claimed_by_me(id);
    let Some((channel, node, group)) = claimed else {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("output {id} is not being sent by this connection"),
            Some("Claim it first with herald.claim_output().".into()),
        );
    };
    if !delivery::has_system_listeners("CALLOUT") {
        return;
    }
    let mut details = details.0;
    if let Some(map) = details.as_object_mut() {
        map.insert("output".into(), serde_json::json!(id));
        map.insert("channel".into(), serde_json::json!(channel));
        map.insert("group".into(), serde_json::json!(group));
        map.insert("node".into(), serde_json::json!(node));
    }
    let datum = pgrx::JsonB(details)
        .into_datum()
        .unwrap_or(pg_sys::Datum::from(0));
    delivery::publish_system("CALLOUT", action, &channel, datum);
}

/// The channel, node and group of output `id` if this connection holds its claim (it is
/// `sending`, claimed by this backend).
fn claimed_by_me(id: i64) -> Option<(String, Option<String>, Option<i64>)> {
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT channel, node, group_id FROM herald.report_output
                  WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'sending'
                    AND claim_pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()",
                None,
                &[id.into()],
            ));
            rows.into_iter().next().map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<String>(2).ok().flatten(),
                    r.get::<i64>(3).ok().flatten(),
                )
            })
        })
    })
}
