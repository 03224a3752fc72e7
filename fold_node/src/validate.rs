//! Checking record values against a schema.
//!
//! The rules: every key must be a field of the schema; every non-null value must have the
//! field's type; a required field must have a non-null value. `null` means "no value":
//! it is never stored, and nothing is ever invented in its place.

use crate::catalog::Schema;
use crate::error::{bad_field, NodeError};
use fold_ipc::operation::Record;
use fold_ipc::schema::FieldType;
use serde_json::Value;

/// What a JSON value is, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a value of `ty` must look like, for error messages.
pub(crate) fn expected(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::Int => "an integer between -2^63 and 2^63-1",
        FieldType::Float => "a number",
        FieldType::Bool => "true or false",
        FieldType::Timestamp => "an integer (milliseconds since the Unix epoch)",
        FieldType::Json => "any JSON value",
    }
}

/// Whether `v` (not null) is a value of `ty`.
pub(crate) fn has_type(ty: FieldType, v: &Value) -> bool {
    match ty {
        FieldType::String => v.is_string(),
        FieldType::Int | FieldType::Timestamp => v.as_i64().is_some(),
        FieldType::Float => v.is_number(),
        FieldType::Bool => v.is_boolean(),
        FieldType::Json => true,
    }
}

fn check_field(schema: &Schema, name: &str, v: &Value) -> Result<(), NodeError> {
    let path = format!("params.data.{name}");
    let Some(fd) = schema.field(name) else {
        return Err(bad_field(
            path,
            format!(
                "unknown field {name:?}; schema {:?} has: {}",
                schema.name(),
                schema.field_list()
            ),
        ));
    };
    if !v.is_null() && !has_type(fd.ty, v) {
        return Err(bad_field(
            path,
            format!(
                "field {name:?} is {}: expected {}, got {}",
                fd.ty.as_str(),
                expected(fd.ty),
                json_kind(v)
            ),
        ));
    }
    Ok(())
}

fn check_required(schema: &Schema, data: &Record) -> Result<(), NodeError> {
    for (name, fd) in &schema.def.fields {
        if fd.required && !data.contains_key(name) {
            return Err(bad_field(
                format!("params.data.{name}"),
                format!("field {name:?} is required"),
            ));
        }
    }
    Ok(())
}

/// The stored form of a new record: `data` checked, with nulls dropped.
pub(crate) fn new_record(schema: &Schema, data: Record) -> Result<Record, NodeError> {
    for (name, v) in &data {
        check_field(schema, name, v)?;
    }
    let stored: Record = data.into_iter().filter(|(_, v)| !v.is_null()).collect();
    check_required(schema, &stored)?;
    Ok(stored)
}

/// `current` with `patch` applied: a value sets a field, `null` clears it.
pub(crate) fn patched(
    schema: &Schema,
    mut current: Record,
    patch: Record,
) -> Result<Record, NodeError> {
    for (name, v) in &patch {
        check_field(schema, name, v)?;
        if v.is_null() && schema.field(name).is_some_and(|fd| fd.required) {
            return Err(bad_field(
                format!("params.data.{name}"),
                format!("field {name:?} is required and cannot be cleared"),
            ));
        }
    }
    for (name, v) in patch {
        if v.is_null() {
            current.remove(&name);
        } else {
            current.insert(name, v);
        }
    }
    check_required(schema, &current)?;
    Ok(current)
}
