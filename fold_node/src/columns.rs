//! What a name in a query refers to: the record id, a provenance column, or a schema field.

use crate::catalog::{field_expr, Schema};
use fold_ipc::schema::FieldType;
use std::borrow::Cow;

/// Provenance and version columns a query may ask for by name: `(name, column, type)`.
///
/// They start with `_`, which no field name can (`^[a-z]...`), so they never clash with
/// a schema's fields. They appear in a row only when named in `fields`.
pub const META_FIELDS: &[(&str, &str, FieldType)] = &[
    ("_version", "version", FieldType::Int),
    ("_created_at", "created_at", FieldType::Timestamp),
    ("_created_by", "created_by", FieldType::String),
    ("_updated_at", "updated_at", FieldType::Timestamp),
    ("_updated_by", "updated_by", FieldType::String),
];

/// A resolved name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Column<'a> {
    /// The record id.
    Id,
    /// A provenance column of `records`.
    Meta(&'static str, FieldType),
    /// A field of the schema.
    Field(&'a str, FieldType),
}

impl<'a> Column<'a> {
    /// Resolves `name` against `schema`; `None` when it is none of the above.
    pub fn resolve(schema: &'a Schema, name: &'a str) -> Option<Column<'a>> {
        if name == "id" {
            return Some(Column::Id);
        }
        if let Some((_, column, ty)) = META_FIELDS.iter().find(|(n, _, _)| *n == name) {
            return Some(Column::Meta(column, *ty));
        }
        schema
            .def
            .fields
            .get_key_value(name)
            .map(|(n, fd)| Column::Field(n.as_str(), fd.ty))
    }

    /// The value type.
    pub fn ty(self) -> FieldType {
        match self {
            Column::Id => FieldType::String,
            Column::Meta(_, ty) | Column::Field(_, ty) => ty,
        }
    }

    /// The SQL expression compared in filters and used for ordering. For a schema field
    /// this is the expression its index (if any) is built on. A `json` field compares as
    /// its minified JSON text.
    pub fn expr(self) -> Cow<'static, str> {
        match self {
            Column::Id => Cow::Borrowed("id"),
            Column::Meta(column, _) => Cow::Borrowed(column),
            Column::Field(name, FieldType::Json) => Cow::Owned(format!("(data -> '$.{name}')")),
            Column::Field(name, _) => Cow::Owned(field_expr(name)),
        }
    }

    /// The SQL expression that puts the value in a result row as JSON (a bool stays a
    /// bool, an object stays an object; a missing value is `null`).
    pub fn projection(self) -> Cow<'static, str> {
        match self {
            Column::Field(name, _) => Cow::Owned(format!("data -> '$.{name}'")),
            other => other.expr(),
        }
    }
}
