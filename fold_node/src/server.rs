//! The socket server: accept connections and answer each request through [`Node::execute`].
//!
//! Framing, bad JSON, oversized frames, idle and slow peers and per-connection
//! concurrency are all handled by [`fold_ipc::server::serve_connection`]; this module adds
//! what is particular to the node: the version check, the TCP secret, and the dispatch.

use crate::node::Node;
use crate::secret::NodeSecret;
use fold_ipc::limits::UsageParams;
use fold_ipc::server::{serve_connection, ConnectionLimits, Handler};
use fold_ipc::{ErrorCode, Request, Response, WireError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most connections served at once; further clients wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 1024;

/// Pause after a failed `accept` (for example, out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the node listens.
#[derive(Debug)]
pub enum Listener {
    /// A Unix socket (see [`crate::bind_unix`]). Access is controlled by the socket's
    /// mode: whoever can connect is trusted, and `token` is not checked.
    Unix(UnixListener),
    /// A loopback TCP listener (see [`crate::bind_tcp`]). Every request must carry the
    /// node secret as its `token`, or it is answered `unauthenticated`.
    Tcp {
        /// The bound listener.
        listener: TcpListener,
        /// The secret requests must carry.
        secret: NodeSecret,
    },
}

/// Answers requests with a [`Node`]: checks the protocol version and, on TCP, the
/// token; then parses the operation and runs it with the request's `app_id` as writer.
#[derive(Debug, Clone)]
pub struct NodeHandler {
    node: Node,
    secret: Option<NodeSecret>,
}

impl NodeHandler {
    /// A handler for `node`; with `secret`, every request must carry it as `token`.
    pub fn new(node: Node, secret: Option<NodeSecret>) -> Self {
        NodeHandler { node, secret }
    }
}

pub use fold_ipc::limits::USAGE_OPERATION;

impl NodeHandler {
    async fn usage(&self, id: String, params: Option<&serde_json::value::RawValue>) -> Response {
        let parsed = match params {
            None => Err(WireError::bad_field("params.app_id", "missing")),
            Some(raw) => serde_json::from_str::<UsageParams>(raw.get()).map_err(|e| {
                WireError::bad_field(
                    "params.app_id",
                    format!("expected {{\"app_id\": string}}: {e}"),
                )
            }),
        };
        match parsed {
            Ok(p) => match self.node.usage(&p.app_id).await {
                Ok(usage) => Response::ok(id, &usage),
                Err(e) => Response::error(Some(id), e),
            },
            Err(e) => Response::error(Some(id), e),
        }
    }
}

impl Handler for NodeHandler {
    async fn handle(&self, request: Request) -> Response {
        let id = request.request_id.clone();
        if let Some(v) = request.v {
            if !fold_ipc::version::is_supported(v) {
                let message = format!(
                    "protocol version {v} is not supported; this node speaks {:?}",
                    fold_ipc::version::SUPPORTED
                );
                return Response::error(
                    Some(id),
                    WireError::new(ErrorCode::UnsupportedVersion, message),
                );
            }
        }
        if let Some(secret) = &self.secret {
            if !secret.matches(request.token.as_deref()) {
                let error = WireError::new(
                    ErrorCode::Unauthenticated,
                    "this listener requires the node secret in `token`",
                );
                return Response::error(Some(id), error);
            }
        }
        if request.operation == USAGE_OPERATION {
            return self.usage(id, request.params.as_deref()).await;
        }
        let op = match request.operation() {
            Ok(op) => op,
            Err(e) => return Response::error(Some(id), e),
        };
        let limits = request.limits.as_ref();
        match self
            .node
            .execute_limited(request.app_id.as_deref(), op, limits)
            .await
        {
            Ok(result) => Response::ok_raw(id, result),
            Err(e) => Response::error(Some(id), e),
        }
    }
}

/// Serves `node` on `listener` until `shutdown` resolves, then stops accepting, lets
/// every connection finish the requests it is answering, and returns. A Unix socket file
/// is removed on the way out.
pub async fn serve(
    listener: Listener,
    node: Node,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (handler, socket_path) = match &listener {
        Listener::Unix(l) => (
            NodeHandler::new(node, None),
            l.local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(ToOwned::to_owned)),
        ),
        Listener::Tcp { secret, .. } => (NodeHandler::new(node, Some(secret.clone())), None),
    };
    let handler = Arc::new(handler);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let spawn = |stream| {
            Conn {
                handler: Arc::clone(&handler),
                limits,
                stop: stop.clone(),
                permit,
            }
            .spawn(&tracker, stream)
        };
        let accepted = match &listener {
            Listener::Unix(l) => tokio::select! {
                () = &mut shutdown => break,
                r = l.accept() => r.map(|(s, _)| spawn(Stream::Unix(s))),
            },
            Listener::Tcp { listener: l, .. } => tokio::select! {
                () = &mut shutdown => break,
                r = l.accept() => r.map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    spawn(Stream::Tcp(s))
                }),
            },
        };
        if let Err(e) = accepted {
            tracing::warn!(error = %e, "accept failed; backing off");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

struct Conn {
    handler: Arc<NodeHandler>,
    limits: ConnectionLimits,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
}

impl Conn {
    fn spawn(self, tracker: &TaskTracker, stream: Stream) {
        match stream {
            Stream::Unix(s) => self.spawn_on(tracker, s),
            Stream::Tcp(s) => self.spawn_on(tracker, s),
        }
    }

    fn spawn_on<S: AsyncRead + AsyncWrite + Send + 'static>(
        self,
        tracker: &TaskTracker,
        stream: S,
    ) {
        tracker.spawn(async move {
            let stop = self.stop.cancelled_owned();
            let end = serve_connection(stream, self.handler, self.limits, stop).await;
            tracing::debug!(?end, "connection ended");
            drop(self.permit);
        });
    }
}
