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
//! - [`offer`]: which engine answers (Docker or Podman) and which isolation tiers it runs.
//! - `warm`: prepared containers a launch takes instead of starting one (warm pools).
//! - `reap`: what a removed container left on the host (gVisor's processes after a failed
//!   start) is killed.
//!
//! Containers carry `io.foldclient.daemon = <daemon_label>`: a daemon lists, adopts, stops
//! and removes only containers with its own label, never anyone else's.
//!
//! The daemon holds the backend as a [`LazyDocker`], which connects on first use; every
//! operation the supervisor needs is on the [`Sandbox`] trait.

mod adopt;
mod elf;
mod engine;
mod events;
mod lifecycle;
mod logs;
pub mod offer;
mod reap;
pub mod report;
pub mod spec;
mod warm;

pub use elf::{image_mismatch, linkage, Linkage};
pub use offer::{Flavor, Offer};
pub use report::{engine_report, EngineReport, StorageSupport};
pub use spec::{container_name, LABEL_APP, LABEL_DAEMON, SOCKET_MOUNT};

use super::logfile::LogFile;
use super::{
    AppState, Found, Isolation, LaunchSpec, Launched, Sandbox, SandboxError, SandboxKind, WarmPool,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{watch, OnceCell};
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
    /// The name the gVisor runtime is registered under with the engine.
    pub gvisor_runtime: String,
    /// Where the warm-start holder and the records of taken warm containers live.
    pub warm_dir: std::path::PathBuf,
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
    /// What the engine offers (re-read when a launch asks for a tier that was missing).
    offer: Mutex<Offer>,
    apps: Mutex<HashMap<String, Arc<Entry>>>,
    /// Each app's warm pool (`warm`).
    pools: Mutex<HashMap<String, warm::Pool>>,
    /// The holder's path on the host, once written (or why it cannot be).
    holder: std::sync::OnceLock<Result<std::path::PathBuf, String>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// One launch (or adoption) of one app.
#[derive(Debug)]
struct Entry {
    app_id: String,
    container: Mutex<Option<String>>,
    /// The tier the container runs under.
    isolation: Isolation,
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
        let info = engine::call_ok(&docker, timeout, "reading engine info", docker.info()).await;
        let storage = match &info {
            Ok(info) => StorageSupport::from_info(info),
            Err(e) => StorageSupport::Unsupported(format!("engine info unavailable: {e}")),
        };
        let offer = engine::offer(
            &docker,
            timeout,
            &settings.gvisor_runtime,
            info.as_ref().ok(),
        )
        .await?;
        let inner = Arc::new(Inner {
            docker,
            settings,
            storage: Mutex::new(storage),
            offer: Mutex::new(offer),
            apps: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            holder: std::sync::OnceLock::new(),
            tasks,
            shutdown,
        });
        events::spawn(&inner);
        Ok(DockerSandbox { inner })
    }

    /// What the engine offers, as known so far.
    pub fn offer(&self) -> Offer {
        lock(&self.inner.offer).clone()
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
    let wanted = (image, super::PullPolicy::Missing);
    engine::ensure_image(&docker, timeout, pull_timeout, wanted, progress).await?;
    Ok(true)
}

/// A launch creates a container carrying the spec's labels (`LaunchSpec::labels`) besides
/// the app and daemon labels, pulling the image if it is missing; leftovers are this
/// daemon's containers by label.
impl Sandbox for DockerSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Docker
    }

    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Launched, SandboxError>> {
        lifecycle::launch(&self.inner, spec, &spec.labels).boxed()
    }

    fn stop<'a>(
        &'a self,
        app_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        lifecycle::stop(&self.inner, app_id, grace).boxed()
    }

    fn subscribe(&self, app_id: &str) -> Option<watch::Receiver<AppState>> {
        lock(&self.inner.apps)
            .get(app_id)
            .map(|e| e.state.subscribe())
    }

    fn exit_note(&self, app_id: &str) -> Option<String> {
        let entry = lock(&self.inner.apps).get(app_id).cloned()?;
        let note = *lock(&entry.exit_note);
        note.map(str::to_string)
    }

    fn container(&self, app_id: &str) -> Option<String> {
        lock(&self.inner.apps)
            .get(app_id)
            .and_then(|e| e.container())
    }

    fn isolation(&self, app_id: &str) -> Option<Isolation> {
        lock(&self.inner.apps).get(app_id).map(|e| e.isolation)
    }

    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<Found>, SandboxError>> {
        adopt::find_ours(&self.inner).boxed()
    }

    fn adopt<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        found: &'a Found,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        adopt::adopt(&self.inner, spec, found).boxed()
    }

    fn discard<'a>(&'a self, found: &'a Found) -> BoxFuture<'a, Result<(), SandboxError>> {
        lifecycle::remove(&self.inner, &found.container_id).boxed()
    }

    fn keep_warm<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        target: (usize, bool),
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        warm::keep(&self.inner, spec, target).boxed()
    }

    fn warm(&self, app_id: &str) -> Option<WarmPool> {
        warm::status(&self.inner, app_id)
    }

    fn drain_warm(&self) -> BoxFuture<'_, ()> {
        warm::drain(&self.inner).boxed()
    }
}

/// The Docker backend as the daemon holds it: the engine is connected on first use (the
/// search for leftovers at daemon start, or the first container launch), so a daemon
/// without a reachable engine still serves host apps, and a later launch connects once
/// the engine is up. Until then it knows no apps.
#[derive(Debug)]
pub struct LazyDocker {
    settings: DockerSettings,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    engine: OnceCell<DockerSandbox>,
}

impl LazyDocker {
    /// A backend that connects with `settings` when first needed; its background work runs
    /// on `tasks` until `shutdown`.
    pub fn new(
        settings: DockerSettings,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> LazyDocker {
        LazyDocker {
            settings,
            tasks,
            shutdown,
            engine: OnceCell::new(),
        }
    }

    /// The connected backend, connecting now if needed (retried on the next call after a
    /// failure).
    async fn connected(&self) -> Result<&DockerSandbox, SandboxError> {
        self.engine
            .get_or_try_init(|| {
                DockerSandbox::connect(
                    self.settings.clone(),
                    self.tasks.clone(),
                    self.shutdown.child_token(),
                )
            })
            .await
    }
}

impl Sandbox for LazyDocker {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Docker
    }

    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Launched, SandboxError>> {
        async move { self.connected().await?.launch(spec).await }.boxed()
    }

    fn stop<'a>(
        &'a self,
        app_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        match self.engine.get() {
            Some(docker) => docker.stop(app_id, grace),
            None => {
                futures::future::ready(Err(SandboxError::NotRunning(app_id.to_string()))).boxed()
            }
        }
    }

    fn subscribe(&self, app_id: &str) -> Option<watch::Receiver<AppState>> {
        self.engine.get()?.subscribe(app_id)
    }

    fn exit_note(&self, app_id: &str) -> Option<String> {
        self.engine.get()?.exit_note(app_id)
    }

    fn container(&self, app_id: &str) -> Option<String> {
        self.engine.get()?.container(app_id)
    }

    fn isolation(&self, app_id: &str) -> Option<Isolation> {
        self.engine.get()?.isolation(app_id)
    }

    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<Found>, SandboxError>> {
        async move { self.connected().await?.leftovers().await }.boxed()
    }

    fn adopt<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        found: &'a Found,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        async move { self.connected().await?.adopt(spec, found).await }.boxed()
    }

    fn discard<'a>(&'a self, found: &'a Found) -> BoxFuture<'a, Result<(), SandboxError>> {
        async move { self.connected().await?.discard(found).await }.boxed()
    }

    fn keep_warm<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        target: (usize, bool),
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        async move {
            match (self.engine.get(), target.0) {
                (None, 0) => Ok(()),
                (Some(docker), _) => docker.keep_warm(spec, target).await,
                (None, _) => self.connected().await?.keep_warm(spec, target).await,
            }
        }
        .boxed()
    }

    fn warm(&self, app_id: &str) -> Option<WarmPool> {
        self.engine.get()?.warm(app_id)
    }

    fn drain_warm(&self) -> BoxFuture<'_, ()> {
        async move {
            if let Some(docker) = self.engine.get() {
                docker.drain_warm().await;
            }
        }
        .boxed()
    }
}
