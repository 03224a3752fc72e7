//! The client's error type: one variant per way a call can fail, each with a message.
//!
//! Errors the daemon sends (a [`WireError`]) map one to one onto variants, so an app can
//! `match` on what happened instead of parsing strings. Errors made on this side (the
//! connection, the clock, a result that does not deserialise) have their own variants.
//!
//! Whether a failed request may have been applied:
//!
//! | variant | applied? |
//! | --- | --- |
//! | [`Error::Timeout`], [`Error::Disconnected`] with `sent: true` | maybe: check before retrying a write |
//! | [`Error::Disconnected`] with `sent: false`, [`Error::Config`] | no: it never left the client |
//! | everything else | no: the daemon refused it or the node failed it as a whole |

use crate::error::{ErrorCode, WireError};
use crate::mux::CallError;

/// Why a client call failed.
///
/// Every variant carries a message for people; the daemon's own message when the error came
/// from the daemon. Branch on the variant (or on [`Error::code`]), not on the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be set up: an environment variable is missing or malformed, the
    /// credentials file cannot be read, or the runtime could not start. The message names
    /// the variable or file.
    #[error("client configuration: {message}")]
    Config {
        /// What is missing or wrong, naming the variable or file.
        message: String,
    },
    /// The daemon does not recognise the app: wrong or missing token, app id not matching the
    /// socket, or the app was removed, revoked or had its credentials rotated.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The daemon's message.
        message: String,
    },
    /// The daemon refused the request's signature (for example an unsigned request from an
    /// app that is not token-only).
    #[error("bad signature: {message}")]
    BadSignature {
        /// The daemon's message.
        message: String,
    },
    /// The daemon saw the request's nonce before, or its timestamp is outside the accepted
    /// window (check the clock).
    #[error("replay refused: {message}")]
    Replay {
        /// The daemon's message.
        message: String,
    },
    /// The app is not granted this operation on this schema.
    #[error("forbidden: {message}")]
    Forbidden {
        /// The daemon's message, naming the operation and schema.
        message: String,
    },
    /// The schema or record does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The daemon's message.
        message: String,
    },
    /// The schema or record already exists, or the change conflicts with existing data.
    #[error("conflict: {message}")]
    Conflict {
        /// The daemon's message.
        message: String,
    },
    /// The request is invalid (wire code `bad_request`): bad params, a bad record id, data
    /// that does not fit the schema. Refused before anything was applied.
    #[error("invalid request: {message}")]
    Invalid {
        /// The parameter at fault, e.g. `params.limit`, when one is.
        field: Option<String>,
        /// What was wrong with it.
        message: String,
    },
    /// Too many requests or failures; try again later.
    #[error("rate limited: {message}")]
    RateLimited {
        /// The daemon's message.
        message: String,
        /// When a retry can succeed, if the daemon said.
        retry_after: Option<std::time::Duration>,
    },
    /// The query would cost more than the node's work budget, or its filter is over a size
    /// limit.
    #[error("too expensive: {message}")]
    TooExpensive {
        /// The limit hit, e.g. `max_vm_steps`.
        limit: Option<String>,
        /// The node's message.
        message: String,
    },
    /// The write would take the app past its storage quota.
    #[error("quota exceeded: {message}")]
    QuotaExceeded {
        /// The quota hit, e.g. `max_bytes`.
        limit: Option<String>,
        /// The node's message.
        message: String,
    },
    /// The daemon could not reach the data node; the request was not applied.
    #[error("node unavailable: {message}")]
    NodeUnavailable {
        /// The daemon's message.
        message: String,
    },
    /// No answer in time, from the daemon or (wire code `timeout`) from the node behind it.
    /// The request may or may not have been applied.
    #[error("timed out: {message}")]
    Timeout {
        /// How long was waited, or the daemon's message.
        message: String,
    },
    /// There is no connection to the daemon: it could not be reached within the call's
    /// timeout, or the connection closed while the request was in flight.
    #[error("disconnected: {message}")]
    Disconnected {
        /// Whether the request may have reached the daemon (and so may have been applied).
        /// When false it certainly did not, and sending it again is safe.
        sent: bool,
        /// What happened, naming the socket when it could not be reached.
        message: String,
    },
    /// The daemon failed unexpectedly (wire code `internal`).
    #[error("internal daemon error: {message}")]
    Internal {
        /// The daemon's message.
        message: String,
    },
    /// The daemon and this client disagree about the protocol: a frame over the cap
    /// (`too_large`), an unsupported version, an error code this crate does not know, or a
    /// result that does not have the shape the operation promises.
    #[error("protocol error: {message}")]
    Protocol {
        /// The wire code, when the daemon sent one.
        code: Option<ErrorCode>,
        /// What did not match.
        message: String,
    },
    /// The result arrived intact but could not be deserialised into the caller's type (for
    /// example a row missing a field of the struct given to `query_as`).
    #[error("cannot decode result: {message}")]
    Decode {
        /// The serde error, with the row index when there is one.
        message: String,
    },
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The wire error code this error corresponds to, if any.
    ///
    /// Errors from the daemon give their code back; [`Error::Timeout`] gives
    /// [`ErrorCode::Timeout`] also when the client's own timer fired. Errors that exist only on
    /// this side ([`Error::Config`], [`Error::Disconnected`], [`Error::Decode`]) give `None`.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::Config { .. } | Error::Disconnected { .. } | Error::Decode { .. } => {
                return None
            }
            Error::Protocol { code, .. } => return *code,
            Error::Unauthenticated { .. } => ErrorCode::Unauthenticated,
            Error::BadSignature { .. } => ErrorCode::BadSignature,
            Error::Replay { .. } => ErrorCode::Replay,
            Error::Forbidden { .. } => ErrorCode::Forbidden,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::Conflict { .. } => ErrorCode::Conflict,
            Error::Invalid { .. } => ErrorCode::BadRequest,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::TooExpensive { .. } => ErrorCode::TooExpensive,
            Error::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Error::NodeUnavailable { .. } => ErrorCode::NodeUnavailable,
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::Internal { .. } => ErrorCode::Internal,
        })
    }

    /// The human message: the daemon's, or the client's own.
    pub fn message(&self) -> &str {
        match self {
            Error::Config { message }
            | Error::Unauthenticated { message }
            | Error::BadSignature { message }
            | Error::Replay { message }
            | Error::Forbidden { message }
            | Error::NotFound { message }
            | Error::Conflict { message }
            | Error::Invalid { message, .. }
            | Error::RateLimited { message, .. }
            | Error::TooExpensive { message, .. }
            | Error::QuotaExceeded { message, .. }
            | Error::NodeUnavailable { message }
            | Error::Timeout { message }
            | Error::Disconnected { message, .. }
            | Error::Internal { message }
            | Error::Protocol { message, .. }
            | Error::Decode { message } => message,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::Config {
            message: message.into(),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::Protocol {
            code: None,
            message: message.into(),
        }
    }

    pub(crate) fn not_connected(message: impl Into<String>) -> Error {
        Error::Disconnected {
            sent: false,
            message: message.into(),
        }
    }
}

impl From<WireError> for Error {
    fn from(err: WireError) -> Error {
        let WireError {
            code,
            message,
            field,
            limit,
            retry_after_ms,
        } = err;
        match code {
            ErrorCode::BadRequest => Error::Invalid { field, message },
            ErrorCode::Unauthenticated => Error::Unauthenticated { message },
            ErrorCode::BadSignature => Error::BadSignature { message },
            ErrorCode::Replay => Error::Replay { message },
            ErrorCode::Forbidden => Error::Forbidden { message },
            ErrorCode::NotFound => Error::NotFound { message },
            ErrorCode::Conflict => Error::Conflict { message },
            ErrorCode::RateLimited => Error::RateLimited {
                message,
                retry_after: retry_after_ms.map(std::time::Duration::from_millis),
            },
            ErrorCode::TooExpensive => Error::TooExpensive { limit, message },
            ErrorCode::QuotaExceeded => Error::QuotaExceeded { limit, message },
            ErrorCode::NodeUnavailable => Error::NodeUnavailable { message },
            ErrorCode::Timeout => Error::Timeout { message },
            ErrorCode::Internal => Error::Internal { message },
            ErrorCode::TooLarge | ErrorCode::UnsupportedVersion | ErrorCode::Unknown => {
                Error::Protocol {
                    code: Some(code),
                    message,
                }
            }
        }
    }
}

impl From<CallError> for Error {
    fn from(err: CallError) -> Error {
        match err {
            CallError::Disconnected { sent: true } => Error::Disconnected {
                sent: true,
                message: "the connection to the daemon closed with the request in flight; \
                          it may have been applied"
                    .into(),
            },
            CallError::Disconnected { sent: false } => {
                Error::not_connected("the connection to the daemon is closed; the request was not sent")
            }
            CallError::Timeout(after) => Error::Timeout {
                message: format!(
                    "no response from the daemon within {after:?}; the request may have been applied"
                ),
            },
            CallError::TooLarge(len) => Error::Protocol {
                code: Some(ErrorCode::TooLarge),
                message: format!(
                    "the request is {len} bytes, over the frame cap; it was not sent"
                ),
            },
            CallError::DuplicateId(id) => {
                Error::protocol(format!("request id {id:?} is already in flight"))
            }
            CallError::Refused(wire) => Error::from(wire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Unauthenticated,
        ErrorCode::BadSignature,
        ErrorCode::Replay,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NodeUnavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ];

    #[test]
    fn every_wire_code_maps_back_to_itself_and_keeps_the_message() {
        for code in ALL {
            let err = Error::from(WireError::new(code, format!("said {code}")));
            assert_eq!(err.code(), Some(code), "{err:?}");
            assert_eq!(err.message(), format!("said {code}"));
            assert!(err.to_string().ends_with(&format!("said {code}")), "{err}");
        }
        let err = Error::from(WireError::bad_field("params.limit", "too big"));
        assert!(
            matches!(&err, Error::Invalid { field: Some(f), .. } if f == "params.limit"),
            "{err:?}"
        );
    }

    #[test]
    fn call_errors_keep_whether_the_request_was_sent() {
        assert!(matches!(
            Error::from(CallError::Disconnected { sent: true }),
            Error::Disconnected { sent: true, .. }
        ));
        assert!(matches!(
            Error::from(CallError::Disconnected { sent: false }),
            Error::Disconnected { sent: false, .. }
        ));
        let timeout = Error::from(CallError::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!(timeout.code(), Some(ErrorCode::Timeout));
        assert_eq!(
            Error::from(CallError::TooLarge(9)).code(),
            Some(ErrorCode::TooLarge)
        );
        assert_eq!(Error::config("x").code(), None);
    }
}
