//! The Docker backend: each app in a hardened container. The only module that imports
//! bollard (with its submodules).
//!
//! - [`spec`]: the container an app gets (name, labels, mounts, limits, hardening).
//! - `engine`: engine calls, each with a deadline; 404 and 409 on removal count as done.
//! - `lifecycle`: launch, stop, finalize (exit state, log drain, removal).
//! - `adopt`: finding and taking over this daemon's containers after a restart.
//! - `events`: the engine's event stream drives every state change; no polling loop.
//! - `logs`: stdout and stderr into the per-app log file, which outlives the container.
//! - [`report`]: storage-limit support (detected once) and the engine half of `doctor`.
//! - `elf`: warns when a glibc-dynamic binary meets a musl or busybox image.
//!
//! Containers carry `io.foldclient.daemon = <daemon_label>`: a daemon lists, adopts, stops
//! and removes only containers with its own label, never anyone else's.

mod adopt;
mod elf;
mod engine;
mod events;
mod lifecycle;
mod logs;
pub mod report;
pub mod spec;

pub use elf::{image_mismatch, linkage, Linkage};
pub use report::{engine_report, EngineReport, StorageSupport};
pub use spec::{container_name, LABEL_APP, LABEL_DAEMON, SOCKET_MOUNT};

use super::logfile::LogFile;
use super::{AppState, LaunchSpec, Sandbox, SandboxError, SandboxKind};
use crate::config::Config;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the backend needs from the configuration.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Engine address.
    pub host: String,
    /// This daemon's label value.
    pub label: String,
    /// Deadline of one engine request.
    pub engine_timeout: Duration,
    /// Deadline of one image pull.
    pub pull_timeout: Duration,
    /// Writable-layer limit, used only where the engine supports it.
    pub storage_limit: Option<u64>,
    /// Default stop grace (recorded as the container's stop timeout).
    pub grace: Duration,
}

impl DockerSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> DockerSettings {
        DockerSettings {
            host: config.docker_host.clone(),
            label: config.daemon_label.clone(),
            engine_timeout: config.engine_timeout,
            pull_timeout: config.pull_timeout,
            storage_limit: config.storage_limit,
            grace: config.stop_grace,
        }
    }
}

/// A started container.
#[derive(Debug, Clone)]
pub struct Launched {
    /// Its state right after the start.
    pub state: AppState,
    /// The container's id.
    pub container_id: String,
    /// Things the user should know (storage limit not enforced, binary/image mismatch).
    pub warnings: Vec<String>,
}

/// A container of this daemon found in the engine (daemon restart).
#[derive(Debug, Clone)]
pub struct Found {
    /// The app it runs.
    pub app_id: String,
    /// The container's id.
    pub container_id: String,
    /// Whether it is still running.
    pub running: bool,
    /// Its labels (the supervisor keeps its launch options there).
    pub labels: HashMap<String, String>,
    /// Arguments it was started with.
    pub args: Vec<String>,
    /// Its image.
    pub image: String,
}

/// Runs apps in hardened Docker containers.
#[derive(Debug, Clone)]
pub struct DockerSandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    docker: engine::Engine,
    settings: DockerSettings,
    storage: Mutex<StorageSupport>,
    apps: Mutex<HashMap<String, Arc<Entry>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// One launch (or adoption) of one app.
#[derive(Debug)]
struct Entry {
    app_id: String,
    container: Mutex<Option<String>>,
    state: watch::Sender<AppState>,
    stop_requested: AtomicBool,
    /// The engine reported an OOM kill of some process of the container (`oom` event).
    oom: AtomicBool,
    /// What the final state cannot say about the run (see `lifecycle::exit_state`).
    exit_note: Mutex<Option<&'static str>>,
    finalizing: AtomicBool,
    log: LogFile,
    pump: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Entry {
    fn container(&self) -> Option<String> {
        lock(&self.container).clone()
    }
}

impl DockerSandbox {
    /// Connects to the engine, reads what it supports, and starts following its events
    /// (until `shutdown`). Background work is spawned on `tasks`.
    ///
    /// # Errors
    ///
    /// The engine is not reachable (the error says how to fix it).
    pub async fn connect(
        settings: DockerSettings,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<DockerSandbox, SandboxError> {
        let timeout = settings.engine_timeout;
        let docker = engine::connect(&settings.host, timeout).await?;
        let storage =
            match engine::call_ok(&docker, timeout, "reading engine info", docker.info()).await {
                Ok(info) => StorageSupport::from_info(&info),
                Err(e) => StorageSupport::Unsupported(format!("engine info unavailable: {e}")),
            };
        let inner = Arc::new(Inner {
            docker,
            settings,
            storage: Mutex::new(storage),
            apps: Mutex::new(HashMap::new()),
            tasks,
            shutdown,
        });
        events::spawn(&inner);
        Ok(DockerSandbox { inner })
    }

    /// Launches `spec` in a new container carrying `labels` besides the app and daemon
    /// labels. Pulls the image if missing.
    ///
    /// # Errors
    ///
    /// Already running, image unavailable, or the engine refused (its message, with a fix).
    pub async fn launch_with(
        &self,
        spec: &LaunchSpec,
        labels: &HashMap<String, String>,
    ) -> Result<Launched, SandboxError> {
        lifecycle::launch(&self.inner, spec, labels).await
    }

    /// This daemon's containers (by label), running or not.
    ///
    /// # Errors
    ///
    /// The engine did not answer.
    pub async fn find_ours(&self) -> Result<Vec<Found>, SandboxError> {
        adopt::find_ours(&self.inner).await
    }

    /// Takes over a container found after a daemon restart: its state, output and events.
    /// A container that has exited meanwhile is finalized (state read, removed).
    ///
    /// # Errors
    ///
    /// The log cannot be opened or the engine did not answer.
    pub async fn adopt(&self, spec: &LaunchSpec, found: &Found) -> Result<AppState, SandboxError> {
        adopt::adopt(&self.inner, spec, found).await
    }

    /// Kills and removes a container of this daemon that no installed app owns.
    ///
    /// # Errors
    ///
    /// The engine did not answer.
    pub async fn discard(&self, container_id: &str) -> Result<(), SandboxError> {
        let timeout = self.inner.settings.engine_timeout;
        engine::remove(&self.inner.docker, timeout, container_id).await
    }

    /// The id of the app's current (or last) container.
    pub fn container_id(&self, app_id: &str) -> Option<String> {
        lock(&self.inner.apps)
            .get(app_id)
            .and_then(|e| e.container())
    }

    /// The app's current (or last) container and its state.
    pub fn current(&self, app_id: &str) -> Option<(String, AppState)> {
        let entry = lock(&self.inner.apps).get(app_id).cloned()?;
        let id = entry.container()?;
        let state = entry.state.borrow().clone();
        Some((id, state))
    }

    /// Whether this engine limits container storage, as known so far.
    pub fn storage(&self) -> StorageSupport {
        lock(&self.inner.storage).clone()
    }
}

/// Makes sure the engine at `host` has `image`, pulling it with `progress` (the CLI prints
/// it) if not. Returns `Ok(false)` when the engine is not reachable from here (the daemon
/// then pulls, or reports the problem, itself).
///
/// # Errors
///
/// The image is missing and cannot be had (the error names it and how to provide it).
pub async fn prepare_image(
    host: &str,
    timeout: Duration,
    pull_timeout: Duration,
    image: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<bool, SandboxError> {
    let Ok(docker) = engine::connect(host, timeout).await else {
        return Ok(false);
    };
    engine::ensure_image(&docker, timeout, pull_timeout, image, progress).await?;
    Ok(true)
}

impl Sandbox for DockerSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Docker
    }

    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        async move {
            let launched = self.launch_with(spec, &HashMap::new()).await?;
            Ok(launched.state)
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        app_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        lifecycle::stop(&self.inner, app_id, grace).boxed()
    }

    fn state(&self, app_id: &str) -> Option<AppState> {
        lock(&self.inner.apps)
            .get(app_id)
            .map(|e| e.state.borrow().clone())
    }

    fn exit_note(&self, app_id: &str) -> Option<String> {
        let entry = lock(&self.inner.apps).get(app_id).cloned()?;
        let note = *lock(&entry.exit_note);
        note.map(str::to_string)
    }

    fn wait<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, Option<AppState>> {
        let rx = lock(&self.inner.apps)
            .get(app_id)
            .map(|e| e.state.subscribe());
        async move {
            let mut rx = rx?;
            let state = rx.wait_for(|s| !s.is_live()).await.ok()?.clone();
            Some(state)
        }
        .boxed()
    }
}
