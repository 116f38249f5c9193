//! Statements run once through SPI (no kept plan): the first value of the first row.
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use super::errors;

/// Run `sql` (any statement, an `UPDATE ... RETURNING` included) with `args` and return the
/// first column of its first row; None when it returns no row or NULL. As the current role:
/// callers that need the extension owner wrap it in `catalog::as_owner`.
pub fn first<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    errors::spi(Spi::connect_mut(|client| {
        let rows = client.update(sql, Some(1), args)?;
        Ok::<_, pgrx::spi::SpiError>(match rows.into_iter().next() {
            Some(row) => row.get::<T>(1)?,
            None => None,
        })
    }))
}
