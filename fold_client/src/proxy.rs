//! The only way to the node: a typed operation in, the node's result or error out.
//!
//! The node is either embedded (in-process, the default) or external, reached over a
//! small pool of multiplexed connections. An external node that is down gives
//! `node_unavailable`; the pool reconnects on the next call, so service resumes by itself.

use crate::config::NodeTarget;
use fold_ipc::limits::{RequestLimits, Usage, UsageParams, USAGE_OPERATION};
use fold_ipc::mux::{CallError, MuxConnection};
use fold_ipc::{ErrorCode, Operation, Request, WireError};
use serde_json::value::RawValue;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long connecting to an external node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The node, embedded or external.
#[derive(Debug)]
pub enum NodeClient {
    /// In-process.
    Embedded(fold_node::Node),
    /// Over a socket.
    Remote(RemoteNode),
}

/// Why the node could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The embedded node could not open its data.
    #[error("cannot open the embedded node: {0}")]
    Embedded(String),
    /// The node secret file could not be read.
    #[error("cannot read the node secret {path}: {source}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl NodeClient {
    /// Opens the embedded node or prepares the pool for an external one (which is connected
    /// lazily, so the daemon starts even while the node is down).
    ///
    /// # Errors
    ///
    /// The embedded node cannot be opened, or the secret file cannot be read.
    pub async fn open(
        target: &NodeTarget,
        pool: usize,
        max_frame: usize,
    ) -> Result<NodeClient, ProxyError> {
        Ok(match target {
            NodeTarget::Embedded(dir) => NodeClient::Embedded(
                fold_node::Node::open(dir.clone())
                    .map_err(|e| ProxyError::Embedded(e.to_string()))?,
            ),
            NodeTarget::Unix(path) => NodeClient::Remote(RemoteNode::new(
                Address::Unix(path.clone()),
                None,
                pool,
                max_frame,
            )),
            NodeTarget::Tcp { addr, secret_file } => {
                let secret = match secret_file {
                    Some(path) => Some(
                        crate::fsutil::read_capped(path, 4096)
                            .map_err(|source| ProxyError::Secret {
                                path: path.clone(),
                                source,
                            })?
                            .trim()
                            .to_string(),
                    ),
                    None => None,
                };
                NodeClient::Remote(RemoteNode::new(
                    Address::Tcp(*addr),
                    secret,
                    pool,
                    max_frame,
                ))
            }
        })
    }

    /// Runs `op` on the node on behalf of `writer` (the app id, recorded as provenance).
    ///
    /// # Errors
    ///
    /// The node's error, `node_unavailable` when it cannot be reached, `timeout` when it
    /// does not answer in time.
    pub async fn call(
        &self,
        writer: &str,
        op: Operation,
        timeout: Duration,
        limits: &RequestLimits,
    ) -> Result<Box<RawValue>, WireError> {
        match self {
            // The node enforces a deadline that `limits` carries (and stops the work);
            // only a call without one needs a timer here.
            NodeClient::Embedded(node) => {
                let run = node.execute_limited(Some(writer), op, Some(limits));
                let node_deadline = limits
                    .timeout_ms
                    .is_some_and(|ms| u128::from(ms) <= timeout.as_millis());
                if node_deadline {
                    return run.await;
                }
                match tokio::time::timeout(timeout, run).await {
                    Ok(result) => result,
                    Err(_) => Err(timeout_error(timeout)),
                }
            }
            NodeClient::Remote(remote) => remote.call(writer, &op, timeout, limits).await,
        }
    }
}

impl NodeClient {
    /// What `app_id`'s records take on the node, as counted against its quota.
    ///
    /// # Errors
    ///
    /// As for [`NodeClient::call`].
    pub async fn usage(&self, app_id: &str, timeout: Duration) -> Result<Usage, WireError> {
        match self {
            NodeClient::Embedded(node) => {
                match tokio::time::timeout(timeout, node.usage(app_id)).await {
                    Ok(result) => result,
                    Err(_) => Err(timeout_error(timeout)),
                }
            }
            NodeClient::Remote(remote) => {
                let mut request = remote.request(None, None);
                request.operation = USAGE_OPERATION.to_string();
                let params = UsageParams {
                    app_id: app_id.to_string(),
                };
                request.params = serde_json::value::to_raw_value(&params).ok();
                let raw = remote.send(&request, timeout).await?;
                serde_json::from_str(raw.get()).map_err(|e| {
                    WireError::new(
                        ErrorCode::Internal,
                        format!("unexpected usage from the node: {e}"),
                    )
                })
            }
        }
    }
}

fn timeout_error(timeout: Duration) -> WireError {
    WireError::new(ErrorCode::Timeout, format!("the node did not answer within {timeout:?}; the request may or may not have been applied"))
}

/// Where an external node listens.
#[derive(Debug, Clone)]
pub enum Address {
    /// A Unix socket.
    Unix(PathBuf),
    /// Loopback TCP.
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A pool of multiplexed connections to an external node.
pub struct RemoteNode {
    address: Address,
    secret: Option<String>,
    slots: Vec<tokio::sync::Mutex<Option<Arc<MuxConnection>>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    max_frame: usize,
    /// The daemon's runtime: connections are opened there, so that their tasks and sockets
    /// do not belong to the lane of the app whose request happened to open them.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNode")
            .field("address", &self.address)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl RemoteNode {
    fn new(address: Address, secret: Option<String>, pool: usize, max_frame: usize) -> RemoteNode {
        RemoteNode {
            address,
            secret,
            slots: (0..pool.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_frame,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    async fn connection(&self, slot: usize) -> Result<Arc<MuxConnection>, WireError> {
        let mut guard = self.slots[slot].lock().await;
        if let Some(conn) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        let unavailable = |e: String| {
            WireError::new(
                ErrorCode::NodeUnavailable,
                format!("the data node at {} is unreachable: {e}", self.address),
            )
        };
        let address = self.address.clone();
        let max_frame = self.max_frame;
        let connect = async move {
            match address {
                Address::Unix(path) => {
                    let stream = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio::net::UnixStream::connect(path),
                    )
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                    Ok::<_, String>(MuxConnection::new(stream, max_frame))
                }
                Address::Tcp(addr) => {
                    let stream =
                        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                            .await
                            .map_err(|_| "connect timed out".to_string())?
                            .map_err(|e| e.to_string())?;
                    let _ = stream.set_nodelay(true);
                    Ok(MuxConnection::new(stream, max_frame))
                }
            }
        };
        let conn = self
            .runtime
            .spawn(connect)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(unavailable)?;
        let conn = Arc::new(conn);
        *guard = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn call(
        &self,
        writer: &str,
        op: &Operation,
        timeout: Duration,
        limits: &RequestLimits,
    ) -> Result<Box<RawValue>, WireError> {
        let mut request = self.request(Some(writer), Some(op));
        // The deadline travels with the request, so the node stops the work when the
        // daemon stops waiting.
        request.limits = Some(*limits);
        self.send(&request, timeout).await
    }

    /// A request to the node (a ping when `op` is `None`) with a fresh id and the secret.
    fn request(&self, writer: Option<&str>, op: Option<&Operation>) -> Request {
        let mut request = Request::unsigned(
            format!("d{}", self.next_id.fetch_add(1, Ordering::Relaxed)),
            writer.map(str::to_string),
            op.unwrap_or(&Operation::Ping),
        );
        request.token.clone_from(&self.secret);
        request
    }

    /// Sends `request` on one of the pooled connections.
    async fn send(&self, request: &Request, timeout: Duration) -> Result<Box<RawValue>, WireError> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // One retry, only when the request certainly did not leave (a stale pooled connection).
        for attempt in 0..2 {
            let conn = self.connection(slot).await?;
            match conn.call(request, timeout).await {
                Ok(response) => return into_raw(response),
                Err(CallError::Disconnected { sent: false }) if attempt == 0 => continue,
                Err(err) => return Err(call_error(err, &self.address, timeout)),
            }
        }
        Err(WireError::new(
            ErrorCode::NodeUnavailable,
            format!("the data node at {} closed the connection", self.address),
        ))
    }
}

fn into_raw(response: fold_ipc::Response) -> Result<Box<RawValue>, WireError> {
    if response.success {
        Ok(response.result.unwrap_or_default())
    } else {
        Err(response.error.unwrap_or_else(|| {
            WireError::new(ErrorCode::Internal, "the node failed without an error")
        }))
    }
}

fn call_error(err: CallError, address: &Address, timeout: Duration) -> WireError {
    match err {
        CallError::Timeout(_) => timeout_error(timeout),
        // `node_unavailable` promises "not applied, safe to retry"; a request that may have
        // reached the node before the connection dropped is ambiguous, which is `timeout`.
        CallError::Disconnected { sent: true } => WireError::new(
            ErrorCode::Timeout,
            format!("lost the connection to the data node at {address} mid-request; the request may or may not have been applied"),
        ),
        CallError::Disconnected { sent: false } => WireError::new(
            ErrorCode::NodeUnavailable,
            format!("the data node at {address} is unreachable; the request was not applied"),
        ),
        CallError::TooLarge(n) => WireError::new(
            ErrorCode::TooLarge,
            format!("request of {n} bytes is too large for the node"),
        ),
        CallError::DuplicateId(_) => {
            WireError::new(ErrorCode::Internal, "duplicate node request id")
        }
        CallError::Refused(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_may_have_reached_the_node_is_a_timeout_not_node_unavailable() {
        let address = Address::Unix(PathBuf::from("/run/fold/node.sock"));
        let timeout = Duration::from_secs(5);
        let map = |err| call_error(err, &address, timeout);
        // Possibly applied: `timeout` ("may or may not"), which clients do not blindly retry.
        let sent = map(CallError::Disconnected { sent: true });
        assert_eq!(sent.code, ErrorCode::Timeout);
        assert!(sent.message.contains("may or may not"), "{}", sent.message);
        assert!(
            sent.message.contains("unix:/run/fold/node.sock"),
            "{}",
            sent.message
        );
        let late = map(CallError::Timeout(timeout));
        assert_eq!(late.code, ErrorCode::Timeout);
        assert!(late.message.contains("may or may not"), "{}", late.message);
        // Certainly not applied: `node_unavailable`, which promises a retry is safe.
        let unsent = map(CallError::Disconnected { sent: false });
        assert_eq!(unsent.code, ErrorCode::NodeUnavailable);
        assert!(unsent.message.contains("not applied"), "{}", unsent.message);
        assert_eq!(map(CallError::TooLarge(9)).code, ErrorCode::TooLarge);
        assert_eq!(
            map(CallError::DuplicateId("r1".into())).code,
            ErrorCode::Internal
        );
        let refused = WireError::new(ErrorCode::Unauthenticated, "bad node secret");
        assert_eq!(map(CallError::Refused(refused.clone())), refused);
    }
}
