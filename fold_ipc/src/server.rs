//! The server side of a connection: read frames, decode requests, answer each one
//! concurrently, write responses as they complete.
//!
//! Shared by `fold_node` and the `fold_client` daemon, so both apply the same caps and
//! timeouts. A [`Handler`] turns one decoded [`Request`] into one [`Response`]; everything
//! else (framing, bad JSON, oversized frames, idle and slow peers, in-flight limits,
//! shutdown) is handled here.
//!
//! Requests on one connection are independent: a slow one never holds up the others, and
//! responses go out in completion order, matched by `request_id`.

use crate::error::{ErrorCode, WireError};
use crate::frame::{encode_frame, read_frame, FrameError, DEFAULT_MAX_FRAME};
use crate::message::{Request, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// Answers requests. One handler value serves one connection, so it can carry what the
/// connection established (for the daemon: which app's socket this is).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Never fails: every failure is an error [`Response`].
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

/// Caps and timeouts for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest frame body accepted.
    pub max_frame: usize,
    /// How long a connection may sit without starting a new frame.
    pub idle_timeout: Duration,
    /// How long a frame may take to arrive once its first byte has.
    pub read_timeout: Duration,
    /// How long writing one batch of responses may take.
    pub write_timeout: Duration,
    /// Most requests being answered at once on this connection; reading pauses beyond it.
    pub max_in_flight: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_in_flight: 64,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The peer closed between frames.
    Closed,
    /// No frame started within the idle timeout.
    Idle,
    /// A frame did not complete within the read timeout.
    SlowRead,
    /// The peer announced a frame over the cap; it was told `too_large`.
    TooLarge,
    /// The peer closed mid-frame.
    Truncated,
    /// The server is shutting down.
    Shutdown,
    /// Reading or writing failed.
    Io(String),
}

/// Serves one connection until the peer leaves, a limit is hit, or `shutdown` resolves.
/// Waits for requests already being answered to finish before returning.
pub async fn serve_connection<S, H>(
    stream: S,
    handler: Arc<H>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> ConnectionEnd
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(limits.max_in_flight.max(1) * 2);
    let writer = tokio::spawn(write_responses(write_half, rx, limits));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);

    let end = loop {
        // Reap finished tasks so the set does not grow with the connection's lifetime.
        while tasks.try_join_next().is_some() {}
        let started = tokio::select! {
            () = &mut shutdown => break ConnectionEnd::Shutdown,
            r = tokio::time::timeout(limits.idle_timeout, reader.fill_buf()) => r,
        };
        match started {
            Err(_) => break ConnectionEnd::Idle,
            Ok(Err(e)) => break ConnectionEnd::Io(e.to_string()),
            Ok(Ok([])) => break ConnectionEnd::Closed,
            Ok(Ok(_)) => {}
        }
        let frame = match tokio::time::timeout(
            limits.read_timeout,
            read_frame(&mut reader, limits.max_frame),
        )
        .await
        {
            Err(_) => break ConnectionEnd::SlowRead,
            Ok(frame) => frame,
        };
        let body = match frame {
            Ok(Some(body)) => body,
            Ok(None) => break ConnectionEnd::Closed,
            Err(FrameError::TooLarge { len, max }) => {
                let error = WireError::new(
                    ErrorCode::TooLarge,
                    format!("frame of {len} bytes exceeds the maximum of {max} bytes; closing the connection"),
                );
                let _ = tx.send(Response::error(None, error).encode()).await;
                break ConnectionEnd::TooLarge;
            }
            Err(FrameError::Truncated { .. }) => break ConnectionEnd::Truncated,
            Err(FrameError::Io(e)) => break ConnectionEnd::Io(e.to_string()),
        };
        let request = match Request::decode(&body) {
            Ok(request) => request,
            Err(err) => {
                if tx.send(Response::from(err).encode()).await.is_err() {
                    break ConnectionEnd::Io("writer stopped".into());
                }
                continue;
            }
        };
        drop(body);
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break ConnectionEnd::Shutdown;
        };
        let handler = Arc::clone(&handler);
        let tx = tx.clone();
        let max_frame = limits.max_frame;
        tasks.spawn(async move {
            let response = handler.handle(request).await;
            let _ = tx.send(encode_capped(&response, max_frame)).await;
            drop(permit);
        });
    };
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    end
}

/// Encodes a response; one larger than the peer's frame cap becomes a `too_large` error,
/// so the peer gets an answer instead of a frame it must refuse.
fn encode_capped(response: &Response, max_frame: usize) -> Vec<u8> {
    let body = response.encode();
    if body.len() <= max_frame {
        return body;
    }
    let error = WireError::new(
        ErrorCode::TooLarge,
        format!("the response is {} bytes, over the {max_frame}-byte frame cap; ask for fewer rows or fields", body.len()),
    );
    Response::error(response.request_id.clone(), error).encode()
}

/// Writes responses as they come, several per write when they queue up.
async fn write_responses<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    limits: ConnectionLimits,
) {
    let mut batch = Vec::new();
    while let Some(body) = rx.recv().await {
        batch.clear();
        push_frame(&mut batch, &body);
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(body) => push_frame(&mut batch, &body),
                Err(_) => break,
            }
        }
        let write = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        };
        match tokio::time::timeout(limits.write_timeout, write).await {
            Ok(Ok(())) => {}
            // The peer is gone or not reading: stop; the reader side ends on its own.
            _ => break,
        }
    }
    let _ = writer.shutdown().await;
}

fn push_frame(batch: &mut Vec<u8>, body: &[u8]) {
    // Responses are produced by this crate and bounded well below u32::MAX.
    if let Ok(frame) = encode_frame(body, u32::MAX as usize) {
        batch.extend_from_slice(&frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::write_frame;
    use crate::operation::Operation;
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};

    /// Answers `ping` at once and `get_schema` after the named number of milliseconds.
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Response {
            match request.operation() {
                Ok(Operation::GetSchema { name }) => {
                    let ms: u64 = name.trim_start_matches('s').parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Response::ok(request.request_id, &name)
                }
                Ok(_) => Response::ok(request.request_id, "pong"),
                Err(e) => Response::error(Some(request.request_id), e),
            }
        }
    }

    fn start(limits: ConnectionLimits) -> (DuplexStream, tokio::task::JoinHandle<ConnectionEnd>) {
        let (client, server) = duplex(1024);
        let task = tokio::spawn(serve_connection(
            server,
            Arc::new(Echo),
            limits,
            std::future::pending(),
        ));
        (client, task)
    }

    async fn send(client: &mut DuplexStream, body: &str) {
        write_frame(client, body.as_bytes(), DEFAULT_MAX_FRAME)
            .await
            .unwrap();
    }

    async fn recv(client: &mut DuplexStream) -> Response {
        let body = read_frame(client, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        Response::decode(&body).unwrap()
    }

    #[tokio::test]
    async fn bad_json_is_answered_and_the_connection_stays_usable() {
        let (mut c, _task) = start(ConnectionLimits::default());
        send(&mut c, "{nope").await;
        let r = recv(&mut c).await;
        assert_eq!(r.error.unwrap().code, ErrorCode::BadRequest);
        send(&mut c, r#"{"request_id":"r1","operation":"warp"}"#).await;
        let r = recv(&mut c).await;
        assert_eq!(r.request_id.as_deref(), Some("r1"));
        assert_eq!(r.error.unwrap().field.as_deref(), Some("operation"));
        send(&mut c, r#"{"v":1,"request_id":"r2","operation":"ping"}"#).await;
        assert!(recv(&mut c).await.success);
    }

    #[tokio::test]
    async fn oversized_frame_gets_too_large_then_close() {
        let (mut c, task) = start(ConnectionLimits {
            max_frame: 100,
            ..ConnectionLimits::default()
        });
        c.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let r = recv(&mut c).await;
        assert_eq!(r.error.unwrap().code, ErrorCode::TooLarge);
        assert_eq!(task.await.unwrap(), ConnectionEnd::TooLarge);
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the error frame");
    }

    #[tokio::test]
    async fn slow_request_does_not_block_later_ones() {
        let (mut c, _task) = start(ConnectionLimits::default());
        send(
            &mut c,
            r#"{"v":1,"request_id":"slow","operation":"get_schema","params":{"name":"s300"}}"#,
        )
        .await;
        send(&mut c, r#"{"v":1,"request_id":"fast","operation":"ping"}"#).await;
        assert_eq!(recv(&mut c).await.request_id.as_deref(), Some("fast"));
        assert_eq!(recv(&mut c).await.request_id.as_deref(), Some("slow"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_slow_peers_are_cut_off() {
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(2),
            ..ConnectionLimits::default()
        };
        let (_c, task) = start(limits);
        assert_eq!(task.await.unwrap(), ConnectionEnd::Idle);

        let (mut c, task) = start(limits);
        c.write_all(&[0, 0]).await.unwrap(); // half a header, then nothing
        assert_eq!(task.await.unwrap(), ConnectionEnd::SlowRead);
    }

    #[tokio::test]
    async fn truncated_frame_ends_the_connection() {
        let (mut c, task) = start(ConnectionLimits::default());
        c.write_all(&50u32.to_be_bytes()).await.unwrap();
        c.write_all(b"{\"request").await.unwrap();
        drop(c);
        assert_eq!(task.await.unwrap(), ConnectionEnd::Truncated);
    }
}
