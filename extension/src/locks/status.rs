//! `herald.lock_status()`: every holder and every waiting request, as deciders see them
//! (waiting sessions' requests live in their own open transactions: see [`super::state`]).
//! The view `herald.locks` joins it to the resources.
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

use super::{now, state};

#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn lock_status() -> TableIterator<
    'static,
    (
        name!(resource, String),
        name!(role, String),
        name!(holder, String),
        name!(count, i32),
        name!(token, Option<i64>),
        name!(position, Option<i32>),
        name!(requested_at, Option<TimestampWithTimeZone>),
        name!(acquired_at, Option<TimestampWithTimeZone>),
        name!(expires_at, Option<TimestampWithTimeZone>),
        name!(expired, bool),
        name!(pid, Option<i32>),
    ),
> {
    let all = state::read_all();
    let now = now();
    let mut rows = Vec::new();
    for h in &all.holders {
        rows.push((
            h.resource.clone(),
            "holder".to_string(),
            h.holder.clone(),
            h.count,
            Some(h.token),
            None,
            h.requested,
            h.acquired,
            h.expires,
            !h.live(now),
            None,
        ));
    }
    let mut position: std::collections::BTreeMap<&str, i32> = Default::default();
    for w in &all.requests {
        let n = position.entry(w.resource.as_str()).or_insert(0);
        *n += 1;
        rows.push((
            w.resource.clone(),
            "waiter".to_string(),
            w.holder.clone(),
            w.count,
            None,
            Some(*n),
            w.requested,
            None,
            None,
            false,
            w.pid,
        ));
    }
    TableIterator::new(rows)
}
