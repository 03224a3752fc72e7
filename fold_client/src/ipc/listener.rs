//! Binding an app's socket (safely: never over a live daemon's) and serving it.

use super::handler::{AppHandler, AppRuntime};
use super::lane::LaneSlot;
use super::peer::{ContainerIdentity, Peer, PeerRule};
use super::Services;
use crate::fsutil::{Access, Dir};
use crate::registry::Placement;
use fold_ipc::frame::encode_frame;
use fold_ipc::server::serve_connection;
use fold_ipc::{ErrorCode, Response, WireError};
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
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

/// Binds the socket `name` in `dir` and sets its owner and mode (`access`). `dir` must be
/// a directory only the daemon can write (checked here), so that nobody can swap the
/// socket file between `bind` and the owner change. A stale socket file (nobody answering)
/// is replaced; a live one is left alone.
///
/// # Errors
///
/// [`SocketError::InUse`] when a live process answers on it, else [`SocketError::Io`].
pub fn bind_socket(dir: &Dir, name: &str, access: Access) -> Result<AppSocket, SocketError> {
    let path = dir.path().join(name);
    let io = |source: std::io::Error| SocketError::Io {
        path: path.clone(),
        source,
    };
    let stat = dir.stat().map_err(io)?;
    if stat.st_uid != nix::unistd::geteuid().as_raw() || stat.st_mode & 0o022 != 0 {
        return Err(io(std::io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{} may be written by others (owner {}, mode {:o}); the daemon binds sockets only where nobody else can write",
                dir.path().display(),
                stat.st_uid,
                stat.st_mode & 0o7777
            ),
        )));
    }
    match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => return Err(SocketError::InUse(path)),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) => dir.remove(name).map_err(io)?,
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    dir.set_entry_access(name, access).map_err(io)?;
    Ok(AppSocket { listener, path })
}

/// Serves one app's socket until `cancel` fires, then removes the socket file.
///
/// Each connection's peer uid must be `uid` (checked with `SO_PEERCRED` before anything is
/// read), and the peer must be where the app is placed (`placement_check`: for a container
/// app, the running container `peer_rule` names, checked exactly); the app may hold at most
/// `max_connections_per_app` connections, and further ones get a `rate_limited` error frame
/// and are closed.
pub async fn serve_socket(
    socket: AppSocket,
    app_id: String,
    uid: u32,
    runtime: Arc<AppRuntime>,
    shared: Arc<Services>,
    peer_rule: watch::Receiver<PeerRule>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections_per_app));
    let lane = LaneSlot::default();
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
        // Root may connect for a gVisor app (its gofer); which uid the app's placement and
        // tier want exactly is checked next, before any byte is read.
        let peer = match Peer::of(&stream) {
            Ok(peer) if peer.uid == uid || peer.uid == 0 => peer,
            Ok(peer) => {
                let detail = format!(
                    "peer uid {} is not the app's uid {uid}; connection closed unread",
                    peer.uid
                );
                reject(&shared, &app_id, &detail).await;
                continue;
            }
            Err(detail) => {
                reject(
                    &shared,
                    &app_id,
                    &format!("{detail}; connection closed unread"),
                )
                .await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            refuse(stream, shared.config.max_connections_per_app).await;
            continue;
        };
        let handler = Arc::clone(&handler);
        let limits = shared.config.connection;
        // Connections outlive a removal of their app's listener: their next request is
        // answered `unauthenticated` (the app is gone) rather than cut off unexplained.
        let shutdown = shared.shutdown.clone();
        let checking = Arc::clone(&shared);
        let app = app_id.clone();
        let rule = peer_rule.clone();
        let serve = move |stream: UnixStream| async move {
            if let Err(detail) = placement_check(&checking, (&app, uid), &peer, rule).await {
                reject(&checking, &app, &detail).await;
                return;
            }
            // An app that may open sessions is greeted with a challenge of its own per
            // connection; the mode is read when the connection starts (a change of it
            // ends open sessions, see `handler`).
            let session = checking
                .registry
                .get(&app)
                .is_some_and(|a| a.auth_mode == crate::registry::AuthMode::Session);
            let end = if session {
                let connection = Arc::new(super::session::SessionConnection {
                    app: handler,
                    state: super::session::SessionState::new(),
                });
                serve_connection(stream, connection, limits, shutdown.cancelled_owned()).await
            } else {
                serve_connection(stream, handler, limits, shutdown.cancelled_owned()).await
            };
            tracing::debug!(?end, "app connection ended");
            drop(permit);
        };
        // The connection is served on the app's lane (`lane`); its socket moves to the
        // lane's runtime, whose reactor then drives it.
        match lane.get().and_then(|lane| Ok((lane, stream.into_std()?))) {
            Ok((lane, stream)) => lane.spawn(shared.tasks.track_future(async move {
                match UnixStream::from_std(stream) {
                    Ok(stream) => serve(stream).await,
                    Err(e) => tracing::warn!(error = %e, "cannot move a connection to its lane"),
                }
            })),
            Err(e) => {
                tracing::warn!(app_id = %app_id, error = %e, "cannot start the app's lane; connection closed")
            }
        }
    }
    let _ = std::fs::remove_file(&socket.path);
}

async fn reject(shared: &Services, app_id: &str, detail: &str) {
    shared
        .audit
        .event(app_id, None, "peer_rejected", detail)
        .await;
}

/// How long a connection from a container that is still starting waits for the engine to
/// report the container's init pid, which the peer check needs.
const STARTING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the app is placed decides who may connect: a host-placed app (dev mode) any
/// process of its uid `uid`; a container app only what connects for its running container
/// (as its supervisor last published it in `rule`), checked exactly (see `peer`). A
/// container app whose container is not running accepts nobody.
async fn placement_check(
    shared: &Services,
    (app_id, uid): (&str, u32),
    peer: &Peer,
    mut rule: watch::Receiver<PeerRule>,
) -> Result<(), String> {
    let waited = tokio::time::Instant::now();
    loop {
        let Some(app) = shared.registry.get(app_id) else {
            return Err("the app was removed; connection closed unread".into());
        };
        if app.placement == Placement::Host {
            if peer.uid != uid {
                return Err(format!(
                    "peer uid {} is not the app's uid {uid} (the app runs on the host); \
                     connection closed unread",
                    peer.uid
                ));
            }
            return Ok(());
        }
        let current = rule.borrow_and_update().clone();
        match current {
            PeerRule::Nobody => return Err(
                "the app is placed in a container and none is running; connection closed unread"
                    .into(),
            ),
            PeerRule::Starting if waited.elapsed() < STARTING_WAIT => {
                // Woken by the next change, or re-checked after a while (placement too).
                let _ = tokio::time::timeout(std::time::Duration::from_millis(10), rule.changed())
                    .await;
            }
            PeerRule::Starting => {
                return Err(
                    "the app's container did not finish starting; connection closed unread".into(),
                )
            }
            PeerRule::Container {
                id,
                init_pid,
                isolation,
            } => {
                let want = ContainerIdentity::of_init(&id, init_pid, isolation)?;
                return peer
                    .check_in(&want, uid)
                    .map_err(|e| format!("{e}; connection closed unread"));
            }
        }
    }
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
