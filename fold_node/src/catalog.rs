//! Schemas: the catalog table, its in-memory cache, and the per-field indexes.
//!
//! A schema is immutable once created (there is no `update_schema`), and its `sid` is never
//! reused, so a parsed definition can be cached by `sid` forever. Every operation still
//! looks the name up in the `schemas` table inside its own transaction, which keeps a node
//! correct while an admin command creates or deletes schemas beside it.

use crate::error::{conflict, not_found, NodeError};
use fold_ipc::schema::{validate_name, FieldDef, FieldType, SchemaDef};
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A stored schema: its number in the database and its definition.
#[derive(Debug)]
pub(crate) struct Schema {
    /// The schema's number: the key of its rows in `records` and `versions`.
    pub sid: i64,
    /// The definition, as created.
    pub def: SchemaDef,
}

impl Schema {
    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.def.fields.get(name)
    }

    /// The field names, comma-separated, for error messages.
    pub fn field_list(&self) -> String {
        let names: Vec<&str> = self.def.fields.keys().map(String::as_str).collect();
        if names.is_empty() {
            "no fields".into()
        } else {
            names.join(", ")
        }
    }
}

/// Parsed schema definitions by `sid`, shared by every connection of a node.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    by_sid: Mutex<HashMap<i64, Arc<Schema>>>,
}

impl Catalog {
    /// The schema called `name`, as the connection's current transaction sees it.
    ///
    /// # Errors
    ///
    /// `not_found` when there is no such schema.
    pub fn lookup(&self, conn: &Connection, name: &str) -> Result<Arc<Schema>, NodeError> {
        let mut stmt = conn.prepare_cached("SELECT sid FROM schemas WHERE name = ?1")?;
        let sid: Option<i64> = stmt.query_row([name], |r| r.get(0)).optional()?;
        let sid = sid.ok_or_else(|| not_found(format!("no schema named {name:?}")))?;
        if let Some(schema) = self.cached(sid) {
            return Ok(schema);
        }
        let text: String = conn
            .prepare_cached("SELECT def FROM schemas WHERE sid = ?1")?
            .query_row([sid], |r| r.get(0))?;
        let def: SchemaDef = serde_json::from_str(&text)
            .map_err(|e| NodeError::Corrupt(format!("definition of schema {name:?}: {e}")))?;
        // Names are checked at creation; a definition that fails now was not written by us,
        // and its names must never reach SQL.
        def.validate()
            .map_err(|(f, m)| NodeError::Corrupt(format!("schema {name:?}: {f}: {m}")))?;
        let schema = Arc::new(Schema { sid, def });
        self.lock().insert(sid, Arc::clone(&schema));
        Ok(schema)
    }

    fn cached(&self, sid: i64) -> Option<Arc<Schema>> {
        self.lock().get(&sid).cloned()
    }

    /// Forgets every cached definition. Called when a write transaction rolls back, since
    /// a rolled-back `sid` may be handed out again.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Schema>>> {
        self.by_sid.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every schema name, sorted.
pub(crate) fn list(conn: &Connection) -> Result<Vec<String>, NodeError> {
    let mut stmt = conn.prepare_cached("SELECT name FROM schemas ORDER BY name")?;
    let names = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

/// The SQL expression for a field's value. Field names match `^[a-z][a-z0-9_]{0,63}$`
/// (checked when the schema was created and again when it is loaded), so the JSON path is
/// a safe literal; it has to be a literal for SQLite to match it to the index expression.
pub(crate) fn field_expr(field: &str) -> String {
    debug_assert!(validate_name(field).is_ok());
    format!("json_extract(data,'$.{field}')")
}

/// The name of the index on one field of one schema.
fn index_name(sid: i64, field: &str) -> String {
    format!("\"fx_{sid}_{field}\"")
}

/// Creates a schema and the indexes of its indexed fields.
///
/// # Errors
///
/// `conflict` when a schema of that name exists.
pub(crate) fn create(
    conn: &Connection,
    def: &SchemaDef,
    writer: &str,
    now: i64,
) -> Result<(), NodeError> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT sid FROM schemas WHERE name = ?1")?
        .query_row([&def.name], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(conflict(format!("schema {:?} already exists", def.name)));
    }
    let text = serde_json::to_string(def)
        .map_err(|e| NodeError::Corrupt(format!("cannot encode schema: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO schemas (name, def, created_at, created_by) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(rusqlite::params![def.name, text, now, writer])?;
    let sid = conn.last_insert_rowid();
    for (field, fd) in &def.fields {
        if fd.indexed {
            // `sid` is our own integer; `field` passed `validate_name`; both are literals
            // so that queries carrying `sid = N` can use this partial index.
            conn.execute_batch(&format!(
                "CREATE INDEX {} ON records({}, id) WHERE sid = {sid}",
                index_name(sid, field),
                field_expr(field)
            ))?;
        }
    }
    Ok(())
}

/// Deletes a schema, with its records, history and indexes. Returns how many records it
/// held.
///
/// # Errors
///
/// `not_found` for an unknown schema; `conflict` when it holds records and `force` is off.
pub(crate) fn delete(
    conn: &Connection,
    catalog: &Catalog,
    name: &str,
    force: bool,
) -> Result<u64, NodeError> {
    let schema = catalog.lookup(conn, name)?;
    let sid = schema.sid;
    let records: i64 = conn
        .prepare_cached("SELECT count(*) FROM records WHERE sid = ?1")?
        .query_row([sid], |r| r.get(0))?;
    if records > 0 && !force {
        return Err(conflict(format!(
            "schema {name:?} holds {records} records; delete them first or pass force"
        )));
    }
    for (field, fd) in &schema.def.fields {
        if fd.indexed {
            conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", index_name(sid, field)))?;
        }
    }
    crate::usage::drop_schema(conn, sid)?;
    conn.prepare_cached("DELETE FROM records WHERE sid = ?1")?
        .execute([sid])?;
    conn.prepare_cached("DELETE FROM versions WHERE sid = ?1")?
        .execute([sid])?;
    conn.prepare_cached("DELETE FROM schemas WHERE sid = ?1")?
        .execute([sid])?;
    Ok(u64::try_from(records).unwrap_or(0))
}

/// Whether values of this type can be ordered and compared with `lt`..`gte`.
pub(crate) fn is_ordered(ty: FieldType) -> bool {
    !matches!(ty, FieldType::Json)
}
