//! Plans of Herald's internal statements, prepared once per backend, kept, and always
//! generic (`CURSOR_OPT_GENERIC_PLAN`): these statements are executed with new parameters
//! on every lookup, and a custom plan per execution would cost more than the execution.
//!
//! The plan cache revalidates kept plans after DDL on the tables they use (and re-resolves
//! the schema-qualified names), so a kept plan stays correct across `ALTER TABLE` and
//! `DROP/CREATE EXTENSION`. Callers must be connected to SPI (they hold a `SpiClient`).
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::HashMap;

use super::errors::raise;

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
    /// Plans of statements built at run time (calls of user functions), by their text.
    static BUILT: RefCell<HashMap<String, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// At most this many plans of built statements are kept; beyond, all are freed.
const MAX_BUILT: usize = 256;

/// The rows an execution returned; valid while the SPI connection lasts.
pub struct Rows {
    table: *mut pg_sys::SPITupleTable,
    len: usize,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Column `col` (1-based) of row `row` (0-based). Pass-through types (`JsonbDatum`)
    /// point into the tuple table.
    pub fn get<T: FromDatum>(&self, row: usize, col: usize) -> Option<T> {
        assert!(
            row < self.len && !self.table.is_null(),
            "row {row} of {}",
            self.len
        );
        // SAFETY: `row` is below SPI_processed (asserted above), so `vals[row]` is a tuple of
        // the table, described by its `tupdesc`; `col` out of range makes SPI return NULL.
        unsafe {
            let tuple = *(*self.table).vals.add(row);
            let desc = (*self.table).tupdesc;
            let mut is_null = false;
            let datum = pg_sys::SPI_getbinval(tuple, desc, col as i32, &mut is_null);
            let typoid = pg_sys::SPI_gettypeid(desc, col as i32);
            T::from_polymorphic_datum(datum, is_null, typoid)
        }
    }
}

/// Execute `sql` (a `'static` string, the key of its kept plan) with parameters of the
/// given types. Runs as a read-write statement, so each execution takes a fresh snapshot
/// (in READ COMMITTED; the transaction's snapshot in REPEATABLE READ and SERIALIZABLE).
pub fn execute(
    connected: &pgrx::spi::SpiClient<'_>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[Option<pg_sys::Datum>],
) -> Rows {
    run(connected, sql, types, args, false)
}

/// [`execute`] a read-only query with the latest snapshot, whatever the isolation level:
/// what is committed now (and this transaction's own changes), the way PostgreSQL reads
/// its catalogs. For caches that outlive the transaction.
pub fn execute_latest(
    connected: &pgrx::spi::SpiClient<'_>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[Option<pg_sys::Datum>],
) -> Rows {
    run(connected, sql, types, args, true)
}

/// [`execute`] a statement built at run time (the call of a user function, whose name
/// is part of the text); its plan is kept by its text. Errors the statement raises
/// propagate.
pub fn execute_built(
    connected: &pgrx::spi::SpiClient<'_>,
    sql: &str,
    types: &[pg_sys::Oid],
    args: &[Option<pg_sys::Datum>],
) -> Rows {
    assert_eq!(types.len(), args.len(), "argument count of: {sql}");
    let plan = BUILT.with(|built| {
        let mut built = built.borrow_mut();
        if let Some(plan) = built.get(sql) {
            return *plan;
        }
        if built.len() >= MAX_BUILT {
            for (_, plan) in built.drain() {
                // SAFETY: a kept plan of this map, freed once and forgotten.
                unsafe { pg_sys::SPI_freeplan(plan) };
            }
        }
        let plan = prepare(sql, types);
        built.insert(sql.to_string(), plan);
        plan
    });
    execute_plan(connected, plan, args, false)
}

/// Prepare and keep a generic plan of `sql`.
fn prepare(sql: &str, types: &[pg_sys::Oid]) -> pg_sys::SPIPlanPtr {
    // SAFETY: `text` and `types` outlive the call; the caller is connected to SPI (it
    // holds a SpiClient), which SPI_prepare_cursor and SPI_keepplan require.
    unsafe {
        let text = std::ffi::CString::new(sql).expect("SQL without NUL");
        let mut types = types.to_vec();
        let plan = pg_sys::SPI_prepare_cursor(
            text.as_ptr(),
            types.len() as i32,
            types.as_mut_ptr(),
            pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
        );
        if plan.is_null() {
            let code = pg_sys::SPI_result;
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("herald could not prepare an internal statement (SPI code {code})"),
                None,
            );
        }
        pg_sys::SPI_keepplan(plan);
        plan
    }
}

fn run(
    connected: &pgrx::spi::SpiClient<'_>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[Option<pg_sys::Datum>],
    latest: bool,
) -> Rows {
    assert_eq!(types.len(), args.len(), "argument count of: {sql}");
    let plan = PLANS.with(|plans| {
        *plans
            .borrow_mut()
            .entry(sql)
            .or_insert_with(|| prepare(sql, types))
    });
    execute_plan(connected, plan, args, latest)
}

fn execute_plan(
    _connected: &pgrx::spi::SpiClient<'_>,
    plan: pg_sys::SPIPlanPtr,
    args: &[Option<pg_sys::Datum>],
    latest: bool,
) -> Rows {
    let mut values: Vec<pg_sys::Datum> = args
        .iter()
        .map(|a| a.unwrap_or(pg_sys::Datum::from(0)))
        .collect();
    let nulls: Vec<std::ffi::c_char> = args
        .iter()
        .map(|a| if a.is_some() { b' ' } else { b'n' } as std::ffi::c_char)
        .collect();
    // SAFETY: `plan` is a kept plan with `values.len()` parameters of the declared types
    // (asserted by the callers), `nulls` has one flag per value, and SPI is connected. With
    // `latest`, SPI pushes (a copy of) the latest snapshot for the query's duration.
    unsafe {
        let rc = if latest {
            pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                true,
                false,
                0,
            )
        } else {
            pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0)
        };
        if rc < 0 {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("herald internal statement failed (SPI code {rc})"),
                None,
            );
        }
        Rows {
            table: pg_sys::SPI_tuptable,
            len: pg_sys::SPI_processed as usize,
        }
    }
}
