//! Helpers shared by the in-database tests.
use pgrx::prelude::*;

use crate::core::subxact;

pub fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn count(sql: &str) -> i64 {
    one::<i64>(sql).unwrap_or_default()
}

/// Run `sql` in a subtransaction and return the error message, hint and detail it raised.
pub fn error_of(sql: &str) -> String {
    let result = subxact::catch_all(|| {
        Spi::run(sql).ok();
    });
    match result {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => format!(
            "{} | {} | {}",
            e.message,
            e.hint.as_deref().unwrap_or(""),
            e.detail.as_deref().unwrap_or("")
        ),
    }
}

pub fn assert_error(sql: &str, expected: &str) {
    let got = error_of(sql);
    assert!(
        got.contains(expected),
        "{sql}\n  expected error containing: {expected}\n  got: {got}"
    );
}
