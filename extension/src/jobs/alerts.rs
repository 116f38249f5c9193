//! Job alerts: ordinary JOB events (a listener routes them to a queue and a handler).
//! - `WAIT_TIMEOUT`: a job of a full class has run longer than the class's wait_timeout;
//!   the next waiting job may start beside it.
//! - `LONG_RUNNING`: a job has run longer than its class's alert_after.
//!
//! Each fires once per run: its mark is set by a guarded UPDATE (`... IS NULL`), so
//! managers of several nodes checking at once fire it once.
use pgrx::prelude::*;

use super::wake_managers_at_commit;
use crate::core::catalog;
use crate::core::errors;
use crate::delivery;

/// `herald.check_job_alerts()`: fire the alerts that are due; returns how many fired.
#[pg_extern(volatile, parallel_unsafe)]
fn check_job_alerts() -> i32 {
    catalog::require_primary("herald.check_job_alerts()");
    // Two statements: one row may be due for both alerts (posting's defaults are equal),
    // and a statement updates a row once.
    let mut due = fire(include_str!("alerts_wait_timeout.sql"));
    due.extend(fire(include_str!("alerts_long_running.sql")));
    for (action, type_name, details) in &due {
        let datum = pgrx::JsonB(details.0.clone())
            .into_datum()
            .unwrap_or(pg_sys::Datum::from(0));
        delivery::publish_system("JOB", action, type_name, datum);
        if action == "WAIT_TIMEOUT" {
            // The next job of the class may start now.
            wake_managers_at_commit();
        }
    }
    due.len() as i32
}

/// Mark the alerts one statement finds; returns (action, job type, details) of each.
fn fire(sql: &str) -> Vec<(String, String, pgrx::JsonB)> {
    catalog::as_owner(|| {
        errors::spi(Spi::connect_mut(|client| {
            let mut out = Vec::new();
            for r in client.update(sql, None, &[])? {
                out.push((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<pgrx::JsonB>(3)?
                        .unwrap_or(pgrx::JsonB(serde_json::json!({}))),
                ));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        }))
    })
}
