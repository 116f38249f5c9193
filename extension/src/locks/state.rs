//! What holds and what waits on a resource, read as a dirty snapshot sees it: committed
//! rows, and rows of transactions still in progress (a grant not yet committed holds; a
//! release not yet committed still holds; a waiting session's request is there while it
//! waits). Rows a transaction in progress has updated show twice (the renewed lease of a
//! holder): they are deduplicated by key, keeping the later lease.
use pgrx::datum::TimestampWithTimeZone;
use std::collections::BTreeMap;

use crate::core::catalog;
use crate::core::lookup;

#[derive(Clone, Debug)]
pub struct Holder {
    pub resource: String,
    pub token: i64,
    pub holder: String,
    pub count: i32,
    /// Raw timestamps (microseconds since 2000), for comparisons.
    pub expires_at: i64,
    pub requested: Option<TimestampWithTimeZone>,
    pub acquired: Option<TimestampWithTimeZone>,
    pub expires: Option<TimestampWithTimeZone>,
    /// The job it was granted to.
    pub job: Option<i64>,
}

impl Holder {
    /// Does this grant still hold at `now` (its lease has not passed)?
    pub fn live(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub resource: String,
    pub ticket: i64,
    pub holder: String,
    pub count: i32,
    /// The waiting session's backend (a session's request).
    pub pid: Option<i32>,
    /// The job it is for (a job's request, committed).
    pub job: Option<i64>,
    pub requested: Option<TimestampWithTimeZone>,
}

/// Holders and requests of one resource (or of all), requests in ticket order.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub holders: Vec<Holder>,
    pub requests: Vec<Request>,
}

impl State {
    /// The counts held at `now`.
    pub fn used(&self, now: i64) -> i64 {
        self.holders
            .iter()
            .filter(|h| h.live(now))
            .map(|h| h.count as i64)
            .sum()
    }

    /// Has job request `w` been granted already? (A grant in progress shows both its new
    /// holder row and the request row it is removing.)
    pub fn granted_to_job(&self, w: &Request) -> bool {
        w.job.is_some()
            && self
                .holders
                .iter()
                .any(|h| h.job == w.job && h.resource == w.resource)
    }

    /// The earliest time a live grant's lease passes.
    pub fn next_expiry(&self, now: i64) -> Option<i64> {
        self.holders
            .iter()
            .filter(|h| h.live(now))
            .map(|h| h.expires_at)
            .min()
    }
}

/// The state of `resource`.
pub fn read(resource: &str) -> State {
    read_some(Some(resource))
}

/// The state of every resource.
pub fn read_all() -> State {
    read_some(None)
}

fn read_some(resource: Option<&str>) -> State {
    let mut holders: BTreeMap<(String, i64), Holder> = BTreeMap::new();
    lookup::each_dirty(
        catalog::relation(c"lock_holder"),
        "resource",
        resource,
        |row| {
            let h = Holder {
                resource: row.get::<String>("resource").unwrap_or_default(),
                token: row.get::<i64>("token").unwrap_or(0),
                holder: row.get::<String>("holder").unwrap_or_default(),
                count: row.get::<i32>("count").unwrap_or(0),
                expires_at: row.get::<i64>("expires_at").unwrap_or(0),
                requested: row.get::<TimestampWithTimeZone>("requested_at"),
                acquired: row.get::<TimestampWithTimeZone>("acquired_at"),
                expires: row.get::<TimestampWithTimeZone>("expires_at"),
                job: row.get::<i64>("job"),
            };
            let key = (h.resource.clone(), h.token);
            match holders.get(&key) {
                Some(seen) if seen.expires_at >= h.expires_at => {}
                _ => {
                    holders.insert(key, h);
                }
            }
        },
    );
    State {
        holders: holders.into_values().collect(),
        requests: read_requests(resource),
    }
}

/// The requests on `resource` (or on all), in ticket order.
pub fn read_requests(resource: Option<&str>) -> Vec<Request> {
    let mut requests: BTreeMap<(i64, String), Request> = BTreeMap::new();
    lookup::each_dirty(
        catalog::relation(c"lock_request"),
        "resource",
        resource,
        |row| {
            let r = Request {
                resource: row.get::<String>("resource").unwrap_or_default(),
                ticket: row.get::<i64>("ticket").unwrap_or(0),
                holder: row.get::<String>("holder").unwrap_or_default(),
                count: row.get::<i32>("count").unwrap_or(0),
                pid: row.get::<i32>("pid"),
                job: row.get::<i64>("job"),
                requested: row.get::<TimestampWithTimeZone>("requested_at"),
            };
            requests.insert((r.ticket, r.resource.clone()), r);
        },
    );
    requests.into_values().collect()
}
