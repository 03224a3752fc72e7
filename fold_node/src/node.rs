//! [`Node`]: the in-process API. The socket server and the daemon's embedded mode both
//! call [`Node::execute`].

use crate::budget::Meter;
use crate::catalog::{self, Catalog};
use crate::error::{bad_field, NodeError};
use crate::fair::{FairSlots, Running};
use crate::history;
use crate::query;
use crate::store::{self, Durability};
use crate::writer::{WriteOp, WriterHandle};
use fold_ipc::heavy;
use fold_ipc::limits::{Quota, RequestLimits, Share, Usage};
use fold_ipc::operation::{check_record_id, Mutation, Pong, SchemaList};
use fold_ipc::query::{Filter, Query, DEFAULT_LIMIT};
use fold_ipc::schema::validate_name;
use fold_ipc::{ErrorCode, Operation, WireError};
use rusqlite::Connection;
use serde_json::value::{to_raw_value, RawValue};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The writer recorded for requests that carry no `app_id` (admin commands, direct
/// clients of the node).
pub const DEFAULT_IDENTITY: &str = "node";

/// The number of reads run on the blocking pool at once by default (the read slots, shared
/// fairly among apps: see [`Node::execute_limited`]); reads that finish within the inline
/// budget take no slot.
pub const DEFAULT_READERS: usize = 4;

/// Default [`NodeConfig::max_vm_steps`]: 50 million steps. Measured on the 2-core
/// development VM (`budget::measure`, debug build): the longest legitimate page, 1,000 rows
/// out of a `contains` scan and sort of 100,000 records on an unindexed field, takes 1.55
/// million steps (0.2 s); such steps run at 7.7 million a second, a plain VM loop at 48
/// million, so the budget is 1 to 6.5 s of one core at most.
pub const DEFAULT_MAX_VM_STEPS: u64 = 50_000_000;

/// How to open a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where the database lives; created with mode 0700 if missing, refused if other users
    /// can reach it.
    pub data_dir: PathBuf,
    /// The writer recorded in provenance and history when a request has no `app_id`.
    pub identity: String,
    /// How hard each commit works to survive failures.
    pub durability: Durability,
    /// Read slots: how many reads run on the blocking pool at once (at least 1); a read
    /// that finishes within the inline budget takes none.
    pub readers: usize,
    /// The work budget of one read (a query, a history, a schema lookup), in SQLite
    /// virtual-machine steps, the bytes a `contains` filter scans counted as one step per
    /// 64. A read over it is stopped and answered `too_expensive` with
    /// `limit: "max_vm_steps"`. It applies to every read, with or without request limits.
    pub max_vm_steps: u64,
}

impl NodeConfig {
    /// The defaults for a node in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            identity: DEFAULT_IDENTITY.to_string(),
            durability: Durability::default(),
            readers: DEFAULT_READERS,
            max_vm_steps: DEFAULT_MAX_VM_STEPS,
        }
    }
}

/// An open data node. Cheap to clone: clones share the same database, writer and read
/// connections. The writer thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    db_path: PathBuf,
    catalog: Arc<Catalog>,
    writer: WriterHandle,
    /// Idle read connections, each with the meter of its work budget.
    idle_readers: Mutex<Vec<(Connection, Arc<Meter>)>>,
    /// The read slots, shared fairly among tenants (`fair.rs`).
    read_slots: Arc<FairSlots>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.inner.config.data_dir)
            .field("identity", &self.inner.config.identity)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens (creating if needed) the node in `data_dir` with default settings.
    ///
    /// # Errors
    ///
    /// See [`Node::open_with`].
    pub fn open(data_dir: impl Into<PathBuf>) -> Result<Node, NodeError> {
        Node::open_with(NodeConfig::new(data_dir))
    }

    /// Opens (creating if needed) a node.
    ///
    /// Blocks briefly: it opens the database and checks its layout. Several nodes (or
    /// admin commands) may open the same directory; SQLite's WAL mode serialises their
    /// writes and lets reads run beside them.
    ///
    /// # Errors
    ///
    /// [`NodeError::InsecureDir`] when the directory is open to other users,
    /// [`NodeError::Io`] when it cannot be created, [`NodeError::Sqlite`] or
    /// [`NodeError::UnsupportedLayout`] when the database cannot be opened.
    pub fn open_with(config: NodeConfig) -> Result<Node, NodeError> {
        let db_path = store::prepare_db_file(&config.data_dir)?;
        let conn = store::open(&db_path, config.durability, true)?;
        let catalog = Arc::new(Catalog::default());
        let writer = WriterHandle::start(conn, Arc::clone(&catalog))?;
        let readers = config.readers.max(1);
        Ok(Node {
            inner: Arc::new(Inner {
                db_path,
                catalog,
                writer,
                idle_readers: Mutex::new(Vec::with_capacity(readers)),
                read_slots: FairSlots::new(readers),
                config,
            }),
        })
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// The writer recorded for requests without an app id.
    pub fn identity(&self) -> &str {
        &self.inner.config.identity
    }

    /// Runs one operation. `writer` is the app the request is made for (the request's
    /// `app_id`); it is recorded as the author of writes. `None` records the node's own
    /// identity.
    ///
    /// The result is the operation's result JSON, as sent in a response's `result`:
    /// [`Pong`], [`SchemaList`], a schema definition, a
    /// [`DeleteSchemaResult`](fold_ipc::operation::DeleteSchemaResult),
    /// a [`QueryResult`](fold_ipc::query::QueryResult), a
    /// [`MutationResult`](fold_ipc::operation::MutationResult) or a
    /// [`HistoryResult`](fold_ipc::operation::HistoryResult).
    ///
    /// A write is answered only after it has committed. Reads run concurrently on a pool
    /// of connections; writes are serialised (and committed in groups) by one writer.
    ///
    /// # Errors
    ///
    /// The [`WireError`] to send: `bad_request` naming the field at fault, `not_found`,
    /// `conflict`, or `internal` when the node itself failed (logged in full).
    pub async fn execute(
        &self,
        writer: Option<&str>,
        op: Operation,
    ) -> Result<Box<RawValue>, WireError> {
        self.execute_limited(writer, op, None).await
    }

    /// [`Node::execute`] under `limits` (what the daemon allows the app `writer`): its
    /// share of the read slots and the writer, its storage quota, and a deadline after
    /// which the request's work stops. `None` is the default [`Share`], with no quota and
    /// no deadline. A request without `writer` is the node's own: it is not limited.
    ///
    /// **Fair sharing.** The tenant is `writer`. A tenant alone may use every read slot;
    /// while another tenant waits for one, a tenant holding `share.reads` slots or more
    /// gets no new slot, and a long read it runs beyond its share hands its slot over at
    /// its next progress check (and resumes when a slot is free for it again). Free slots
    /// go round robin to the tenants with waiters, FIFO within one. Writes queue per
    /// tenant in front of the writer; each batch is assembled round robin, with at most
    /// `share.writes` jobs of one tenant while others have writes queued.
    ///
    /// **Deadline.** When `limits.timeout_ms` passes, the answer is `timeout` and the work
    /// stops: a read waiting for a slot leaves its queue, a running read is interrupted at
    /// its next progress check, a write not yet started is dropped unapplied. A write
    /// that had started completes or rolls back whole (so after `timeout` a write may or
    /// may not have been applied).
    ///
    /// Applied so far: the storage quota (`quota_exceeded` naming `max_bytes`,
    /// `max_records` or `max_versions`; see `docs/node.md`, "Limits"). Every read, with or
    /// without limits, stops at the node's work budget ([`NodeConfig::max_vm_steps`]).
    ///
    /// # Errors
    ///
    /// As for [`Node::execute`], and `quota_exceeded`, `too_expensive` or `timeout`.
    pub async fn execute_limited(
        &self,
        writer: Option<&str>,
        op: Operation,
        limits: Option<&RequestLimits>,
    ) -> Result<Box<RawValue>, WireError> {
        let timeout = limits
            .and_then(|l| l.timeout_ms)
            .map(|ms| (ms, Duration::from_millis(ms)));
        let who = Tenant {
            name: writer,
            share: limits.map(|l| l.share).unwrap_or_default(),
            deadline: timeout.and_then(|(_, t)| Instant::now().checked_add(t)),
            quota: limits.map(|l| l.quota),
        };
        let run = self.dispatch(&who, op);
        let result = match timeout {
            Some((ms, t)) if who.deadline.is_some() => match tokio::time::timeout(t, run).await {
                Ok(done) => done,
                Err(_) => return Err(deadline_passed(ms)),
            },
            _ => run.await,
        };
        result.map_err(NodeError::into_wire)
    }

    /// What the records of app `app_id` take on this node, as counted against its quota:
    /// bytes of the versions it wrote (current and kept history), live records it
    /// created, versions it wrote that are kept. Zero for an app that never wrote.
    ///
    /// # Errors
    ///
    /// `bad_request` for an empty `app_id`, `internal` when SQLite fails.
    pub async fn usage(&self, app_id: &str) -> Result<Usage, WireError> {
        if app_id.is_empty() {
            return Err(WireError::bad_field("params.app_id", "must not be empty"));
        }
        let app = app_id.to_string();
        self.read(&Tenant::NODE, Placement::Inline, move |conn, _| {
            crate::usage::get(conn, &app)
        })
        .await
        .map_err(NodeError::into_wire)
    }

    /// SQLite's plan for a query, one line per step: what `EXPLAIN QUERY PLAN` says about
    /// the statement [`Node::execute`] would run. For people checking that an indexed
    /// field's index is used.
    ///
    /// # Errors
    ///
    /// As for a query.
    pub async fn explain(&self, query: Query) -> Result<Vec<String>, WireError> {
        let run = async {
            check_query(&query)?;
            self.read(&Tenant::NODE, Placement::Inline, move |conn, catalog| {
                query::explain(conn, catalog, &query)
            })
            .await
        };
        run.await.map_err(NodeError::into_wire)
    }

    /// Refreshes the query planner's statistics (a sampled `ANALYZE`), so that it picks
    /// the right index for range filters. The writer does this on its own as the database
    /// grows; call it after a bulk load to have good plans at once.
    ///
    /// # Errors
    ///
    /// `internal` when SQLite fails.
    pub async fn analyze(&self) -> Result<(), WireError> {
        let writer = self.inner.config.identity.clone();
        self.inner
            .writer
            .write(WriteOp::Analyze, writer, &crate::writer::Turn::NODE)
            .await
            .map(drop)
            .map_err(NodeError::into_wire)
    }

    async fn dispatch(&self, who: &Tenant<'_>, op: Operation) -> Result<Box<RawValue>, NodeError> {
        let turn = crate::writer::Turn {
            tenant: who.name,
            share: who.share.writes,
            deadline: who.deadline,
        };
        let write = |op: WriteOp| {
            let writer = who.name.unwrap_or(&self.inner.config.identity).to_string();
            self.inner.writer.write(op, writer, &turn)
        };
        match op {
            Operation::Ping => encode(&Pong {
                pong: true,
                version: fold_ipc::version::CURRENT,
            }),
            Operation::ListSchemas => {
                let schemas = self
                    .read(who, Placement::Inline, |conn, _| catalog::list(conn))
                    .await?;
                encode(&SchemaList { schemas })
            }
            Operation::GetSchema { name } => {
                check_name("params.name", &name)?;
                let schema = self
                    .read(who, Placement::Inline, move |conn, c| c.lookup(conn, &name))
                    .await?;
                encode(&schema.def)
            }
            Operation::CreateSchema(def) => {
                def.validate()
                    .map_err(|(f, m)| bad_field(format!("params.{f}"), m))?;
                write(WriteOp::CreateSchema(def)).await
            }
            Operation::DeleteSchema { name, force } => {
                check_name("params.name", &name)?;
                write(WriteOp::DeleteSchema { name, force }).await
            }
            Operation::Query(q) => {
                check_query(&q)?;
                self.read(who, Placement::for_query(&q), move |conn, catalog| {
                    query::run(conn, catalog, &q)
                })
                .await
            }
            Operation::Mutation(m) => {
                check_name("params.schema", m.schema())?;
                if let Mutation::Update { id, .. } | Mutation::Delete { id, .. } = &m {
                    check_record_id(id)?;
                }
                write(WriteOp::Mutation(m, who.quota)).await
            }
            Operation::History { schema, id } => {
                check_name("params.schema", &schema)?;
                check_record_id(&id)?;
                let h = self
                    .read(who, Placement::Inline, move |conn, c| {
                        history::history(conn, c, &schema, &id)
                    })
                    .await?;
                encode(&h)
            }
        }
    }

    /// Runs `f` on a read connection, in a read transaction.
    ///
    /// Most reads take microseconds, less than a hop to the blocking pool costs (two thread
    /// wake-ups: tens of microseconds on a small VM). So a read first runs in place on the
    /// async worker with a budget of [`INLINE_READ_BUDGET`]; SQLite's progress handler
    /// interrupts it when the budget is spent, and it runs again, unbounded, on the
    /// blocking pool. The executor is never held for longer than the budget. A read that
    /// is expected to outlive the budget ([`Placement::Pool`]) goes to the pool at once
    /// rather than paying for the budget and the rerun.
    ///
    /// At most `readers` reads run on the blocking pool at once: each holds one of the
    /// fair read slots (`fair.rs`) of `who`, given back when it ends. Dropping the future
    /// while it waits for a slot leaves the queue. The inline attempt takes no slot.
    async fn read<T, F>(&self, who: &Tenant<'_>, placement: Placement, f: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: Fn(&Connection, &Catalog) -> Result<T, NodeError> + Send + Sync + 'static,
    {
        // One work budget for the whole read, across the inline attempt and the rerun.
        let work = Arc::new(Work::new(self.inner.config.max_vm_steps));
        if placement == Placement::Inline {
            // No read slot: the attempt runs for at most the inline budget, on the caller's
            // thread (in the daemon, the lane of the app: its CPU is the app's own share).
            // A slot held by a thread the kernel has just preempted would make every other
            // tenant's read wait for that thread to run again.
            match self
                .inner
                .with_reader(Stop::After(INLINE_READ_BUDGET), &work, &f)
            {
                Err(e) if is_interrupt(&e) => {}
                done => return done,
            }
        }
        let slot = self
            .inner
            .read_slots
            .acquire(who.name, who.share.reads)
            .await;
        let inner = Arc::clone(&self.inner);
        // The read on the pool runs until it ends or its caller stops waiting (the daemon
        // answered `timeout` and dropped this future): then its statement is interrupted,
        // and the core and the read slot are free again within one progress check. The
        // same check hands the slot over while the tenant is over its share and another
        // tenant waits.
        let running = Running::new(slot);
        let _flag_on_drop = Abandon(Arc::clone(&running));
        tokio::task::spawn_blocking(move || {
            // A read past the inline budget is bulk work: at the lowest CPU priority, so
            // that the point reads of other apps preempt it (`fold_ipc::heavy`).
            let result = heavy::at_low_priority(|| {
                inner.with_reader(Stop::WhenAbandoned(Arc::clone(&running)), &work, &f)
            });
            running.finish();
            result
        })
        .await
        .map_err(|_| NodeError::Closed)?
    }
}

/// Who a request is for and what it may use: the tenant of the fair read slots and the
/// writer's queues, from [`Node::execute_limited`].
#[derive(Debug, Clone, Copy)]
struct Tenant<'a> {
    /// The app; `None` is the node itself (never capped).
    name: Option<&'a str>,
    share: Share,
    /// When the requester stops waiting.
    deadline: Option<Instant>,
    /// The storage quota of its writes; `None` is unlimited.
    quota: Option<Quota>,
}

impl Tenant<'_> {
    /// The node's own requests.
    const NODE: Tenant<'static> = Tenant {
        name: None,
        share: Share {
            reads: u32::MAX,
            writes: u32::MAX,
        },
        deadline: None,
        quota: None,
    };
}

/// The `timeout` answer of a request whose deadline passed.
fn deadline_passed(ms: u64) -> WireError {
    WireError::new(
        ErrorCode::Timeout,
        format!(
            "the request's deadline of {ms} ms passed and its work was stopped (a read is \
             interrupted, a write not yet started is dropped unapplied; one already started \
             completes or rolls back whole, so a write may or may not have been applied)"
        ),
    )
}

/// Where a read starts (see [`Node::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// On the async worker, within [`INLINE_READ_BUDGET`]; on the pool if it runs over.
    Inline,
    /// On the blocking pool.
    Pool,
}

impl Placement {
    /// A query that may return more than [`INLINE_MAX_ROWS`] rows starts on the pool: a
    /// page of a hundred rows takes a few hundred microseconds, well past the inline
    /// budget, and being interrupted and run again cost it about 1.5x the time (`cargo
    /// bench -p fold_node`). Short pages and reads by id (at most one row, whatever the
    /// limit) stay inline, where most reads finish in a few microseconds.
    fn for_query(q: &Query) -> Placement {
        let short = q.limit.unwrap_or(DEFAULT_LIMIT) <= INLINE_MAX_ROWS;
        if short || q.filter.as_ref().is_some_and(pins_id) {
            Placement::Inline
        } else {
            Placement::Pool
        }
    }
}

/// Whether `filter` matches at most one record: `id` equals a value, alone or in an `and`.
fn pins_id(filter: &Filter) -> bool {
    match filter {
        Filter::Eq { field, .. } => field == "id",
        Filter::And { filters } => filters.iter().any(pins_id),
        _ => false,
    }
}

/// Largest page a query may ask for and still start inline on the async worker; longer
/// pages, unless the filter pins one `id`, start on the blocking pool.
pub const INLINE_MAX_ROWS: u32 = 16;

/// How long a read may run on an async worker before it is moved to the blocking pool.
pub const INLINE_READ_BUDGET: Duration = Duration::from_micros(100);

/// SQLite virtual-machine steps between two checks of the read budget.
const BUDGET_CHECK_OPS: i32 = 1000;

/// The work budget of one read, shared by its attempts (inline, then on the pool).
struct Work {
    spent: std::sync::atomic::AtomicU64,
    limit: u64,
}

impl Work {
    fn new(limit: u64) -> Work {
        Work {
            spent: std::sync::atomic::AtomicU64::new(0),
            limit,
        }
    }
}

/// The answer to a read over its work budget.
fn too_expensive(limit: u64) -> NodeError {
    NodeError::Rejected(WireError::over_limit(
        ErrorCode::TooExpensive,
        "max_vm_steps",
        format!(
            "the query needs more than the node's work budget of {limit} steps: narrow \
             its filter (an indexed field, `eq` or `prefix` rather than `contains`), or ask \
             for smaller pages and follow `next_cursor`"
        ),
    ))
}

/// When a read's statement is interrupted.
enum Stop {
    /// Once this much time has passed (a read inline on the async worker).
    After(Duration),
    /// Once its caller has stopped waiting for it (a read on the blocking pool); its
    /// progress checks also hand its read slot over when its tenant is over its share.
    WhenAbandoned(Arc<Running>),
}

/// Raises the read's flag when dropped: with the future of a read, when the caller stops
/// waiting.
struct Abandon(Arc<Running>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

fn is_interrupt(e: &NodeError) -> bool {
    matches!(e, NodeError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if f.code == rusqlite::ErrorCode::OperationInterrupted)
}

impl Inner {
    /// Runs `f` on an idle read connection (opening one if none is idle), interrupted
    /// when `stop` says or when the read's `work` budget is spent (then the answer is
    /// `too_expensive`, `max_vm_steps`). The work done is added to `work`.
    fn with_reader<T>(
        &self,
        stop: Stop,
        work: &Work,
        f: impl FnOnce(&Connection, &Catalog) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let idle = self
            .idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let (conn, meter) = match idle {
            Some(reader) => reader,
            None => store::open_metered(&self.db_path, self.config.durability, false)?,
        };
        meter.start(
            work.spent.load(std::sync::atomic::Ordering::Relaxed),
            work.limit,
        );
        let steps = u64::try_from(BUDGET_CHECK_OPS).unwrap_or(1);
        let m = Arc::clone(&meter);
        match stop {
            Stop::After(budget) => {
                let deadline = Instant::now() + budget;
                conn.progress_handler(
                    BUDGET_CHECK_OPS,
                    Some(move || m.charge(steps) || Instant::now() > deadline),
                );
            }
            Stop::WhenAbandoned(running) => {
                conn.progress_handler(
                    BUDGET_CHECK_OPS,
                    Some(move || m.charge(steps) || running.interrupt()),
                );
            }
        }
        // One snapshot for the whole read (the schema lookup and the query agree). BEGIN and
        // ROLLBACK are cached statements: `Connection::transaction` parses both again on
        // every read.
        let result = match conn.prepare_cached("BEGIN").and_then(|mut s| s.execute([])) {
            Ok(_) => f(&conn, &self.catalog),
            Err(e) => Err(e.into()),
        };
        // An interrupted statement may have ended the transaction already; a read has
        // nothing to commit, so ROLLBACK is the end either way.
        if !conn.is_autocommit() {
            let _ = conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
        }
        work.spent
            .store(meter.spent(), std::sync::atomic::Ordering::Relaxed);
        // Over budget is the answer whatever the statement made of it (interrupted, failed
        // in the `contains` function, or finished within the last progress check).
        let result = if meter.exceeded() {
            Err(too_expensive(work.limit))
        } else {
            result
        };
        // A connection still inside a transaction would refuse the next BEGIN: drop it.
        if conn.is_autocommit() {
            self.idle_readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((conn, meter));
        }
        result
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>, NodeError> {
    to_raw_value(value).map_err(|e| NodeError::Corrupt(format!("cannot encode result: {e}")))
}

fn check_name(field: &str, name: &str) -> Result<(), NodeError> {
    validate_name(name).map_err(|m| bad_field(field, m))
}

fn check_query(q: &Query) -> Result<(), NodeError> {
    q.validate().map_err(NodeError::Rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fold_ipc::query::{and, eq, gt};

    #[test]
    fn long_pages_start_on_the_pool_and_reads_by_id_stay_inline() {
        let q = |limit: Option<u32>, filter: Option<Filter>| Query {
            limit,
            filter,
            ..Query::new("post")
        };
        assert_eq!(Placement::for_query(&q(Some(1), None)), Placement::Inline);
        assert_eq!(
            Placement::for_query(&q(Some(INLINE_MAX_ROWS), None)),
            Placement::Inline
        );
        assert_eq!(
            Placement::for_query(&q(Some(INLINE_MAX_ROWS + 1), None)),
            Placement::Pool
        );
        assert_eq!(Placement::for_query(&q(None, None)), Placement::Pool);
        assert_eq!(
            Placement::for_query(&q(None, Some(eq("id", "r1")))),
            Placement::Inline
        );
        assert_eq!(
            Placement::for_query(&q(None, Some(and([gt("n", 1), eq("id", "r1")])))),
            Placement::Inline
        );
        assert_eq!(
            Placement::for_query(&q(None, Some(eq("title", "r1")))),
            Placement::Pool
        );
    }
}
