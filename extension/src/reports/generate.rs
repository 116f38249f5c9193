//! Generating a report job's artefact (the `report` runner's work, run by `herald.run_job`
//! on a coordinator's runner connection): the report's query runs as the report's owner,
//! in a security-restricted context, read-only (`transaction_read_only` for the query's
//! duration) and under the report's statement timeout, with the job's params bound as
//! `$1`. Its rows are rendered (`render`) and the artefact is stored with its size and
//! sha256: in the row up to `herald.artefact_inline_limit`, beyond that in
//! `herald.artefact_directory` when one is set.
//!
//! A query that errors or times out, a template with errors, params of the wrong type:
//! each ends the job in FINISHERROR with the reason (the work itself failed; running it
//! again would fail the same way).
use pgrx::datum::Interval;
use pgrx::prelude::*;
use sha2::{Digest, Sha256};
use std::ffi::{CStr, CString};
use std::time::Instant;

use super::pdf;
use super::render;
use super::settings;
use crate::core::catalog;
use crate::core::errors;
use crate::core::ffi;
use crate::core::subxact;
use crate::model::runner::{JobRun, RunFailed};

/// What a report is, as its job needs it.
struct Definition {
    report: String,
    query: String,
    format: String,
    template: Option<String>,
    timeout: Interval,
}

fn failed(message: String) -> RunFailed {
    RunFailed {
        message,
        finished: true,
    }
}

/// The `report` runner: generate and store the artefact of report job `job`.
pub fn run(job: &JobRun) -> Result<Option<serde_json::Value>, RunFailed> {
    let def = definition(job.id)?;
    if !job.params.is_object() {
        return Err(failed("report params must be a JSON object".into()));
    }
    let timeout_ms = interval_ms(&def.timeout);
    let started = Instant::now();
    let params = pgrx::JsonB(job.params.clone());
    let mut artefact = None;
    let armed = ffi::arm_statement_timeout(timeout_ms);
    let outcome = subxact::catch_all(|| {
        artefact = Some(catalog::as_restricted(job.owner, || {
            read_only();
            let produced = produce(&def, &params);
            // A timeout that fired after the query (while rendering) is acted on here,
            // where it is still this report's.
            pg_sys::check_for_interrupts!();
            produced
        }));
    });
    ffi::restore_statement_timeout(armed);
    let (content, rows) = match (outcome, artefact) {
        (Ok(()), Some(Ok(a))) => a,
        (Ok(()), Some(Err(template_error))) => {
            return Err(failed(format!(
                "report \"{}\": template error: {template_error}",
                def.report
            )))
        }
        (Ok(()), None) => return Err(failed("report produced nothing".into())),
        (Err(e), _) if e.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED => {
            if started.elapsed().as_millis() as i64 >= timeout_ms as i64 {
                return Err(failed(format!(
                    "report \"{}\": the query ran past its statement_timeout of {} ms and was cancelled",
                    def.report, timeout_ms
                )));
            }
            // Not ours (the job was aborted, the coordinator stops): the caller's cancel.
            errors::raise(e.code, e.message, e.hint)
        }
        (Err(e), _) => {
            return Err(failed(format!(
                "report \"{}\": the query failed: {}",
                def.report, e.message
            )))
        }
    };
    let stored = store(job.id, &def, content, rows);
    Ok(Some(stored))
}

fn interval_ms(i: &Interval) -> i32 {
    let micros = i.micros() + (i.days() as i64 + i.months() as i64 * 30) * 86_400_000_000;
    (micros / 1000).clamp(1, i32::MAX as i64) as i32
}

fn definition(job: i64) -> Result<Definition, RunFailed> {
    let found = catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = errors::spi(client.select(
                "SELECT r.name, r.query, r.format, r.template, r.statement_timeout
                   FROM herald.report_job j
                   JOIN herald.report r ON r.name OPERATOR(pg_catalog.=) j.report
                  WHERE j.job OPERATOR(pg_catalog.=) $1",
                None,
                &[job.into()],
            ));
            let row = rows.into_iter().next()?;
            Some(Definition {
                report: row.get::<String>(1).ok().flatten()?,
                query: row.get::<String>(2).ok().flatten()?,
                format: row.get::<String>(3).ok().flatten()?,
                template: row.get::<String>(4).ok().flatten(),
                timeout: row.get::<Interval>(5).ok().flatten()?,
            })
        })
    });
    found.ok_or_else(|| {
        failed(format!(
            "job {job} is not a report job, or its report was dropped"
        ))
    })
}

/// Make the rest of the current GUC nesting level read-only (`as_restricted` opened one;
/// it, or the subtransaction's abort, puts the setting back).
fn read_only() {
    // SAFETY: sets a GUC at the current nesting level with valid constant strings; turning
    // transaction_read_only on is always allowed.
    unsafe {
        pg_sys::set_config_option(
            c"transaction_read_only".as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// Run the query and render its rows: the artefact and the number of rows, or a
/// template's error. Query errors raise.
fn produce(def: &Definition, params: &pgrx::JsonB) -> Result<(Vec<u8>, i64), String> {
    let query = def.query.as_str();
    match (def.format.as_str(), def.template.as_deref()) {
        ("csv", _) => {
            let mut csv = render::Csv::default();
            let rows = cells(query, params, |row| match row {
                Row::Header(columns) => csv.row(columns.iter().map(|c| Some(c.as_str()))),
                Row::Cells(cells) => csv.row(cells.iter().copied()),
            });
            Ok((csv.out, rows))
        }
        ("json", _) => {
            let mut out = b"[".to_vec();
            let rows = json_rows(query, params, |i, json| {
                out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
                out.extend_from_slice(json.as_bytes());
            });
            out.extend_from_slice(b"\n]\n");
            Ok((out, rows))
        }
        (format, Some(template)) => {
            let mut values = Vec::new();
            let rows = json_rows(query, params, |_, json| {
                values.push(serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
            });
            let text =
                render::template(template, format == "html", &def.report, values, &params.0)?;
            Ok((finish(format, text), rows))
        }
        (format, None) => {
            let mut columns = Vec::new();
            let mut table = Vec::new();
            let rows = cells(query, params, |row| match row {
                Row::Header(c) => columns = c.to_vec(),
                Row::Cells(cells) => {
                    table.push(cells.iter().map(|c| c.map(str::to_string)).collect())
                }
            });
            let text = if format == "html" {
                render::html_table(&def.report, &columns, &table)
            } else {
                render::text_table(&columns, &table)
            };
            Ok((finish(format, text), rows))
        }
    }
}

/// The artefact of a text rendering: the text, or for `pdf` the text set on pages.
fn finish(format: &str, text: String) -> Vec<u8> {
    if format == "pdf" {
        pdf::pdf(&text)
    } else {
        text.into_bytes()
    }
}

enum Row<'a> {
    Header(&'a [String]),
    Cells(&'a [Option<&'a str>]),
}

/// Rows fetched at a time; their values' memory is freed after each batch.
const BATCH: i64 = 1000;

/// Run `query` with `$1` = `params` and hand the header, then each row as text cells (the
/// types' output functions, as COPY writes them), to `each`; the number of rows.
fn cells(query: &str, params: &pgrx::JsonB, mut each: impl FnMut(Row)) -> i64 {
    let mut count = 0;
    cursor(query, params, |tuptable, n, first| {
        // SAFETY: `tuptable` holds `n` rows of its descriptor, valid until it is freed by
        // `cursor` after this call; each row is deformed into `values`/`nulls` (natts long,
        // as heap_deform_tuple requires) and each value converted by its type's output
        // function (fmgr infos made once per batch; the strings are palloc'd in the batch's
        // memory context, which outlives their use in `each`).
        unsafe {
            let desc = (*tuptable).tupdesc;
            let natts = (*desc).natts as usize;
            let attrs = (*desc).attrs.as_slice(natts);
            if first {
                let columns: Vec<String> = attrs
                    .iter()
                    .map(|a| {
                        CStr::from_ptr(a.attname.data.as_ptr())
                            .to_string_lossy()
                            .into_owned()
                    })
                    .collect();
                each(Row::Header(&columns));
            }
            let mut infos: Vec<pg_sys::FmgrInfo> = Vec::with_capacity(natts);
            for att in attrs {
                let mut func = pg_sys::InvalidOid;
                let mut varlena = false;
                pg_sys::getTypeOutputInfo(att.atttypid, &mut func, &mut varlena);
                let mut info: pg_sys::FmgrInfo = std::mem::zeroed();
                pg_sys::fmgr_info(func, &mut info);
                infos.push(info);
            }
            let mut strs: Vec<Option<&str>> = Vec::with_capacity(natts);
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![false; natts];
            for r in 0..n {
                let tuple = *(*tuptable).vals.add(r);
                // One pass over the tuple for all its columns.
                pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                strs.clear();
                for (c, info) in infos.iter_mut().enumerate() {
                    strs.push((!nulls[c]).then(|| {
                        let p = pg_sys::OutputFunctionCall(info, values[c]);
                        CStr::from_ptr(p).to_str().unwrap_or("")
                    }));
                }
                each(Row::Cells(&strs));
                count += 1;
            }
        }
    });
    count
}

/// Run `query` with `$1` = `params` and hand each row as a JSON object's text to `each`;
/// the number of rows.
fn json_rows(query: &str, params: &pgrx::JsonB, mut each: impl FnMut(i64, &str)) -> i64 {
    let wrapped = format!("SELECT pg_catalog.to_json(q)::text FROM ({query}\n) q");
    let mut count = 0;
    cursor(&wrapped, params, |tuptable, n, _| {
        // SAFETY: as in `cells`: `n` rows of one text column.
        unsafe {
            let desc = (*tuptable).tupdesc;
            for r in 0..n {
                let tuple = *(*tuptable).vals.add(r);
                let mut isnull = false;
                let value = pg_sys::heap_getattr(tuple, 1, desc, &mut isnull);
                let text = if isnull {
                    "null".to_string()
                } else {
                    String::from_datum(value, false).unwrap_or_default()
                };
                each(count, &text);
                count += 1;
            }
        }
    });
    count
}

/// Open a cursor on `query` (`$1` jsonb = `params`) and hand each batch of rows to `batch`
/// (tuple table, rows, first batch?), inside a memory context reset after each batch.
fn cursor(
    query: &str,
    params: &pgrx::JsonB,
    mut batch: impl FnMut(*mut pg_sys::SPITupleTable, usize, bool),
) {
    let query = CString::new(query).unwrap_or_else(|_| {
        errors::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a report query must not contain NUL bytes",
            None,
        )
    });
    let params = pgrx::JsonB(params.0.clone())
        .into_datum()
        .unwrap_or(pg_sys::Datum::from(0));
    Spi::connect(|_client| {
        // SAFETY: SPI is connected for the closure. SPI_prepare raises on a query that does
        // not parse or plan; the portal is read-only and closed here; each batch's tuple
        // table is freed after `batch` has read it, and whatever `batch` allocated goes with
        // the batch context, which is deleted at the end.
        unsafe {
            let mut types = [pg_sys::JSONBOID];
            let plan = pg_sys::SPI_prepare(query.as_ptr(), 1, types.as_mut_ptr());
            if plan.is_null() || !pg_sys::SPI_is_cursor_plan(plan) {
                errors::raise(
                    PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                    "a report query must return rows (a SELECT)",
                    None,
                );
            }
            let mut values = [params];
            let nulls = [b' ' as std::ffi::c_char];
            let portal = pg_sys::SPI_cursor_open(
                std::ptr::null(),
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                true,
            );
            let context = pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"herald report rows".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let mut first = true;
            loop {
                pg_sys::SPI_cursor_fetch(portal, true, BATCH as std::ffi::c_long);
                let n = pg_sys::SPI_processed as usize;
                let tuptable = pg_sys::SPI_tuptable;
                pg_sys::check_for_interrupts!();
                if !tuptable.is_null() && (first || n > 0) {
                    let old = pg_sys::MemoryContextSwitchTo(context);
                    batch(tuptable, n, first);
                    pg_sys::MemoryContextSwitchTo(old);
                    pg_sys::MemoryContextReset(context);
                }
                first = false;
                if !tuptable.is_null() {
                    pg_sys::SPI_freetuptable(tuptable);
                }
                if n == 0 {
                    break;
                }
            }
            pg_sys::MemoryContextDelete(context);
            pg_sys::SPI_cursor_close(portal);
            pg_sys::SPI_freeplan(plan);
        }
    })
}

/// Store the artefact of `job` with its checksum and size; what the job's result says of
/// it.
fn store(job: i64, def: &Definition, content: Vec<u8>, rows: i64) -> serde_json::Value {
    let checksum = hex(&Sha256::digest(&content));
    let size = content.len() as i64;
    let path = match settings::artefact_directory() {
        Some(dir) if size > settings::inline_limit() => {
            Some(write_file(&dir, job, &def.format, &content))
        }
        _ => None,
    };
    let inline = if path.is_none() { Some(content) } else { None };
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "UPDATE herald.report_job r
                SET format = $2, content = $3, path = $4, size = $5, checksum = $6, rows = $7,
                    generated_at = pg_catalog.clock_timestamp(),
                    generated_by = (SELECT j.node FROM herald.job j WHERE j.id OPERATOR(pg_catalog.=) $1)
              WHERE r.job OPERATOR(pg_catalog.=) $1",
            &[
                job.into(),
                def.format.as_str().into(),
                inline.into(),
                path.clone().into(),
                size.into(),
                checksum.as_str().into(),
                rows.into(),
            ],
        ))
    });
    serde_json::json!({
        "report": def.report,
        "format": def.format,
        "size": size,
        "rows": rows,
        "checksum": checksum,
        "path": path,
    })
}

/// Write a large artefact into the artefact directory atomically (a temporary file, then
/// rename); its path.
fn write_file(dir: &str, job: i64, format: &str, content: &[u8]) -> String {
    let path = std::path::Path::new(dir).join(format!("job-{job}.{format}"));
    let temp = std::path::Path::new(dir).join(format!(".job-{job}.{format}.tmp"));
    let written = std::fs::write(&temp, content).and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = written {
        errors::raise(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not write artefact {}: {e}", path.display()),
            Some("herald.artefact_directory must be a directory the server may write.".into()),
        );
    }
    path.to_string_lossy().into_owned()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
