//! The hostile app (`fold_testkit/fixtures/hostile_app`) in a real container, launched by the daemon like
//! any app, beside a well-behaved neighbour. Every attempt it reports must have failed in
//! the expected way (asserted here from the facts it prints, not only its own verdict); the
//! neighbour must keep being served within its normal latency; the audit must show the
//! denials; and a stdout flood must leave the logs capped.

use crate::docker::{call, is_root, ps_row, wait_for_text, DockerDaemon, Start};
use fold_client::admin::protocol::{InstallRequest, InstallResponse, LaunchRequest, RestartMode};
use fold_client::sandbox::{Isolation, IsolationRequest};
use fold_ipc::{Operation, WireError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MEMORY_MIB: u64 = 128;
const CPUS: f64 = 0.5;
const PIDS: u64 = 32;
const LOG_CAP: u64 = 1 << 20;

/// The base image and the static hostile app; fails without a Docker engine.
fn setup() -> (String, PathBuf) {
    fold_testkit::need_docker();
    let image = fold_testkit::ensure_base_image().expect("base image");
    let app = fold_testkit::build_static_binary("fixture-hostile_app", "hostile_app")
        .expect("static hostile_app");
    (image, app)
}

async fn install(
    d: &DockerDaemon,
    (name, warm): (&str, u32),
    (binary, isolation): (&Path, Isolation),
    image: &str,
    grants: &[&str],
) -> InstallResponse {
    let mut install = InstallRequest::new(name, binary);
    install.isolation = Some(IsolationRequest::Exactly(isolation));
    install.grants = grants.iter().map(|g| g.parse().unwrap()).collect();
    install.image = Some(image.into());
    install.memory_bytes = Some(MEMORY_MIB << 20);
    install.cpus = Some(CPUS);
    install.pids = Some(PIDS);
    install.warm = (warm > 0).then_some(warm);
    call(&d.config.admin_socket, install).await.unwrap()
}

/// Launches `app` once; returns its container's id.
async fn launch(d: &DockerDaemon, app: &str, args: &[&str]) -> String {
    let launch = LaunchRequest {
        args: args.iter().map(ToString::to_string).collect(),
        restart: Some(RestartMode::Never),
        ..LaunchRequest::new(app)
    };
    let launched = call(&d.config.admin_socket, launch).await.unwrap();
    launched.container.unwrap()
}

/// CPU time the container has used so far, in seconds, read by the host from its cgroup
/// (v1 `cpuacct`, or v2 `cpu.stat`); `None` once the cgroup is gone.
fn container_cpu_seconds(id: &str) -> Option<f64> {
    let v1 = format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage");
    if let Ok(ns) = std::fs::read_to_string(v1) {
        return ns.trim().parse::<f64>().ok().map(|ns| ns / 1e9);
    }
    let v2 = [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
    ];
    v2.iter().find_map(|path| {
        let stat = std::fs::read_to_string(path).ok()?;
        let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
        usec.trim().parse::<f64>().ok().map(|us| us / 1e6)
    })
}

/// Samples the container's CPU use from the host every 250 ms until its cgroup is gone or
/// `stop` is set; returns the highest rate over any window of at least 2 s, in cores.
async fn peak_cores(id: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> f64 {
    let mut samples: Vec<(Instant, f64)> = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match container_cpu_seconds(&id) {
            Some(used) => samples.push((Instant::now(), used)),
            None if !samples.is_empty() => break,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut peak: f64 = 0.0;
    for (i, (t0, c0)) in samples.iter().enumerate() {
        if let Some((t1, c1)) = samples[i..]
            .iter()
            .find(|(t, _)| t.duration_since(*t0) >= Duration::from_secs(2))
        {
            peak = peak.max((c1 - c0) / t1.duration_since(*t0).as_secs_f64());
        }
    }
    assert!(
        samples.len() > 8,
        "too few CPU samples of {id}: {samples:?}"
    );
    peak
}

/// The JSON lines an app printed, from its log.
fn lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// The neighbour's round trips (µs) so far, all of which must have succeeded.
fn neighbour_latencies(log: &Path) -> Vec<u64> {
    lines(log)
        .into_iter()
        .filter(|l| l["attempt"] == "behave")
        .map(|l| {
            assert_eq!(l["ok"], true, "the neighbour was refused: {l}");
            l["latency_us"].as_u64().unwrap()
        })
        .collect()
}

fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

async fn wait_for_lines(log: &Path, at_least: usize) {
    let start = Instant::now();
    while neighbour_latencies(log).len() < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the neighbour is not being served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_call(
    d: &DockerDaemon,
    op: Operation,
) -> Result<Box<serde_json::value::RawValue>, WireError> {
    d.shared
        .node
        .call(
            "test",
            op,
            Duration::from_secs(10),
            &fold_client::app_limits::NodeLimits::default().for_request(Duration::from_secs(10)),
        )
        .await
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_app_is_contained_and_its_neighbour_keeps_being_served() {
    hostile_app_is_contained_beside_its_neighbour(Isolation::Container, Start::Cold).await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_started_hostile_app_is_contained_as_a_cold_one() {
    hostile_app_is_contained_beside_its_neighbour(Isolation::Container, Start::Warm).await;
}

/// The suite: both apps under `isolation`; every attempt fails, the neighbour is served.
/// With `Start::Warm` the hostile app keeps a prepared container and starts in it.
pub async fn hostile_app_is_contained_beside_its_neighbour(isolation: Isolation, start: Start) {
    let (image, binary) = setup();
    let binary = (binary.as_path(), isolation);
    let d = DockerDaemon::start(&format!("log_cap_bytes = {LOG_CAP}")).await;
    for schema in [
        json!({"name": "post", "fields": {"title": {"type": "string"}}}),
        json!({"name": "secret", "fields": {"note": {"type": "string"}}}),
    ] {
        node_call(
            &d,
            Operation::CreateSchema(serde_json::from_value(schema).unwrap()),
        )
        .await
        .unwrap();
    }
    let secret: Value = serde_json::from_str(
        node_call(&d, Operation::parse("mutation", Some(&serde_json::value::RawValue::from_string(
            r#"{"schema":"secret","action":"create","data":{"note":"the neighbour's secret"}}"#.into()).unwrap())).unwrap())
            .await
            .unwrap()
            .get(),
    )
    .unwrap();

    let neighbour = install(&d, ("neighbour", 0), binary, &image, &["query:post"]).await;
    let warm = match start {
        Start::Cold => 0,
        Start::Warm => 1,
    };
    let hostile = install(
        &d,
        ("hostile", warm),
        binary,
        &image,
        &["query:post", "mutation:post"],
    )
    .await;
    let prepared = match start {
        Start::Cold => Vec::new(),
        Start::Warm => crate::docker::warm::wait_ready(&d, "hostile", 1).await,
    };
    let hostile_id = hostile.app.id;
    let neighbour_id = neighbour.app.id;
    let neighbour_log = neighbour.app.log;
    let hostile_log = hostile.app.log;
    let neighbour_dir = d.shared.socket_dir(&neighbour_id);

    // The neighbour alone: its baseline.
    launch(&d, "neighbour", &["behave", "50"]).await;
    wait_for_lines(&neighbour_log, 30).await;
    let baseline = neighbour_latencies(&neighbour_log);

    // The hostile app tries everything.
    let hostile_container = launch(
        &d,
        "hostile",
        &["all", &neighbour_id, &neighbour_dir.display().to_string()],
    )
    .await;
    assert_eq!(
        prepared.contains(&hostile_container),
        start == Start::Warm,
        "{hostile_container} of {prepared:?}"
    );
    // The CPU limit as the host sees it: inside gVisor the sentry keeps its own clock of
    // the app's CPU time, so only the container's cgroup tells what the sandbox used.
    let stop_sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(peak_cores(hostile_container, stop_sampling.clone()));
    // Under gVisor the memory hog, the last attempt, takes the whole sandbox with it: the
    // app's processes share the sentry's memory, so the host's OOM killer ends the sandbox,
    // not one process in it (docs/security.md). The attempt before it is then the last line.
    let last = match isolation {
        Isolation::Container => r#""attempt":"done""#,
        Isolation::Gvisor => r#""attempt":"exec_tmp""#,
    };
    wait_for_text(&hostile_log, last, Duration::from_secs(180)).await;
    let during = neighbour_latencies(&neighbour_log)[baseline.len()..].to_vec();
    let attempts: BTreeMap<String, Value> = lines(&hostile_log)
        .into_iter()
        .filter_map(|l| Some((l["attempt"].as_str()?.to_string(), l)))
        .collect();
    eprintln!("hostile app attempts:");
    for line in attempts.values() {
        eprintln!("  {line}");
    }
    check_attempts(&attempts, isolation);
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let host_cores = sampler.await.unwrap();
    eprintln!("hostile container: at most {host_cores:.2} cores over any 2 s, as the host counts");
    assert!(
        host_cores <= CPUS * 1.5,
        "the hostile container used {host_cores:.2} cores with a limit of {CPUS}"
    );

    // The neighbour was served throughout, within a generous factor of its normal latency.
    assert!(
        during.len() >= 10,
        "the neighbour was barely served during the attack: {during:?}"
    );
    let (normal, under_attack) = (median(&baseline), median(&during));
    assert!(
        under_attack <= normal * 20 + 50_000,
        "neighbour median {under_attack} µs during the attack, {normal} µs before"
    );
    assert!(
        during.iter().all(|l| *l < 5_000_000),
        "a neighbour request took over 5 s: {during:?}"
    );

    // The secret record is untouched.
    let rows: Value = serde_json::from_str(
        node_call(&d, Operation::Query(fold_ipc::query::Query::new("secret")))
            .await
            .unwrap()
            .get(),
    )
    .unwrap();
    assert_eq!(rows["rows"].as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows["rows"][0]["id"], secret["id"]);
    assert_eq!(rows["rows"][0]["note"], "the neighbour's secret");

    // The audit shows each denial, with its reason.
    d.shared.audit.flush().await;
    let audit: Vec<Value> = std::fs::read_to_string(d.config.audit_path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = audit
        .iter()
        .filter(|l| l["app_id"] == hostile_id.as_str() && l["verdict"] == "deny")
        .filter_map(|l| l["reason"].as_str())
        .collect();
    for reason in [
        "not_granted",
        "replayed_nonce",
        "stale_timestamp",
        "bad_signature",
        "bad_token",
        "wrong_app",
        "signature_required",
    ] {
        assert!(
            reasons.contains(&reason),
            "no {reason} denial in the audit: {reasons:?}"
        );
    }
    let not_granted: Vec<&Value> = audit
        .iter()
        .filter(|l| l["app_id"] == hostile_id.as_str() && l["reason"] == "not_granted")
        .collect();
    assert!(
        not_granted.iter().any(|l| l["schema"] == "secret"),
        "{not_granted:?}"
    );
    for line in &audit {
        let text = line.to_string();
        assert!(!text.contains("pwned"), "record data in the audit: {text}");
    }

    // A stdout flood: the app's log stays capped (the live file and one rotated file).
    let before_flood = neighbour_latencies(&neighbour_log).len();
    // Under runc the run ends normally: the engine flags the container as OOM-killed, since
    // one of its processes (the hog) was, but the app's main process exited 0, and that is
    // its state. Under gVisor the hog ended the sandbox, and so the app, at its memory limit.
    let state = wait_ended(&d, "hostile").await;
    let expected = match isolation {
        Isolation::Container => "exited(0)",
        Isolation::Gvisor => "oom_killed",
    };
    assert_eq!(state, expected);
    launch(&d, "hostile", &["flood", "32"]).await;
    assert_eq!(wait_ended(&d, "hostile").await, "exited(0)");
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let rotated = PathBuf::from(format!("{}.1", hostile_log.display()));
    assert!(
        size(&hostile_log) <= LOG_CAP,
        "log {} bytes",
        size(&hostile_log)
    );
    assert!(
        size(&rotated) <= LOG_CAP,
        "rotated log {} bytes",
        size(&rotated)
    );
    assert!(
        size(&rotated) > 0,
        "32 MiB of output should have rotated the log"
    );
    let flood_during = neighbour_latencies(&neighbour_log)[before_flood..].to_vec();
    assert!(
        !flood_during.is_empty(),
        "the neighbour was not served during the flood"
    );
    assert!(
        median(&flood_during) <= normal * 20 + 50_000,
        "neighbour median {} µs during the flood, {normal} µs before",
        median(&flood_during)
    );
    eprintln!(
        "neighbour median round trip: {normal} µs alone, {under_attack} µs beside the hostile app, {} µs during the flood",
        median(&flood_during)
    );
    d.stop().await;
}

/// Waits until the app's container has ended; returns the state `ps` shows.
async fn wait_ended(d: &DockerDaemon, name: &str) -> String {
    let started = Instant::now();
    loop {
        let row = ps_row(&d.config.admin_socket, name).await;
        let state = row.as_ref().map(|r| r.state.clone()).unwrap_or_default();
        if state.starts_with("exited") || state == "oom_killed" || state == "failed" {
            return state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} never exited: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One attempt's line; fails the test when the app never reported it.
fn attempt<'a>(attempts: &'a BTreeMap<String, Value>, name: &str) -> &'a Value {
    attempts
        .get(name)
        .unwrap_or_else(|| panic!("the hostile app did not report {name}"))
}

fn blocked(attempts: &BTreeMap<String, Value>, name: &str) -> Value {
    let line = attempt(attempts, name).clone();
    assert_eq!(line["outcome"], "blocked", "{name}: {line}");
    line
}

fn errno(line: &Value) -> Option<i64> {
    line["errno"].as_i64()
}

fn check_attempts(attempts: &BTreeMap<String, Value>, isolation: Isolation) {
    const EPERM: i64 = 1;
    const EACCES: i64 = 13;
    const EAGAIN: i64 = 11;
    const ENOSPC: i64 = 28;
    const ETXTBSY: i64 = 26;
    const EROFS: i64 = 30;
    const ENETUNREACH: i64 = 101;
    const EHOSTUNREACH: i64 = 113;

    // Secrets: not in the container's environment, not in its init's.
    blocked(attempts, "token_in_pid1_environ");
    blocked(attempts, "token_in_own_environ");

    // The filesystem: read-only root, app and socket directories; a sized, noexec /tmp.
    // gVisor checks the uid's permission before the mount's read-only flag (EACCES where
    // Linux says EROFS), and answers an unrouted address with EHOSTUNREACH: refused either way.
    let read_only: &[i64] = match isolation {
        Isolation::Container => &[EROFS],
        Isolation::Gvisor => &[EROFS, EACCES],
    };
    let unreachable: &[i64] = match isolation {
        Isolation::Container => &[ENETUNREACH],
        Isolation::Gvisor => &[ENETUNREACH, EHOSTUNREACH],
    };
    let refused = |name: &str, allowed: &[i64]| {
        let line = blocked(attempts, name);
        assert!(
            errno(&line).is_some_and(|e| allowed.contains(&e)),
            "{name}: {line}, expected one of {allowed:?}"
        );
    };
    refused("write_root", read_only);
    let app_binary = blocked(attempts, "write_app_binary");
    // Not writable by the app's uid, on a read-only mount, and busy: any of the three.
    assert!(
        matches!(errno(&app_binary), Some(EROFS | EACCES | ETXTBSY)),
        "{app_binary}"
    );
    refused("write_app_dir", read_only);
    refused("write_socket_dir", read_only);
    let tmp = blocked(attempts, "tmp_beyond_size");
    assert_eq!(errno(&tmp), Some(ENOSPC), "{tmp}");
    assert!(tmp["bytes"].as_u64().unwrap() <= 64 << 20, "{tmp}");
    assert_eq!(errno(&blocked(attempts, "exec_tmp")), Some(EACCES));

    // Other apps: their socket directory, credentials and socket are not even visible.
    blocked(attempts, "read_other_socket_dir");
    blocked(attempts, "read_other_credentials");
    blocked(attempts, "connect_other_socket");
    blocked(attempts, "docker_socket");

    // The network: no route anywhere, only loopback.
    refused("net_tcp", unreachable);
    refused("net_udp_dns", unreachable);
    blocked(attempts, "net_dns_lookup");
    assert_eq!(
        blocked(attempts, "net_interfaces")["interfaces"],
        json!(["lo"])
    );

    // Privileges: no capabilities, no new privileges, no mounts, no raw sockets.
    for name in ["mount", "remount_root", "raw_socket", "packet_socket"] {
        let line = blocked(attempts, name);
        assert!(
            matches!(errno(&line), Some(EPERM) | Some(EACCES)),
            "{name}: {line}"
        );
    }
    let setuid = blocked(attempts, "setuid");
    assert_eq!(setuid["no_new_privs"], "1");
    assert_ne!(setuid["uid"], 0, "the app runs as a non-root uid");
    blocked(attempts, "capabilities");
    // ptrace: refused, or at most the container's own init, which runs as the app's uid;
    // no process of any other uid is even visible.
    let ptrace = attempt(attempts, "ptrace");
    if ptrace["outcome"] != "blocked" {
        assert_eq!(ptrace["target_uid"], ptrace["own_uid"], "{ptrace}");
    }
    blocked(attempts, "see_other_processes");
    if is_root() {
        assert_ne!(ptrace["own_uid"], 0);
    }

    // Resources: the pids, CPU and memory limits hold.
    let fork = blocked(attempts, "fork_bomb");
    assert_eq!(errno(&fork), Some(EAGAIN), "{fork}");
    assert!(fork["spawned"].as_u64().unwrap() < PIDS, "{fork}");
    let cpu = blocked(attempts, "cpu_spin");
    let cores = cpu["cores"].as_f64().unwrap();
    // Under runc the app's own count is the kernel's; under gVisor it is the sentry's,
    // which counts time its tasks were runnable, so there the host's count (checked by the
    // caller) is the one that holds.
    assert!(
        isolation == Isolation::Gvisor || cores <= CPUS * 1.5,
        "4 spinning threads got {cores:.2} cores with a limit of {CPUS}"
    );
    if let Some(throttled) = cpu["throttled"].as_u64() {
        assert!(throttled > 0, "never throttled: {cpu}");
    }
    if isolation == Isolation::Container {
        let hog = blocked(attempts, "memory_hog");
        assert!(hog["mib"].as_u64().unwrap() <= MEMORY_MIB, "{hog}");
    }

    // The daemon: grants, replay and forgery.
    assert_eq!(
        attempt(attempts, "control_query_post")["outcome"],
        "allowed",
        "a granted query must work"
    );
    for name in [
        "beyond_grants_query",
        "beyond_grants_mutation",
        "beyond_grants_update",
        "beyond_grants_history",
        "beyond_grants_create_schema",
        "beyond_grants_delete_schema",
        "beyond_grants_list_schemas",
    ] {
        blocked(attempts, name);
    }
    for (name, code) in [
        ("replay_same_request", "replay"),
        ("replay_stale_timestamp", "replay"),
        ("replay_future_timestamp", "replay"),
        ("forge_bad_signature", "bad_signature"),
        ("forge_other_key", "bad_signature"),
        ("forge_tampered_params", "bad_signature"),
        ("forge_wrong_token", "unauthenticated"),
        ("forge_other_app_id", "unauthenticated"),
        ("forge_unsigned", "bad_signature"),
    ] {
        assert_eq!(blocked(attempts, name)["code"], code, "{name}");
    }
}
