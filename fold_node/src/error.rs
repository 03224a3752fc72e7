//! The library's error type, and the one place where it becomes a wire error.

use fold_ipc::{ErrorCode, WireError};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the node could not open, bind or do its work.
///
/// Request-level failures (a bad field, an unknown schema) travel as
/// [`NodeError::Rejected`]; every other variant is a failure of the node itself, which a
/// client sees only as an `internal` error (details go to the log, not over the wire).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file or directory could not be created, opened or inspected.
    #[error("{action} {path}")]
    Io {
        /// What was being done, e.g. "cannot create directory".
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A directory that holds node data or its socket is open to other users.
    #[error("{path} is accessible by other users (mode {mode:04o}); run `chmod 700 {path}` or use a private directory")]
    InsecureDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file that must stay private (the node secret) is readable by other users.
    #[error("{path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}`")]
    InsecureFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another node is already listening on the socket path.
    #[error("socket {0} is in use by a running node")]
    SocketInUse(PathBuf),
    /// Something other than a socket sits at the socket path; it is left alone.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// TCP is only served on loopback addresses.
    #[error("refusing to listen on {0}: the node serves TCP on loopback addresses only (127.0.0.0/8 or ::1)")]
    NotLoopback(SocketAddr),
    /// A node secret that is too short to be a secret.
    #[error("the node secret must be at least {min} bytes long")]
    WeakSecret {
        /// The minimum length.
        min: usize,
    },
    /// SQLite failed.
    #[error("storage error")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored data could not be read back (a schema definition or record that does not parse).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database was written by a newer `fold_node` with a layout this one does not know.
    #[error("database layout version {found} is newer than this fold_node supports ({supported})")]
    UnsupportedLayout {
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A write transaction could not begin or commit; nothing of it was applied.
    #[error("write failed: {0}")]
    WriteFailed(String),
    /// The node's writer or reader threads are gone (it is shutting down, or one panicked).
    #[error("the node is shut down")]
    Closed,
    /// The request was refused: bad input, unknown schema or record, or a conflict.
    #[error("{0}")]
    Rejected(WireError),
}

impl NodeError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        NodeError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The error as a client sees it. Request-level errors pass through unchanged; failures
    /// of the node itself become `internal` (logged here with their full chain), so storage
    /// details never leak over the wire.
    pub fn into_wire(self) -> WireError {
        match self {
            NodeError::Rejected(e) => e,
            NodeError::Closed => WireError::new(ErrorCode::Internal, "the node is shutting down"),
            other => {
                tracing::error!(error = %error_chain(&other), "request failed inside the node");
                WireError::new(
                    ErrorCode::Internal,
                    "the node failed to complete the request",
                )
            }
        }
    }
}

impl From<rusqlite::types::FromSqlError> for NodeError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        NodeError::Corrupt(format!("unexpected column type: {e}"))
    }
}

impl From<WireError> for NodeError {
    fn from(e: WireError) -> Self {
        NodeError::Rejected(e)
    }
}

/// An error and its sources, joined with `: `.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Shorthand for a `not_found` rejection.
pub(crate) fn not_found(message: impl Into<String>) -> NodeError {
    NodeError::Rejected(WireError::new(ErrorCode::NotFound, message))
}

/// Shorthand for a `conflict` rejection.
pub(crate) fn conflict(message: impl Into<String>) -> NodeError {
    NodeError::Rejected(WireError::new(ErrorCode::Conflict, message))
}

/// Shorthand for a `bad_request` rejection naming a field.
pub(crate) fn bad_field(field: impl Into<String>, message: impl std::fmt::Display) -> NodeError {
    NodeError::Rejected(WireError::bad_field(field, message))
}
