//! Inserting job rows into `herald.job` directly: a heap insert plus index entries, without
//! an executor round, as `delivery::store` does for events. A submit is on the
//! application's write path, and the statement's setup (its projection of every column,
//! its CHECK constraints read back from their stored form, its partial indexes' predicates)
//! cost more than the insert itself.
//!
//! What a statement would work out per row is worked out once per backend, from the table
//! as it is, into a [`Layout`]: the columns a submit supplies, the defaults of the others
//! (each must fold to a constant: `'CREATED'`, `0`, NULL), and, on a row of those constants,
//! the table's CHECK constraints (each must hold) and the predicates of its partial indexes
//! (which ones a new job enters). A table that does not fit (a trigger or rule, a CHECK
//! or index predicate on a supplied column or not immutable, an index that is not a plain
//! btree or is still being built, forced row security, a default that is not a constant,
//! a column of another type or a domain, a partition) gets an INSERT statement instead,
//! which does everything a statement does. A change to the table (relcache invalidation) forgets
//! the layout.
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CStr;
use std::rc::Rc;

use crate::core::catalog;
use crate::core::datum::JsonbDatum;
use crate::core::ffi;
use crate::core::invalidation::{self, Scope};
use crate::core::plans;
use crate::core::relation::OpenTable;

/// A job to insert (its type checked and its submitter allowed).
pub struct NewJob<'a> {
    pub type_name: &'a str,
    pub class: &'a str,
    pub params: JsonbDatum,
    pub concurrency_key: Option<&'a str>,
    pub notify_email: Option<&'a str>,
    pub submitted_by: pg_sys::Oid,
    pub run_after: Option<TimestampWithTimeZone>,
    /// A jsonb datum: `{"resource": count, ...}`.
    pub resources: Option<JsonbDatum>,
}

/// Insert `job`; its id.
pub fn insert(job: &NewJob) -> i64 {
    let table = OpenTable::open(catalog::relation(c"job"), pg_sys::RowExclusiveLock);
    // (Opening the table processed pending invalidations: the layout describes it as it is.)
    let layout = Layout::of(&table);
    let Some(direct) = &layout.direct else {
        drop(table);
        return insert_with_statement(job);
    };
    let id = ffi::nextval(direct.id_sequence);
    // SAFETY: a backend global, set when the transaction started.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let run_after = job
        .run_after
        .and_then(|t| t.into_datum())
        .unwrap_or(pg_sys::Datum::from(now));
    // SAFETY: `Direct::insert` follows the rules of `ffi::guarded`; `table` stays open across
    // the call and `direct` was built for it.
    unsafe {
        ffi::guarded(|| direct.insert(table.rel(), job, id, pg_sys::Datum::from(now), run_after))
    };
    id
}

/// The general way (see the module documentation): an INSERT statement, run as the
/// extension owner.
fn insert_with_statement(job: &NewJob) -> i64 {
    use pg_sys::{JSONBOID, OIDOID, TEXTOID, TIMESTAMPTZOID};
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(
                client,
                "INSERT INTO herald.job (type, class, params, concurrency_key, notify_email,
                                         submitted_by, run_after, resources)
                 VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole,
                         COALESCE($7, pg_catalog.now()), $8)
                 RETURNING id",
                &[
                    TEXTOID,
                    TEXTOID,
                    JSONBOID,
                    TEXTOID,
                    TEXTOID,
                    OIDOID,
                    TIMESTAMPTZOID,
                    JSONBOID,
                ],
                &[
                    job.type_name.into_datum(),
                    job.class.into_datum(),
                    job.params.into_datum(),
                    job.concurrency_key.into_datum(),
                    job.notify_email.into_datum(),
                    job.submitted_by.into_datum(),
                    job.run_after.into_datum(),
                    job.resources.into_datum(),
                ],
            );
            rows.get::<i64>(0, 1)
                .expect("INSERT ... RETURNING returns the id")
        })
    })
}

/// Where a column's value comes from.
#[derive(Clone, Copy)]
enum Source {
    Id,
    Type,
    Class,
    Params,
    ConcurrencyKey,
    NotifyEmail,
    SubmittedBy,
    SubmittedAt,
    RunAfter,
    Resources,
    /// The column's default, a constant (NULL if it has none); by-reference values live
    /// in the layout's memory context.
    Constant(pg_sys::Datum, bool),
}

impl Source {
    /// The type a supplied column must have for the direct way.
    fn type_oid(self) -> pg_sys::Oid {
        match self {
            Source::Id => pg_sys::INT8OID,
            Source::Type | Source::Class | Source::ConcurrencyKey | Source::NotifyEmail => {
                pg_sys::TEXTOID
            }
            Source::Params | Source::Resources => pg_sys::JSONBOID,
            Source::SubmittedBy => pg_sys::REGROLEOID,
            Source::SubmittedAt | Source::RunAfter => pg_sys::TIMESTAMPTZOID,
            Source::Constant(..) => pg_sys::InvalidOid,
        }
    }

    /// The source of a supplied column, by name.
    fn supplied(name: &[u8]) -> Option<Source> {
        Some(match name {
            b"id" => Source::Id,
            b"type" => Source::Type,
            b"class" => Source::Class,
            b"params" => Source::Params,
            b"concurrency_key" => Source::ConcurrencyKey,
            b"notify_email" => Source::NotifyEmail,
            b"submitted_by" => Source::SubmittedBy,
            b"submitted_at" => Source::SubmittedAt,
            b"run_after" => Source::RunAfter,
            b"resources" => Source::Resources,
            _ => return None,
        })
    }
}

/// How job rows are made in this backend.
struct Layout {
    /// None: the table does not fit; rows are inserted with a statement.
    direct: Option<Direct>,
    /// Where the index descriptions and constants live; deleted with the layout.
    context: pg_sys::MemoryContext,
}

struct Direct {
    /// One source per attribute, dropped columns included (as NULL constants).
    sources: Vec<Source>,
    id_sequence: pg_sys::Oid,
    /// The indexes a new job enters (those whose predicate holds for it).
    indexes: Vec<(pg_sys::Oid, *mut pg_sys::IndexInfo)>,
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: the context was created for this layout alone, and nothing else points
        // into it once the layout is gone.
        unsafe { pg_sys::MemoryContextDelete(self.context) };
    }
}

thread_local! {
    static LAYOUT: RefCell<Option<(pg_sys::Oid, Rc<Layout>)>> = const { RefCell::new(None) };
}

/// Hook the layout into relcache invalidations (from `_PG_init`): a change of the job
/// table (its columns, defaults, constraints, indexes, triggers, policies) forgets it. One
/// still in use is freed when its user is done.
pub fn init() {
    invalidation::register(|scope| {
        let stale = LAYOUT.with(|c| match c.try_borrow().as_deref() {
            Ok(Some((relid, _))) => scope == Scope::All || scope == Scope::Relation(*relid),
            _ => false,
        });
        if stale {
            let old = LAYOUT.with(|c| c.try_borrow_mut().map(|mut c| c.take()));
            drop(old);
        }
    });
}

impl Layout {
    fn of(table: &OpenTable) -> Rc<Layout> {
        // SAFETY: an open relation's descriptor is valid while it is open.
        let relid = unsafe { (*table.rel()).rd_id };
        if let Some(layout) = LAYOUT.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(r, _)| *r == relid)
                .map(|(_, l)| l.clone())
        }) {
            return layout;
        }
        let layout = Rc::new(Layout::build(table));
        LAYOUT.with(|c| *c.borrow_mut() = Some((relid, layout.clone())));
        layout
    }

    fn build(table: &OpenTable) -> Layout {
        // SAFETY: a memory context of the backend's life, deleted by `Drop`.
        let context = unsafe {
            pg_sys::AllocSetContextCreateExtended(
                pg_sys::TopMemoryContext,
                c"herald job table layout".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            )
        };
        let mut layout = Layout {
            direct: None,
            context,
        };
        // SAFETY: the table is open; what `direct` builds is allocated in `context`.
        layout.direct = unsafe { Direct::build(table.rel(), context) };
        layout
    }
}

impl Direct {
    /// The direct way for the open table `rel`, if it fits (see the module documentation).
    ///
    /// # Safety
    /// `rel` is open; `context` lives as long as the result.
    unsafe fn build(rel: pg_sys::Relation, context: pg_sys::MemoryContext) -> Option<Direct> {
        // SAFETY: `rel` is open, so its descriptor, constraints, trigger description and
        // index list are valid. Defaults, constants and index descriptions are made in
        // `context`. The executor state used to test constraints and predicates on the
        // constant row is made and freed here.
        unsafe {
            let form = &*(*rel).rd_rel;
            if !(*rel).trigdesc.is_null()
                || form.relhasrules
                || form.relispartition
                || (form.relrowsecurity && form.relforcerowsecurity)
            {
                return None;
            }
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let attrs = (*desc).attrs.as_slice(natts);
            // (Switched back when this returns or unwinds: the layout's context is deleted
            // if building it fails, and must not be current then.)
            let _in_context = InContext::switch_to(context);
            let mut sources = Vec::with_capacity(natts);
            let mut id_sequence = pg_sys::InvalidOid;
            let mut fits = true;
            for att in attrs {
                let name = CStr::from_ptr(att.attname.data.as_ptr()).to_bytes();
                let supplied = Source::supplied(name);
                if att.attisdropped {
                    sources.push(Source::Constant(pg_sys::Datum::from(0), true));
                    continue;
                }
                // A supplied column of another type than Herald's (or a domain, whose
                // constraints a statement would check) is for the statement.
                let typed = match supplied {
                    Some(source) => att.atttypid == source.type_oid() && att.atttypmod == -1,
                    None => {
                        pg_sys::get_typtype(att.atttypid)
                            != pg_sys::TYPTYPE_DOMAIN as std::ffi::c_char
                    }
                };
                if !typed {
                    fits = false;
                    break;
                }
                let source = match supplied {
                    _ if att.attgenerated != 0 => {
                        fits = false;
                        break;
                    }
                    Some(Source::Id) => {
                        if att.attidentity == 0 {
                            fits = false;
                            break;
                        }
                        id_sequence = pg_sys::getIdentitySequence(form_oid(rel), att.attnum, false);
                        Source::Id
                    }
                    Some(Source::ConcurrencyKey | Source::NotifyEmail) if att.attnotnull => {
                        fits = false;
                        break;
                    }
                    Some(source) => source,
                    None if att.attidentity != 0 => {
                        fits = false;
                        break;
                    }
                    None if att.atthasdef => {
                        let expr = pg_sys::build_column_default(rel, att.attnum as i32);
                        let folded = if expr.is_null() {
                            expr
                        } else {
                            pg_sys::expression_planner(expr.cast()).cast::<pg_sys::Node>()
                        };
                        if folded.is_null() || (*folded).type_ != pg_sys::NodeTag::T_Const {
                            fits = false;
                            break;
                        }
                        let constant = &*folded.cast::<pg_sys::Const>();
                        if constant.constisnull && att.attnotnull {
                            fits = false;
                            break;
                        }
                        Source::Constant(constant.constvalue, constant.constisnull)
                    }
                    None if att.attnotnull => {
                        fits = false;
                        break;
                    }
                    None => Source::Constant(pg_sys::Datum::from(0), true),
                };
                sources.push(source);
            }
            if fits && id_sequence != pg_sys::InvalidOid {
                Constant::test(rel, &sources).map(|indexes| Direct {
                    sources,
                    id_sequence,
                    indexes,
                })
            } else {
                None
            }
        }
    }

    /// Form the job's tuple and insert it with its index entries (unique ones checked).
    ///
    /// # Safety
    /// Inside `ffi::guarded` (see its rules), with `rel` open and described by `self`.
    unsafe fn insert(
        &self,
        rel: pg_sys::Relation,
        job: &NewJob,
        id: i64,
        now: pg_sys::Datum,
        run_after: pg_sys::Datum,
    ) {
        // SAFETY: the arrays are palloc'd with one slot per attribute; the tuple is formed
        // for `rel`'s own descriptor; each index is opened and closed around its entry, and
        // its key columns are plain attributes (checked when the layout was built), so
        // their values are in the arrays; only unguarded functions are called, as
        // `ffi::guarded` requires.
        unsafe {
            let natts = self.sources.len();
            let values =
                ffi::palloc(natts * std::mem::size_of::<pg_sys::Datum>()) as *mut pg_sys::Datum;
            let nulls = ffi::palloc(natts) as *mut bool;
            let text = |s: Option<&str>| s.map(|s| ffi::text_datum(s));
            for (i, source) in self.sources.iter().enumerate() {
                let value = match *source {
                    Source::Id => Some(pg_sys::Datum::from(id)),
                    Source::Type => text(Some(job.type_name)),
                    Source::Class => text(Some(job.class)),
                    Source::Params => Some(job.params.0),
                    Source::ConcurrencyKey => text(job.concurrency_key),
                    Source::NotifyEmail => text(job.notify_email),
                    Source::SubmittedBy => Some(pg_sys::Datum::from(job.submitted_by)),
                    Source::SubmittedAt => Some(now),
                    Source::RunAfter => Some(run_after),
                    Source::Resources => job.resources.map(|r| r.0),
                    Source::Constant(value, isnull) => (!isnull).then_some(value),
                };
                *values.add(i) = value.unwrap_or(pg_sys::Datum::from(0));
                *nulls.add(i) = value.is_none();
            }
            let tuple = ffi::heap_form_tuple((*rel).rd_att, values, nulls);
            ffi::simple_heap_insert(rel, tuple);
            for &(oid, info) in &self.indexes {
                let index = ffi::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                let nkeys = (*info).ii_NumIndexAttrs as usize;
                let mut key_values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
                let mut key_nulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
                for k in 0..nkeys {
                    let attno = (*info).ii_IndexAttrNumbers[k] as usize;
                    key_values[k] = *values.add(attno - 1);
                    key_nulls[k] = *nulls.add(attno - 1);
                }
                let check = if (*(*index).rd_index).indisunique {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                } else {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                };
                ffi::index_insert(
                    index,
                    key_values.as_mut_ptr(),
                    key_nulls.as_mut_ptr(),
                    &mut (*tuple).t_self,
                    rel,
                    check,
                    info,
                );
                ffi::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
            ffi::heap_freetuple(tuple);
        }
    }
}

/// The current memory context switched to another until dropped (also when unwinding).
struct InContext {
    old: pg_sys::MemoryContext,
}

impl InContext {
    /// # Safety
    /// `context` is a valid memory context that outlives the guard.
    unsafe fn switch_to(context: pg_sys::MemoryContext) -> InContext {
        // SAFETY: as the caller promises.
        let old = unsafe { pg_sys::MemoryContextSwitchTo(context) };
        InContext { old }
    }
}

impl Drop for InContext {
    fn drop(&mut self) {
        // SAFETY: `old` was current when the guard was made and is a live context (the
        // caller's, which outlives this call).
        unsafe { pg_sys::MemoryContextSwitchTo(self.old) };
    }
}

fn form_oid(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: an open relation's descriptor.
    unsafe { (*rel).rd_id }
}

/// The row every direct insert shares: the constants, with the supplied columns unknown.
struct Constant;

impl Constant {
    /// Test the table's CHECK constraints and index predicates on the constant row; the
    /// indexes a new job enters, or None if something depends on a supplied column, an
    /// index cannot take direct entries, or a constraint fails (the statement then says so).
    ///
    /// # Safety
    /// `rel` is open; `sources` describes its attributes; the current memory context is
    /// the layout's.
    unsafe fn test(
        rel: pg_sys::Relation,
        sources: &[Source],
    ) -> Option<Vec<(pg_sys::Oid, *mut pg_sys::IndexInfo)>> {
        // SAFETY: as the caller promises; the executor state is freed before returning, and
        // expressions are evaluated only on the virtual slot filled here, after checking
        // that they read nothing but constant columns.
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            let slot = pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &pg_sys::TTSOpsVirtual);
            for (i, source) in sources.iter().enumerate() {
                let (value, isnull) = match *source {
                    Source::Constant(value, isnull) => (value, isnull),
                    _ => (pg_sys::Datum::from(0), true),
                };
                *(*slot).tts_values.add(i) = value;
                *(*slot).tts_isnull.add(i) = isnull;
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            let econtext = pg_sys::CreateExprContext(estate);
            (*econtext).ecxt_scantuple = slot;
            let constant_only = |node: *mut pg_sys::Node| {
                let mut attnos: *mut pg_sys::Bitmapset = std::ptr::null_mut();
                pg_sys::pull_varattnos(node, 1, &mut attnos);
                let mut member = -1;
                loop {
                    member = pg_sys::bms_next_member(attnos, member);
                    if member < 0 {
                        return true;
                    }
                    let attno = member + pg_sys::FirstLowInvalidHeapAttributeNumber;
                    let constant = attno >= 1
                        && matches!(sources.get(attno as usize - 1), Some(Source::Constant(..)));
                    if !constant {
                        return false;
                    }
                }
            };
            // Evaluate a prepared expression on the constant row: (value, isnull).
            let eval = |state: *mut pg_sys::ExprState| -> (bool, bool) {
                if state.is_null() {
                    return (true, false);
                }
                let mut isnull = false;
                let evalfunc = (*state).evalfunc.expect("a prepared expression");
                let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
                let value = ffi::guarded(|| evalfunc(state, econtext, &mut isnull));
                pg_sys::MemoryContextSwitchTo(old);
                (value.value() != 0, isnull)
            };
            let result = (|| {
                let constr = (*(*rel).rd_att).constr;
                if !constr.is_null() {
                    for i in 0..(*constr).num_check as usize {
                        let check = &*(*constr).check.add(i);
                        let expr = pg_sys::stringToNode(check.ccbin).cast::<pg_sys::Node>();
                        // (Tested once for every row: only if its outcome cannot change.)
                        if !constant_only(expr) || pg_sys::contain_mutable_functions(expr) {
                            return None;
                        }
                        let planned = pg_sys::expression_planner(expr.cast());
                        let state =
                            pg_sys::ExecPrepareCheck(pg_sys::make_ands_implicit(planned), estate);
                        let (holds, isnull) = eval(state);
                        if !holds && !isnull {
                            return None;
                        }
                    }
                }
                let oids = pg_sys::RelationGetIndexList(rel);
                let n = if oids.is_null() {
                    0
                } else {
                    (*oids).length as usize
                };
                let mut indexes = Vec::with_capacity(n);
                for i in 0..n {
                    let oid = (*(*oids).elements.add(i)).oid_value;
                    let index =
                        pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                    let info = pg_sys::BuildIndexInfo(index);
                    let immediate = (*(*index).rd_index).indimmediate;
                    // A btree keeps nothing of its own in the IndexInfo (GIN, GiST and BRIN
                    // cache state there that points into the index's relcache entry, which
                    // may go while the layout stays).
                    let btree = (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID;
                    pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                    if !btree
                        || !(*info).ii_ReadyForInserts
                        || !(*info).ii_Expressions.is_null()
                        || !(*info).ii_ExclusionOps.is_null()
                        || ((*info).ii_Unique && !immediate)
                    {
                        return None;
                    }
                    if !(*info).ii_Predicate.is_null() {
                        if !constant_only((*info).ii_Predicate.cast()) {
                            return None;
                        }
                        let state = pg_sys::ExecPrepareQual((*info).ii_Predicate, estate);
                        let (holds, isnull) = eval(state);
                        if !holds || isnull {
                            continue;
                        }
                    }
                    indexes.push((oid, info));
                }
                Some(indexes)
            })();
            pg_sys::FreeExecutorState(estate);
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            result
        }
    }
}
