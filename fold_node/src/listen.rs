//! Binding the node's listeners: a private Unix socket, or loopback TCP.

use crate::error::NodeError;
use crate::store::ensure_private_dir;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// How long to wait when probing whether a socket file belongs to a live node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds a Unix socket at `path` with mode 0600, in a directory of mode 0700.
///
/// The directory is created (0700) when missing; an existing one that other users can
/// reach is refused. A socket file that a live process still answers on is refused; a
/// stale one (left by a killed node) is removed first. Anything else at `path` is left
/// alone and refused.
///
/// # Errors
///
/// [`NodeError::InsecureDir`], [`NodeError::SocketInUse`], [`NodeError::NotASocket`], or
/// [`NodeError::Io`].
pub async fn bind_unix(path: &Path) -> Result<UnixListener, NodeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await;
            match probe {
                Ok(Ok(_)) | Err(_) => return Err(NodeError::SocketInUse(path.to_path_buf())),
                Ok(Err(_)) => {
                    tracing::info!(path = %path.display(), "removing a stale socket");
                    std::fs::remove_file(path)
                        .map_err(|e| NodeError::io("cannot remove stale socket", path, e))?;
                }
            }
        }
        Ok(_) => return Err(NodeError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NodeError::io("cannot inspect", path, e)),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| NodeError::io("cannot bind socket", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| NodeError::io("cannot set the mode of", path, e))?;
    Ok(listener)
}

/// Binds a TCP listener on a loopback address. Requests on it must carry the node
/// secret (see [`crate::Listener::Tcp`]).
///
/// # Errors
///
/// [`NodeError::NotLoopback`] for any other address, [`NodeError::Io`] when binding fails.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    if !addr.ip().is_loopback() {
        return Err(NodeError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::io("cannot bind", addr.to_string(), e))
}
