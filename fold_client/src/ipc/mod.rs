//! App-facing IPC: one Unix socket per app, the peer check, and the request handler.
//!
//! Layout, with per-app uids: `<socket_root>/<app_id>/` (`root:<app gid>` 0750: the app may
//! enter and list it, never write it) holds `<app_id>.sock` (`root:<app gid>` 0660) and
//! `credentials.json` (`root:<app gid>` 0640). Only the daemon writes there, and only
//! through the directory's descriptor (`fsutil::Dir`). Without per-app uids everything is
//! the daemon's own, 0700/0600. The directory, not the socket file, is what a container
//! mounts, so a re-bound socket (daemon restart) is visible to running apps.

pub mod handler;
pub mod lane;
pub mod listener;
pub mod peer;
pub mod session;

pub use handler::{AppHandler, AppRuntime};
pub use listener::{bind_socket, serve_socket, AppSocket, SocketError};
pub use peer::PeerRule;

use crate::audit::Audit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::nonce_journal::NonceJournal;
use crate::proxy::NodeClient;
use crate::registry::Registry;
use fold_ipc::Credentials;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What serving the app sockets needs, handed in by the daemon when it binds a socket:
/// the listener and the request handler reach nothing else (in particular not the daemon
/// or the supervisor; an app's peer rule comes on its own channel).
#[derive(Debug)]
pub struct Services {
    /// The validated configuration (limits, timeouts, windows).
    pub config: Arc<Config>,
    /// Installed apps, looked up again on every connection and request.
    pub registry: Arc<Registry>,
    /// The node.
    pub node: Arc<NodeClient>,
    /// The audit log.
    pub audit: Audit,
    /// Where requests spend their time.
    pub metrics: Arc<Metrics>,
    /// Accepted nonces, kept across restarts; and the timestamp floor.
    pub journal: Arc<NonceJournal>,
    /// Every connection task is spawned here, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Fires on daemon shutdown.
    pub shutdown: CancellationToken,
}

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
