//! The daemon's app lifecycle: install, rotate, remove, placement, grants and node limits,
//! on [`Shared`], the state the daemon built at start. `daemon` starts and stops it; the
//! admin socket's handlers call the lifecycle functions here (never `daemon`).

use crate::audit::{now_ms, Audit};
use crate::config::Config;
use crate::fsutil::{self, Access};
use crate::ipc::{self, AppRuntime, CREDENTIALS_FILE};
use crate::nonce_journal::NonceJournal;
use crate::proxy::NodeClient;
use crate::registry::{App, InstallSpec, IssuedSecrets, Placement, Registry, RegistryError};
use crate::supervisor::Supervisor;
use fold_ipc::Credentials;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The daemon's wiring: what it built at start, handed piecewise to the modules that need
/// it (the supervisor, the app sockets' [`ipc::Services`], the admin socket). No module
/// below the daemon and its admin socket takes this struct.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Installed apps.
    pub registry: Arc<Registry>,
    /// The node.
    pub node: Arc<NodeClient>,
    /// The audit log.
    pub audit: Audit,
    /// Every spawned connection and listener task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Fires on shutdown.
    pub shutdown: CancellationToken,
    /// Running apps.
    pub supervisor: Arc<Supervisor>,
    /// Where requests spend their time (see `fold_bench`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Accepted nonces, kept across restarts (`nonce_journal`); and the timestamp floor.
    pub journal: Arc<NonceJournal>,
    /// What the app sockets are served with (the same handles as above).
    pub(crate) services: Arc<ipc::Services>,
    /// Where each app's files are (the supervisor has the same).
    pub(crate) paths: crate::config::AppPaths,
    /// Per-app listener cancellation, by app id.
    pub(crate) listeners: Mutex<HashMap<String, CancellationToken>>,
    /// Per-app authentication state, by app id.
    pub(crate) runtimes: Mutex<HashMap<String, Arc<AppRuntime>>>,
    /// Whether app-visible files are given the app's group (daemon is root, per-app uids).
    pub(crate) chown_to_app: bool,
    /// The socket root, opened once; app socket directories are reached through it.
    pub(crate) socket_root: fsutil::Dir,
    /// Turns of one-off jobs (`config.max_concurrent_jobs`).
    pub(crate) jobs: tokio::sync::Semaphore,
    /// Names of the one-off job slots installed ahead (`config.warm_jobs`), oldest first.
    pub(crate) job_slots: Mutex<std::collections::VecDeque<String>>,
}

/// Why the daemon or an admin action failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Setting up the state directory, audit log or node failed.
    #[error("{context}: {source}")]
    Setup {
        /// What was being done.
        context: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A registry change failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// An app's socket could not be bound.
    #[error(transparent)]
    Socket(#[from] ipc::SocketError),
    /// Bad input to an admin action.
    #[error("{0}")]
    Invalid(String),
    /// Launching or stopping failed.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

pub(crate) fn setup(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |e| DaemonError::Setup {
        context,
        source: Box::new(e),
    }
}

/// What `app install` asks for.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// Registry fields.
    pub spec: InstallSpec,
    /// The binary to copy into the app's directory.
    pub binary_path: PathBuf,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Calls `visit(app id, nonce, expiry)` for every live nonce of every app (the nonce
    /// journal's rewrite).
    pub(crate) fn live_nonces(&self, visit: &mut dyn FnMut(&str, &str, u64)) {
        let now = now_ms();
        let runtimes: Vec<_> = lock(&self.runtimes)
            .iter()
            .map(|(id, runtime)| (id.clone(), Arc::clone(runtime)))
            .collect();
        for (id, runtime) in runtimes {
            lock(&runtime.nonces).for_each_live(now, |nonce, expiry| visit(&id, nonce, expiry));
        }
    }

    /// The app's socket directory.
    pub fn socket_dir(&self, app_id: &str) -> PathBuf {
        self.paths.socket_dir(app_id)
    }
    /// The app's socket path.
    pub fn socket_path(&self, app_id: &str) -> PathBuf {
        self.paths.socket_path(app_id)
    }
    /// The app's directory (its binary).
    pub fn app_dir(&self, app_id: &str) -> PathBuf {
        self.paths.app_dir(app_id)
    }
    /// Where a one-off job keeps its output until its client has read it.
    pub fn one_off_output_dir(&self, run_id: &str) -> PathBuf {
        self.paths.one_off_output_dir(run_id)
    }
    /// Where the app's last job keeps its output.
    pub fn job_output_dir(&self, app_id: &str) -> PathBuf {
        self.paths.job_output_dir(app_id)
    }
    /// The app's log file.
    pub fn log_path(&self, app_id: &str) -> PathBuf {
        self.paths.log_path(app_id)
    }
    /// Owner and mode for something in the app's socket directory: with per-app uids,
    /// root's with the app's group and `shared_mode` (the app reads, never writes); else the
    /// daemon's own with `private_mode`.
    fn app_access(&self, app: &App, shared_mode: u32, private_mode: u32) -> Access {
        if self.chown_to_app {
            Access {
                owner: Some((nix::unistd::geteuid().as_raw(), app.gid)),
                mode: shared_mode,
            }
        } else {
            Access::private(private_mode)
        }
    }

    /// Opens (creating or repairing) the app's socket directory: owned by the daemon, the
    /// app's group may enter and list it, nobody else may write it. A directory from an
    /// earlier layout (owned by the app) is taken back first, and anything the app left in
    /// it besides its socket and credentials is removed.
    fn socket_dir_handle(&self, app: &App) -> std::io::Result<fsutil::Dir> {
        let dir = self
            .socket_root
            .child_dir(&app.id, self.app_access(app, 0o750, 0o700))?;
        let socket = format!("{}.sock", app.id);
        for name in dir.names()? {
            if name == socket || name == CREDENTIALS_FILE {
                continue;
            }
            let stat = dir.stat_entry(&name)?;
            if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
                // std's remove_dir_all does not follow symlinks inside (openat/unlinkat).
                std::fs::remove_dir_all(dir.path().join(&name))?;
            } else {
                dir.remove(&name)?;
            }
        }
        // Credentials the app could write (earlier layout): keep their content in a new
        // file only the daemon can write; anything else under that name is dropped.
        if let Ok(stat) = dir.stat_entry(CREDENTIALS_FILE) {
            if stat.st_uid != nix::unistd::geteuid().as_raw() {
                match dir
                    .read_file(CREDENTIALS_FILE, ipc::CREDENTIALS_CAP)
                    .ok()
                    .filter(|bytes| Credentials::from_json(bytes).is_ok())
                {
                    Some(bytes) => dir.write_file(
                        CREDENTIALS_FILE,
                        &bytes,
                        self.app_access(app, 0o640, 0o600),
                    )?,
                    None => {
                        tracing::warn!(app = %app.name, "dropped an unreadable credentials file; `app rotate` issues new ones");
                        dir.remove(CREDENTIALS_FILE)?;
                    }
                }
            }
        }
        Ok(dir)
    }
}

/// Binds the app's socket and starts serving it.
pub(crate) fn serve_app(shared: &Arc<Shared>, app: &App) -> Result<(), DaemonError> {
    let socket_error = |source| ipc::SocketError::Io {
        path: shared.socket_path(&app.id),
        source,
    };
    let dir = shared.socket_dir_handle(app).map_err(socket_error)?;
    let socket = ipc::bind_socket(
        &dir,
        &format!("{}.sock", app.id),
        shared.app_access(app, 0o660, 0o600),
    )?;
    let runtime = Arc::clone(
        lock(&shared.runtimes)
            .entry(app.id.clone())
            .or_insert_with(|| Arc::new(AppRuntime::new(&shared.config))),
    );
    runtime.apply(&app.node_limits.resolve(&shared.config.default_node_limits));
    let cancel = shared.shutdown.child_token();
    if let Some(old) = lock(&shared.listeners).insert(app.id.clone(), cancel.clone()) {
        old.cancel();
    }
    shared.tasks.spawn(ipc::serve_socket(
        socket,
        app.id.clone(),
        app.uid,
        runtime,
        Arc::clone(&shared.services),
        shared.supervisor.peer_rule(&app.id),
        cancel,
    ));
    Ok(())
}

fn write_credentials(
    shared: &Shared,
    app: &App,
    secrets: &IssuedSecrets,
) -> Result<(), DaemonError> {
    let creds = Credentials {
        app_id: app.id.clone(),
        token: secrets.token.clone(),
        signing_key: secrets.signing_key.clone(),
        version: fold_ipc::version::CURRENT,
        session: app.auth_mode == crate::registry::AuthMode::Session,
    };
    shared
        .socket_dir_handle(app)
        .and_then(|dir| {
            dir.write_file(
                CREDENTIALS_FILE,
                creds.to_json().as_bytes(),
                shared.app_access(app, 0o640, 0o600),
            )
        })
        .map_err(setup("cannot write the credentials file"))
}

/// Opens the binary an install (or a job) names, checking on the open file that it is a
/// regular file: what is copied is what was checked, whatever happens to the path after.
///
/// # Errors
///
/// It cannot be opened, or is not a regular file.
pub(crate) fn open_binary(source: &Path) -> Result<std::fs::File, DaemonError> {
    let invalid = |why: String| {
        DaemonError::Invalid(format!("cannot read binary {}: {why}", source.display()))
    };
    let file = std::fs::File::open(source).map_err(|e| invalid(e.to_string()))?;
    let meta = file.metadata().map_err(|e| invalid(e.to_string()))?;
    if !meta.is_file() {
        return Err(DaemonError::Invalid(format!(
            "{} is not a file",
            source.display()
        )));
    }
    Ok(file)
}

/// Copies the opened binary (`open_binary`) of `source` into the app's directory.
pub(crate) fn copy_binary(
    shared: &Shared,
    app: &App,
    (source, mut binary): (&Path, std::fs::File),
) -> Result<(), DaemonError> {
    let dir = fsutil::Dir::open(&shared.config.apps_dir())
        .and_then(|apps| apps.child_dir(&app.id, Access::private(0o755)))
        .map_err(setup("cannot create the app directory"))?;
    dir.write_with(&app.binary, Access::private(0o755), |file| {
        std::io::copy(&mut binary, file).map(drop)
    })
    .map_err(setup(format!(
        "cannot copy {} into the app directory",
        source.display()
    )))
}

/// Installs an app and starts serving its socket at once.
///
/// # Errors
///
/// Bad name or binary, name taken, or a file could not be written (then nothing is left).
pub async fn install(
    shared: &Arc<Shared>,
    request: InstallRequest,
) -> Result<Arc<App>, DaemonError> {
    let binary = open_binary(&request.binary_path)?;
    let (app, secrets) = shared.registry.install(request.spec, now_ms())?;
    let result = copy_binary(shared, &app, (&request.binary_path, binary))
        .and_then(|()| write_credentials(shared, &app, &secrets))
        .and_then(|()| serve_app(shared, &app));
    if let Err(e) = result {
        let _ = shared.registry.remove(&app.id);
        cleanup_files(shared, &app.id);
        // Never launched, so no process of the uid exists: its reservation can go.
        let _ = shared.registry.release_uid(&app);
        return Err(e);
    }
    let grants: Vec<_> = app.grants.iter().map(ToString::to_string).collect();
    let detail = format!(
        "uid {} auth {} grants [{}]",
        app.uid,
        app.auth_mode.as_str(),
        grants.join(", ")
    );
    shared
        .audit
        .event(&app.id, Some(&app.name), "install", &detail)
        .await;
    Ok(app)
}

/// Issues new secrets; the old token and key are refused from the next request on.
///
/// # Errors
///
/// Unknown app, or the new credentials could not be written.
pub async fn rotate(shared: &Arc<Shared>, name: &str) -> Result<Arc<App>, DaemonError> {
    let (app, secrets) = shared.registry.rotate(name)?;
    write_credentials(shared, &app, &secrets)?;
    shared
        .audit
        .event(
            &app.id,
            Some(&app.name),
            "rotate",
            &format!("generation {}", app.generation),
        )
        .await;
    Ok(app)
}

/// Stops the app if it runs, removes it from the registry, stops serving its socket and
/// deletes its files. Open connections are refused from their next request on.
///
/// # Errors
///
/// Unknown app, or its registry file could not be removed.
pub async fn remove(shared: &Arc<Shared>, name: &str) -> Result<Arc<App>, DaemonError> {
    let app = shared.registry.find(name)?;
    let _ = shared
        .supervisor
        .stop(&app.id, shared.config.stop_grace)
        .await;
    let app = shared.registry.remove(&app.id)?;
    let mut unwarmed = (*app).clone();
    unwarmed.warm = 0;
    if let Err(e) = shared.supervisor.keep_warm(&unwarmed).await {
        tracing::warn!(app = %app.name, "cannot remove its prepared containers: {e}");
    }
    if let Some(token) = lock(&shared.listeners).remove(&app.id) {
        token.cancel();
    }
    lock(&shared.runtimes).remove(&app.id);
    shared.supervisor.forget(&app.id);
    cleanup_files(shared, &app.id);
    // The uid is free again only once no process of it remains on the host (a process the
    // app left behind would otherwise be the next app installed with it).
    let mut detail = String::new();
    if shared.registry.owns_uids() {
        let (uid, gid) = (app.uid, app.gid);
        let killed = tokio::task::spawn_blocking(move || {
            crate::uids::kill_all(uid, gid, crate::uids::KILL_TIMEOUT)
        })
        .await
        .unwrap_or_else(|_| Err(Vec::new()));
        detail = match killed {
            Ok(killed) => match shared.registry.release_uid(&app) {
                Ok(()) if killed == 0 => format!("uid {uid} released"),
                Ok(()) => format!("uid {uid} released after killing {killed} leftover processes"),
                Err(e) => format!("uid {uid} kept reserved (never reused): {e}"),
            },
            Err(survivors) => {
                tracing::error!(
                    uid,
                    ?survivors,
                    "processes of a removed app survived SIGKILL; its uid stays reserved"
                );
                format!(
                    "uid {uid} kept reserved (never reused): processes {survivors:?} survived SIGKILL for {} s",
                    crate::uids::KILL_TIMEOUT.as_secs()
                )
            }
        };
    }
    shared
        .audit
        .event(&app.id, Some(&app.name), "remove", &detail)
        .await;
    Ok(app)
}

fn cleanup_files(shared: &Shared, app_id: &str) {
    let _ = std::fs::remove_dir_all(shared.socket_dir(app_id));
    let _ = std::fs::remove_dir_all(shared.app_dir(app_id));
    let _ = std::fs::remove_dir_all(shared.job_output_dir(app_id));
}

/// Records where the app will run before it is launched there (`app launch --direct`
/// places it on the host, `app launch` in a container); the peer rule follows the record.
/// A live app keeps its placement: a running container must not become reachable from the
/// host, nor a host process from a container.
///
/// # Errors
///
/// Unknown app, the app is running elsewhere, or the entry could not be saved.
pub async fn place(
    shared: &Arc<Shared>,
    name: &str,
    placement: Placement,
) -> Result<Arc<App>, DaemonError> {
    let app = shared.registry.find(name)?;
    if app.placement == placement {
        return Ok(app);
    }
    if shared
        .supervisor
        .state(&app.id)
        .is_some_and(|(_, state)| state.is_live())
    {
        return Err(crate::sandbox::SandboxError::AlreadyRunning(app.name.clone()).into());
    }
    let app = shared
        .registry
        .update(&app.id, |a| a.placement = placement)?;
    shared
        .audit
        .event(&app.id, Some(&app.name), "placement", placement.as_str())
        .await;
    if let Err(e) = shared.supervisor.keep_warm(&app).await {
        tracing::warn!(app = %app.name, "warm pool: {e}");
    }
    Ok(app)
}

/// Changes how the app authenticates, and rewrites its credentials file to say whether it
/// may open sessions. Its open sessions end when it may no longer open them (the handler
/// checks the mode on every request).
///
/// # Errors
///
/// Unknown app, or its entry or credentials file could not be written.
pub async fn set_auth(
    shared: &Arc<Shared>,
    name: &str,
    mode: crate::registry::AuthMode,
) -> Result<Arc<App>, DaemonError> {
    let app = shared.registry.update(name, |a| a.auth_mode = mode)?;
    let socket_dir = shared.socket_dir(&app.id);
    let current = ipc::read_credentials(&socket_dir).map_err(|e| {
        DaemonError::Invalid(format!(
            "cannot read the credentials of app {}: {e}",
            app.name
        ))
    })?;
    let secrets = IssuedSecrets {
        token: current.token,
        signing_key: current.signing_key,
    };
    write_credentials(shared, &app, &secrets)?;
    shared
        .audit
        .event(&app.id, Some(&app.name), "auth", mode.as_str())
        .await;
    Ok(app)
}

/// Sets how many prepared containers the app keeps, and prepares (or removes) them.
///
/// # Errors
///
/// Unknown app, a host app asking for any, the entry could not be saved, or the backend
/// cannot prepare them (the count is kept, and used once it can).
pub async fn set_warm(
    shared: &Arc<Shared>,
    name: &str,
    count: u32,
) -> Result<Arc<App>, DaemonError> {
    crate::config::check_warm("--warm", count).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    let app = shared.registry.find(name)?;
    if count > 0 && app.placement == Placement::Host {
        return Err(DaemonError::Invalid(format!(
            "app {} runs on the host (dev mode): warm pools are for container apps",
            app.name
        )));
    }
    let app = shared.registry.update(&app.id, |a| a.warm = count)?;
    shared
        .audit
        .event(&app.id, Some(&app.name), "warm", &count.to_string())
        .await;
    shared.supervisor.keep_warm(&app).await?;
    Ok(app)
}

/// Changes the node limits set for an app (those `settings` sets) and audits the result;
/// its next request is held to them.
///
/// # Errors
///
/// Unknown app, or the entry could not be saved.
pub async fn set_node_limits(
    shared: &Arc<Shared>,
    name: &str,
    settings: &crate::app_limits::LimitSettings,
) -> Result<Arc<App>, DaemonError> {
    let app = shared.registry.update(name, |app| {
        app.node_limits = app.node_limits.updated(settings);
    })?;
    let runtime = lock(&shared.runtimes).get(&app.id).cloned();
    if let Some(runtime) = runtime {
        runtime.apply(&app.node_limits.resolve(&shared.config.default_node_limits));
    }
    let detail = serde_json::to_string(&app.node_limits).unwrap_or_default();
    shared
        .audit
        .event(&app.id, Some(&app.name), "limits", &detail)
        .await;
    Ok(app)
}

/// Replaces the app's grants.
///
/// # Errors
///
/// Unknown app, or the entry could not be saved.
pub async fn set_grants(
    shared: &Arc<Shared>,
    name: &str,
    change: impl FnOnce(&mut Vec<crate::policy::Grant>),
) -> Result<Arc<App>, DaemonError> {
    let mut before = Vec::new();
    let app = shared.registry.update(name, |app| {
        before.clone_from(&app.grants);
        change(&mut app.grants);
    })?;
    let show = |grants: &[&crate::policy::Grant]| {
        grants
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let added: Vec<_> = app.grants.iter().filter(|g| !before.contains(g)).collect();
    let removed: Vec<_> = before.iter().filter(|g| !app.grants.contains(g)).collect();
    let all: Vec<_> = app.grants.iter().collect();
    for (event, changed) in [("grant", &added), ("revoke", &removed)] {
        if !changed.is_empty() {
            let detail = format!("{}; now [{}]", show(changed), show(&all));
            shared
                .audit
                .event(&app.id, Some(&app.name), event, &detail)
                .await;
        }
    }
    Ok(app)
}
