//! Binding an app's socket (safely: never over a live daemon's) and serving it.

use super::handler::{AppHandler, AppRuntime};
use crate::daemon::Shared;
use crate::fsutil;
use fold_ipc::frame::encode_frame;
use fold_ipc::server::serve_connection;
use fold_ipc::{ErrorCode, Response, WireError};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another live process answers on the socket path.
    #[error(
        "socket {0} is served by another live daemon; stop it first, or use another --socket-root"
    )]
    InUse(PathBuf),
    /// Creating the directory, removing a stale socket, binding or setting modes failed.
    #[error("cannot bind socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A bound app socket.
#[derive(Debug)]
pub struct AppSocket {
    /// The listener.
    pub listener: UnixListener,
    /// The socket's path.
    pub path: PathBuf,
}

/// Binds `path` with mode 0600 and, when `owner` is given, that owner; the parent directory
/// is created 0700 with the same owner. A stale socket file (nobody answering) is replaced;
/// a live one is left alone.
///
/// # Errors
///
/// [`SocketError::InUse`] when a live process answers on `path`, else [`SocketError::Io`].
pub fn bind_socket(path: &Path, owner: Option<(u32, u32)>) -> Result<AppSocket, SocketError> {
    let io = |source: std::io::Error| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .ok_or_else(|| io(std::io::Error::other("socket path has no directory")))?;
    fsutil::private_dir(dir, 0o700).map_err(io)?;
    if let Some((uid, gid)) = owner {
        fsutil::chown(dir, uid, gid).map_err(io)?;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) => match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        },
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    if let Some((uid, gid)) = owner {
        fsutil::chown(path, uid, gid).map_err(io)?;
    }
    Ok(AppSocket {
        listener,
        path: path.to_path_buf(),
    })
}

/// Serves one app's socket until `cancel` fires, then removes the socket file.
///
/// Each connection's peer uid must be `uid` (checked with `SO_PEERCRED` before anything is
/// read); the app may hold at most `max_connections_per_app` connections, and further ones
/// get a `rate_limited` error frame and are closed.
pub async fn serve_socket(
    socket: AppSocket,
    app_id: String,
    uid: u32,
    runtime: Arc<AppRuntime>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections_per_app));
    let handler = Arc::new(AppHandler {
        app_id: app_id.clone(),
        runtime,
        shared: Arc::clone(&shared),
    });
    let mut backoff = std::time::Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = socket.listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = std::time::Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(app_id = %app_id, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
        };
        let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
        if peer_uid != Some(uid) {
            let detail = format!(
                "peer uid {peer_uid:?} is not the app's uid {uid}; connection closed unread"
            );
            shared
                .audit
                .event(&app_id, None, "peer_rejected", &detail)
                .await;
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            refuse(stream, shared.config.max_connections_per_app).await;
            continue;
        };
        let handler = Arc::clone(&handler);
        let limits = shared.config.connection;
        // Connections outlive a removal of their app's listener: their next request is
        // answered `unauthenticated` (the app is gone) rather than cut off unexplained.
        let shutdown = shared.shutdown.clone();
        shared.tasks.spawn(async move {
            let end = serve_connection(stream, handler, limits, shutdown.cancelled_owned()).await;
            tracing::debug!(?end, "app connection ended");
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(&socket.path);
}

async fn refuse(mut stream: UnixStream, limit: usize) {
    let error = WireError::new(
        ErrorCode::RateLimited,
        format!("too many connections: this app may hold {limit} at once"),
    );
    if let Ok(frame) = encode_frame(&Response::error(None, error).encode(), usize::MAX) {
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&frame)).await;
    }
}
