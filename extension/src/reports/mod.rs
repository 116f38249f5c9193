//! Reports, report groups and output records.
//!
//! - [`define`]: `herald.report`, `herald.drop_report`, `herald.output_channel`
//! - [`submit`]: `herald.submit_report`, in the caller's transaction
//! - [`generate`]: the `report` runner: the query as the report's owner, read-only, under
//!   its statement timeout; the artefact stored with its checksum
//! - [`render`]: csv, json, text and html, plain or through a minijinja template
//! - [`pdf`]: pdf, the text rendering set on pages
//! - [`groups`]: `herald.create_report_group`, `herald.seal_group`,
//!   `herald.release_group`, and the exactly-once decision under the group's lock
//! - [`output`]: output records for coordinators: claim, artefacts, record (fenced by
//!   epoch), rescue, operator resolution, the wait for work
//! - [`settings`]: where artefacts are kept
//!
//! A report is a job type (runner `report`): its jobs have the job lifecycle, and the jobs
//! area runs them through [`crate::model::runner`] without knowing this area.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::spi::first;
use crate::listeners::event_types;
use crate::model::runner::{self, Runner};

pub mod define;
pub mod generate;
pub mod groups;
pub mod output;
pub mod pdf;
pub mod render;
pub mod settings;
pub mod submit;

/// Register the `report` runner and the settings (from `_PG_init`).
pub fn init() {
    settings::init();
    runner::register(Runner {
        name: "report",
        run: generate::run,
        moved: |job, state, node| {
            // (A start changes nothing for a group.)
            if state != "STARTED" {
                groups::member_moved(job, state, node);
            }
        },
    });
}

/// The key of a group's lock: its id mod 2^32 (two groups 2^32 ids apart share a lock,
/// which only serializes them).
fn group_key(id: i64) -> i32 {
    id as i32
}

/// The key of an output record's claim: its id mod 2^32.
fn output_key(id: i64) -> i32 {
    id as i32
}

fn is_admin() -> bool {
    event_types::is_admin()
}

/// Raise unless channel `name` exists.
fn require_channel(name: &str) {
    let known = catalog::as_owner(|| {
        first::<bool>(
            "SELECT true FROM herald.output_channel WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        )
    });
    if known.is_none() {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("output channel \"{}\" does not exist", errors::shown(name)),
            Some("A Herald administrator defines channels with herald.output_channel().".into()),
        );
    }
}

/// Group `id`'s state; raises unless it exists and the current user created it (or is a
/// Herald administrator).
fn require_group_owner(id: i64) -> String {
    let found = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT state, created_by::pg_catalog.oid FROM herald.report_group
                  WHERE id OPERATOR(pg_catalog.=) $1",
                None,
                &[id.into()],
            ));
            rows.into_iter().next().map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<pg_sys::Oid>(2)
                        .ok()
                        .flatten()
                        .unwrap_or(pg_sys::InvalidOid),
                )
            })
        })
    });
    let Some((state, creator)) = found else {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("report group {id} does not exist"),
            None,
        );
    };
    if !is_admin() && !catalog::has_privs_of_role(catalog::current_user(), creator) {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for report group {id}"),
            Some(
                "Its creator and Herald administrators may add members, seal or release it.".into(),
            ),
        );
    }
    state
}
