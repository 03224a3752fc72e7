//! Which apps run where: launches apps in a backend (Docker by default, direct in dev
//! mode), applies the restart policy and maximum lifetime, runs one-shot jobs, adopts this
//! daemon's containers after a restart, and reports truthful states.
//!
//! Each launch gets a watcher task. The backend reports how each run ended; the watcher
//! publishes that state, then either stops (clean exit, stop request, policy exhausted) or
//! waits the backoff (`restarting`) and launches again. The state `app ps` shows is the
//! watcher's, so `restarting` is visible between runs.

mod options;
mod watcher;

pub use options::{backoff, LaunchOptions, RestartPolicy, MAX_BACKOFF, RESTART_RESET};

use crate::audit::now_ms;
use crate::daemon::Shared;
use crate::ipc::CREDENTIALS_FILE;
use crate::registry::{App, AuthMode, Placement};
use crate::sandbox::direct::DirectSandbox;
use crate::sandbox::docker::{DockerSandbox, DockerSettings};
use crate::sandbox::{AppState, LaunchSpec, Sandbox, SandboxError, SandboxKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OnceCell};
use tokio_util::sync::CancellationToken;

/// The token for `FOLD_CLIENT_APP_TOKEN`: only in direct mode, only for apps installed with
/// `auth = "token"` (reference-era apps read it from the environment). Read back from the
/// credentials file, the one place the daemon keeps it. Never given to containers.
fn legacy_token(shared: &Shared, app: &App, direct: bool) -> Option<String> {
    if app.auth_mode != AuthMode::Token || !direct {
        return None;
    }
    shared.read_credentials(app).ok().map(|c| c.token)
}

/// Who may connect to an app's socket, besides the uid check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRule {
    /// Any process of the app's uid: the app is placed on the host (dev mode).
    Uid,
    /// Only processes of this running container (same cgroups and pid namespace as its
    /// init process, host pid `init_pid`).
    Container {
        /// The container's full id.
        id: String,
        /// Its init process's host pid.
        init_pid: u32,
    },
    /// The container is starting; its init pid is not known yet.
    Starting,
    /// Nobody: the app is placed in a container and none is running.
    Nobody,
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
}

/// The supervision of one app's launch and its restarts.
#[derive(Debug)]
struct Tracked {
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
    direct: Arc<dyn Sandbox>,
    docker: OnceCell<DockerSandbox>,
    tracked: Mutex<HashMap<String, Arc<Tracked>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor; the Docker engine is connected on first use (or by [`Self::adopt`]).
    pub fn new(_config: &crate::config::Config) -> Supervisor {
        Supervisor {
            direct: Arc::new(DirectSandbox::new()),
            docker: OnceCell::new(),
            tracked: Mutex::new(HashMap::new()),
        }
    }

    /// The Docker backend, connecting (and adopting this daemon's containers) on first use.
    async fn docker(&self, shared: &Arc<Shared>) -> Result<&DockerSandbox, SandboxError> {
        self.docker
            .get_or_try_init(|| async {
                let settings = DockerSettings::from_config(&shared.config);
                let docker = DockerSandbox::connect(
                    settings,
                    shared.tasks.clone(),
                    shared.shutdown.child_token(),
                )
                .await?;
                watcher::adopt_all(shared, &docker).await;
                Ok(docker)
            })
            .await
    }

    /// Connects to the engine and adopts this daemon's containers (daemon start). Without a
    /// reachable engine this only logs: adoption happens on the first Docker launch.
    pub async fn adopt(&self, shared: &Arc<Shared>) {
        if let Err(e) = self.docker(shared).await {
            tracing::warn!("Docker engine not available; no containers adopted: {e}");
        }
    }

    fn spec(shared: &Shared, app: &App, options: &LaunchOptions) -> LaunchSpec {
        LaunchSpec {
            app_id: app.id.clone(),
            app_name: app.name.clone(),
            app_dir: shared.app_dir(&app.id),
            binary: app.binary.clone(),
            args: options.args.clone(),
            socket_dir: shared.socket_dir(&app.id),
            credentials_file: CREDENTIALS_FILE.to_string(),
            uid: app.uid,
            gid: app.gid,
            limits: app.limits,
            image: options
                .image
                .clone()
                .or_else(|| app.image.clone())
                .unwrap_or_else(|| shared.config.default_image.clone()),
            network: app.network.clone(),
            log_path: shared.log_path(&app.id),
            log_cap: shared.config.log_cap,
            legacy_token: legacy_token(shared, app, options.direct),
        }
    }

    /// Starts one run in `backend`.
    async fn start_run(
        &self,
        shared: &Arc<Shared>,
        app: &App,
        options: &LaunchOptions,
        restarts: u32,
        deadline_ms: Option<u64>,
    ) -> Result<LaunchOutcome, SandboxError> {
        let spec = Self::spec(shared, app, options);
        if options.direct {
            let state = self.direct.launch(&spec).await?;
            return Ok(LaunchOutcome {
                kind: SandboxKind::Direct,
                state,
                container: None,
                warnings: Vec::new(),
            });
        }
        let docker = self.docker(shared).await?;
        let labels = options.labels(restarts, deadline_ms);
        let launched = docker.launch_with(&spec, &labels).await?;
        Ok(LaunchOutcome {
            kind: SandboxKind::Docker,
            state: launched.state,
            container: Some(launched.container_id),
            warnings: launched.warnings,
        })
    }

    fn backend_of(&self, kind: SandboxKind) -> Option<Arc<dyn Sandbox>> {
        match kind {
            SandboxKind::Docker => self
                .docker
                .get()
                .map(|d| Arc::new(d.clone()) as Arc<dyn Sandbox>),
            _ => Some(Arc::clone(&self.direct)),
        }
    }

    fn track(&self, app_id: &str, tracked: Arc<Tracked>) {
        lock(&self.tracked).insert(app_id.to_string(), tracked);
    }

    /// Starts `app` as `options` say (Docker unless `options.direct`) and supervises it.
    ///
    /// # Errors
    ///
    /// The app is already running, or the backend could not start it.
    pub async fn launch(
        &self,
        shared: &Arc<Shared>,
        app: &App,
        options: LaunchOptions,
    ) -> Result<LaunchOutcome, SandboxError> {
        // The uid must still be the app's alone (users and ranges may be added after install).
        if let Some(problem) = shared.registry.uid_problem(app) {
            return Err(SandboxError::UidNotOwned {
                app: app.name.clone(),
                problem,
            });
        }
        if self.state(&app.id).is_some_and(|(_, s)| s.is_live()) {
            return Err(SandboxError::AlreadyRunning(app.name.clone()));
        }
        let kind = if options.direct {
            SandboxKind::Direct
        } else {
            SandboxKind::Docker
        };
        let deadline_ms = options
            .max_lifetime
            .map(|d| now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let result = self.start_run(shared, app, &options, 0, deadline_ms).await;
        if let Err(SandboxError::AlreadyRunning(_)) = &result {
            return result; // a concurrent launch won; its supervision stands
        }
        let state = match &result {
            Ok(outcome) => outcome.state.clone(),
            Err(e) => AppState::Failed {
                reason: e.to_string(),
            },
        };
        if let Some(backend) = self.backend_of(kind) {
            let tracked = Arc::new(Tracked {
                kind,
                backend,
                options,
                state: watch::Sender::new(state),
                restarts: AtomicU32::new(0),
                note: Mutex::new(None),
                stop: CancellationToken::new(),
                deadline_ms,
            });
            self.track(&app.id, Arc::clone(&tracked));
            if result.is_ok() {
                watcher::spawn(shared, tracked, app.id.clone());
            }
        }
        result
    }

    /// Records an adopted container's app and supervises it from here on.
    #[allow(clippy::too_many_arguments)]
    fn track_adopted(
        &self,
        shared: &Arc<Shared>,
        backend: Arc<dyn Sandbox>,
        app_id: &str,
        state: AppState,
        options: LaunchOptions,
        restarts: u32,
        deadline_ms: Option<u64>,
    ) {
        let tracked = Arc::new(Tracked {
            kind: SandboxKind::Docker,
            backend,
            options,
            state: watch::Sender::new(state),
            restarts: AtomicU32::new(restarts),
            note: Mutex::new(Some("adopted after a daemon restart".into())),
            stop: CancellationToken::new(),
            deadline_ms,
        });
        self.track(app_id, Arc::clone(&tracked));
        watcher::spawn(shared, tracked, app_id.to_string());
    }

    /// Runs `app` once (no restarts), waits at most `timeout`, then stops it (SIGTERM,
    /// grace, SIGKILL). The container is removed either way; output is in the app's log.
    ///
    /// # Errors
    ///
    /// The app is already running, or could not be started.
    pub async fn run(
        &self,
        shared: &Arc<Shared>,
        app: &App,
        mut options: LaunchOptions,
        timeout: Duration,
        grace: Duration,
    ) -> Result<RunOutcome, SandboxError> {
        options.restart = RestartPolicy::Never;
        options.max_lifetime = None;
        let started = Instant::now();
        let launch = self.launch(shared, app, options).await?;
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
        let container = match tracked.kind {
            SandboxKind::Docker => self.docker.get().and_then(|d| d.container_id(app_id)),
            _ => None,
        };
        let state = tracked.state.borrow().clone();
        let note = lock(&tracked.note).clone();
        Some(AppStatus {
            kind: tracked.kind,
            state,
            restarts: tracked.restarts.load(Ordering::SeqCst),
            note,
            container,
        })
    }

    /// Who may connect to the app's socket besides its uid. Decided by the app's recorded
    /// placement, never by whether it was launched since the daemon started: a container
    /// app is reachable only from its running container.
    pub fn peer_rule(&self, app: &App) -> PeerRule {
        if app.placement == Placement::Host {
            return PeerRule::Uid;
        }
        match self.docker.get().and_then(|d| d.current(&app.id)) {
            Some((
                id,
                AppState::Running {
                    pid: Some(init_pid),
                },
            )) => PeerRule::Container { id, init_pid },
            Some((_, AppState::Starting)) => PeerRule::Starting,
            _ => PeerRule::Nobody,
        }
    }

    /// Waits until the app is no longer live (restarts included).
    pub async fn wait(&self, app_id: &str) -> Option<AppState> {
        let tracked = lock(&self.tracked).get(app_id).cloned()?;
        let mut rx = tracked.state.subscribe();
        let state = rx.wait_for(|s| !s.is_live()).await.ok()?.clone();
        Some(state)
    }

    /// Stops every live app (daemon shutdown).
    pub async fn stop_all(&self, grace: Duration) {
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
