//! Where artefacts are kept (superuser settings, `postgresql.conf` or `ALTER SYSTEM`):
//! - `herald.artefact_inline_limit` (kB, default 1024): artefacts up to this size are kept
//!   in `herald.report_job.content`;
//! - `herald.artefact_directory` (default empty): where larger ones are written, on the
//!   database server, by its OS user. Empty: every artefact is kept in the database
//!   (TOASTed), whatever its size.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

static INLINE_LIMIT_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
static DIRECTORY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Define the settings (from `_PG_init`).
pub fn init() {
    GucRegistry::define_int_guc(
        c"herald.artefact_inline_limit",
        c"Report artefacts up to this size are kept in the database.",
        c"Larger ones go to herald.artefact_directory when it is set.",
        &INLINE_LIMIT_KB,
        0,
        i32::MAX / 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_string_guc(
        c"herald.artefact_directory",
        c"A directory on the database server for report artefacts above the inline limit.",
        c"Empty: every artefact is kept in the database.",
        &DIRECTORY,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// The inline limit in bytes.
pub fn inline_limit() -> i64 {
    INLINE_LIMIT_KB.get() as i64 * 1024
}

/// The artefact directory, if set.
pub fn artefact_directory() -> Option<String> {
    DIRECTORY
        .get()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.trim().is_empty())
}
