//! Daemon restarts and neighbours: a daemon killed with SIGKILL and restarted adopts its
//! running app, which keeps working without a relaunch; two daemons with different labels
//! on one engine never see or remove each other's containers; `doctor` reports the engine.

use super::{
    build_config, call, config_text, containers_of, inspect, install, launch, ps_row, setup,
    wait_for_text, DockerDaemon, TIMEOUT,
};
use fold_client::admin::protocol::{PsRequest, RestartMode, StatusRequest, StopRequest};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `fold_client serve` as a child process; SIGKILLed on drop.
pub struct ChildDaemon(Child);

impl ChildDaemon {
    fn spawn(state: &Path, config_file: &Path, log: &Path) -> ChildDaemon {
        let stderr = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fold_client"))
            .arg("--state-dir")
            .arg(state)
            .arg("--config")
            .arg(config_file)
            .arg("serve")
            .env("DOCKER_HOST", fold_testkit::docker_host())
            .env("FOLD_CLIENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        ChildDaemon(child)
    }

    pub fn signal(&mut self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let _ = self.0.wait();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Where a test runs `fold_client serve` as a child: its own state, config file, log and
/// container label (whose containers are removed when it is dropped).
pub struct ChildPlace {
    /// The daemon's config, as the child builds it.
    pub config: fold_client::config::Config,
    /// The children's stderr.
    pub daemon_log: std::path::PathBuf,
    state: std::path::PathBuf,
    config_file: std::path::PathBuf,
    _cleanup: super::LabelCleanup,
    _dir: tempfile::TempDir,
}

impl ChildPlace {
    /// A place labelled `it-<tag>-<pid>` whose per-app uids start near `uid_base`.
    pub fn new(tag: &str, uid_base: u32) -> ChildPlace {
        let dir = tempfile::Builder::new()
            .prefix("fck")
            .tempdir_in("/tmp")
            .unwrap();
        let state = dir.path().join("state");
        let label = format!("it-{tag}-{}", std::process::id());
        let text = config_text(&label, uid_base + std::process::id() % 1000 * 20, "");
        let config_file = dir.path().join("fold.toml");
        std::fs::write(&config_file, &text).unwrap();
        ChildPlace {
            config: build_config(&state, &text),
            daemon_log: dir.path().join("daemon.log"),
            state,
            config_file,
            _cleanup: super::LabelCleanup(label),
            _dir: dir,
        }
    }

    /// Starts a daemon here.
    pub fn spawn(&self) -> ChildDaemon {
        ChildDaemon::spawn(&self.state, &self.config_file, &self.daemon_log)
    }
}

pub async fn wait_admin(socket: &Path) {
    let start = Instant::now();
    while call(socket, StatusRequest {}).await.is_err() {
        assert!(start.elapsed() < TIMEOUT, "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn allowed(audit: &Path, app_id: &str) -> usize {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(app_id) && l.contains("\"verdict\":\"allow\""))
        .count()
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_with_sigkill_adopts_the_running_app_on_restart() {
    let env = setup();
    let place = ChildPlace::new("kill", 450_000);
    let (config, socket) = (&place.config, place.config.admin_socket.clone());

    let mut first = place.spawn();
    wait_admin(&socket).await;
    let view = install(&socket, "steady", &env.app, &env.image, None).await;
    let app_id = view.app.id.clone();
    let log = view.app.log.clone();
    let r = call(
        &socket,
        launch("steady", &["serve", "200"], RestartMode::Never, None),
    )
    .await
    .unwrap();
    let id = r.container.clone().unwrap();
    wait_for_text(&log, "\"n\":2,\"ok\":true", TIMEOUT).await;
    let started_at = inspect(&id).await.unwrap().state.unwrap().started_at;
    // A second app that ends while the daemon is down.
    let brief = install(&socket, "brief", &env.app, &env.image, None).await;
    let rb = call(
        &socket,
        launch(
            "brief",
            &["sleep", "2", "exit", "4"],
            RestartMode::Never,
            None,
        ),
    )
    .await
    .unwrap();
    let brief_id = rb.container.clone().unwrap();

    first.signal(nix::sys::signal::Signal::SIGKILL);
    // Let "brief" end while no daemon watches.
    let start = Instant::now();
    while inspect(&brief_id)
        .await
        .and_then(|c| c.state)
        .and_then(|s| s.running)
        == Some(true)
    {
        assert!(start.elapsed() < TIMEOUT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        inspect(&id).await.unwrap().state.unwrap().running,
        Some(true),
        "app outlives the daemon"
    );
    let before = allowed(&config.audit_path(), &app_id);

    let _second = place.spawn();
    wait_admin(&socket).await;
    let ps = ps_row(&socket, "steady").await.expect("adopted app listed");
    assert_eq!(ps.state, "running", "{ps:?}");
    assert_eq!(ps.container.as_deref(), Some(&id[..12]), "{ps:?}");
    assert_eq!(ps.note.as_deref(), Some("adopted after a daemon restart"));
    // The one that ended meanwhile: its exit is reported, its container removed.
    let ps = ps_row(&socket, "brief").await.expect("ended app listed");
    assert_eq!(ps.state, "exited(4)", "{ps:?}");
    assert!(inspect(&brief_id).await.is_none(), "finalized and removed");
    let brief_log = std::fs::read_to_string(&brief.app.log).unwrap();
    assert!(
        brief_log.contains("ended while the daemon was down"),
        "{brief_log}"
    );

    // Its next requests succeed, through the re-bound socket in the same directory.
    let start = Instant::now();
    while allowed(&config.audit_path(), &app_id) < before + 4 {
        assert!(
            start.elapsed() < TIMEOUT,
            "no requests after the restart:\n{}",
            std::fs::read_to_string(&place.daemon_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = inspect(&id).await.expect("same container");
    assert_eq!(
        after.state.unwrap().started_at,
        started_at,
        "not relaunched"
    );
    let text = wait_for_text(&log, "adopted running container", TIMEOUT).await;
    let tail = &text[text.find("adopted running container").unwrap()..];
    assert!(
        tail.contains("\"ok\":true"),
        "output followed after adoption: {tail}"
    );

    let stopped = call(
        &socket,
        StopRequest {
            app: "steady".into(),
            grace: Some(Duration::from_secs(1)),
        },
    )
    .await
    .unwrap();
    assert_eq!(stopped.state, "stopped");
    assert!(inspect(&id).await.is_none());
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_with_different_labels_never_touch_each_others_containers() {
    let env = setup();
    let a = DockerDaemon::start("").await;
    let b = DockerDaemon::start("").await;
    assert_ne!(a.config.daemon_label, b.config.daemon_label);
    a.install("alpha", &env, None).await;
    b.install("beta", &env, None).await;
    let ra = a
        .admin(launch("alpha", &["sleep", "120"], RestartMode::Never, None))
        .await
        .unwrap();
    let rb = b
        .admin(launch("beta", &["sleep", "120"], RestartMode::Never, None))
        .await
        .unwrap();
    let (ia, ib) = (ra.container.clone().unwrap(), rb.container.clone().unwrap());
    assert_eq!(
        containers_of(&a.config.daemon_label).await,
        vec![ia.clone()]
    );
    assert_eq!(
        containers_of(&b.config.daemon_label).await,
        vec![ib.clone()]
    );
    let ps_b = b.admin(PsRequest {}).await.unwrap();
    assert_eq!(ps_b.apps.len(), 1, "{ps_b:?}");
    assert_eq!(ps_b.apps[0].name, "beta");

    // B shuts down (stopping its apps) and starts again (adopting its own): A's container
    // is neither stopped, nor removed, nor adopted.
    let b_config = b.config.clone();
    let b_dir = b.dir;
    fold_client::daemon::stop(&b.shared).await;
    assert!(inspect(&ib).await.is_none(), "B removed its own container");
    let b2 = fold_client::daemon::start(b_config.clone()).await.unwrap();
    assert_eq!(b2.supervisor.state(&ra.id), None);
    let ps_b = call(&b_config.admin_socket, PsRequest {}).await.unwrap();
    assert!(ps_b.apps.iter().all(|r| r.name != "alpha"), "{ps_b:?}");
    fold_client::daemon::stop(&b2).await;
    drop(b_dir);
    let c = inspect(&ia).await.expect("A's container untouched");
    assert_eq!(c.state.unwrap().running, Some(true));
    assert_eq!(
        ps_row(&a.config.admin_socket, "alpha").await.unwrap().state,
        "running"
    );
    a.stop().await;
    assert!(inspect(&ia).await.is_none());
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_engine_storage_init_and_socket_modes() {
    let _env = setup();
    let d = DockerDaemon::start(&format!("default_image = \"{}\"", fold_testkit::BASE_IMAGE)).await;
    let (checks, code) = doctor(&d).await;
    let check = |name: &str| check_named(&checks, name);
    assert_eq!(check("daemon")["status"], "ok");
    let engine = check("engine");
    assert_eq!(engine["status"], "ok", "{engine}");
    assert!(
        engine["detail"].as_str().unwrap().contains("API"),
        "{engine}"
    );
    assert_eq!(check("cgroups")["status"], "ok");
    let storage = check("storage-opt");
    assert!(["ok", "warn"].contains(&storage["status"].as_str().unwrap()));
    if storage["status"] == "warn" {
        assert!(
            storage["detail"].as_str().unwrap().contains("not enforced"),
            "{storage}"
        );
        assert!(storage["fix"].is_string());
    }
    let init = check("init");
    assert_eq!(init["status"], "ok", "{init}");
    assert!(
        init["detail"].as_str().unwrap().contains("probed"),
        "{init}"
    );
    assert_eq!(check("image")["status"], "ok");
    assert_eq!(check("socket root")["status"], "ok", "{checks}");
    let isolation = check("isolation");
    assert_eq!(isolation["status"], "ok", "{isolation}");
    let offered = if fold_testkit::gvisor_available() {
        "offers isolation container, gvisor"
    } else {
        "offers isolation container"
    };
    assert!(
        isolation["detail"].as_str().unwrap().contains(offered),
        "{isolation}"
    );
    assert_eq!(code, Some(0), "{checks}");
    d.stop().await;
}

/// Runs `fold_client --json doctor` against `d`'s state and engine: its checks and exit code.
pub async fn doctor(d: &DockerDaemon) -> (serde_json::Value, Option<i32>) {
    let state = d.config.state_dir.clone();
    let config_file = d.dir.path().join("fold.toml");
    std::fs::write(
        &config_file,
        format!(
            "uid_mode = \"{}\"\ndefault_image = \"{}\"\n",
            if super::is_root() {
                "per_app"
            } else {
                "daemon"
            },
            fold_testkit::BASE_IMAGE
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fold_client"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config_file)
            .args(["--json", "doctor"])
            .env("DOCKER_HOST", fold_testkit::docker_host())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let checks: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (checks, out.status.code())
}

/// The check called `name`; fails the test when there is none.
pub fn check_named(checks: &serde_json::Value, name: &str) -> serde_json::Value {
    checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks}"))
        .clone()
}
