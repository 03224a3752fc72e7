//! Grants: which operations an app may perform on which schemas. Deny by default.
//!
//! A grant is `OPERATION:SCHEMA`, either side `*` for any (`query:post`, `mutation:*`,
//! `*:journal`). Operations without a schema (`ping`, `list_schemas`) are always allowed to
//! an authenticated app; `list_schemas` shows only the schemas the app holds a grant on.

use fold_ipc::{Operation, OperationKind};
use std::fmt;
use std::str::FromStr;

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The operation granted; `None` means any.
    pub operation: Option<OperationKind>,
    /// The schema granted; `None` means any.
    pub schema: Option<String>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.operation.map_or("*", OperationKind::as_str);
        write!(f, "{op}:{}", self.schema.as_deref().unwrap_or("*"))
    }
}

impl FromStr for Grant {
    type Err = String;

    fn from_str(text: &str) -> Result<Grant, String> {
        let (op, schema) = text.split_once(':').ok_or_else(|| {
            format!("{text:?}: expected OPERATION:SCHEMA, e.g. query:post or mutation:*")
        })?;
        let operation = match op {
            "*" => None,
            name => match OperationKind::from_name(name) {
                Some(OperationKind::Ping | OperationKind::ListSchemas) => {
                    return Err(format!("{name} is always allowed; it needs no grant"))
                }
                Some(kind) => Some(kind),
                None => return Err(format!("{name:?} is not an operation")),
            },
        };
        let schema = match schema {
            "*" => None,
            name => {
                fold_ipc::schema::validate_name(name).map_err(|e| format!("schema {e}"))?;
                Some(name.to_string())
            }
        };
        Ok(Grant { operation, schema })
    }
}

/// On the wire (the admin socket) a grant is its text, `OPERATION:SCHEMA`.
impl serde::Serialize for Grant {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read back from its text, checked as [`Grant::from_str`] checks it.
impl<'de> serde::Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Grant, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Grant {
    fn covers(&self, kind: OperationKind, schema: &str) -> bool {
        self.operation.is_none_or(|op| op == kind)
            && self.schema.as_deref().is_none_or(|s| s == schema)
    }
}

/// Whether `grants` allow `op`.
pub fn allows(grants: &[Grant], op: &Operation) -> bool {
    allows_on(grants, op.kind(), op.schema())
}

/// Whether `grants` permit an operation of `kind` on `schema` (`None`: on no schema, which
/// every authenticated app may do); what [`allows`] decides, from the parts a server reads
/// before it builds the operation.
pub fn allows_on(grants: &[Grant], kind: OperationKind, schema: Option<&str>) -> bool {
    match schema {
        None => true,
        Some(schema) => grants.iter().any(|g| g.covers(kind, schema)),
    }
}

/// Whether the app may see `schema` in `list_schemas` (it holds some grant on it).
pub fn visible(grants: &[Grant], schema: &str) -> bool {
    grants
        .iter()
        .any(|g| g.schema.as_deref().is_none_or(|s| s == schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fold_ipc::query::Query;

    fn grants(list: &[&str]) -> Vec<Grant> {
        list.iter().map(|g| g.parse().unwrap()).collect()
    }

    #[test]
    fn parse_and_display() {
        for text in [
            "query:post",
            "mutation:*",
            "*:journal",
            "*:*",
            "history:post",
        ] {
            assert_eq!(text.parse::<Grant>().unwrap().to_string(), text);
        }
        for bad in [
            "query",
            "frob:post",
            "query:../x",
            "query:Post",
            "ping:post",
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deny_by_default_and_scope() {
        let g = grants(&["query:post", "mutation:comment"]);
        assert!(allows(&g, &Operation::Query(Query::new("post"))));
        assert!(!allows(&g, &Operation::Query(Query::new("comment"))));
        assert!(!allows(
            &g,
            &Operation::GetSchema {
                name: "user".into()
            }
        ));
        assert!(allows(&g, &Operation::Ping));
        assert!(allows(&g, &Operation::ListSchemas));
        assert!(!allows(&[], &Operation::Query(Query::new("post"))));
        assert!(allows(
            &grants(&["*:*"]),
            &Operation::DeleteSchema {
                name: "x".into(),
                force: true
            }
        ));
        assert!(visible(&g, "comment") && !visible(&g, "user"));
    }
}
