//! The load generator: the app side of the round-trip measurements.
//!
//! It runs in a child process (`fold_bench __worker`, the default: apps are other processes)
//! or on a thread of its own in the bench process, and takes [`Command`]s one at a time:
//! JSON lines on stdin, answered with one [`Reply`] line on stdout. It holds one connection
//! per app to each target and keeps them open across commands, so every batch measures
//! requests on warm connections.
//!
//! The three targets get the same client code and the same point read; they differ only in
//! what the request carries (signed for the floor and the daemon, unsigned for the node) and
//! which socket it goes to.

use anyhow::{bail, ensure, Context as _, Result};
use ed25519_dalek::SigningKey;
use fold_ipc::frame::{encode_frame, read_frame, DEFAULT_MAX_FRAME};
use fold_ipc::query::{eq, Query};
use fold_ipc::signing::sign_request;
use fold_ipc::{Operation, Request, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// One app's identity, as the worker needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppKey {
    /// The app's id.
    pub app_id: String,
    /// Its bearer token.
    pub token: String,
    /// Its ed25519 seed, hex.
    pub seed_hex: String,
}

/// Where the targets listen and who the apps are; sent once, first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// The floor server (framing, signing, `verify_strict`, echo); it knows the apps of
    /// `proxied`.
    pub floor_socket: PathBuf,
    /// The node's own socket: `proxied`'s node.
    pub direct_socket: PathBuf,
    /// The daemon as shipped; its apps are also the floor's and the direct target's.
    pub proxied: DaemonSetup,
    /// The same daemon configured with batch verification off.
    pub unbatched: DaemonSetup,
    /// The gRPC echo (`crate::grpc`), unauthenticated.
    pub grpc_socket: PathBuf,
}

/// One daemon's apps and records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonSetup {
    /// Each app's socket on the daemon, in the order of `apps`.
    pub sockets: Vec<PathBuf>,
    /// The apps.
    pub apps: Vec<AppKey>,
    /// Ids of records that exist in its node; point reads pick among them.
    pub ids: Vec<String>,
    /// Apps of the same daemon installed with `--auth session` (the proxied daemon only),
    /// with the same grants: their sockets and keys.
    #[serde(default)]
    pub session_sockets: Vec<PathBuf>,
    /// See `session_sockets`.
    #[serde(default)]
    pub session_apps: Vec<AppKey>,
}

/// Which server a batch talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// Signed requests to the floor server.
    Floor,
    /// Signed requests through the daemon.
    Proxied,
    /// Signed requests through the daemon configured with batch verification off.
    Unbatched,
    /// Unsigned requests straight to the node's socket.
    Direct,
    /// Requests on protocol v2 sessions through the daemon (one signed hello per
    /// connection, then no signature).
    Session,
    /// Unauthenticated gRPC unary calls to an echo (tonic), carrying a point read's bytes;
    /// sequential batches only.
    Grpc,
}

impl Target {
    /// All targets, in table order.
    pub const ALL: [Target; 6] = [
        Target::Proxied,
        Target::Floor,
        Target::Unbatched,
        Target::Direct,
        Target::Session,
        Target::Grpc,
    ];
}

/// One batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// The first message.
    Setup(Box<Setup>),
    /// `n` requests one after another on the first app's connection; each timed from
    /// building (and signing) the request to the decoded response.
    Seq {
        /// The target.
        target: Target,
        /// Requests.
        n: usize,
    },
    /// `per_conn` requests on each of the first `connections` apps' connections with
    /// `in_flight` outstanding on each; requests are built and signed before the clock starts.
    Conc {
        /// The target.
        target: Target,
        /// Connections (one per app).
        connections: usize,
        /// Requests outstanding per connection.
        in_flight: usize,
        /// Requests per connection.
        per_conn: usize,
    },
    /// End the worker.
    Quit,
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Connected to every target.
    Ready,
    /// Round-trip times of a `Seq`, nanoseconds.
    Latencies(Vec<u64>),
    /// A `Conc` batch: requests answered and the wall time they took.
    Throughput {
        /// Requests answered (all successfully).
        requests: u64,
        /// Wall time, nanoseconds.
        elapsed_ns: u64,
    },
    /// Something failed; the bench stops.
    Failed(String),
}

/// The point read every target answers.
pub fn point_read(id: &str) -> Operation {
    Operation::Query(Query::new("item").filter(eq("id", id)).limit(1))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct App {
    app_id: String,
    token: String,
    key: SigningKey,
}

impl App {
    /// The apps of `keys`, their seeds decoded.
    fn all(keys: &[AppKey]) -> Result<Vec<Arc<App>>> {
        keys.iter()
            .map(|a| {
                let mut seed = [0u8; 32];
                hex::decode_to_slice(&a.seed_hex, &mut seed).context("bad seed")?;
                Ok(Arc::new(App {
                    app_id: a.app_id.clone(),
                    token: a.token.clone(),
                    key: SigningKey::from_bytes(&seed),
                }))
            })
            .collect()
    }
}

/// What a connection's requests carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Token, timestamp, nonce, signature (v1).
    Signed,
    /// Nothing: the node's own socket.
    Unsigned,
    /// Nothing but `v: 2`: the connection's session stands for the rest.
    Session,
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    app: Arc<App>,
    mode: Mode,
    next: u64,
}

impl Conn {
    async fn open(path: &PathBuf, app: Arc<App>, mode: Mode) -> Result<Conn> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("cannot connect to {}", path.display()))?;
        let (read, writer) = stream.into_split();
        let mut conn = Conn {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer,
            app,
            mode,
            next: 0,
        };
        if mode == Mode::Session {
            conn.hello().await?;
        }
        Ok(conn)
    }

    /// Reads the daemon's challenge and opens the session (`fold_ipc::session`).
    async fn hello(&mut self) -> Result<()> {
        use fold_ipc::session::{self, Challenge, HelloFields, HelloParams, HELLO};
        let challenge = Response::decode(&self.recv().await?)?;
        let challenge: Challenge = serde_json::from_str(
            challenge
                .result
                .as_deref()
                .context("no session challenge")?
                .get(),
        )?;
        let client_nonce = format!("{:032x}", rand::random::<u128>());
        let timestamp = now_ms();
        let fields = HelloFields {
            app_id: &self.app.app_id,
            server_nonce: &challenge.nonce,
            client_nonce: &client_nonce,
            timestamp,
        };
        let params = HelloParams {
            server_nonce: challenge.nonce.clone(),
        };
        let hello = Request {
            v: Some(session::VERSION),
            request_id: HELLO.into(),
            app_id: Some(self.app.app_id.clone()),
            token: Some(self.app.token.clone()),
            operation: HELLO.into(),
            params: Some(serde_json::value::to_raw_value(&params)?),
            timestamp: Some(timestamp),
            nonce: Some(client_nonce.clone()),
            signature: Some(session::sign(&self.app.key, &fields)),
            limits: None,
        };
        let frame = encode_frame(&hello.encode(), DEFAULT_MAX_FRAME)?;
        self.writer.write_all(&frame).await?;
        let answer = self.recv().await?;
        ensure!(
            succeeded(&answer),
            "hello refused: {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(())
    }

    /// A complete frame for a point read of `id`: signed (fresh timestamp and nonce) for
    /// the floor and the daemon, unsigned for the node.
    fn frame(&mut self, id: &str) -> Vec<u8> {
        self.next += 1;
        let app_id = (self.mode != Mode::Session).then(|| self.app.app_id.clone());
        let mut request = Request::unsigned(format!("b{}", self.next), app_id, &point_read(id));
        match self.mode {
            Mode::Signed => {
                request.token = Some(self.app.token.clone());
                request.timestamp = Some(now_ms());
                request.nonce = Some(format!("{:032x}", rand::random::<u128>()));
                // Every signed field is set just above.
                let _ = sign_request(&mut request, &self.app.key);
            }
            Mode::Session => request.v = Some(fold_ipc::session::VERSION),
            Mode::Unsigned => {}
        }
        encode_frame(&request.encode(), DEFAULT_MAX_FRAME).unwrap_or_default()
    }

    async fn recv(&mut self) -> Result<Vec<u8>> {
        match read_frame(&mut self.reader, DEFAULT_MAX_FRAME).await? {
            Some(body) => Ok(body),
            None => bail!("the server closed the connection"),
        }
    }

    /// Whether a whole frame is already buffered (so reading it will not wait).
    fn frame_buffered(&self) -> bool {
        let buf = self.reader.buffer();
        buf.len() >= 4
            && buf.len() >= 4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
    }
}

/// A response the target answered with success (cheap check: the load generator shares
/// the CPUs with the servers).
fn succeeded(body: &[u8]) -> bool {
    body.windows(15)
        .take(200)
        .any(|w| w == b"\"success\":true,")
}

/// The worker's state: its runtime and its connections.
pub struct Worker {
    runtime: tokio::runtime::Runtime,
    conns: Vec<(Target, Vec<Conn>)>,
    /// The gRPC echo's client.
    grpc: crate::grpc::EchoClient,
    /// Record ids of the proxied daemon's node (also the direct target's).
    ids: Vec<String>,
    /// Record ids of the unbatched daemon's node.
    unbatched_ids: Vec<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Connects to every target (one connection per app each).
    ///
    /// # Errors
    ///
    /// A socket cannot be reached or a key is malformed.
    pub fn connect(setup: &Setup) -> Result<Worker> {
        // One thread, like a small app: the load generator competes with the servers for
        // the same CPUs, so it stays as cheap as it can.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let proxied = App::all(&setup.proxied.apps)?;
        let unbatched = App::all(&setup.unbatched.apps)?;
        let sessions = App::all(&setup.proxied.session_apps)?;
        let conns = runtime.block_on(async {
            let mut all = Vec::new();
            for target in Target::ALL {
                let apps = match target {
                    Target::Unbatched => &unbatched,
                    Target::Session => &sessions,
                    _ => &proxied,
                };
                let mut conns = Vec::new();
                if target == Target::Grpc {
                    // Not a frame connection: `grpc` below.
                    all.push((target, conns));
                    continue;
                }
                for (i, app) in apps.iter().enumerate() {
                    let (path, mode) = match target {
                        Target::Floor => (&setup.floor_socket, Mode::Signed),
                        Target::Direct => (&setup.direct_socket, Mode::Unsigned),
                        Target::Proxied => (&setup.proxied.sockets[i], Mode::Signed),
                        Target::Unbatched => (&setup.unbatched.sockets[i], Mode::Signed),
                        Target::Session => (&setup.proxied.session_sockets[i], Mode::Session),
                        Target::Grpc => unreachable!("skipped above"),
                    };
                    conns.push(Conn::open(path, Arc::clone(app), mode).await?);
                }
                all.push((target, conns));
            }
            anyhow::Ok(all)
        })?;
        let grpc = runtime.block_on(crate::grpc::EchoClient::connect(setup.grpc_socket.clone()))?;
        Ok(Worker {
            runtime,
            conns,
            grpc,
            ids: setup.proxied.ids.clone(),
            unbatched_ids: setup.unbatched.ids.clone(),
        })
    }

    /// A random existing record id for `target`.
    fn pick(&self, target: Target) -> &str {
        let ids = match target {
            Target::Unbatched => &self.unbatched_ids,
            _ => &self.ids,
        };
        &ids[rand::thread_rng().gen_range(0..ids.len())]
    }

    fn take(&mut self, target: Target) -> Vec<Conn> {
        self.conns
            .iter_mut()
            .find(|(t, _)| *t == target)
            .map(|(_, c)| std::mem::take(c))
            .unwrap_or_default()
    }

    fn put(&mut self, target: Target, conns: Vec<Conn>) {
        if let Some((_, slot)) = self.conns.iter_mut().find(|(t, _)| *t == target) {
            *slot = conns;
        }
    }

    /// Runs one command.
    pub fn run(&mut self, command: &Command) -> Reply {
        let result = match command {
            Command::Setup(_) => Ok(Reply::Ready),
            Command::Quit => Ok(Reply::Ready),
            Command::Seq { target, n } => self.seq(*target, *n),
            Command::Conc {
                target,
                connections,
                in_flight,
                per_conn,
            } => self.conc(*target, *connections, *in_flight, *per_conn),
        };
        result.unwrap_or_else(|e| Reply::Failed(format!("{e:#}")))
    }

    fn seq(&mut self, target: Target, n: usize) -> Result<Reply> {
        if target == Target::Grpc {
            return self.grpc_seq(n);
        }
        let ids: Vec<String> = (0..n).map(|_| self.pick(target).to_string()).collect();
        let mut conns = self.take(target);
        let result = self.runtime.block_on(async {
            let conn = conns.first_mut().context("no connection")?;
            let mut times = Vec::with_capacity(n);
            for id in &ids {
                let started = Instant::now();
                let frame = conn.frame(id);
                conn.writer.write_all(&frame).await?;
                let body = conn.recv().await?;
                let response = Response::decode(&body)?;
                ensure!(response.success, "request failed: {:?}", response.error);
                times.push(started.elapsed().as_nanos() as u64);
            }
            Ok(times)
        });
        self.put(target, conns);
        Ok(Reply::Latencies(result?))
    }

    /// `n` gRPC echoes one after another, each carrying a point read's request bytes.
    fn grpc_seq(&mut self, n: usize) -> Result<Reply> {
        let id = self.pick(Target::Proxied).to_string();
        let message = bytes::Bytes::from(
            Request::unsigned("b1", Some("app_0123456789ab".to_string()), &point_read(&id))
                .encode(),
        );
        let mut client = self.grpc.clone();
        let times = self.runtime.block_on(async {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let echoed = client.echo(message.clone()).await?;
                ensure!(
                    echoed.len() == message.len(),
                    "the echo changed the message"
                );
                times.push(started.elapsed().as_nanos() as u64);
            }
            anyhow::Ok(times)
        })?;
        Ok(Reply::Latencies(times))
    }

    fn conc(
        &mut self,
        target: Target,
        connections: usize,
        in_flight: usize,
        per_conn: usize,
    ) -> Result<Reply> {
        let mut conns = self.take(target);
        let rest = conns.split_off(connections.min(conns.len()));
        // Build and sign every request first: the clock measures the server, not the
        // load generator's signing.
        let mut work = Vec::new();
        for mut conn in conns {
            let frames: Vec<Vec<u8>> = (0..per_conn)
                .map(|_| {
                    let id = self.pick(target).to_string();
                    conn.frame(&id)
                })
                .collect();
            work.push((conn, frames));
        }
        let in_flight = in_flight.max(1);
        let (result, conns) = self.runtime.block_on(async {
            let started = Instant::now();
            let tasks: Vec<_> = work
                .into_iter()
                .map(|(conn, frames)| tokio::spawn(pipeline(conn, frames, in_flight)))
                .collect();
            let mut conns = Vec::new();
            let mut failure = None;
            let mut requests = 0u64;
            for task in tasks {
                match task.await {
                    Ok((conn, Ok(n))) => {
                        requests += n;
                        conns.push(conn);
                    }
                    Ok((conn, Err(e))) => {
                        conns.push(conn);
                        failure.get_or_insert(e);
                    }
                    Err(e) => {
                        failure.get_or_insert(anyhow::anyhow!("worker task failed: {e}"));
                    }
                }
            }
            let elapsed_ns = started.elapsed().as_nanos() as u64;
            let result = match failure {
                Some(e) => Err(e),
                None => Ok(Reply::Throughput {
                    requests,
                    elapsed_ns,
                }),
            };
            (result, conns)
        });
        let mut conns = conns;
        conns.extend(rest);
        self.put(target, conns);
        result
    }
}

/// Sends `frames` on `conn` keeping `in_flight` outstanding; several frames share a write
/// when several responses arrived together.
async fn pipeline(mut conn: Conn, frames: Vec<Vec<u8>>, in_flight: usize) -> (Conn, Result<u64>) {
    let total = frames.len();
    let run = async {
        let mut out = Vec::with_capacity(in_flight * 600);
        let mut sent = 0;
        let mut got = 0;
        let first = in_flight.min(total);
        for f in &frames[..first] {
            out.extend_from_slice(f);
        }
        conn.writer.write_all(&out).await?;
        sent += first;
        while got < total {
            let mut answered = 0;
            loop {
                let body = conn.recv().await?;
                ensure!(
                    succeeded(&body),
                    "request failed: {}",
                    String::from_utf8_lossy(&body)
                );
                got += 1;
                answered += 1;
                if got == total || !conn.frame_buffered() {
                    break;
                }
            }
            let more = answered.min(total - sent);
            if more > 0 {
                out.clear();
                for f in &frames[sent..sent + more] {
                    out.extend_from_slice(f);
                }
                conn.writer.write_all(&out).await?;
                sent += more;
            }
        }
        Ok(total as u64)
    };
    let result = run.await;
    (conn, result)
}

/// The child-process loop: a [`Command::Setup`] line, then commands until `Quit` or EOF.
///
/// # Errors
///
/// Stdin or stdout fails, or the setup cannot connect.
pub fn serve_stdio() -> Result<()> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut worker: Option<Worker> = None;
    for line in stdin.lock().lines() {
        let command: Command = serde_json::from_str(&line?)?;
        let reply = match (&command, worker.as_mut()) {
            (Command::Quit, _) => break,
            (Command::Setup(setup), _) => match Worker::connect(setup) {
                Ok(w) => {
                    worker = Some(w);
                    Reply::Ready
                }
                Err(e) => Reply::Failed(format!("{e:#}")),
            },
            (_, Some(w)) => w.run(&command),
            (_, None) => Reply::Failed("no setup yet".into()),
        };
        serde_json::to_writer(&mut stdout, &reply)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    Ok(())
}
