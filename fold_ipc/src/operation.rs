//! Operations: the typed form of a request's `operation` and `params`.
//!
//! On the wire an operation is a name and a JSON `params` value. [`Operation::parse`] turns
//! the pair into one [`Operation`], or a `bad_request` [`WireError`] naming the field at
//! fault; [`Operation::name`] and [`Operation::params_json`] go the other way.

use crate::error::WireError;
use crate::query::Query;
use crate::schema::{validate_name, SchemaDef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// Longest record id accepted, in bytes.
pub const MAX_RECORD_ID_LEN: usize = 64;

/// A JSON object: a record's field values.
pub type Record = Map<String, Value>;

/// The kind of an operation, without its parameters; what grants are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperationKind {
    /// `ping`: liveness and protocol version.
    Ping,
    /// `list_schemas`: names of the schemas the caller may see.
    ListSchemas,
    /// `get_schema`: one schema's definition.
    GetSchema,
    /// `create_schema`: define a new schema.
    CreateSchema,
    /// `delete_schema`: drop a schema (with `force`, also its records).
    DeleteSchema,
    /// `query`: read records.
    Query,
    /// `mutation`: create, update or delete a record.
    Mutation,
    /// `history`: every version of one record.
    History,
}

impl OperationKind {
    /// Every operation kind, in protocol order.
    pub const ALL: [OperationKind; 8] = [
        OperationKind::Ping,
        OperationKind::ListSchemas,
        OperationKind::GetSchema,
        OperationKind::CreateSchema,
        OperationKind::DeleteSchema,
        OperationKind::Query,
        OperationKind::Mutation,
        OperationKind::History,
    ];

    /// The operation's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Ping => "ping",
            OperationKind::ListSchemas => "list_schemas",
            OperationKind::GetSchema => "get_schema",
            OperationKind::CreateSchema => "create_schema",
            OperationKind::DeleteSchema => "delete_schema",
            OperationKind::Query => "query",
            OperationKind::Mutation => "mutation",
            OperationKind::History => "history",
        }
    }

    /// Whether it changes data (and so goes through the node's writer).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            OperationKind::CreateSchema | OperationKind::DeleteSchema | OperationKind::Mutation
        )
    }

    /// The kind named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<OperationKind> {
        OperationKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `mutation` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MutationKind {
    /// Insert a new record; the node generates its id.
    Create,
    /// Patch some fields of an existing record.
    Update,
    /// Remove a record (its history is kept).
    Delete,
}

/// A typed mutation.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Insert `data` as a new record of `schema`.
    Create {
        /// The schema written.
        schema: String,
        /// The new record's field values.
        data: Record,
    },
    /// Set the fields in `data` on record `id`; other fields keep their values.
    /// A field set to `null` is cleared (refused for required fields).
    Update {
        /// The schema written.
        schema: String,
        /// The record patched.
        id: String,
        /// The fields to change.
        data: Record,
    },
    /// Delete record `id`.
    Delete {
        /// The schema written.
        schema: String,
        /// The record deleted.
        id: String,
    },
}

impl Mutation {
    /// The schema this mutation writes.
    pub fn schema(&self) -> &str {
        match self {
            Mutation::Create { schema, .. }
            | Mutation::Update { schema, .. }
            | Mutation::Delete { schema, .. } => schema,
        }
    }

    /// Create, update or delete.
    pub fn kind(&self) -> MutationKind {
        match self {
            Mutation::Create { .. } => MutationKind::Create,
            Mutation::Update { .. } => MutationKind::Update,
            Mutation::Delete { .. } => MutationKind::Delete,
        }
    }
}

/// A typed operation with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Liveness check; params absent, `null` or `{}`. Result: [`Pong`].
    Ping,
    /// List schema names. Result: [`SchemaList`].
    ListSchemas,
    /// One schema's definition. Params `{"name"}`. Result: [`SchemaDef`].
    GetSchema {
        /// The schema's name.
        name: String,
    },
    /// Define a schema. Params: the [`SchemaDef`]. Result: the stored [`SchemaDef`].
    CreateSchema(SchemaDef),
    /// Drop a schema. Params `{"name", "force"?}`. Result: [`DeleteSchemaResult`].
    DeleteSchema {
        /// The schema's name.
        name: String,
        /// Also delete its records; without it a schema holding records is a `conflict`.
        force: bool,
    },
    /// Read records. Params: a [`Query`]. Result: [`QueryResult`](crate::query::QueryResult).
    Query(Query),
    /// Write a record. Params `{"schema", "action", "id"?, "data"?}`.
    /// Result: [`MutationResult`].
    Mutation(Mutation),
    /// Every version of one record. Params `{"schema", "id"}`. Result: [`HistoryResult`].
    History {
        /// The record's schema.
        schema: String,
        /// The record's id.
        id: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteSchemaParams {
    name: String,
    #[serde(default)]
    force: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordParams {
    schema: String,
    id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MutationParams {
    schema: String,
    action: MutationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Record>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

impl Operation {
    /// The operation's kind.
    pub fn kind(&self) -> OperationKind {
        match self {
            Operation::Ping => OperationKind::Ping,
            Operation::ListSchemas => OperationKind::ListSchemas,
            Operation::GetSchema { .. } => OperationKind::GetSchema,
            Operation::CreateSchema(_) => OperationKind::CreateSchema,
            Operation::DeleteSchema { .. } => OperationKind::DeleteSchema,
            Operation::Query(_) => OperationKind::Query,
            Operation::Mutation(_) => OperationKind::Mutation,
            Operation::History { .. } => OperationKind::History,
        }
    }

    /// The operation's name on the wire.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The schema the operation touches, if it touches exactly one.
    pub fn schema(&self) -> Option<&str> {
        match self {
            Operation::Ping | Operation::ListSchemas => None,
            Operation::GetSchema { name } | Operation::DeleteSchema { name, .. } => Some(name),
            Operation::CreateSchema(def) => Some(&def.name),
            Operation::Query(q) => Some(&q.schema),
            Operation::Mutation(m) => Some(m.schema()),
            Operation::History { schema, .. } => Some(schema),
        }
    }

    /// Parses a wire operation name and its raw `params`.
    ///
    /// # Errors
    ///
    /// A `bad_request` [`WireError`]: for an unknown operation its `field` is `operation`;
    /// for bad params it names the parameter (e.g. `params.limit`). A query whose filter is
    /// over a size limit is `too_expensive` naming the limit (see
    /// [`Filter::check_limits`](crate::query::Filter::check_limits)).
    pub fn parse(operation: &str, params: Option<&RawValue>) -> Result<Operation, WireError> {
        let kind = OperationKind::from_name(operation).ok_or_else(|| {
            let known: Vec<_> = OperationKind::ALL.iter().map(|k| k.as_str()).collect();
            WireError::bad_field(
                "operation",
                format!(
                    "unknown operation {operation:?}; known: {}",
                    known.join(", ")
                ),
            )
        })?;
        let op = match kind {
            OperationKind::Ping => {
                no_params(params)?;
                Operation::Ping
            }
            OperationKind::ListSchemas => {
                no_params(params)?;
                Operation::ListSchemas
            }
            OperationKind::GetSchema => {
                let p: NameParams = params_of(params)?;
                check_name("params.name", &p.name)?;
                Operation::GetSchema { name: p.name }
            }
            OperationKind::CreateSchema => {
                let def: SchemaDef = params_of(params)?;
                def.validate()
                    .map_err(|(f, m)| WireError::bad_field(format!("params.{f}"), m))?;
                Operation::CreateSchema(def)
            }
            OperationKind::DeleteSchema => {
                let p: DeleteSchemaParams = params_of(params)?;
                check_name("params.name", &p.name)?;
                Operation::DeleteSchema {
                    name: p.name,
                    force: p.force,
                }
            }
            OperationKind::Query => {
                let q: Query = params_of(params)?;
                q.validate()?;
                Operation::Query(q)
            }
            OperationKind::Mutation => Operation::Mutation(parse_mutation(params_of(params)?)?),
            OperationKind::History => {
                let p: RecordParams = params_of(params)?;
                check_name("params.schema", &p.schema)?;
                check_record_id(&p.id)?;
                Operation::History {
                    schema: p.schema,
                    id: p.id,
                }
            }
        };
        Ok(op)
    }

    /// The params as the JSON text that goes on the wire (and under the signature);
    /// `None` for operations without params.
    pub fn params_json(&self) -> Option<String> {
        let value = match self {
            Operation::Ping | Operation::ListSchemas => return None,
            Operation::GetSchema { name } => serde_json::json!({ "name": name }),
            Operation::CreateSchema(def) => to_value(def),
            Operation::DeleteSchema { name, force } => to_value(&DeleteSchemaParams {
                name: name.clone(),
                force: *force,
            }),
            Operation::Query(q) => to_value(q),
            Operation::Mutation(m) => {
                let (id, data) = match m {
                    Mutation::Create { data, .. } => (None, Some(data.clone())),
                    Mutation::Update { id, data, .. } => (Some(id.clone()), Some(data.clone())),
                    Mutation::Delete { id, .. } => (Some(id.clone()), None),
                };
                to_value(&MutationParams {
                    schema: m.schema().to_string(),
                    action: m.kind(),
                    id,
                    data,
                })
            }
            Operation::History { schema, id } => to_value(&RecordParams {
                schema: schema.clone(),
                id: id.clone(),
            }),
        };
        Some(value.to_string())
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    // Serialising these plain structs (string keys, no maps with non-string keys) cannot fail.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn no_params(params: Option<&RawValue>) -> Result<(), WireError> {
    match params {
        None => Ok(()),
        Some(raw)
            if raw.get().starts_with('{')
                && serde_json::from_str::<NoParams>(raw.get()).is_ok() =>
        {
            Ok(())
        }
        Some(_) => Err(WireError::bad_field(
            "params",
            "this operation takes no params",
        )),
    }
}

fn params_of<T: DeserializeOwned>(params: Option<&RawValue>) -> Result<T, WireError> {
    let raw = params.ok_or_else(|| WireError::bad_field("params", "missing"))?;
    if !raw.get().starts_with('{') {
        return Err(WireError::bad_field("params", "must be a JSON object"));
    }
    // The plain parse is the fast path (it tracks no path); only a refusal parses again,
    // with `serde_path_to_error`, to name the field that failed.
    if let Ok(value) = serde_json::from_str(raw.get()) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let field = field_of(err.path());
        let detail = crate::message::strip_position(err.inner());
        WireError::bad_field(field, excerpt(&detail, MAX_DETAIL_BYTES))
    })
}

/// Most path segments a `bad_request` names after `params`. The deepest params structure
/// has three (`params.fields.<name>.type`, `params.order_by[0].field`).
const MAX_FIELD_SEGMENTS: usize = 4;

/// Longest part of the JSON parser's message a `bad_request` repeats (it may quote a key or
/// a value of the request).
const MAX_DETAIL_BYTES: usize = 256;

/// The `field` a params parse error at `path` is reported under: bounded, whatever the
/// request holds.
///
/// - A problem inside one of the free-form trees, the filter or a record's data, names the
///   tree (`params.filter`, `params.data`): their paths are as deep as the request nests them
///   (a filter 200 levels deep would be `params.filter.filter...`, 900 bytes).
/// - A map key longer than a name ([`MAX_NAME_LEN`](crate::schema::MAX_NAME_LEN)) or not
///   printable ASCII ends the path before it (an unknown key may be any string).
/// - At most [`MAX_FIELD_SEGMENTS`] segments follow `params`.
fn field_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    use std::fmt::Write as _;
    let mut field = String::from("params");
    for (i, segment) in path.iter().take(MAX_FIELD_SEGMENTS).enumerate() {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(field, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } if is_plain_key(key) => {
                field.push('.');
                field.push_str(key);
                if i == 0 && (key == "filter" || key == "data") {
                    break;
                }
            }
            Segment::Map { .. } | Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    field
}

/// A key short and plain enough to be repeated in a `field`.
fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= crate::schema::MAX_NAME_LEN
        && key.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
}

/// `text`, cut to at most `max` bytes (on a character boundary, marked with `...`).
fn excerpt(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end]).into()
}

fn check_name(field: &str, name: &str) -> Result<(), WireError> {
    validate_name(name).map_err(|m| WireError::bad_field(field, m))
}

/// Checks a record id: 1 to [`MAX_RECORD_ID_LEN`] bytes of ascii letters, digits, `-`, `_`.
///
/// # Errors
///
/// A `bad_request` naming `params.id`.
pub fn check_record_id(id: &str) -> Result<(), WireError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_RECORD_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else if id.len() > MAX_RECORD_ID_LEN {
        // Not quoted: the message stays short whatever was sent.
        Err(WireError::bad_field(
            "params.id",
            format!(
                "a record id is at most {MAX_RECORD_ID_LEN} bytes; this one is {}",
                id.len()
            ),
        ))
    } else {
        Err(WireError::bad_field(
            "params.id",
            format!("{id:?} is not a record id"),
        ))
    }
}

fn parse_mutation(p: MutationParams) -> Result<Mutation, WireError> {
    check_name("params.schema", &p.schema)?;
    let MutationParams {
        schema,
        action,
        id,
        data,
    } = p;
    let need_id = |id: Option<String>| -> Result<String, WireError> {
        let id = id.ok_or_else(|| WireError::bad_field("params.id", "missing"))?;
        check_record_id(&id)?;
        Ok(id)
    };
    let need_data =
        |data: Option<Record>| data.ok_or_else(|| WireError::bad_field("params.data", "missing"));
    Ok(match action {
        MutationKind::Create => {
            if id.is_some() {
                return Err(WireError::bad_field(
                    "params.id",
                    "create does not take an id; the node assigns one",
                ));
            }
            Mutation::Create {
                schema,
                data: need_data(data)?,
            }
        }
        MutationKind::Update => Mutation::Update {
            schema,
            id: need_id(id)?,
            data: need_data(data)?,
        },
        MutationKind::Delete => {
            if data.is_some() {
                return Err(WireError::bad_field(
                    "params.data",
                    "delete does not take data",
                ));
            }
            Mutation::Delete {
                schema,
                id: need_id(id)?,
            }
        }
    })
}

/// The `ping` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Always true.
    pub pong: bool,
    /// The protocol version the server speaks.
    pub version: u32,
}

/// The `list_schemas` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaList {
    /// Schema names, sorted.
    pub schemas: Vec<String>,
}

/// The `delete_schema` result: `{"deleted":true,"records":n}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSchemaResult {
    /// Always true (the schema is gone; a refusal is an error response instead).
    pub deleted: bool,
    /// How many records were deleted with it (0 unless `force` was given).
    pub records: u64,
}

/// The `mutation` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MutationResult {
    /// The record's id (generated by the node for a create).
    pub id: String,
    /// The record's version after this write (1 for a create).
    pub version: u64,
}

/// One immutable version of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordVersion {
    /// 1 for the create, then one more per write.
    pub version: u64,
    /// What the write was.
    pub action: MutationKind,
    /// When it was written, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Who wrote it: the app id, or the node's own identity for direct writes.
    pub writer: String,
    /// The record's full field values after the write; absent for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Record>,
}

/// The `history` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult {
    /// The record's versions, oldest first.
    pub versions: Vec<RecordVersion>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{eq, Query};
    use crate::schema::{FieldDef, FieldType};

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn round_trip(op: &Operation) {
        let params = op.params_json().map(|p| raw(&p));
        let back = Operation::parse(op.name(), params.as_deref()).unwrap();
        assert_eq!(&back, op);
    }

    #[test]
    fn every_operation_round_trips() {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "title".into(),
            FieldDef {
                ty: FieldType::String,
                required: true,
                indexed: true,
            },
        );
        let mut data = Record::new();
        data.insert("title".into(), "hi".into());
        let ops = vec![
            Operation::Ping,
            Operation::ListSchemas,
            Operation::GetSchema {
                name: "post".into(),
            },
            Operation::CreateSchema(SchemaDef {
                name: "post".into(),
                fields,
            }),
            Operation::DeleteSchema {
                name: "post".into(),
                force: true,
            },
            Operation::Query(
                Query::new("post")
                    .fields(["title"])
                    .filter(eq("title", "hi"))
                    .order_by_desc("id")
                    .limit(5)
                    .cursor("c"),
            ),
            Operation::Mutation(Mutation::Create {
                schema: "post".into(),
                data: data.clone(),
            }),
            Operation::Mutation(Mutation::Update {
                schema: "post".into(),
                id: "01J-x".into(),
                data,
            }),
            Operation::Mutation(Mutation::Delete {
                schema: "post".into(),
                id: "01J-x".into(),
            }),
            Operation::History {
                schema: "post".into(),
                id: "01J-x".into(),
            },
        ];
        let kinds: std::collections::BTreeSet<_> = ops.iter().map(Operation::kind).collect();
        assert_eq!(
            kinds.len(),
            OperationKind::ALL.len(),
            "every kind is covered"
        );
        for op in ops {
            round_trip(&op);
        }
    }

    fn check_err(operation: &str, params: Option<&str>, field: &str) {
        let params = params.map(raw);
        let err = Operation::parse(operation, params.as_deref()).unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::BadRequest, "{err}");
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(
            err.message.contains(field),
            "message names the field: {err}"
        );
    }

    #[test]
    fn bad_params_name_the_field() {
        check_err("frobnicate", None, "operation");
        check_err("get_schema", None, "params");
        check_err("get_schema", Some(r#"{"name":"../x"}"#), "params.name");
        check_err("get_schema", Some(r#"{"name":5}"#), "params.name");
        check_err(
            "query",
            Some(r#"{"schema":"post","limit":"ten"}"#),
            "params.limit",
        );
        check_err(
            "query",
            Some(r#"{"schema":"post","limit":0}"#),
            "params.limit",
        );
        check_err(
            "query",
            Some(r#"{"schema":"post","bogus":1}"#),
            "params.bogus",
        );
        check_err(
            "mutation",
            Some(r#"{"schema":"post","action":"update","data":{}}"#),
            "params.id",
        );
        check_err(
            "mutation",
            Some(r#"{"schema":"post","action":"create"}"#),
            "params.data",
        );
        check_err(
            "mutation",
            Some(r#"{"schema":"post","action":"upsert"}"#),
            "params.action",
        );
        check_err(
            "history",
            Some(r#"{"schema":"post","id":"a/b"}"#),
            "params.id",
        );
        check_err(
            "create_schema",
            Some(r#"{"name":"Post","fields":{}}"#),
            "params.name",
        );
        check_err(
            "create_schema",
            Some(r#"{"name":"post","fields":{"a":{"type":"blob"}}}"#),
            "params.fields.a.type",
        );
        check_err("ping", Some(r#"{"x":1}"#), "params");
    }

    /// Found by the `request_parser` fuzz target: a float parsed from an app's params must
    /// come back unchanged through `params_json` (serde_json's `float_roundtrip`), or the
    /// node stores a number one ulp away from what the app sent.
    #[test]
    fn fuzz_regression_floats_round_trip_exactly() {
        let params = r#"{"schema":"post","action":"create","data":{"t":1700077777777777777777777777777777777777777777777777777777777777777700000,"u":1.700077777777778e72,"v":1.7000777777777778e72,"w":5e-324,"x":1.7976931348623157e308,"y":0.1}}"#;
        let op = Operation::parse("mutation", Some(&raw(params))).unwrap();
        round_trip(&op);
        let Operation::Mutation(Mutation::Create { data, .. }) = &op else {
            panic!("{op:?}")
        };
        assert_eq!(data["u"].as_f64(), Some(1.700077777777778e72));
        assert_eq!(data["v"].as_f64(), Some(1.7000777777777778e72));
        assert_eq!(data["w"].as_f64(), Some(5e-324));
    }

    /// Serialises `value`, checks the text is `json`, and that it reads back equal.
    fn result_round_trip<T>(value: &T, json: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + fmt::Debug,
    {
        assert_eq!(serde_json::to_string(value).unwrap(), json);
        assert_eq!(&serde_json::from_str::<T>(json).unwrap(), value);
    }

    #[test]
    fn every_result_round_trips_with_its_documented_shape() {
        result_round_trip(
            &Pong {
                pong: true,
                version: 1,
            },
            r#"{"pong":true,"version":1}"#,
        );
        result_round_trip(
            &SchemaList {
                schemas: vec!["comment".into(), "post".into()],
            },
            r#"{"schemas":["comment","post"]}"#,
        );
        result_round_trip(
            &DeleteSchemaResult {
                deleted: true,
                records: 42,
            },
            r#"{"deleted":true,"records":42}"#,
        );
        result_round_trip(
            &MutationResult {
                id: "01J9Z6BZ1N4KTA".into(),
                version: 1,
            },
            r#"{"id":"01J9Z6BZ1N4KTA","version":1}"#,
        );
        let mut data = Record::new();
        data.insert("title".into(), "hi".into());
        result_round_trip(
            &HistoryResult {
                versions: vec![
                    RecordVersion {
                        version: 1,
                        action: MutationKind::Create,
                        timestamp: 1_700_000_000_123,
                        writer: "app_7f3a".into(),
                        data: Some(data),
                    },
                    RecordVersion {
                        version: 2,
                        action: MutationKind::Delete,
                        timestamp: 1_700_000_000_456,
                        writer: "app_7f3a".into(),
                        data: None,
                    },
                ],
            },
            concat!(
                r#"{"versions":[{"version":1,"action":"create","timestamp":1700000000123,"#,
                r#""writer":"app_7f3a","data":{"title":"hi"}},"#,
                r#"{"version":2,"action":"delete","timestamp":1700000000456,"writer":"app_7f3a"}]}"#
            ),
        );
    }

    /// `{"op":"not","filter": ...}` around `leaf`, `depth` times.
    fn nested_filter(depth: usize, leaf: &str) -> String {
        let mut filter = leaf.to_string();
        for _ in 0..depth {
            filter = format!(r#"{{"op":"not","filter":{filter}}}"#);
        }
        filter
    }

    fn parse_err(operation: &str, params: &str) -> WireError {
        Operation::parse(operation, Some(&raw(params))).unwrap_err()
    }

    #[test]
    fn a_filter_nested_past_the_parser_s_limit_names_params_filter_in_a_short_error() {
        for depth in [200, 1000] {
            let filter = nested_filter(depth, r#"{"op":"eq","field":"a","value":1}"#);
            let err = parse_err(
                "query",
                &format!(r#"{{"schema":"post","filter":{filter}}}"#),
            );
            assert_eq!(err.code, crate::ErrorCode::BadRequest, "{err}");
            assert_eq!(err.field.as_deref(), Some("params.filter"), "{err}");
            assert!(err.message.starts_with("params.filter: "), "{err}");
            assert!(
                err.message.len() <= 300,
                "{} bytes: {err}",
                err.message.len()
            );
        }
        // A problem deep inside the tree that the parser finds itself names the tree too.
        let filter = nested_filter(5, r#"{"op":"eq","field":"a","value":[[{"a":1e999}]]}"#);
        let err = parse_err(
            "query",
            &format!(r#"{{"schema":"post","filter":{filter}}}"#),
        );
        assert_eq!(err.field.as_deref(), Some("params.filter"), "{err}");
    }

    #[test]
    fn error_fields_and_messages_are_bounded_whatever_the_params_hold() {
        let mut data = "1".to_string();
        for _ in 0..200 {
            data = format!(r#"{{"k":{data}}}"#);
        }
        let long = "k".repeat(10_000);
        let cases = [
            (
                "mutation",
                format!(r#"{{"schema":"post","action":"create","data":{data}}}"#),
                "params.data",
            ),
            (
                "create_schema",
                format!(r#"{{"name":"post","fields":{{"{long}":{{"type":"blob"}}}}}}"#),
                "params.fields",
            ),
            (
                "query",
                format!(r#"{{"schema":"post","{long}":1}}"#),
                "params",
            ),
            (
                "query",
                format!(r#"{{"schema":"post","order_by":[{{"field":"a","{long}":1}}]}}"#),
                "params.order_by[0]",
            ),
            (
                "query",
                format!(r#"{{"schema":"post","filter":{{"op":"{long}"}}}}"#),
                "params.filter",
            ),
            (
                "get_schema",
                format!(r#"{{"name":"P{long}"}}"#),
                "params.name",
            ),
            (
                "history",
                format!(r#"{{"schema":"post","id":"/{long}"}}"#),
                "params.id",
            ),
        ];
        for (operation, params, field) in cases {
            let err = parse_err(operation, &params);
            assert_eq!(err.field.as_deref(), Some(field), "{operation}: {err}");
            assert!(
                err.message.len() <= 300,
                "{operation}: {} bytes: {err}",
                err.message.len()
            );
        }
        // Short, plain keys are still named in full.
        let err = parse_err(
            "create_schema",
            r#"{"name":"post","fields":{"Title":{"type":"blob"}}}"#,
        );
        assert_eq!(err.field.as_deref(), Some("params.fields.Title.type"));
    }

    #[test]
    fn ping_accepts_null_or_empty_params() {
        assert_eq!(
            Operation::parse("ping", Some(&raw("{}"))).unwrap(),
            Operation::Ping
        );
        assert_eq!(
            Operation::parse("list_schemas", None).unwrap(),
            Operation::ListSchemas
        );
    }
}
