//! What each writer's records take (the `usage` table), and the quota checks on writes.
//!
//! Attribution: a version's bytes (the length of its JSON text; a delete's is 0) count
//! against the app that wrote that version; a live record counts against the app that
//! created it. Every write updates the counts in its own transaction, so a write that is
//! rolled back (refused, or failed) leaves them as they were.

use crate::error::NodeError;
use fold_ipc::limits::{Quota, Usage};
use fold_ipc::{ErrorCode, WireError};
use rusqlite::{params, Connection, OptionalExtension};

/// What `writer`'s records take; zero for a writer that never wrote.
pub(crate) fn get(conn: &Connection, writer: &str) -> Result<Usage, NodeError> {
    let row = conn
        .prepare_cached("SELECT bytes, records, versions FROM usage WHERE writer = ?1")?
        .query_row([writer], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(row.map_or(Usage::default(), |(b, r, v)| Usage {
        bytes: n(b),
        records: n(r),
        versions: n(v),
    }))
}

/// Adds the (signed) changes to `writer`'s counts.
pub(crate) fn add(
    conn: &Connection,
    writer: &str,
    bytes: i64,
    records: i64,
    versions: i64,
) -> Result<(), NodeError> {
    conn.prepare_cached(
        "INSERT INTO usage (writer, bytes, records, versions) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (writer) DO UPDATE SET bytes = bytes + excluded.bytes,
             records = records + excluded.records, versions = versions + excluded.versions",
    )?
    .execute(params![writer, bytes, records, versions])?;
    Ok(())
}

/// Deletes the versions of record `id` of schema `sid` numbered `up_to` or lower, and takes
/// them off their writers' counts. Returns how many were deleted.
pub(crate) fn drop_versions(
    conn: &Connection,
    sid: i64,
    id: &str,
    up_to: u64,
) -> Result<usize, NodeError> {
    let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO usage (writer, bytes, records, versions)
         SELECT writer, -coalesce(sum(octet_length(data)), 0), 0, -count(*) FROM versions
         WHERE sid = ?1 AND id = ?2 AND version <= ?3 GROUP BY writer
         ON CONFLICT (writer) DO UPDATE SET bytes = bytes + excluded.bytes,
             versions = versions + excluded.versions",
    )?
    .execute(params![sid, id, up_to])?;
    let n = conn
        .prepare_cached("DELETE FROM versions WHERE sid = ?1 AND id = ?2 AND version <= ?3")?
        .execute(params![sid, id, up_to])?;
    Ok(n)
}

/// Takes every record and version of schema `sid` off the counts (before the schema is
/// dropped with them).
pub(crate) fn drop_schema(conn: &Connection, sid: i64) -> Result<(), NodeError> {
    conn.prepare_cached(
        "INSERT INTO usage (writer, bytes, records, versions)
         SELECT writer, -coalesce(sum(octet_length(data)), 0), 0, -count(*) FROM versions
         WHERE sid = ?1 GROUP BY writer
         ON CONFLICT (writer) DO UPDATE SET bytes = bytes + excluded.bytes,
             versions = versions + excluded.versions",
    )?
    .execute([sid])?;
    conn.prepare_cached(
        "INSERT INTO usage (writer, bytes, records, versions)
         SELECT created_by, 0, -count(*), 0 FROM records WHERE sid = ?1 GROUP BY created_by
         ON CONFLICT (writer) DO UPDATE SET records = records + excluded.records",
    )?
    .execute([sid])?;
    Ok(())
}

/// Counts every writer's usage again from `records` and `versions`.
pub(crate) fn recount(conn: &Connection) -> Result<(), NodeError> {
    conn.execute_batch(
        "DELETE FROM usage;
         INSERT INTO usage (writer, bytes, records, versions)
             SELECT writer, coalesce(sum(octet_length(data)), 0), 0, count(*) FROM versions
             WHERE true GROUP BY writer;
         INSERT INTO usage (writer, bytes, records, versions)
             SELECT created_by, 0, count(*), 0 FROM records WHERE true GROUP BY created_by
             ON CONFLICT (writer) DO UPDATE SET records = excluded.records;",
    )?;
    Ok(())
}

/// Refuses a write by `writer` that took its usage from `before` to `after` past `quota`
/// (`max_bytes`, `max_records`). A write that does not grow a count is never refused by
/// it, so an app over a lowered quota can still shrink and delete.
pub(crate) fn check(
    writer: &str,
    quota: &Quota,
    before: Usage,
    after: Usage,
) -> Result<(), NodeError> {
    let over = |limit: &str, what: &str, max: Option<u64>, before: u64, after: u64| match max {
        Some(max) if after > max && after > before => {
            Err(NodeError::Rejected(WireError::over_limit(
                ErrorCode::QuotaExceeded,
                limit,
                format!(
                    "app {writer:?} would use {after} {what}, over its quota of {max} \
                         ({limit}; it uses {before}): delete records, or ask for a larger quota"
                ),
            )))
        }
        _ => Ok(()),
    };
    over(
        "max_bytes",
        "bytes of record data",
        quota.max_bytes,
        before.bytes,
        after.bytes,
    )?;
    over(
        "max_records",
        "records",
        quota.max_records,
        before.records,
        after.records,
    )
}

/// The `quota_exceeded` error of a write that would keep more than `max` versions.
pub(crate) fn too_many_versions(writer: &str, id: &str, max: u64) -> NodeError {
    NodeError::Rejected(WireError::over_limit(
        ErrorCode::QuotaExceeded,
        "max_versions",
        format!(
            "record {id:?} keeps {max} versions, the most app {writer:?} may keep \
             (max_versions, history policy refuse): the write was not applied"
        ),
    ))
}
