//! `hostile_app`: an app that assumes nothing and tries everything. The security suite
//! (`fold_client/tests/it/hostile.rs`) launches it in a real container through the daemon,
//! like any app, and asserts that every attempt failed in the expected way.
//!
//! Each attempt prints one JSON line:
//! `{"attempt": "...", "outcome": "blocked"|"allowed", "detail": "...", ...facts}`.
//! "blocked" is the app's own reading; the suite checks the facts too (error numbers,
//! counts, ratios) against the limits it configured.
//!
//! It never sends real traffic anywhere: the only remote addresses it tries are in TEST-NET-1
//! (192.0.2.0/24, reserved for documentation) and the reserved name `example.invalid`.
//!
//! | mode | does |
//! | --- | --- |
//! | `all OTHER_APP_ID OTHER_SOCKET_DIR` | every attempt, in order, then `{"attempt":"done"}` |
//! | `flood MIB` | writes MIB MiB to stdout as fast as it can, then exits |
//! | `behave MS` | a well-behaved app: ping and query every MS ms, one latency line each |
//! | `idle` | sleeps forever (the fork bomb's children) |
//! | `hog` | allocates and touches memory until killed (the memory attempt's child) |

use fold_ipc::client::{Client, Error};
use fold_ipc::mux::MuxConnection;
use fold_ipc::query::Query;
use fold_ipc::signing::sign_request;
use fold_ipc::{Credentials, ErrorCode, Operation, Request};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the daemon mounts the app's socket directory.
const SOCKET_DIR: &str = "/tmp/fold_client_sockets";
/// A TEST-NET-1 address: documentation only, never routed on the Internet.
const TEST_NET_ADDR: &str = "192.0.2.1:80";
/// A TEST-NET-1 "resolver".
const TEST_NET_DNS: &str = "192.0.2.53:53";
/// Upper bounds, so that an unconfined run stops on its own.
const MAX_CHILDREN: usize = 2000;
const MAX_TMP_BYTES: u64 = 1 << 30;
const MAX_HOG_MIB: u64 = 8192;

fn report(attempt: &str, blocked: bool, detail: impl Into<String>, facts: Value) {
    let mut line = json!({
        "attempt": attempt,
        "outcome": if blocked { "blocked" } else { "allowed" },
        "detail": detail.into(),
    });
    if let (Value::Object(line), Value::Object(facts)) = (&mut line, facts) {
        line.extend(facts);
    }
    println!("{line}");
}

/// An attempt that should fail: blocked when `result` is an error.
fn expect_error<T>(attempt: &str, what: &str, result: std::io::Result<T>) {
    match result {
        Ok(_) => report(attempt, false, format!("{what}: succeeded"), json!({})),
        Err(e) => report(
            attempt,
            true,
            format!("{what}: {e}"),
            json!({"errno": e.raw_os_error()}),
        ),
    }
}

fn nix_error<T>(attempt: &str, what: &str, result: nix::Result<T>) {
    expect_error(attempt, what, result.map_err(std::io::Error::from))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "idle" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "hog" => hog(),
        "flood" => flood(arg(1).parse().unwrap_or(64)),
        "behave" => runtime().block_on(behave(arg(1).parse().unwrap_or(50))),
        "all" => {
            let other = Other {
                app_id: arg(1),
                dir: PathBuf::from(arg(2)),
            };
            runtime().block_on(all(&other));
        }
        other => {
            eprintln!("usage: hostile_app all OTHER_APP_ID OTHER_SOCKET_DIR | flood MIB | behave MS | idle | hog (got {other:?})");
            std::process::exit(2);
        }
    }
}

/// One thread, so the fork bomb counts processes, not runtime workers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The neighbour the app tries to reach: its id and its socket directory on the host.
struct Other {
    app_id: String,
    dir: PathBuf,
}

async fn all(other: &Other) {
    let creds = std::env::var("FOLD_CLIENT_CREDENTIALS")
        .ok()
        .and_then(|p| Credentials::load(Path::new(&p)).ok());
    secrets_in_environment(creds.as_ref());
    filesystem(other);
    network();
    privileges();
    docker_socket();
    match (&creds, Client::from_env().await) {
        (Some(creds), Ok(client)) => {
            beyond_grants(&client).await;
            replay_and_forgery(creds, other).await;
        }
        (_, Err(e)) => report(
            "connect",
            false,
            format!("cannot reach the daemon: {e}"),
            json!({}),
        ),
        (None, Ok(_)) => report("connect", false, "no credentials file", json!({})),
    }
    fork_bomb();
    cpu_spin();
    tmp_beyond_size();
    exec_from_tmp();
    memory_hog();
    println!("{}", json!({"attempt": "done"}));
}

// ---- secrets ----

fn secrets_in_environment(creds: Option<&Credentials>) {
    let Some(creds) = creds else {
        report(
            "read_own_credentials",
            false,
            "no credentials file",
            json!({}),
        );
        return;
    };
    let secrets = [creds.token.clone(), hex(&creds.signing_key.to_bytes())];
    let leaks = |text: &str| secrets.iter().any(|s| text.contains(s.as_str()));
    match std::fs::read("/proc/1/environ") {
        Ok(env) => {
            let text = String::from_utf8_lossy(&env);
            let names: Vec<&str> = text
                .split('\0')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                .collect();
            report(
                "token_in_pid1_environ",
                !leaks(&text),
                format!("readable; variables: {}", names.join(" ")),
                json!({"readable": true}),
            );
        }
        Err(e) => report(
            "token_in_pid1_environ",
            true,
            format!("unreadable: {e}"),
            json!({"readable": false}),
        ),
    }
    let own = std::fs::read("/proc/self/environ").unwrap_or_default();
    let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let leaked = leaks(&String::from_utf8_lossy(&own)) || vars.iter().any(|v| leaks(v));
    let token_var = std::env::var_os("FOLD_CLIENT_APP_TOKEN").is_some();
    report(
        "token_in_own_environ",
        !leaked && !token_var,
        format!(
            "{} variables; FOLD_CLIENT_APP_TOKEN {}",
            vars.len(),
            if token_var { "set" } else { "absent" }
        ),
        json!({}),
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- filesystem ----

fn filesystem(other: &Other) {
    expect_error(
        "write_root",
        "create /hostile_probe",
        std::fs::File::create("/hostile_probe"),
    );
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/app/hostile_app"));
    expect_error(
        "write_app_binary",
        &format!("open {} for writing", exe.display()),
        std::fs::OpenOptions::new().write(true).open(&exe),
    );
    expect_error(
        "write_app_dir",
        "create /app/dropped",
        std::fs::File::create("/app/dropped"),
    );
    let own_socket = std::env::var("FOLD_CLIENT_APP_ID")
        .map(|id| format!("{SOCKET_DIR}/{id}.sock"))
        .unwrap_or_default();
    let socket_dir_write = std::fs::File::create(format!("{SOCKET_DIR}/dropped"))
        .map(|_| ())
        .and_then(|()| std::fs::remove_file(&own_socket));
    expect_error(
        "write_socket_dir",
        "create a file in the socket directory, or unlink the socket",
        socket_dir_write,
    );

    let other_dir = &other.dir;
    let guesses = [
        other_dir.clone(),
        PathBuf::from(SOCKET_DIR).join(&other.app_id),
        PathBuf::from(SOCKET_DIR).join("..").join(&other.app_id),
    ];
    let listed: Vec<String> = guesses
        .iter()
        .filter(|p| std::fs::read_dir(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    let own: Vec<String> = std::fs::read_dir(SOCKET_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    report(
        "read_other_socket_dir",
        listed.is_empty(),
        format!("readable: {listed:?}; own socket directory holds {own:?}"),
        json!({}),
    );
    let creds: Vec<PathBuf> = guesses.iter().map(|d| d.join("credentials.json")).collect();
    let read: Vec<String> = creds
        .iter()
        .filter(|p| std::fs::read(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    report(
        "read_other_credentials",
        read.is_empty(),
        format!("read: {read:?}"),
        json!({}),
    );
    let socket = other_dir.join(format!("{}.sock", other.app_id));
    expect_error(
        "connect_other_socket",
        &format!("connect {}", socket.display()),
        std::os::unix::net::UnixStream::connect(&socket),
    );
}

fn tmp_beyond_size() {
    let path = "/tmp/hostile_fill";
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let outcome = std::fs::File::create(path).and_then(|mut f| {
        while written < MAX_TMP_BYTES {
            f.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        f.sync_all()
    });
    let _ = std::fs::remove_file(path);
    match outcome {
        Ok(()) => report(
            "tmp_beyond_size",
            false,
            format!("wrote {written} bytes to /tmp"),
            json!({"bytes": written}),
        ),
        Err(e) => report(
            "tmp_beyond_size",
            true,
            format!("stopped after {written} bytes: {e}"),
            json!({"bytes": written, "errno": e.raw_os_error()}),
        ),
    }
}

fn exec_from_tmp() {
    use std::os::unix::fs::PermissionsExt;
    let copy = "/tmp/hostile_copy";
    let spawned = std::fs::copy("/proc/self/exe", copy)
        .and_then(|_| std::fs::set_permissions(copy, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| {
            Command::new(copy)
                .arg("idle")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
        });
    match spawned {
        Ok(mut child) => {
            let _ = child.kill();
            let _ = child.wait();
            report(
                "exec_tmp",
                false,
                "executed a copy of itself from /tmp",
                json!({}),
            );
        }
        Err(e) => report(
            "exec_tmp",
            true,
            format!("exec /tmp/hostile_copy: {e}"),
            json!({"errno": e.raw_os_error()}),
        ),
    }
    let _ = std::fs::remove_file(copy);
}

// ---- network ----

fn network() {
    let addr = TEST_NET_ADDR.parse().expect("a socket address");
    expect_error(
        "net_tcp",
        &format!("tcp connect {TEST_NET_ADDR}"),
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)),
    );
    let udp = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.send_to(&dns_query("example.invalid"), TEST_NET_DNS));
    expect_error(
        "net_udp_dns",
        &format!("DNS query for example.invalid to {TEST_NET_DNS}"),
        udp,
    );
    use std::net::ToSocketAddrs;
    let lookup = ("example.invalid", 80)
        .to_socket_addrs()
        .and_then(|mut a| a.next().ok_or_else(|| std::io::Error::other("no address")));
    expect_error("net_dns_lookup", "resolve example.invalid", lookup);
    let mut interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    report(
        "net_interfaces",
        interfaces.iter().all(|i| i == "lo"),
        format!("interfaces: {interfaces:?}"),
        json!({"interfaces": interfaces}),
    );
}

/// A DNS query (type A) for `name`.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn docker_socket() {
    let paths = [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/var/run/containerd/containerd.sock",
        "/run/podman/podman.sock",
    ];
    let reached: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        .collect();
    report(
        "docker_socket",
        reached.is_empty(),
        format!("reached: {reached:?} of {paths:?}"),
        json!({}),
    );
}

// ---- privileges ----

fn status() -> String {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default()
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn privileges() {
    use nix::mount::{mount, MsFlags};
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    nix_error(
        "mount",
        "mount a tmpfs on /tmp",
        mount(
            Some("none"),
            "/tmp",
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        ),
    );
    nix_error(
        "remount_root",
        "remount / read-write",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT,
            None::<&str>,
        ),
    );
    ptrace_pid1();
    other_processes();
    nix_error(
        "raw_socket",
        "open an ICMP raw socket",
        socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Icmp,
        ),
    );
    nix_error(
        "packet_socket",
        "open an AF_PACKET socket",
        socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::EthAll,
        ),
    );
    let status = status();
    let no_new_privs = status_field(&status, "NoNewPrivs:");
    let setuid = nix::unistd::setuid(nix::unistd::Uid::from_raw(0));
    let setuid_files = setuid_binaries();
    report(
        "setuid",
        no_new_privs == "1" && setuid.is_err(),
        format!(
            "NoNewPrivs {no_new_privs}; setuid(0): {setuid:?}; setuid files in the image: {setuid_files:?}"
        ),
        json!({"no_new_privs": no_new_privs, "uid": nix::unistd::getuid().as_raw()}),
    );
    let caps: Vec<String> = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .iter()
        .map(|k| format!("{k} {}", status_field(&status, k)))
        .collect();
    let none = ["CapPrm:", "CapEff:", "CapBnd:"]
        .iter()
        .all(|k| u64::from_str_radix(&status_field(&status, k), 16) == Ok(0));
    report("capabilities", none, caps.join(", "), json!({}));
}

/// Attaching to PID 1 (the container's init, which runs as the app's own uid): refused, or
/// at worst a process of the same uid in the same container.
fn ptrace_pid1() {
    use nix::sys::ptrace;
    use nix::unistd::Pid;
    let pid1 = std::fs::read_to_string("/proc/1/status").unwrap_or_default();
    let target_uid = status_field(&pid1, "Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse::<u32>().ok());
    let own_uid = nix::unistd::getuid().as_raw();
    let facts = json!({"target_uid": target_uid, "own_uid": own_uid, "target": status_field(&pid1, "Name:")});
    match ptrace::attach(Pid::from_raw(1)) {
        Ok(()) => {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(1), None);
            let _ = ptrace::detach(Pid::from_raw(1), None);
            report("ptrace", false, "attached to pid 1", facts);
        }
        Err(e) => report("ptrace", true, format!("attach to pid 1: {e}"), facts),
    }
}

/// Every process visible in `/proc`, with its uid: only the container's own, all the app's.
fn other_processes() {
    let own_uid = nix::unistd::getuid().as_raw();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let uid = status_field(&status, "Uid:")
            .split_whitespace()
            .next()
            .and_then(|u| u.parse::<u32>().ok());
        seen.push((name, status_field(&status, "Name:"), uid));
    }
    let foreign: Vec<_> = seen.iter().filter(|p| p.2 != Some(own_uid)).collect();
    report(
        "see_other_processes",
        foreign.is_empty(),
        format!(
            "{} processes visible; of another uid: {foreign:?}",
            seen.len()
        ),
        json!({"visible": seen.len()}),
    );
}

fn setuid_binaries() -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    for dir in ["/bin", "/sbin", "/usr/bin", "/usr/sbin"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(meta) = std::fs::symlink_metadata(entry.path()) {
                if meta.permissions().mode() & 0o6000 != 0 && meta.is_file() {
                    found.push(entry.path().display().to_string());
                }
            }
        }
    }
    found
}

// ---- resources ----

fn fork_bomb() {
    let mut children: Vec<Child> = Vec::new();
    let exe = "/proc/self/exe";
    let error = loop {
        if children.len() >= MAX_CHILDREN {
            break None;
        }
        match Command::new(exe)
            .arg("idle")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => children.push(child),
            Err(e) => break Some(e),
        }
    };
    let spawned = children.len();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    match error {
        Some(e) => report(
            "fork_bomb",
            true,
            format!("spawned {spawned} processes, then: {e}"),
            json!({"spawned": spawned, "errno": e.raw_os_error()}),
        ),
        None => report(
            "fork_bomb",
            false,
            format!("spawned {spawned} processes without a refusal"),
            json!({"spawned": spawned}),
        ),
    }
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// `nr_throttled` of the container's CPU cgroup, if it can be read.
fn throttled() -> Option<u64> {
    [
        "/sys/fs/cgroup/cpu/cpu.stat",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.stat",
        "/sys/fs/cgroup/cpu.stat",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse().ok())
    })
}

fn cpu_spin() {
    let threads = 4;
    let wall = Duration::from_secs(3);
    let stop = Arc::new(AtomicBool::new(false));
    let throttled_before = throttled();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let spinners: Vec<_> = (0..threads)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    std::thread::sleep(wall);
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let used = cpu_seconds() - cpu_before;
    let cores = used / elapsed;
    let throttled_now = throttled();
    let newly_throttled = throttled_now
        .zip(throttled_before)
        .map(|(a, b)| a.saturating_sub(b));
    report(
        "cpu_spin",
        cores < f64::from(threads) * 0.9,
        format!(
            "{threads} spinning threads used {used:.2} CPU s in {elapsed:.2} s ({cores:.2} cores); throttled periods: {newly_throttled:?}"
        ),
        json!({"cores": cores, "throttled": newly_throttled}),
    );
}

fn memory_hog() {
    let child = Command::new("/proc/self/exe")
        .arg("hog")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            report(
                "memory_hog",
                false,
                format!("cannot start the hog: {e}"),
                json!({}),
            );
            return;
        }
    };
    let mut last = 0u64;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            last = line.trim().parse().unwrap_or(last);
        }
    }
    let status = child.wait();
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) if s.signal() == Some(9) => report(
            "memory_hog",
            true,
            format!("killed (SIGKILL) after touching {last} MiB"),
            json!({"mib": last}),
        ),
        other => report(
            "memory_hog",
            false,
            format!("the hog ended with {other:?} after {last} MiB"),
            json!({"mib": last}),
        ),
    }
}

fn hog() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut out = std::io::stdout();
    while (kept.len() as u64) < MAX_HOG_MIB {
        // Touch every page, so the memory is really used.
        kept.push(vec![7u8; 1 << 20]);
        let _ = writeln!(out, "{}", kept.len());
    }
    std::process::exit(0);
}

fn flood(mib: u64) {
    let line = format!("{}\n", "x".repeat(1023));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    for _ in 0..mib * 1024 {
        if out.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    let _ = out.flush();
}

// ---- the daemon: grants, replay, forgery ----

async fn beyond_grants(client: &Client) {
    let forbidden = |r: Result<(), Error>| match r {
        Err(e) if e.code() == Some(ErrorCode::Forbidden) => (true, e.to_string()),
        Err(e) => (false, format!("not refused as forbidden: {e}")),
        Ok(()) => (false, "succeeded".to_string()),
    };
    let control = client.query(Query::new("post").limit(1)).await;
    report(
        "control_query_post",
        control.is_err(),
        format!(
            "a granted query: {:?}",
            control.as_ref().map(|p| p.rows.len())
        ),
        json!({}),
    );
    let attempts: Vec<(&str, Result<(), Error>)> = vec![
        (
            "beyond_grants_query",
            client.query(Query::new("secret")).await.map(|_| ()),
        ),
        (
            "beyond_grants_mutation",
            client
                .create("secret", json!({"note": "pwned"}))
                .await
                .map(|_| ()),
        ),
        (
            "beyond_grants_update",
            client
                .update(
                    "secret",
                    "00000000-0000-0000-0000-000000000000",
                    json!({"note": "pwned"}),
                )
                .await
                .map(|_| ()),
        ),
        (
            "beyond_grants_history",
            client
                .history("secret", "00000000-0000-0000-0000-000000000000")
                .await
                .map(|_| ()),
        ),
        (
            "beyond_grants_create_schema",
            client
                .create_schema(
                    serde_json::from_value(json!({"name": "evil", "fields": {}}))
                        .expect("a schema"),
                )
                .await
                .map(|_| ()),
        ),
        (
            "beyond_grants_delete_schema",
            client.delete_schema("post", true).await.map(|_| ()),
        ),
    ];
    for (attempt, result) in attempts {
        let (blocked, detail) = forbidden(result);
        report(attempt, blocked, detail, json!({}));
    }
    match client.list_schemas().await {
        Ok(list) => report(
            "beyond_grants_list_schemas",
            !list.iter().any(|s| s == "secret"),
            format!("sees {list:?}"),
            json!({}),
        ),
        Err(e) => report("beyond_grants_list_schemas", true, e.to_string(), json!({})),
    }
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A correctly signed request: fresh id, timestamp and nonce.
fn signed(creds: &Credentials, op: &Operation) -> Request {
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    let mut r = Request::unsigned(format!("h{n}"), Some(creds.app_id.clone()), op);
    r.token = Some(creds.token.clone());
    r.timestamp = Some(now_ms());
    r.nonce = Some(format!("hostile-{}-{n}-{}", std::process::id(), now_ms()));
    let _ = sign_request(&mut r, &creds.signing_key);
    r
}

fn resign(creds: &Credentials, mut r: Request) -> Request {
    let _ = sign_request(&mut r, &creds.signing_key);
    r
}

async fn replay_and_forgery(creds: &Credentials, other: &Other) {
    let path = PathBuf::from(SOCKET_DIR).join(format!("{}.sock", creds.app_id));
    let mux = match tokio::net::UnixStream::connect(&path).await {
        Ok(stream) => MuxConnection::new(stream, fold_ipc::frame::DEFAULT_MAX_FRAME),
        Err(e) => {
            report(
                "replay_same_request",
                false,
                format!("cannot connect: {e}"),
                json!({}),
            );
            return;
        }
    };
    let timeout = Duration::from_secs(10);
    let query_post = Operation::Query(Query::new("post").limit(1));
    let send = |r: Request| {
        let mux = &mux;
        async move {
            match mux.call(&r, timeout).await {
                Ok(resp) if resp.success => Ok(()),
                Ok(resp) => Err(resp.error.map(|e| (e.code, e.message))),
                Err(e) => Err(Some((ErrorCode::Unknown, e.to_string()))),
            }
        }
    };
    let expect =
        |attempt: &str, code: ErrorCode, result: Result<(), Option<(ErrorCode, String)>>| {
            match result {
                Ok(()) => report(attempt, false, "accepted", json!({})),
                Err(Some((got, message))) => report(
                    attempt,
                    got == code,
                    format!("{}: {message}", got.as_str()),
                    json!({"code": got.as_str()}),
                ),
                Err(None) => report(attempt, false, "failed without an error", json!({})),
            }
        };

    // The very same bytes twice: the second is a replay.
    let once = signed(creds, &query_post);
    let again = once.clone();
    let first = send(once).await;
    let second = send(again).await;
    match first {
        Ok(()) => expect("replay_same_request", ErrorCode::Replay, second),
        Err(e) => report(
            "replay_same_request",
            false,
            format!("the original was refused: {e:?}"),
            json!({}),
        ),
    }

    let mut stale = signed(creds, &query_post);
    stale.timestamp = Some(now_ms() - 10 * 60 * 1000);
    expect(
        "replay_stale_timestamp",
        ErrorCode::Replay,
        send(resign(creds, stale)).await,
    );
    let mut future = signed(creds, &query_post);
    future.timestamp = Some(now_ms() + 10 * 60 * 1000);
    expect(
        "replay_future_timestamp",
        ErrorCode::Replay,
        send(resign(creds, future)).await,
    );

    let mut flipped = signed(creds, &query_post);
    if let Some(sig) = flipped.signature.as_mut() {
        let last = if sig.ends_with('0') { "1" } else { "0" };
        sig.replace_range(sig.len() - 1.., last);
    }
    expect(
        "forge_bad_signature",
        ErrorCode::BadSignature,
        send(flipped).await,
    );

    let stranger = Credentials::from_json(
        json!({"v": 1, "app_id": creds.app_id, "token": creds.token, "private_key": "11".repeat(32)})
            .to_string()
            .as_bytes(),
    );
    match stranger {
        Ok(stranger) => expect(
            "forge_other_key",
            ErrorCode::BadSignature,
            send(signed(&stranger, &query_post)).await,
        ),
        Err(e) => report(
            "forge_other_key",
            false,
            format!("cannot build a key: {e}"),
            json!({}),
        ),
    }

    // Signed for `post`, then pointed at `secret`.
    let mut tampered = signed(creds, &query_post);
    let secret = Operation::Query(Query::new("secret").limit(1));
    tampered.params = secret
        .params_json()
        .and_then(|p| serde_json::value::RawValue::from_string(p).ok());
    expect(
        "forge_tampered_params",
        ErrorCode::BadSignature,
        send(tampered).await,
    );

    let mut wrong_token = signed(creds, &query_post);
    wrong_token.token = Some("ab".repeat(32));
    expect(
        "forge_wrong_token",
        ErrorCode::Unauthenticated,
        send(wrong_token).await,
    );

    let mut other_app = signed(creds, &query_post);
    other_app.app_id = Some(other.app_id.clone());
    expect(
        "forge_other_app_id",
        ErrorCode::Unauthenticated,
        send(resign(creds, other_app)).await,
    );

    let mut unsigned = signed(creds, &query_post);
    unsigned.signature = None;
    expect(
        "forge_unsigned",
        ErrorCode::BadSignature,
        send(unsigned).await,
    );
}

// ---- the well-behaved neighbour ----

async fn behave(every_ms: u64) {
    let client = loop {
        match Client::from_env().await {
            Ok(c) => break c,
            Err(e) => {
                eprintln!("behave: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut n = 0u64;
    loop {
        n += 1;
        let started = Instant::now();
        let result = async {
            client.ping().await?;
            client.query(Query::new("post").limit(5)).await?;
            Ok::<(), Error>(())
        }
        .await;
        let latency_us = started.elapsed().as_micros() as u64;
        let (ok, error) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e.to_string()),
        };
        println!(
            "{}",
            json!({"attempt": "behave", "outcome": "allowed", "n": n, "ok": ok, "latency_us": latency_us, "detail": error})
        );
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
}
