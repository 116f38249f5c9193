//! Where jobs that declare resources meet the resource locks, without either area
//! importing the other: the locks area registers how a job's resources are checked, taken
//! and given back; the jobs area registers what happens to a job when a request it left in
//! line is granted. Both are registered when the library loads (`_PG_init`). No SQL runs
//! here.
use std::cell::Cell;

/// One resource a job needs, with its count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub resource: String,
    pub count: i32,
}

/// What a claim's request for a job's resources came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The job holds them all now (granted in the caller's transaction, or before).
    Held,
    /// They are not all free, or others wait ahead: the job's request waits in line
    /// (committed with the caller's transaction) until a release grants it, and then
    /// [`Granted`] is called.
    Queued,
    /// Another decision on one of them is in progress: ask again later (the job stays due).
    Busy,
    /// They can never be granted as asked (a resource was dropped, a count is more than a
    /// limit): why.
    Refused(String),
}

/// How a job whose request was next in line is told, in the granting transaction, before
/// the grant is written (or before a request that can never be granted is dropped: the
/// job's next claim then finds out why).
#[derive(Debug, PartialEq, Eq)]
pub enum Granted {
    /// The job still waits for it and is due now: write the grant.
    Take,
    /// The job is someone else's business right now (its row is locked by a transaction in
    /// progress): leave the request in line and ask again later.
    Busy,
    /// The job has ended or is gone: drop its request.
    Gone,
}

/// What the locks area offers jobs.
#[derive(Clone, Copy)]
pub struct Locks {
    /// Raise unless each resource exists and takes the count (when a type or job is made).
    pub check: fn(&[Need]),
    /// Take all of a job's resources at once, or queue for them (see [`Taken`]).
    pub take: fn(job: i64, needs: &[Need]) -> Taken,
    /// Give back everything a job holds, and leave every line it waits in.
    pub give_back: fn(job: i64),
}

/// How the jobs area hears of a grant (see [`granted`]): the job, and since when its
/// request waited (microseconds since 2000, as timestamps are stored).
pub type GrantedFn = fn(job: i64, since: i64) -> Granted;

thread_local! {
    static LOCKS: Cell<Option<Locks>> = const { Cell::new(None) };
    static GRANTED: Cell<Option<GrantedFn>> = const { Cell::new(None) };
}

/// Register the locks area's side (from `_PG_init`).
pub fn register_locks(locks: Locks) {
    LOCKS.with(|l| l.set(Some(locks)));
}

/// Register the jobs area's side (from `_PG_init`).
pub fn register_granted(granted: GrantedFn) {
    GRANTED.with(|g| g.set(Some(granted)));
}

fn locks() -> Locks {
    LOCKS
        .with(|l| l.get())
        .expect("the locks area registers its gate when the library loads")
}

/// See [`Locks::check`].
pub fn check(needs: &[Need]) {
    (locks().check)(needs)
}

/// See [`Locks::take`].
pub fn take(job: i64, needs: &[Need]) -> Taken {
    (locks().take)(job, needs)
}

/// See [`Locks::give_back`].
pub fn give_back(job: i64) {
    (locks().give_back)(job)
}

/// A request `job` left in line `since` may be granted now: tell the jobs area (see
/// [`Granted`]).
pub fn granted(job: i64, since: i64) -> Granted {
    let granted = GRANTED
        .with(|g| g.get())
        .expect("the jobs area registers its side of the gate when the library loads");
    granted(job, since)
}

/// The needs `{"resource": count, ...}` describes, in resource order; or why it does not
/// describe any.
pub fn parse(resources: &serde_json::Value) -> Result<Vec<Need>, String> {
    let Some(map) = resources.as_object() else {
        return Err("resources must be a JSON object of resource names and counts".into());
    };
    let mut needs = Vec::with_capacity(map.len());
    for (name, count) in map {
        let count = count
            .as_i64()
            .filter(|c| i32::try_from(*c).is_ok())
            .ok_or_else(|| format!("the count of resource \"{name}\" must be an integer"))?;
        needs.push(Need {
            resource: name.clone(),
            count: count as i32,
        });
    }
    needs.sort_by(|a, b| a.resource.cmp(&b.resource));
    Ok(needs)
}

/// A job's resources: its type's, with the job's own added (a resource both name takes the
/// job's count).
pub fn merge(of_type: &[Need], of_job: &[Need]) -> Vec<Need> {
    let mut all: Vec<Need> = of_type
        .iter()
        .filter(|t| of_job.iter().all(|j| j.resource != t.resource))
        .cloned()
        .chain(of_job.iter().cloned())
        .collect();
    all.sort_by(|a, b| a.resource.cmp(&b.resource));
    all
}

/// `needs` as the jobs table stores them.
pub fn to_json(needs: &[Need]) -> serde_json::Value {
    serde_json::Value::Object(
        needs
            .iter()
            .map(|n| (n.resource.clone(), serde_json::json!(n.count)))
            .collect(),
    )
}
