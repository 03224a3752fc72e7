//! Binding an app's socket (safely: never over a live daemon's) and serving it.

use super::handler::{AppHandler, AppRuntime};
use crate::daemon::Shared;
use crate::fsutil;
use crate::supervisor::PeerRule;
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

/// Binds `path` with mode 0600 and, when `owner` is given, that owner. With `dir_mode`, the
/// parent directory is created (or reset) with that mode and the same owner; without it, the
/// parent must exist and is left as it is (the admin socket lives in the state directory,
/// whose mode the daemon manages). A stale socket file (nobody answering) is replaced; a live
/// one is left alone.
///
/// # Errors
///
/// [`SocketError::InUse`] when a live process answers on `path`, else [`SocketError::Io`].
pub fn bind_socket(
    path: &Path,
    dir_mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<AppSocket, SocketError> {
    let io = |source: std::io::Error| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .ok_or_else(|| io(std::io::Error::other("socket path has no directory")))?;
    if let Some(mode) = dir_mode {
        fsutil::private_dir(dir, mode).map_err(io)?;
        if let Some((uid, gid)) = owner {
            fsutil::chown(dir, uid, gid).map_err(io)?;
        }
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
        let cred = stream.peer_cred().ok();
        let peer_uid = cred.map(|c| c.uid());
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
        if let Err(detail) = container_check(&shared, &app_id, cred.and_then(|c| c.pid())) {
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

/// For an app placed in a container, the peer must be a process of that container: its
/// `/proc/<pid>/cgroup` (the host pid from `SO_PEERCRED`) names the container's id. Apps
/// in direct mode are checked by uid only.
fn container_check(shared: &Shared, app_id: &str, pid: Option<i32>) -> Result<(), String> {
    let id =
        match shared.supervisor.peer_rule(app_id) {
            PeerRule::Uid => return Ok(()),
            PeerRule::Nobody => return Err(
                "the app was placed in a container that is not running; connection closed unread"
                    .into(),
            ),
            PeerRule::Container(id) => id,
        };
    let short = &id[..id.len().min(12)];
    let pid = pid.ok_or_else(|| format!("peer pid unknown; the app runs in container {short}"))?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read the cgroup of peer pid {pid}: {e}"))?;
    if cgroup_names(&cgroup, &id) {
        Ok(())
    } else {
        Err(format!(
            "peer pid {pid} is not in the app's container {short}; connection closed unread"
        ))
    }
}

/// Whether a `/proc/<pid>/cgroup` text places the process in the container with this full
/// id (cgroup v1 `.../docker/<id>`, v2 `.../docker-<id>.scope`).
pub fn cgroup_names(cgroup: &str, container_id: &str) -> bool {
    container_id.len() >= 12
        && cgroup
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path.contains(container_id))
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

#[cfg(test)]
mod tests {
    use super::cgroup_names;

    #[test]
    fn cgroup_paths_name_their_container() {
        let id = "3f0c9a9b1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";
        let v1 = format!("12:memory:/docker/{id}\n11:pids:/docker/{id}\n0::/\n");
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        assert!(cgroup_names(&v1, id));
        assert!(cgroup_names(&v2, id));
        assert!(!cgroup_names(
            "12:memory:/user.slice\n0::/user.slice/session-1.scope\n",
            id
        ));
        assert!(!cgroup_names(&v1, ""), "an empty id matches nothing");
    }
}
