//! The client side of a connection: many requests in flight on one stream, each answered by
//! `request_id`.
//!
//! Used by the app SDK to talk to the daemon and by the daemon to talk to a node. A reader
//! task routes each response to the caller waiting for its `request_id`; a writer task sends
//! requests, several per write when they queue up.

use crate::error::{ErrorCode, WireError};
use crate::frame::{encode_frame, read_frame, FrameError};
use crate::message::{Request, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

/// Why a call got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The connection is closed. `sent` says whether the request may have reached the peer:
    /// when false it certainly did not, and resending is safe.
    #[error("connection closed ({})", if *sent { "the request may have been received" } else { "the request was not sent" })]
    Disconnected {
        /// Whether the request may have reached the peer.
        sent: bool,
    },
    /// No response within the timeout; the request may or may not have been applied.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The request is larger than the frame cap; it was not sent.
    #[error("request of {0} bytes exceeds the frame cap")]
    TooLarge(usize),
    /// A request with the same `request_id` is already in flight on this connection.
    #[error("request id {0:?} is already in flight")]
    DuplicateId(String),
    /// The peer answered with a connection-level error (no `request_id`) and closed.
    #[error("peer refused the connection: {0}")]
    Refused(WireError),
}

type Pending = Mutex<HashMap<String, oneshot::Sender<Result<Response, CallError>>>>;

struct Shared {
    pending: Pending,
    closed: AtomicBool,
}

impl Shared {
    fn fail_all(&self, err: &CallError) {
        self.closed.store(true, Ordering::SeqCst);
        let drained: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (_, waiter) in drained {
            let _ = waiter.send(Err(err.clone()));
        }
    }
}

/// One multiplexed connection. Cheap to share behind an `Arc`; calls may run concurrently.
#[derive(Debug)]
pub struct MuxConnection {
    outgoing: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    max_frame: usize,
    reader: AbortHandle,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Drop for MuxConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl MuxConnection {
    /// Starts the reader and writer tasks on `stream`. Must be called inside a tokio runtime.
    pub fn new<S>(stream: S, max_frame: usize) -> MuxConnection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, mut write_half) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let (outgoing, mut rx) = mpsc::channel::<Vec<u8>>(256);

        let writer_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(frame) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&frame);
                while batch.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(frame) => batch.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                if write_half.write_all(&batch).await.is_err() || write_half.flush().await.is_err()
                {
                    writer_shared.fail_all(&CallError::Disconnected { sent: true });
                    break;
                }
            }
            let _ = write_half.shutdown().await;
        });

        let reader_shared = Arc::clone(&shared);
        let reader = tokio::spawn(async move {
            let mut reader = BufReader::new(read_half);
            let end = loop {
                let body = match read_frame(&mut reader, max_frame).await {
                    Ok(Some(body)) => body,
                    Ok(None) | Err(FrameError::Truncated { .. } | FrameError::Io(_)) => {
                        break CallError::Disconnected { sent: true };
                    }
                    Err(FrameError::TooLarge { .. }) => {
                        break CallError::Disconnected { sent: true }
                    }
                };
                let Ok(response) = Response::decode(&body) else {
                    break CallError::Disconnected { sent: true };
                };
                let Some(id) = response.request_id.as_deref() else {
                    // No id: an answer to a request the peer could not read. Only `too_large`
                    // (and connection refusals) end the connection; others match no caller.
                    match response.error {
                        Some(error)
                            if matches!(
                                error.code,
                                ErrorCode::TooLarge | ErrorCode::RateLimited
                            ) =>
                        {
                            break CallError::Refused(error)
                        }
                        _ => continue,
                    }
                };
                let waiter = reader_shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(response));
                }
            };
            reader_shared.fail_all(&end);
        })
        .abort_handle();

        MuxConnection {
            outgoing,
            shared,
            max_frame,
            reader,
        }
    }

    /// Whether the connection has closed; a closed connection fails every call.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst) || self.outgoing.is_closed()
    }

    /// Sends `request` and waits up to `timeout` for its response.
    ///
    /// # Errors
    ///
    /// [`CallError`]; see each variant for whether the request may have been applied.
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Response, CallError> {
        let body = request.encode();
        let frame =
            encode_frame(&body, self.max_frame).map_err(|_| CallError::TooLarge(body.len()))?;
        if self.is_closed() {
            return Err(CallError::Disconnected { sent: false });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pending.contains_key(&request.request_id) {
                return Err(CallError::DuplicateId(request.request_id.clone()));
            }
            pending.insert(request.request_id.clone(), tx);
        }
        let guard = PendingGuard {
            shared: &self.shared,
            id: &request.request_id,
        };
        if self.outgoing.send(frame).await.is_err() {
            return Err(CallError::Disconnected { sent: false });
        }
        let result = match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(CallError::Timeout(timeout)),
            Ok(Err(_)) => Err(CallError::Disconnected { sent: true }),
            Ok(Ok(result)) => result,
        };
        drop(guard);
        result
    }
}

/// Removes a call's waiter however the call ends (answer, timeout, or the caller dropping
/// the future), so the pending map never keeps dead entries.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::Operation;
    use crate::server::{serve_connection, ConnectionLimits, Handler};

    struct Slow;
    impl Handler for Slow {
        async fn handle(&self, request: Request) -> Response {
            if let Ok(Operation::GetSchema { name }) = request.operation() {
                let ms: u64 = name.trim_start_matches('s').parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Response::ok(request.request_id.clone(), &request.request_id)
        }
    }

    fn pair() -> MuxConnection {
        let (client, server) = tokio::io::duplex(4096);
        tokio::spawn(serve_connection(
            server,
            Arc::new(Slow),
            ConnectionLimits::default(),
            std::future::pending(),
        ));
        MuxConnection::new(client, crate::frame::DEFAULT_MAX_FRAME)
    }

    #[tokio::test]
    async fn many_calls_in_flight_are_matched_by_id() {
        let conn = Arc::new(pair());
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let conn = Arc::clone(&conn);
            tasks.push(tokio::spawn(async move {
                let op = Operation::GetSchema {
                    name: format!("s{}", (50 - i) % 7),
                };
                let req = Request::unsigned(format!("r{i}"), None, &op);
                let resp = conn.call(&req, Duration::from_secs(5)).await.unwrap();
                assert_eq!(resp.into_result::<String>().unwrap(), format!("r{i}"));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn timeout_and_duplicate_id() {
        let conn = pair();
        let slow = Request::unsigned(
            "same",
            None,
            &Operation::GetSchema {
                name: "s500".into(),
            },
        );
        let (a, b) = tokio::join!(conn.call(&slow, Duration::from_millis(50)), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            conn.call(&slow, Duration::from_millis(50)).await
        });
        assert_eq!(
            a.unwrap_err(),
            CallError::Timeout(Duration::from_millis(50))
        );
        assert_eq!(b.unwrap_err(), CallError::DuplicateId("same".into()));
        // After the timeout the id is free again.
        let ping = Request::unsigned("same", None, &Operation::Ping);
        assert!(
            conn.call(&ping, Duration::from_secs(1))
                .await
                .unwrap()
                .success
        );
    }

    #[tokio::test]
    async fn peer_going_away_fails_pending_calls_as_maybe_sent() {
        let (client, server) = tokio::io::duplex(4096);
        let conn = MuxConnection::new(client, crate::frame::DEFAULT_MAX_FRAME);
        let req = Request::unsigned("r", None, &Operation::Ping);
        let call = conn.call(&req, Duration::from_secs(5));
        let closer = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(server);
        };
        let (result, ()) = tokio::join!(call, closer);
        assert_eq!(result.unwrap_err(), CallError::Disconnected { sent: true });
        assert!(conn.is_closed());
        assert_eq!(
            conn.call(&req, Duration::from_secs(1)).await.unwrap_err(),
            CallError::Disconnected { sent: false }
        );
    }
}
