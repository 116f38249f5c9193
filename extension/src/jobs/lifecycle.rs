//! A job's life: every state change is one guarded UPDATE (`transition.sql`: `WHERE state
//! = ANY(from)`, and the running backend where it matters) that emits a JOB event.
//!
//! ```text
//! CREATED ──claim──► STARTED ──runner returns──► FINISHED ──completion──► COMPLETED
//!    ▲                  │  (autofinish, or             │
//!    │ retry            │   mark_job_finished)         └─before_completion fails─► FINISHERROR
//!    └──── STARTERROR ◄─┘ runner fails, or its node's claim is gone (rescue_jobs)
//! any unfinished state ──abort_job──► ABORTED
//! ```
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::callee;
use super::resources;
use super::{claim_key, class_key, first, wake_managers_at_commit, State};
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::core::subxact;
use crate::delivery;
use crate::listeners::event_types::is_admin;
use crate::model::runner;

/// What the lifecycle needs to know of a job and its type.
pub struct Job {
    pub id: i64,
    pub r#type: String,
    pub class: String,
    pub params: pgrx::JsonB,
    pub state: State,
    pub attempts: i32,
    pub claim_pid: Option<i32>,
    pub node: Option<String>,
    pub submitted_by: pg_sys::Oid,
    pub runner: String,
    pub target: String,
    pub owner: pg_sys::Oid,
    pub before_completion: Option<pg_sys::Oid>,
    pub after_completion: Option<pg_sys::Oid>,
    pub compensate: Option<pg_sys::Oid>,
    pub autofinish: bool,
    pub newthread: bool,
    pub gobackonerror: bool,
    pub max_attempts: i32,
    pub retry_delay: Option<Interval>,
}

/// Read a job with its type (`FOR UPDATE` of the job row if `lock`). A kept plan: this
/// runs several times per job.
pub fn load(job: i64, lock: bool) -> Option<Job> {
    macro_rules! select {
        () => {
            "SELECT j.id, j.type, j.params, j.state, j.attempts, j.claim_pid, j.node,
                j.submitted_by::pg_catalog.oid, t.runner, t.target, t.owner::pg_catalog.oid,
                t.before_completion::pg_catalog.oid, t.after_completion::pg_catalog.oid,
                t.compensate::pg_catalog.oid, t.autofinish, t.newthread, t.gobackonerror,
                t.max_attempts, t.retry_delay, j.class
           FROM herald.job j
           LEFT JOIN herald.job_type t ON t.name OPERATOR(pg_catalog.=) j.type
          WHERE j.id OPERATOR(pg_catalog.=) $1"
        };
    }
    const PLAIN: &str = select!();
    const LOCKED: &str = concat!(select!(), " FOR UPDATE OF j");
    catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = plans::execute(
                client,
                if lock { LOCKED } else { PLAIN },
                &[pg_sys::INT8OID],
                &[job.into_datum()],
            );
            if rows.is_empty() {
                return None;
            }
            let get_s = |c| rows.get::<String>(0, c).unwrap_or_default();
            Some(Job {
                id: rows.get(0, 1).unwrap_or_default(),
                r#type: get_s(2),
                params: rows
                    .get::<pgrx::JsonB>(0, 3)
                    .unwrap_or(pgrx::JsonB(serde_json::json!({}))),
                state: State::parse(&get_s(4)).unwrap_or(State::Aborted),
                attempts: rows.get(0, 5).unwrap_or_default(),
                claim_pid: rows.get(0, 6),
                node: rows.get(0, 7),
                submitted_by: rows.get(0, 8).unwrap_or(pg_sys::InvalidOid),
                runner: get_s(9),
                target: get_s(10),
                owner: rows.get(0, 11).unwrap_or(pg_sys::InvalidOid),
                before_completion: rows.get(0, 12),
                after_completion: rows.get(0, 13),
                compensate: rows.get(0, 14),
                autofinish: rows.get(0, 15).unwrap_or(true),
                newthread: rows.get(0, 16).unwrap_or(false),
                gobackonerror: rows.get(0, 17).unwrap_or(false),
                max_attempts: rows.get(0, 18).unwrap_or(1),
                retry_delay: rows.get(0, 19),
                class: get_s(20),
            })
        })
    })
}

/// Load a job or raise "does not exist".
fn require(job: i64, lock: bool) -> Job {
    load(job, lock).unwrap_or_else(|| {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("job {job} does not exist"),
            None,
        )
    })
}

/// Details of a state change.
#[derive(Default)]
pub struct Change<'a> {
    pub node: Option<&'a str>,
    pub result: Option<pgrx::JsonB>,
    pub error: Option<&'a str>,
    pub delay: Option<Interval>,
    /// Only if this backend runs the job (holds it as `claim_pid`).
    pub mine: bool,
    /// STARTED to COMPLETED through FINISHED in one change (a type without completion
    /// hooks): both JOB events are emitted.
    pub through_finished: bool,
    /// A retry follows this STARTERROR in the same transaction: the job's runner hears of
    /// the retry, not of this failure (which is not the job's outcome).
    pub retry_follows: bool,
}

/// A job that changed state.
pub struct Moved {
    pub r#type: String,
    pub params: pgrx::JsonB,
}

/// Move `job` from one of `from` to `to` (one guarded UPDATE); None if it was in none of
/// them. Emits the JOB event (action `1` on start, `2` when a run stops, `RETRY` when it
/// is queued again) and, where the change may let a job start, wakes the job managers at
/// commit.
pub fn transition(job: i64, from: &[State], to: State, change: Change<'_>) -> Option<Moved> {
    use pg_sys::{BOOLOID, INT8OID, INTERVALOID, JSONBOID, TEXTARRAYOID, TEXTOID};
    let from: Vec<&str> = from.iter().map(|s| s.name()).collect();
    let listened = delivery::has_system_listeners("JOB");
    let moved = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = plans::execute(
                client,
                include_str!("transition.sql"),
                &[
                    INT8OID,
                    TEXTOID,
                    TEXTARRAYOID,
                    TEXTOID,
                    JSONBOID,
                    TEXTOID,
                    INTERVALOID,
                    BOOLOID,
                    BOOLOID,
                    BOOLOID,
                ],
                &[
                    job.into_datum(),
                    to.name().into_datum(),
                    from.into_datum(),
                    change.node.into_datum(),
                    change.result.into_datum(),
                    change.error.into_datum(),
                    change.delay.into_datum(),
                    change.mine.into_datum(),
                    change.through_finished.into_datum(),
                    listened.into_datum(),
                ],
            );
            if rows.is_empty() {
                return None;
            }
            Some((
                rows.get::<pgrx::JsonB>(0, 1),
                Moved {
                    r#type: rows.get::<String>(0, 2).unwrap_or_default(),
                    params: rows
                        .get::<pgrx::JsonB>(0, 3)
                        .unwrap_or(pgrx::JsonB(serde_json::json!({}))),
                },
                rows.get::<bool>(0, 4).unwrap_or(true),
                rows.get::<String>(0, 5).unwrap_or_default(),
                rows.get::<String>(0, 6),
                rows.get::<bool>(0, 7).unwrap_or(false),
            ))
        })
    });
    let (details, moved, ends_matter, runner_name, node, declares_resources) = moved?;
    // A job holds its resources while it is STARTED or FINISHED; in any other state it
    // gives them back (a retry takes them again when it is claimed).
    if declares_resources && !to.is_active() {
        resources::give_back(job);
    }
    let action = match to {
        State::Started => "1",
        State::Created => "RETRY",
        _ => "2",
    };
    // (Nobody listens: no event, and none of the work of making one.)
    if listened {
        let details = details.unwrap_or(pgrx::JsonB(serde_json::json!({})));
        if change.through_finished {
            // The FINISHED step's event, as its own change would have told it.
            let mut finished = details.0.clone();
            if let Some(map) = finished.as_object_mut() {
                map.insert("state".into(), serde_json::json!(State::Finished.name()));
            }
            publish("2", &moved.r#type, pgrx::JsonB(finished));
        }
        publish(action, &moved.r#type, details);
    }
    // The managers look at once when this commit may let a job start: a retry is
    // startable, a finished job wants completing, an end frees a slot of a limited class
    // or makes a mail due. The end of a job of an unlimited class frees only its runner,
    // which claims its next job by itself: waking every manager for it would cost each a
    // round of lookups per job.
    let wake = match to {
        State::Started => false,
        State::Created | State::Finished => true,
        _ => ends_matter,
    };
    if wake {
        wake_managers_at_commit();
    }
    // A runner of another area hears of its jobs' changes in the changing transaction.
    if !change.retry_follows {
        if let Some(r) = runner::find(&runner_name) {
            (r.moved)(job, to.name(), node.as_deref());
        }
    }
    Some(moved)
}

fn publish(action: &str, type_name: &str, details: pgrx::JsonB) {
    let datum = details.into_datum().unwrap_or(pg_sys::Datum::from(0));
    delivery::publish_system("JOB", action, type_name, datum);
}

/// Release this backend's claim of `job` (a no-op if it holds none).
pub fn release_claim(job: i64) {
    KeySpace::JobClaim.unlock_session(claim_key(job), pg_sys::ExclusiveLock);
}

/// The classes with waiting jobs (`due_classes.sql`).
fn due_classes() -> Vec<String> {
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(client, include_str!("due_classes.sql"), &[], &[]);
            (0..rows.len())
                .map(|i| rows.get::<String>(i, 1).unwrap_or_default())
                .collect()
        })
    })
}

/// The job of a class to start next, with what its type says of how to run it.
struct Head {
    id: i64,
    /// Empty when the job's type is gone.
    runner: String,
    target: String,
    newthread: bool,
    /// The job as its run will need it, once STARTED by this backend.
    job: Job,
    /// When it fell due (for an unlimited class).
    run_after: Option<TimestampWithTimeZone>,
    /// The resources it declares.
    resources: Option<pgrx::JsonB>,
}

/// The job of `class` to start next (see `claim_head.sql`); of an unlimited class, the
/// next that this claim may take (`claim_head_unlimited.sql`).
fn head_of(
    class: &str,
    max_running: Option<i32>,
    runners: Option<&[String]>,
    inline: bool,
) -> Option<Head> {
    if max_running.is_some() {
        // Most limited classes wait empty most of the time: one cheap probe says so.
        if !class_has_due(class) {
            return None;
        }
        return head_query(class, max_running, runners, inline, None);
    }
    // An unlimited class's probe starts where this backend's last claim of it was, and
    // from the start every FULL_PROBE_EVERY claims and whenever it finds nothing there: a
    // job behind that point (its submit committed late, a retry due earlier, one another
    // claim had locked) waits a few claims at most.
    let floor = FLOORS.with(|f| f.borrow().get(class).cloned());
    let from = floor.filter(|f| f.2 < FULL_PROBE_EVERY);
    let full = || head_query(class, None, runners, inline, None);
    let (head, uses) = match from {
        Some((at, id, n)) => match head_query(class, None, runners, inline, Some((at, id))) {
            Some(head) => (head, n + 1),
            None => (full()?, 0),
        },
        None => (full()?, 0),
    };
    if let Some(at) = head.run_after {
        FLOORS.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() > 64 {
                f.clear();
            }
            f.insert(class.to_string(), (at, head.id, uses));
        });
    }
    Some(head)
}

/// Has `class` a waiting job that is due (`class_due.sql`)?
fn class_has_due(class: &str) -> bool {
    catalog::as_owner(|| {
        Spi::connect(|client| {
            !plans::execute(
                client,
                include_str!("class_due.sql"),
                &[pg_sys::TEXTOID],
                &[class.into_datum()],
            )
            .is_empty()
        })
    })
}

/// Full probes of an unlimited class are made at least this often (in claims).
const FULL_PROBE_EVERY: u32 = 32;

thread_local! {
    /// Per unlimited class, where this backend's last claim was: (run_after, id) and the
    /// claims since the last probe from the start.
    static FLOORS: std::cell::RefCell<std::collections::HashMap<String, (TimestampWithTimeZone, i64, u32)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn head_query(
    class: &str,
    max_running: Option<i32>,
    runners: Option<&[String]>,
    inline: bool,
    after: Option<(TimestampWithTimeZone, i64)>,
) -> Option<Head> {
    use pg_sys::{BOOLOID, INT8OID, TEXTARRAYOID, TEXTOID, TIMESTAMPTZOID};
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = match max_running {
                None => plans::execute(
                    client,
                    include_str!("claim_head_unlimited.sql"),
                    &[TEXTOID, TEXTARRAYOID, BOOLOID, TIMESTAMPTZOID, INT8OID],
                    &[
                        class.into_datum(),
                        runners.map(|r| r.to_vec()).into_datum(),
                        inline.into_datum(),
                        after.map(|a| a.0).into_datum(),
                        after.map(|a| a.1).into_datum(),
                    ],
                ),
                Some(_) => plans::execute(
                    client,
                    include_str!("claim_head.sql"),
                    &[TEXTOID],
                    &[class.into_datum()],
                ),
            };
            if rows.is_empty() {
                return None;
            }
            let id = rows.get::<i64>(0, 1)?;
            let runner = rows.get::<String>(0, 2).unwrap_or_default();
            let target = rows.get::<String>(0, 3).unwrap_or_default();
            let newthread = rows.get::<bool>(0, 4).unwrap_or(false);
            let job = Job {
                id,
                r#type: String::new(),
                class: class.to_string(),
                params: pgrx::JsonB(serde_json::json!({})),
                state: State::Started,
                attempts: rows.get::<i32>(0, 14).unwrap_or_default() + 1,
                // SAFETY: reads a backend global.
                claim_pid: Some(unsafe { pg_sys::MyProcPid }),
                node: None,
                submitted_by: rows.get(0, 13).unwrap_or(pg_sys::InvalidOid),
                runner: runner.clone(),
                target: target.clone(),
                owner: rows.get(0, 5).unwrap_or(pg_sys::InvalidOid),
                before_completion: rows.get(0, 6),
                after_completion: rows.get(0, 7),
                compensate: rows.get(0, 8),
                autofinish: rows.get(0, 9).unwrap_or(true),
                newthread,
                gobackonerror: rows.get(0, 10).unwrap_or(false),
                max_attempts: rows.get(0, 11).unwrap_or(1),
                retry_delay: rows.get(0, 12),
            };
            Some(Head {
                id,
                runner,
                target,
                newthread,
                job,
                run_after: rows.get::<TimestampWithTimeZone>(0, 15),
                resources: rows.get::<pgrx::JsonB>(0, 16),
            })
        })
    })
}

/// `herald.claim_next_job(node, runners, inline)`: start the next job that may start now,
/// claimed by this connection, which must then run it (`herald.run_job`, or for `command`
/// jobs `herald.finish_job` / `herald.fail_job`). No row when nothing may start.
///
/// Limited classes are served first (their jobs wait for a slot, and start as soon as one
/// frees), then the unlimited ones in turn. A limited class is chosen under its class
/// lock, taken without waiting: while another claim or a submit of the class is in flight
/// the class is skipped (that commit wakes the managers again), so that the class's limit
/// holds across the cluster and its jobs start in submission order.
///
/// `runners` (NULL: any) restricts the claim to jobs of those runners, so that a
/// coordinator can claim `command` jobs on one connection that holds many claims and `sql`
/// jobs on the connections that run them; `inline => false` to jobs whose type is
/// `newthread` (a coordinator runs one job without it at a time). A limited class whose
/// next job does not match is skipped, never overtaken: its order holds whoever claims.
/// An unlimited class promises no order: the claim takes its oldest job that matches.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn claim_next_job(
    node: Option<&str>,
    runners: default!(Option<Vec<Option<String>>>, "NULL"),
    inline: default!(Option<bool>, "true"),
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(job_type, String),
        name!(runner, String),
        name!(target, String),
        name!(params, pgrx::JsonB),
        name!(newthread, bool),
    ),
> {
    catalog::require_primary("herald.claim_next_job()");
    let node = errors::required(node, "node");
    let inline = errors::required(inline, "inline");
    let runners: Option<Vec<String>> = runners.map(|r| r.into_iter().flatten().collect());
    match claim(node, runners.as_deref(), inline, None) {
        Some(c) => TableIterator::once((c.id, c.r#type, c.runner, c.target, c.params, c.newthread)),
        None => TableIterator::new(std::iter::empty()),
    }
}

/// A job this backend has claimed: STARTED, its claim held here.
struct Claimed {
    id: i64,
    r#type: String,
    runner: String,
    target: String,
    params: pgrx::JsonB,
    newthread: bool,
}

/// Claim the next job that may start now (see `herald.claim_next_job`).
fn claim(
    node: &str,
    runners: Option<&[String]>,
    inline: bool,
    not_of: Option<&str>,
) -> Option<Claimed> {
    let (classes, known) = known_classes();
    // (A limited class whose job just ended here is left to the claims its end wakes, so
    // that its jobs go to whichever node asks first, not always to this runner.)
    let (limited, unlimited): (Vec<_>, Vec<_>) = classes
        .iter()
        .filter(|(name, max_running)| max_running.is_none() || Some(name.as_str()) != not_of)
        .partition(|(_, max_running)| max_running.is_some());
    // Unlimited classes take turns: each claim of this backend starts at the next one.
    let start = ROTATION.with(|r| {
        let n = r.get();
        r.set(n.wrapping_add(1));
        n
    });
    let turn = unlimited
        .iter()
        .cycle()
        .skip(start % unlimited.len().max(1))
        .take(unlimited.len());
    for (class, max_running) in limited.iter().copied().chain(turn.copied()) {
        if let Some(claimed) = claim_of(node, class, *max_running, runners, inline) {
            return Some(claimed);
        }
    }
    // Jobs of a class that is no longer defined (its row deleted by hand) count as
    // unlimited, and start when no job of a defined class can.
    for class in due_classes() {
        if known.iter().all(|k| *k != class) {
            if let Some(claimed) = claim_of(node, &class, None, runners, inline) {
                return Some(claimed);
            }
        }
    }
    None
}

thread_local! {
    /// Where this backend's next claim starts among the unlimited classes.
    static ROTATION: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The job classes a claim looks at, with their limits (all but limited classes without a
/// due job), and the names of every class there is: the rows of
/// `herald.job_class_setting` (`known_classes.sql`), and the built-in classes without a
/// row there, which are unlimited (what `herald.job_class` shows, without the view's
/// union).
#[allow(clippy::type_complexity)]
fn known_classes() -> (Vec<(String, Option<i32>)>, Vec<String>) {
    // (name, max_running, worth a look)
    let rows: Vec<(String, Option<i32>, bool)> = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(client, include_str!("known_classes.sql"), &[], &[]);
            (0..rows.len())
                .map(|i| {
                    (
                        rows.get::<String>(i, 1).unwrap_or_default(),
                        rows.get::<i32>(i, 2),
                        rows.get::<bool>(i, 3).unwrap_or(true),
                    )
                })
                .collect()
        })
    });
    let mut classes: Vec<_> = rows
        .iter()
        .filter(|r| r.2)
        .map(|r| (r.0.clone(), r.1))
        .collect();
    let mut names: Vec<String> = rows.into_iter().map(|r| r.0).collect();
    for builtin in BUILTIN_CLASSES {
        if names.iter().all(|n| n != builtin) {
            classes.push((builtin.to_string(), None));
            names.push(builtin.to_string());
        }
    }
    (classes, names)
}

/// The classes every installation has (sql/jobs/schema.sql), unlimited until a row of
/// `herald.job_class_setting` says otherwise.
const BUILTIN_CLASSES: [&str; 2] = ["default", "posting"];

/// Claim the next job of `class` that may start now and that this claim may take.
fn claim_of(
    node: &str,
    class: &str,
    max_running: Option<i32>,
    runners: Option<&[String]>,
    inline: bool,
) -> Option<Claimed> {
    // (A job whose type is gone is claimed by anyone, so that its run fails and ends it
    // instead of blocking its class.)
    let takes = |head: &Head| {
        head.runner.is_empty()
            || (runners.is_none_or(|r| r.contains(&head.runner)) && (inline || head.newthread))
    };
    if max_running.is_some() {
        // A limited class's next job is looked at first without its lock: a claim that
        // would not take it (another runner, or inline) leaves the lock to those that
        // would, instead of making them skip the class until the next tick.
        if !takes(&head_of(class, max_running, runners, inline)?) {
            return None;
        }
        if !KeySpace::JobClass.try_lock_for_transaction(class_key(class)) {
            return None;
        }
    }
    // The head of an unlimited class skips the jobs other claims are taking now; try a
    // few in case a job was ended meanwhile.
    for _ in 0..3 {
        let head = head_of(class, max_running, runners, inline)?;
        if !takes(&head) {
            return None;
        }
        if !KeySpace::JobClaim.try_lock_for_session(claim_key(head.id), pg_sys::ExclusiveLock) {
            return None;
        }
        // A job that declares resources starts only once it holds them all; otherwise it
        // waits in line, no longer due, and the next job is looked at.
        if let Some(declared) = &head.resources {
            match resources::take_for_claim(head.id, declared) {
                resources::Claim::Start => {}
                resources::Claim::Waits => {
                    release_claim(head.id);
                    continue;
                }
                resources::Claim::Later => {
                    release_claim(head.id);
                    return None;
                }
                resources::Claim::Never(why) => {
                    transition(
                        head.id,
                        &[State::Created],
                        State::StartError,
                        Change {
                            error: Some(&why),
                            ..Default::default()
                        },
                    );
                    release_claim(head.id);
                    continue;
                }
            }
        }
        let Some(started) = transition(
            head.id,
            &[State::Created],
            State::Started,
            Change {
                node: Some(node),
                ..Default::default()
            },
        ) else {
            // (Ended meanwhile: whatever was taken for it goes back.)
            if head.resources.is_some() {
                resources::give_back(head.id);
            }
            release_claim(head.id);
            continue;
        };
        let mut job = head.job;
        job.r#type = started.r#type.clone();
        job.params = pgrx::JsonB(started.params.0.clone());
        job.node = Some(node.to_string());
        remember_claimed(job);
        return Some(Claimed {
            id: head.id,
            r#type: started.r#type,
            runner: head.runner,
            target: head.target,
            params: started.params,
            newthread: head.newthread,
        });
    }
    None
}

/// Raise unless this backend runs `job` now.
fn require_running_here(job: &Job) {
    // SAFETY: reads a backend global.
    let me = unsafe { pg_sys::MyProcPid };
    if job.state != State::Started
        || job.claim_pid != Some(me)
        || !KeySpace::JobClaim.held_by_me(claim_key(job.id))
    {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "job {} is not running on this connection (it is {})",
                job.id,
                job.state.name()
            ),
            Some(
                "A job runs on the connection that claimed it with herald.claim_next_job().".into(),
            ),
        );
    }
}

/// `herald.run_job(job)`: run a claimed `sql` job's target, as its type's owner, in this
/// transaction. With `autofinish` the job is FINISHED in the same commit as its work;
/// without, it stays STARTED until `herald.mark_job_finished`. A failing target leaves
/// STARTERROR (and a retry, per the type's policy). Returns the job's state.
#[pg_extern(volatile, parallel_unsafe)]
fn run_job(job: Option<i64>) -> String {
    run(errors::required(job, "job")).0.name().to_string()
}

/// `herald.run_job_and_claim(job, node, inline)`: `herald.run_job(job)`, then, in the same
/// transaction, `herald.claim_next_job(node, '{sql}', inline)`. A `sql` runner that goes
/// from one job to the next pays one round trip and one commit per job instead of two;
/// the next job is STARTED when this one's work commits, as a claim of its own would
/// make it, and runs right after. Returns the job's state and the next job, if any.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn run_job_and_claim(
    job: Option<i64>,
    node: Option<&str>,
    inline: default!(Option<bool>, "true"),
) -> TableIterator<
    'static,
    (
        name!(state, String),
        name!(next_id, Option<i64>),
        name!(next_type, Option<String>),
        name!(next_target, Option<String>),
        name!(next_params, Option<pgrx::JsonB>),
        name!(next_newthread, Option<bool>),
    ),
> {
    let id = errors::required(job, "job");
    let node = errors::required(node, "node");
    let inline = errors::required(inline, "inline");
    let (state, class) = run(id);
    let state = state.name().to_string();
    let next = claim(node, Some(&in_database_runners()), inline, Some(&class));
    TableIterator::once(match next {
        Some(c) => (
            state,
            Some(c.id),
            Some(c.r#type),
            Some(c.target),
            Some(c.params),
            Some(c.newthread),
        ),
        None => (state, None, None, None, None, None),
    })
}

/// The runners whose jobs `herald.run_job` runs: `sql`, and those of other areas.
fn in_database_runners() -> Vec<String> {
    std::iter::once("sql")
        .chain(runner::names())
        .map(str::to_string)
        .collect()
}

thread_local! {
    /// Jobs this backend has claimed and not yet run, as the claim read them: a run that
    /// follows its claim on the same connection needs no second read of the job. (Should
    /// the job have been ended meanwhile, its run's guarded UPDATE finds it so, and the
    /// run's work is rolled back.)
    static CLAIMED: std::cell::RefCell<Vec<Job>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// At most this many claimed jobs are remembered (a connection claiming many `command`
/// jobs never runs them here).
const CLAIMED_KEPT: usize = 16;

fn remember_claimed(job: Job) {
    CLAIMED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CLAIMED_KEPT {
            c.remove(0);
        }
        c.push(job);
    });
}

fn take_claimed(id: i64) -> Option<Job> {
    CLAIMED.with(|c| {
        let mut c = c.borrow_mut();
        let at = c.iter().position(|j| j.id == id)?;
        Some(c.remove(at))
    })
}

/// Run job `id`, claimed by this backend (see `herald.run_job`); the state it is left in,
/// and its class.
fn run(id: i64) -> (State, String) {
    let job = take_claimed(id).unwrap_or_else(|| require(id, false));
    let state = run_loaded(&job);
    (state, job.class)
}

fn run_loaded(job: &Job) -> State {
    let id = job.id;
    require_running_here(job);
    if let Some(r) = runner::find(&job.runner) {
        return run_elsewhere(job, r);
    }
    if job.runner != "sql" {
        raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "job {id} has runner '{}': the coordinator runs it",
                job.runner
            ),
            Some("Report its end with herald.finish_job() or herald.fail_job().".into()),
        );
    }
    let mut result = None;
    let outcome = subxact::run(|| {
        result = callee::call_target(&job.target, job.owner, pgrx::JsonB(job.params.0.clone()));
    });
    match outcome {
        Ok(()) => {
            let done = if job.autofinish {
                finish(job, result)
            } else {
                keep_for_external_finish(id).then_some(State::Started)
            };
            release_claim(id);
            let Some(state) = done else {
                raise(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("job {id} was ended while it ran (aborted or set by an operator); its work is rolled back"),
                    None,
                );
            };
            state
        }
        Err(e) => fail(job, &e.message, true),
    }
}

/// Run a job whose runner another area implements in the database (`report`), as a `sql`
/// job's target is run: in a subtransaction, then FINISHED (or COMPLETED) with its
/// result; a failure of the work itself (the runner says so) is FINISHERROR at once, any
/// other a failed run (STARTERROR and the retry policy).
fn run_elsewhere(job: &Job, r: runner::Runner) -> State {
    let id = job.id;
    let mut outcome = None;
    let run = subxact::run(|| {
        outcome = Some((r.run)(&runner::JobRun {
            id,
            target: &job.target,
            owner: job.owner,
            params: &job.params.0,
        }));
    });
    match (run, outcome) {
        (Ok(()), Some(Ok(result))) => {
            let done = finish(job, result.map(pgrx::JsonB));
            release_claim(id);
            done.unwrap_or_else(|| {
                raise(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("job {id} was ended while it ran (aborted or set by an operator); its work is rolled back"),
                    None,
                )
            })
        }
        (Ok(()), Some(Err(failed))) if failed.finished => {
            let ended = transition(
                id,
                &[State::Started],
                State::FinishError,
                Change {
                    error: Some(&failed.message),
                    mine: true,
                    ..Default::default()
                },
            )
            .is_some();
            release_claim(id);
            if ended {
                if job.gobackonerror {
                    compensate(job);
                }
                State::FinishError
            } else {
                load(id, false).map_or(State::Aborted, |j| j.state)
            }
        }
        (Ok(()), Some(Err(failed))) => fail(job, &failed.message, true),
        (Ok(()), None) => fail(job, "the runner did not run", true),
        (Err(e), _) => fail(job, &e.message, true),
    }
}

/// The runner of a job running here is done: FINISHED with `result`. A type without
/// completion hooks (`before_completion`, `after_completion`) has nothing left to run for
/// its completion: its job goes on to COMPLETED in the same change (one guarded UPDATE,
/// both events), so that it costs no second transaction and frees its class's slot at
/// once. The state reached, None if the job no longer ran here.
fn finish(job: &Job, result: Option<pgrx::JsonB>) -> Option<State> {
    let to = if hookless(job) {
        State::Completed
    } else {
        State::Finished
    };
    transition(
        job.id,
        &[State::Started],
        to,
        Change {
            result,
            mine: true,
            through_finished: to == State::Completed,
            ..Default::default()
        },
    )
    .map(|_| to)
}

/// The job's type has no completion hooks.
fn hookless(job: &Job) -> bool {
    job.before_completion.is_none() && job.after_completion.is_none()
}

/// The runner of a job without `autofinish` has returned: the job stays STARTED, no
/// longer held by this connection, until `herald.mark_job_finished`.
fn keep_for_external_finish(id: i64) -> bool {
    catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            Ok::<_, pgrx::spi::SpiError>(
                !client
                    .update(
                        "UPDATE herald.job SET claim_pid = NULL
                          WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'STARTED'
                            AND claim_pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()",
                        None,
                        &[id.into()],
                    )?
                    .is_empty(),
            )
        }))
    })
}

/// A run failed: STARTERROR, the compensate hook with `gobackonerror`, then a retry if the
/// type allows another attempt. Releases this backend's claim. Returns the job's state.
fn fail(job: &Job, error: &str, mine: bool) -> State {
    let attempts = job.attempts.max(1);
    let failed = transition(
        job.id,
        &[State::Started],
        State::StartError,
        Change {
            error: Some(error),
            mine,
            retry_follows: attempts < job.max_attempts,
            ..Default::default()
        },
    )
    .is_some();
    if mine {
        release_claim(job.id);
    }
    if !failed {
        return load(job.id, false).map_or(State::Aborted, |j| j.state);
    }
    if job.gobackonerror {
        compensate(job);
    }
    if attempts < job.max_attempts
        && transition(
            job.id,
            &[State::StartError],
            State::Created,
            Change {
                delay: job.retry_delay,
                ..Default::default()
            },
        )
        .is_some()
    {
        return State::Created;
    }
    State::StartError
}

/// Run the type's compensate hook in a subtransaction; its failure is a WARNING and a note
/// on the job.
fn compensate(job: &Job) {
    let Some(hook) = job.compensate else {
        return;
    };
    if let Err(e) = subxact::run(|| {
        callee::call_hook(
            hook,
            job.owner,
            job.id,
            pgrx::JsonB(job.params.0.clone()),
            None,
        )
    }) {
        note_hook_failure(job.id, "compensate", &e.message);
    }
}

fn note_hook_failure(job: i64, hook: &str, message: &str) {
    errors::warning(
        format!("herald: hook {hook} of job {job} failed: {message}"),
        None,
    );
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "UPDATE herald.job
                SET error = COALESCE(error OPERATOR(pg_catalog.||) '; ', '')
                            OPERATOR(pg_catalog.||) $2
              WHERE id OPERATOR(pg_catalog.=) $1",
            &[job.into(), format!("hook {hook} failed: {message}").into()],
        ))
    });
}

/// `herald.finish_job(job, result)`: the coordinator's runner of a claimed job (runner
/// `command`) has done its work: FINISHED, claim released.
#[pg_extern(volatile, parallel_unsafe)]
fn finish_job(job: Option<i64>, result: default!(Option<pgrx::JsonB>, "NULL")) -> bool {
    let id = errors::required(job, "job");
    let job = require(id, false);
    require_running_here(&job);
    let done = finish(&job, result).is_some();
    release_claim(id);
    done
}

/// `herald.fail_job(job, error)`: the coordinator's runner of a job claimed by this
/// connection failed (a command's exit code, a cancelled `run_job`): STARTERROR and the
/// retry policy. A job that was aborted meanwhile stays ABORTED. Always releases the claim.
/// Returns the job's state.
#[pg_extern(volatile, parallel_unsafe)]
fn fail_job(job: Option<i64>, error: Option<&str>) -> String {
    let id = errors::required(job, "job");
    let error = errors::required(error, "error");
    let Some(job) = load(id, true) else {
        release_claim(id);
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("job {id} does not exist"),
            None,
        );
    };
    // SAFETY: reads a backend global.
    let me = unsafe { pg_sys::MyProcPid };
    if job.state != State::Started || job.claim_pid != Some(me) {
        release_claim(id);
        return job.state.name().to_string();
    }
    fail(&job, error, true).name().to_string()
}

/// `herald.complete_next_job(node)`: run the completion step of the oldest FINISHED job
/// that nobody completes now: `before_completion` (its error means FINISHERROR), then
/// COMPLETED and `after_completion(commit => true)`; returns its id, NULL when there is
/// none.
#[pg_extern(volatile, parallel_unsafe)]
fn complete_next_job(node: Option<&str>) -> Option<i64> {
    catalog::require_primary("herald.complete_next_job()");
    let _node = errors::required(node, "node");
    let id = first::<i64>(
        "SELECT id FROM herald.job WHERE state OPERATOR(pg_catalog.=) 'FINISHED'
          ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        &[],
    )?;
    let job = require(id, true);
    let params = || pgrx::JsonB(job.params.0.clone());
    let before = match job.before_completion {
        Some(hook) => subxact::run(|| callee::call_hook(hook, job.owner, id, params(), None)),
        None => Ok(()),
    };
    match before {
        Ok(()) => {
            transition(id, &[State::Finished], State::Completed, Change::default());
            after_completion(&job, true);
        }
        Err(e) => {
            let error = format!("before_completion failed: {}", e.message);
            transition(
                id,
                &[State::Finished],
                State::FinishError,
                Change {
                    error: Some(&error),
                    ..Default::default()
                },
            );
            after_completion(&job, false);
            if job.gobackonerror {
                compensate(&job);
            }
        }
    }
    Some(id)
}

fn after_completion(job: &Job, commit: bool) {
    let Some(hook) = job.after_completion else {
        return;
    };
    if let Err(e) = subxact::run(|| {
        callee::call_hook(
            hook,
            job.owner,
            job.id,
            pgrx::JsonB(job.params.0.clone()),
            Some(commit),
        )
    }) {
        note_hook_failure(job.id, "after_completion", &e.message);
    }
}

/// Raise unless the current user may act on `job`: a Herald administrator, the type's
/// owner or the job's submitter.
fn require_may_manage(job: &Job, what: &str) {
    let me = catalog::current_user();
    if is_admin()
        || catalog::has_privs_of_role(me, job.owner)
        || catalog::has_privs_of_role(me, job.submitted_by)
    {
        return;
    }
    raise(
        Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("permission denied to {what} job {}", job.id),
        Some("The job's submitter, its type's owner and Herald administrators may.".into()),
    );
}

fn not_in_state(job: &Job, what: &str, allowed: &[State]) -> ! {
    raise(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("cannot {what} job {}: it is {}", job.id, job.state.name()),
        Some(format!(
            "Only a job that is {} can be {what}ed.",
            allowed
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    )
}

/// `herald.mark_job_finished(job, result)`: work done outside Herald is finished; the job
/// (STARTED) becomes FINISHED and is completed by the next manager tick.
#[pg_extern(volatile, parallel_unsafe)]
fn mark_job_finished(job: Option<i64>, result: default!(Option<pgrx::JsonB>, "NULL")) {
    catalog::require_primary("herald.mark_job_finished()");
    let id = errors::required(job, "job");
    let job = require(id, true);
    require_may_manage(&job, "finish");
    let ok = transition(
        id,
        &[State::Started],
        State::Finished,
        Change {
            result,
            ..Default::default()
        },
    )
    .is_some();
    if !ok {
        not_in_state(&job, "finish", &[State::Started]);
    }
    wake_managers_at_commit();
}

const ABORTABLE: &[State] = &[
    State::Created,
    State::Started,
    State::Finished,
    State::StartError,
    State::FinishError,
];

/// `herald.abort_job(job, reason)`: end a job that has not completed: ABORTED, its
/// compensate hook, an audit row. A running `sql` job's statement is cancelled, so its
/// work rolls back.
#[pg_extern(volatile, parallel_unsafe)]
fn abort_job(job: Option<i64>, reason: default!(Option<&str>, "NULL")) {
    catalog::require_primary("herald.abort_job()");
    let id = errors::required(job, "job");
    let job = require(id, true);
    require_may_manage(&job, "abort");
    let error = format!("aborted by {}", catalog::role_name(catalog::current_user()));
    let error = match reason {
        Some(r) => format!("{error}: {r}"),
        None => error,
    };
    if transition(
        id,
        ABORTABLE,
        State::Aborted,
        Change {
            error: Some(&error),
            ..Default::default()
        },
    )
    .is_none()
    {
        not_in_state(&job, "abort", ABORTABLE);
    }
    if let (State::Started, Some(pid)) = (job.state, job.claim_pid) {
        catalog::as_owner(|| {
            errors::spi(Spi::run_with_args(
                "SELECT pg_catalog.pg_cancel_backend($1)",
                &[pid.into()],
            ))
        });
    }
    compensate(&job);
    audit(id, "abort", job.state, State::Aborted, reason);
}

const RETRYABLE: &[State] = &[State::StartError, State::FinishError, State::Aborted];

/// `herald.retry_job(job)`: queue a failed or aborted job again (CREATED, due now).
#[pg_extern(volatile, parallel_unsafe)]
fn retry_job(job: Option<i64>) {
    catalog::require_primary("herald.retry_job()");
    let id = errors::required(job, "job");
    let job = require(id, true);
    require_may_manage(&job, "retry");
    if transition(id, RETRYABLE, State::Created, Change::default()).is_none() {
        not_in_state(&job, "retry", RETRYABLE);
    }
    audit(id, "retry", job.state, State::Created, None);
}

/// `herald.set_job_state(job, state, reason)`: the operator's way out of any stuck state
/// (Herald administrators only): sets the state, writes an audit row, emits the event. A
/// job cannot be set STARTED: jobs start through a coordinator's claim.
#[pg_extern(volatile, parallel_unsafe)]
fn set_job_state(job: Option<i64>, state: Option<&str>, reason: Option<&str>) {
    catalog::require_primary("herald.set_job_state()");
    let id = errors::required(job, "job");
    let state = errors::required(state, "state");
    let reason = errors::required(reason, "reason");
    if !is_admin() {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to set a job's state",
            Some("Only Herald administrators may; others use herald.abort_job() and herald.retry_job().".into()),
        );
    }
    let Some(to) = State::parse(state) else {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown job state \"{}\"", errors::shown(state)),
            Some(format!(
                "States: {}.",
                State::ALL
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
    };
    if to == State::Started {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "a job cannot be set STARTED by hand",
            Some("Set it CREATED: a coordinator claims and starts it.".into()),
        );
    }
    let job = require(id, true);
    if job.state == to {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("job {id} is {} already", to.name()),
            None,
        );
    }
    let note = format!(
        "set {} by {}: {reason}",
        to.name(),
        catalog::role_name(catalog::current_user())
    );
    let error = (!matches!(to, State::Created | State::Finished | State::Completed))
        .then_some(note.as_str());
    transition(
        id,
        &[job.state],
        to,
        Change {
            error,
            ..Default::default()
        },
    );
    if let (State::Started, Some(pid)) = (job.state, job.claim_pid) {
        catalog::as_owner(|| {
            errors::spi(Spi::run_with_args(
                "SELECT pg_catalog.pg_cancel_backend($1)",
                &[pid.into()],
            ))
        });
    }
    audit(id, "set_state", job.state, to, Some(reason));
}

fn audit(job: i64, action: &str, old: State, new: State, reason: Option<&str>) {
    let who = catalog::role_name(catalog::current_user());
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.job_audit (job, action, old_state, new_state, reason, done_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                job.into(),
                action.into(),
                old.name().into(),
                new.name().into(),
                reason.into(),
                who.as_str().into(),
            ],
        ))
    });
}

/// `herald.rescue_jobs()`: find running jobs whose claim is gone (the connection that ran
/// them ended: its node died, was killed or lost the server) and apply their retry
/// policy. A job whose runner is alive keeps its claim however slow it is, and is never
/// touched. Returns how many jobs were rescued.
#[pg_extern(volatile, parallel_unsafe)]
fn rescue_jobs() -> i32 {
    catalog::require_primary("herald.rescue_jobs()");
    let candidates: Vec<i64> = catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            let mut out = Vec::new();
            for r in client.update(
                "SELECT id FROM herald.job
                  WHERE state OPERATOR(pg_catalog.=) 'STARTED' AND claim_pid IS NOT NULL
                  ORDER BY id FOR UPDATE SKIP LOCKED",
                None,
                &[],
            )? {
                out.push(r.get::<i64>(1)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        }))
    });
    let mut rescued = 0;
    for id in candidates {
        if claim_is_held(id) {
            continue;
        }
        let Some(job) = load(id, true) else {
            continue;
        };
        let error = format!(
            "node {} lost the job's claim: the connection that ran it ended (its coordinator \
             stopped, was killed, or lost the server)",
            job.node.as_deref().unwrap_or("?")
        );
        fail(&job, &error, false);
        rescued += 1;
    }
    rescued
}

/// Does any backend hold the claim lock of `job`?
fn claim_is_held(job: i64) -> bool {
    catalog::as_owner(|| {
        errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_catalog.pg_locks l
                  WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
                    AND l.database OPERATOR(pg_catalog.=)
                        (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
                    AND l.classid OPERATOR(pg_catalog.=) $1::pg_catalog.oid
                    AND l.objid OPERATOR(pg_catalog.=) $2::pg_catalog.oid
                    AND l.objsubid OPERATOR(pg_catalog.=) 2)",
            &[
                (KeySpace::JobClaim.number() as i64).into(),
                (claim_key(job) as u32 as i64).into(),
            ],
        ))
    })
    .unwrap_or(true)
}

/// `herald.callout(job, action, details)`: the coordinator running a claimed `command` job
/// records its OS call as a CALLOUT event (`begin` before the command starts, `end` with
/// its exit code and duration). Only the connection holding the job's claim may.
#[pg_extern(volatile, parallel_unsafe)]
fn callout(job: Option<i64>, action: Option<&str>, details: Option<pgrx::JsonB>) {
    let id = errors::required(job, "job");
    let action = errors::required(action, "action");
    let details = errors::required(details, "details");
    let job = require(id, false);
    require_running_here(&job);
    if !matches!(action, "begin" | "end") {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown CALLOUT action \"{}\"", errors::shown(action)),
            Some("Actions: 'begin', 'end'.".into()),
        );
    }
    let mut details = details.0;
    if let Some(map) = details.as_object_mut() {
        map.insert("job".into(), serde_json::json!(job.id));
        map.insert("type".into(), serde_json::json!(job.r#type));
        map.insert("node".into(), serde_json::json!(job.node));
    }
    let datum = pgrx::JsonB(details)
        .into_datum()
        .unwrap_or(pg_sys::Datum::from(0));
    delivery::publish_system("CALLOUT", action, &job.r#type, datum);
}
