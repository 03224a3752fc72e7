//! The Docker backend against a real engine. Every test is
//! `#[ignore = "needs a Docker engine"]` (a run without an engine reports it ignored;
//! `scripts/test.sh` runs them with `--include-ignored` when an engine answers, and CI
//! requires one), starts with [`setup`], uses the local base image and the static `test_app`, and its own
//! daemon label, so tests running in parallel never see each other's containers.
//!
//! As root (CI) the daemons use per-app uids, as a real root daemon does: containers then
//! run as their app's non-root uid, which owns the app's socket directory.

mod adoption;
mod events;
mod gvisor_tier;
mod hardening;
pub mod lifecycle;
mod podman_engine;
pub mod warm;

use fold_client::admin::protocol::{
    InstallRequest, InstallResponse, LaunchRequest, PsRequest, PsRow, RestartMode,
};
use fold_client::admin::{AdminCall, AdminClient};
use fold_client::config::{Config, FileConfig, Overrides};
use fold_client::daemon::{self, Shared};
use fold_client::sandbox::IsolationRequest;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// How a suite's app is started: a cold launch creates its container; a warm one takes a
/// prepared container from the app's pool (`--warm 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Cold,
    Warm,
}

/// The test app binary (static) and the image to run it in.
pub struct Env {
    pub app: PathBuf,
    pub image: String,
}

/// Builds what the container tests need; fails without an engine (the tests that call it
/// are `#[ignore = "needs a Docker engine"]`, run with `--include-ignored`).
pub fn setup() -> Env {
    fold_testkit::need_docker();
    let image = fold_testkit::ensure_base_image().expect("base image");
    let app =
        fold_testkit::build_static_binary("fixture-test_app", "test_app").expect("static test_app");
    Env { app, image }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A label and uid base of its own for each daemon of this test process.
fn unique() -> (String, u32) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let label = format!("it-{}-{n}", std::process::id());
    let base = 400_000 + (std::process::id() % 1000) * 1000 + n * 20;
    (label, base)
}

/// The config file text of a test daemon: per-app uids when root, its own label, short
/// grace and backoff.
pub fn config_text(label: &str, uid_base: u32, extra: &str) -> String {
    let uid_mode = if is_root() { "per_app" } else { "daemon" };
    format!(
        "uid_mode = \"{uid_mode}\"\nuid_base = {uid_base}\ndaemon_label = \"{label}\"\n\
         stop_grace_ms = 1000\nrestart_backoff_ms = 100\n{extra}"
    )
}

pub fn build_config(state: &Path, text: &str) -> Config {
    let mut file = FileConfig::parse(text, Path::new("test.toml")).unwrap();
    // uid reservations beside the state, not in the host's shared directory.
    file.uid_reservation_dir
        .get_or_insert_with(|| state.with_file_name("uids"));
    let over = Overrides {
        state_dir: Some(state.to_path_buf()),
        docker_host: Some(fold_testkit::docker_host()),
        ..Overrides::default()
    };
    Config::build(file, over, nix::unistd::geteuid().as_raw()).unwrap()
}

/// Removes every container carrying `io.foldclient.daemon=<label>` when dropped, so a
/// failing test leaves nothing running on the engine.
pub struct LabelCleanup(pub String);

impl Drop for LabelCleanup {
    fn drop(&mut self) {
        let label = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let docker = fold_testkit::connect_docker().await.unwrap();
                for id in containers_of(&label).await {
                    let _ = fold_testkit::remove_container_if_exists(&docker, &id).await;
                }
            });
        })
        .join();
    }
}

/// An in-process daemon with its own label.
pub struct DockerDaemon {
    pub shared: Arc<Shared>,
    pub config: Config,
    pub dir: tempfile::TempDir,
    /// Removes the label's containers when the test ends, however it ends.
    pub _cleanup: LabelCleanup,
}

impl DockerDaemon {
    pub async fn start(extra: &str) -> DockerDaemon {
        let dir = tempfile::Builder::new()
            .prefix("fcd")
            .tempdir_in("/tmp")
            .unwrap();
        let (label, base) = unique();
        let config = build_config(&dir.path().join("state"), &config_text(&label, base, extra));
        let shared = daemon::start(config.clone()).await.unwrap();
        DockerDaemon {
            shared,
            _cleanup: LabelCleanup(config.daemon_label.clone()),
            config,
            dir,
        }
    }

    pub async fn admin<R: AdminCall>(&self, request: R) -> Result<R::Response, String> {
        call(&self.config.admin_socket, request).await
    }

    /// Installs the test app as `name` (grants on schema `post`); returns its view.
    pub async fn install(&self, name: &str, env: &Env, memory: Option<&str>) -> InstallResponse {
        self.install_as(name, env, memory, None).await
    }

    /// [`DockerDaemon::install`] asking for an isolation tier (`None`: the config's).
    pub async fn install_as(
        &self,
        name: &str,
        env: &Env,
        memory: Option<&str>,
        isolation: Option<IsolationRequest>,
    ) -> InstallResponse {
        let mut request = install_request(name, &env.app, &env.image, memory);
        request.isolation = isolation;
        call(&self.config.admin_socket, request).await.unwrap()
    }

    pub async fn stop(self) {
        daemon::stop(&self.shared).await;
    }
}

/// Sends `request` (deadline 300 s): the typed answer, or why it failed.
pub async fn call<R: AdminCall>(socket: &Path, request: R) -> Result<R::Response, String> {
    AdminClient::new(socket, Duration::from_secs(300))
        .call(request)
        .await
        .map_err(|e| e.to_string())
}

pub async fn install(
    socket: &Path,
    name: &str,
    binary: &Path,
    image: &str,
    memory: Option<&str>,
) -> InstallResponse {
    call(socket, install_request(name, binary, image, memory))
        .await
        .unwrap()
}

/// The test apps' install: grants on `post`, half a CPU, 32 pids.
pub fn install_request(
    name: &str,
    binary: &Path,
    image: &str,
    memory: Option<&str>,
) -> InstallRequest {
    let mut install = InstallRequest::new(name, binary);
    install.grants = vec!["*:post".parse().unwrap()];
    install.image = Some(image.into());
    install.memory_bytes = memory.map(|m| fold_client::admin::parse_size(m).unwrap());
    install.cpus = Some(0.5);
    install.pids = Some(32);
    install
}

/// A launch with explicit options.
pub fn launch(
    app: &str,
    args: &[&str],
    restart: RestartMode,
    max_restarts: Option<u32>,
) -> LaunchRequest {
    LaunchRequest {
        args: args.iter().map(ToString::to_string).collect(),
        restart: Some(restart),
        max_restarts,
        ..LaunchRequest::new(app)
    }
}

/// Waits until the file at `path` contains `needle`; returns its text.
pub async fn wait_for_text(path: &Path, needle: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < within,
            "{needle:?} not in {} after {within:?}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON lines the app printed to stdout (from its log), for one step.
pub fn steps(log: &str, step: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["step"] == step)
        .collect()
}

/// The engine's view of a container; `None` once it is gone.
pub async fn inspect(id: &str) -> Option<bollard::models::ContainerInspectResponse> {
    let docker = fold_testkit::connect_docker().await.unwrap();
    match docker.inspect_container(id, None).await {
        Ok(c) => Some(c),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => None,
        Err(e) => panic!("inspect {id}: {e}"),
    }
}

/// Container ids carrying `io.foldclient.daemon=<label>`.
pub async fn containers_of(label: &str) -> Vec<String> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let docker = fold_testkit::connect_docker().await.unwrap();
    let filter = format!("io.foldclient.daemon={label}");
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&std::collections::HashMap::from([(
            "label",
            vec![filter.as_str()],
        )]))
        .build();
    let mut ids: Vec<String> = docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

/// The ps row of `name`.
pub async fn ps_row(socket: &Path, name: &str) -> Option<PsRow> {
    let rows = call(socket, PsRequest {}).await.unwrap();
    rows.apps.into_iter().find(|r| r.name == name)
}

/// Runs `cmd` in container `id` as `user` (`uid:gid`), as `docker exec` does; returns its
/// exit code and its output (stdout and stderr together).
pub async fn exec_in(id: &str, user: &str, cmd: &[&str]) -> (i64, String) {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    let docker = fold_testkit::connect_docker().await.unwrap();
    let options = CreateExecOptions {
        cmd: Some(cmd.to_vec()),
        user: Some(user),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(id, options).await.unwrap();
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.unwrap()
    {
        let read = async {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&chunk.to_string());
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("exec ended");
    }
    let code = docker.inspect_exec(&exec.id).await.unwrap().exit_code;
    (code.unwrap_or(-1), text)
}
