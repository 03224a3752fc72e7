//! Sandboxes: where and how an app's binary runs.
//!
//! Every backend implements [`Sandbox`]: `direct` (dev mode: a host process, NOT
//! sandboxed) and `docker` (hardened containers; the only file that imports bollard). The
//! supervisor holds them as `Arc<dyn Sandbox>` and calls nothing outside the trait. Tests
//! (and the `test-support` feature) add `fake`, a scriptable, recording backend for unit
//! tests of the supervision logic.

pub mod capture;
pub mod cgroup;
pub mod direct;
pub mod docker;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod holder;
pub mod isolation;
pub mod logfile;

pub use cgroup::names as cgroup_names;
pub use isolation::{Isolation, IsolationRequest};

use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// Which backend runs an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxKind {
    /// A host process: dev mode, not sandboxed.
    Direct,
    /// A hardened Docker container.
    Docker,
}

impl SandboxKind {
    /// Lowercase name, as shown by `app ps`.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Direct => "direct",
            SandboxKind::Docker => "docker",
        }
    }
}

/// When a launch pulls the app's image, as the engines' own `--pull` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull before every launch; a failed pull fails the launch.
    Always,
    /// Pull only when the engine does not have the image (the default).
    #[default]
    Missing,
    /// Never pull: a missing image fails the launch, naming how to load it.
    Never,
}

impl PullPolicy {
    /// `always`, `missing` or `never`.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        }
    }
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<PullPolicy, String> {
        match text {
            "always" => Ok(PullPolicy::Always),
            "missing" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!("{text:?}: expected always, missing or never")),
        }
    }
}

/// Resource limits for one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Memory limit in bytes (containers: memory = memory+swap, so no swap).
    pub memory_bytes: u64,
    /// CPU share in billionths of a core (1_000_000_000 = one core).
    pub nano_cpus: u64,
    /// Most processes/threads the app may have.
    pub pids: u64,
    /// Most open files.
    pub nofile: u64,
    /// Size of the app's `/tmp` tmpfs in bytes (containers only).
    pub tmpfs_bytes: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            memory_bytes: 256 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            pids: 64,
            nofile: 1024,
            tmpfs_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Everything a backend needs to start one app.
#[derive(Clone)]
pub struct LaunchSpec {
    /// The app's id (`FOLD_CLIENT_APP_ID`).
    pub app_id: String,
    /// The app's human name.
    pub app_name: String,
    /// Host directory holding the app's binary (mounted at `/app` in containers; the cwd
    /// in direct mode).
    pub app_dir: PathBuf,
    /// The binary's file name inside `app_dir`.
    pub binary: String,
    /// Arguments passed to the binary.
    pub args: Vec<String>,
    /// Runs the binary as a script of this program (`INTERPRETER /app/BINARY ARGS...`), a
    /// command name looked up in the image's `PATH` or an absolute path; `None` runs the
    /// binary itself (a script's `#!` line then names its interpreter).
    pub interpreter: Option<String>,
    /// Host directory holding the app's socket and credentials file.
    pub socket_dir: PathBuf,
    /// File name of the credentials file inside `socket_dir`.
    pub credentials_file: String,
    /// Uid and gid the app runs as. Direct mode switches to them only when the daemon is
    /// root; containers always use them.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// Container image (containers only).
    pub image: String,
    /// When the image is pulled (containers only).
    pub pull: PullPolicy,
    /// The isolation tier the app asks for (containers only).
    pub isolation: IsolationRequest,
    /// A named network the app is granted; `None` means no network at all.
    pub network: Option<String>,
    /// Where the app's stdout and stderr go.
    pub log_path: PathBuf,
    /// Largest size of the log file in bytes; older output is rotated out.
    pub log_cap: u64,
    /// A job's own copy of its output (`app run`), besides the log.
    pub capture: Option<capture::JobOutput>,
    /// The app's token, passed as `FOLD_CLIENT_APP_TOKEN` in direct mode only, for
    /// reference-era apps. Never placed in a container's environment.
    pub legacy_token: Option<String>,
    /// What the supervisor records with the run (restart policy, restarts so far,
    /// deadline). A backend whose runs outlive the daemon (containers) keeps them and hands
    /// them back in [`Found::labels`]; the others ignore them.
    pub labels: HashMap<String, String>,
}

impl LaunchSpec {
    /// The program a run starts and its arguments, with the binary at `binary` (its path
    /// where the run sees it: `/app/BINARY` in a container): the binary and the launch's
    /// arguments, or the interpreter with the binary first.
    pub fn command(&self, binary: String) -> (String, Vec<String>) {
        match &self.interpreter {
            Some(interpreter) => {
                let args = std::iter::once(binary).chain(self.args.iter().cloned());
                (interpreter.clone(), args.collect())
            }
            None => (binary, self.args.clone()),
        }
    }
}

/// Whether `interpreter` may be given as one: a command name or an absolute path, without
/// spaces or control characters.
///
/// # Errors
///
/// Why not.
pub fn check_interpreter(interpreter: &str) -> Result<(), String> {
    let plain = interpreter
        .chars()
        .all(|c| !c.is_whitespace() && !c.is_control());
    let name_or_path = interpreter.starts_with('/') || !interpreter.contains('/');
    if interpreter.is_empty() || interpreter.len() > 255 || !plain || !name_or_path {
        return Err(format!(
            "interpreter {interpreter:?} must be a command name (python3) or an absolute path \
             (/usr/bin/python3)"
        ));
    }
    Ok(())
}

impl fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaunchSpec")
            .field("app_id", &self.app_id)
            .field("app_name", &self.app_name)
            .field("app_dir", &self.app_dir)
            .field("binary", &self.binary)
            .field("args", &self.args)
            .field("interpreter", &self.interpreter)
            .field("socket_dir", &self.socket_dir)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("limits", &self.limits)
            .field("image", &self.image)
            .field("pull", &self.pull)
            .field("isolation", &self.isolation)
            .field("network", &self.network)
            .field("log_path", &self.log_path)
            .field(
                "legacy_token",
                &self.legacy_token.as_ref().map(|_| "<redacted>"),
            )
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// The state of one app's run, as `app ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppState {
    /// Being started.
    Starting,
    /// Running; `pid` is the host pid where known.
    Running {
        /// Host pid of the app's main process.
        pid: Option<u32>,
    },
    /// Exited by itself with this code (or killed by signal: 128 + signal).
    Exited {
        /// Exit code.
        code: i32,
    },
    /// Killed for exceeding its memory limit.
    OomKilled,
    /// Waiting to be restarted by the restart policy.
    Restarting,
    /// Stopped on request.
    Stopped,
    /// Could not be started or supervised.
    Failed {
        /// Why.
        reason: String,
    },
}

impl AppState {
    /// Whether the app is (still) running or about to.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            AppState::Starting | AppState::Running { .. } | AppState::Restarting
        )
    }
}

impl fmt::Display for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppState::Starting => f.write_str("starting"),
            AppState::Running { .. } => f.write_str("running"),
            AppState::Exited { code } => write!(f, "exited({code})"),
            AppState::OomKilled => f.write_str("oom_killed"),
            AppState::Restarting => f.write_str("restarting"),
            AppState::Stopped => f.write_str("stopped"),
            AppState::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The app is already running in this backend.
    #[error("app {0} is already running")]
    AlreadyRunning(String),
    /// The app is not running in this backend.
    #[error("app {0} is not running")]
    NotRunning(String),
    /// The binary could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary's path.
        binary: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The log file could not be opened or written.
    #[error("cannot write log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The container engine could not be reached (down, restarting, wrong address); the
    /// message names its address and the fix.
    #[error(
        "the Docker engine at {host} is not answering ({what}: {cause}); start it \
         (`systemctl start docker` or `dockerd`), point DOCKER_HOST at a running engine, or run \
         the app in dev mode with `--direct` (NOT sandboxed)"
    )]
    EngineUnreachable {
        /// The engine's address (`unix:///var/run/docker.sock`, `tcp://...`).
        host: String,
        /// The request that failed, e.g. `inspecting image foldclient/base:latest`.
        what: String,
        /// Why, e.g. `Connection refused (os error 111)`.
        cause: String,
    },
    /// The app's uid or gid is not its alone any more (a user, group or subordinate range
    /// added after install covers it, or another daemon reserved it): launching would let
    /// someone else be the app. The message names the entry and the fix.
    #[error("refusing to launch app {app}: {problem}")]
    UidNotOwned {
        /// The app's name.
        app: String,
        /// What overlaps, and the fix.
        problem: String,
    },
    /// The app asks for an isolation tier the engine does not offer; the message names
    /// how to provide it. The app is never run under a weaker tier instead.
    #[error("cannot launch app {app} under isolation {asked}: {fix}")]
    TierUnavailable {
        /// The app's name.
        app: String,
        /// What it asked for.
        asked: IsolationRequest,
        /// What the engine offers and how to add the tier.
        fix: String,
    },
    /// Anything else from the backend (engine errors, signals).
    #[error("{0}")]
    Backend(String),
}

/// A started run.
#[derive(Debug, Clone)]
pub struct Launched {
    /// Its state right after the start.
    pub state: AppState,
    /// Its container, for a backend that runs apps in containers.
    pub container: Option<String>,
    /// The tier its container runs under (containers only).
    pub isolation: Option<Isolation>,
    /// Things the user should know (storage limit not enforced, binary/image mismatch).
    pub warnings: Vec<String>,
}

/// Most prepared containers one app may keep.
pub const MAX_WARM: usize = 16;

/// An app's warm pool: prepared containers a launch can take instead of starting one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPool {
    /// Prepared and waiting.
    pub ready: usize,
    /// How many the app keeps.
    pub target: usize,
    /// Why the pool is short, until a preparation succeeds.
    pub problem: Option<String>,
    /// The prepared containers' ids, oldest (next taken) first.
    pub containers: Vec<String>,
}

/// A run of this daemon found in a backend after a daemon restart (a container with the
/// daemon's label).
#[derive(Debug, Clone)]
pub struct Found {
    /// The app it runs.
    pub app_id: String,
    /// The container's id.
    pub container_id: String,
    /// Whether it is still running.
    pub running: bool,
    /// Its labels (the supervisor keeps its launch options there: [`LaunchSpec::labels`]).
    pub labels: HashMap<String, String>,
    /// Arguments it was started with.
    pub args: Vec<String>,
    /// Its image.
    pub image: String,
}

/// A place apps run: every operation the supervisor needs from a backend. Methods return
/// boxed futures so the trait stays object-safe and the supervisor can hold
/// `Arc<dyn Sandbox>` per backend.
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> SandboxKind;

    /// Starts the app described by `spec`; returns once it is running (or failed to start).
    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Launched, SandboxError>>;

    /// Stops the app: SIGTERM, then SIGKILL after `grace`. Returns the final state.
    fn stop<'a>(
        &'a self,
        app_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>>;

    /// The app's current state in this backend, if it was ever launched (or adopted) here.
    fn state(&self, app_id: &str) -> Option<AppState> {
        self.subscribe(app_id).map(|rx| rx.borrow().clone())
    }

    /// Every state of the app's current (or last) run from now on: the backend publishes
    /// each change (starting, running with its pid, how it ended). `None` if the app was
    /// never launched here.
    fn subscribe(&self, app_id: &str) -> Option<watch::Receiver<AppState>>;

    /// Resolves when the app is no longer live (exited, killed or stopped), with its state.
    fn wait<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, Option<AppState>> {
        let rx = self.subscribe(app_id);
        async move {
            let mut rx = rx?;
            let state = rx.wait_for(|s| !s.is_live()).await.ok()?.clone();
            Some(state)
        }
        .boxed()
    }

    /// What the app's last run left that its state cannot say, once it has ended (e.g. the
    /// Docker backend notes an OOM kill of a process other than the app's main one, whose
    /// state stays `exited(N)`). `None` by default.
    fn exit_note(&self, _app_id: &str) -> Option<String> {
        None
    }

    /// The id of the app's current (or last) container; `None` for a backend without
    /// containers.
    fn container(&self, _app_id: &str) -> Option<String> {
        None
    }

    /// The isolation tier of the app's current (or last) container; `None` for a backend
    /// without containers.
    fn isolation(&self, _app_id: &str) -> Option<Isolation> {
        None
    }

    /// This daemon's runs that outlived its last run (containers with its label), running
    /// or not. None by default: a host process does not outlive the daemon.
    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<Found>, SandboxError>> {
        futures::future::ready(Ok(Vec::new())).boxed()
    }

    /// Takes over a run found by [`Sandbox::leftovers`]: its state, output and events from
    /// here on, under `spec` (log file, app id). One that ended meanwhile is finalized; the
    /// returned state says how it ended.
    fn adopt<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        found: &'a Found,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        let _ = found;
        let error = SandboxError::Backend(format!(
            "the {} backend cannot adopt {}",
            self.kind().as_str(),
            spec.app_name
        ));
        futures::future::ready(Err(error)).boxed()
    }

    /// Keeps `count` prepared runs of the app `spec` describes (its launch defaults), which
    /// a launch of the same app, whose run would be identical, takes instead of starting
    /// one; with `refill`, a taken one is replaced. 0 removes them. A backend without warm
    /// starts refuses any other count.
    fn keep_warm<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        (count, refill): (usize, bool),
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        let _ = refill;
        let result = match count {
            0 => Ok(()),
            _ => Err(SandboxError::Backend(format!(
                "the {} backend has no warm starts (app {})",
                self.kind().as_str(),
                spec.app_name
            ))),
        };
        futures::future::ready(result).boxed()
    }

    /// The app's warm pool, if it keeps one.
    fn warm(&self, _app_id: &str) -> Option<WarmPool> {
        None
    }

    /// Removes every prepared run (daemon shutdown).
    fn drain_warm(&self) -> BoxFuture<'_, ()> {
        futures::future::ready(()).boxed()
    }

    /// Kills and removes a leftover run that no installed app owns.
    fn discard<'a>(&'a self, found: &'a Found) -> BoxFuture<'a, Result<(), SandboxError>> {
        let _ = found;
        futures::future::ready(Ok(())).boxed()
    }
}
