//! `herald.lock_acquire` and `herald.lock_acquire_all`.
//!
//! A request is first decided at once: granted if nobody waits on its resources (strict
//! FIFO) and their capacity takes its count. Otherwise, with a `wait`, it queues: it takes
//! a ticket (arrival order), writes its request rows in a subtransaction that lives as long
//! as the wait, is checked for a deadlock, and sleeps on its latch. Whoever frees capacity
//! (a release, an expiry, a raised limit, a waiter ahead that was granted or left) wakes
//! the resource's waiters; each looks again, and the first in line whose request fits is
//! granted. The head of a queue also wakes by itself when the earliest lease on its
//! resource passes, and expires it. When the wait ends the subtransaction is rolled back,
//! so the request rows vanish at once (a cancelled waiter, or one whose backend died, has
//! left the queue with its transaction); a granted request then writes its holder rows in
//! the caller's transaction, still inside the decision.
//!
//! The grant is the caller's: it commits with the caller's transaction (acquire in a
//! transaction of its own, as one takes a lease) and counts as held for everyone from the
//! moment it is made.
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use std::time::{Duration, Instant};

use super::state::{self, State};
use super::{event, graph, holder_name, key, now, resource, Resource};
use crate::core::advisory::{KeySpace, SessionHold};
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::core::spi::first;
use crate::core::subxact;
use crate::core::wakeup;

/// A waiting head of a queue looks again at least this often (a wake-up a subtransaction
/// rollback elsewhere could not send).
const RECHECK: Duration = Duration::from_secs(5);

/// `herald.lock_acquire(resource, holder, count, lease, wait)`: a grant of `count` of
/// `resource` to `holder` for `lease` (NULL: the resource's default lease, 24 hours unless
/// set), waiting up to `wait` in FIFO order. Returns the grant's fencing token, or NULL
/// when the wait ran out.
#[pg_extern(volatile, parallel_unsafe)]
fn lock_acquire(
    resource: Option<&str>,
    holder: Option<&str>,
    count: default!(Option<i32>, "1"),
    lease: default!(Option<Interval>, "NULL"),
    wait: default!(Option<Interval>, "'0'"),
) -> Option<i64> {
    let resource = errors::required(resource, "resource");
    acquire(&[resource.to_string()], holder, count, lease, wait).map(|tokens| tokens[0])
}

/// `herald.lock_acquire_all(resources, holder, count, lease, wait)`: all of `resources`
/// (each with `count`) or none, in one wait. Returns the fencing tokens in the order of
/// `resources`, or NULL when the wait ran out.
#[pg_extern(volatile, parallel_unsafe)]
fn lock_acquire_all(
    resources: Option<Vec<Option<String>>>,
    holder: Option<&str>,
    count: default!(Option<i32>, "1"),
    lease: default!(Option<Interval>, "NULL"),
    wait: default!(Option<Interval>, "'0'"),
) -> Option<Vec<i64>> {
    let resources = errors::required(resources, "resources");
    if resources.is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "resources must not be empty",
            None,
        );
    }
    let names: Vec<String> = resources
        .into_iter()
        .map(|r| r.unwrap_or_else(|| errors::not_null("resources")))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != names.len() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "resources must not name a resource twice",
            None,
        );
    }
    acquire(&names, holder, count, lease, wait)
}

/// One request: resources (in the caller's order) with their counts, for one holder.
pub(super) struct Request {
    pub names: Vec<String>,
    /// One count per name.
    pub counts: Vec<i32>,
    pub holder: String,
    /// The lease, as given (None: each resource's default).
    pub lease: Option<Interval>,
    /// The job the request is for (its grants are released when the job ends).
    pub job: Option<i64>,
}

impl Request {
    fn needs(&self) -> impl Iterator<Item = (&String, i32)> {
        self.names.iter().zip(self.counts.iter().copied())
    }
}

fn acquire(
    names: &[String],
    holder: Option<&str>,
    count: Option<i32>,
    lease: Option<Interval>,
    wait: Option<Interval>,
) -> Option<Vec<i64>> {
    catalog::require_primary("herald.lock_acquire()");
    let holder = holder_name(holder);
    let count = errors::required(count, "count");
    let wait = errors::required(wait, "wait");
    if let Some(lease) = &lease {
        if !lease.is_positive() {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "lease must be positive",
                Some("NULL takes the resource's default lease.".into()),
            );
        }
    }
    if wait.is_negative() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "wait must not be negative",
            Some("'0' does not wait: NULL is returned at once if the lock is not free.".into()),
        );
    }
    for name in names {
        check_count(&resource(name), count);
    }
    let request = Request {
        names: names.to_vec(),
        counts: vec![count; names.len()],
        holder,
        lease,
        job: None,
    };
    let requested_at = now();
    // At once, if nobody waits and it fits.
    {
        let decision = decide(&request.names);
        if grantable(&request, None) {
            let tokens = grant(&request, requested_at);
            drop(decision);
            return Some(tokens);
        }
    }
    let wait_micros = wait.as_micros().clamp(0, i64::MAX as i128) as u64;
    if wait_micros == 0 {
        return None;
    }
    let deadline = Instant::now() + Duration::from_micros(wait_micros);
    // This backend is a waiter of each resource (releases find it by this lock), and when
    // it stops waiting, however, the others look again.
    let waiting: Vec<WaiterHold> = request
        .names
        .iter()
        .map(|n| WaiterHold {
            key: key(n),
            _hold: KeySpace::LockWaiters.hold_for_session(key(n), pg_sys::ShareLock),
        })
        .collect();
    waiting_events(&request);
    let granted: Option<Vec<SessionHold>> = subxact::rolled_back(|| {
        // Arrival: the ticket is taken and the request written inside the decision, so a
        // request with a lower ticket is always there for a later decision to see.
        let ticket = {
            let _decision = decide(&request.names);
            enqueue(&request, requested_at)
        };
        {
            let _graph = KeySpace::LockGraph.hold_for_session(0, pg_sys::ExclusiveLock);
            graph::refuse_cycle(&request.holder, &request.names);
        }
        loop {
            let decision = decide(&request.names);
            if grantable(&request, Some(ticket)) {
                // The decision stays held while the request rows vanish and the grant is
                // written.
                return Some(decision);
            }
            let now = super::now();
            let next_expiry = request
                .names
                .iter()
                .filter_map(|n| state::read(n).next_expiry(now))
                .min();
            drop(decision);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut sleep = left.min(RECHECK);
            if let Some(at) = next_expiry {
                let until = Duration::from_micros((at - now).max(0) as u64 + 1000);
                sleep = sleep.min(until);
            }
            wakeup::sleep(sleep.as_millis().clamp(1, i32::MAX as u128) as i32);
        }
    });
    let tokens = granted.map(|decision| {
        let tokens = grant(&request, requested_at);
        drop(decision);
        tokens
    });
    drop(waiting);
    tokens
}

/// While held, this backend waits on a resource; when dropped (the wait ended, however),
/// the resource's other waiters are woken to look again: this one left the queue, or was
/// granted and the next in line may fit beside it.
struct WaiterHold {
    key: i32,
    _hold: SessionHold,
}

impl Drop for WaiterHold {
    fn drop(&mut self) {
        wakeup::wake_holders_now(KeySpace::LockWaiters, self.key);
    }
}

/// LOCK/WAITING for each resource of `request`.
pub(super) fn waiting_events(request: &Request) {
    for (name, count) in request.needs() {
        event(
            "WAITING",
            name,
            serde_json::json!({"holder": request.holder, "count": count, "job": request.job}),
        );
    }
}

/// Raise unless `count` is a count `r` may grant.
pub(super) fn check_count(r: &Resource, count: i32) {
    if let Some(why) = count_refusal(r, count) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            why,
            (count >= 1 && r.shared).then(|| "Such a request could never be granted.".into()),
        );
    }
}

/// Why `r` can never grant `count`, if it cannot.
pub(super) fn count_refusal(r: &Resource, count: i32) -> Option<String> {
    if count < 1 {
        return Some(format!("count must be at least 1, not {count}"));
    }
    if !r.shared && count != 1 {
        return Some(format!(
            "resource \"{}\" is exclusive: count must be 1, not {count}",
            errors::shown(&r.name)
        ));
    }
    if r.shared && r.limit > 0 && count > r.limit {
        return Some(format!(
            "count {count} is more than the lock_limit {} of resource \"{}\"",
            r.limit,
            errors::shown(&r.name)
        ));
    }
    None
}

/// Take the decision locks of `names`, in name order (so two deciders of overlapping sets
/// never wait for each other in a circle).
pub(super) fn decide(names: &[String]) -> Vec<SessionHold> {
    decision_keys(names)
        .into_iter()
        .map(|k| KeySpace::LockDecision.hold_for_session(k, pg_sys::ExclusiveLock))
        .collect()
}

/// The decision lock keys of `names`, in the order they are taken.
fn decision_keys(names: &[String]) -> Vec<i32> {
    let mut keys: Vec<i32> = names.iter().map(|n| key(n)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// [`decide`] without waiting: None if another decision on one of `names` is in progress
/// (the locks taken meanwhile are given back).
pub(super) fn try_decide(names: &[String]) -> Option<Vec<SessionHold>> {
    decision_keys(names)
        .into_iter()
        .map(|k| KeySpace::LockDecision.try_hold_for_session(k, pg_sys::ExclusiveLock))
        .collect()
}

/// May `request` (with `ticket` once it queues) be granted now? No request may be ahead
/// of it on any of its resources, and each must take its count.
pub(super) fn grantable(request: &Request, ticket: Option<i64>) -> bool {
    let now = now();
    request.needs().all(|(name, count)| {
        // (The limit as it reads now: an operator may have changed it.)
        let Some(r) = super::find_resource(name) else {
            return false;
        };
        let state: State = state::read(name);
        let ahead = state
            .requests
            .iter()
            .any(|w| ticket.is_none_or(|t| w.ticket < t) && !state.granted_to_job(w));
        !ahead && r.limit > 0 && state.used(now) + count as i64 <= r.limit as i64
    })
}

/// Write the grant of `request` in the current transaction: remove the lapsed grants of its
/// resources first (each fires EXPIRED once; a protected write in progress under one is
/// waited for), then one holder row per resource with a new fencing token. Its tokens in
/// the request's order.
pub(super) fn grant(request: &Request, requested_at: i64) -> Vec<i64> {
    let now = now();
    let mut tokens = Vec::with_capacity(request.names.len());
    for (name, count) in request.needs() {
        for lapsed in state::read(name).holders.iter().filter(|h| !h.live(now)) {
            super::holders::expire(name, lapsed.token);
        }
        let row = catalog::as_owner(|| {
            Spi::connect_mut(|client| {
                let rows = plans::execute(
                    client,
                    "INSERT INTO herald.lock_holder
                            (resource, token, holder, count, acquired_at, expires_at, requested_at, job)
                     SELECT r.name, pg_catalog.nextval('herald.lock_token_seq'), $2, $3,
                            pg_catalog.clock_timestamp(),
                            pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) COALESCE($4, r.default_lease),
                            $5, $6
                       FROM herald.resource r WHERE r.name OPERATOR(pg_catalog.=) $1
                     RETURNING token, expires_at::pg_catalog.text",
                    &[
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::INT4OID,
                        pg_sys::INTERVALOID,
                        pg_sys::TIMESTAMPTZOID,
                        pg_sys::INT8OID,
                    ],
                    &[
                        name.as_str().into_datum(),
                        request.holder.as_str().into_datum(),
                        count.into_datum(),
                        request.lease.into_datum(),
                        timestamp(requested_at).into_datum(),
                        request.job.into_datum(),
                    ],
                );
                (!rows.is_empty()).then(|| {
                    (
                        rows.get::<i64>(0, 1).unwrap_or(0),
                        rows.get::<String>(0, 2).unwrap_or_default(),
                    )
                })
            })
        });
        let Some((token, expires)) = row else {
            raise(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("resource \"{}\" was dropped", errors::shown(name)),
                None,
            );
        };
        // A grant that is rolled back frees its capacity again: the waiters look then.
        wakeup::wake_holders_at_end(KeySpace::LockWaiters, key(name));
        event(
            "ACQUIRED",
            name,
            serde_json::json!({
                "holder": request.holder, "count": count, "token": token, "job": request.job,
                "expires_at": expires, "waited_ms": (now - requested_at).max(0) / 1000,
            }),
        );
        tokens.push(token);
    }
    tokens
}

/// The request rows of a queued request (a session's in the wait's subtransaction, a
/// job's in the caller's transaction), under a new ticket; the ticket.
pub(super) fn enqueue(request: &Request, requested_at: i64) -> i64 {
    let ticket = catalog::as_owner(|| {
        first::<i64>("SELECT pg_catalog.nextval('herald.lock_ticket_seq')", &[])
    })
    .unwrap_or(0);
    for (name, count) in request.needs() {
        catalog::as_owner(|| {
            errors::spi(Spi::run_with_args(
                "INSERT INTO herald.lock_request (resource, ticket, holder, count, requested_at, pid, job)
                 VALUES ($1, $2, $3, $4, $5,
                         CASE WHEN $6 IS NULL THEN pg_catalog.pg_backend_pid() END, $6)",
                &[
                    name.as_str().into(),
                    ticket.into(),
                    request.holder.as_str().into(),
                    count.into(),
                    timestamp(requested_at).into(),
                    request.job.into(),
                ],
            ))
        });
    }
    ticket
}

/// A raw timestamp (microseconds since 2000-01-01) as a timestamptz.
fn timestamp(at: i64) -> TimestampWithTimeZone {
    // A raw value in range (it was read from the clock).
    TimestampWithTimeZone::try_from(pg_sys::TimestampTz::from(at)).unwrap_or_else(|_| {
        raise(
            Code::ERRCODE_DATETIME_FIELD_OVERFLOW,
            "timestamp out of range",
            None,
        )
    })
}
