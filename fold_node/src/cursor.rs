//! Paging cursors: where the next page of a query starts.
//!
//! A cursor is keyset-based: it carries the ordering key values of the last row of the
//! page (the query's `order_by` keys, always ending with the unique `id`), and the next
//! page is "rows strictly after these keys" in the query's order. Rows inserted or deleted
//! between pages therefore never shift the page boundary: no row is skipped or repeated
//! because of them.
//!
//! The cursor also carries a fingerprint of the query it came from (schema number, filter,
//! order), so a cursor passed with a different query is refused with `bad_request` rather
//! than silently returning an unrelated page. It is opaque to clients: base64url of a small
//! JSON document. Tampering with it can only move the start of the page, since its values
//! are bound as SQL parameters like any filter value.

use crate::error::{bad_field, NodeError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rusqlite::types::Value as SqlValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Cursor format version.
const FORMAT: u8 = 1;

#[derive(Serialize, Deserialize)]
struct CursorData {
    v: u8,
    q: String,
    k: Vec<Key>,
}

/// One key value, typed as SQLite returned it; reals are kept as their bits so they
/// round-trip exactly.
#[derive(Serialize, Deserialize)]
enum Key {
    N,
    I(i64),
    R(u64),
    S(String),
}

/// A fingerprint of the parts of a query that decide its row order and membership.
pub(crate) fn fingerprint(parts: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(parts).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// Encodes the cursor after a row whose key values are `keys`.
pub(crate) fn encode(fingerprint: &str, keys: &[SqlValue]) -> Result<String, NodeError> {
    let k = keys
        .iter()
        .map(|v| match v {
            SqlValue::Null => Ok(Key::N),
            SqlValue::Integer(i) => Ok(Key::I(*i)),
            SqlValue::Real(r) => Ok(Key::R(r.to_bits())),
            SqlValue::Text(s) => Ok(Key::S(s.clone())),
            SqlValue::Blob(_) => Err(NodeError::Corrupt("blob in an ordering key".into())),
        })
        .collect::<Result<_, _>>()?;
    let data = CursorData {
        v: FORMAT,
        q: fingerprint.to_string(),
        k,
    };
    let json = serde_json::to_vec(&data).map_err(|e| NodeError::Corrupt(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// Decodes a cursor for a query with this fingerprint and `n_keys` ordering keys.
///
/// # Errors
///
/// `bad_request` naming `params.cursor` when it is not a cursor, or belongs to another
/// query.
pub(crate) fn decode(
    cursor: &str,
    fingerprint: &str,
    n_keys: usize,
) -> Result<Vec<SqlValue>, NodeError> {
    let invalid = || bad_field("params.cursor", "not a cursor returned by this node");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let data: CursorData = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if data.v != FORMAT || data.k.len() != n_keys {
        return Err(invalid());
    }
    if data.q != fingerprint {
        return Err(bad_field(
            "params.cursor",
            "this cursor belongs to a different query (schema, filter or order_by changed)",
        ));
    }
    Ok(data
        .k
        .into_iter()
        .map(|k| match k {
            Key::N => SqlValue::Null,
            Key::I(i) => SqlValue::Integer(i),
            Key::R(bits) => SqlValue::Real(f64::from_bits(bits)),
            Key::S(s) => SqlValue::Text(s),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch() {
        let keys = vec![
            SqlValue::Null,
            SqlValue::Integer(-5),
            SqlValue::Real(0.1 + 0.2),
            SqlValue::Text("x\"y".into()),
        ];
        let c = encode("abc", &keys).unwrap();
        assert_eq!(decode(&c, "abc", 4).unwrap(), keys);
        let err = decode(&c, "abd", 4).unwrap_err().into_wire();
        assert_eq!(err.field.as_deref(), Some("params.cursor"));
        assert!(decode(&c, "abc", 3).is_err());
        assert!(decode("%%%", "abc", 4).is_err());
        assert!(decode("", "abc", 4).is_err());
    }
}
