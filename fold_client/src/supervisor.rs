//! Which apps run where: launches apps in a backend (Docker by default, direct in dev
//! mode), applies the restart policy and maximum lifetime, runs one-shot jobs, adopts this
//! daemon's containers after a restart, and reports truthful states.
//!
//! Each launch gets a watcher task. The backend reports how each run ended; the watcher
//! publishes that state, then either stops (clean exit, stop request, policy exhausted) or
//! waits the backoff (`restarting`) and launches again. The state `app ps` shows is the
//! watcher's, so `restarting` is visible between runs.
//!
//! The supervisor owns what it needs (the registry handle, the audit, its slice of the
//! configuration, the backends, the daemon's task tracker and shutdown token) and calls
//! backends only through [`Sandbox`]. It publishes each app's [`PeerRule`] (from every
//! state change of the app's run) on a channel the app's socket listener reads.

mod options;
mod watcher;

pub use crate::restart::{backoff, RestartPolicy, MAX_BACKOFF, RESTART_RESET};
pub use options::LaunchOptions;

use crate::audit::{now_ms, Audit};
use crate::config::{AppPaths, Config};
use crate::ipc::{PeerRule, CREDENTIALS_FILE};
use crate::registry::{App, AuthMode, Registry};
use crate::sandbox::{
    AppState, Isolation, LaunchSpec, Launched, Sandbox, SandboxError, SandboxKind,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The supervisor's slice of the configuration.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Where each app's files are.
    pub paths: AppPaths,
    /// Image of apps that name none.
    pub default_image: String,
    /// When launches pull images.
    pub pull: crate::sandbox::PullPolicy,
    /// Size cap of each app's log file.
    pub log_cap: u64,
    /// The restart policy of an adopted container whose labels do not say.
    pub restart: RestartPolicy,
    /// Delay before the first restart; doubles per restart (see [`backoff`]).
    pub restart_backoff: Duration,
    /// Grace between SIGTERM and SIGKILL when a stop arrives while a restart is starting.
    pub stop_grace: Duration,
}

impl SupervisorSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> SupervisorSettings {
        SupervisorSettings {
            paths: config.app_paths(),
            default_image: config.default_image.clone(),
            pull: config.pull,
            log_cap: config.log_cap,
            restart: config.restart,
            restart_backoff: config.restart_backoff,
            stop_grace: config.stop_grace,
        }
    }
}

/// The backends apps run in.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Host processes (`app launch --direct`, dev mode).
    pub direct: Arc<dyn Sandbox>,
    /// Containers (every other launch).
    pub container: Arc<dyn Sandbox>,
}

/// One backend and whether its leftovers (runs of an earlier daemon) were taken over.
#[derive(Debug)]
struct Backend {
    sandbox: Arc<dyn Sandbox>,
    recovered: OnceCell<()>,
}

impl Backend {
    fn new(sandbox: Arc<dyn Sandbox>) -> Backend {
        Backend {
            sandbox,
            recovered: OnceCell::new(),
        }
    }
}

/// Who may connect to a container app while its run is in `state` in `backend`.
fn peer_rule(backend: &dyn Sandbox, app_id: &str, state: &AppState) -> PeerRule {
    match state {
        AppState::Running {
            pid: Some(init_pid),
        } => match (backend.container(app_id), backend.isolation(app_id)) {
            (Some(id), Some(isolation)) => PeerRule::Container {
                id,
                init_pid: *init_pid,
                isolation,
            },
            _ => PeerRule::Nobody,
        },
        AppState::Starting => PeerRule::Starting,
        _ => PeerRule::Nobody,
    }
}

/// What a launch did.
#[derive(Debug, Clone)]
pub struct LaunchOutcome {
    /// Where it runs.
    pub kind: SandboxKind,
    /// Its state right after the start.
    pub state: AppState,
    /// Its container (Docker only).
    pub container: Option<String>,
    /// The tier its container runs under (containers only).
    pub isolation: Option<Isolation>,
    /// Things the user should know (not enforced limits, binary/image mismatch).
    pub warnings: Vec<String>,
}

/// How a one-shot run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The launch.
    pub launch: LaunchOutcome,
    /// Its final state.
    pub state: AppState,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
    /// Its exit code (`Some(137)` for an OOM kill; `None` when stopped or failed).
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration: Duration,
}

/// One app's status for `app ps`.
#[derive(Debug, Clone)]
pub struct AppStatus {
    /// Where it runs (ran).
    pub kind: SandboxKind,
    /// Its state.
    pub state: AppState,
    /// Restarts after failures in a row so far.
    pub restarts: u32,
    /// Why it is in this state, when not obvious (lifetime exceeded, gave up restarting).
    pub note: Option<String>,
    /// Its current (or last) container.
    pub container: Option<String>,
    /// The tier that container runs (ran) under.
    pub isolation: Option<Isolation>,
}

/// The supervision of one app's launch and its restarts.
#[derive(Debug)]
struct Tracked {
    app_id: String,
    kind: SandboxKind,
    backend: Arc<dyn Sandbox>,
    options: LaunchOptions,
    state: watch::Sender<AppState>,
    restarts: AtomicU32,
    note: Mutex<Option<String>>,
    /// Fired by a stop request: no more restarts.
    stop: CancellationToken,
    /// When the app must be gone (ms since the epoch).
    deadline_ms: Option<u64>,
}

impl Tracked {
    fn set_note(&self, note: impl Into<String>) {
        *lock(&self.note) = Some(note.into());
    }

    /// Adds `note` after the current one, if any (`current; note`).
    fn add_note(&self, note: &str) {
        let mut current = lock(&self.note);
        *current = Some(match current.take() {
            Some(earlier) => watcher::with_note(earlier, Some(note)),
            None => note.to_string(),
        });
    }
}

/// Launches and tracks apps across backends.
#[derive(Debug)]
pub struct Supervisor {
    direct: Backend,
    container: Backend,
    registry: Arc<Registry>,
    audit: Audit,
    settings: SupervisorSettings,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    tracked: Mutex<HashMap<String, Arc<Tracked>>>,
    /// Each app's peer rule, by app id; created on first use, so a listener can subscribe
    /// before the app is ever launched.
    peers: Mutex<HashMap<String, watch::Sender<PeerRule>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor of apps in `backends`. Watchers run on `tasks` and end at `shutdown`;
    /// apps are looked up in `registry` (a restart of a removed app is dropped), lifecycle
    /// events go to `audit`.
    pub fn new(
        settings: SupervisorSettings,
        backends: Backends,
        registry: Arc<Registry>,
        audit: Audit,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            direct: Backend::new(backends.direct),
            container: Backend::new(backends.container),
            registry,
            audit,
            settings,
            tasks,
            shutdown,
            tracked: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// The app's peer rule from now on: every change is published here (a container that
    /// starts, runs with its init pid, ends). Until the app runs in a container: `Nobody`.
    pub fn peer_rule(&self, app_id: &str) -> watch::Receiver<PeerRule> {
        lock(&self.peers)
            .entry(app_id.to_string())
            .or_default()
            .subscribe()
    }

    /// Publishes the app's peer rule (only when it changed, so readers are not woken).
    fn publish(&self, app_id: &str, rule: PeerRule) {
        lock(&self.peers)
            .entry(app_id.to_string())
            .or_default()
            .send_if_modified(|current| {
                let changed = *current != rule;
                *current = rule;
                changed
            });
    }

    /// Publishes the peer rule of the app's run in `backend` as it is now.
    fn publish_current(&self, app_id: &str, backend: &dyn Sandbox) {
        let state = backend.state(app_id).unwrap_or(AppState::Stopped);
        self.publish(app_id, peer_rule(backend, app_id, &state));
    }

    /// Forgets a removed app's peer rule (left at `Nobody` for listeners still holding it).
    pub fn forget(&self, app_id: &str) {
        if let Some(peer) = lock(&self.peers).remove(app_id) {
            peer.send_replace(PeerRule::Nobody);
        }
    }

    fn backend(&self, direct: bool) -> &Backend {
        if direct {
            &self.direct
        } else {
            &self.container
        }
    }

    /// Takes over what earlier runs of this daemon left in each backend (daemon start).
    /// Without a reachable Docker engine this only logs: adoption then happens before the
    /// first container launch.
    pub async fn adopt(self: &Arc<Self>) {
        for backend in [&self.direct, &self.container] {
            if let Err(e) = self.ensure_recovered(backend).await {
                tracing::warn!(
                    "{} backend not available; nothing adopted: {e}",
                    backend.sandbox.kind().as_str()
                );
            }
        }
    }

    /// Adopts `backend`'s leftovers once. An unreachable engine is retried on the next
    /// call; any other failure to list them is logged and not retried (as a launch into
    /// the backend must not wait on it forever).
    async fn ensure_recovered(self: &Arc<Self>, backend: &Backend) -> Result<(), SandboxError> {
        backend
            .recovered
            .get_or_try_init(|| async {
                match watcher::adopt_all(self, &backend.sandbox).await {
                    Err(e @ SandboxError::EngineUnreachable { .. }) => Err(e),
                    Err(e) => {
                        tracing::warn!("cannot list this daemon's containers; none adopted: {e}");
                        Ok(())
                    }
                    Ok(()) => Ok(()),
                }
            })
            .await
            .map(|_| ())
    }

    /// The token for `FOLD_CLIENT_APP_TOKEN`: only in direct mode, only for apps installed
    /// with `auth = "token"` (reference-era apps read it from the environment). Read back
    /// from the credentials file, the one place the daemon keeps it. Never given to
    /// containers.
    fn legacy_token(&self, app: &App, direct: bool) -> Option<String> {
        if app.auth_mode != AuthMode::Token || !direct {
            return None;
        }
        let socket_dir = self.settings.paths.socket_dir(&app.id);
        crate::ipc::read_credentials(&socket_dir)
            .ok()
            .map(|c| c.token)
    }

    fn spec(&self, app: &App, options: &LaunchOptions) -> LaunchSpec {
        let paths = &self.settings.paths;
        LaunchSpec {
            app_id: app.id.clone(),
            app_name: app.name.clone(),
            app_dir: paths.app_dir(&app.id),
            binary: app.binary.clone(),
            args: options.args.clone(),
            interpreter: options.interpreter.clone(),
            socket_dir: paths.socket_dir(&app.id),
            credentials_file: CREDENTIALS_FILE.to_string(),
            uid: app.uid,
            gid: app.gid,
            limits: app.limits,
            image: options
                .image
                .clone()
                .or_else(|| app.image.clone())
                .unwrap_or_else(|| self.settings.default_image.clone()),
            pull: self.settings.pull,
            isolation: app.isolation,
            network: app.network.clone(),
            log_path: paths.log_path(&app.id),
            log_cap: self.settings.log_cap,
            capture: options.capture.clone(),
            legacy_token: self.legacy_token(app, options.direct),
            labels: HashMap::new(),
        }
    }

    /// Starts one run in the backend `options` name, after taking over its leftovers.
    async fn start_run(
        self: &Arc<Self>,
        app: &App,
        options: &LaunchOptions,
        restarts: u32,
        deadline_ms: Option<u64>,
    ) -> Result<Launched, SandboxError> {
        let backend = self.backend(options.direct);
        self.ensure_recovered(backend).await?;
        let mut spec = self.spec(app, options);
        spec.labels = options.labels(restarts, deadline_ms);
        // The app may connect as soon as its container runs, before the launch returns:
        // its connection waits (briefly) for the init pid rather than being refused.
        self.publish(&app.id, PeerRule::Starting);
        let launched = backend.sandbox.launch(&spec).await;
        self.publish_current(&app.id, &*backend.sandbox);
        launched
    }

    fn track(&self, tracked: Arc<Tracked>) {
        lock(&self.tracked).insert(tracked.app_id.clone(), tracked);
    }

    /// Starts `app` as `options` say (in a container unless `options.direct`) and
    /// supervises it.
    ///
    /// # Errors
    ///
    /// The app is already running, or the backend could not start it.
    pub async fn launch(
        self: &Arc<Self>,
        app: &App,
        options: LaunchOptions,
    ) -> Result<LaunchOutcome, SandboxError> {
        // The uid must still be the app's alone (users and ranges may be added after install).
        if let Some(problem) = self.registry.uid_problem(app) {
            return Err(SandboxError::UidNotOwned {
                app: app.name.clone(),
                problem,
            });
        }
        if self.state(&app.id).is_some_and(|(_, s)| s.is_live()) {
            return Err(SandboxError::AlreadyRunning(app.name.clone()));
        }
        let backend = Arc::clone(&self.backend(options.direct).sandbox);
        let kind = backend.kind();
        let deadline_ms = options
            .max_lifetime
            .map(|d| now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let result = match self.start_run(app, &options, 0, deadline_ms).await {
            // A concurrent launch won; its supervision stands.
            Err(e @ SandboxError::AlreadyRunning(_)) => return Err(e),
            other => other,
        };
        let state = match &result {
            Ok(launched) => launched.state.clone(),
            Err(e) => AppState::Failed {
                reason: e.to_string(),
            },
        };
        let tracked = Arc::new(Tracked {
            app_id: app.id.clone(),
            kind,
            backend,
            options,
            state: watch::Sender::new(state),
            restarts: AtomicU32::new(0),
            note: Mutex::new(None),
            stop: CancellationToken::new(),
            deadline_ms,
        });
        self.track(Arc::clone(&tracked));
        let launched = result?;
        watcher::spawn(self, tracked);
        Ok(LaunchOutcome {
            kind,
            state: launched.state,
            container: launched.container,
            isolation: launched.isolation,
            warnings: launched.warnings,
        })
    }

    /// Records an adopted run's app and supervises it from here on.
    fn track_adopted(
        self: &Arc<Self>,
        backend: &Arc<dyn Sandbox>,
        app_id: &str,
        state: AppState,
        (options, restarts, deadline_ms): (LaunchOptions, u32, Option<u64>),
    ) {
        let tracked = Arc::new(Tracked {
            app_id: app_id.to_string(),
            kind: backend.kind(),
            backend: Arc::clone(backend),
            options,
            state: watch::Sender::new(state),
            restarts: AtomicU32::new(restarts),
            note: Mutex::new(Some("adopted after a daemon restart".into())),
            stop: CancellationToken::new(),
            deadline_ms,
        });
        self.track(Arc::clone(&tracked));
        self.publish_current(app_id, &**backend);
        watcher::spawn(self, tracked);
    }

    /// Runs `app` once (no restarts), waits at most `timeout`, then stops it (SIGTERM,
    /// grace, SIGKILL). The container is removed either way; output is in the app's log.
    ///
    /// # Errors
    ///
    /// The app is already running, or could not be started.
    pub async fn run(
        self: &Arc<Self>,
        app: &App,
        mut options: LaunchOptions,
        timeout: Duration,
        grace: Duration,
    ) -> Result<RunOutcome, SandboxError> {
        options.restart = RestartPolicy::Never;
        options.max_lifetime = None;
        let started = Instant::now();
        let launch = self.launch(app, options).await?;
        let (state, timed_out) = match tokio::time::timeout(timeout, self.wait(&app.id)).await {
            Ok(state) => (state.unwrap_or(AppState::Stopped), false),
            Err(_) => {
                if let Some(t) = lock(&self.tracked).get(&app.id) {
                    t.set_note(format!(
                        "killed: ran past its {} s timeout",
                        timeout.as_secs_f64()
                    ));
                }
                (self.stop(&app.id, grace).await?, true)
            }
        };
        let exit_code = match state {
            AppState::Exited { code } => Some(code),
            AppState::OomKilled => Some(137),
            _ => None,
        };
        Ok(RunOutcome {
            launch,
            state,
            timed_out,
            exit_code,
            duration: started.elapsed(),
        })
    }

    /// Stops the app: no more restarts; SIGTERM, then SIGKILL after `grace`.
    ///
    /// # Errors
    ///
    /// The app is not running, or the backend could not stop it.
    pub async fn stop(&self, app_id: &str, grace: Duration) -> Result<AppState, SandboxError> {
        let tracked = lock(&self.tracked)
            .get(app_id)
            .cloned()
            .ok_or_else(|| SandboxError::NotRunning(app_id.to_string()))?;
        if !tracked.state.borrow().is_live() {
            return Err(SandboxError::NotRunning(app_id.to_string()));
        }
        tracked.stop.cancel();
        match tracked.backend.stop(app_id, grace).await {
            Ok(_) | Err(SandboxError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        let mut rx = tracked.state.subscribe();
        let settled = tokio::time::timeout(
            grace + Duration::from_secs(30),
            rx.wait_for(|s| !s.is_live()),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        match settled {
            Ok(Ok(state)) => Ok(state),
            _ => Err(SandboxError::Backend(format!(
                "app {app_id} did not stop in time"
            ))),
        }
    }

    /// The app's backend and state, if it was launched (or adopted) since the daemon started.
    pub fn state(&self, app_id: &str) -> Option<(SandboxKind, AppState)> {
        let tracked = lock(&self.tracked).get(app_id).cloned()?;
        let state = tracked.state.borrow().clone();
        Some((tracked.kind, state))
    }

    /// The app's full status for `app ps`.
    pub fn status(&self, app_id: &str) -> Option<AppStatus> {
        let tracked = lock(&self.tracked).get(app_id).cloned()?;
        let container = tracked.backend.container(app_id);
        let state = tracked.state.borrow().clone();
        let note = lock(&tracked.note).clone();
        Some(AppStatus {
            kind: tracked.kind,
            state,
            restarts: tracked.restarts.load(Ordering::SeqCst),
            note,
            isolation: container.as_ref().and(tracked.backend.isolation(app_id)),
            container,
        })
    }

    /// Waits until the app is no longer live (restarts included).
    pub async fn wait(&self, app_id: &str) -> Option<AppState> {
        let tracked = lock(&self.tracked).get(app_id).cloned()?;
        let mut rx = tracked.state.subscribe();
        let state = rx.wait_for(|s| !s.is_live()).await.ok()?.clone();
        Some(state)
    }

    /// Keeps the app's warm pool as its record says: `app.warm` prepared containers for a
    /// container app whose uid is still its own, none otherwise. A launch of the app with
    /// its own defaults (image, tier, limits) takes one.
    ///
    /// # Errors
    ///
    /// The backend cannot prepare them (no holder in this build, the tier is not offered,
    /// the engine is down); the pool is then empty.
    pub async fn keep_warm(self: &Arc<Self>, app: &App) -> Result<(), SandboxError> {
        self.set_warm(app, app.warm as usize, true).await
    }

    /// Prepares one container for the app's next launch, not replaced once taken (a
    /// one-off job's slot).
    ///
    /// # Errors
    ///
    /// As [`Supervisor::keep_warm`].
    pub async fn prepare_once(self: &Arc<Self>, app: &App) -> Result<(), SandboxError> {
        self.set_warm(app, 1, false).await
    }

    async fn set_warm(
        self: &Arc<Self>,
        app: &App,
        count: usize,
        refill: bool,
    ) -> Result<(), SandboxError> {
        let mut count = match app.placement {
            crate::registry::Placement::Container => count,
            crate::registry::Placement::Host => 0,
        };
        if count > 0 {
            if let Some(problem) = self.registry.uid_problem(app) {
                count = 0;
                tracing::warn!(app = %app.name, "no warm containers: {problem}");
            }
        }
        let backend = &self.container;
        if count > 0 {
            self.ensure_recovered(backend).await?;
        }
        let options = LaunchOptions {
            direct: false,
            args: Vec::new(),
            interpreter: None,
            image: None,
            restart: RestartPolicy::Never,
            max_lifetime: None,
            capture: None,
        };
        let spec = self.spec(app, &options);
        backend.sandbox.keep_warm(&spec, (count, refill)).await
    }

    /// The app's warm pool, if it keeps one.
    pub fn warm(&self, app_id: &str) -> Option<crate::sandbox::WarmPool> {
        self.container.sandbox.warm(app_id)
    }

    /// Stops every live app (daemon shutdown), after removing every prepared container.
    pub async fn stop_all(&self, grace: Duration) {
        self.container.sandbox.drain_warm().await;
        let live: Vec<String> = lock(&self.tracked)
            .iter()
            .filter(|(_, t)| t.state.borrow().is_live())
            .map(|(id, _)| id.clone())
            .collect();
        let stops = live.iter().map(|id| self.stop(id, grace));
        for (id, result) in live.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = result {
                tracing::warn!(app_id = %id, "cannot stop app at shutdown: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
