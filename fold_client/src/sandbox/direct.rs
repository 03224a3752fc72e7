//! Direct-execution dev mode: the app's binary runs as a host process. NOT SANDBOXED.
//!
//! The app runs as a child in its own process group, with its app directory as cwd, a
//! cleared environment plus the `FOLD_CLIENT_*` variables, rlimits, and its stdout and
//! stderr pumped into a size-capped [`LogFile`]. When the daemon runs as root the child
//! switches to the app's uid and gid (std also drops supplementary groups when it sets a
//! uid) and is never left running as root. Nothing stops the app reading whatever its
//! user can read on the host, nor leaving its process group (`setsid`); that is what
//! "not sandboxed" means.
//!
//! As with a container, the app's processes live and die together: when the main process
//! exits, the rest of its group is SIGKILLed, and if the supervising task is dropped (the
//! runtime shuts down) the whole group is SIGKILLed too.
//!
//! Memory: the limit is applied as `RLIMIT_DATA` (private writable memory), not
//! `RLIMIT_AS`: measured, a tokio binary with 72 threads and ~20 MB of data aborts under a
//! 256 MiB `RLIMIT_AS` (thread stacks and malloc arenas reserve address space) but runs
//! under `RLIMIT_DATA`. Neither is a cgroup limit: it bounds each process, not the group.

use super::logfile::{pump, LogFile};
use super::{AppState, LaunchSpec, Launched, ResourceLimits, Sandbox, SandboxError, SandboxKind};
use futures::future::BoxFuture;
use futures::FutureExt;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// `PATH` given to direct-mode apps.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long output still buffered in the pipes may take to drain after the app exits.
const DRAIN: Duration = Duration::from_secs(1);

/// How long `stop` waits after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Runs apps as plain host processes (dev mode, not sandboxed).
#[derive(Debug, Default)]
pub struct DirectSandbox {
    apps: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    state: Arc<watch::Sender<AppState>>,
    stop_requested: Arc<AtomicBool>,
}

impl DirectSandbox {
    /// A backend with no apps.
    pub fn new() -> DirectSandbox {
        DirectSandbox::default()
    }

    /// Host pid of the app's main process (also its process group id) while it runs.
    pub fn pid(&self, app_id: &str) -> Option<u32> {
        match self.state(app_id)? {
            AppState::Running { pid } => pid,
            _ => None,
        }
    }

    fn apps(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn launch_now(&self, spec: &LaunchSpec) -> Result<AppState, SandboxError> {
        let tx = Arc::new(watch::Sender::new(AppState::Starting));
        let stop_requested = Arc::new(AtomicBool::new(false));
        {
            let mut apps = self.apps();
            if apps
                .get(&spec.app_id)
                .is_some_and(|e| e.state.borrow().is_live())
            {
                return Err(SandboxError::AlreadyRunning(spec.app_id.clone()));
            }
            let entry = Entry {
                state: Arc::clone(&tx),
                stop_requested: Arc::clone(&stop_requested),
            };
            apps.insert(spec.app_id.clone(), entry);
        }
        match spawn(spec) {
            Ok((child, log)) => {
                let pid = child.id();
                // Built before the reaper task is first polled: a dropped task kills the group.
                let guard = GroupGuard(pid.and_then(|pid| pgid(pid).ok()));
                let running = AppState::Running { pid };
                tx.send_replace(running.clone());
                tracing::warn!(
                    app_id = %spec.app_id,
                    app = %spec.app_name,
                    pid,
                    "NOT SANDBOXED (direct mode): app runs as a host process"
                );
                tokio::spawn(reap(child, guard, log, tx, stop_requested));
                Ok(running)
            }
            Err(e) => {
                tx.send_replace(AppState::Failed {
                    reason: e.to_string(),
                });
                Err(e)
            }
        }
    }

    async fn stop_now(&self, app_id: &str, grace: Duration) -> Result<AppState, SandboxError> {
        let not_running = || SandboxError::NotRunning(app_id.to_owned());
        let mut rx = {
            let apps = self.apps();
            let entry = apps.get(app_id).ok_or_else(not_running)?;
            if !entry.state.borrow().is_live() {
                return Err(not_running());
            }
            entry.stop_requested.store(true, Ordering::SeqCst);
            entry.state.subscribe()
        };
        let pid = match rx
            .wait_for(|s| *s != AppState::Starting)
            .await
            .map(|s| s.clone())
        {
            Ok(AppState::Running { pid: Some(pid) }) => pid,
            Ok(other) => return Ok(other),
            Err(_) => return Err(not_running()),
        };
        let pgid = pgid(pid)?;
        let ended = |s: &AppState| !s.is_live();
        signal_group(pgid, Signal::SIGTERM);
        let mut waited = tokio::time::timeout(grace, rx.wait_for(ended))
            .await
            .map(|r| r.map(|s| s.clone()));
        if waited.is_err() {
            signal_group(pgid, Signal::SIGKILL);
            waited = tokio::time::timeout(KILL_WAIT, rx.wait_for(ended))
                .await
                .map(|r| r.map(|s| s.clone()));
        }
        match waited {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(_)) => Err(not_running()),
            Err(_) => Err(SandboxError::Backend(format!(
                "app {app_id} survived SIGKILL"
            ))),
        }
    }
}

impl Sandbox for DirectSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Direct
    }

    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Launched, SandboxError>> {
        async move {
            let state = self.launch_now(spec)?;
            Ok(Launched {
                isolation: None,
                state,
                container: None,
                warnings: Vec::new(),
            })
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        app_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        self.stop_now(app_id, grace).boxed()
    }

    fn state(&self, app_id: &str) -> Option<AppState> {
        self.apps().get(app_id).map(|e| e.state.borrow().clone())
    }

    fn subscribe(&self, app_id: &str) -> Option<watch::Receiver<AppState>> {
        self.apps().get(app_id).map(|e| e.state.subscribe())
    }
}

fn pgid(pid: u32) -> Result<Pid, SandboxError> {
    i32::try_from(pid)
        .map(Pid::from_raw)
        .map_err(|_| SandboxError::Backend(format!("pid {pid} out of range")))
}

/// Signals a whole process group; a group that is already gone is not an error.
fn signal_group(pgid: Pid, signal: Signal) {
    if let Err(e) = killpg(pgid, signal) {
        if e != nix::errno::Errno::ESRCH {
            let pgid = pgid.as_raw();
            tracing::warn!(pgid, ?signal, error = %e, "cannot signal app process group");
        }
    }
}

/// Opens the log and starts the child. Runs synchronously: no await inside.
fn spawn(spec: &LaunchSpec) -> Result<(Child, LogFile), SandboxError> {
    let binary = spec.app_dir.join(&spec.binary);
    let spawn_err = |source| SandboxError::Spawn {
        binary: binary.clone(),
        source,
    };
    let mut parts = Path::new(&spec.binary).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) {
        let msg = "binary must be a plain file name inside the app directory";
        return Err(spawn_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            msg,
        )));
    }
    let as_root = nix::unistd::geteuid().is_root();
    if as_root && (spec.uid == 0 || spec.gid == 0) {
        let msg = format!(
            "refusing to run app {} as root (uid {}, gid {})",
            spec.app_id, spec.uid, spec.gid
        );
        return Err(SandboxError::Backend(msg));
    }
    let log = LogFile::open(&spec.log_path, spec.log_cap)?;
    log.set_capture(spec.capture.clone());
    log.write_marker(&format!(
        "NOT SANDBOXED (direct mode): {} runs as a host process",
        spec.app_name
    ))?;

    if let Some(interpreter) = &spec.interpreter {
        crate::sandbox::check_interpreter(interpreter).map_err(SandboxError::Backend)?;
    }
    let (program, args) = spec.command(binary.display().to_string());
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("HOME", &spec.app_dir)
        .env("LANG", "C.UTF-8")
        .env("FOLD_CLIENT_SANDBOX", "direct")
        .env("FOLD_CLIENT_APP_ID", &spec.app_id)
        .env("FOLD_CLIENT_SOCKET_DIR", &spec.socket_dir)
        .env(
            "FOLD_CLIENT_CREDENTIALS",
            spec.socket_dir.join(&spec.credentials_file),
        )
        .current_dir(&spec.app_dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = &spec.legacy_token {
        cmd.env("FOLD_CLIENT_APP_TOKEN", token);
    }
    if as_root {
        cmd.uid(spec.uid).gid(spec.gid);
    }
    set_rlimits(&mut cmd, rlimits(&spec.limits, as_root));
    match cmd.spawn() {
        Ok(child) => Ok((child, log)),
        Err(e) => {
            // Best effort: the launch error itself is what the caller reports.
            let _ = log.write_marker(&format!("cannot start {}: {e}", binary.display()));
            Err(spawn_err(e))
        }
    }
}

/// The rlimits for one app: (resource, value) pairs, applied as soft and hard limit (never
/// above the current hard limit). A limit of 0 means "unlimited", as in Docker, and is
/// skipped. `RLIMIT_NPROC` counts every process of the uid, so it is set only when the app
/// gets its own uid (daemon running as root); otherwise it would count the user's others.
fn rlimits(limits: &ResourceLimits, own_uid: bool) -> Vec<(Resource, u64)> {
    let nproc = if own_uid { limits.pids } else { 0 };
    let wanted = [
        (Resource::RLIMIT_NOFILE, limits.nofile),
        (Resource::RLIMIT_DATA, limits.memory_bytes),
        (Resource::RLIMIT_NPROC, nproc),
    ];
    let mut out: Vec<_> = wanted.into_iter().filter(|&(_, v)| v > 0).collect();
    out.push((Resource::RLIMIT_CORE, 0));
    out
}

/// Installs a hook that applies `limits` in the child between fork and exec.
#[allow(unsafe_code)]
fn set_rlimits(cmd: &mut Command, limits: Vec<(Resource, u64)>) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It only reads the already-built `limits` vector
    // (no allocation), calls getrlimit/setrlimit (plain syscalls: no locks, no allocation)
    // and builds an io::Error from a raw errno (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            for &(resource, want) in &limits {
                let (_, hard) = getrlimit(resource)?;
                let value = want.min(hard);
                setrlimit(resource, value, value)?;
            }
            Ok(())
        });
    }
}

/// Kills the app's whole process group if the reaper is dropped before the app ended (for
/// example when the runtime shuts down, even before the reaper first ran), so no host
/// process outlives its supervisor.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

/// Supervises one child: pumps its output, waits for it, kills what is left of its process
/// group, drains the output and publishes the final state.
async fn reap(
    mut child: Child,
    mut guard: GroupGuard,
    log: LogFile,
    tx: Arc<watch::Sender<AppState>>,
    stop_requested: Arc<AtomicBool>,
) {
    let mut pumps = JoinSet::new();
    if let Some(out) = child.stdout.take() {
        let log = log.clone();
        pumps.spawn(async move { pump(out, &log, "stdout").await });
    }
    if let Some(err) = child.stderr.take() {
        let log = log.clone();
        pumps.spawn(async move { pump(err, &log, "stderr").await });
    }
    let status = child.wait().await;
    // The leader is gone; the group dies with it, as a container's processes do.
    if let Some(pgid) = guard.0.take() {
        signal_group(pgid, Signal::SIGKILL);
    }
    let drained = tokio::time::timeout(DRAIN, async { while pumps.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!("app output still open after exit (a process left its group); dropping it");
        pumps.abort_all();
    }
    let state = match status {
        _ if stop_requested.load(Ordering::SeqCst) => AppState::Stopped,
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => AppState::Exited { code },
            (None, Some(signal)) => AppState::Exited { code: 128 + signal },
            (None, None) => AppState::Failed {
                reason: format!("unknown exit status {status}"),
            },
        },
        Err(e) => AppState::Failed {
            reason: format!("cannot wait for app: {e}"),
        },
    };
    if let Err(e) = log.write_marker(&format!("app {state}")) {
        tracing::warn!(error = %e, "cannot write exit marker");
    }
    tx.send_replace(state);
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;
