//! Faults: the daemon or the node killed with SIGKILL in the middle of work, then restarted.
//!
//! These tests run the real binaries as child processes (`fold_client serve`, `fold_node`),
//! so a SIGKILL is a real crash: no destructor, no flush, no goodbye on the sockets.

use crate::support::start_daemon;
use fold_ipc::client::{Client, ClientBuilder};
use fold_ipc::query::Query;
use fold_ipc::schema::SchemaDef;
use fold_ipc::{Credentials, ErrorCode};
use serde_json::json;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `fold_client serve` child process on a state directory under `dir`.
pub struct ChildDaemon {
    child: Option<Child>,
    /// The config file the daemon reads.
    pub config_file: PathBuf,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// Paths the daemon derived from its config (socket root, admin socket, audit).
    pub config: fold_client::config::Config,
    log: PathBuf,
    /// `--log`.
    filter: String,
}

impl ChildDaemon {
    /// Starts `fold_client serve` with `uid_mode = "daemon"` plus `extra` in its config file,
    /// and waits until its admin socket answers.
    pub fn start(dir: &Path, extra: &str) -> ChildDaemon {
        ChildDaemon::start_logging(dir, extra, "warn")
    }

    /// Like [`ChildDaemon::start`], logging at `filter` (e.g. `debug`).
    pub fn start_logging(dir: &Path, extra: &str, filter: &str) -> ChildDaemon {
        let config_file = dir.join("daemon.toml");
        std::fs::write(&config_file, format!("uid_mode = \"daemon\"\n{extra}\n")).unwrap();
        let state_dir = dir.join("state");
        let config = crate::support::config_in(dir, extra);
        assert_eq!(config.state_dir, state_dir);
        let mut daemon = ChildDaemon {
            child: None,
            config_file,
            state_dir,
            config,
            log: dir.join("daemon.log"),
            filter: filter.to_string(),
        };
        daemon.spawn();
        daemon
    }

    /// (Re)starts the process on the same state directory.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fold_client"))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config")
            .arg(&self.config_file)
            .args(["serve", "--log", &self.filter])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.config.admin_socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("daemon exited at start ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `(VmRSS, VmHWM)` of the daemon in KiB: resident memory now, and its peak.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a graceful stop), and reap.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "daemon exited with {status} after SIGTERM: {}",
                self.log_text()
            );
        }
    }

    /// Runs the CLI against this daemon (`fold_client --json ...`); returns its JSON output.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_fold_client"))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config")
            .arg(&self.config_file)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fold_client {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Installs an app through the CLI; returns the credentials the daemon wrote for it.
    pub fn install(&self, name: &str, grants: &[&str], auth: Option<&str>) -> Credentials {
        let mut args = vec!["app", "install", name, "--direct", "--binary", "/bin/true"];
        for grant in grants {
            args.extend(["--grant", grant]);
        }
        if let Some(auth) = auth {
            args.extend(["--auth", auth]);
        }
        let view = self.cli(&args);
        let path = view["credentials"]
            .as_str()
            .unwrap_or_else(|| panic!("no credentials path in {view}"));
        Credentials::load(Path::new(path)).unwrap()
    }

    /// The app's socket.
    pub fn socket(&self, app_id: &str) -> PathBuf {
        self.config
            .socket_root
            .join(app_id)
            .join(format!("{app_id}.sock"))
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A polite stop first, so the daemon removes its sockets; then make sure.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every record id of `schema`, page by page.
async fn all_ids(client: &Client, schema: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut query = Query::new(schema).fields(Vec::<String>::new()).limit(1000);
    loop {
        let page = client.query(query.clone()).await.unwrap();
        ids.extend(
            page.rows
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        match page.next_cursor {
            Some(cursor) => query = query.cursor(cursor),
            None => return ids,
        }
    }
}

/// What a writer task saw: acknowledged ids, in the phase they were acknowledged in, and
/// the errors it met.
#[derive(Debug, Default)]
struct Writes {
    acked: Vec<(String, i64, u8)>,
    errors: Vec<String>,
}

/// Creates `entry` records with increasing `n` until `stop`; `phase` tags each ack.
fn writer(
    client: Client,
    task: i64,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Writes> {
    tokio::spawn(async move {
        let mut seen = Writes::default();
        let mut n = task * 1_000_000;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            match client.create("entry", json!({ "n": n })).await {
                Ok(r) => seen.acked.push((r.id, n, phase.load(Ordering::Relaxed))),
                Err(e) => {
                    seen.errors.push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        seen
    })
}

fn entry_schema() -> SchemaDef {
    serde_json::from_value(json!({"name": "entry", "fields": {"n": {"type": "int"}}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_mid_write_loses_no_acknowledged_write_and_clients_reconnect() {
    let dir = tempfile::Builder::new()
        .prefix("fk")
        .tempdir_in("/tmp")
        .unwrap();
    let mut d = ChildDaemon::start(dir.path(), "");
    let creds = d.install("writer", &["*:*"], None);
    let client = ClientBuilder::new(d.socket(&creds.app_id), creds)
        .timeout(Duration::from_secs(5))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    client.create_schema(entry_schema()).await.unwrap();

    // Four writers share the one client (one connection, many requests in flight).
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| writer(client.clone(), t, Arc::clone(&phase), Arc::clone(&stop)))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    d.kill9();
    phase.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.spawn();
    phase.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for w in writers {
        let w = w.await.unwrap();
        acked.extend(w.acked);
        errors.extend(w.errors);
    }
    let before = acked.iter().filter(|a| a.2 == 0).count();
    let after = acked.iter().filter(|a| a.2 == 2).count();
    assert!(before > 0, "no write acknowledged before the kill");
    assert!(
        after > 0,
        "the same client never got a write through after the restart; errors: {errors:?}"
    );
    assert!(
        !errors.is_empty(),
        "the kill went unnoticed: was the daemon busy?"
    );

    // Every write the node acknowledged is there, with its data.
    let present = all_ids(&client, "entry").await;
    let missing: Vec<_> = acked.iter().filter(|a| !present.contains(&a.0)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let (id, n, _) = &acked[acked.len() / 2];
    let history = client.history("entry", id).await.unwrap();
    assert_eq!(history.versions[0].data.as_ref().unwrap()["n"], json!(n));
    eprintln!(
        "{before} writes acknowledged before the kill, {after} after the restart, {} refused or cut off",
        errors.len()
    );
}

/// A `fold_node serve` child process on `data`, listening on `socket`.
struct ChildNode {
    child: Child,
}

impl ChildNode {
    fn start(binary: &Path, data: &Path, socket: &Path) -> ChildNode {
        let child = Command::new(binary)
            .arg("--data")
            .arg(data)
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "fold_node did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        ChildNode { child }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_write_gives_node_unavailable_and_the_daemon_recovers_by_itself() {
    let binary =
        tokio::task::spawn_blocking(|| fold_testkit::build_static_binary("fold_node", "fold_node"))
            .await
            .unwrap()
            .expect("building fold_node");
    let outer = tempfile::Builder::new()
        .prefix("fn")
        .tempdir_in("/tmp")
        .unwrap();
    let data = outer.path().join("data");
    let sock_dir = outer.path().join("node");
    std::fs::create_dir(&sock_dir).unwrap();
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = sock_dir.join("node.sock");
    let node = ChildNode::start(&binary, &data, &sock);
    // The writers write as fast as they can: no write rate limit, so every error they see
    // is the node's.
    let d = start_daemon(&format!(
        "node = \"unix:{}\"\nrequest_timeout_ms = 2000\n[app_limits]\nwrite_rate = 0\n",
        sock.display()
    ))
    .await;
    let creds = d.install("steady", &["*:*"], None).await;
    let client = ClientBuilder::new(d.socket(&creds.app_id), creds)
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    client.create_schema(entry_schema()).await.unwrap();

    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|t| writer(client.clone(), t, Arc::clone(&phase), Arc::clone(&stop)))
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    node.kill9();
    phase.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While the node is down, the daemon answers at once, and says what is wrong.
    let started = Instant::now();
    let err = client.create("entry", json!({"n": -1})).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NodeUnavailable), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        started.elapsed()
    );
    // Even `ping` goes through to the node, and says the same.
    let err = client.ping().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NodeUnavailable), "{err}");

    let _node = ChildNode::start(&binary, &data, &sock);
    phase.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for w in writers {
        let w = w.await.unwrap();
        acked.extend(w.acked);
        errors.extend(w.errors);
    }
    assert!(
        acked.iter().any(|a| a.2 == 0),
        "nothing written before the kill"
    );
    assert!(
        acked.iter().any(|a| a.2 == 2),
        "the daemon did not recover by itself; errors: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.contains("node unavailable") || e.contains("timed out")),
        "unexpected errors while the node was down: {errors:?}"
    );
    let present = all_ids(&client, "entry").await;
    let missing: Vec<_> = acked.iter().filter(|a| !present.contains(&a.0)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    d.stop().await;
}

/// A Docker engine of this test's own (`dockerd` on private sockets and directories, no
/// bridge, no iptables), so restarting it disturbs no other test: the shared engine and its
/// containers are never touched.
struct PrivateEngine {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateEngine {
    fn start() -> PrivateEngine {
        let dir = tempfile::Builder::new()
            .prefix("pe")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let mut engine = PrivateEngine { dir, child: None };
        engine.spawn();
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}/d.sock", self.dir.path().display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .unwrap()
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(self.host())
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("x"))
            .arg("--pidfile")
            .arg(d.join("d.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--cgroup-parent=fold_private_engine",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the private engine did not come up: {}",
                std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the engine the way an engine restart does (SIGTERM: it stops its containers).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            for id in
                String::from_utf8_lossy(&self.docker(&["ps", "-aq"]).stdout).split_whitespace()
            {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.stop();
    }
}

async fn ps_state(socket: &Path, name: &str) -> String {
    crate::docker::ps_row(socket, name)
        .await
        .map(|r| r.state)
        .unwrap_or_default()
}

#[ignore = "needs a Docker engine, root and dockerd (it runs a private engine)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_restarted_while_an_app_runs_shows_true_states_and_is_used_again() {
    use crate::docker::{call, config_text};
    use fold_client::admin::protocol::{InstallRequest, LaunchRequest, RestartMode};
    fold_testkit::need_docker();
    assert!(crate::docker::is_root(), "a private dockerd needs root");
    let has_dockerd = Command::new("dockerd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_dockerd,
        "no dockerd binary for a private engine (apt-get install docker.io)"
    );
    let image = fold_testkit::ensure_base_image().expect("base image");
    let binary = tokio::task::spawn_blocking(|| {
        fold_testkit::build_static_binary("fixture-hostile_app", "hostile_app")
    })
    .await
    .unwrap()
    .expect("static hostile_app");
    let mut engine = tokio::task::spawn_blocking(PrivateEngine::start)
        .await
        .unwrap();
    let load = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {image} | docker -H {} load",
            engine.host()
        ))
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );

    let dir = tempfile::Builder::new()
        .prefix("fe")
        .tempdir_in("/tmp")
        .unwrap();
    let label = format!("it-engine-{}", std::process::id());
    let text = config_text(&label, 470_000 + std::process::id() % 1000 * 20, "");
    let file = fold_client::config::FileConfig::parse(&text, Path::new("test.toml")).unwrap();
    let over = fold_client::config::Overrides {
        state_dir: Some(dir.path().join("state")),
        docker_host: Some(engine.host()),
        ..Default::default()
    };
    let config =
        fold_client::config::Config::build(file, over, nix::unistd::geteuid().as_raw()).unwrap();
    let shared = fold_client::daemon::start(config.clone()).await.unwrap();
    let admin = config.admin_socket.clone();
    let post =
        serde_json::from_value(json!({"name": "post", "fields": {"title": {"type": "string"}}}))
            .unwrap();
    shared
        .node
        .call(
            "test",
            fold_ipc::Operation::CreateSchema(post),
            Duration::from_secs(10),
            &fold_client::app_limits::NodeLimits::default().for_request(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let install = |name: &str| {
        let mut install = InstallRequest::new(name, &binary);
        install.grants = vec!["query:post".parse().unwrap()];
        install.image = Some(image.clone());
        install
    };
    let view = call(&admin, install("steady")).await.unwrap();
    let log = view.app.log;
    call(&admin, install("late")).await.unwrap();
    let launch = |app: &str| LaunchRequest {
        args: vec!["behave".into(), "100".into()],
        restart: Some(RestartMode::Never),
        ..LaunchRequest::new(app)
    };
    let served = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(r#""attempt":"behave""#) && l.contains(r#""ok":true"#))
            .count()
    };
    call(&admin, launch("steady")).await.unwrap();
    let started = Instant::now();
    while served(&log) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the app is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ps_state(&admin, "steady").await, "running");

    // The engine restarts under the running app.
    engine = tokio::task::spawn_blocking(move || {
        engine.stop();
        engine
    })
    .await
    .unwrap();
    // While it is down, launching another app is refused at once, not hung, with an error
    // that names the engine's address and the fix (not the HTTP client's "client error").
    let down = tokio::time::timeout(Duration::from_secs(60), call(&admin, launch("late"))).await;
    let refused = down
        .expect("a launch while the engine is down hung")
        .unwrap_err();
    eprintln!("launch while the engine is down: {refused}");
    assert!(
        refused.contains(&format!(
            "the Docker engine at {} is not answering (inspecting image {image}: ",
            engine.host()
        )),
        "{refused}"
    );
    assert!(
        refused.contains("dockerd") && refused.contains("DOCKER_HOST"),
        "{refused}"
    );
    assert!(!refused.contains("hyper"), "{refused}");
    engine = tokio::task::spawn_blocking(move || {
        engine.spawn();
        engine
    })
    .await
    .unwrap();

    // Afterwards the daemon shows the truth: the engine stopped the container, so the app is
    // no longer running, and the engine agrees.
    let started = Instant::now();
    let state = loop {
        let state = ps_state(&admin, "steady").await;
        if state != "running" && state != "starting" {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still shown as {state} after the engine stopped its container"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let listed = engine.docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.foldclient.daemon={label}"),
    ]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "the engine still runs a container the daemon shows as {state}"
    );
    assert!(
        state.starts_with("exited(") || state == "stopped",
        "after the engine restart the app is shown as {state}"
    );
    eprintln!("after the engine restart the app is shown as {state}");

    // And the daemon uses the engine again: the app relaunches and is served.
    let before = served(&log);
    call(&admin, launch("steady"))
        .await
        .expect("relaunch after the engine restart");
    let started = Instant::now();
    while served(&log) < before + 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not served after the engine restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ps_state(&admin, "steady").await, "running");
    fold_client::daemon::stop(&shared).await;
    drop(engine);
}
