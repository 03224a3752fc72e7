//! Writing records: create, update and delete, each leaving an immutable version.
//!
//! These run inside the writer's transaction (see [`crate::writer`]); the caller commits.
//! Each keeps the writers' usage counts ([`crate::usage`]) and applies the writer's quota.

use crate::catalog::{Catalog, Schema};
use crate::error::{not_found, NodeError};
use crate::usage;
use crate::validate;
use fold_ipc::limits::{HistoryPolicy, Quota};
use fold_ipc::operation::{Mutation, MutationKind, MutationResult, Record};
use rusqlite::{params, Connection, OptionalExtension};

/// Applies one mutation by `writer` and records its version, within `quota` when the
/// request carries one (`None`: unlimited, and every version is kept).
///
/// Under a quota: a write that would take `writer` past `max_bytes` or `max_records` is
/// refused (`quota_exceeded`, `limit` naming which); it is checked after the write in the
/// same savepoint, so a refusal leaves nothing. `max_versions` (at least 1) keeps that many
/// versions of the record written: with [`HistoryPolicy::Prune`] the oldest beyond it are
/// deleted, with [`HistoryPolicy::Refuse`] the write is refused. A delete is never refused;
/// under a quota with `max_bytes` it also deletes the record's earlier versions (its
/// history keeps the `delete` version), so that deleting frees the bytes.
pub(crate) fn apply(
    conn: &Connection,
    catalog: &Catalog,
    mutation: Mutation,
    writer: &str,
    now: i64,
    quota: Option<&Quota>,
) -> Result<MutationResult, NodeError> {
    let schema = catalog.lookup(conn, mutation.schema())?;
    let before = match quota {
        Some(_) => Some(usage::get(conn, writer)?),
        None => None,
    };
    let w = Write {
        conn,
        schema: &schema,
        writer,
        now,
        quota,
    };
    let result = match mutation {
        Mutation::Create { data, .. } => create(&w, data),
        Mutation::Update { id, data, .. } => update(&w, &id, data),
        Mutation::Delete { id, .. } => delete(&w, &id),
    }?;
    if let (Some(quota), Some(before)) = (quota, before) {
        usage::check(writer, quota, before, usage::get(conn, writer)?)?;
    }
    Ok(result)
}

/// One write: where, by whom, when, under which quota.
struct Write<'a> {
    conn: &'a Connection,
    schema: &'a Schema,
    writer: &'a str,
    now: i64,
    quota: Option<&'a Quota>,
}

impl Write<'_> {
    /// Versions of a record the quota keeps, and its policy beyond them.
    fn max_versions(&self) -> Option<(u64, HistoryPolicy)> {
        let q = self.quota?;
        q.max_versions.map(|m| (u64::from(m.max(1)), q.history))
    }

    /// Deletes versions beyond the quota's `max_versions` once `version` is written.
    fn prune(&self, id: &str, version: u64) -> Result<(), NodeError> {
        if let Some((max, HistoryPolicy::Prune)) = self.max_versions() {
            if version > max {
                usage::drop_versions(self.conn, self.schema.sid, id, version - max)?;
            }
        }
        Ok(())
    }
}

fn encode(data: &Record) -> Result<String, NodeError> {
    serde_json::to_string(data)
        .map_err(|e| NodeError::Corrupt(format!("cannot encode record: {e}")))
}

fn create(w: &Write<'_>, data: Record) -> Result<MutationResult, NodeError> {
    let Write {
        conn,
        schema,
        writer,
        now,
        ..
    } = *w;
    let data = validate::new_record(schema, data)?;
    let text = encode(&data)?;
    // Version 7 UUIDs are time-ordered (and monotonic within this process), so ordering by
    // id is ordering by creation.
    let id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO records (sid, id, version, data, created_at, created_by, updated_at, updated_by)
         VALUES (?1, ?2, 1, jsonb(?3), ?4, ?5, ?4, ?5)",
    )?
    .execute(params![schema.sid, id, text, now, writer])?;
    usage::add(conn, writer, 0, 1, 0)?;
    add_version(w, &id, 1, MutationKind::Create, Some(&text))?;
    Ok(MutationResult { id, version: 1 })
}

/// The record's version, its data (JSON text) and who created it.
fn current(
    conn: &Connection,
    schema: &Schema,
    id: &str,
) -> Result<(u64, String, String), NodeError> {
    conn.prepare_cached(
        "SELECT version, json(data), created_by FROM records WHERE sid = ?1 AND id = ?2",
    )?
    .query_row(params![schema.sid, id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()?
    .ok_or_else(|| not_found(format!("no record {id:?} in schema {:?}", schema.name())))
}

fn update(w: &Write<'_>, id: &str, patch: Record) -> Result<MutationResult, NodeError> {
    let Write {
        conn,
        schema,
        writer,
        now,
        ..
    } = *w;
    let (version, text, _) = current(conn, schema, id)?;
    if let Some((max, HistoryPolicy::Refuse)) = w.max_versions() {
        let kept: u64 = conn
            .prepare_cached("SELECT count(*) FROM versions WHERE sid = ?1 AND id = ?2")?
            .query_row(params![schema.sid, id], |r| r.get(0))?;
        if kept >= max {
            return Err(usage::too_many_versions(writer, id, max));
        }
    }
    let stored: Record = serde_json::from_str(&text)
        .map_err(|e| NodeError::Corrupt(format!("record {id:?}: {e}")))?;
    let data = validate::patched(schema, stored, patch)?;
    let text = encode(&data)?;
    let version = version + 1;
    conn.prepare_cached(
        "UPDATE records SET version = ?3, data = jsonb(?4), updated_at = ?5, updated_by = ?6
         WHERE sid = ?1 AND id = ?2",
    )?
    .execute(params![schema.sid, id, version, text, now, writer])?;
    add_version(w, id, version, MutationKind::Update, Some(&text))?;
    w.prune(id, version)?;
    Ok(MutationResult {
        id: id.to_string(),
        version,
    })
}

fn delete(w: &Write<'_>, id: &str) -> Result<MutationResult, NodeError> {
    let Write { conn, schema, .. } = *w;
    let (version, _, created_by) = current(conn, schema, id)?;
    conn.prepare_cached("DELETE FROM records WHERE sid = ?1 AND id = ?2")?
        .execute(params![schema.sid, id])?;
    usage::add(conn, &created_by, 0, -1, 0)?;
    let version = version + 1;
    add_version(w, id, version, MutationKind::Delete, None)?;
    if w.quota.is_some_and(|q| q.max_bytes.is_some()) {
        usage::drop_versions(conn, schema.sid, id, version - 1)?;
    } else {
        w.prune(id, version)?;
    }
    Ok(MutationResult {
        id: id.to_string(),
        version,
    })
}

/// Records a version written by `w.writer`, and counts it against the writer.
fn add_version(
    w: &Write<'_>,
    id: &str,
    version: u64,
    action: MutationKind,
    data: Option<&str>,
) -> Result<(), NodeError> {
    let (conn, sid, now, writer) = (w.conn, w.schema.sid, w.now, w.writer);
    let action = match action {
        MutationKind::Create => "create",
        MutationKind::Update => "update",
        MutationKind::Delete => "delete",
    };
    conn.prepare_cached(
        "INSERT INTO versions (sid, id, version, action, ts, writer, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![sid, id, version, action, now, writer, data])?;
    let bytes = data.map_or(0, |d| i64::try_from(d.len()).unwrap_or(i64::MAX));
    usage::add(conn, writer, bytes, 0, 1)?;
    Ok(())
}
