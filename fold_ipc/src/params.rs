//! Looking into a request's `params` before building them: the schema they name (so a
//! server can check the grant first) and how many JSON values they hold (so building them
//! cannot take many times the frame's size in memory).
//!
//! A JSON value costs 32 bytes or more once built, against as little as 2 bytes on the
//! wire (`0,`): a 4 MiB frame of zeros would become well over 64 MiB. Both looks here run
//! over the raw text without allocating per value.

use crate::error::{ErrorCode, WireError};
use crate::operation::OperationKind;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

/// Most JSON values (scalars, arrays and objects, at any depth) one request's params may
/// hold; beyond it the request is refused before its params are built.
pub const MAX_PARAM_VALUES: usize = 65_536;

/// The schema an operation's params name (`name` for the schema operations, `schema` for
/// the record operations), read without building the rest; `None` for operations on no
/// schema.
///
/// # Errors
///
/// `bad_request` naming the field when params are missing, not an object, or the name is
/// not a string.
pub fn target_schema(
    kind: OperationKind,
    params: Option<&RawValue>,
) -> Result<Option<String>, WireError> {
    let key = match kind {
        OperationKind::Ping | OperationKind::ListSchemas => return Ok(None),
        OperationKind::GetSchema | OperationKind::CreateSchema | OperationKind::DeleteSchema => {
            "name"
        }
        OperationKind::Query | OperationKind::Mutation | OperationKind::History => "schema",
    };
    let raw = params.ok_or_else(|| WireError::bad_field("params", "missing"))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(WireError::bad_field("params", "must be a JSON object"));
    }
    /// Only the two keys a target can be under; everything else is skipped unbuilt.
    #[derive(Deserialize)]
    struct Target {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        schema: Option<String>,
    }
    let field = format!("params.{key}");
    let target: Target = serde_json::from_str(raw.get())
        .map_err(|e| WireError::bad_field(&field, crate::message::strip_position(&e)))?;
    let name = if key == "name" {
        target.name
    } else {
        target.schema
    };
    name.map(Some)
        .ok_or_else(|| WireError::bad_field(field, "missing"))
}

/// Checks that `params` hold at most `max` JSON values, counting without building any.
///
/// # Errors
///
/// `bad_request` on `params`, with `limit` `max_param_values`, when there are more.
pub fn check_value_count(params: Option<&RawValue>, max: usize) -> Result<(), WireError> {
    let Some(raw) = params else { return Ok(()) };
    // Every JSON value takes at least one byte of text: short params cannot be over.
    if raw.get().len() <= max {
        return Ok(());
    }
    let mut budget = Budget {
        left: max,
        exceeded: false,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match (Counter {
        budget: &mut budget,
    })
    .deserialize(&mut de)
    {
        Ok(()) => Ok(()),
        Err(_) if budget.exceeded => Err(WireError {
            field: Some("params".into()),
            ..WireError::over_limit(
                ErrorCode::BadRequest,
                "max_param_values",
                format!("params: more than {max} JSON values; send fewer or smaller records"),
            )
        }),
        // Malformed JSON is the full parse's to report, with its field.
        Err(_) => Ok(()),
    }
}

/// Visits every value, counting down `left`, and fails when it would go below zero.
struct Counter<'a> {
    budget: &'a mut Budget,
}

impl Counter<'_> {
    fn tick<E: de::Error>(&mut self) -> Result<(), E> {
        match self.budget.left.checked_sub(1) {
            Some(n) => {
                self.budget.left = n;
                Ok(())
            }
            None => {
                self.budget.exceeded = true;
                Err(E::custom("too many values"))
            }
        }
    }
}

/// Values still allowed, and whether the count ran out.
struct Budget {
    left: usize,
    exceeded: bool,
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.tick()
    }
    fn visit_str<E: de::Error>(mut self, _: &str) -> Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.tick()
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        while seq
            .next_element_seed(Counter {
                budget: &mut *self.budget,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Counter {
                budget: &mut *self.budget,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn the_target_is_read_from_name_or_schema() {
        let p = raw(r#"{"data":{"big":[1,2,3]},"schema":"post","action":"create"}"#);
        assert_eq!(
            target_schema(OperationKind::Mutation, Some(&p)).unwrap(),
            Some("post".into())
        );
        let p = raw(r#"{"name":"post","fields":{}}"#);
        assert_eq!(
            target_schema(OperationKind::CreateSchema, Some(&p)).unwrap(),
            Some("post".into())
        );
        assert_eq!(target_schema(OperationKind::Ping, None).unwrap(), None);
        let e = target_schema(OperationKind::Query, Some(&raw(r#"{"name":"x"}"#))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.schema"));
        let e = target_schema(OperationKind::Query, Some(&raw(r#"{"schema":5}"#))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.schema"));
        let e = target_schema(OperationKind::Query, Some(&raw("[1]"))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params"));
    }

    #[test]
    fn values_are_counted_at_every_depth() {
        // 1 object + 1 string + 1 array + 3 numbers + 1 object + 1 bool = 8 values.
        let p = raw(r#"{"a":"x","b":[1,2,3],"c":{"d":true}}"#);
        assert!(check_value_count(Some(&p), 8).is_ok());
        let e = check_value_count(Some(&p), 7).unwrap_err();
        assert_eq!(e.limit.as_deref(), Some("max_param_values"));
        assert_eq!(e.field.as_deref(), Some("params"));
        let zeros = format!("[{}0]", "0,".repeat(100_000));
        assert!(check_value_count(Some(&raw(&zeros)), MAX_PARAM_VALUES).is_err());
        assert!(check_value_count(None, 1).is_ok());
    }
}
