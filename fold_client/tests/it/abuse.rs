//! Protocol abuse against a running daemon, from the host: length prefixes from 0 to 4 GiB,
//! frames cut mid-way, peers that trickle bytes or never read, 2,000 connections on one
//! socket, invalid UTF-8, deeply nested JSON, huge strings, and wrong types in every
//! envelope and params field.
//!
//! Each abuse must get an error frame or a clean close; the daemon's memory must stay
//! bounded (measured on a daemon running as a child process); and another app, served by
//! the same daemon, must keep getting answers throughout.

use crate::faults::ChildDaemon;
use crate::support::{start_daemon, Conn, TIMEOUT};
use fold_ipc::frame::{read_frame, DEFAULT_MAX_FRAME};
use fold_ipc::signing::sign_request;
use fold_ipc::{Credentials, ErrorCode, Operation, Request, Response};
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A raw connection: arbitrary bytes out, frames in.
pub(crate) struct Raw {
    stream: UnixStream,
}

impl Raw {
    /// Connects, retrying while the listen backlog is full (a non-blocking connect to a
    /// busy Unix socket fails with `EAGAIN` instead of waiting).
    pub(crate) async fn connect(path: &Path) -> Raw {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => return Raw { stream },
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends `body` as one frame.
    async fn frame(&mut self, body: &[u8]) {
        let mut frame = header(u32::try_from(body.len()).unwrap()).to_vec();
        frame.extend_from_slice(body);
        self.write(&frame).await.unwrap();
    }

    /// The next response; `None` when the daemon closed the connection.
    async fn recv(&mut self) -> Option<Response> {
        let frame = tokio::time::timeout(TIMEOUT, read_frame(&mut self.stream, DEFAULT_MAX_FRAME))
            .await
            .expect("no answer and no close within the timeout");
        match frame {
            Ok(Some(body)) => Some(Response::decode(&body).expect("a response")),
            Ok(None) => None,
            Err(fold_ipc::frame::FrameError::Io(e))
                if e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                None
            }
            Err(e) => panic!("bad frame from the daemon: {e}"),
        }
    }

    /// Sends `body` and returns the answer.
    pub(crate) async fn call(&mut self, body: &[u8]) -> Response {
        self.frame(body).await;
        self.recv()
            .await
            .expect("the daemon closed instead of answering")
    }

    /// Expects the daemon to close the connection within `within`, sending nothing more.
    /// Returns how long that took.
    async fn expect_close(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(within, self.stream.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("still open after {within:?}"));
        match read {
            Ok(_) => assert!(
                rest.is_empty(),
                "{} unexpected bytes before the close",
                rest.len()
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        started.elapsed()
    }
}

fn header(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A signed request for `operation` with `params` as the exact params text.
pub(crate) fn signed_raw(creds: &Credentials, operation: &str, params: Option<&str>) -> Request {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut request = Request {
        v: Some(1),
        request_id: format!("a{n}"),
        app_id: Some(creds.app_id.clone()),
        token: Some(creds.token.clone()),
        operation: operation.to_string(),
        params: params.map(|p| RawValue::from_string(p.to_string()).expect("params must be JSON")),
        timestamp: Some(crate::support::now_ms()),
        nonce: Some(format!("{n:016x}{:016x}", rand::random::<u64>())),
        signature: None,
        limits: None,
    };
    sign_request(&mut request, &creds.signing_key).unwrap();
    request
}

fn signed(creds: &Credentials, op: &Operation) -> Vec<u8> {
    signed_raw(creds, op.name(), op.params_json().as_deref()).encode()
}

fn error_of(r: &Response) -> &fold_ipc::WireError {
    assert!(!r.success, "expected a failure, got {:?}", r.result);
    r.error.as_ref().unwrap()
}

/// Another app, pinging and listing schemas in a loop until told to stop. It must be
/// answered every time, and not much slower than it was alone.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
    alone: Duration,
}

impl Bystander {
    async fn start(socket: PathBuf, creds: Credentials) -> Bystander {
        let conn = Conn::connect(&socket, creds).await;
        // Its median round trip alone, before any abuse starts.
        let mut alone = Vec::new();
        for i in 0..40 {
            let started = Instant::now();
            let op = if i % 2 == 0 {
                Operation::Ping
            } else {
                Operation::ListSchemas
            };
            assert!(conn.call(&op).await.success);
            alone.push(started.elapsed());
        }
        alone.sort();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let op = if i % 2 == 0 {
                    Operation::Ping
                } else {
                    Operation::ListSchemas
                };
                i += 1;
                let started = Instant::now();
                let r = conn.call(&op).await;
                assert!(r.success, "the bystander app was refused: {:?}", r.error);
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        });
        Bystander {
            stop,
            task,
            alone: alone[alone.len() / 2],
        }
    }

    /// Stops it and checks it was served throughout, within a generous factor of its
    /// latency alone (the machine is shared with other tests: the bound is loose on purpose).
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = self.task.await.expect("the bystander app failed");
        assert!(
            latencies.len() >= 5,
            "the bystander was barely served: {latencies:?}"
        );
        latencies.sort();
        let median = latencies[latencies.len() / 2];
        let worst = latencies[latencies.len() - 1];
        let bound = (self.alone * 50).max(Duration::from_millis(100));
        assert!(
            median <= bound,
            "bystander median {median:?} during the abuse, {:?} alone",
            self.alone
        );
        assert!(
            worst < Duration::from_secs(5),
            "bystander worst case {worst:?}"
        );
    }
}

pub(crate) fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

/// One MiB, in the KiB that /proc reports.
pub(crate) const MIB: u64 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefixes_from_zero_to_4_gib_get_an_error_or_a_clean_close() {
    let dir = tempdir("fa");
    let d = ChildDaemon::start(dir.path(), "read_timeout_secs = 2");
    let target = d.install("target", &["*:*"], None);
    let other = d.install("other", &["query:*"], None);
    let sock = d.socket(&target.app_id);
    let bystander = Bystander::start(d.socket(&other.app_id), other).await;
    let (baseline, _) = d.memory_kib();

    // 0: an empty body is not JSON: bad_request, and the connection stays usable.
    let mut c = Raw::connect(&sock).await;
    c.write(&header(0)).await.unwrap();
    let r = c.recv().await.unwrap();
    assert_eq!(error_of(&r).code, ErrorCode::BadRequest);
    assert_eq!(r.request_id, None);
    assert!(c.call(&signed(&target, &Operation::Ping)).await.success);

    // 1: one byte, not JSON either.
    let r = c.call(b"{").await;
    assert_eq!(error_of(&r).code, ErrorCode::BadRequest);
    assert!(c.call(&signed(&target, &Operation::Ping)).await.success);

    // Exactly the cap: read in full and answered on its merits (ping takes no params).
    let mut pad = 0;
    let body = loop {
        let params = format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad));
        let body = signed_raw(&target, "ping", Some(&params)).encode();
        if body.len() == DEFAULT_MAX_FRAME {
            break body;
        }
        pad = pad + DEFAULT_MAX_FRAME - body.len();
    };
    let r = c.call(&body).await;
    assert_eq!(error_of(&r).code, ErrorCode::BadRequest, "{r:?}");
    assert_eq!(error_of(&r).field.as_deref(), Some("params"));
    assert!(
        r.request_id.is_some(),
        "the full frame was read and decoded"
    );
    assert!(c.call(&signed(&target, &Operation::Ping)).await.success);
    drop(c);

    // Over the cap, up to 4 GiB - 1: too_large at once (the body is never awaited), then close.
    for len in [DEFAULT_MAX_FRAME as u32 + 1, 1 << 31, u32::MAX] {
        let mut c = Raw::connect(&sock).await;
        c.write(&header(len)).await.unwrap();
        let r = c.recv().await.expect("a too_large answer");
        let error = error_of(&r);
        assert_eq!(error.code, ErrorCode::TooLarge);
        assert!(
            error.message.contains(&len.to_string()),
            "{}",
            error.message
        );
        assert_eq!(r.request_id, None);
        c.expect_close(TIMEOUT).await;
    }

    // Cut mid-way (in the header, in the body), then the client stops writing: the frame is
    // discarded and the connection closed, without an answer.
    let request = signed(&target, &Operation::Ping);
    let mut whole = header(request.len() as u32).to_vec();
    whole.extend_from_slice(&request);
    for cut in [2, 4, 20, whole.len() - 1] {
        let mut c = Raw::connect(&sock).await;
        c.write(&whole[..cut]).await.unwrap();
        c.stream.shutdown().await.unwrap();
        c.expect_close(TIMEOUT).await;
    }

    let (_, peak) = d.memory_kib();
    assert!(
        peak < baseline + 64 * MIB,
        "peak {peak} KiB against a baseline of {baseline} KiB: 4 GiB frames must not be allocated"
    );

    // Sixty peers each announce the largest frame and send one byte of it: the daemon's
    // memory follows the bytes that arrive, not the bytes announced.
    let (before, _) = d.memory_kib();
    let mut held = Vec::new();
    for _ in 0..60 {
        let mut c = Raw::connect(&sock).await;
        let mut start = header(DEFAULT_MAX_FRAME as u32).to_vec();
        start.push(b'{');
        c.write(&start).await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss, _) = d.memory_kib();
    eprintln!("daemon memory: {before} KiB, then {rss} KiB with 60 frames of 4 MiB announced");
    assert!(
        rss < before + 16 * MIB,
        "{rss} KiB resident with 60 frames of 4 MiB announced, {before} KiB before"
    );
    // The read timeout (2 s) frees every one of them, without an answer.
    for c in &mut held {
        c.expect_close(Duration::from_secs(10)).await;
    }
    drop(held);

    // And the app is served as before.
    let mut c = Raw::connect(&sock).await;
    assert!(c.call(&signed(&target, &Operation::Ping)).await.success);
    bystander.finish().await;
    let (rss, peak) = d.memory_kib();
    eprintln!("daemon memory: baseline {baseline} KiB, now {rss} KiB, peak {peak} KiB");
}

#[tokio::test]
async fn slow_and_idle_peers_are_cut_off_and_free_their_slots() {
    let d =
        start_daemon("idle_timeout_secs = 2\nread_timeout_secs = 1\nmax_connections_per_app = 3")
            .await;
    let app = d.install("slowpoke", &["*:*"], None).await;
    let sock = d.socket(&app.app_id);

    // Three peers send a valid request one byte per second: each is cut off by the read
    // timeout long before its frame could complete, without an answer.
    let request = signed(&app, &Operation::Ping);
    let mut frame = header(request.len() as u32).to_vec();
    frame.extend_from_slice(&request);
    let frame = Arc::new(frame);
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let sock = sock.clone();
            let frame = Arc::clone(&frame);
            tokio::spawn(async move {
                let c = Raw::connect(&sock).await;
                let (mut rd, mut wr) = c.stream.into_split();
                let started = Instant::now();
                let trickle = async {
                    for byte in frame.iter() {
                        if wr.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    std::future::pending::<()>().await;
                };
                let mut buf = Vec::new();
                tokio::select! {
                    () = trickle => unreachable!(),
                    read = tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut buf)) => {
                        let read = read.expect("a slow peer was never cut off");
                        assert!(read.is_ok() || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset));
                        assert!(buf.is_empty(), "a slow peer got an answer");
                    }
                }
                started.elapsed()
            })
        })
        .collect();

    // While the three hold every slot, a fourth connection gets a clear refusal.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut extra = Raw::connect(&sock).await;
    let r = extra.recv().await.expect("a refusal frame");
    assert_eq!(error_of(&r).code, ErrorCode::RateLimited);
    assert!(
        error_of(&r).message.contains("too many connections"),
        "{r:?}"
    );
    extra.expect_close(TIMEOUT).await;

    for task in slow {
        let took = task.await.unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "cut off after {took:?}; the read timeout is 1 s"
        );
    }

    // The slots are free again, once the daemon has let go of them: a slow peer sees its
    // connection closed just before the daemon releases the slot, so a probe waits until
    // a connection is served. (The probe's own slot may still be held below: with it, the
    // two connections make three, the limit.)
    let start = Instant::now();
    loop {
        let mut probe = Raw::connect(&sock).await;
        let request = signed(&app, &Operation::Ping);
        let served = match probe
            .stream
            .write_all(&[header(request.len() as u32).as_slice(), &request].concat())
            .await
        {
            Ok(()) => probe.recv().await.is_some_and(|r| r.success),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the slow peers' slots were never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An idle connection is closed after the idle timeout...
    let connected = Instant::now();
    let mut idle = Raw::connect(&sock).await;
    // ...while one that keeps sending requests outlives it.
    let mut busy = Raw::connect(&sock).await;
    let idle_closed = tokio::spawn(async move {
        idle.expect_close(Duration::from_secs(10)).await;
        connected.elapsed()
    });
    for _ in 0..4 {
        assert!(busy.call(&signed(&app, &Operation::Ping)).await.success);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let took = idle_closed.await.unwrap();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "idle connection closed after {took:?}; the idle timeout is 2 s"
    );
    assert!(
        busy.call(&signed(&app, &Operation::Ping)).await.success,
        "busy connection kept"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_reads_is_dropped_after_the_write_timeout() {
    let d = start_daemon("write_timeout_secs = 1").await;
    // A token-only app: unsigned requests, so the flood costs no signatures.
    let app = d.install("deaf", &["*:*"], Some("token")).await;
    let sock = d.socket(&app.app_id);
    let mut c = Raw::connect(&sock).await;
    let total = 20_000;
    let mut flood = Vec::new();
    for i in 0..total {
        let body = format!(
            r#"{{"request_id":"f{i}","app_id":"{}","token":"{}","operation":"ping"}}"#,
            app.app_id, app.token
        );
        flood.extend_from_slice(&header(body.len() as u32));
        flood.extend_from_slice(body.as_bytes());
    }
    // Write everything without reading a single answer. The daemon stops writing after the
    // write timeout and shuts its side down; it then reads (and drops answers to) the rest.
    tokio::time::timeout(Duration::from_secs(30), c.write(&flood))
        .await
        .expect("the daemon stopped reading for good")
        .unwrap();
    let mut answers = 0;
    while let Some(r) = c.recv().await {
        assert!(r.success);
        answers += 1;
    }
    assert!(
        answers < total,
        "all {total} answers were delivered: no write timeout hit"
    );
    // Another connection of the same app is served meanwhile.
    let mut fresh = Raw::connect(&sock).await;
    let body = format!(
        r#"{{"request_id":"ok","app_id":"{}","token":"{}","operation":"ping"}}"#,
        app.app_id, app.token
    );
    assert!(fresh.call(body.as_bytes()).await.success);
    d.stop().await;
}

fn raise_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_on_one_socket_get_a_clear_refusal_beyond_the_limit() {
    raise_nofile(8192);
    let d = start_daemon("").await;
    let limit = d.config.max_connections_per_app;
    let app = d.install("crowd", &["*:*"], None).await;
    let other = d.install("calm", &["query:*"], None).await;
    let sock = d.socket(&app.app_id);
    let bystander = Bystander::start(d.socket(&other.app_id), other).await;

    let mut conns = Vec::with_capacity(2000);
    for _ in 0..2000 {
        conns.push(Raw::connect(&sock).await);
    }
    let (mut served, mut refused) = (0, 0);
    for c in &mut conns {
        // A refused connection has its refusal waiting already; the ping may not even be
        // accepted by the closed socket, which is fine.
        let _ = c
            .write(&{
                let body = signed(&app, &Operation::Ping);
                let mut f = header(body.len() as u32).to_vec();
                f.extend_from_slice(&body);
                f
            })
            .await;
        let r = c.recv().await.expect("every connection gets an answer");
        if r.success {
            served += 1;
        } else {
            let error = error_of(&r);
            assert_eq!(error.code, ErrorCode::RateLimited, "{error:?}");
            assert!(
                error.message.contains("too many connections"),
                "{}",
                error.message
            );
            assert_eq!(r.request_id, None);
            c.expect_close(TIMEOUT).await;
            refused += 1;
        }
    }
    assert_eq!((served, refused), (limit, 2000 - limit));
    drop(conns);

    // Once the crowd leaves, the app is served again (its slots are released as each
    // connection's task ends).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Raw::connect(&sock).await;
        let _ = c
            .write(&{
                let body = signed(&app, &Operation::Ping);
                let mut f = header(body.len() as u32).to_vec();
                f.extend_from_slice(&body);
                f
            })
            .await;
        let r = c.recv().await.unwrap();
        if r.success {
            break;
        }
        assert!(Instant::now() < deadline, "slots never released: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bystander.finish().await;
    d.stop().await;
}

#[tokio::test]
async fn malformed_bodies_get_bad_request_and_the_connection_survives() {
    let d = start_daemon("").await;
    let app = d.install("garbage", &["*:*"], None).await;
    let mut c = Raw::connect(&d.socket(&app.app_id)).await;
    let deep = 100_000;

    let mut bodies: Vec<(&str, Vec<u8>)> = vec![
        ("whitespace", b"   \n\t ".to_vec()),
        ("array", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("number", b"1".to_vec()),
        ("string", br#""ping""#.to_vec()),
        ("unterminated", b"{".to_vec()),
        (
            "trailing text",
            br#"{"request_id":"r","operation":"ping"}x"#.to_vec(),
        ),
        (
            "two objects",
            br#"{"request_id":"r","operation":"ping"}{}"#.to_vec(),
        ),
        (
            "byte order mark",
            b"\xef\xbb\xbf{\"request_id\":\"r\",\"operation\":\"ping\"}".to_vec(),
        ),
        (
            "invalid utf-8 in a value",
            b"{\"request_id\":\"\xff\",\"operation\":\"ping\"}".to_vec(),
        ),
        (
            "invalid utf-8 in a key",
            b"{\"\xfe\":1,\"request_id\":\"r\",\"operation\":\"ping\"}".to_vec(),
        ),
        (
            "invalid utf-8 in params",
            b"{\"request_id\":\"r\",\"operation\":\"ping\",\"params\":{\"a\":\"\xc3\x28\"}}"
                .to_vec(),
        ),
        (
            "overlong utf-8",
            b"{\"request_id\":\"\xc0\xaf\",\"operation\":\"ping\"}".to_vec(),
        ),
        (
            "utf-8 surrogate",
            b"{\"request_id\":\"\xed\xa0\x80\",\"operation\":\"ping\"}".to_vec(),
        ),
        (
            "escaped lone surrogate",
            br#"{"request_id":"\ud800","operation":"ping"}"#.to_vec(),
        ),
        ("nested arrays", "[".repeat(deep).into_bytes()),
        ("nested objects", r#"{"a":"#.repeat(deep).into_bytes()),
        (
            "nested params, unterminated",
            format!(
                r#"{{"request_id":"r","operation":"ping","params":{}"#,
                "[".repeat(deep)
            )
            .into_bytes(),
        ),
        (
            "huge request_id",
            format!(
                r#"{{"request_id":"{}","operation":"ping"}}"#,
                "r".repeat(DEFAULT_MAX_FRAME - 100)
            )
            .into_bytes(),
        ),
        (
            "huge nonce",
            format!(
                r#"{{"request_id":"r","operation":"ping","nonce":"{}"}}"#,
                "n".repeat(DEFAULT_MAX_FRAME - 100)
            )
            .into_bytes(),
        ),
        (
            "huge operation",
            format!(
                r#"{{"request_id":"r","operation":"{}"}}"#,
                "o".repeat(DEFAULT_MAX_FRAME - 100)
            )
            .into_bytes(),
        ),
    ];
    bodies.push(("empty", Vec::new()));
    for (what, body) in &bodies {
        let r = c.call(body).await;
        assert_eq!(error_of(&r).code, ErrorCode::BadRequest, "{what}: {r:?}");
        assert!(
            c.call(&signed(&app, &Operation::Ping)).await.success,
            "after {what}"
        );
    }

    // Deeply nested values inside params that arrive properly signed: refused by the
    // params parser (bounded recursion), never a crash.
    let nested_array = format!("{}{}", "[".repeat(deep), "]".repeat(deep));
    let nested_not = format!(
        r#"{{"schema":"a","filter":{}{{"op":"eq","field":"f","value":1}}{}}}"#,
        r#"{"op":"not","filter":"#.repeat(deep),
        "}".repeat(deep)
    );
    let nested_value =
        format!(r#"{{"schema":"a","filter":{{"op":"eq","field":"f","value":{nested_array}}}}}"#);
    let nested_data = format!(
        r#"{{"schema":"a","action":"create","data":{{"f":{}1{}}}}}"#,
        r#"{"a":"#.repeat(deep),
        "}".repeat(deep)
    );
    for (what, op, params, field) in [
        (
            "nested ping params",
            "ping",
            nested_array.as_str(),
            "params",
        ),
        (
            "nested query params",
            "query",
            nested_array.as_str(),
            "params",
        ),
        (
            "nested filter",
            "query",
            nested_not.as_str(),
            "params.filter",
        ),
        (
            "nested filter value",
            "query",
            nested_value.as_str(),
            "params.filter",
        ),
        (
            "nested record data",
            "mutation",
            nested_data.as_str(),
            "params.data",
        ),
    ] {
        let r = c.call(&signed_raw(&app, op, Some(params)).encode()).await;
        let error = error_of(&r);
        assert_eq!(error.code, ErrorCode::BadRequest, "{what}: {error:?}");
        let got = error.field.as_deref().unwrap_or_default();
        assert!(
            got.starts_with(field),
            "{what}: field {got:?}, expected {field:?}"
        );
        assert!(
            c.call(&signed(&app, &Operation::Ping)).await.success,
            "after {what}"
        );
    }

    // A huge string in params, up to the frame cap, is stored and read back; two of them
    // would make a response over the cap, which is answered with too_large, not sent.
    let def = r#"{"name":"blob","fields":{"body":{"type":"string"}}}"#;
    assert!(
        c.call(&signed_raw(&app, "create_schema", Some(def)).encode())
            .await
            .success
    );
    let huge = "h".repeat(DEFAULT_MAX_FRAME / 2);
    let data = format!(r#"{{"schema":"blob","action":"create","data":{{"body":"{huge}"}}}}"#);
    for _ in 0..2 {
        let r = c
            .call(&signed_raw(&app, "mutation", Some(&data)).encode())
            .await;
        assert!(r.success, "{:?}", r.error);
    }
    let one = c
        .call(&signed_raw(&app, "query", Some(r#"{"schema":"blob","limit":1}"#)).encode())
        .await;
    assert!(one.success, "{:?}", one.error);
    assert!(one.result.as_ref().unwrap().get().contains(&huge));
    let both = c
        .call(&signed_raw(&app, "query", Some(r#"{"schema":"blob","limit":2}"#)).encode())
        .await;
    assert_eq!(
        error_of(&both).code,
        ErrorCode::TooLarge,
        "the response cap holds"
    );
    assert!(
        both.request_id.is_some(),
        "an answer to that request, not a connection error"
    );
    assert!(c.call(&signed(&app, &Operation::Ping)).await.success);
    d.stop().await;
}

#[tokio::test]
async fn wrong_types_in_every_envelope_field_name_the_field() {
    let d = start_daemon("").await;
    let app = d.install("types", &["*:*"], None).await;
    let mut c = Raw::connect(&d.socket(&app.app_id)).await;
    let long_id = format!("\"{}\"", "i".repeat(129));
    let long_secret = format!("\"{}\"", "s".repeat(257));
    let long_op = format!("\"{}\"", "o".repeat(65));
    let wrong: &[(&str, &[&str])] = &[
        (
            "v",
            &[r#""1""#, "1.0", "-1", "4294967296", "true", "[]", "{}"],
        ),
        ("request_id", &["1", "true", "[]", "{}", r#""""#, &long_id]),
        ("app_id", &["1", "false", "[]", "{}", &long_id]),
        ("token", &["1", "true", r#"["t"]"#, "{}", &long_secret]),
        (
            "operation",
            &["1", "true", r#"["ping"]"#, "{}", "null", &long_op],
        ),
        (
            "timestamp",
            &[r#""now""#, "-1", "1.5", "18446744073709551616", "[]", "{}"],
        ),
        ("nonce", &["1", "true", "[]", "{}", &long_id]),
        ("signature", &["1", "true", "[]", "{}", &long_secret]),
    ];
    let base = [
        ("v", "1".to_string()),
        ("request_id", r#""r1""#.to_string()),
        ("app_id", format!("\"{}\"", app.app_id)),
        ("token", format!("\"{}\"", app.token)),
        ("operation", r#""ping""#.to_string()),
        ("timestamp", crate::support::now_ms().to_string()),
        ("nonce", r#""n1""#.to_string()),
        ("signature", format!("\"{}\"", "0".repeat(128))),
    ];
    for (key, values) in wrong {
        for value in *values {
            let body: Vec<String> = base
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", if k == key { value } else { v.as_str() }))
                .collect();
            let body = format!("{{{}}}", body.join(","));
            let r = c.call(body.as_bytes()).await;
            let error = error_of(&r);
            assert_eq!(
                error.code,
                ErrorCode::BadRequest,
                "{key}={value}: {error:?}"
            );
            assert_eq!(
                error.field.as_deref(),
                Some(*key),
                "{key}={value}: {error:?}"
            );
            if *key != "request_id" {
                assert_eq!(r.request_id.as_deref(), Some("r1"), "{key}={value}");
            }
        }
    }
    // A supported type with an unsupported value is the next check's business.
    let r = c
        .call(br#"{"v":3,"request_id":"r2","operation":"ping"}"#)
        .await;
    assert_eq!(error_of(&r).code, ErrorCode::UnsupportedVersion);
    assert!(
        c.call(&signed(&app, &Operation::Ping)).await.success,
        "the connection survives"
    );
    d.stop().await;
}

#[tokio::test]
async fn wrong_types_in_every_params_field_name_the_field() {
    let d = start_daemon("").await;
    let app = d.install("params", &["*:*"], None).await;
    let mut c = Raw::connect(&d.socket(&app.app_id)).await;
    let cases: &[(&str, &str, &str)] = &[
        ("ping", r#""x""#, "params"),
        ("ping", "[]", "params"),
        ("ping", r#"{"x":1}"#, "params"),
        ("list_schemas", "1", "params"),
        ("list_schemas", "true", "params"),
        ("get_schema", r#""post""#, "params"),
        ("get_schema", "[]", "params"),
        ("get_schema", "{}", "params"),
        ("get_schema", r#"{"name":1}"#, "params.name"),
        ("get_schema", r#"{"name":null}"#, "params.name"),
        ("get_schema", r#"{"name":["post"]}"#, "params.name"),
        ("get_schema", r#"{"name":"../etc"}"#, "params.name"),
        ("get_schema", r#"{"name":"post","x":1}"#, "params.x"),
        ("create_schema", r#"{"name":1,"fields":{}}"#, "params.name"),
        (
            "create_schema",
            r#"{"name":"a","fields":[]}"#,
            "params.fields",
        ),
        (
            "create_schema",
            r#"{"name":"a","fields":{"f":"string"}}"#,
            "params.fields.f",
        ),
        (
            "create_schema",
            r#"{"name":"a","fields":{"f":{"type":1}}}"#,
            "params.fields.f.type",
        ),
        (
            "create_schema",
            r#"{"name":"a","fields":{"f":{"type":"blob"}}}"#,
            "params.fields.f.type",
        ),
        (
            "create_schema",
            r#"{"name":"a","fields":{"f":{"type":"int","required":"yes"}}}"#,
            "params.fields.f.required",
        ),
        (
            "create_schema",
            r#"{"name":"a","fields":{"f":{"type":"int","indexed":1}}}"#,
            "params.fields.f.indexed",
        ),
        (
            "create_schema",
            r#"{"name":"a","fields":{"Bad":{"type":"int"}}}"#,
            "params.fields.Bad",
        ),
        ("delete_schema", r#"{"name":true}"#, "params.name"),
        (
            "delete_schema",
            r#"{"name":"a","force":"yes"}"#,
            "params.force",
        ),
        (
            "delete_schema",
            r#"{"name":"a","force":null}"#,
            "params.force",
        ),
        ("query", r#"{"schema":5}"#, "params.schema"),
        (
            "query",
            r#"{"schema":"a","fields":"title"}"#,
            "params.fields",
        ),
        ("query", r#"{"schema":"a","fields":[1]}"#, "params.fields"),
        ("query", r#"{"schema":"a","filter":"x"}"#, "params.filter"),
        (
            "query",
            r#"{"schema":"a","filter":{"op":5}}"#,
            "params.filter",
        ),
        (
            "query",
            r#"{"schema":"a","filter":{"op":"eq","field":1,"value":1}}"#,
            "params.filter",
        ),
        (
            "query",
            r#"{"schema":"a","filter":{"op":"in","field":"f","values":1}}"#,
            "params.filter",
        ),
        (
            "query",
            r#"{"schema":"a","filter":{"op":"and","filters":{}}}"#,
            "params.filter",
        ),
        (
            "query",
            r#"{"schema":"a","filter":{"op":"not","filter":[]}}"#,
            "params.filter",
        ),
        (
            "query",
            r#"{"schema":"a","filter":{"op":"contains","field":"f","value":1}}"#,
            "params.filter",
        ),
        (
            "query",
            r#"{"schema":"a","order_by":"id"}"#,
            "params.order_by",
        ),
        (
            "query",
            r#"{"schema":"a","order_by":[{"field":1}]}"#,
            "params.order_by",
        ),
        (
            "query",
            r#"{"schema":"a","order_by":[{"field":"id","desc":"yes"}]}"#,
            "params.order_by",
        ),
        ("query", r#"{"schema":"a","limit":"10"}"#, "params.limit"),
        ("query", r#"{"schema":"a","limit":-1}"#, "params.limit"),
        ("query", r#"{"schema":"a","limit":1.5}"#, "params.limit"),
        (
            "query",
            r#"{"schema":"a","limit":4294967296}"#,
            "params.limit",
        ),
        ("query", r#"{"schema":"a","limit":0}"#, "params.limit"),
        ("query", r#"{"schema":"a","offset":-1}"#, "params.offset"),
        ("query", r#"{"schema":"a","offset":"0"}"#, "params.offset"),
        ("query", r#"{"schema":"a","cursor":1}"#, "params.cursor"),
        (
            "mutation",
            r#"{"schema":1,"action":"create","data":{}}"#,
            "params.schema",
        ),
        (
            "mutation",
            r#"{"schema":"a","action":1,"data":{}}"#,
            "params.action",
        ),
        (
            "mutation",
            r#"{"schema":"a","action":"explode","data":{}}"#,
            "params.action",
        ),
        (
            "mutation",
            r#"{"schema":"a","action":"update","id":7,"data":{}}"#,
            "params.id",
        ),
        (
            "mutation",
            r#"{"schema":"a","action":"update","id":"../x","data":{}}"#,
            "params.id",
        ),
        (
            "mutation",
            r#"{"schema":"a","action":"create","data":[]}"#,
            "params.data",
        ),
        (
            "mutation",
            r#"{"schema":"a","action":"create","data":"x"}"#,
            "params.data",
        ),
        ("history", r#"{"schema":"a","id":1}"#, "params.id"),
        ("history", r#"{"schema":[],"id":"x"}"#, "params.schema"),
        ("warp", "{}", "operation"),
    ];
    for (op, params, field) in cases {
        let r = c.call(&signed_raw(&app, op, Some(params)).encode()).await;
        let error = error_of(&r);
        assert_eq!(
            error.code,
            ErrorCode::BadRequest,
            "{op} {params}: {error:?}"
        );
        let got = error.field.as_deref().unwrap_or_default();
        assert!(
            got == *field
                || got.starts_with(&format!("{field}."))
                || got.starts_with(&format!("{field}[")),
            "{op} {params}: field {got:?}, expected {field:?}"
        );
    }

    // Values of the wrong type for the schema's fields are refused by the node.
    let def = r#"{"name":"typed","fields":{"s":{"type":"string"},"i":{"type":"int"},"f":{"type":"float"},"b":{"type":"bool"},"t":{"type":"timestamp"}}}"#;
    assert!(
        c.call(&signed_raw(&app, "create_schema", Some(def)).encode())
            .await
            .success
    );
    for data in [
        r#"{"s":1}"#,
        r#"{"s":{}}"#,
        r#"{"i":"1"}"#,
        r#"{"i":1.5}"#,
        r#"{"i":9223372036854775808}"#,
        r#"{"f":"x"}"#,
        r#"{"f":[]}"#,
        r#"{"b":1}"#,
        r#"{"b":"true"}"#,
        r#"{"t":"now"}"#,
        r#"{"nope":1}"#,
    ] {
        let params = format!(r#"{{"schema":"typed","action":"create","data":{data}}}"#);
        let r = c
            .call(&signed_raw(&app, "mutation", Some(&params)).encode())
            .await;
        assert_eq!(error_of(&r).code, ErrorCode::BadRequest, "{data}: {r:?}");
    }
    for filter in [
        r#"{"op":"eq","field":"i","value":"1"}"#,
        r#"{"op":"lt","field":"s","value":[]}"#,
        r#"{"op":"contains","field":"i","value":"1"}"#,
        r#"{"op":"eq","field":"nope","value":1}"#,
    ] {
        let params = format!(r#"{{"schema":"typed","filter":{filter}}}"#);
        let r = c
            .call(&signed_raw(&app, "query", Some(&params)).encode())
            .await;
        assert_eq!(error_of(&r).code, ErrorCode::BadRequest, "{filter}: {r:?}");
    }
    assert!(
        c.call(&signed(&app, &Operation::Ping)).await.success,
        "the connection survives"
    );
    d.stop().await;
}
