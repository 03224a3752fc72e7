//! The running daemon: startup (state, node, audit, app sockets, admin socket) and
//! shutdown. `run(config, shutdown)` is the library's entry point; the app lifecycle
//! (install, rotate, remove) is `crate::apps`.

use crate::admin;
use crate::audit::{now_ms, Audit};
use crate::config::{Config, UidMode};
use crate::fsutil;
use crate::ipc::{self, AppRuntime};
use crate::nonce_journal::NonceJournal;
use crate::proxy::NodeClient;
use crate::registry::Registry;
use crate::sandbox::direct::DirectSandbox;
use crate::sandbox::docker::LazyDocker;
use crate::supervisor::{Backends, Supervisor, SupervisorSettings};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::apps::{
    install, place, remove, rotate, set_grants, set_node_limits, DaemonError, InstallRequest,
    Shared,
};
use crate::apps::{lock, serve_app, setup};

/// Runs the daemon until `shutdown` resolves: opens state, node and audit, serves every
/// installed app's socket and the admin socket, then shuts down cleanly (sockets removed,
/// running apps stopped, tasks awaited).
///
/// # Errors
///
/// Startup failures (state directory, audit log, node, admin socket).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let shared = start(config).await?;
    shutdown.await;
    stop(&shared).await;
    Ok(())
}

/// Starts the daemon and returns its shared state (tests and `run` use this).
///
/// # Errors
///
/// See [`run`].
pub async fn start(config: Config) -> Result<Arc<Shared>, DaemonError> {
    // With per-app uids, apps must be able to traverse (never list) the state directory to
    // reach their own binary and socket directory; everything inside stays private.
    let per_app =
        nix::unistd::geteuid().is_root() && matches!(config.uid_mode, UidMode::PerApp { .. });
    let traversable = if per_app { 0o711 } else { 0o700 };
    fsutil::private_dir(&config.state_dir, traversable)
        .map_err(setup("cannot create the state directory"))?;
    for (dir, mode) in [(config.apps_dir(), traversable), (config.logs_dir(), 0o700)] {
        fsutil::private_dir(&dir, mode)
            .map_err(setup(format!("cannot create {}", dir.display())))?;
    }
    let socket_root = fsutil::private_dir(&config.socket_root, 0o711)
        .map_err(setup("cannot create the socket root"))?;
    // The admin socket first: a second daemon on this state directory stops here, before it
    // touches the audit log, the node's data or the first one's containers.
    let admin_socket = admin::bind(&config).map_err(|e| DaemonError::Setup {
        context: "cannot bind the admin socket".into(),
        source: Box::new(e),
    })?;
    let (audit, _audit_task) = Audit::open(&config.audit_path(), config.audit_rotation())
        .await
        .map_err(setup("cannot open the audit log"))?;
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let (registry, corrupt) = Registry::open(&config.registry_dir(), config.uid_mode, (euid, egid))
        .map_err(setup("cannot open the registry"))?;
    // As root with per-app uids, uids come from the host-wide allocator (uids.rs): never
    // one another user, another daemon or a leftover process could be.
    let (registry, uid_conflicts) = if per_app {
        let allocator = crate::uids::HostAllocator::new(
            &config.uid_reservation_dir,
            config.id_files.clone(),
            &config.state_dir,
        )
        .map_err(setup("cannot open the uid reservation directory"))?;
        registry.with_allocator(Arc::new(allocator))
    } else {
        (registry, Vec::new())
    };
    for conflict in &uid_conflicts {
        tracing::error!("{conflict}; this app is refused at launch until it is reinstalled");
        audit.event("-", None, "uid_conflict", conflict).await;
    }
    for entry in &corrupt {
        tracing::error!(
            "{entry}; this app is not served until the file is fixed or the app reinstalled"
        );
        audit
            .event("-", None, "registry_corrupt", &entry.to_string())
            .await;
    }
    let node = NodeClient::open(&config.node, config.node_pool, config.connection.max_frame)
        .await
        .map_err(|e| DaemonError::Setup {
            context: "cannot set up the node".into(),
            source: Box::new(e),
        })?;
    // Nonces accepted before this start (until their window passes), so that a replay is
    // refused across a restart; apps no longer installed are dropped.
    let (journal, loaded) =
        NonceJournal::open(&config.state_dir, now_ms(), |id| registry.get(id).is_some())
            .map_err(setup("cannot open the nonce journal"))?;
    if !loaded.skipped.is_empty() {
        let lines: Vec<_> = loaded.skipped.iter().map(ToString::to_string).collect();
        let detail = format!("skipped {} lines: {}", lines.len(), lines.join("; "));
        tracing::warn!("nonce journal: {detail}");
        audit
            .event("-", None, "nonce_journal_skipped", &detail)
            .await;
    }
    if !loaded.clean {
        tracing::info!(
            nonces = loaded.entries.len(),
            "no clean shutdown recorded: timestamps from before this start are refused for one auth window"
        );
    }
    let runtimes = AppRuntime::restore(&config, &loaded.entries);
    let chown_to_app = euid == 0 && matches!(config.uid_mode, UidMode::PerApp { .. });
    let registry = Arc::new(registry);
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    // The only place that names the backends: the supervisor sees them as `dyn Sandbox`.
    let backends = Backends {
        direct: Arc::new(DirectSandbox::new()),
        container: Arc::new(LazyDocker::new(
            config.docker_settings(),
            tasks.clone(),
            shutdown.clone(),
        )),
    };
    let supervisor = Supervisor::new(
        SupervisorSettings::from_config(&config),
        backends,
        Arc::clone(&registry),
        audit.clone(),
        tasks.clone(),
        shutdown.clone(),
    );
    let config = Arc::new(config);
    let paths = config.app_paths();
    let node = Arc::new(node);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let journal = Arc::new(journal);
    let services = Arc::new(ipc::Services {
        config: Arc::clone(&config),
        registry: Arc::clone(&registry),
        node: Arc::clone(&node),
        audit: audit.clone(),
        metrics: Arc::clone(&metrics),
        journal: Arc::clone(&journal),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
    });
    let jobs = tokio::sync::Semaphore::new(config.max_concurrent_jobs);
    let shared = Arc::new(Shared {
        jobs,
        job_slots: Mutex::new(std::collections::VecDeque::new()),
        supervisor,
        metrics,
        config,
        registry,
        node,
        audit,
        tasks,
        shutdown,
        services,
        paths,
        listeners: Mutex::new(HashMap::new()),
        runtimes: Mutex::new(runtimes),
        journal,
        chown_to_app,
        socket_root,
    });
    // Containers left running by an earlier run of this daemon (same label) are adopted
    // before the sockets are re-bound, so the peer check knows their containers.
    shared.supervisor.adopt().await;
    crate::admin::remove_leftover_jobs(&shared).await;
    for app in shared.registry.list() {
        if let Err(e) = serve_app(&shared, &app) {
            tracing::error!(app = %app.name, "cannot serve app: {e}");
            shared
                .audit
                .event(&app.id, Some(&app.name), "serve_failed", &e.to_string())
                .await;
        }
    }
    for app in shared.registry.list().iter().filter(|a| a.warm > 0) {
        if let Err(e) = shared.supervisor.keep_warm(app).await {
            tracing::warn!(app = %app.name, "no prepared containers: {e}");
        }
    }
    crate::admin::fill_job_slots(&shared, shared.config.warm_jobs as usize);
    crate::prometheus::spawn(&shared).map_err(setup("cannot bind the metrics endpoint"))?;
    admin::spawn(&shared, admin_socket);
    let weak = Arc::downgrade(&shared);
    shared.tasks.spawn(crate::nonce_journal::maintain(
        Arc::clone(&shared.journal),
        move |visit| {
            if let Some(shared) = weak.upgrade() {
                shared.live_nonces(visit);
            }
        },
        shared.shutdown.clone(),
    ));
    tracing::info!(state = %shared.config.state_dir.display(), apps = shared.registry.list().len(), "fold_client daemon started");
    Ok(shared)
}

/// Stops serving: running apps are stopped, listeners cancelled (sockets removed),
/// connections closed, tasks awaited (bounded).
pub async fn stop(shared: &Arc<Shared>) {
    shared.supervisor.stop_all(shared.config.stop_grace).await;
    shared.shutdown.cancel();
    for token in lock(&shared.listeners).values() {
        token.cancel();
    }
    shared.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10 s of shutdown");
    }
    let _ = std::fs::remove_file(&shared.config.admin_socket);
    // No request is served any more: fsync the nonce journal and mark the stop clean.
    if let Err(e) = shared.journal.close(now_ms(), shared.config.auth_window) {
        tracing::error!(
            "cannot close the nonce journal (the next start refuses older timestamps): {e}"
        );
    }
    // The audit writer gathers lines for a few milliseconds; write them before the runtime ends.
    shared.audit.flush().await;
    tracing::info!("fold_client daemon stopped");
}
