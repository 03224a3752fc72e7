//! Schema definitions and the name rule shared by schemas and fields.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest schema or field name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Most fields a schema may declare.
pub const MAX_FIELDS: usize = 128;

/// Field names a schema may not declare, because every record already has them.
pub const RESERVED_FIELDS: &[&str] = &["id"];

/// Checks a schema or field name against `^[a-z][a-z0-9_]{0,63}$`.
///
/// Names are never used to build a path, but the rule keeps them safe to print, to use as
/// SQL identifiers once quoted, and to put in grants (`query:post`).
///
/// # Errors
///
/// A message saying why the name is refused.
pub fn validate_name(name: &str) -> Result<(), String> {
    // The length first: the messages below quote the name, which must be short by then.
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long; the maximum is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("name is empty".into()),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err(format!(
                "name {name:?} must start with a lowercase ascii letter"
            ));
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "name {name:?} contains {bad:?}; only lowercase ascii letters, digits and '_' are allowed"
        ));
    }
    Ok(())
}

/// The type of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A UTF-8 string.
    String,
    /// A signed 64-bit integer.
    Int,
    /// A 64-bit float (finite).
    Float,
    /// `true` or `false`.
    Bool,
    /// Milliseconds since the Unix epoch, as an integer.
    Timestamp,
    /// Any JSON value, stored as given.
    Json,
}

impl FieldType {
    /// The type's name as it appears in a schema definition.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Json => "json",
        }
    }
}

/// One field of a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// The type every value of this field must have.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether a record must carry a non-null value for this field.
    #[serde(default)]
    pub required: bool,
    /// Whether the node keeps an index on this field, for fast filters and ordering.
    #[serde(default)]
    pub indexed: bool,
}

/// A schema: a named record type with typed fields. The `create_schema` params and the
/// `get_schema` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaDef {
    /// The schema's name; see [`validate_name`].
    pub name: String,
    /// The fields, by name; sorted, so a definition prints the same way every time.
    pub fields: BTreeMap<String, FieldDef>,
}

impl SchemaDef {
    /// Checks the schema's name, each field name, and the field count.
    ///
    /// # Errors
    ///
    /// `(field path, message)` for the first problem found, e.g. `("fields.Title", "...")`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        validate_name(&self.name).map_err(|m| ("name".to_string(), m))?;
        if self.fields.len() > MAX_FIELDS {
            return Err((
                "fields".into(),
                format!(
                    "{} fields declared; the maximum is {MAX_FIELDS}",
                    self.fields.len()
                ),
            ));
        }
        for name in self.fields.keys() {
            let path = format!("fields.{name}");
            validate_name(name).map_err(|m| (path.clone(), m))?;
            if RESERVED_FIELDS.contains(&name.as_str()) {
                return Err((path, format!("{name:?} is reserved: every record has it")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule() {
        for ok in ["a", "post", "user_2", "a_b_c", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "Post",
            "1a",
            "_a",
            "a-b",
            "a.b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schema_validation_names_the_field() {
        let def: SchemaDef =
            serde_json::from_str(r#"{"name":"post","fields":{"Title":{"type":"string"}}}"#)
                .unwrap();
        assert_eq!(def.validate().unwrap_err().0, "fields.Title");
        let def: SchemaDef =
            serde_json::from_str(r#"{"name":"post","fields":{"id":{"type":"int"}}}"#).unwrap();
        assert_eq!(def.validate().unwrap_err().0, "fields.id");
    }
}
