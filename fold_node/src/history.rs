//! Reading a record's history: every version, oldest first.

use crate::catalog::Catalog;
use crate::error::{not_found, NodeError};
use fold_ipc::operation::{HistoryResult, MutationKind, RecordVersion};
use rusqlite::{params, Connection};

/// Every version of record `id` of `schema`, oldest first. Deleted records keep their
/// history, ending with the `delete` version.
///
/// # Errors
///
/// `not_found` for an unknown schema, or a record that never existed.
pub(crate) fn history(
    conn: &Connection,
    catalog: &Catalog,
    schema: &str,
    id: &str,
) -> Result<HistoryResult, NodeError> {
    let schema = catalog.lookup(conn, schema)?;
    let mut stmt = conn.prepare_cached(
        "SELECT version, action, ts, writer, data FROM versions
         WHERE sid = ?1 AND id = ?2 ORDER BY version",
    )?;
    let mut rows = stmt.query(params![schema.sid, id])?;
    let mut versions = Vec::new();
    while let Some(row) = rows.next()? {
        let action = match row.get_ref(1)?.as_str()? {
            "create" => MutationKind::Create,
            "update" => MutationKind::Update,
            "delete" => MutationKind::Delete,
            other => return Err(NodeError::Corrupt(format!("unknown action {other:?}"))),
        };
        let data = match row.get_ref(4)?.as_str_or_null()? {
            None => None,
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| NodeError::Corrupt(format!("version of {id:?}: {e}")))?,
            ),
        };
        versions.push(RecordVersion {
            version: row.get(0)?,
            action,
            timestamp: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            writer: row.get(3)?,
            data,
        });
    }
    if versions.is_empty() {
        return Err(not_found(format!(
            "record {id:?} never existed in schema {:?}",
            schema.name()
        )));
    }
    Ok(HistoryResult { versions })
}
