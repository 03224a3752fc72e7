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
pub use peer::PeerRule;

use fold_ipc::Credentials;
use std::path::Path;

/// File name of the credentials file inside an app's socket directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// The largest credentials file the daemon reads back.
pub const CREDENTIALS_CAP: u64 = 64 * 1024;

/// The credentials in the app's socket directory `socket_dir`, read through the
/// directory's descriptor (never through a symlink).
///
/// # Errors
///
/// The file is missing, not a regular file, too large or not valid credentials.
pub fn read_credentials(socket_dir: &Path) -> Result<Credentials, String> {
    let dir = crate::fsutil::Dir::open(socket_dir).map_err(|e| e.to_string())?;
    let bytes = dir
        .read_file(CREDENTIALS_FILE, CREDENTIALS_CAP)
        .map_err(|e| e.to_string())?;
    Credentials::from_json(&bytes).map_err(|e| e.to_string())
}
