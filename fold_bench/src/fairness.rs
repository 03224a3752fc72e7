//! Part 6: fair sharing (issue 13).
//!
//! 1. A victim app's sequential point reads, alone and then beside a hostile app that runs
//!    every attack at once, each on connections of its own: expensive queries (refused
//!    ones over the filter limits, and ones within them that scan a lot), mutations of
//!    4 MiB frames of zeros, a write flood, and writes up to its storage quota. The daemon
//!    runs in this process (embedded node, as in part 1); the victim and the hostile app
//!    are clients on runtimes of their own, as separate processes would be. The hostile
//!    client's threads are pinned to the last core and the victim's to the first: an
//!    app's container may use one core (`nano_cpus`), and the row measures what the
//!    neighbour does to the victim through FoldClient, not the kernel sharing one core
//!    between the two clients' own code. The daemon's threads may run on every core.
//!    `FOLD_BENCH_ATTACKS=ne,write` runs only the attacks whose labels start so (to see
//!    each attack's part).
//! 2. The daemon's peak memory (VmHWM) per 4 MiB hostile frame, the daemon running as a
//!    process of its own (part 5's [`DaemonProcess`]).

use crate::memory::DaemonProcess;
use crate::report::{Row, Verdict};
use crate::rt::{daemon_config, install};
use crate::stats::{num, ratio, thousands, Summary};
use crate::Options;
use anyhow::{bail, Context as _, Result};
use fold_client::admin::protocol::AppView;
use fold_client::app_limits::NodeLimits;
use fold_ipc::frame::DEFAULT_MAX_FRAME;
use fold_ipc::mux::MuxConnection;
use fold_ipc::operation::Mutation;
use fold_ipc::signing::sign_request;
use fold_ipc::{Credentials, ErrorCode, Operation, Request, Response};
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;

const VICTIM_ROW: &str =
    "6. victim's p99 point read beside a hostile neighbour (every issue-13 attack at once)";
const FRAME_ROW: &str = "6. daemon peak RSS growth per 4 MiB hostile frame (2 million zeros)";

/// How long one call may take before it counts as a transport failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The size of each record the quota filler writes.
const FILL_BYTES: usize = 256 * 1024;

/// The counts of part 6.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Victim point reads per sample (alone, and beside the neighbour).
    reads: usize,
    /// Victim reads before measuring (connection and caches warm).
    warmup: usize,
    /// Records the scanning queries run over.
    scan_records: usize,
    /// Every app's storage quota, bytes (the hostile app's seeded records take well under
    /// half of it).
    quota_bytes: u64,
    /// 4 MiB frames sent for the memory row.
    frames: usize,
    /// How long the attack may run before the victim's sample, waiting for the quota to
    /// refuse a write.
    attack_warmup: Duration,
}

/// Runs part 6.
pub fn run(runtime: &Runtime, o: &Options) -> Vec<Row> {
    let sizes = if o.smoke {
        Sizes {
            reads: 50,
            warmup: 10,
            scan_records: 100,
            quota_bytes: 1 << 20,
            frames: 2,
            attack_warmup: Duration::from_millis(500),
        }
    } else {
        Sizes {
            reads: 10_000,
            warmup: 200,
            scan_records: 3000,
            quota_bytes: 8 << 20,
            frames: 8,
            attack_warmup: Duration::from_secs(10),
        }
    };
    eprintln!(
        "fold_bench: fair: {} victim reads, {} scanned records, {} frames",
        sizes.reads, sizes.scan_records, sizes.frames
    );
    let victim =
        victim_row(runtime, &sizes).unwrap_or_else(|e| Row::missing(VICTIM_ROW, format!("{e:#}")));
    let frames =
        frame_row(runtime, o, &sizes).unwrap_or_else(|e| Row::missing(FRAME_ROW, format!("{e:#}")));
    vec![victim, frames]
}

static NEXT: AtomicU64 = AtomicU64::new(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One app's connection to its socket.
struct Conn {
    mux: MuxConnection,
    creds: Credentials,
}

impl Conn {
    /// Connects to the app socket in `view` (an installed app's admin view). Must run on
    /// the runtime that will drive the connection.
    async fn open(view: &AppView, creds: &Credentials) -> Result<Conn> {
        let socket = view
            .socket
            .to_str()
            .context("the app's socket path is not UTF-8")?;
        Conn::open_socket(socket, creds).await
    }

    /// Connects to `socket` as the app of `creds`.
    async fn open_socket(socket: &str, creds: &Credentials) -> Result<Conn> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {socket}"))?;
        Ok(Conn {
            mux: MuxConnection::new(stream, DEFAULT_MAX_FRAME),
            creds: creds.clone(),
        })
    }

    /// Sends `operation` with `params` (exact JSON text), signed.
    async fn call(&self, operation: &str, params: &RawValue) -> Result<Response> {
        let request = signed(&self.creds, operation, params)?;
        Ok(self.mux.call(&request, CALL_TIMEOUT).await?)
    }

    /// As [`Conn::call`], with `params` as a JSON value; an error answer is an error.
    async fn must(&self, operation: &str, params: &serde_json::Value) -> Result<Response> {
        let r = self
            .call(operation, &serde_json::value::to_raw_value(params)?)
            .await?;
        if !r.success {
            bail!("{operation}: {:?}", r.error);
        }
        Ok(r)
    }
}

/// A signed request for `operation` with `params` as the exact params text.
fn signed(creds: &Credentials, operation: &str, params: &RawValue) -> Result<Request> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut r = Request::unsigned(
        format!("f{n}"),
        Some(creds.app_id.clone()),
        &Operation::Ping,
    );
    r.operation = operation.to_string();
    r.params = Some(params.to_owned());
    r.token = Some(creds.token.clone());
    r.timestamp = Some(now_ms());
    r.nonce = Some(format!("{n:016x}{:016x}", rand::random::<u64>()));
    sign_request(&mut r, &creds.signing_key).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(r)
}

/// The code of an answer: `ok`, the error's code, or `transport`.
fn code_of(r: &Result<Response>) -> String {
    match r {
        Ok(r) if r.success => "ok".into(),
        Ok(r) => r
            .error
            .as_ref()
            .map_or("error", |e| e.code.as_str())
            .to_string(),
        Err(_) => "transport".into(),
    }
}

/// The params of a mutation of `schema` holding about 2 million zeros, so that its signed
/// frame is just under the 4 MiB cap (for `creds`' app). The envelope's size is taken from
/// a small request (64 bytes spare for longer request ids), so the big one is never signed
/// here.
fn zeros_params(creds: &Credentials, schema: &str) -> Result<Box<RawValue>> {
    let (head, tail) = (
        format!(r#"{{"schema":"{schema}","action":"create","data":{{"blob":["#),
        "0]}}",
    );
    let small = RawValue::from_string(format!("{head}{tail}"))?;
    let envelope = signed(creds, "mutation", &small)?.encode().len();
    let n = (DEFAULT_MAX_FRAME - envelope - 64) / 2;
    Ok(RawValue::from_string(format!(
        "{head}{}{tail}",
        "0,".repeat(n)
    ))?)
}

/// A query of `schema` whose filter is an `or` of `n` `contains` with needles of `len`
/// bytes that match nothing, over `field`.
fn contains_query(
    schema: &str,
    field: &str,
    n: usize,
    len: usize,
    limit: u32,
) -> Result<Box<RawValue>> {
    let needle = format!("{}b", "a".repeat(len - 1));
    let filters: Vec<_> = (0..n)
        .map(|_| json!({"op": "contains", "field": field, "value": needle}))
        .collect();
    Ok(serde_json::value::to_raw_value(&json!({
        "schema": schema,
        "filter": {"op": "or", "filters": filters},
        "limit": limit,
    }))?)
}

/// The hostile app's attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    /// `or` of 200 `contains` with 2,000-byte needles over 64 KiB bodies (over the limits).
    Refused,
    /// `or` of 16 `contains` with 1,000-byte needles, `limit` 1000 (within the limits).
    Contains,
    /// Unindexed `ne` over every record, `limit` 1000.
    Ne,
    /// A mutation whose params are about 2 million zeros (a 4 MiB frame).
    Zeros,
    /// Small creates, as fast as they are answered.
    Flood,
    /// 256 KiB creates until the quota refuses (then one delete, and again).
    Fill,
}

impl Attack {
    fn label(self) -> &'static str {
        match self {
            Attack::Refused => "200×2000 B contains",
            Attack::Contains => "16×1000 B contains",
            Attack::Ne => "ne scan",
            Attack::Zeros => "4 MiB zeros",
            Attack::Flood => "write flood",
            Attack::Fill => "quota fill",
        }
    }
}

/// The attacks' tasks: each runs on a connection of its own.
const ATTACKERS: &[Attack] = &[
    Attack::Refused,
    Attack::Refused,
    Attack::Contains,
    Attack::Contains,
    Attack::Ne,
    Attack::Ne,
    Attack::Zeros,
    Attack::Flood,
    Attack::Flood,
    Attack::Flood,
    Attack::Flood,
    Attack::Fill,
];

/// What the attackers share.
#[derive(Default)]
struct Tally {
    /// Answers by attack and code.
    codes: Mutex<BTreeMap<(Attack, String), u64>>,
    /// Set when the quota first refused a write.
    quota_hit: AtomicBool,
    /// Set to stop the attack.
    stop: AtomicBool,
}

impl Tally {
    fn count(&self, attack: Attack, code: String) {
        *self
            .codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((attack, code))
            .or_default() += 1;
    }

    /// `attack: code n, code n; ...`.
    fn note(&self) -> String {
        let codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_attack: BTreeMap<Attack, Vec<String>> = BTreeMap::new();
        for ((attack, code), n) in codes.iter() {
            by_attack.entry(*attack).or_default().push(format!(
                "{code} {}",
                thousands(i64::try_from(*n).unwrap_or(i64::MAX))
            ));
        }
        by_attack
            .iter()
            .map(|(a, c)| format!("{}: {}", a.label(), c.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The prepared params of every attack.
struct Payloads {
    refused: Box<RawValue>,
    contains: Box<RawValue>,
    ne: Box<RawValue>,
    zeros: Box<RawValue>,
    fill_body: String,
}

/// One attacker: `attack` on a fresh connection until told to stop.
async fn attacker(
    attack: Attack,
    index: usize,
    view: Arc<AppView>,
    creds: Arc<Credentials>,
    payloads: Arc<Payloads>,
    tally: Arc<Tally>,
) -> Result<()> {
    let conn = Conn::open(&view, &creds).await?;
    let mut mine: VecDeque<String> = VecDeque::new();
    let mut i = 0u64;
    while !tally.stop.load(Ordering::Relaxed) {
        i += 1;
        let r = match attack {
            Attack::Refused => conn.call("query", &payloads.refused).await,
            Attack::Contains => conn.call("query", &payloads.contains).await,
            Attack::Ne => conn.call("query", &payloads.ne).await,
            Attack::Zeros => conn.call("mutation", &payloads.zeros).await,
            Attack::Flood => {
                let p = json!({"schema": "note", "action": "create",
                    "data": {"text": format!("flood {index} {i} {}", "x".repeat(200))}});
                conn.call("mutation", &serde_json::value::to_raw_value(&p)?)
                    .await
            }
            Attack::Fill => {
                let p = json!({"schema": "fill", "action": "create",
                    "data": {"body": payloads.fill_body}});
                conn.call("mutation", &serde_json::value::to_raw_value(&p)?)
                    .await
            }
        };
        if attack == Attack::Fill {
            match &r {
                Ok(ok) if ok.success => {
                    let id = ok
                        .result
                        .as_ref()
                        .and_then(|v| serde_json::from_str::<serde_json::Value>(v.get()).ok())
                        .and_then(|v| v["id"].as_str().map(str::to_string));
                    mine.extend(id);
                }
                Ok(refused)
                    if refused
                        .error
                        .as_ref()
                        .is_some_and(|e| e.code == ErrorCode::QuotaExceeded) =>
                {
                    tally.quota_hit.store(true, Ordering::Relaxed);
                    // Make a little room, and fill it again.
                    if let Some(id) = mine.pop_front() {
                        let p = json!({"schema": "fill", "action": "delete", "id": id});
                        let d = conn
                            .call("mutation", &serde_json::value::to_raw_value(&p)?)
                            .await;
                        tally.count(attack, format!("delete {}", code_of(&d)));
                    }
                }
                _ => {}
            }
        }
        tally.count(attack, code_of(&r));
    }
    Ok(())
}

/// `n` sequential point reads of the victim's record; their latencies.
async fn sample(conn: &Conn, point: &RawValue, n: usize) -> Result<Summary> {
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = conn.call("query", point).await?;
        let took = started.elapsed();
        if !r.success {
            bail!("the victim's read failed: {:?}", r.error);
        }
        ns.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(Summary::of_ns(&ns))
}

fn client_runtime(threads: usize, name: &str, pin: Option<usize>) -> Result<Runtime> {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    if let Some(cpu) = pin {
        b.on_thread_start(move || pin_current_thread(cpu));
    }
    Ok(b.enable_all().thread_name(name).build()?)
}

fn victim_row(runtime: &Runtime, sizes: &Sizes) -> Result<Row> {
    let dir = tempfile::Builder::new().prefix("fbf").tempdir_in("/tmp")?;
    let config = daemon_config(
        &dir.path().join("state"),
        &format!("[app_limits]\nmax_bytes = {}\n", sizes.quota_bytes),
    )?;
    let shared = runtime.block_on(fold_client::daemon::start(config.clone()))?;
    let result = (|| {
        let admin = &config.admin_socket;
        let bin = Path::new("/bin/true");
        let grants = ["*:doc", "*:scan", "*:blob", "*:note", "*:fill"];
        let (hv, hc) = runtime.block_on(install(admin, "hostile", bin, &grants, None))?;
        let (vv, vc) = runtime.block_on(install(admin, "victim", bin, &["*:mine"], None))?;

        // The victim: a client of its own, one thread.
        let victim_rt = client_runtime(1, "victim", None)?;
        let (victim, point) = victim_rt.block_on(async {
            let conn = Conn::open(&vv, &vc).await?;
            conn.must(
                "create_schema",
                &json!({"name": "mine", "fields": {"n": {"type": "int"}}}),
            )
            .await?;
            let created = conn
                .must(
                    "mutation",
                    &json!({"schema": "mine", "action": "create", "data": {"n": 1}}),
                )
                .await?;
            let id: serde_json::Value =
                serde_json::from_str(created.result.as_ref().context("no result")?.get())?;
            let point = serde_json::value::to_raw_value(&json!({
                "schema": "mine",
                "filter": {"op": "eq", "field": "id", "value": id["id"]},
            }))?;
            anyhow::Ok((conn, point))
        })?;

        // The hostile app's data: its schemas and 8 bodies of 64 KiB through the daemon,
        // the records to scan straight into the node (as its own writes, counted against
        // its quota) so the write rate does not slow the setup.
        let hostile_rt = client_runtime(2, "hostile", Some(last_cpu()))?;
        hostile_rt.block_on(async {
            let conn = Conn::open(&hv, &hc).await?;
            for (schema, fields) in [
                ("doc", json!({"body": {"type": "string"}})),
                (
                    "scan",
                    json!({"body": {"type": "string"}, "n": {"type": "int"}}),
                ),
                ("blob", json!({"blob": {"type": "json"}})),
                ("note", json!({"text": {"type": "string"}})),
                ("fill", json!({"body": {"type": "string"}})),
            ] {
                conn.must("create_schema", &json!({"name": schema, "fields": fields}))
                    .await?;
            }
            let body = "a".repeat(64 * 1024);
            for _ in 0..8 {
                conn.must(
                    "mutation",
                    &json!({"schema": "doc", "action": "create", "data": {"body": body}}),
                )
                .await?;
            }
            anyhow::Ok(())
        })?;
        runtime.block_on(async {
            let limits = NodeLimits::default().for_request(CALL_TIMEOUT);
            let filler = "a".repeat(1000);
            for i in 0..sizes.scan_records {
                let data = json!({"body": format!("{filler} {i:06}"), "n": i});
                let op = Operation::Mutation(Mutation::Create {
                    schema: "scan".into(),
                    data: data.as_object().cloned().unwrap_or_default(),
                });
                shared
                    .node
                    .call(&hc.app_id, op, CALL_TIMEOUT, &limits)
                    .await
                    .map_err(|e| anyhow::anyhow!("seeding the scanned records: {e}"))?;
            }
            anyhow::Ok(())
        })?;
        let payloads = Arc::new(Payloads {
            refused: contains_query("doc", "body", 200, 2000, 1000)?,
            contains: contains_query("scan", "body", 16, 1000, 1000)?,
            ne: serde_json::value::to_raw_value(&json!({
                "schema": "scan",
                "filter": {"op": "ne", "field": "n", "value": -1},
                "limit": 1000,
            }))?,
            zeros: zeros_params(&hc, "blob")?,
            fill_body: "f".repeat(FILL_BYTES),
        });

        let victim_sample = |n| on_cpu(0, || victim_rt.block_on(sample(&victim, &point, n)));
        victim_sample(sizes.warmup)?;
        let alone = victim_sample(sizes.reads)?;

        let tally = Arc::new(Tally::default());
        let (hv, hc) = (Arc::new(hv), Arc::new(hc));
        let only = std::env::var("FOLD_BENCH_ATTACKS").unwrap_or_default();
        // An empty name matches nothing, so `a,` is `a`.
        let attackers: Vec<_> = ATTACKERS
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                only.is_empty()
                    || only
                        .split(',')
                        .any(|o| !o.is_empty() && a.label().starts_with(o))
            })
            .map(|(i, &attack)| {
                hostile_rt.spawn(attacker(
                    attack,
                    i,
                    Arc::clone(&hv),
                    Arc::clone(&hc),
                    Arc::clone(&payloads),
                    Arc::clone(&tally),
                ))
            })
            .collect();
        let attackers_started = attackers.len();
        // Let every attack get going, and the quota fill up.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        while !tally.quota_hit.load(Ordering::Relaxed) && started.elapsed() < sizes.attack_warmup {
            std::thread::sleep(Duration::from_millis(20));
        }
        let attack_started = tally.note();
        let beside = victim_sample(sizes.reads);
        tally.stop.store(true, Ordering::Relaxed);
        let mut failed = Vec::new();
        hostile_rt.block_on(async {
            for a in attackers {
                match tokio::time::timeout(Duration::from_secs(60), a).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => failed.push(format!("{e:#}")),
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => failed.push("an attacker did not stop".into()),
                }
            }
        });
        drop(hostile_rt);
        let beside = beside?;
        if let Some(e) = failed.first() {
            bail!("{} attacker(s) failed: {e}", failed.len());
        }
        if attack_started.is_empty() {
            bail!("the attack had not started when the victim's sample began");
        }
        let r = beside.p99 / alone.p99;
        anyhow::Ok(Row::new(
            format!(
                "{VICTIM_ROW}: {} sequential reads each; {} hostile connections over {} scanned records; hostile client on core {}, victim client on core 0",
                sizes.reads,
                attackers_started,
                thousands(i64::try_from(sizes.scan_records).unwrap_or(i64::MAX)),
                last_cpu()
            ),
            format!(
                "beside the neighbour: p99 {} µs, p50 {} µs (the neighbour's answers: {})",
                num(beside.p99),
                num(beside.p50),
                tally.note()
            ),
            format!("alone: p99 {} µs, p50 {} µs", num(alone.p99), num(alone.p50)),
            ratio(r),
            "at most 2x",
            Verdict::goal(r <= 2.0),
        ))
    })();
    runtime.block_on(fold_client::daemon::stop(&shared));
    result
}

/// VmHWM (peak resident set) of `pid`, KiB.
fn peak_kib(pid: u32) -> Result<u64> {
    crate::procfs::kib(&format!("/proc/{pid}/status"), "VmHWM")
        .context("no VmHWM in /proc/PID/status")
}

/// `fold_bench __frames`: the hostile client of the memory row, run as the app's uid (the
/// daemon takes an app's connections only from its uid). Reads one JSON line on stdin
/// (`socket`, `credentials`, `frames`), connects, creates schema `blob`, prints `ready`,
/// waits for a line on stdin, sends the frames (granted schema, then not, in turn) and
/// prints the answers' codes as one JSON object.
///
/// # Errors
///
/// Bad input, or the daemon cannot be reached.
pub fn send_frames_stdio() -> Result<()> {
    use std::io::{BufRead as _, Write as _};
    let stdin = std::io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let setup: serde_json::Value = serde_json::from_str(&line).context("the setup line")?;
    let socket = setup["socket"].as_str().context("no socket")?.to_string();
    let creds = Credentials::from_json(
        setup["credentials"]
            .as_str()
            .context("no credentials")?
            .as_bytes(),
    )?;
    let frames = setup["frames"].as_u64().context("no frames")?;
    let rt = client_runtime(1, "frames", None)?;
    let codes = rt.block_on(async {
        let conn = Conn::open_socket(&socket, &creds).await?;
        conn.must(
            "create_schema",
            &json!({"name": "blob", "fields": {"blob": {"type": "json"}}}),
        )
        .await?;
        let granted = zeros_params(&creds, "blob")?;
        let forbidden = zeros_params(&creds, "secret")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        let mut go = String::new();
        stdin.lock().read_line(&mut go)?;
        let mut codes: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..frames {
            let (params, which) = if i % 2 == 0 {
                (&granted, "granted")
            } else {
                (&forbidden, "ungranted")
            };
            let r = conn.call("mutation", params).await;
            *codes.entry(format!("{which} {}", code_of(&r))).or_default() += 1;
        }
        anyhow::Ok(codes)
    })?;
    println!("{}", serde_json::to_string(&codes)?);
    Ok(())
}

fn frame_row(runtime: &Runtime, o: &Options, sizes: &Sizes) -> Result<Row> {
    let d = DaemonProcess::start(o, runtime)?;
    let result = (|| {
        use std::io::{BufRead as _, Write as _};
        use std::os::unix::process::CommandExt as _;
        let (view, creds) = runtime.block_on(install(
            &d.admin,
            "hostile",
            Path::new("/bin/true"),
            &["*:blob"],
            None,
        ))?;
        let (uid, gid) = (view.uid, view.gid);
        let as_app = uid != nix::unistd::geteuid().as_raw();
        let mut exe = std::env::current_exe()?;
        if as_app {
            // Per-app uids (running as root): the client runs as the app's uid and gid,
            // which must traverse the bench's temporary directory to reach the daemon's
            // (traversable) state directory, and may not reach this binary at all (a
            // checkout under `mktemp -d` is 0700): it runs a copy in that directory.
            use std::os::unix::fs::PermissionsExt as _;
            let dir = d
                .admin
                .parent()
                .and_then(Path::parent)
                .context("no directory above the state directory")?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
            let copy = dir.join("fold_bench_hostile_client");
            std::fs::copy(&exe, &copy)?;
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
            exe = copy;
        }
        let mut client = std::process::Command::new(&exe);
        client
            .arg("__frames")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        if as_app {
            client.gid(gid).uid(uid);
        }
        let mut client = client.spawn().context("cannot start the hostile client")?;
        let mut to = client.stdin.take().context("no stdin")?;
        let mut from = std::io::BufReader::new(client.stdout.take().context("no stdout")?);
        let setup = json!({
            "socket": view.socket,
            "credentials": creds.to_json(),
            "frames": sizes.frames,
        });
        writeln!(to, "{setup}")?;
        to.flush()?;
        let mut line = String::new();
        from.read_line(&mut line)?;
        if line.trim() != "ready" {
            let status = client.wait()?;
            bail!("the hostile client did not get ready ({status})");
        }
        let baseline = peak_kib(d.child.id())?;
        writeln!(to, "go")?;
        to.flush()?;
        line.clear();
        from.read_line(&mut line)?;
        let peak = peak_kib(d.child.id())?;
        let status = client.wait()?;
        if !status.success() {
            bail!("the hostile client failed ({status})");
        }
        let codes: BTreeMap<String, u64> =
            serde_json::from_str(&line).context("the hostile client's answer")?;
        anyhow::Ok((baseline, peak, codes))
    })();
    let binary = d.binary.clone();
    d.stop();
    let (baseline, peak, codes) = result?;
    let frame_kib = (DEFAULT_MAX_FRAME / 1024) as f64;
    let growth = peak.saturating_sub(baseline) as f64 / frame_kib;
    let answers: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    Ok(Row::new(
        format!("{FRAME_ROW}: daemon = {binary}"),
        format!(
            "VmHWM {} -> {} KiB after {} frames (answers: {})",
            thousands(i64::try_from(baseline).unwrap_or(i64::MAX)),
            thousands(i64::try_from(peak).unwrap_or(i64::MAX)),
            sizes.frames,
            answers.join(", ")
        ),
        "one 4 MiB frame",
        ratio(growth),
        "at most 3x",
        Verdict::goal(growth <= 3.0),
    ))
}

/// The machine's last CPU: the hostile client's one core.
fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

/// Pins the calling thread to `cpu`.
fn pin_current_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Runs `f` on a thread of its own pinned to `cpu`.
fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_current_thread(cpu);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
