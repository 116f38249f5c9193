//! Report groups and the exactly-once decision.
//!
//! Whoever may make a group ready decides, in its own transaction and under the group's
//! lock (a transaction-level advisory lock, `KeySpace::ReportGroup`): the transaction that
//! ends a member (the generating coordinator's run, an abort, a rescue), just before it
//! commits; the one that seals the group; the one that releases a held group. Under the lock it reads the group and
//! every member's state afresh (READ COMMITTED: each statement sees what committed before
//! the lock was granted), and if the group is sealed and every member has ended it moves
//! the group to `output_claimed` and makes its one output record. When the last two members
//! end at the same moment on two nodes, their transactions serialize on the lock: the
//! second sees the group already claimed. A unique index on (group, channel) backs this
//! up. A failed member never leaves its group waiting: `hold` makes the group `failed`
//! (an alert, nothing output), `output_partial` outputs the rest and lists the failures.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{group_key, output, require_group_owner};
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::core::spi::first;
use crate::core::xact;
use crate::delivery;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// `herald.create_report_group(name, output, on_member_error)`: a new open group whose
/// output goes to channel `output`; its id.
#[pg_extern(volatile, parallel_unsafe)]
fn create_report_group(
    name: Option<&str>,
    output: Option<&str>,
    on_member_error: default!(Option<&str>, "'hold'"),
) -> i64 {
    catalog::require_primary("herald.create_report_group()");
    let name = errors::required(name, "name");
    let output = errors::required(output, "output");
    let on_member_error = errors::required(on_member_error, "on_member_error");
    if !["hold", "output_partial"].contains(&on_member_error) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "unknown on_member_error \"{}\"",
                errors::shown(on_member_error)
            ),
            Some("'hold' (the group fails, nothing is output) or 'output_partial' (output what succeeded).".into()),
        );
    }
    super::require_channel(output);
    let me = catalog::current_user();
    catalog::as_owner(|| {
        first::<i64>(
            "INSERT INTO herald.report_group (name, output, on_member_error, created_by)
             VALUES ($1, $2, $3, $4::pg_catalog.regrole) RETURNING id",
            &[
                name.into(),
                output.into(),
                on_member_error.into(),
                me.into(),
            ],
        )
    })
    .expect("INSERT ... RETURNING returns the id")
}

/// `herald.seal_group(group_id)`: no more members will come. If every member has ended
/// already, the group is output (decided in this transaction); a group without members
/// ends as `empty`. Returns the group's state.
#[pg_extern(volatile, parallel_unsafe)]
fn seal_group(group_id: Option<i64>) -> String {
    catalog::require_primary("herald.seal_group()");
    let id = errors::required(group_id, "group_id");
    lock(id);
    let state = require_group_owner(id);
    if state != "open" {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("report group {id} is already sealed (it is {state})"),
            None,
        );
    }
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "UPDATE herald.report_group SET state = 'sealed', sealed_at = pg_catalog.clock_timestamp()
              WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'open'",
            &[id.into()],
        ))
    });
    decide(id, None, false)
}

/// `herald.release_group(group_id)`: a group held for a failed member (`failed`) is output
/// with what succeeded, the failures listed, as `output_partial` would have. Returns the
/// group's state.
#[pg_extern(volatile, parallel_unsafe)]
fn release_group(group_id: Option<i64>) -> String {
    catalog::require_primary("herald.release_group()");
    let id = errors::required(group_id, "group_id");
    lock(id);
    let state = require_group_owner(id);
    if state != "failed" {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("report group {id} is {state}, not failed: there is nothing to release"),
            Some(
                "Only a group held for a failed member (on_member_error 'hold') is released."
                    .into(),
            ),
        );
    }
    let state = decide(id, None, true);
    if state != "output_claimed" {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("report group {id} cannot be released now (it is {state})"),
            Some("Release a held group once its retried members have ended and one of them succeeded.".into()),
        );
    }
    state
}

/// Take the group's lock until the end of the transaction.
fn lock(id: i64) {
    KeySpace::ReportGroup.lock_for_transaction(group_key(id), pg_sys::ExclusiveLock);
}

/// A member of a group (or a report without one) changed state (the `report` runner's
/// `moved`, in the changing transaction). A report without a group is output at once; a
/// group's decision waits until just before this transaction commits
/// (`core::xact::before_commit`): the transaction has changed its job rows by then and
/// takes no row lock after the group's, so two transactions ending members of the same
/// groups (in any order, several at once for a rescue or an operator) can never deadlock
/// on the group lock and each other's rows.
pub fn member_moved(job: i64, state: &str, node: Option<&str>) {
    let found = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT group_id, output FROM herald.report_job WHERE job OPERATOR(pg_catalog.=) $1",
                None,
                &[job.into()],
            ));
            rows.into_iter().next().map(|r| {
                (
                    r.get::<i64>(1).ok().flatten(),
                    r.get::<String>(2).ok().flatten(),
                )
            })
        })
    });
    match found {
        Some((Some(group), _)) => {
            PENDING.with(|p| {
                p.borrow_mut()
                    .entry(group)
                    .or_insert_with(|| node.map(str::to_string));
            });
            xact::before_commit(decide_pending);
        }
        Some((None, Some(channel))) if matches!(state, "FINISHED" | "COMPLETED") => {
            output::create(None, Some(job), &channel, &[job], &[], node);
        }
        _ => {}
    }
}

thread_local! {
    /// Groups whose members this transaction ended, with the node that ended the first
    /// (decided before it commits, in id order).
    static PENDING: RefCell<BTreeMap<i64, Option<String>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Decide every group this transaction ended members of, in id order (so that
/// transactions with several groups take their locks in one order). Runs just before the
/// commit; also called by the in-database tests, whose transactions never commit.
pub fn decide_pending() {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    for (group, node) in pending {
        lock(group);
        decide(group, node.as_deref(), false);
    }
}

/// Decide, under the group's lock (held by the caller), whether group `id` is ready, and
/// if so make its output record; `release`: output a held group's successful members.
/// Returns the group's state.
fn decide(id: i64, node: Option<&str>, release: bool) -> String {
    // (Read with the latest snapshot, whatever the isolation level: under the lock, what
    // has committed is what counts. A REPEATABLE READ transaction's own snapshot could
    // predate the member that ended last.)
    let group = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute_latest(
                client,
                "SELECT state, output, on_member_error, name FROM herald.report_group
                  WHERE id OPERATOR(pg_catalog.=) $1",
                &[pg_sys::INT8OID],
                &[id.into_datum()],
            );
            (!rows.is_empty()).then(|| {
                (
                    rows.get::<String>(0, 1).unwrap_or_default(),
                    rows.get::<String>(0, 2).unwrap_or_default(),
                    rows.get::<String>(0, 3).unwrap_or_default(),
                    rows.get::<String>(0, 4).unwrap_or_default(),
                )
            })
        })
    });
    let Some((state, channel, on_member_error, name)) = group else {
        return "missing".into();
    };
    if state != "sealed" && state != "failed" {
        return state;
    }
    // Each member's state; one that ended without an artefact (an operator set it
    // COMPLETED by hand) counts as failed: there is nothing of it to output.
    let members: Vec<(i64, String)> = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute_latest(
                client,
                "SELECT r.job,
                        CASE WHEN j.state OPERATOR(pg_catalog.=) ANY ('{FINISHED,COMPLETED}'::pg_catalog.text[])
                              AND r.content IS NULL AND r.path IS NULL
                             THEN 'FINISHERROR' ELSE j.state END
                   FROM herald.report_job r
                   JOIN herald.job j ON j.id OPERATOR(pg_catalog.=) r.job
                  WHERE r.group_id OPERATOR(pg_catalog.=) $1
                  ORDER BY r.member_no",
                &[pg_sys::INT8OID],
                &[id.into_datum()],
            );
            (0..rows.len())
                .filter_map(|i| Some((rows.get::<i64>(i, 1)?, rows.get::<String>(i, 2)?)))
                .collect()
        })
    });
    let running = members
        .iter()
        .any(|(_, s)| s == "CREATED" || s == "STARTED");
    let ok: Vec<i64> = members
        .iter()
        .filter(|(_, s)| s == "FINISHED" || s == "COMPLETED")
        .map(|(j, _)| *j)
        .collect();
    let failed: Vec<i64> = members
        .iter()
        .filter(|(_, s)| matches!(s.as_str(), "STARTERROR" | "FINISHERROR" | "ABORTED"))
        .map(|(j, _)| *j)
        .collect();
    if running {
        // A held group whose failed members were retried waits for them again.
        if state == "failed" && failed.is_empty() {
            set_state(id, "failed", "sealed");
            return "sealed".into();
        }
        return state;
    }
    if members.is_empty() {
        set_state(id, &state, "empty");
        return "empty".into();
    }
    // Nothing succeeded: there is nothing to output, whatever on_member_error says.
    if ok.is_empty() || (!failed.is_empty() && on_member_error == "hold" && !release) {
        if state != "failed" {
            set_state(id, "sealed", "failed");
            alert_held(id, &name, &failed);
        }
        return "failed".into();
    }
    let claimed = catalog::as_owner(|| {
        first::<i64>(
            "UPDATE herald.report_group
                SET state = 'output_claimed', decided_by = $3,
                    decided_at = pg_catalog.clock_timestamp()
              WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) $2
              RETURNING id",
            &[id.into(), state.as_str().into(), node.into()],
        )
    });
    if claimed.is_some() {
        output::create(Some(id), None, &channel, &ok, &failed, node);
    }
    "output_claimed".into()
}

/// One guarded state change of a group.
fn set_state(id: i64, from: &str, to: &str) {
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "UPDATE herald.report_group SET state = $3
              WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) $2",
            &[id.into(), from.into(), to.into()],
        ))
    });
}

/// The alert of a group held for failed members: a JOB event, action GROUP_HELD.
fn alert_held(id: i64, name: &str, failed: &[i64]) {
    errors::warning(
        format!(
            "herald: report group {id} ({name}) is held: members {failed:?} failed; retry them (herald.retry_job) or release the rest (herald.release_group)"
        ),
        None,
    );
    if delivery::has_system_listeners("JOB") {
        let details = pgrx::JsonB(serde_json::json!({
            "group": id, "name": name, "failed": failed,
        }));
        let datum = details.into_datum().unwrap_or(pg_sys::Datum::from(0));
        delivery::publish_system("JOB", "GROUP_HELD", name, datum);
    }
}
