//! The request and response envelopes.
//!
//! ```json
//! {"v":1,"request_id":"...","app_id":"...","token":"...","operation":"query",
//!  "params":{...},"timestamp":1700000000000,"nonce":"...","signature":"..."}
//! {"request_id":"...","success":true,"result":{...},"error":null}
//! {"request_id":"...","success":false,"result":null,"error":{"code":"forbidden","message":"..."}}
//! ```
//!
//! The field names are a superset of the reference implementation's, so its clients get a
//! readable error instead of a dropped connection. `params` is kept as the exact bytes that
//! arrived ([`RawValue`]), because the signature covers those bytes: no JSON
//! canonicalisation is needed on either side.

use crate::error::{ErrorCode, WireError};
use crate::limits::RequestLimits;
use crate::operation::Operation;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// Longest `request_id`, `app_id` or `nonce` accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest `token` or `signature` accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 256;
/// Longest `operation` name accepted, in bytes.
pub const MAX_OPERATION_LEN: usize = 64;

/// A request, as it travels on the wire.
///
/// `Debug` redacts `token` and `signature`.
#[derive(Clone, Serialize)]
pub struct Request {
    /// Protocol version; absent in requests from reference-era clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// Chosen by the client, unique among its requests in flight; the response echoes it.
    pub request_id: String,
    /// The app the request is made for; must be the app the socket belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The app's bearer token (hex), or the node secret on a node's TCP listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The operation's name, e.g. `query`.
    pub operation: String,
    /// The operation's params, exactly as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Box<RawValue>>,
    /// Milliseconds since the Unix epoch when the request was signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// A value never used before by this app (hex of 16 random bytes is typical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Hex ed25519 signature over [`signing::canonical_bytes`](crate::signing::canonical_bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Set by the daemon on the requests it proxies to a node (see [`crate::limits`]);
    /// ignored when an app sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<RequestLimits>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("v", &self.v)
            .field("request_id", &self.request_id)
            .field("app_id", &self.app_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("operation", &self.operation)
            .field("params", &self.params.as_ref().map(|p| p.get().len()))
            .field("timestamp", &self.timestamp)
            .field("nonce", &self.nonce)
            .field("signature", &self.signature.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .finish()
    }
}

/// The envelope with every field still raw, so each can be checked on its own and
/// an error can name it. Duplicate keys are refused by the derive.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    v: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    app_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    operation: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    nonce: Option<&'a RawValue>,
    #[serde(borrow, default)]
    signature: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limits: Option<&'a RawValue>,
}

/// A request body that could not be decoded, with what is needed to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The `request_id`, if it could be recovered, so the answer can be matched.
    pub request_id: Option<String>,
    /// What was wrong (code `bad_request`).
    pub error: WireError,
}

impl From<DecodeError> for Response {
    fn from(err: DecodeError) -> Response {
        Response::error(err.request_id, err.error)
    }
}

fn field<T: DeserializeOwned>(name: &str, raw: Option<&RawValue>) -> Result<Option<T>, WireError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| WireError::bad_field(name, strip_position(&e))),
    }
}

fn bounded(name: &str, value: Option<String>, max: usize) -> Result<Option<String>, WireError> {
    match value {
        Some(s) if s.len() > max => Err(WireError::bad_field(
            name,
            format!("{} bytes long; the maximum is {max}", s.len()),
        )),
        other => Ok(other),
    }
}

pub(crate) fn strip_position(err: &serde_json::Error) -> String {
    // "invalid type: ... at line 1 column 5": the position is inside a sub-document.
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

impl Request {
    /// Decodes a frame body into a request.
    ///
    /// Only the envelope is checked here (JSON, field types, lengths); the operation is
    /// parsed by [`Request::operation`], and authentication is the server's business.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] carrying a `bad_request` error that names the field at fault, and
    /// the `request_id` if one could be read.
    pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(DecodeError {
                request_id: None,
                error: WireError::new(ErrorCode::BadRequest, "request must be a JSON object"),
            });
        }
        let raw: RawEnvelope<'_> = serde_json::from_slice(body).map_err(|e| DecodeError {
            request_id: None,
            error: WireError::new(
                ErrorCode::BadRequest,
                format!("request is not a valid JSON object: {e}"),
            ),
        })?;
        let request_id = bounded(
            "request_id",
            field::<String>("request_id", raw.request_id).ok().flatten(),
            MAX_ID_LEN,
        )
        .ok()
        .flatten();
        let fail = |error: WireError| DecodeError {
            request_id: request_id.clone(),
            error,
        };
        let request_id = match request_id.clone() {
            Some(id) if !id.is_empty() => id,
            _ => {
                return Err(fail(match field::<String>("request_id", raw.request_id) {
                    Err(e) => e,
                    Ok(_) => WireError::bad_field(
                        "request_id",
                        format!("missing, empty or longer than {MAX_ID_LEN} bytes"),
                    ),
                }))
            }
        };
        let operation = bounded(
            "operation",
            field("operation", raw.operation).map_err(&fail)?,
            MAX_OPERATION_LEN,
        )
        .map_err(&fail)?
        .ok_or_else(|| fail(WireError::bad_field("operation", "missing")))?;
        Ok(Request {
            v: field("v", raw.v).map_err(&fail)?,
            app_id: bounded(
                "app_id",
                field("app_id", raw.app_id).map_err(&fail)?,
                MAX_ID_LEN,
            )
            .map_err(&fail)?,
            token: bounded(
                "token",
                field("token", raw.token).map_err(&fail)?,
                MAX_SECRET_LEN,
            )
            .map_err(&fail)?,
            params: raw
                .params
                .filter(|p| p.get() != "null")
                .map(ToOwned::to_owned),
            timestamp: field("timestamp", raw.timestamp).map_err(&fail)?,
            nonce: bounded(
                "nonce",
                field("nonce", raw.nonce).map_err(&fail)?,
                MAX_ID_LEN,
            )
            .map_err(&fail)?,
            signature: bounded(
                "signature",
                field("signature", raw.signature).map_err(&fail)?,
                MAX_SECRET_LEN,
            )
            .map_err(&fail)?,
            limits: field("limits", raw.limits).map_err(&fail)?,
            request_id,
            operation,
        })
    }

    /// Encodes the request as a frame body.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, integers and already-valid raw JSON always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the typed operation from `operation` and `params`.
    ///
    /// # Errors
    ///
    /// A `bad_request` [`WireError`] naming the field at fault.
    pub fn operation(&self) -> Result<Operation, WireError> {
        Operation::parse(&self.operation, self.params.as_deref())
    }

    /// An unsigned request for `op`, as sent straight to a node (which does not check
    /// signatures); `app_id`, when given, is the writer recorded for provenance.
    pub fn unsigned(
        request_id: impl Into<String>,
        app_id: Option<String>,
        op: &Operation,
    ) -> Request {
        Request {
            v: Some(crate::version::CURRENT),
            request_id: request_id.into(),
            app_id,
            token: None,
            operation: op.name().to_string(),
            params: op.params_json().and_then(|p| RawValue::from_string(p).ok()),
            timestamp: None,
            nonce: None,
            signature: None,
            limits: None,
        }
    }
}

/// A response, as it travels on the wire. Every field is always present.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The `request_id` of the request answered; `null` if it could not be read.
    pub request_id: Option<String>,
    /// Whether the operation succeeded; then `result` is set, else `error`.
    pub success: bool,
    /// The operation's result.
    #[serde(default)]
    pub result: Option<Box<RawValue>>,
    /// Why the operation failed.
    #[serde(default)]
    pub error: Option<WireError>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok<T: Serialize + ?Sized>(request_id: impl Into<String>, result: &T) -> Response {
        match serde_json::value::to_raw_value(result) {
            Ok(raw) => Response::ok_raw(request_id, raw),
            Err(e) => Response::error(
                Some(request_id.into()),
                WireError::new(
                    ErrorCode::Internal,
                    format!("result could not be encoded: {e}"),
                ),
            ),
        }
    }

    /// A success carrying an already-encoded result.
    pub fn ok_raw(request_id: impl Into<String>, result: Box<RawValue>) -> Response {
        Response {
            request_id: Some(request_id.into()),
            success: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failure.
    pub fn error(request_id: Option<String>, error: WireError) -> Response {
        Response {
            request_id,
            success: false,
            result: None,
            error: Some(error),
        }
    }

    /// Decodes a frame body into a response.
    ///
    /// # Errors
    ///
    /// The JSON error when the body is not a response.
    pub fn decode(body: &[u8]) -> Result<Response, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Encodes the response as a frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        buf
    }

    /// Appends the JSON encoding to `buf` (a frame being built, see
    /// [`crate::frame::build_frame`]).
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        // A struct of strings, integers and already-valid raw JSON always serialises.
        let _ = serde_json::to_writer(buf, self);
    }

    /// The typed result, or the error the server sent.
    ///
    /// # Errors
    ///
    /// The server's [`WireError`], or a `bad_request`-coded error when the result does not
    /// have the expected shape (the server and client disagree about the protocol).
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, WireError> {
        if !self.success {
            return Err(self.error.unwrap_or_else(|| {
                WireError::new(ErrorCode::Internal, "failure without an error object")
            }));
        }
        let raw = self.result.as_deref().map_or("null", RawValue::get);
        serde_json::from_str(raw).map_err(|e| {
            WireError::new(ErrorCode::Internal, format!("unexpected result shape: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_shaped_request_decodes_without_version() {
        let body = br#"{"request_id":"r1","app_id":"a","token":"t","operation":"list_schemas","params":null,"signature":null}"#;
        let req = Request::decode(body).unwrap();
        assert_eq!(req.v, None);
        assert_eq!(req.signature, None);
        assert!(req.params.is_none());
        assert_eq!(req.operation().unwrap(), Operation::ListSchemas);
    }

    #[test]
    fn bad_json_gives_bad_request_with_recovered_id() {
        let err = Request::decode(b"{not json").unwrap_err();
        assert_eq!(err.error.code, ErrorCode::BadRequest);
        assert_eq!(err.request_id, None);

        let err = Request::decode(br#"{"request_id":"r9","operation":5}"#).unwrap_err();
        assert_eq!(err.request_id.as_deref(), Some("r9"));
        assert_eq!(err.error.field.as_deref(), Some("operation"));

        let err = Request::decode(br#"{"request_id":"r9","operation":"ping","timestamp":"now"}"#)
            .unwrap_err();
        assert_eq!(err.error.field.as_deref(), Some("timestamp"));

        let err = Request::decode(br#"{"operation":"ping"}"#).unwrap_err();
        assert_eq!(err.error.field.as_deref(), Some("request_id"));

        let err = Request::decode(br#"{"request_id":"a","request_id":"b","operation":"ping"}"#)
            .unwrap_err();
        assert_eq!(
            err.error.code,
            ErrorCode::BadRequest,
            "duplicate keys are ambiguous: refused"
        );

        let long = format!(
            r#"{{"request_id":"r","operation":"ping","nonce":"{}"}}"#,
            "n".repeat(MAX_ID_LEN + 1)
        );
        assert_eq!(
            Request::decode(long.as_bytes())
                .unwrap_err()
                .error
                .field
                .as_deref(),
            Some("nonce")
        );

        let bad_utf8 = b"{\"request_id\":\"\xff\",\"operation\":\"ping\"}";
        assert_eq!(
            Request::decode(bad_utf8).unwrap_err().error.code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn response_shapes() {
        let ok = Response::ok("r1", &serde_json::json!({"a":1}));
        assert_eq!(
            String::from_utf8(ok.encode()).unwrap(),
            r#"{"request_id":"r1","success":true,"result":{"a":1},"error":null}"#
        );
        let err = Response::error(
            Some("r2".into()),
            WireError::new(ErrorCode::Forbidden, "no"),
        );
        assert_eq!(
            String::from_utf8(err.encode()).unwrap(),
            r#"{"request_id":"r2","success":false,"result":null,"error":{"code":"forbidden","message":"no"}}"#
        );
        let back = Response::decode(&err.encode()).unwrap();
        assert_eq!(
            back.into_result::<serde_json::Value>().unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut req = Request::unsigned("r", Some("app".into()), &Operation::Ping);
        req.token = Some("supersecrettoken".into());
        req.signature = Some("deadbeef".into());
        let dbg = format!("{req:?}");
        assert!(
            !dbg.contains("supersecrettoken") && !dbg.contains("deadbeef"),
            "{dbg}"
        );
    }
}
