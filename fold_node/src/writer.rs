//! The single writer: one thread owning the one write connection, with group commit.
//!
//! Writes queue per tenant (the app that sent them). The thread takes the jobs waiting (up
//! to [`MAX_BATCH`]), runs each inside its own savepoint of one `BEGIN IMMEDIATE`
//! transaction, commits once, and only then answers each job. So a reply means
//! "committed" (and, with [`Durability::Full`](crate::Durability::Full), fsynced), a failed
//! job rolls back alone, and under concurrent load many writes share one fsync.
//!
//! **Fairness.** A batch is assembled round robin across the tenants with queued jobs, one
//! job of each in turn (FIFO within a tenant). While more than one tenant has jobs queued,
//! a tenant has at most its `share.writes` jobs in one batch; alone, it may fill the batch.
//! So a tenant flooding the writer delays another tenant's write by about one batch (the
//! one being committed when it arrives), not by the flood's backlog.
//!
//! **Deadlines.** A job whose caller stopped waiting (its reply channel is closed) or whose
//! deadline passed before it started is dropped unapplied, answering nothing. A job that
//! started runs to its savepoint's end and commits or rolls back with its batch: it never
//! half-applies.

use crate::catalog::{self, Catalog};
use crate::error::NodeError;
use crate::records;
use crate::store::now_ms;
use fold_ipc::limits::Quota;
use fold_ipc::operation::{DeleteSchemaResult, Mutation};
use fold_ipc::schema::SchemaDef;
use fold_ipc::{ErrorCode, WireError};
use rusqlite::{Connection, TransactionBehavior};
use serde_json::value::{to_raw_value, RawValue};
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tokio::sync::oneshot;

/// Most jobs committed together.
pub const MAX_BATCH: usize = 256;

/// A write to perform.
#[derive(Debug)]
pub(crate) enum WriteOp {
    CreateSchema(SchemaDef),
    DeleteSchema {
        name: String,
        force: bool,
    },
    /// A mutation, within the writer's quota when the request carries one.
    Mutation(Mutation, Option<Quota>),
    /// Refresh the query planner's statistics (`ANALYZE`). Answered with `null`: only the
    /// node asks for it (`Node::analyze`), and no result of it crosses a socket.
    Analyze,
}

type Reply = oneshot::Sender<Result<Box<RawValue>, NodeError>>;

#[derive(Debug)]
pub(crate) struct Job {
    pub op: WriteOp,
    pub writer: String,
    pub reply: Reply,
    /// When the caller stops waiting; a job not started by then is dropped.
    pub deadline: Option<Instant>,
}

impl Job {
    /// Whether nobody waits for this job any more: its caller went away or its deadline
    /// passed. Such a job is dropped unapplied.
    pub fn abandoned(&self, now: Instant) -> bool {
        self.reply.is_closed() || self.deadline.is_some_and(|d| now >= d)
    }
}

/// Whose write a job is, for the queues: its tenant, share and deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Turn<'a> {
    /// The app; `None` is the node itself (never capped).
    pub tenant: Option<&'a str>,
    /// Most jobs of this tenant in one batch while other tenants have jobs queued.
    pub share: u32,
    pub deadline: Option<Instant>,
}

impl Turn<'_> {
    /// The node's own writes.
    pub const NODE: Turn<'static> = Turn {
        tenant: None,
        share: u32::MAX,
        deadline: None,
    };
}

/// The tenant key of the node's own writes.
const NODE_TENANT: &str = "";

/// Idle tenants are kept (so that their next write allocates no key) up to this many.
const MAX_IDLE_TENANTS: usize = 1024;

/// The per-tenant queues between the node and the writer thread.
#[derive(Debug, Default)]
struct Queues {
    state: Mutex<QueueState>,
    /// Signalled when a job is queued or the node is dropped.
    ready: Condvar,
}

#[derive(Debug, Default)]
struct QueueState {
    tenants: HashMap<Arc<str>, TenantQueue>,
    /// Tenants with queued jobs, in round-robin order; each appears once.
    turn: VecDeque<Arc<str>>,
    /// The node was dropped: the thread ends once the queues are empty.
    closed: bool,
}

#[derive(Debug, Default)]
struct TenantQueue {
    jobs: VecDeque<Job>,
    /// The share sent with the tenant's latest write (at least 1).
    share: usize,
    /// Jobs taken into the batch being assembled.
    taken: usize,
}

impl Queues {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, tenant: Option<&str>, share: u32, job: Job) {
        let mut s = self.lock();
        let name = tenant.unwrap_or(NODE_TENANT);
        let key = match s.tenants.get_key_value(name) {
            Some((key, _)) => Arc::clone(key),
            None => {
                if s.tenants.len() >= MAX_IDLE_TENANTS {
                    s.tenants.retain(|_, t| !t.jobs.is_empty());
                }
                let key: Arc<str> = Arc::from(name);
                s.tenants.insert(Arc::clone(&key), TenantQueue::default());
                key
            }
        };
        let t = s.tenants.get_mut(&*key).expect("tenant just added");
        t.share = match tenant {
            None => MAX_BATCH,
            Some(_) => (share as usize).clamp(1, MAX_BATCH),
        };
        let first = t.jobs.is_empty();
        t.jobs.push_back(job);
        if first {
            s.turn.push_back(key);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Waits for jobs and takes the next batch; `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut s = self.lock();
        loop {
            if !s.turn.is_empty() {
                let batch = s.assemble(Instant::now());
                if !batch.is_empty() {
                    return Some(batch);
                }
                continue;
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

impl QueueState {
    /// Up to [`MAX_BATCH`] jobs, one of each tenant in turn; while several tenants have
    /// jobs queued, at most `share` of one tenant. Abandoned jobs are dropped on the way.
    fn assemble(&mut self, now: Instant) -> Vec<Job> {
        let capped = self.turn.len() > 1;
        let mut batch = Vec::with_capacity(MAX_BATCH.min(self.queued()));
        let mut full = VecDeque::new();
        while batch.len() < MAX_BATCH {
            let Some(key) = self.turn.pop_front() else {
                break;
            };
            let Some(t) = self.tenants.get_mut(&key) else {
                continue;
            };
            let Some(job) = t.jobs.pop_front() else {
                continue;
            };
            if job.abandoned(now) {
                // Dropped unapplied; its caller is gone or has been answered `timeout`.
            } else {
                t.taken += 1;
                batch.push(job);
            }
            if t.jobs.is_empty() {
                t.taken = 0;
            } else if capped && t.taken >= t.share {
                full.push_back(key);
            } else {
                self.turn.push_back(key);
            }
        }
        // Tenants that reached their share wait for the next batch, in their turn order.
        for key in &full {
            if let Some(t) = self.tenants.get_mut(key) {
                t.taken = 0;
            }
        }
        for key in self.turn.iter() {
            if let Some(t) = self.tenants.get_mut(key) {
                t.taken = 0;
            }
        }
        self.turn.extend(full);
        batch
    }

    fn queued(&self) -> usize {
        self.turn
            .iter()
            .filter_map(|k| self.tenants.get(k))
            .map(|t| t.jobs.len())
            .sum()
    }
}

/// The sending side, held by the node.
#[derive(Debug)]
pub(crate) struct WriterHandle {
    queues: Arc<Queues>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.queues.close();
    }
}

impl WriterHandle {
    /// Starts the writer thread on `conn`.
    pub fn start(conn: Connection, catalog: Arc<Catalog>) -> Result<WriterHandle, NodeError> {
        let queues = Arc::new(Queues::default());
        let thread_queues = Arc::clone(&queues);
        std::thread::Builder::new()
            .name("fold_node-writer".into())
            .spawn(move || {
                fold_ipc::heavy::serving_thread();
                run(conn, &catalog, &thread_queues)
            })
            .map_err(|e| NodeError::io("cannot start the writer thread", "", e))?;
        Ok(WriterHandle { queues })
    }

    /// Queues `op` in its tenant's queue and waits until it has committed (or failed).
    /// Dropping the future before the job started drops the job unapplied.
    pub async fn write(
        &self,
        op: WriteOp,
        writer: String,
        turn: &Turn<'_>,
    ) -> Result<Box<RawValue>, NodeError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op,
            writer,
            reply,
            deadline: turn.deadline,
        };
        self.queues.push(turn.tenant, turn.share, job);
        match answer.await {
            Ok(result) => result,
            // Dropped unapplied because its deadline passed before it could start.
            Err(_) if turn.deadline.is_some_and(|d| Instant::now() >= d) => {
                Err(NodeError::Rejected(WireError::new(
                    ErrorCode::Timeout,
                    "the request's deadline passed before the write started; it was not applied",
                )))
            }
            Err(_) => Err(NodeError::Closed),
        }
    }
}

/// Rows sampled per index by `ANALYZE`, which keeps it to milliseconds at any size.
const ANALYSIS_LIMIT: u32 = 1000;

/// Writes after which statistics are refreshed on their own: early and often while a
/// database is young (when plans change most), then every [`ANALYZE_EVERY`].
const ANALYZE_AT: &[u64] = &[64, 512, 4096];
const ANALYZE_EVERY: u64 = 16_384;

fn analyze(conn: &Connection) -> Result<(), NodeError> {
    conn.pragma_update(None, "analysis_limit", ANALYSIS_LIMIT)?;
    conn.execute_batch("ANALYZE")?;
    Ok(())
}

fn run(mut conn: Connection, catalog: &Catalog, queues: &Queues) {
    let mut writes: u64 = 0;
    while let Some(batch) = queues.next_batch() {
        // A panic here is a bug; the transaction rolls back as it unwinds, the batch's
        // callers see `Closed`, and the writer goes on serving later jobs.
        let before = writes;
        writes += batch.len() as u64;
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| commit_batch(&mut conn, catalog, batch)));
        if outcome.is_err() {
            catalog.clear();
            tracing::error!("the writer panicked; its batch was rolled back");
        }
        let due = ANALYZE_AT.iter().any(|&n| before < n && writes >= n)
            || (writes / ANALYZE_EVERY > before / ANALYZE_EVERY);
        if due {
            if let Err(e) = analyze(&conn) {
                tracing::warn!(error = %crate::error::error_chain(&e), "ANALYZE failed");
            }
        }
    }
}

fn commit_batch(conn: &mut Connection, catalog: &Catalog, batch: Vec<Job>) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let text = e.to_string();
            for job in batch {
                let _ = job
                    .reply
                    .send(Err(NodeError::WriteFailed(format!("cannot begin: {text}"))));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        // Its caller may have stopped waiting while earlier jobs of the batch ran.
        if job.abandoned(std::time::Instant::now()) {
            continue;
        }
        let result = match tx.savepoint() {
            Ok(sp) => {
                // Dropping an uncommitted savepoint rolls this job back alone.
                apply(&sp, catalog, job.op, &job.writer)
                    .and_then(|v| sp.commit().map(|()| v).map_err(NodeError::from))
            }
            Err(e) => Err(e.into()),
        };
        results.push((job.reply, result));
    }
    if let Err(e) = tx.commit() {
        // A rolled-back schema number may be handed out again: forget cached definitions.
        catalog.clear();
        let text = e.to_string();
        for (reply, result) in results {
            let failed = match result {
                Ok(_) => Err(NodeError::WriteFailed(format!("commit: {text}"))),
                rejected => rejected,
            };
            let _ = reply.send(failed);
        }
        return;
    }
    for (reply, result) in results {
        let _ = reply.send(result);
    }
}

fn apply(
    conn: &Connection,
    catalog: &Catalog,
    op: WriteOp,
    writer: &str,
) -> Result<Box<RawValue>, NodeError> {
    let now = now_ms();
    let raw = match op {
        WriteOp::CreateSchema(def) => {
            catalog::create(conn, &def, writer, now)?;
            to_raw_value(&def)
        }
        WriteOp::DeleteSchema { name, force } => {
            let records = catalog::delete(conn, catalog, &name, force)?;
            to_raw_value(&DeleteSchemaResult {
                deleted: true,
                records,
            })
        }
        WriteOp::Mutation(m, quota) => to_raw_value(&records::apply(
            conn,
            catalog,
            m,
            writer,
            now,
            quota.as_ref(),
        )?),
        WriteOp::Analyze => {
            analyze(conn)?;
            // The node's own job: `Node::analyze` drops the answer, nothing is sent.
            return Ok(RawValue::NULL.to_owned());
        }
    };
    raw.map_err(|e| NodeError::Corrupt(format!("cannot encode result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues a job of `tenant` (share `share`) tagged `tag`; keeps its answer channel.
    fn push(
        q: &Queues,
        tenant: &str,
        share: u32,
        tag: &str,
        deadline: Option<Instant>,
    ) -> oneshot::Receiver<Result<Box<RawValue>, NodeError>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op: WriteOp::Analyze,
            writer: tag.to_string(),
            reply,
            deadline,
        };
        q.push(Some(tenant), share, job);
        answer
    }

    fn tags(batch: &[Job]) -> Vec<&str> {
        batch.iter().map(|j| j.writer.as_str()).collect()
    }

    #[test]
    fn a_tenant_alone_fills_the_batch() {
        let q = Queues::default();
        let _answers: Vec<_> = (0..MAX_BATCH + 3)
            .map(|i| push(&q, "flood", 2, &format!("f{i}"), None))
            .collect();
        assert_eq!(q.next_batch().unwrap().len(), MAX_BATCH);
        assert_eq!(q.next_batch().unwrap().len(), 3);
    }

    #[test]
    fn batches_go_round_robin_with_at_most_the_share_of_one_tenant_while_others_wait() {
        let q = Queues::default();
        let mut answers: Vec<_> = (0..5)
            .map(|i| push(&q, "flood", 2, &format!("f{i}"), None))
            .collect();
        answers.push(push(&q, "a", 2, "a0", None));
        answers.push(push(&q, "b", 2, "b0", None));
        answers.push(push(&q, "b", 2, "b1", None));
        answers.push(push(&q, "b", 2, "b2", None));
        let first = q.next_batch().unwrap();
        assert_eq!(tags(&first), ["f0", "a0", "b0", "f1", "b1"]);
        // The flood is alone with b's last job now: capped again (two tenants queued).
        let second = q.next_batch().unwrap();
        assert_eq!(tags(&second), ["f2", "b2", "f3"]);
        // Alone: no cap.
        let third = q.next_batch().unwrap();
        assert_eq!(tags(&third), ["f4"]);
        drop(answers);
    }

    #[test]
    fn abandoned_and_expired_jobs_are_dropped_unstarted() {
        let q = Queues::default();
        let gone = push(&q, "a", 2, "gone", None);
        drop(gone);
        let _late = push(&q, "a", 2, "late", Some(Instant::now()));
        let _kept = push(&q, "a", 2, "kept", None);
        let batch = q.next_batch().unwrap();
        assert_eq!(tags(&batch), ["kept"]);
    }

    #[test]
    fn the_thread_ends_once_closed_and_drained() {
        let q = Queues::default();
        let _answer = push(&q, "a", 2, "last", None);
        q.close();
        assert_eq!(tags(&q.next_batch().unwrap()), ["last"]);
        assert!(q.next_batch().is_none());
    }
}
