//! Jobs that declare resources: what a type or a job declares, and what a claim does with
//! it. The locks themselves are the locks area's, reached through `model::gate`: a claim
//! takes a due job's resources before it starts the job, or leaves the job waiting in
//! line (not due, `run_after` 'infinity', until the release that lets it in); a job gives
//! them back in whatever state it ends (`lifecycle::transition`).
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::wake_managers_at_commit;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::spi::first;
use crate::model::gate::{self, Granted, Need};

/// Register the jobs side of the gate (from `_PG_init`).
pub fn init() {
    gate::register_granted(granted);
}

/// Resources as declared (`{"printer": 1, ...}`), checked against the resources there are:
/// as stored (NULL for none).
pub fn declared(value: Option<&pgrx::JsonB>) -> Option<serde_json::Value> {
    let needs = parse(value?);
    if needs.is_empty() {
        return None;
    }
    gate::check(&needs);
    Some(gate::to_json(&needs))
}

/// The needs a stored or declared value names; raises on a value that names none.
pub fn parse(value: &pgrx::JsonB) -> Vec<Need> {
    gate::parse(&value.0).unwrap_or_else(|why| {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            why,
            Some("For example resources => '{\"printer\": 1, \"ledger\": 1}'.".into()),
        )
    })
}

/// A job's resources: its type's with its own (NULL for none), checked.
pub fn of_job(of_type: Option<&pgrx::JsonB>, of_job: Option<&pgrx::JsonB>) -> Option<pgrx::JsonB> {
    if of_type.is_none() && of_job.is_none() {
        return None;
    }
    let own = of_job.map(parse).unwrap_or_default();
    if !own.is_empty() {
        gate::check(&own);
    }
    let all = gate::merge(&of_type.map(parse).unwrap_or_default(), &own);
    (!all.is_empty()).then(|| pgrx::JsonB(gate::to_json(&all)))
}

/// A request `job` left in line `since` is next and fits: make the job due, if it still
/// waits, as of when it joined the line (it holds its resources: it comes before jobs of its
/// class that fell due since).
fn granted(job: i64, since: i64) -> Granted {
    let found = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = errors::spi(client.update(
                "SELECT state FROM herald.job WHERE id OPERATOR(pg_catalog.=) $1
                    FOR UPDATE SKIP LOCKED",
                None,
                &[job.into()],
            ));
            rows.into_iter()
                .next()
                .map(|r| r.get::<String>(1).ok().flatten().unwrap_or_default())
        })
    });
    let Some(state) = found else {
        // Locked by a transaction in progress, or gone.
        let exists = catalog::as_owner(|| {
            first::<bool>(
                "SELECT true FROM herald.job WHERE id OPERATOR(pg_catalog.=) $1",
                &[job.into()],
            )
        });
        return if exists.is_some() {
            Granted::Busy
        } else {
            Granted::Gone
        };
    };
    if state != "CREATED" {
        return Granted::Gone;
    }
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "UPDATE herald.job SET run_after = LEAST($2, pg_catalog.clock_timestamp())
              WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'CREATED'
                AND run_after OPERATOR(pg_catalog.=) 'infinity'",
            &[
                job.into(),
                TimestampWithTimeZone::try_from(since).ok().into(),
            ],
        ))
    });
    wake_managers_at_commit();
    Granted::Take
}

/// What a claim may do with a due job that declares resources.
pub enum Claim {
    /// It holds them all: start it.
    Start,
    /// It waits in line for them (it is no longer due until a release lets it in).
    Waits,
    /// They can never be granted as declared: why.
    Never(String),
    /// Not now (another decision on them is in progress): it stays due.
    Later,
}

/// Before a claim starts `job`: take its resources.
pub fn take_for_claim(job: i64, resources: &pgrx::JsonB) -> Claim {
    let needs = match gate::parse(&resources.0) {
        Ok(needs) => needs,
        Err(why) => return Claim::Never(why),
    };
    match gate::take(job, &needs) {
        gate::Taken::Held => Claim::Start,
        gate::Taken::Queued => {
            let waits = catalog::as_owner(|| {
                Spi::connect_mut(|client| {
                    !errors::spi(client.update(
                        "UPDATE herald.job SET run_after = 'infinity'
                          WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'CREATED'
                          RETURNING id",
                        None,
                        &[job.into()],
                    ))
                    .is_empty()
                })
            });
            if !waits {
                // Ended meanwhile (its end could not see the request made here): out of line.
                gate::give_back(job);
            }
            Claim::Waits
        }
        gate::Taken::Refused(why) => Claim::Never(why),
        gate::Taken::Busy => Claim::Later,
    }
}

/// `job` left the states that hold resources (STARTED, FINISHED): give them back.
pub fn give_back(job: i64) {
    gate::give_back(job);
}
