//! User-facing errors: every mistake a caller can make becomes a clear `ERROR` with a hint.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raise `ERROR` with an SQLSTATE, a message and an optional hint. Never returns.
/// A caller's argument as error messages show it: at most 60 characters, so that a huge
/// argument is not echoed back in full.
pub fn shown(arg: &str) -> String {
    const MAX: usize = 60;
    match arg.char_indices().nth(MAX) {
        None => arg.to_string(),
        Some((cut, _)) => format!("{}...", &arg[..cut]),
    }
}

pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "herald");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned")
}

/// `ERROR: <what> must not be NULL`.
pub fn not_null(what: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{what} must not be NULL"),
        None,
    )
}

/// Unwrap a nullable SQL argument or raise a clear error naming it.
pub fn required<T>(value: Option<T>, what: &str) -> T {
    value.unwrap_or_else(|| not_null(what))
}

/// Turn an SPI failure into an error (these only happen on internal bugs).
pub fn spi<T>(result: Result<T, pgrx::spi::SpiError>) -> T {
    result.unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("herald internal query failed: {e}"),
            None,
        )
    })
}

/// Raise a warning (used for failing synchronous handlers).
pub fn warning(message: String, detail: Option<String>) {
    let mut report = ErrorReport::new(PgSqlErrorCode::ERRCODE_WARNING, message, "herald");
    if let Some(detail) = detail {
        report = report.set_detail(detail);
    }
    report.report(PgLogLevel::WARNING);
}
