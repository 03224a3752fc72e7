//! Wire error codes: the `error` object of a failed [`Response`](crate::Response).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, machine-readable error code, serialised as a snake_case string.
///
/// Codes are part of the protocol: they are never renamed, only added. A client that meets
/// a code it does not know reads it as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, unknown operation, bad or missing params.
    BadRequest,
    /// The request's protocol version `v` is not supported by this server.
    UnsupportedVersion,
    /// The token is missing or wrong, or the app is unknown, removed or rotated.
    Unauthenticated,
    /// The signature is missing, malformed or does not verify.
    BadSignature,
    /// The timestamp is outside the accepted window or the nonce was seen before.
    Replay,
    /// The app is authenticated but not granted this operation on this schema.
    Forbidden,
    /// The schema or record does not exist.
    NotFound,
    /// The schema or record already exists, or the change conflicts with existing data.
    Conflict,
    /// The frame is larger than the server's cap. The server closes the connection after this.
    TooLarge,
    /// Too many requests, failures or connections; try again later.
    RateLimited,
    /// The data node cannot be reached; the request was not applied.
    NodeUnavailable,
    /// The request did not complete in time; it may or may not have been applied.
    Timeout,
    /// A query would cost more than the node's work budget, or its filter is over a
    /// size limit; `field` names the limit. Narrow the query.
    TooExpensive,
    /// A write would take the app past its storage quota; `limit` names which one.
    QuotaExceeded,
    /// A bug or an unexpected failure on the server side.
    Internal,
    /// A code this version of the crate does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire, e.g. `"bad_request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::Replay => "replay",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NodeUnavailable => "node_unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::TooExpensive => "too_expensive",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of a failed response: a code, a human message, and, for
/// `bad_request`, the parameter that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure this is; clients branch on this.
    pub code: ErrorCode,
    /// What went wrong and, where possible, what to do about it; for people.
    pub message: String,
    /// The request field or parameter at fault (e.g. `params.limit`), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The limit that was hit (`quota_exceeded`, `too_expensive`, `rate_limited`), e.g.
    /// `max_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// For `rate_limited`: milliseconds after which a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            field: None,
            limit: None,
            retry_after_ms: None,
        }
    }

    /// An error saying which limit was hit.
    pub fn over_limit(
        code: ErrorCode,
        limit: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        WireError {
            limit: Some(limit.into()),
            ..WireError::new(code, message)
        }
    }

    /// The same error with a retry hint.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after_ms = Some(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// A `bad_request` error naming the field at fault.
    pub fn bad_field(field: impl Into<String>, message: impl fmt::Display) -> Self {
        let field = field.into();
        WireError {
            code: ErrorCode::BadRequest,
            message: format!("{field}: {message}"),
            field: Some(field),
            limit: None,
            retry_after_ms: None,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_stable_snake_case() {
        let all = [
            (ErrorCode::BadRequest, "bad_request"),
            (ErrorCode::UnsupportedVersion, "unsupported_version"),
            (ErrorCode::Unauthenticated, "unauthenticated"),
            (ErrorCode::BadSignature, "bad_signature"),
            (ErrorCode::Replay, "replay"),
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::NotFound, "not_found"),
            (ErrorCode::Conflict, "conflict"),
            (ErrorCode::TooLarge, "too_large"),
            (ErrorCode::RateLimited, "rate_limited"),
            (ErrorCode::NodeUnavailable, "node_unavailable"),
            (ErrorCode::Timeout, "timeout"),
            (ErrorCode::TooExpensive, "too_expensive"),
            (ErrorCode::QuotaExceeded, "quota_exceeded"),
            (ErrorCode::Internal, "internal"),
        ];
        for (code, text) in all {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{text}\""));
            assert_eq!(code.as_str(), text);
            let back: ErrorCode = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn unknown_code_from_a_newer_peer_is_readable() {
        let code: ErrorCode = serde_json::from_str("\"some_future_code\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }
}
