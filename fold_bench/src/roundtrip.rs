//! Parts 1 and 2: request round trips (daemon, the same daemon with batch verification
//! off, floor, node) and where a proxied request's time goes.
//!
//! The servers run in this process; the load generator ([`crate::worker`]) runs in a child
//! process, so every request crosses between processes as an app's does. Batches of the
//! targets alternate within each round (the order rotates from round to round), and
//! the crypto bound is sampled between rounds, so all of them see the same machine.

use crate::report::{Row, Verdict};
use crate::rt::{self, Servers};
use crate::stats::{num, ratio, thousands, Summary};
use crate::worker::{Command, Reply, Setup, Target, Worker};
use anyhow::{bail, Context as _, Result};
use fold_client::metrics::MetricsSnapshot;
use fold_ipc::server::StatsSnapshot;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Apps (connections) in the concurrent batches.
    pub apps: usize,
    /// Requests in flight per connection.
    pub in_flight: usize,
    /// Records in the table read.
    pub records: usize,
    /// Rounds; each has one batch of every kind for every target.
    pub rounds: usize,
    /// Sequential requests per batch.
    pub seq: usize,
    /// Concurrent batches: requests per connection.
    pub per_conn: usize,
    /// Crypto bound: time per sample.
    pub crypto_slice: Duration,
}

/// Where the load generator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A child process (apps are other processes).
    Process,
    /// A thread of the bench process.
    Thread,
}

/// A connection to the load generator.
enum Link {
    Process {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
    Thread {
        tx: std::sync::mpsc::Sender<Command>,
        rx: std::sync::mpsc::Receiver<Reply>,
    },
}

impl Link {
    fn start(placement: Placement, setup: &Setup) -> Result<Link> {
        let mut link = match placement {
            Placement::Process => {
                let mut child = std::process::Command::new(std::env::current_exe()?)
                    .arg("__worker")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("cannot start the worker process")?;
                let stdin = child.stdin.take().context("no stdin")?;
                let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
                Link::Process {
                    child,
                    stdin,
                    stdout,
                }
            }
            Placement::Thread => {
                let (tx, commands) = std::sync::mpsc::channel::<Command>();
                let (replies, rx) = std::sync::mpsc::channel::<Reply>();
                std::thread::spawn(move || {
                    let mut worker: Option<Worker> = None;
                    for command in commands {
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
                            (_, None) => Reply::Failed("no setup".into()),
                        };
                        if replies.send(reply).is_err() {
                            break;
                        }
                    }
                });
                Link::Thread { tx, rx }
            }
        };
        match link.call(&Command::Setup(Box::new(setup.clone())))? {
            Reply::Ready => Ok(link),
            other => bail!("worker setup: {other:?}"),
        }
    }

    fn call(&mut self, command: &Command) -> Result<Reply> {
        let reply = match self {
            Link::Process { stdin, stdout, .. } => {
                serde_json::to_writer(&mut *stdin, command)?;
                stdin.write_all(b"\n")?;
                stdin.flush()?;
                let mut line = String::new();
                if stdout.read_line(&mut line)? == 0 {
                    bail!("the worker process exited");
                }
                serde_json::from_str(&line)?
            }
            Link::Thread { tx, rx } => {
                tx.send(command.clone())
                    .map_err(|_| anyhow::anyhow!("worker thread gone"))?;
                rx.recv()
                    .map_err(|_| anyhow::anyhow!("worker thread gone"))?
            }
        };
        if let Reply::Failed(e) = &reply {
            bail!("worker: {e}");
        }
        Ok(reply)
    }

    fn quit(mut self) {
        match &mut self {
            Link::Process { child, stdin, .. } => {
                let _ = serde_json::to_writer(&mut *stdin, &Command::Quit);
                let _ = stdin.write_all(b"\n");
                let _ = stdin.flush();
                let _ = child.wait();
            }
            Link::Thread { tx, .. } => {
                let _ = tx.send(Command::Quit);
            }
        }
    }

    fn seq(&mut self, target: Target, n: usize) -> Result<Vec<u64>> {
        match self.call(&Command::Seq { target, n })? {
            Reply::Latencies(v) => Ok(v),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    fn conc(&mut self, target: Target, sizes: &Sizes) -> Result<(u64, u64)> {
        let command = Command::Conc {
            target,
            connections: sizes.apps,
            in_flight: sizes.in_flight,
            per_conn: sizes.per_conn,
        };
        match self.call(&command)? {
            Reply::Throughput {
                requests,
                elapsed_ns,
            } => Ok((requests, elapsed_ns)),
            other => bail!("unexpected reply {other:?}"),
        }
    }
}

/// Server-side counters over some batches: the daemon's, and the floor's.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    daemon: MetricsSnapshot,
    floor: StatsSnapshot,
    floor_verify_ns: u64,
}

impl Counters {
    fn read(servers: &Servers) -> Counters {
        let (floor, floor_verify_ns) = servers.floor.snapshot();
        Counters {
            daemon: servers.shared.metrics.snapshot(),
            floor,
            floor_verify_ns,
        }
    }

    /// Adds what `variant`'s batch did (the daemon's counters for the daemon's default
    /// variant, the floor's for the floor).
    fn add_since(&mut self, variant: Variant, now: &Counters, before: &Counters) {
        match variant {
            Variant::Proxied => {
                let d = now.daemon.since(&before.daemon);
                let a = &mut self.daemon;
                a.requests += d.requests;
                a.auth_ns += d.auth_ns;
                a.policy_ns += d.policy_ns;
                a.node_ns += d.node_ns;
                a.audit_ns += d.audit_ns;
                a.batches += d.batches;
                a.signatures += d.signatures;
                add_transport(&mut a.transport, &d.transport);
            }
            Variant::Floor => {
                add_transport(&mut self.floor, &now.floor.since(&before.floor));
                self.floor_verify_ns += now.floor_verify_ns - before.floor_verify_ns;
            }
            Variant::Unbatched | Variant::Direct | Variant::Session | Variant::Grpc => {}
        }
    }
}

fn add_transport(into: &mut StatsSnapshot, d: &StatsSnapshot) {
    into.frames += d.frames;
    into.read_ns += d.read_ns;
    into.decode_ns += d.decode_ns;
    into.dispatch_ns += d.dispatch_ns;
    into.handle_ns += d.handle_ns;
    into.encode_ns += d.encode_ns;
    into.queue_ns += d.queue_ns;
    into.write_ns += d.write_ns;
    into.writes += d.writes;
}

/// What a batch is sent to: a target, and for the daemon whether signatures are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    /// The daemon as configured by default (batch verification on).
    Proxied,
    /// The same daemon configured with batch verification off (a second daemon).
    Unbatched,
    /// The floor.
    Floor,
    /// The node's own socket.
    Direct,
    /// Sessions (protocol v2) through the same daemon as `Proxied`.
    Session,
    /// Unauthenticated gRPC unary echo (tonic), sequential only.
    Grpc,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::Proxied,
        Variant::Floor,
        Variant::Unbatched,
        Variant::Direct,
        Variant::Session,
        Variant::Grpc,
    ];

    fn target(self) -> Target {
        match self {
            Variant::Proxied => Target::Proxied,
            Variant::Unbatched => Target::Unbatched,
            Variant::Floor => Target::Floor,
            Variant::Direct => Target::Direct,
            Variant::Session => Target::Session,
            Variant::Grpc => Target::Grpc,
        }
    }
}

/// Everything measured in one placement.
#[derive(Debug, Default)]
struct Measured {
    seq: HashMap<Variant, Vec<u64>>,
    seq_round_p50: HashMap<Variant, Vec<f64>>,
    conc_round_rps: HashMap<Variant, Vec<f64>>,
    conc_total: HashMap<Variant, (u64, u64)>,
    verify_rates: Vec<f64>,
    seq_counters: Counters,
    conc_counters: Counters,
    /// Heap allocations and bytes per sequential request in the server process.
    allocs: HashMap<Variant, (f64, f64)>,
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    servers: &Servers,
    placement: Placement,
    sizes: &Sizes,
    concurrent: bool,
) -> Result<Measured> {
    let mut link = Link::start(placement, &servers.setup)?;
    let mut m = Measured::default();
    // Warm-up: connections, caches, the node's read connections, the allocator.
    for target in Target::ALL {
        link.seq(target, sizes.seq.min(100))?;
        if concurrent && target != Target::Grpc {
            link.conc(target, sizes)?;
        }
    }
    for round in 0..sizes.rounds {
        let mut order = Variant::ALL.to_vec();
        order.rotate_left(round % Variant::ALL.len());
        for &variant in &order {
            let before = Counters::read(servers);
            let times = link.seq(variant.target(), sizes.seq)?;
            let after = Counters::read(servers);
            m.seq_counters.add_since(variant, &after, &before);
            m.seq_round_p50
                .entry(variant)
                .or_default()
                .push(Summary::of_ns(&times).p50);
            m.seq.entry(variant).or_default().extend(times);
        }
        if concurrent {
            for &variant in order.iter().filter(|v| **v != Variant::Grpc) {
                let before = Counters::read(servers);
                let (requests, ns) = link.conc(variant.target(), sizes)?;
                let after = Counters::read(servers);
                m.conc_counters.add_since(variant, &after, &before);
                let total = m.conc_total.entry(variant).or_insert((0, 0));
                total.0 += requests;
                total.1 += ns;
                m.conc_round_rps
                    .entry(variant)
                    .or_default()
                    .push(requests as f64 / (ns as f64 / 1e9));
            }
            // The crypto bound, sampled while the servers are idle, between rounds.
            m.verify_rates.push(rt::verify_rate(sizes.crypto_slice));
        }
        // Keep the daemon's audit writer from lagging into the next round.
        runtime.block_on(servers.shared.audit.flush());
        runtime.block_on(servers.unbatched.audit.flush());
    }
    if placement == Placement::Process {
        // Allocations per request, counted apart from the timed batches.
        let n = sizes.seq.clamp(10, 200);
        let counted = [
            Variant::Proxied,
            Variant::Floor,
            Variant::Direct,
            Variant::Session,
        ];
        for variant in counted {
            let (a0, b0) = crate::alloc_count::read();
            crate::alloc_count::enable(true);
            let run = link.seq(variant.target(), n);
            crate::alloc_count::enable(false);
            run?;
            let (a1, b1) = crate::alloc_count::read();
            m.allocs.insert(
                variant,
                ((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64),
            );
        }
    }
    link.quit();
    Ok(m)
}

/// Cost of one timed stage boundary (a clock read and a relaxed atomic add), ns.
fn instrumentation_cost() -> f64 {
    let counter = AtomicU64::new(0);
    let n = 2_000_000u64;
    let started = Instant::now();
    let mut t = Instant::now();
    for _ in 0..n {
        let now = Instant::now();
        counter.fetch_add(now.duration_since(t).as_nanos() as u64, Ordering::Relaxed);
        t = now;
    }
    std::hint::black_box(counter.load(Ordering::Relaxed));
    started.elapsed().as_nanos() as f64 / n as f64
}

/// Clock reads per proxied request in the counters (transport and daemon stages).
const TIMED_POINTS_PER_REQUEST: f64 = 16.0;

fn mean_us(total_ns: u64, count: u64) -> f64 {
    if count == 0 {
        f64::NAN
    } else {
        total_ns as f64 / count as f64 / 1000.0
    }
}

fn median(v: &[f64]) -> f64 {
    Summary::of(v).p50
}

/// Runs parts 1 and 2 and returns their rows.
///
/// # Errors
///
/// A server or the worker fails.
pub fn run(runtime: &tokio::runtime::Runtime, sizes: &Sizes) -> Result<Vec<Row>> {
    let servers = runtime.block_on(rt::start(sizes.apps, sizes.records))?;
    eprintln!(
        "fold_bench: round trips: {} rounds, {} sequential and {}x{}x{} concurrent requests per target per round",
        sizes.rounds, sizes.seq, sizes.apps, sizes.per_conn, sizes.in_flight
    );
    let measured = measure(runtime, &servers, Placement::Process, sizes, true);
    let side = measured.as_ref().ok().map(|_| {
        let side_sizes = Sizes {
            rounds: sizes.rounds.div_ceil(2),
            ..*sizes
        };
        measure(runtime, &servers, Placement::Thread, &side_sizes, false)
    });
    runtime.block_on(servers.stop());
    let m = measured?;
    let side = side.transpose()?;
    let batch_rate = rt::batch_rate(sizes.crypto_slice * 2);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(rows(&m, side.as_ref(), sizes, cores, batch_rate))
}

fn rows(
    m: &Measured,
    side: Option<&Measured>,
    sizes: &Sizes,
    cores: usize,
    batch_rate: f64,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let seq = |t: Variant| Summary::of_ns(m.seq.get(&t).map_or(&[][..], Vec::as_slice));
    let (proxied, floor, direct) = (
        seq(Variant::Proxied),
        seq(Variant::Floor),
        seq(Variant::Direct),
    );
    let round_ratios = |a, b| round_ratios(m, a, b);
    let pf = proxied.p50 / floor.p50;
    let rr = round_ratios(Variant::Proxied, Variant::Floor);
    rows.push(Row::new(
        "1. point read by id, 1 app sequential: signed, through the daemon (embedded node) vs the floor (framing + signing + `verify_strict`, echo)",
        proxied.latency(),
        format!("floor {}", floor.latency()),
        format!("{} (per round {}–{})", ratio(pf), ratio(rr.min), ratio(rr.max)),
        "≤ 1.25x",
        Verdict::goal(pf <= 1.25),
    ));
    let pd = proxied.p50 / direct.p50;
    let rd = round_ratios(Variant::Proxied, Variant::Direct);
    rows.push(Row::new(
        "1. the same read, through the daemon vs sent straight to the node's socket (unsigned)",
        format!("p50 {} µs", num(proxied.p50)),
        format!("direct {}", direct.latency()),
        format!(
            "{} (per round {}–{})",
            ratio(pd),
            ratio(rd.min),
            ratio(rd.max)
        ),
        "",
        Verdict::Context,
    ));
    if let Some(side) = side {
        let s = |t: Variant| Summary::of_ns(side.seq.get(&t).map_or(&[][..], Vec::as_slice));
        let (p, f, d) = (s(Variant::Proxied), s(Variant::Floor), s(Variant::Direct));
        rows.push(Row::new(
            "1. the same, with the client on a thread of the bench process instead of another process",
            p.latency(),
            format!("floor p50 {} µs; direct p50 {} µs", num(f.p50), num(d.p50)),
            format!("{} floor, {} direct", ratio(p.p50 / f.p50), ratio(p.p50 / d.p50)),
            "",
            Verdict::Context,
        ));
    }
    let rps = |t: Variant| -> (f64, Summary) {
        let (req, ns) = m.conc_total.get(&t).copied().unwrap_or((0, 1));
        (
            req as f64 / (ns as f64 / 1e9),
            Summary::of(m.conc_round_rps.get(&t).map_or(&[][..], Vec::as_slice)),
        )
    };
    let (p_rps, p_rounds) = rps(Variant::Proxied);
    let (f_rps, f_rounds) = rps(Variant::Floor);
    let (d_rps, d_rounds) = rps(Variant::Direct);
    let verify = median(&m.verify_rates);
    let verify_range = Summary::of(&m.verify_rates);
    let bound = verify * cores as f64;
    let shape = format!("{} apps × {} in flight", sizes.apps, sizes.in_flight);
    let rps_text = |x: f64, r: &Summary| {
        format!(
            "{}/s (rounds {}–{})",
            thousands(x.round() as i64),
            thousands(r.min.round() as i64),
            thousands(r.max.round() as i64)
        )
    };
    rows.push(Row::new(
        format!("1. {shape}: signed requests per second through the daemon vs the machine's crypto bound ({cores} cores × single-core `verify_strict` rate)"),
        rps_text(p_rps, &p_rounds),
        format!(
            "bound {}/s ({} × {}/s, samples {}–{})",
            thousands(bound.round() as i64),
            cores,
            thousands(verify.round() as i64),
            thousands(verify_range.min.round() as i64),
            thousands(verify_range.max.round() as i64)
        ),
        ratio(p_rps / bound),
        "≥ 0.6x",
        Verdict::goal(p_rps / bound >= 0.6),
    ));
    rows.push(Row::new(
        format!("1. {shape}: through the daemon vs the floor"),
        format!("{}/s", thousands(p_rps.round() as i64)),
        format!("floor {}", rps_text(f_rps, &f_rounds)),
        ratio(p_rps / f_rps),
        "",
        Verdict::Context,
    ));
    rows.push(Row::new(
        format!("1. {shape}: through the daemon vs straight to the node (unsigned)"),
        format!("{}/s", thousands(p_rps.round() as i64)),
        format!("direct {}", rps_text(d_rps, &d_rounds)),
        ratio(p_rps / d_rps),
        "",
        Verdict::Context,
    ));
    rows.push(Row::new(
        "1. crypto, one core: `verify_strict` vs batch verification (batches of 64)",
        format!("{}/s", thousands(verify.round() as i64)),
        format!("batch {}/s", thousands(batch_rate.round() as i64)),
        ratio(batch_rate / verify),
        "",
        Verdict::Context,
    ));
    let unbatched = seq(Variant::Unbatched);
    let (u_rps, u_rounds) = rps(Variant::Unbatched);
    rows.push(Row::new(
        "1. batch verification: the daemon as shipped (on) vs the same daemon with it off (`verify_strict` per request), sequential p50 and requests/s",
        format!("p50 {} µs; {}/s", num(proxied.p50), thousands(p_rps.round() as i64)),
        format!(
            "off: p50 {} µs; {}",
            num(unbatched.p50),
            rps_text(u_rps, &u_rounds)
        ),
        format!(
            "{} p50, {} requests/s",
            ratio(proxied.p50 / unbatched.p50),
            ratio(p_rps / u_rps)
        ),
        "p50 not worse; more requests/s",
        Verdict::Context,
    ));
    rows.extend(session_rows(m, &shape, (&seq, &rps)));
    rows.extend(stage_rows(m, &proxied));
    rows
}

/// The ratio of `a`'s sequential p50 to `b`'s, round by round.
fn round_ratios(m: &Measured, a: Variant, b: Variant) -> Summary {
    let (x, y) = (&m.seq_round_p50[&a], &m.seq_round_p50[&b]);
    Summary::of(&x.iter().zip(y).map(|(x, y)| x / y).collect::<Vec<_>>())
}

/// A variant's sequential latencies.
type SeqOf<'a> = &'a dyn Fn(Variant) -> Summary;
/// A variant's concurrent requests per second, and their spread over rounds.
type RpsOf<'a> = &'a dyn Fn(Variant) -> (f64, Summary);

/// Part 1's session rows: protocol v2 beside signed requests and the node's own socket.
fn session_rows(m: &Measured, shape: &str, (seq, rps): (SeqOf<'_>, RpsOf<'_>)) -> Vec<Row> {
    let (session, proxied, direct) = (
        seq(Variant::Session),
        seq(Variant::Proxied),
        seq(Variant::Direct),
    );
    let per_round = |a, b| round_ratios(m, a, b);
    let grpc = seq(Variant::Grpc);
    let grpc_rounds = per_round(Variant::Session, Variant::Grpc);
    let sd = session.p50 / direct.p50;
    let rounds = per_round(Variant::Session, Variant::Direct);
    let (s_rps, s_rounds) = rps(Variant::Session);
    let (d_rps, _) = rps(Variant::Direct);
    let (p_rps, _) = rps(Variant::Proxied);
    vec![
        Row::new(
            "1. point read by id, 1 app sequential: on a session (protocol v2, one signed hello per connection), through the daemon vs sent straight to the node's socket (unsigned)",
            session.latency(),
            format!("direct {}", direct.latency()),
            format!(
                "{} (per round {}–{})",
                ratio(sd),
                ratio(rounds.min),
                ratio(rounds.max)
            ),
            "≤ 1.3x",
            Verdict::goal(sd <= 1.3),
        ),
        Row::new(
            "1. the same read on a session vs signed (v1), through the same daemon",
            format!("p50 {} µs", num(session.p50)),
            format!("signed p50 {} µs", num(proxied.p50)),
            ratio(session.p50 / proxied.p50),
            "",
            Verdict::Context,
        ),
        Row::new(
            "1. the same read on a session vs an unauthenticated gRPC unary echo (tonic, HTTP/2) over a Unix socket, carrying the point read's request bytes",
            format!("p50 {} µs", num(session.p50)),
            format!("gRPC {}", grpc.latency()),
            format!(
                "{} (per round {}–{})",
                ratio(session.p50 / grpc.p50),
                ratio(grpc_rounds.min),
                ratio(grpc_rounds.max)
            ),
            "≤ 1.0x",
            Verdict::goal(session.p50 / grpc.p50 <= 1.0),
        ),
        Row::new(
            format!("1. {shape}: session requests per second through the daemon vs straight to the node (unsigned)"),
            format!(
                "{}/s (rounds {}–{})",
                thousands(s_rps.round() as i64),
                thousands(s_rounds.min.round() as i64),
                thousands(s_rounds.max.round() as i64)
            ),
            format!("direct {}/s; signed {}/s", thousands(d_rps.round() as i64), thousands(p_rps.round() as i64)),
            ratio(s_rps / d_rps),
            "≥ 0.8x",
            Verdict::goal(s_rps / d_rps >= 0.8),
        ),
    ]
}

fn stage_rows(m: &Measured, proxied: &Summary) -> Vec<Row> {
    let s = &m.seq_counters;
    let c = &m.conc_counters;
    let (ds, dc) = (&s.daemon.transport, &c.daemon.transport);
    let (fs, fc) = (&s.floor, &c.floor);
    let per = |ns: u64, n: u64| mean_us(ns, n);
    // (stage, daemon seq, daemon conc, floor seq, floor conc)
    type Stage<'a> = (&'a str, f64, f64, f64, f64);
    let transport = |name, ns: fn(&StatsSnapshot) -> u64| -> Stage<'_> {
        (
            name,
            per(ns(ds), ds.frames),
            per(ns(dc), dc.frames),
            per(ns(fs), fs.frames),
            per(ns(fc), fc.frames),
        )
    };
    let daemon_only = |name, ns: fn(&MetricsSnapshot) -> u64| -> Stage<'_> {
        (
            name,
            per(ns(&s.daemon), s.daemon.requests),
            per(ns(&c.daemon), c.daemon.requests),
            f64::NAN,
            f64::NAN,
        )
    };
    let stages: Vec<Stage<'_>> = vec![
        transport("read (socket `read` calls)", |t| t.read_ns),
        transport("parse (envelope decode)", |t| t.decode_ns),
        transport("dispatch (spawn to the request task running)", |t| {
            t.dispatch_ns
        }),
        (
            "verify (token, `verify_strict`, window, nonce)",
            per(s.daemon.auth_ns, s.daemon.requests),
            per(c.daemon.auth_ns, c.daemon.requests),
            per(s.floor_verify_ns, fs.frames),
            per(c.floor_verify_ns, fc.frames),
        ),
        daemon_only("policy (typed operation, grants)", |d| d.policy_ns),
        daemon_only("node (embedded point read)", |d| d.node_ns),
        daemon_only("audit (line built and queued)", |d| d.audit_ns),
        transport("encode (response envelope)", |t| t.encode_ns),
        transport("queue (hand-off to the connection's writer task)", |t| {
            t.queue_ns
        }),
        transport("write (socket `write`, per request)", |t| t.write_ns),
    ];
    let mut rows = Vec::new();
    let seq_total: f64 = stages.iter().map(|s| s.1).filter(|x| x.is_finite()).sum();
    let floor_total: f64 = stages.iter().map(|s| s.3).filter(|x| x.is_finite()).sum();
    for (name, a, b, f, g) in &stages {
        let alt = if f.is_finite() {
            format!("floor {} µs (conc. {} µs)", num(*f), num(*g))
        } else {
            "floor: none".into()
        };
        rows.push(Row::new(
            format!("2. proxied request, mean per request: {name}"),
            format!("{} µs (conc. {} µs)", num(*a), num(*b)),
            alt,
            "",
            "",
            Verdict::Context,
        ));
    }
    let mean_rtt = |t: Variant| {
        let v = m.seq.get(&t).map_or(&[][..], Vec::as_slice);
        v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1000.0
    };
    rows.push(Row::new(
        "2. sum of the server stages above vs the client's mean round trip (the rest: client signing and decoding, kernel, thread wake-ups)",
        format!(
            "{} µs of {} µs",
            num(seq_total),
            num(mean_rtt(Variant::Proxied))
        ),
        format!(
            "floor {} µs of {} µs",
            num(floor_total),
            num(mean_rtt(Variant::Floor))
        ),
        "",
        "",
        Verdict::Context,
    ));
    let allocs = |v: Variant| m.allocs.get(&v).copied().unwrap_or((f64::NAN, f64::NAN));
    let ((pa, pb), (fa, fb), (da, db), (sa, sb)) = (
        allocs(Variant::Proxied),
        allocs(Variant::Floor),
        allocs(Variant::Direct),
        allocs(Variant::Session),
    );
    rows.push(Row::new(
        "2. heap allocations per request in the server process (sequential; daemon, node and transport)",
        format!(
            "{} ({} bytes); on a session {} ({} bytes)",
            num(pa),
            thousands(pb.round() as i64),
            num(sa),
            thousands(sb.round() as i64)
        ),
        format!(
            "floor {} ({} bytes); direct to the node {} ({} bytes)",
            num(fa),
            thousands(fb.round() as i64),
            num(da),
            thousands(db.round() as i64)
        ),
        "",
        "",
        Verdict::Context,
    ));
    let per_write = |t: &StatsSnapshot| t.frames as f64 / t.writes.max(1) as f64;
    rows.push(Row::new(
        "2. responses per socket `write` (several share one when they finish together)",
        format!(
            "{} (conc. {})",
            num(per_write(&s.daemon.transport)),
            num(per_write(&c.daemon.transport))
        ),
        format!(
            "floor {} (conc. {})",
            num(per_write(&s.floor)),
            num(per_write(&c.floor))
        ),
        "",
        "",
        Verdict::Context,
    ));
    let per_batch = |c: &Counters| c.daemon.signatures as f64 / c.daemon.batches.max(1) as f64;
    rows.push(Row::new(
        "2. signatures per verification (1: `verify_strict` alone; more: one batch)",
        format!("{} (conc. {})", num(per_batch(s)), num(per_batch(c))),
        "floor: 1",
        "",
        "",
        Verdict::Context,
    ));
    let cost = instrumentation_cost();
    let per_request = cost * TIMED_POINTS_PER_REQUEST / 1000.0;
    rows.push(Row::new(
        "2. cost of the stage counters (clock read + atomic add, × 16 per request)",
        format!("{} ns each, {} µs per request", num(cost), num(per_request)),
        "",
        format!("{:.2}% of p50", per_request / proxied.p50 * 100.0),
        "negligible",
        Verdict::goal(per_request / proxied.p50 < 0.01),
    ));
    rows
}
