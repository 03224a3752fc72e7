//! Compiling a filter tree to a parameterised SQL expression.
//!
//! Names are resolved against the schema before they reach SQL (unknown names are a
//! `bad_request` naming the filter node), and every value is type-checked against its
//! field and bound as a parameter: no value is ever spliced into the SQL text.
//!
//! Semantics are two-valued: a comparison on a record that has no value for the field does
//! not match (except `eq null` / `ne null`, which test for absence and presence), and
//! `not` matches exactly the records its sub-filter does not.

use crate::budget::CONTAINS_FN;
use crate::catalog::{is_ordered, Schema};
use crate::columns::Column;
use crate::error::{bad_field, NodeError};
use crate::validate::{expected, has_type, json_kind};
use fold_ipc::query::Filter;
use fold_ipc::schema::FieldType;
use fold_ipc::{ErrorCode, WireError};
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

/// Most parameters one query may bind (SQLite's own limit is 32766).
pub const MAX_SQL_PARAMS: usize = 10_000;

/// SQL text being built, with its parameters in order of appearance.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<SqlValue>,
}

impl Sql {
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    pub fn param(&mut self, v: SqlValue) {
        self.text.push('?');
        self.params.push(v);
    }
}

/// Appends the SQL for `filter` (found at `path` in the request) to `sql`.
pub(crate) fn compile(
    sql: &mut Sql,
    schema: &Schema,
    filter: &Filter,
    path: &str,
) -> Result<(), NodeError> {
    match filter {
        Filter::And { filters } | Filter::Or { filters } => {
            let (joiner, empty) = if matches!(filter, Filter::And { .. }) {
                (" AND ", "1")
            } else {
                (" OR ", "0")
            };
            if filters.is_empty() {
                sql.push(empty);
                return Ok(());
            }
            sql.push("(");
            for (i, f) in filters.iter().enumerate() {
                if i > 0 {
                    sql.push(joiner);
                }
                compile(sql, schema, f, &format!("{path}.filters[{i}]"))?;
            }
            sql.push(")");
        }
        Filter::Not { filter } => {
            sql.push("NOT coalesce(");
            compile(sql, schema, filter, &format!("{path}.filter"))?;
            sql.push(", 0)");
        }
        Filter::Eq { field, value } | Filter::Ne { field, value } => {
            let eq = matches!(filter, Filter::Eq { .. });
            let col = column(schema, field, path)?;
            if value.is_null() {
                sql.push(&format!(
                    "{} IS {}NULL",
                    col.expr(),
                    if eq { "" } else { "NOT " }
                ));
            } else {
                compare(
                    sql,
                    col,
                    if eq { "=" } else { "!=" },
                    value,
                    &format!("{path}.value"),
                )?;
            }
        }
        Filter::Lt { field, value }
        | Filter::Lte { field, value }
        | Filter::Gt { field, value }
        | Filter::Gte { field, value } => {
            let op = match filter {
                Filter::Lt { .. } => "<",
                Filter::Lte { .. } => "<=",
                Filter::Gt { .. } => ">",
                _ => ">=",
            };
            let col = column(schema, field, path)?;
            if !is_ordered(col.ty()) {
                return Err(bad_field(
                    format!("{path}.field"),
                    format!("{field:?} is a json field: it supports eq, ne and in only"),
                ));
            }
            compare(sql, col, op, value, &format!("{path}.value"))?;
        }
        Filter::In { field, values } => {
            let col = column(schema, field, path)?;
            if values.is_empty() {
                sql.push("0");
                return Ok(());
            }
            sql.push(&col.expr());
            sql.push(" IN (");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    sql.push(",");
                }
                bind(sql, col, v, &format!("{path}.values[{i}]"))?;
            }
            sql.push(")");
        }
        Filter::Contains { field, value } => {
            // Linear time, and counted into the read's work budget (see `crate::budget`);
            // SQLite's `instr` is O(haystack x needle) on adversarial input.
            let col = string_column(schema, field, path, "contains")?;
            sql.push(&format!("{CONTAINS_FN}({}, ", col.expr()));
            sql.param(SqlValue::Text(value.clone()));
            sql.push(")");
        }
        Filter::Prefix { field, value } => {
            // A range rather than LIKE: case-sensitive, no escaping, and it can use an index.
            let col = string_column(schema, field, path, "prefix")?;
            let expr = col.expr();
            sql.push(&format!("({expr} >= "));
            sql.param(SqlValue::Text(value.clone()));
            if let Some(next) = successor(value) {
                sql.push(&format!(" AND {expr} < "));
                sql.param(SqlValue::Text(next));
            }
            sql.push(")");
        }
    }
    if sql.params.len() > MAX_SQL_PARAMS {
        return Err(NodeError::Rejected(WireError {
            field: Some("params.filter".into()),
            ..WireError::over_limit(
                ErrorCode::TooExpensive,
                "max_sql_params",
                format!("params.filter: the filter binds more than {MAX_SQL_PARAMS} values"),
            )
        }));
    }
    Ok(())
}

fn column<'a>(schema: &'a Schema, field: &'a str, path: &str) -> Result<Column<'a>, NodeError> {
    Column::resolve(schema, field).ok_or_else(|| {
        bad_field(
            format!("{path}.field"),
            format!(
                "unknown field {field:?}; schema {:?} has: id, {}",
                schema.name(),
                schema.field_list()
            ),
        )
    })
}

fn string_column<'a>(
    schema: &'a Schema,
    field: &'a str,
    path: &str,
    op: &str,
) -> Result<Column<'a>, NodeError> {
    let col = column(schema, field, path)?;
    if col.ty() != FieldType::String {
        return Err(bad_field(
            format!("{path}.field"),
            format!(
                "{op} applies to string fields; {field:?} is {}",
                col.ty().as_str()
            ),
        ));
    }
    Ok(col)
}

fn compare(
    sql: &mut Sql,
    col: Column<'_>,
    op: &str,
    value: &Value,
    path: &str,
) -> Result<(), NodeError> {
    sql.push(&format!("{} {op} ", col.expr()));
    bind(sql, col, value, path)
}

/// Binds `value` as a parameter of `col`'s type.
fn bind(sql: &mut Sql, col: Column<'_>, value: &Value, path: &str) -> Result<(), NodeError> {
    let ty = col.ty();
    if value.is_null() || !has_type(ty, value) {
        return Err(bad_field(
            path,
            format!(
                "expected {} (the field is {}), got {}",
                expected(ty),
                ty.as_str(),
                json_kind(value)
            ),
        ));
    }
    let v = match (ty, value) {
        (FieldType::String, Value::String(s)) => SqlValue::Text(s.clone()),
        (FieldType::Bool, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (FieldType::Int | FieldType::Timestamp, v) => SqlValue::Integer(v.as_i64().unwrap_or(0)),
        (FieldType::Float, v) => SqlValue::Real(v.as_f64().unwrap_or(0.0)),
        (_, v) => {
            // json: compared as minified JSON text, on both sides.
            sql.push("json(");
            sql.param(SqlValue::Text(v.to_string()));
            sql.push(")");
            return Ok(());
        }
    };
    sql.param(v);
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`, if any.
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if next == 0xD800 {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn successor_bounds_the_prefix_range() {
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(successor(""), None);
        assert_eq!(successor("\u{10FFFF}"), None);
    }
}
