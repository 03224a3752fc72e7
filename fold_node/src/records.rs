//! Writing records: create, update and delete, each leaving an immutable version.
//!
//! These run inside the writer's transaction (see [`crate::writer`]); the caller commits.

use crate::catalog::{Catalog, Schema};
use crate::error::{not_found, NodeError};
use crate::validate;
use fold_ipc::operation::{Mutation, MutationKind, MutationResult, Record};
use rusqlite::{params, Connection, OptionalExtension};

/// Applies one mutation and records its version.
pub(crate) fn apply(
    conn: &Connection,
    catalog: &Catalog,
    mutation: Mutation,
    writer: &str,
    now: i64,
) -> Result<MutationResult, NodeError> {
    let schema = catalog.lookup(conn, mutation.schema())?;
    match mutation {
        Mutation::Create { data, .. } => create(conn, &schema, data, writer, now),
        Mutation::Update { id, data, .. } => update(conn, &schema, &id, data, writer, now),
        Mutation::Delete { id, .. } => delete(conn, &schema, &id, writer, now),
    }
}

fn encode(data: &Record) -> Result<String, NodeError> {
    serde_json::to_string(data)
        .map_err(|e| NodeError::Corrupt(format!("cannot encode record: {e}")))
}

fn create(
    conn: &Connection,
    schema: &Schema,
    data: Record,
    writer: &str,
    now: i64,
) -> Result<MutationResult, NodeError> {
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
    add_version(
        conn,
        schema.sid,
        &id,
        1,
        MutationKind::Create,
        now,
        writer,
        Some(&text),
    )?;
    Ok(MutationResult { id, version: 1 })
}

fn current(conn: &Connection, schema: &Schema, id: &str) -> Result<(u64, String), NodeError> {
    conn.prepare_cached("SELECT version, json(data) FROM records WHERE sid = ?1 AND id = ?2")?
        .query_row(params![schema.sid, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| not_found(format!("no record {id:?} in schema {:?}", schema.name())))
}

fn update(
    conn: &Connection,
    schema: &Schema,
    id: &str,
    patch: Record,
    writer: &str,
    now: i64,
) -> Result<MutationResult, NodeError> {
    let (version, text) = current(conn, schema, id)?;
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
    add_version(
        conn,
        schema.sid,
        id,
        version,
        MutationKind::Update,
        now,
        writer,
        Some(&text),
    )?;
    Ok(MutationResult {
        id: id.to_string(),
        version,
    })
}

fn delete(
    conn: &Connection,
    schema: &Schema,
    id: &str,
    writer: &str,
    now: i64,
) -> Result<MutationResult, NodeError> {
    let (version, _) = current(conn, schema, id)?;
    conn.prepare_cached("DELETE FROM records WHERE sid = ?1 AND id = ?2")?
        .execute(params![schema.sid, id])?;
    let version = version + 1;
    add_version(
        conn,
        schema.sid,
        id,
        version,
        MutationKind::Delete,
        now,
        writer,
        None,
    )?;
    Ok(MutationResult {
        id: id.to_string(),
        version,
    })
}

#[allow(clippy::too_many_arguments)]
fn add_version(
    conn: &Connection,
    sid: i64,
    id: &str,
    version: u64,
    action: MutationKind,
    now: i64,
    writer: &str,
    data: Option<&str>,
) -> Result<(), NodeError> {
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
    Ok(())
}
