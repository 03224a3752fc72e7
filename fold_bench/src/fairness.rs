//! Part 6: fair sharing. A victim app's point reads alone, then beside a hostile app that
//! runs every attack of issue 13 at once (expensive queries, 4 MiB frames of zeros, a
//! write flood, writes past its quota); and the daemon's peak memory per 4 MiB hostile
//! frame, the daemon running as a process of its own.

use crate::lifecycle::fold_client_binary;
use crate::report::{Row, Verdict};
use crate::rt::{daemon_config, install};
use crate::stats::{num, ratio, Summary};
use crate::Options;
use anyhow::{bail, Context as _, Result};
use fold_ipc::frame::DEFAULT_MAX_FRAME;
use fold_ipc::mux::MuxConnection;
use fold_ipc::signing::sign_request;
use fold_ipc::{Credentials, Request, Response};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VICTIM_ROW: &str =
    "6. victim's p99 point read beside a hostile neighbour (every issue-13 attack at once)";
const FRAME_ROW: &str = "6. daemon peak RSS growth per 4 MiB hostile frame (2 million zeros)";

/// Runs part 6.
pub fn run(runtime: &tokio::runtime::Runtime, o: &Options) -> Vec<Row> {
    let reads = if o.smoke { 40 } else { 400 };
    let victim = runtime
        .block_on(victim_row(reads))
        .unwrap_or_else(|e| Row::missing(VICTIM_ROW, format!("{e:#}")));
    let frames =
        frame_row(runtime, o).unwrap_or_else(|e| Row::missing(FRAME_ROW, format!("{e:#}")));
    vec![victim, frames]
}

static NEXT: AtomicU64 = AtomicU64::new(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A signed request for `operation` with `params` as the exact params text.
fn signed(creds: &Credentials, operation: &str, params: &str) -> Result<Request> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut r = Request::unsigned(
        format!("f{n}"),
        Some(creds.app_id.clone()),
        &fold_ipc::Operation::Ping,
    );
    r.operation = operation.to_string();
    r.params = Some(serde_json::value::RawValue::from_string(
        params.to_string(),
    )?);
    r.token = Some(creds.token.clone());
    r.timestamp = Some(now_ms());
    r.nonce = Some(format!("{n:016x}{:016x}", rand::random::<u64>()));
    sign_request(&mut r, &creds.signing_key).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(r)
}

async fn connect(
    view: &serde_json::Value,
    creds: &Credentials,
) -> Result<Arc<(MuxConnection, Credentials)>> {
    let socket = view["socket"].as_str().context("no socket")?;
    let stream = tokio::net::UnixStream::connect(socket).await?;
    Ok(Arc::new((
        MuxConnection::new(stream, DEFAULT_MAX_FRAME),
        creds.clone(),
    )))
}

async fn call(
    conn: &(MuxConnection, Credentials),
    operation: &str,
    params: &str,
) -> Result<Response> {
    let request = signed(&conn.1, operation, params)?;
    Ok(conn.0.call(&request, Duration::from_secs(30)).await?)
}

async fn must(
    conn: &(MuxConnection, Credentials),
    operation: &str,
    params: &str,
) -> Result<Response> {
    let r = call(conn, operation, params).await?;
    if !r.success {
        bail!("{operation}: {:?}", r.error);
    }
    Ok(r)
}

/// The params of a mutation of `schema` holding about 2 million zeros: a frame just under
/// the 4 MiB cap.
fn zeros_params(schema: &str) -> String {
    let n = DEFAULT_MAX_FRAME / 2 - 4096;
    format!(
        r#"{{"schema":"{schema}","action":"create","data":{{"blob":[{}0]}}}}"#,
        "0,".repeat(n)
    )
}

/// An `or` of `n` `contains` with needles of `len` bytes over the hostile app's bodies.
fn expensive_params(n: usize, len: usize) -> String {
    let needle = format!("{}b", "a".repeat(len - 1));
    let filters: Vec<_> = (0..n)
        .map(|_| json!({"op": "contains", "field": "body", "value": needle}))
        .collect();
    json!({"schema": "doc", "filter": {"op": "or", "filters": filters}, "limit": 1000}).to_string()
}

async fn victim_row(reads: usize) -> Result<Row> {
    let dir = tempfile::Builder::new().prefix("fbf").tempdir_in("/tmp")?;
    let config = daemon_config(
        &dir.path().join("state"),
        "[app_limits]\nmax_bytes = 4194304\n",
    )?;
    let shared = fold_client::daemon::start(config.clone()).await?;
    let admin = &config.admin_socket;
    let bin = Path::new("/bin/true");
    let (hv, hc) = install(admin, "hostile", bin, &["*:doc", "*:blob", "*:note"], None).await?;
    let (vv, vc) = install(admin, "victim", bin, &["*:mine"], None).await?;
    let hostile = connect(&hv, &hc).await?;
    let victim = connect(&vv, &vc).await?;
    for (schema, field, ty) in [
        ("doc", "body", "string"),
        ("blob", "blob", "json"),
        ("note", "text", "string"),
    ] {
        let def = json!({"name": schema, "fields": {field: {"type": ty}}}).to_string();
        must(&hostile, "create_schema", &def).await?;
    }
    let body = "a".repeat(64 * 1024);
    for _ in 0..8 {
        let p = json!({"schema": "doc", "action": "create", "data": {"body": body}}).to_string();
        must(&hostile, "mutation", &p).await?;
    }
    must(
        &victim,
        "create_schema",
        &json!({"name": "mine", "fields": {"n": {"type": "int"}}}).to_string(),
    )
    .await?;
    let created = must(
        &victim,
        "mutation",
        &json!({"schema": "mine", "action": "create", "data": {"n": 1}}).to_string(),
    )
    .await?;
    let id: serde_json::Value =
        serde_json::from_str(created.result.as_ref().context("no result")?.get())?;
    let point = json!({"schema": "mine", "filter": {"op": "eq", "field": "id", "value": id["id"]}})
        .to_string();

    let sample = |n: usize| {
        let victim = Arc::clone(&victim);
        let point = point.clone();
        async move {
            let mut ns = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                must(&victim, "query", &point).await?;
                ns.push(started.elapsed().as_nanos() as u64);
            }
            anyhow::Ok(Summary::of_ns(&ns))
        }
    };
    let alone = sample(reads).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let codes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut attackers = Vec::new();
    for k in 0..6usize {
        let hostile = Arc::clone(&hostile);
        let stop = Arc::clone(&stop);
        let codes = Arc::clone(&codes);
        attackers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (op, params) = match k {
                    0 | 1 => ("query", expensive_params(200, 2000)),
                    2 => ("query", expensive_params(16, 1000)),
                    3 if i % 8 == 0 => ("mutation", zeros_params("blob")),
                    _ => (
                        "mutation",
                        json!({"schema": "note", "action": "create", "data": {"text": "x".repeat(16 * 1024)}})
                            .to_string(),
                    ),
                };
                let code = match call(&hostile, op, &params).await {
                    Ok(r) => r.error.map_or("ok".to_string(), |e| e.code.as_str().to_string()),
                    Err(e) => format!("transport: {e}"),
                };
                *codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(code).or_default() += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let beside = sample(reads).await?;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    shared.shutdown.cancel();
    let codes = codes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let seen: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let r = beside.p99 / alone.p99;
    Ok(Row::new(
        VICTIM_ROW,
        format!(
            "p99 {} us beside the neighbour (its answers: {})",
            num(beside.p99),
            seen.join(", ")
        ),
        format!("p99 {} us alone", num(alone.p99)),
        ratio(r),
        "at most 2x",
        Verdict::goal(r <= 2.0),
    ))
}

/// The daemon as its own process, on a daemon-uid config (so this process may connect).
struct Child {
    child: std::process::Child,
    admin: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Child {
    fn start(o: &Options) -> Result<Child> {
        let dir = tempfile::Builder::new().prefix("fbr").tempdir_in("/tmp")?;
        let state = dir.path().join("state");
        let config = dir.path().join("fold_client.toml");
        std::fs::write(&config, "uid_mode = \"daemon\"\n")?;
        let mut cmd = match fold_client_binary(o) {
            Some(bin) => {
                let mut c = std::process::Command::new(bin);
                c.arg("--state-dir")
                    .arg(&state)
                    .arg("--config")
                    .arg(&config)
                    .arg("serve");
                c
            }
            None => {
                let mut c = std::process::Command::new(std::env::current_exe()?);
                c.arg("__daemon")
                    .arg("--state-dir")
                    .arg(&state)
                    .arg("--config")
                    .arg(&config);
                c
            }
        };
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let admin = state.join("admin.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&admin).is_err() {
            if Instant::now() > deadline {
                bail!("the daemon did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Child {
            child,
            admin,
            _dir: dir,
        })
    }

    fn peak_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmHWM")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn frame_row(runtime: &tokio::runtime::Runtime, o: &Options) -> Result<Row> {
    let d = Child::start(o)?;
    let frames = if o.smoke { 2 } else { 6 };
    let (baseline, peak) = runtime.block_on(async {
        let (view, creds) = install(
            &d.admin,
            "hostile",
            Path::new("/bin/true"),
            &["*:blob"],
            None,
        )
        .await?;
        let conn = connect(&view, &creds).await?;
        must(
            &conn,
            "create_schema",
            &json!({"name": "blob", "fields": {"blob": {"type": "json"}}}).to_string(),
        )
        .await?;
        let granted = zeros_params("blob");
        let forbidden = zeros_params("secret");
        let baseline = d.peak_kib()?;
        for i in 0..frames {
            let params = if i % 2 == 0 { &granted } else { &forbidden };
            let r = call(&conn, "mutation", params).await?;
            if r.success {
                bail!("a frame of 2 million zeros was accepted");
            }
        }
        anyhow::Ok((baseline, d.peak_kib()?))
    })?;
    let frame_kib = (DEFAULT_MAX_FRAME / 1024) as f64;
    let growth = peak.saturating_sub(baseline) as f64 / frame_kib;
    Ok(Row::new(
        FRAME_ROW,
        format!("peak {baseline} -> {peak} KiB after {frames} frames (granted and not)"),
        "one 4 MiB frame",
        ratio(growth),
        "at most 3x",
        Verdict::goal(growth <= 3.0),
    ))
}
