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
use crate::frame::{build_frame, read_body, read_header, FrameError, DEFAULT_MAX_FRAME};
use crate::message::{Request, Response};
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Answers requests. One handler value serves one connection, so it can carry what the
/// connection established (for the daemon: which app's socket this is).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Never fails: every failure is an error [`Response`].
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;

    /// Answers one request, knowing what the connection had already received behind it
    /// (for example, to wait for company before work that is cheaper in batches). The
    /// server calls this one; the default is [`Self::handle`].
    fn handle_arrived(
        &self,
        request: Request,
        arrival: Arrival,
    ) -> impl Future<Output = Response> + Send {
        let _ = arrival;
        self.handle(request)
    }

    /// Where the connection records its stage timings ([`ServerStats`]); `None` (the
    /// default) records nothing. Asked once per connection.
    fn stats(&self) -> Option<Arc<ServerStats>> {
        None
    }

    /// The request bytes this connection's frames draw on, shared with other connections
    /// (for example, all of one app's); `None` (the default) is no budget beyond the
    /// per-connection caps. Asked once per connection.
    fn byte_budget(&self) -> Option<Arc<ByteBudget>> {
        None
    }

    /// A frame sent before anything is read (a session's challenge,
    /// [`crate::session::Challenge`]); `None` (the default) sends nothing first. Asked once
    /// per connection.
    fn greeting(&self) -> Option<Response> {
        None
    }
}

/// What the connection had seen when it handed a request to the handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrival {
    /// Bytes the connection had already received behind this request's frame (the start
    /// of the peer's next requests); 0 when nothing else had arrived yet.
    pub received_behind: usize,
}

/// Request bytes that may be held at once by the connections sharing the budget. A
/// connection that has read a frame's header waits, before reading its body, until the
/// body fits; the bytes are given back when the request's response is queued. So what
/// its requests hold in memory is bounded by the budget, however many connections and
/// requests in flight the peer opens.
#[derive(Debug)]
pub struct ByteBudget {
    units: Arc<Semaphore>,
    total_units: usize,
}

/// A [`ByteBudget`] counts in units of this many bytes (so a permit count fits a `u32`).
const BUDGET_UNIT: usize = 1024;

impl ByteBudget {
    /// A budget of `bytes` (at least one unit of 1 KiB).
    pub fn new(bytes: u64) -> Arc<ByteBudget> {
        let total_units = usize::try_from(bytes / BUDGET_UNIT as u64)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ByteBudget {
            units: Arc::new(Semaphore::new(total_units)),
            total_units,
        })
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total_units.saturating_mul(BUDGET_UNIT)
    }

    /// Bytes not held by any request now.
    pub fn available(&self) -> usize {
        self.units.available_permits().saturating_mul(BUDGET_UNIT)
    }

    /// Waits until `len` bytes fit (a frame larger than the whole budget takes all of it).
    async fn admit(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let units = len.div_ceil(BUDGET_UNIT).clamp(1, self.total_units);
        Arc::clone(&self.units)
            .acquire_many_owned(u32::try_from(units).unwrap_or(u32::MAX))
            .await
            .ok()
    }
}

/// Time spent in each transport stage of [`serve_connection`], summed over requests, in
/// nanoseconds. Lock-free counters: a handful of clock reads and relaxed atomic adds per
/// request. Read with [`ServerStats::snapshot`]; subtract two snapshots for an interval.
#[derive(Debug, Default)]
pub struct ServerStats {
    frames: AtomicU64,
    read_ns: AtomicU64,
    decode_ns: AtomicU64,
    dispatch_ns: AtomicU64,
    handle_ns: AtomicU64,
    encode_ns: AtomicU64,
    queue_ns: AtomicU64,
    write_ns: AtomicU64,
    writes: AtomicU64,
}

/// A reading of [`ServerStats`]: totals since the connection server started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests decoded and handed to the handler.
    pub frames: u64,
    /// Inside the socket's `read` calls (the system calls, and their `EAGAIN`s).
    pub read_ns: u64,
    /// From the frame being complete to the envelope decoded ([`Request::decode`]).
    pub decode_ns: u64,
    /// From decoded to the handler task running (spawn and scheduling).
    pub dispatch_ns: u64,
    /// Inside [`Handler::handle`].
    pub handle_ns: u64,
    /// Encoding the response.
    pub encode_ns: u64,
    /// From the response being queued to the writer task taking it.
    pub queue_ns: u64,
    /// Writing batches of responses to the socket (`write` and flush).
    pub write_ns: u64,
    /// Batches written (several responses may share one write).
    pub writes: u64,
}

impl StatsSnapshot {
    /// The counts accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            frames: self.frames.saturating_sub(earlier.frames),
            read_ns: self.read_ns.saturating_sub(earlier.read_ns),
            decode_ns: self.decode_ns.saturating_sub(earlier.decode_ns),
            dispatch_ns: self.dispatch_ns.saturating_sub(earlier.dispatch_ns),
            handle_ns: self.handle_ns.saturating_sub(earlier.handle_ns),
            encode_ns: self.encode_ns.saturating_sub(earlier.encode_ns),
            queue_ns: self.queue_ns.saturating_sub(earlier.queue_ns),
            write_ns: self.write_ns.saturating_sub(earlier.write_ns),
            writes: self.writes.saturating_sub(earlier.writes),
        }
    }
}

impl ServerStats {
    /// Requests decoded so far (the first counter of [`ServerStats::snapshot`], alone).
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// The current totals.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            frames: get(&self.frames),
            read_ns: get(&self.read_ns),
            decode_ns: get(&self.decode_ns),
            dispatch_ns: get(&self.dispatch_ns),
            handle_ns: get(&self.handle_ns),
            encode_ns: get(&self.encode_ns),
            queue_ns: get(&self.queue_ns),
            write_ns: get(&self.write_ns),
            writes: get(&self.writes),
        }
    }
}

/// Adds the time since `since` to `counter`.
fn add_elapsed(counter: &AtomicU64, since: Instant) -> Instant {
    let now = Instant::now();
    let ns = u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Ordering::Relaxed);
    now
}

/// The socket's read half, timing each read (the `read` system calls) when stats are kept.
struct TimedRead<R> {
    inner: R,
    stats: Option<Arc<ServerStats>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for TimedRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let Some(stats) = self.stats.clone() else {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        };
        let started = Instant::now();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        add_elapsed(&stats.read_ns, started);
        result
    }
}

/// A response on its way to the writer task, with when it was queued (when timed).
struct Outgoing {
    /// The whole frame, header included.
    frame: Vec<u8>,
    queued: Option<Instant>,
    /// The request's share of the [`ByteBudget`], given back when this is dropped (once
    /// the response is written).
    _held: Option<OwnedSemaphorePermit>,
}

impl Outgoing {
    fn untimed(response: &Response, max_frame: usize) -> Outgoing {
        Outgoing {
            frame: encode_capped(response, max_frame),
            queued: None,
            _held: None,
        }
    }
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
    let stats = handler.stats();
    let budget = handler.byte_budget();
    let mut reader = BufReader::new(TimedRead {
        inner: read_half,
        stats: stats.clone(),
    });
    let (tx, rx) = mpsc::channel::<Outgoing>(limits.max_in_flight.max(1) * 2);
    // Requests being answered whose responses are not queued yet: the writer waits a
    // moment for them when there are some (see `write_responses`).
    let answering = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_responses(
        write_half,
        rx,
        limits,
        stats.clone(),
        Arc::clone(&answering),
    ));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    if let Some(greeting) = handler.greeting() {
        // The channel is empty: this cannot wait.
        let _ = tx
            .send(Outgoing::untimed(&greeting, limits.max_frame))
            .await;
    }

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
        // A frame must arrive whole within the read timeout of its first byte, waiting for
        // the byte budget included: a peer whose frames wait behind its own others is cut
        // off like a slow one, and frees its connection.
        let deadline = tokio::time::Instant::now() + limits.read_timeout;
        let read = async {
            let Some(len) = read_header(&mut reader, limits.max_frame).await? else {
                return Ok(None);
            };
            let admitted = match &budget {
                Some(budget) => match budget.admit(len).await {
                    Some(p) => Some(p),
                    None => return Ok(None),
                },
                None => None,
            };
            // The body stays in the socket until the budget admits it.
            // Copying a large body out of the socket is bulk work (`heavy::io`).
            let body = crate::heavy::io(len, read_body(&mut reader, len)).await?;
            Ok::<_, FrameError>(Some((body, admitted)))
        };
        let frame = tokio::select! {
            () = &mut shutdown => break ConnectionEnd::Shutdown,
            r = tokio::time::timeout_at(deadline, read) => match r {
                Err(_) => break ConnectionEnd::SlowRead,
                Ok(frame) => frame,
            },
        };
        let (body, admitted) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break ConnectionEnd::Closed,
            Err(FrameError::TooLarge { len, max }) => {
                let error = WireError::new(
                    ErrorCode::TooLarge,
                    format!("frame of {len} bytes exceeds the maximum of {max} bytes; closing the connection"),
                );
                let _ = tx
                    .send(Outgoing::untimed(
                        &Response::error(None, error),
                        limits.max_frame,
                    ))
                    .await;
                break ConnectionEnd::TooLarge;
            }
            Err(FrameError::Truncated { .. }) => break ConnectionEnd::Truncated,
            Err(FrameError::Io(e)) => break ConnectionEnd::Io(e.to_string()),
        };
        let read_done = stats.as_ref().map(|_| Instant::now());
        let request = match crate::heavy::run(body.len(), || Request::decode(&body)) {
            Ok(request) => request,
            Err(err) => {
                let answer = Outgoing::untimed(&Response::from(err), limits.max_frame);
                if tx.send(answer).await.is_err() {
                    break ConnectionEnd::Io("writer stopped".into());
                }
                continue;
            }
        };
        drop(body);
        let arrival = Arrival {
            received_behind: reader.buffer().len(),
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break ConnectionEnd::Shutdown;
        };
        let decoded = match (&stats, read_done) {
            (Some(stats), Some(t)) => {
                stats.frames.fetch_add(1, Ordering::Relaxed);
                Some(add_elapsed(&stats.decode_ns, t))
            }
            _ => None,
        };
        let handler = Arc::clone(&handler);
        let tx = tx.clone();
        let max_frame = limits.max_frame;
        let stats = stats.clone();
        let answering = Arc::clone(&answering);
        answering.fetch_add(1, Ordering::Relaxed);
        let mut job = Box::pin(async move {
            // Each stage's clock, when the handler keeps statistics.
            let lap = |counter: fn(&ServerStats) -> &AtomicU64, since: Option<Instant>| {
                Some(add_elapsed(counter(stats.as_deref()?), since?))
            };
            let started = lap(|s| &s.dispatch_ns, decoded);
            let response = handler.handle_arrived(request, arrival).await;
            let handled = lap(|s| &s.handle_ns, started);
            let size = response.result.as_ref().map_or(0, |r| r.get().len());
            let frame = crate::heavy::run(size, || encode_capped(&response, max_frame));
            let queued = lap(|s| &s.encode_ns, handled);
            answering.fetch_sub(1, Ordering::Relaxed);
            let out = Outgoing {
                frame,
                queued,
                _held: admitted,
            };
            let _ = tx.send(out).await;
            drop(permit);
        });
        // Most requests are answered without waiting on anything (an inline read, a
        // signature check): answer those here, saving the hand-off to another task and
        // the wake-up of another worker. One that would wait continues as its own task,
        // so it never holds up the connection's next frames.
        let mut cx = Context::from_waker(Waker::noop());
        if job.as_mut().poll(&mut cx).is_pending() {
            tasks.spawn(job);
        }
    };
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    end
}

/// Encodes a response as a frame; one larger than the peer's frame cap becomes a
/// `too_large` error, so the peer gets an answer instead of a frame it must refuse.
fn encode_capped(response: &Response, max_frame: usize) -> Vec<u8> {
    match build_frame(max_frame, |buf| response.encode_into(buf)) {
        Ok(frame) => frame,
        Err(e) => {
            let error = WireError::new(
                ErrorCode::TooLarge,
                format!("{e}: the response is over the frame cap; ask for fewer rows or fields"),
            );
            let refusal = Response::error(response.request_id.clone(), error);
            // A refusal is a few hundred bytes, far below any cap; u32::MAX never refuses.
            build_frame(u32::MAX as usize, |buf| refusal.encode_into(buf)).unwrap_or_default()
        }
    }
}

/// Writes responses as they come, several per write when they queue up.
///
/// When other requests of the connection are still being answered, the writer yields once
/// before writing, so that those finishing now share the write: one `write` (and one
/// wake-up of the peer) for several responses. A connection with one request in flight
/// never waits.
async fn write_responses<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    limits: ConnectionLimits,
    stats: Option<Arc<ServerStats>>,
    answering: Arc<AtomicUsize>,
) {
    // Frames written together, each from its own buffer (a large one is never copied).
    let mut batch: Vec<Outgoing> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        let took = |out: &Outgoing| {
            if let (Some(stats), Some(queued)) = (&stats, out.queued) {
                add_elapsed(&stats.queue_ns, queued);
            }
        };
        took(&first);
        let mut bytes = first.frame.len();
        batch.push(first);
        let mut yielded = false;
        while bytes < 64 * 1024 {
            match rx.try_recv() {
                Ok(out) => {
                    took(&out);
                    bytes += out.frame.len();
                    batch.push(out);
                }
                Err(_) if !yielded && answering.load(Ordering::Relaxed) > 0 => {
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        let started = stats.as_ref().map(|_| Instant::now());
        let write = crate::heavy::io(bytes, async {
            write_all_frames(&mut writer, &batch).await?;
            writer.flush().await
        });
        let written = tokio::time::timeout(limits.write_timeout, write).await;
        // The budget shares go back with the frames.
        batch.clear();
        match written {
            Ok(Ok(())) => {}
            // The peer is gone or not reading: stop; the reader side ends on its own.
            _ => break,
        }
        if let (Some(stats), Some(started)) = (&stats, started) {
            add_elapsed(&stats.write_ns, started);
            stats.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = writer.shutdown().await;
}

/// Writes every frame of `batch`, as few `writev`s as the socket takes.
async fn write_all_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &[Outgoing],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|o| IoSlice::new(&o.frame)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = writer.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, read_frame, write_frame};
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

    /// [`Echo`] that records what the connection had received behind each request.
    #[derive(Default)]
    struct Arrivals(std::sync::Mutex<Vec<(String, usize)>>);

    impl Handler for Arrivals {
        async fn handle(&self, _: Request) -> Response {
            unreachable!("the server calls handle_arrived")
        }

        async fn handle_arrived(&self, request: Request, arrival: Arrival) -> Response {
            let seen = (request.request_id.clone(), arrival.received_behind);
            self.0.lock().unwrap().push(seen);
            Echo.handle(request).await
        }
    }

    #[tokio::test]
    async fn the_handler_hears_what_arrived_behind_a_request() {
        let handler = Arc::new(Arrivals::default());
        let (mut client, server) = duplex(64 * 1024);
        tokio::spawn(serve_connection(
            server,
            Arc::clone(&handler),
            ConnectionLimits::default(),
            std::future::pending(),
        ));
        let ping = |id: &str| format!(r#"{{"v":1,"request_id":"{id}","operation":"ping"}}"#);
        // Two frames in one write: the first had the second behind it.
        let mut both = encode_frame(ping("a").as_bytes(), DEFAULT_MAX_FRAME).unwrap();
        let second = encode_frame(ping("b").as_bytes(), DEFAULT_MAX_FRAME).unwrap();
        both.extend_from_slice(&second);
        client.write_all(&both).await.unwrap();
        recv(&mut client).await;
        recv(&mut client).await;
        // A frame on its own: nothing behind it.
        send(&mut client, &ping("c")).await;
        recv(&mut client).await;
        let seen = handler.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("a".to_string(), second.len()),
                ("b".to_string(), 0),
                ("c".to_string(), 0)
            ]
        );
    }

    /// [`Echo`] with a byte budget shared by its connections.
    struct Budgeted(Arc<ByteBudget>);

    impl Handler for Budgeted {
        async fn handle(&self, request: Request) -> Response {
            Echo.handle(request).await
        }

        fn byte_budget(&self) -> Option<Arc<ByteBudget>> {
            Some(Arc::clone(&self.0))
        }
    }

    #[tokio::test]
    async fn connections_sharing_a_byte_budget_wait_for_each_other() {
        let budget = ByteBudget::new(8 * 1024);
        let handler = Arc::new(Budgeted(Arc::clone(&budget)));
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (client, server) = duplex(64 * 1024);
            tokio::spawn(serve_connection(
                server,
                Arc::clone(&handler),
                ConnectionLimits::default(),
                std::future::pending(),
            ));
            clients.push(client);
        }
        // 6 KiB each: the second fits only once the first has been answered.
        let padded = |id: &str, name: &str| {
            format!(
                r#"{{"v":1,"request_id":"{id}","operation":"get_schema","params":{{"name":"{name}"}},"pad":"{}"}}"#,
                "x".repeat(6 * 1024)
            )
        };
        let (first, second) = clients.split_at_mut(1);
        let started = Instant::now();
        send(&mut first[0], &padded("a", "s300")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            budget.available() < 4 * 1024,
            "the first request holds its bytes"
        );
        send(&mut second[0], &padded("b", "s0")).await;
        let b = recv(&mut second[0]).await;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "the second request was read before the first gave its bytes back"
        );
        assert!(b.success);
        assert!(recv(&mut first[0]).await.success);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(budget.available(), budget.total(), "every byte given back");
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
    async fn the_in_flight_limit_pauses_reading() {
        let (mut c, _task) = start(ConnectionLimits {
            max_in_flight: 2,
            ..ConnectionLimits::default()
        });
        let started = tokio::time::Instant::now();
        for id in ["a", "b", "c"] {
            send(
                &mut c,
                &format!(
                    r#"{{"v":1,"request_id":"{id}","operation":"get_schema","params":{{"name":"s300"}}}}"#
                ),
            )
            .await;
        }
        send(&mut c, r#"{"v":1,"request_id":"ping","operation":"ping"}"#).await;
        // Two slow requests fill the limit: the third, and the ping behind it, are not even
        // read until one of them finishes.
        let mut answered = Vec::new();
        for _ in 0..4 {
            let id = recv(&mut c).await.request_id.unwrap();
            answered.push((id, started.elapsed().as_millis()));
        }
        let at = |id: &str| answered.iter().find(|(i, _)| i == id).unwrap().1;
        assert!(at("ping") >= 300, "{answered:?}");
        assert!(at("c") >= 600, "{answered:?}");
        assert!(at("a") < 600 && at("b") < 600, "{answered:?}");
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
