//! App-facing IPC: one Unix socket per app, the peer check, and the request handler.
//!
//! Layout, with per-app uids: `<socket_root>/<app_id>/` (`root:<app gid>` 0750: the app may
//! enter and list it, never write it) holds `<app_id>.sock` (`root:<app gid>` 0660) and
//! `credentials.json` (`root:<app gid>` 0640). Only the daemon writes there, and only
//! through the directory's descriptor (`fsutil::Dir`). Without per-app uids everything is
//! the daemon's own, 0700/0600. The directory, not the socket file, is what a container
//! mounts, so a re-bound socket (daemon restart) is visible to running apps.

pub mod handler;
pub mod listener;
pub mod peer;

pub use handler::{AppHandler, AppRuntime};
pub use listener::{bind_socket, serve_socket, AppSocket, SocketError};

/// File name of the credentials file inside an app's socket directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
