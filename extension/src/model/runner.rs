//! Where the jobs area and the areas that make jobs meet, without importing each other:
//! job runners that other areas implement inside the database (`report`), which the job
//! lifecycle runs and tells about every state change of their jobs, and the way the jobs
//! area submits a job, which those areas call. Both are registered when the library loads
//! (`_PG_init`). No SQL runs here.
use std::cell::RefCell;

/// A job as its runner gets it.
pub struct JobRun<'a> {
    pub id: i64,
    /// The job type's target (for `report`: the report's name).
    pub target: &'a str,
    /// The role the job runs as (its type's owner).
    pub owner: pgrx::pg_sys::Oid,
    pub params: &'a serde_json::Value,
}

/// How a run ended, when it did not succeed.
pub struct RunFailed {
    pub message: String,
    /// The work itself failed for good (a report query that errors, a template with
    /// errors): FINISHERROR, no retry. Otherwise STARTERROR and the type's retry policy.
    pub finished: bool,
}

/// An in-database runner.
#[derive(Clone, Copy)]
pub struct Runner {
    pub name: &'static str,
    /// Do the job's work in the caller's transaction; its result (FINISHED's `result`).
    pub run: fn(&JobRun) -> Result<Option<serde_json::Value>, RunFailed>,
    /// A job of this runner changed state (in the changing transaction, after the
    /// change): the job's id, its new state's name, the node that ran it.
    pub moved: fn(job: i64, state: &str, node: Option<&str>),
}

/// A job to submit on behalf of the current user, as `herald.submit_job` does (the same
/// checks, the same hooks, in the caller's transaction).
pub struct Submit<'a> {
    pub type_name: &'a str,
    /// A jsonb datum (an object).
    pub params: pgrx::pg_sys::Datum,
}

/// How the jobs area submits a job; its id.
pub type SubmitFn = fn(&Submit) -> i64;

thread_local! {
    static RUNNERS: RefCell<Vec<Runner>> = const { RefCell::new(Vec::new()) };
    static SUBMIT: std::cell::Cell<Option<SubmitFn>> = const { std::cell::Cell::new(None) };
}

/// Register how jobs are submitted (the jobs area, from `_PG_init`).
pub fn register_submit(submit: SubmitFn) {
    SUBMIT.with(|s| s.set(Some(submit)));
}

/// Submit a job (see [`Submit`]).
pub fn submit(job: &Submit) -> i64 {
    let submit = SUBMIT
        .with(|s| s.get())
        .expect("the jobs area registers its submit when the library loads");
    submit(job)
}

/// Register `runner` (from `_PG_init`).
pub fn register(runner: Runner) {
    RUNNERS.with(|r| r.borrow_mut().push(runner));
}

/// The in-database runner called `name`, if one is registered.
pub fn find(name: &str) -> Option<Runner> {
    RUNNERS.with(|r| r.borrow().iter().find(|r| r.name == name).copied())
}

/// The names of the in-database runners besides `sql`.
pub fn names() -> Vec<&'static str> {
    RUNNERS.with(|r| r.borrow().iter().map(|r| r.name).collect())
}
