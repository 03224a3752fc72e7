//! The single writer: one thread owning the one write connection, with group commit.
//!
//! Writes queue on a channel. The thread takes every job waiting (up to [`MAX_BATCH`]),
//! runs each inside its own savepoint of one `BEGIN IMMEDIATE` transaction, commits once,
//! and only then answers each job. So a reply means "committed" (and, with
//! [`Durability::Full`](crate::Durability::Full), fsynced), a failed job rolls back alone,
//! and under concurrent load many writes share one fsync.

use crate::catalog::{self, Catalog};
use crate::error::NodeError;
use crate::records;
use crate::store::now_ms;
use fold_ipc::limits::Quota;
use fold_ipc::operation::Mutation;
use fold_ipc::schema::SchemaDef;
use rusqlite::{Connection, TransactionBehavior};
use serde_json::value::{to_raw_value, RawValue};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
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
    /// Refresh the query planner's statistics (`ANALYZE`).
    Analyze,
}

type Reply = oneshot::Sender<Result<Box<RawValue>, NodeError>>;

#[derive(Debug)]
pub(crate) struct Job {
    pub op: WriteOp,
    pub writer: String,
    pub reply: Reply,
}

/// The sending side, held by the node.
#[derive(Debug)]
pub(crate) struct WriterHandle {
    tx: Sender<Job>,
}

impl WriterHandle {
    /// Starts the writer thread on `conn`.
    pub fn start(conn: Connection, catalog: Arc<Catalog>) -> Result<WriterHandle, NodeError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fold_node-writer".into())
            .spawn(move || run(conn, &catalog, &rx))
            .map_err(|e| NodeError::io("cannot start the writer thread", "", e))?;
        Ok(WriterHandle { tx })
    }

    /// Queues `op` and waits until it has committed (or failed).
    pub async fn write(&self, op: WriteOp, writer: String) -> Result<Box<RawValue>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { op, writer, reply })
            .map_err(|_| NodeError::Closed)?;
        answer.await.map_err(|_| NodeError::Closed)?
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

fn run(mut conn: Connection, catalog: &Catalog, rx: &Receiver<Job>) {
    let mut writes: u64 = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
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
            to_raw_value(&serde_json::json!({ "deleted": true, "records": records }))
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
            to_raw_value(&serde_json::json!({ "analyzed": true }))
        }
    };
    raw.map_err(|e| NodeError::Corrupt(format!("cannot encode result: {e}")))
}
