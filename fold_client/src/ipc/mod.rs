//! App-facing IPC: one Unix socket per app, the peer check, and the request handler.
//!
//! Layout: `<socket_root>/<app_id>/` (0700, owned by the app's uid) holds `<app_id>.sock`
//! (0600) and `credentials.json` (0600). The directory, not the socket file, is what a
//! container mounts, so a re-bound socket (daemon restart) is visible to running apps.

pub mod handler;
pub mod listener;

pub use handler::{AppHandler, AppRuntime};
pub use listener::{bind_socket, serve_socket, AppSocket, SocketError};

/// File name of the credentials file inside an app's socket directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
