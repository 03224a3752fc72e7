//! Running a query: projection, filter, order, and a page of rows with its cursor.
//!
//! One query is one SQL statement:
//!
//! ```sql
//! SELECT json_object('id', id, 'title', data -> '$.title', ...), <order keys...>
//! FROM records
//! WHERE sid = 7 AND (<filter>) AND (<after the cursor>)
//! ORDER BY json_extract(data,'$.title'), id
//! LIMIT 101 OFFSET ?
//! ```
//!
//! `sid = 7` is a literal (our own integer) so that SQLite can use the partial indexes of
//! indexed fields, and so is the limit (see [`compile`]); everything that came from the
//! request is a bound parameter. The row objects are built by SQLite and copied into the
//! result text as they are.

use crate::catalog::{is_ordered, Catalog, Schema};
use crate::columns::Column;
use crate::cursor;
use crate::error::{bad_field, NodeError};
use crate::filter::{self, Sql};
use fold_ipc::query::{Filter, Query, QueryResultWriter, DEFAULT_LIMIT};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use serde_json::value::RawValue;

/// A query compiled against its schema.
#[derive(Debug)]
pub(crate) struct Compiled {
    sql: Sql,
    /// Ordering keys selected after the row object (the last is always `id`).
    n_keys: usize,
    /// Rows per page.
    limit: usize,
    /// What a cursor of this query must match: schema, filter and ordering. Kept as parts
    /// and hashed only when a cursor is read or made, which most queries never do.
    sid: i64,
    /// The ordering keys' expressions and directions.
    order: Vec<(String, bool)>,
}

impl Compiled {
    /// What a cursor of this query (`filter` is its filter) must match: schema, filter
    /// and ordering. Hashed only when a cursor is read or made, which most queries never do.
    fn fingerprint(&self, filter: &Option<Filter>) -> String {
        cursor::fingerprint(&(self.sid, filter, &self.order))
    }
}

/// Compiles `q` for `schema`.
pub(crate) fn compile(schema: &Schema, q: &Query) -> Result<Compiled, NodeError> {
    let mut sql = Sql::default();
    sql.push("SELECT json_object('id', id");
    project(&mut sql, schema, q)?;
    sql.push(")");

    let order = order_keys(schema, q)?;
    for (col, _) in &order {
        sql.push(", ");
        sql.push(&col.expr());
    }
    sql.push(&format!(" FROM records WHERE sid = {}", schema.sid));
    if let Some(f) = &q.filter {
        sql.push(" AND ");
        filter::compile(&mut sql, schema, f, "params.filter")?;
    }
    let order_exprs = order
        .iter()
        .map(|(c, desc)| (c.expr().into_owned(), *desc))
        .collect::<Vec<_>>();
    if let Some(c) = &q.cursor {
        let fingerprint = cursor::fingerprint(&(schema.sid, &q.filter, &order_exprs));
        let keys = cursor::decode(c, &fingerprint, order.len())?;
        sql.push(" AND ");
        after(&mut sql, &order, keys);
    }
    sql.push(" ORDER BY ");
    for (i, (col, desc)) in order.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push(&col.expr());
        if *desc {
            sql.push(" DESC");
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT) as usize;
    // The limit is a literal, not a bound parameter: SQLite re-prepares a statement whose
    // LIMIT is bound every time it is bound (the statement cache does not help), which was
    // half of a point read's cost. It is our own validated integer (at most MAX_LIMIT + 1),
    // so there is nothing to inject, and the cache holds one statement per page size used.
    sql.push(&format!(" LIMIT {}", limit as u64 + 1));
    sql.push(" OFFSET ");
    sql.param(SqlValue::Integer(
        i64::try_from(q.offset.unwrap_or(0)).unwrap_or(i64::MAX),
    ));
    Ok(Compiled {
        sql,
        n_keys: order.len(),
        limit,
        sid: schema.sid,
        order: order_exprs,
    })
}

/// Appends `, 'name', <value>` for each projected column.
fn project(sql: &mut Sql, schema: &Schema, q: &Query) -> Result<(), NodeError> {
    let Some(fields) = &q.fields else {
        for (name, fd) in &schema.def.fields {
            let col = Column::Field(name, fd.ty);
            sql.push(&format!(", '{name}', {}", col.projection()));
        }
        return Ok(());
    };
    let mut seen: Vec<&str> = vec!["id"];
    for (i, name) in fields.iter().enumerate() {
        let col = Column::resolve(schema, name).ok_or_else(|| {
            bad_field(
                format!("params.fields[{i}]"),
                format!(
                    "unknown field {name:?}; schema {:?} has: {}",
                    schema.name(),
                    schema.field_list()
                ),
            )
        })?;
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        // `name` resolved to a schema field or a fixed provenance name: a safe literal.
        sql.push(&format!(", '{name}', {}", col.projection()));
    }
    Ok(())
}

/// The ordering keys: those asked for, then `id` as the unique tie-breaker. Keys after an
/// explicit `id` can never decide anything and are dropped.
fn order_keys<'a>(schema: &'a Schema, q: &'a Query) -> Result<Vec<(Column<'a>, bool)>, NodeError> {
    let mut keys = Vec::new();
    for (i, ob) in q.order_by.iter().enumerate() {
        let path = format!("params.order_by[{i}].field");
        let col = Column::resolve(schema, &ob.field).ok_or_else(|| {
            bad_field(
                &path,
                format!(
                    "unknown field {:?}; schema {:?} has: id, {}",
                    ob.field,
                    schema.name(),
                    schema.field_list()
                ),
            )
        })?;
        if !is_ordered(col.ty()) {
            return Err(bad_field(
                path,
                format!("{:?} is a json field and cannot be ordered by", ob.field),
            ));
        }
        keys.push((col, ob.desc));
        if matches!(col, Column::Id) {
            return Ok(keys);
        }
    }
    keys.push((Column::Id, false));
    Ok(keys)
}

/// Appends "the row comes strictly after `keys` in this order". SQLite sorts NULL first
/// ascending and last descending; the comparisons below follow that.
fn after(sql: &mut Sql, order: &[(Column<'_>, bool)], keys: Vec<SqlValue>) {
    // Help the planner: with an ascending, non-null first key, the range starts there.
    if let (Some((col, false)), Some(first)) = (order.first(), keys.first()) {
        if !matches!(first, SqlValue::Null) {
            sql.push(&format!("{} >= ", col.expr()));
            sql.param(first.clone());
            sql.push(" AND ");
        }
    }
    let n = order.len();
    for (i, ((col, desc), key)) in order.iter().zip(keys).enumerate() {
        let expr = col.expr();
        let last = i + 1 == n;
        sql.push("(");
        match (desc, key.clone()) {
            (false, SqlValue::Null) => sql.push(&format!("{expr} IS NOT NULL")),
            (true, SqlValue::Null) => sql.push("0"),
            (false, k) => {
                sql.push(&format!("{expr} > "));
                sql.param(k);
            }
            (true, k) => {
                sql.push(&format!("({expr} < "));
                sql.param(k);
                sql.push(&format!(" OR {expr} IS NULL)"));
            }
        }
        if last {
            sql.push(")");
        } else {
            sql.push(" OR (");
            if matches!(key, SqlValue::Null) {
                sql.push(&format!("{expr} IS NULL"));
            } else {
                sql.push(&format!("{expr} = "));
                sql.param(key);
            }
            sql.push(" AND ");
        }
    }
    // Close the "OR (... AND" groups opened above.
    for _ in 1..n {
        sql.push("))");
    }
}

/// Runs `q` and returns its page, a [`QueryResult`](fold_ipc::query::QueryResult) JSON.
pub(crate) fn run(
    conn: &Connection,
    catalog: &Catalog,
    q: &Query,
) -> Result<Box<RawValue>, NodeError> {
    let schema = catalog.lookup(conn, &q.schema)?;
    let c = compile(&schema, q)?;
    let mut stmt = conn.prepare_cached(&c.sql.text)?;
    let mut rows = stmt.query(params_from_iter(&c.sql.params))?;
    // The row objects SQLite built go into the page as text, unparsed.
    let mut page = QueryResultWriter::new();
    let mut last_keys = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next()? {
        if page.rows() == c.limit {
            more = true;
            break;
        }
        page.push_row(row.get_ref(0)?.as_str()?);
        if page.rows() == c.limit {
            last_keys = (1..=c.n_keys)
                .map(|i| row.get::<_, SqlValue>(i))
                .collect::<Result<_, _>>()?;
        }
    }
    let next = if more {
        Some(cursor::encode(&c.fingerprint(&q.filter), &last_keys)?)
    } else {
        None
    };
    page.finish(next.as_deref())
        .map_err(|e| NodeError::Corrupt(format!("query result: {e}")))
}

/// SQLite's plan for `q`, one line per step (`EXPLAIN QUERY PLAN`).
pub(crate) fn explain(
    conn: &Connection,
    catalog: &Catalog,
    q: &Query,
) -> Result<Vec<String>, NodeError> {
    let schema = catalog.lookup(conn, &q.schema)?;
    let c = compile(&schema, q)?;
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", c.sql.text))?;
    let lines = stmt
        .query_map(params_from_iter(&c.sql.params), |r| r.get::<_, String>(3))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lines)
}
