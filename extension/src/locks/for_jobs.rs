//! Resource locks for jobs that declare resources (the locks side of `model::gate`).
//!
//! A job has no session that could wait, so its request is a committed row of
//! `herald.lock_request` (`job` set, `pid` NULL), in line with every other request under a
//! ticket taken when a claim first found the job due. Whatever frees capacity on a resource
//! (a release, a job's end, an expiry, a raised limit: [`promote`]) grants the requests of
//! jobs that are next in line, in the freeing transaction, and tells the jobs area, which
//! makes the job due again; coordinators also promote every second (`expire_locks`), for
//! a line that moved without a release (a waiting session ahead gave up). A job's grants
//! are holder rows with `job` set; the job gives them back, and leaves every line, in
//! whatever state it ends.
use pgrx::prelude::*;

use super::acquire::{self, Request};
use super::{event, find_resource, is_admin, now, state, wake_waiters_at_commit};
use crate::core::catalog;
use crate::core::errors;
use crate::core::spi::first;
use crate::model::gate::{self, Granted, Need, Taken};

/// Register the gate's locks side (from `_PG_init`).
pub fn init() {
    gate::register_locks(gate::Locks {
        check,
        take,
        give_back,
    });
}

/// The holder name of a job's grants.
pub fn holder_of(job: i64) -> String {
    format!("job {job}")
}

/// Why `need` can never be granted, if it cannot.
fn refusal(need: &Need) -> Option<String> {
    let Some(r) = find_resource(&need.resource) else {
        return Some(format!(
            "resource \"{}\" does not exist",
            errors::shown(&need.resource)
        ));
    };
    acquire::count_refusal(&r, need.count)
}

/// Raise unless `needs` name resources that exist and take their counts, and the caller
/// may take locks (a job's grants block everyone else as a caller's would: declaring them
/// needs what `herald.lock_acquire` needs).
fn check(needs: &[Need]) {
    if !is_admin() && !may_acquire() {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to declare resources",
            Some(
                "A job holds its resources as any holder would: whoever declares them needs \
                 EXECUTE on herald.lock_acquire (sql/examples/grants.sql)."
                    .into(),
            ),
        );
    }
    for need in needs {
        if let Some(why) = refusal(need) {
            errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                why,
                Some(
                    "resources is a JSON object of resource names and counts, for example \
                     '{\"printer\": 1}'; see herald.resource()."
                        .into(),
                ),
            );
        }
    }
}

/// May the current user call `herald.lock_acquire`?
fn may_acquire() -> bool {
    first::<bool>(
        "SELECT pg_catalog.has_function_privilege(
             'herald.lock_acquire(text, text, integer, interval, interval)', 'EXECUTE')",
        &[],
    )
    .unwrap_or(false)
}

fn request_of(job: i64, needs: &[Need]) -> Request {
    Request {
        names: needs.iter().map(|n| n.resource.clone()).collect(),
        counts: needs.iter().map(|n| n.count).collect(),
        holder: holder_of(job),
        lease: None,
        job: Some(job),
    }
}

/// Take `needs` for `job` (a claim, before it starts the job): granted at once if nobody
/// waits ahead and they fit; granted if its request is in line and next; otherwise in line.
fn take(job: i64, needs: &[Need]) -> Taken {
    if let Some(why) = needs.iter().find_map(refusal) {
        return Taken::Refused(why);
    }
    let request = request_of(job, needs);
    // (Never waited for on a claim's path: a decision in progress may itself wait for a
    // transaction that is about to decide here.)
    let Some(_decision) = acquire::try_decide(&request.names) else {
        return Taken::Busy;
    };
    let now = now();
    let states: Vec<state::State> = request.names.iter().map(|n| state::read(n)).collect();
    let holds = |s: &state::State| s.holders.iter().any(|h| h.job == Some(job) && h.live(now));
    if states.iter().all(holds) {
        return Taken::Held;
    }
    if states.iter().any(holds) {
        // Part of a grant lapsed: give the rest back and ask for all of it again.
        delete_holders(job);
    }
    let queued = states
        .iter()
        .flat_map(|s| s.requests.iter())
        .find(|w| w.job == Some(job))
        .map(|w| (w.ticket, w.requested));
    match queued {
        Some((ticket, requested)) => {
            if !acquire::grantable(&request, Some(ticket)) {
                return Taken::Queued;
            }
            delete_requests(job);
            let at = requested.map(pg_sys::TimestampTz::from).unwrap_or(now);
            acquire::grant(&request, at);
            Taken::Held
        }
        None if acquire::grantable(&request, None) => {
            acquire::grant(&request, now);
            Taken::Held
        }
        None => {
            acquire::enqueue(&request, now);
            acquire::waiting_events(&request);
            Taken::Queued
        }
    }
}

/// Give back every grant of `job` and take its requests out of line; then let the next in
/// line in.
fn give_back(job: i64) {
    let released = delete_holders(job);
    let left = delete_requests(job);
    let mut touched: Vec<String> = Vec::new();
    for (resource, token, count) in released {
        wake_waiters_at_commit(&resource);
        event(
            "RELEASED",
            &resource,
            serde_json::json!({"holder": holder_of(job), "token": token, "count": count, "job": job}),
        );
        touched.push(resource);
    }
    for resource in left {
        wake_waiters_at_commit(&resource);
        touched.push(resource);
    }
    touched.sort();
    touched.dedup();
    for resource in &touched {
        promote(resource);
    }
}

/// Delete the grants of `job`: (resource, token, count) of each.
fn delete_holders(job: i64) -> Vec<(String, i64, i32)> {
    catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = errors::spi(client.update(
                "DELETE FROM herald.lock_holder WHERE job OPERATOR(pg_catalog.=) $1
                 RETURNING resource, token, count",
                None,
                &[job.into()],
            ));
            rows.into_iter()
                .filter_map(|r| {
                    Some((
                        r.get::<String>(1).ok().flatten()?,
                        r.get::<i64>(2).ok().flatten()?,
                        r.get::<i32>(3).ok().flatten()?,
                    ))
                })
                .collect()
        })
    })
}

/// Take the requests of `job` out of line: the resources they were for.
fn delete_requests(job: i64) -> Vec<String> {
    catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = errors::spi(client.update(
                "DELETE FROM herald.lock_request WHERE job OPERATOR(pg_catalog.=) $1
                 RETURNING resource",
                None,
                &[job.into()],
            ));
            rows.into_iter()
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect()
        })
    })
}

/// The whole request of `job` in line: its needs and when it was made.
fn queued_request(job: i64) -> Option<(Vec<Need>, i64)> {
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT resource, count, requested_at FROM herald.lock_request
                  WHERE job OPERATOR(pg_catalog.=) $1 ORDER BY resource",
                None,
                &[job.into()],
            ));
            let mut needs = Vec::new();
            let mut at = None;
            for r in rows {
                needs.push(Need {
                    resource: r.get::<String>(1).ok().flatten()?,
                    count: r.get::<i32>(2).ok().flatten()?,
                });
                at = at.or(r
                    .get::<pgrx::datum::TimestampWithTimeZone>(3)
                    .ok()
                    .flatten()
                    .map(pg_sys::TimestampTz::from));
            }
            (!needs.is_empty()).then(|| (needs, at.unwrap_or_else(now)))
        })
    })
}

/// Grant the jobs next in line on `resource` whose requests fit now, in ticket order: stop
/// at the first request that does not fit, at a waiting session (it is woken and takes its
/// grant itself) and at a job another transaction is busy with (the next promotion serves
/// it).
///
/// A promotion never waits for another decision (it would wait in a transaction that may
/// hold what that decision waits for): it leaves the line to the next promotion, as it
/// does in a transaction with a snapshot of its own (the job rows it must lock may have
/// changed since); coordinators promote every second.
pub fn promote(resource: &str) {
    // SAFETY: reads a backend global.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return;
    }
    // (Most resources have no job in line: one look at the requests says so.)
    if !state::read_requests(Some(resource))
        .iter()
        .any(|w| w.job.is_some())
    {
        return;
    }
    loop {
        let st = state::read(resource);
        let Some(head) = st.requests.iter().find(|w| !st.granted_to_job(w)) else {
            return;
        };
        let (Some(job), ticket) = (head.job, head.ticket) else {
            return;
        };
        let Some((needs, at)) = queued_request(job) else {
            return;
        };
        let request = request_of(job, &needs);
        let Some(_decision) = acquire::try_decide(&request.names) else {
            return;
        };
        // A request that can never be granted as it was made (a limit lowered below its
        // count, a resource dropped or made exclusive) leaves the line, and the job is
        // made due: its claim then ends it with the reason.
        if needs.iter().any(|n| refusal(n).is_some()) {
            match gate::granted(job, at) {
                Granted::Busy => return,
                Granted::Take | Granted::Gone => {
                    for r in delete_requests(job) {
                        wake_waiters_at_commit(&r);
                    }
                    continue;
                }
            }
        }
        // (Looked at again inside the decision: another promotion may have granted it.)
        let now = now();
        let granted_already = request.names.iter().any(|n| {
            state::read(n)
                .holders
                .iter()
                .any(|h| h.job == Some(job) && h.live(now))
        });
        if granted_already || !acquire::grantable(&request, Some(ticket)) {
            return;
        }
        match gate::granted(job, at) {
            Granted::Take => {
                delete_requests(job);
                acquire::grant(&request, at);
            }
            Granted::Gone => {
                for r in delete_requests(job) {
                    wake_waiters_at_commit(&r);
                }
            }
            Granted::Busy => return,
        }
    }
}

/// Promote on every resource a job waits for (coordinators, every second).
pub fn promote_all() -> usize {
    let all = state::read_all();
    let mut resources: Vec<&str> = all
        .requests
        .iter()
        .filter(|w| w.job.is_some())
        .map(|w| w.resource.as_str())
        .collect();
    resources.sort_unstable();
    resources.dedup();
    for r in &resources {
        promote(r);
    }
    resources.len()
}
