//! Configuration, phase two: one validated [`Config`] built from the config file (TOML),
//! and overrides the binary gathered from flags and environment.
//!
//! The library never reads argv or the environment: `main.rs` does, and hands the result
//! here as [`Overrides`]. Defaults are `pub const`s so docs and tests can name them.

use crate::app_limits::{LimitSettings, NodeLimits};
use crate::restart::RestartPolicy;
use crate::sandbox::docker::DockerSettings;
use crate::sandbox::{Isolation, IsolationRequest, PullPolicy, ResourceLimits};
use fold_ipc::server::ConnectionLimits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default timestamp window for signed requests: ±60 s.
pub const DEFAULT_AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Default per-request timeout for node calls.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of connections one app may hold open at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_APP: usize = 64;
/// Default number of nonces remembered per app.
pub const DEFAULT_NONCE_CACHE: usize = 100_000;
/// Default base of per-app uids (when the daemon runs as root); apps get `base + 1` on.
///
/// Outside every range the usual tools hand out (docs/operations.md, "Per-app uids"):
/// above shadow's subordinate ids (`useradd` allocates `SUB_UID_COUNT` = 65536 ids between
/// `SUB_UID_MIN` = 100000 and `SUB_UID_MAX` = 600100000) and systemd's container range
/// (524288-1879048191), in the range systemd's UIDS-GIDS.md lists as unused
/// (1879048192-2147483647), and below 2^31 (ids above it trouble some programs). The
/// allocator still checks every uid against the host's databases and other daemons.
pub const DEFAULT_UID_BASE: u32 = 2_000_000_000;
/// Most per-app uids one daemon hands out (`base + 1` to `base + MAX_PER_APP_UIDS - 1`).
pub const MAX_PER_APP_UIDS: u32 = 100_000;
/// Default directory of the host-wide uid reservations, shared by every FoldClient daemon
/// on the host (root's, 0700; one file per reserved uid).
pub const DEFAULT_UID_RESERVATION_DIR: &str = "/var/lib/fold_client/uids";
/// Default grace period between SIGTERM and SIGKILL when stopping an app.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Default size cap of an app's log file.
pub const DEFAULT_LOG_CAP: u64 = 8 * 1024 * 1024;
/// Default size at which the audit log is rotated.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default number of rotated audit files kept (`audit.jsonl.1` to `.4`).
pub const DEFAULT_AUDIT_KEEP: u32 = 4;
/// Most rotated audit files that may be kept: each rotation renames every one of them.
pub const MAX_AUDIT_KEEP: u32 = 1000;
/// Default container image.
pub const DEFAULT_IMAGE: &str = "alpine:latest";
/// Default isolation tier of newly installed apps: today's runc containers. `auto` or
/// `gvisor` in `[container]` raise it.
pub const DEFAULT_ISOLATION: IsolationRequest = IsolationRequest::Exactly(Isolation::Container);
/// Default name the gVisor runtime is registered under with the engine.
pub const DEFAULT_GVISOR_RUNTIME: &str = "runsc";
/// Default number of pooled connections to an external node.
pub const DEFAULT_NODE_POOL: usize = 4;
/// Default Docker engine address (`DOCKER_HOST` overrides it).
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Default deadline of one Docker engine request (inspect, create, start, kill, remove).
pub const DEFAULT_ENGINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline of one image pull.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Default per-container writable-layer limit, applied only where the engine supports it.
pub const DEFAULT_STORAGE_LIMIT: u64 = 1024 * 1024 * 1024;
/// Default number of restarts after failures before the daemon gives up on an app.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// Default delay before the first restart; it doubles with each further restart.
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_millis(500);

/// Where the data node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeTarget {
    /// Run the node in-process, with its data in this directory.
    Embedded(PathBuf),
    /// An external node on a Unix socket.
    Unix(PathBuf),
    /// An external node on loopback TCP; requests carry the secret read from `secret_file`.
    Tcp {
        /// The node's address (loopback only).
        addr: SocketAddr,
        /// File holding the node secret.
        secret_file: Option<PathBuf>,
    },
}

impl NodeTarget {
    /// Parses `unix:PATH`, `tcp:HOST:PORT` or `embedded`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] saying what form is expected.
    pub fn parse(text: &str, state_dir: &Path) -> Result<NodeTarget, ConfigError> {
        if text == "embedded" {
            return Ok(NodeTarget::Embedded(state_dir.join("node")));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(NodeTarget::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| invalid("node", format!("{addr:?} is not HOST:PORT")))?;
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "node",
                    format!(
                        "{addr} is not a loopback address; the node is only reachable on loopback"
                    ),
                ));
            }
            return Ok(NodeTarget::Tcp {
                addr,
                secret_file: None,
            });
        }
        Err(invalid(
            "node",
            format!("{text:?}: expected `embedded`, `unix:PATH` or `tcp:127.0.0.1:PORT`"),
        ))
    }
}

/// Whose uid apps run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UidMode {
    /// Each app gets its own uid, `base + n` (requires root).
    PerApp {
        /// First uid handed out.
        base: u32,
    },
    /// Every app runs as the daemon's own uid (non-root daemons; tests).
    Daemon,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of the daemon's state: registry, app dirs, logs, audit, node data.
    pub state_dir: PathBuf,
    /// Root of the per-app socket directories.
    pub socket_root: PathBuf,
    /// The admin socket the CLI talks to.
    pub admin_socket: PathBuf,
    /// Where the node is.
    pub node: NodeTarget,
    /// Connections kept open to an external node.
    pub node_pool: usize,
    /// Timestamp window for signed requests.
    pub auth_window: Duration,
    /// Nonces remembered per app; when full, new requests are refused (`rate_limited`)
    /// rather than a nonce still inside the window being forgotten.
    pub nonce_cache: usize,
    /// Authentication failures per app tolerated per `failure_window` before `rate_limited`.
    pub failure_limit: u32,
    /// See `failure_limit`.
    pub failure_window: Duration,
    /// Whether an app's signed requests that are ready together share one batch
    /// verification (`crate::verifier`); off, each is verified alone with `verify_strict`
    /// as it arrives. The verdicts are the same either way.
    pub batch_signatures: bool,
    /// Per-connection caps and timeouts on app sockets.
    pub connection: ConnectionLimits,
    /// Connections one app may hold open at once.
    pub max_connections_per_app: usize,
    /// Timeout for one node call.
    pub request_timeout: Duration,
    /// Whose uid apps run as.
    pub uid_mode: UidMode,
    /// The host-wide uid reservations (per-app uids as root); shared by every daemon on
    /// the host.
    pub uid_reservation_dir: PathBuf,
    /// The host's user databases a per-app uid must not overlap.
    pub id_files: crate::uids::IdFiles,
    /// Default resource limits for new apps.
    pub default_limits: ResourceLimits,
    /// Node limits (share, quota, write rate, bytes in flight) of every app that did not
    /// set its own (`[app_limits]` in the file).
    pub default_node_limits: NodeLimits,
    /// Default container image for new apps.
    pub default_image: String,
    /// When launches pull images.
    pub pull: PullPolicy,
    /// The isolation tier of newly installed apps that ask for none.
    pub default_isolation: IsolationRequest,
    /// The name the gVisor runtime is registered under with the engine.
    pub gvisor_runtime: String,
    /// Grace between SIGTERM and SIGKILL when stopping an app.
    pub stop_grace: Duration,
    /// Size cap of each app's log file.
    pub log_cap: u64,
    /// Bytes of each stream a job (`app run`) keeps by default; past them it drops and
    /// says so.
    pub job_output_cap: u64,
    /// One-off jobs (`fold_client run`) run at once; more wait their turn.
    pub max_concurrent_jobs: usize,
    /// Prepared (warm) containers an app installed without `--warm` keeps.
    pub warm_pool: u32,
    /// Prepared slots for one-off jobs (`fold_client run` with the default image, tier
    /// and limits): throwaway apps installed ahead, each with a prepared container.
    pub warm_jobs: u32,
    /// Where the Prometheus endpoint listens (`metrics_listen`); off when `None`.
    pub metrics_listen: Option<MetricsListen>,
    /// Size at which the audit log is rotated (`audit.jsonl` becomes `audit.jsonl.1`).
    pub audit_max_bytes: u64,
    /// Rotated audit files kept; the oldest beyond this is deleted at each rotation.
    pub audit_keep: u32,
    /// The label value that marks this daemon's containers (`io.foldclient.daemon`). By
    /// default derived from the state directory, so two daemons with different state
    /// directories never see each other's containers, and a restarted daemon adopts its own.
    pub daemon_label: String,
    /// The Docker engine address (`unix://...`, `tcp://...`); `DOCKER_HOST` when set.
    pub docker_host: String,
    /// Deadline of one engine request.
    pub engine_timeout: Duration,
    /// Deadline of one image pull.
    pub pull_timeout: Duration,
    /// Writable-layer limit per container (`storage_opt size`), used only where the engine
    /// supports it; `None` never asks for one.
    pub storage_limit: Option<u64>,
    /// What happens when an app exits on its own (default for launches).
    pub restart: RestartPolicy,
    /// Delay before the first restart; doubles per restart, at most 30 s.
    pub restart_backoff: Duration,
    /// Default maximum lifetime of a launched app; `None` for no limit.
    pub max_lifetime: Option<Duration>,
}

impl Config {
    /// The registry directory (one file per app).
    pub fn registry_dir(&self) -> PathBuf {
        self.state_dir.join("registry")
    }
    /// The directory holding app directories (binaries).
    pub fn apps_dir(&self) -> PathBuf {
        self.state_dir.join("apps")
    }
    /// The directory holding app logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    /// The audit log file.
    pub fn audit_path(&self) -> PathBuf {
        self.state_dir.join("audit.jsonl")
    }
    /// When the audit log is rotated and how many rotated files are kept.
    pub fn audit_rotation(&self) -> crate::audit::Rotation {
        crate::audit::Rotation {
            max_bytes: self.audit_max_bytes,
            keep: self.audit_keep,
        }
    }
    /// Where each app's files are.
    pub fn app_paths(&self) -> AppPaths {
        AppPaths {
            socket_root: self.socket_root.clone(),
            apps_dir: self.apps_dir(),
            logs_dir: self.logs_dir(),
        }
    }
    /// What the Docker backend needs.
    pub fn docker_settings(&self) -> DockerSettings {
        DockerSettings {
            host: self.docker_host.clone(),
            label: self.daemon_label.clone(),
            engine_timeout: self.engine_timeout,
            pull_timeout: self.pull_timeout,
            storage_limit: self.storage_limit,
            grace: self.stop_grace,
            gvisor_runtime: self.gvisor_runtime.clone(),
            warm_dir: self.state_dir.join("warm"),
        }
    }
}

/// Where the Prometheus endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A Unix socket at this path (created 0600).
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(std::net::SocketAddr),
}

impl MetricsListen {
    /// Parses `unix:/absolute/path` or a loopback `address:port` (`127.0.0.1:9464`,
    /// `[::1]:9464`).
    ///
    /// # Errors
    ///
    /// Anything else: a relative path, a name, or an address that is not loopback (the
    /// metrics name every app; they are for this host).
    pub fn parse(text: &str) -> Result<MetricsListen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("{text:?}: the socket path must be absolute"));
            }
            return Ok(MetricsListen::Unix(path));
        }
        let addr: std::net::SocketAddr = text
            .parse()
            .map_err(|_| format!("{text:?}: expected unix:/path or a loopback address:port"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{text:?} is not a loopback address: the metrics name every app, so they stay on this host"
            ));
        }
        Ok(MetricsListen::Tcp(addr))
    }
}

/// Checks a warm pool size.
///
/// # Errors
///
/// Above [`crate::sandbox::MAX_WARM`].
pub fn check_warm(key: &'static str, count: u32) -> Result<u32, ConfigError> {
    let max = crate::sandbox::MAX_WARM;
    if count as usize > max {
        return Err(invalid(
            key,
            format!("{count} prepared containers per app; at most {max}"),
        ));
    }
    Ok(count)
}

/// Where each app's files are, by app id: derived from the state directory and the socket
/// root, so every module that needs a path agrees on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPaths {
    /// Root of the per-app socket directories.
    pub socket_root: PathBuf,
    /// The directory holding app directories (binaries).
    pub apps_dir: PathBuf,
    /// The directory holding app logs.
    pub logs_dir: PathBuf,
}

impl AppPaths {
    /// The app's socket directory (its socket and credentials file).
    pub fn socket_dir(&self, app_id: &str) -> PathBuf {
        self.socket_root.join(app_id)
    }
    /// The app's socket path.
    pub fn socket_path(&self, app_id: &str) -> PathBuf {
        self.socket_dir(app_id).join(format!("{app_id}.sock"))
    }
    /// The app's directory (its binary).
    pub fn app_dir(&self, app_id: &str) -> PathBuf {
        self.apps_dir.join(app_id)
    }
    /// The app's log file.
    pub fn log_path(&self, app_id: &str) -> PathBuf {
        self.logs_dir.join(format!("{app_id}.log"))
    }
    /// Where a one-off job (`fold_client run`) keeps its output until its client has read
    /// it: `jobs/<run id>`, holding `stdout` and `stderr`.
    pub fn one_off_output_dir(&self, run_id: &str) -> PathBuf {
        self.jobs_dir().join(run_id)
    }
    /// Where one-off jobs keep their output (a directory per run).
    pub fn jobs_dir(&self) -> PathBuf {
        self.logs_dir.join("jobs")
    }
    /// Where the app's jobs (`app run`) keep their output: a directory per run, holding
    /// `stdout` and `stderr`; only the last run's is kept.
    pub fn job_output_dir(&self, app_id: &str) -> PathBuf {
        self.logs_dir.join(format!("{app_id}.run"))
    }
}

/// The config file, as written by people. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::state_dir`].
    pub state_dir: Option<PathBuf>,
    /// See [`Config::socket_root`].
    pub socket_root: Option<PathBuf>,
    /// See [`Config::admin_socket`].
    pub admin_socket: Option<PathBuf>,
    /// `embedded`, `unix:PATH` or `tcp:127.0.0.1:PORT`.
    pub node: Option<String>,
    /// File holding the node secret for `tcp:` nodes.
    pub node_secret_file: Option<PathBuf>,
    /// See [`Config::node_pool`].
    pub node_pool: Option<usize>,
    /// Timestamp window in seconds.
    pub auth_window_secs: Option<u64>,
    /// See [`Config::nonce_cache`].
    pub nonce_cache: Option<usize>,
    /// See [`Config::failure_limit`].
    pub failure_limit: Option<u32>,
    /// Failure window in seconds.
    pub failure_window_secs: Option<u64>,
    /// See [`Config::batch_signatures`].
    pub batch_signatures: Option<bool>,
    /// Largest frame in bytes.
    pub max_frame_bytes: Option<usize>,
    /// Idle connection timeout in seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a frame may take to arrive once its first byte has.
    pub read_timeout_secs: Option<u64>,
    /// Seconds writing responses to a connection may take before it is dropped.
    pub write_timeout_secs: Option<u64>,
    /// See [`Config::max_connections_per_app`].
    pub max_connections_per_app: Option<usize>,
    /// Node call timeout in milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// `per_app` (default when root) or `daemon`.
    pub uid_mode: Option<String>,
    /// Base of per-app uids (apps get `uid_base + 1` on).
    pub uid_base: Option<u32>,
    /// See [`Config::uid_reservation_dir`].
    pub uid_reservation_dir: Option<PathBuf>,
    /// The passwd file checked for overlaps (default `/etc/passwd`).
    pub passwd_file: Option<PathBuf>,
    /// The group file checked for overlaps (default `/etc/group`).
    pub group_file: Option<PathBuf>,
    /// The subordinate uid file checked for overlaps (default `/etc/subuid`).
    pub subuid_file: Option<PathBuf>,
    /// The subordinate gid file checked for overlaps (default `/etc/subgid`).
    pub subgid_file: Option<PathBuf>,
    /// Default container image.
    pub default_image: Option<String>,
    /// Stop grace in milliseconds.
    pub stop_grace_ms: Option<u64>,
    /// Log cap in bytes.
    pub log_cap_bytes: Option<u64>,
    /// See [`Config::job_output_cap`].
    pub job_output_cap_bytes: Option<u64>,
    /// See [`Config::max_concurrent_jobs`].
    pub max_concurrent_jobs: Option<usize>,
    /// See [`Config::warm_pool`].
    pub warm_pool: Option<u32>,
    /// See [`Config::warm_jobs`].
    pub warm_jobs: Option<u32>,
    /// See [`Config::metrics_listen`]: `unix:/path` or a loopback `address:port`.
    pub metrics_listen: Option<String>,
    /// See [`Config::audit_max_bytes`].
    pub audit_max_bytes: Option<u64>,
    /// See [`Config::audit_keep`].
    pub audit_keep: Option<u32>,
    /// Label value for this daemon's containers.
    pub daemon_label: Option<String>,
    /// Docker engine address (`DOCKER_HOST` wins).
    pub docker_host: Option<String>,
    /// Engine request deadline in seconds.
    pub engine_timeout_secs: Option<u64>,
    /// Image pull deadline in seconds.
    pub pull_timeout_secs: Option<u64>,
    /// Container writable-layer limit in bytes (0: never ask for one).
    pub storage_limit_bytes: Option<u64>,
    /// `on-failure` (default) or `never`.
    pub restart: Option<String>,
    /// Restarts after failures before giving up (0: never restart).
    pub max_restarts: Option<u32>,
    /// First restart delay in milliseconds.
    pub restart_backoff_ms: Option<u64>,
    /// Default maximum app lifetime in seconds.
    pub max_lifetime_secs: Option<u64>,
    /// `[app_limits]`: defaults of every app's share, quota and write rate.
    pub app_limits: Option<LimitSettings>,
    /// `[container]`: defaults of every container app (limits, image, pulls, tier).
    pub container: Option<ContainerSettings>,
}

/// The `[container]` section: what an app gets when its install sets nothing else, as the
/// engines' own config sections say it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSettings {
    /// Memory limit in bytes (no swap on top).
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores (`0.5`, `2`).
    pub cpus: Option<f64>,
    /// Most processes and threads.
    pub pids: Option<u64>,
    /// Most open files.
    pub nofile: Option<u64>,
    /// Size of the app's `/tmp` in bytes.
    pub tmpfs_bytes: Option<u64>,
    /// Image (the same as the top-level `default_image`; set one of them).
    pub image: Option<String>,
    /// `always`, `missing` (default) or `never`.
    pub pull: Option<String>,
    /// `container` (default), `gvisor` or `auto`.
    pub isolation: Option<String>,
    /// The name gVisor is registered under with the engine (default `runsc`).
    pub gvisor_runtime: Option<String>,
}

/// The validated `[container]` section.
struct ContainerDefaults {
    limits: ResourceLimits,
    image: String,
    pull: PullPolicy,
    isolation: IsolationRequest,
    gvisor_runtime: String,
}

impl ContainerSettings {
    fn resolve(self, top_level_image: Option<String>) -> Result<ContainerDefaults, ConfigError> {
        let base = ResourceLimits::default();
        let nonzero = |key: &'static str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(invalid(key, "must be greater than zero")),
            other => Ok(other.unwrap_or(default)),
        };
        let nano_cpus = match self.cpus {
            None => base.nano_cpus,
            Some(cpus) if cpus.is_finite() && (0.01..=1024.0).contains(&cpus) => {
                (cpus * 1e9).round() as u64
            }
            Some(cpus) => {
                return Err(invalid(
                    "container.cpus",
                    format!("{cpus}: expected 0.01 to 1024 cores"),
                ))
            }
        };
        let image = match (self.image, top_level_image) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "container.image",
                    "set either container.image or default_image, not both",
                ))
            }
            (Some(image), None) | (None, Some(image)) => image,
            (None, None) => DEFAULT_IMAGE.to_string(),
        };
        if image.trim().is_empty() {
            return Err(invalid("container.image", "must not be empty"));
        }
        let gvisor_runtime = self
            .gvisor_runtime
            .unwrap_or_else(|| DEFAULT_GVISOR_RUNTIME.to_string());
        let runtime_ok = !gvisor_runtime.is_empty()
            && gvisor_runtime
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !runtime_ok {
            return Err(invalid(
                "container.gvisor_runtime",
                format!("{gvisor_runtime:?}: use [A-Za-z0-9._-], as registered with the engine"),
            ));
        }
        Ok(ContainerDefaults {
            limits: ResourceLimits {
                memory_bytes: nonzero(
                    "container.memory_bytes",
                    self.memory_bytes,
                    base.memory_bytes,
                )?,
                nano_cpus,
                pids: nonzero("container.pids", self.pids, base.pids)?,
                nofile: nonzero("container.nofile", self.nofile, base.nofile)?,
                tmpfs_bytes: nonzero("container.tmpfs_bytes", self.tmpfs_bytes, base.tmpfs_bytes)?,
            },
            image,
            pull: match self.pull {
                None => PullPolicy::default(),
                Some(text) => text.parse().map_err(|m| invalid("container.pull", m))?,
            },
            isolation: match self.isolation {
                None => DEFAULT_ISOLATION,
                Some(text) => text
                    .parse()
                    .map_err(|m| invalid("container.isolation", m))?,
            },
            gvisor_runtime,
        })
    }
}

impl FileConfig {
    /// Parses a config file's text.
    ///
    /// # Errors
    ///
    /// [`ConfigError::File`] naming the file and the TOML problem.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Values from flags and environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--state-dir` / `FOLD_CLIENT_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--socket-root`.
    pub socket_root: Option<PathBuf>,
    /// `--node`.
    pub node: Option<String>,
    /// `--node-secret-file`.
    pub node_secret_file: Option<PathBuf>,
    /// `--uid-mode`.
    pub uid_mode: Option<String>,
    /// `--docker-host` / `DOCKER_HOST`.
    pub docker_host: Option<String>,
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("config `{key}`: {message}")]
    Invalid {
        /// The key at fault.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Longest Unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Config {
    /// Merges file and overrides into a validated config. `euid` decides the default uid mode.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the key at fault.
    pub fn build(file: FileConfig, over: Overrides, euid: u32) -> Result<Config, ConfigError> {
        let state_dir = over.state_dir.or(file.state_dir).ok_or_else(|| {
            invalid(
                "state_dir",
                "not set; pass --state-dir or set it in the config file",
            )
        })?;
        if !state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                format!("{} is not an absolute path", state_dir.display()),
            ));
        }
        let socket_root = over
            .socket_root
            .or(file.socket_root)
            .unwrap_or_else(|| state_dir.join("sockets"));
        let admin_socket = file
            .admin_socket
            .unwrap_or_else(|| state_dir.join("admin.sock"));
        // <root>/<app_id>/<app_id>.sock with 16-byte app ids.
        if socket_root.as_os_str().len() + 2 * 16 + 7 > MAX_SOCKET_PATH {
            return Err(invalid(
                "socket_root",
                format!(
                    "{} is too long for Unix socket paths",
                    socket_root.display()
                ),
            ));
        }
        if admin_socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(invalid(
                "admin_socket",
                "path is too long for a Unix socket",
            ));
        }
        let mut node = NodeTarget::parse(
            over.node.or(file.node).as_deref().unwrap_or("embedded"),
            &state_dir,
        )?;
        if let NodeTarget::Tcp { secret_file, .. } = &mut node {
            *secret_file = over.node_secret_file.or(file.node_secret_file);
        }
        let uid_mode = match over.uid_mode.or(file.uid_mode).as_deref() {
            None if euid == 0 => UidMode::PerApp {
                base: file.uid_base.unwrap_or(DEFAULT_UID_BASE),
            },
            None | Some("daemon") => UidMode::Daemon,
            Some("per_app") if euid == 0 => UidMode::PerApp {
                base: file.uid_base.unwrap_or(DEFAULT_UID_BASE),
            },
            Some("per_app") => {
                return Err(invalid(
                    "uid_mode",
                    "per_app needs the daemon to run as root",
                ))
            }
            Some(other) => {
                return Err(invalid(
                    "uid_mode",
                    format!("{other:?}: expected per_app or daemon"),
                ))
            }
        };
        if let UidMode::PerApp { base } = uid_mode {
            if base.checked_add(MAX_PER_APP_UIDS).is_none() {
                return Err(invalid(
                    "uid_base",
                    format!(
                        "{base} is too large: uid_base + {MAX_PER_APP_UIDS} must stay below {}",
                        u32::MAX
                    ),
                ));
            }
        }
        let uid_reservation_dir = file
            .uid_reservation_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_UID_RESERVATION_DIR));
        if !uid_reservation_dir.is_absolute() {
            return Err(invalid(
                "uid_reservation_dir",
                format!("{} is not an absolute path", uid_reservation_dir.display()),
            ));
        }
        let defaults = crate::uids::IdFiles::default();
        let id_files = crate::uids::IdFiles {
            passwd: file.passwd_file.unwrap_or(defaults.passwd),
            group: file.group_file.unwrap_or(defaults.group),
            subuid: file.subuid_file.unwrap_or(defaults.subuid),
            subgid: file.subgid_file.unwrap_or(defaults.subgid),
        };
        let connection = ConnectionLimits {
            max_frame: positive(
                "max_frame_bytes",
                file.max_frame_bytes,
                fold_ipc::frame::DEFAULT_MAX_FRAME,
            )?,
            idle_timeout: Duration::from_secs(positive(
                "idle_timeout_secs",
                file.idle_timeout_secs,
                300,
            )?),
            read_timeout: Duration::from_secs(positive(
                "read_timeout_secs",
                file.read_timeout_secs,
                10,
            )?),
            write_timeout: Duration::from_secs(positive(
                "write_timeout_secs",
                file.write_timeout_secs,
                10,
            )?),
            ..ConnectionLimits::default()
        };
        let container = file
            .container
            .unwrap_or_default()
            .resolve(file.default_image)?;
        Ok(Config {
            node,
            node_pool: positive("node_pool", file.node_pool, DEFAULT_NODE_POOL)?,
            auth_window: Duration::from_secs(positive(
                "auth_window_secs",
                file.auth_window_secs,
                DEFAULT_AUTH_WINDOW.as_secs(),
            )?),
            nonce_cache: positive("nonce_cache", file.nonce_cache, DEFAULT_NONCE_CACHE)?,
            failure_limit: positive("failure_limit", file.failure_limit, 20)?,
            failure_window: Duration::from_secs(positive(
                "failure_window_secs",
                file.failure_window_secs,
                10,
            )?),
            batch_signatures: file.batch_signatures.unwrap_or(true),
            connection,
            max_connections_per_app: positive(
                "max_connections_per_app",
                file.max_connections_per_app,
                DEFAULT_MAX_CONNECTIONS_PER_APP,
            )?,
            request_timeout: Duration::from_millis(positive(
                "request_timeout_ms",
                file.request_timeout_ms,
                DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
            )?),
            uid_mode,
            uid_reservation_dir,
            id_files,
            default_limits: container.limits,
            default_node_limits: {
                let settings = file.app_limits.unwrap_or_default();
                settings.validate().map_err(|m| invalid("app_limits", m))?;
                settings.resolve(&NodeLimits::default())
            },
            default_image: container.image,
            pull: container.pull,
            default_isolation: container.isolation,
            gvisor_runtime: container.gvisor_runtime,
            stop_grace: Duration::from_millis(
                file.stop_grace_ms
                    .unwrap_or(DEFAULT_STOP_GRACE.as_millis() as u64),
            ),
            log_cap: positive("log_cap_bytes", file.log_cap_bytes, DEFAULT_LOG_CAP)?,
            job_output_cap: positive(
                "job_output_cap_bytes",
                file.job_output_cap_bytes,
                crate::sandbox::capture::DEFAULT_OUTPUT_CAP,
            )?,
            max_concurrent_jobs: file.max_concurrent_jobs.unwrap_or(4).max(1),
            warm_pool: check_warm("warm_pool", file.warm_pool.unwrap_or(0))?,
            warm_jobs: check_warm("warm_jobs", file.warm_jobs.unwrap_or(0))?,
            metrics_listen: file
                .metrics_listen
                .as_deref()
                .map(MetricsListen::parse)
                .transpose()
                .map_err(|e| invalid("metrics_listen", e))?,
            audit_max_bytes: positive(
                "audit_max_bytes",
                file.audit_max_bytes,
                DEFAULT_AUDIT_MAX_BYTES,
            )?,
            audit_keep: audit_keep(file.audit_keep)?,
            daemon_label: match file.daemon_label {
                Some(label) => check_label(label)?,
                None => default_label(&state_dir),
            },
            docker_host: docker_host(over.docker_host.or(file.docker_host))?,
            engine_timeout: Duration::from_secs(positive(
                "engine_timeout_secs",
                file.engine_timeout_secs,
                DEFAULT_ENGINE_TIMEOUT.as_secs(),
            )?),
            pull_timeout: Duration::from_secs(positive(
                "pull_timeout_secs",
                file.pull_timeout_secs,
                DEFAULT_PULL_TIMEOUT.as_secs(),
            )?),
            storage_limit: match file.storage_limit_bytes {
                Some(0) => None,
                Some(n) => Some(n),
                None => Some(DEFAULT_STORAGE_LIMIT),
            },
            restart: restart_policy(
                file.restart.as_deref(),
                file.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
            )?,
            restart_backoff: Duration::from_millis(positive(
                "restart_backoff_ms",
                file.restart_backoff_ms,
                DEFAULT_RESTART_BACKOFF.as_millis() as u64,
            )?),
            max_lifetime: match file.max_lifetime_secs {
                Some(0) => return Err(invalid("max_lifetime_secs", "must be greater than zero")),
                other => other.map(Duration::from_secs),
            },
            state_dir,
            socket_root,
            admin_socket,
        })
    }
}

/// The default label: `sd-` and 12 hex digits of the SHA-256 of the state directory, so
/// each state directory (each daemon) has its own and keeps it across restarts.
fn default_label(state_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("sd-{}", &hex::encode(digest)[..12])
}

fn check_label(label: String) -> Result<String, ConfigError> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(label)
    } else {
        Err(invalid(
            "daemon_label",
            format!("{label:?}: use 1-64 of [A-Za-z0-9._-]"),
        ))
    }
}

fn docker_host(host: Option<String>) -> Result<String, ConfigError> {
    let host = host
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string());
    let known = ["unix://", "tcp://", "http://", "https://"];
    if known.iter().any(|p| host.starts_with(p)) {
        Ok(host)
    } else {
        Err(invalid(
            "docker_host",
            format!("{host:?}: expected unix:///path/to/docker.sock or tcp://HOST:PORT"),
        ))
    }
}

/// Rotated audit files to keep: at least one (zero would delete every rotated-out file,
/// i.e. audit records, at once), at most [`MAX_AUDIT_KEEP`].
fn audit_keep(keep: Option<u32>) -> Result<u32, ConfigError> {
    let keep = positive("audit_keep", keep, DEFAULT_AUDIT_KEEP)?;
    if keep > MAX_AUDIT_KEEP {
        return Err(invalid(
            "audit_keep",
            format!("{keep} is more than {MAX_AUDIT_KEEP}"),
        ));
    }
    Ok(keep)
}

fn restart_policy(text: Option<&str>, max_restarts: u32) -> Result<RestartPolicy, ConfigError> {
    RestartPolicy::parse(text.unwrap_or("on-failure"), max_restarts)
        .map_err(|message| invalid("restart", message))
}

fn positive<T: PartialOrd + Default + Copy + std::fmt::Display>(
    key: &'static str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if value <= T::default() {
        return Err(invalid(key, format!("{value} must be greater than zero")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(file: &str, over: Overrides, euid: u32) -> Result<Config, ConfigError> {
        Config::build(FileConfig::parse(file, Path::new("t.toml"))?, over, euid)
    }

    #[test]
    fn overrides_win_and_defaults_apply() {
        let over = Overrides {
            state_dir: Some("/srv/fold".into()),
            ..Overrides::default()
        };
        let c = build(
            "state_dir = \"/var/lib/fold\"\nauth_window_secs = 30\n",
            over,
            1000,
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/fold"));
        assert_eq!(c.audit_max_bytes, DEFAULT_AUDIT_MAX_BYTES);
        assert_eq!(c.audit_keep, DEFAULT_AUDIT_KEEP);
        assert_eq!(c.socket_root, PathBuf::from("/srv/fold/sockets"));
        assert_eq!(c.auth_window, Duration::from_secs(30));
        assert_eq!(c.node, NodeTarget::Embedded("/srv/fold/node".into()));
        assert_eq!(c.uid_mode, UidMode::Daemon);
        let root = build("state_dir = \"/x\"", Overrides::default(), 0).unwrap();
        assert_eq!(
            root.uid_mode,
            UidMode::PerApp {
                base: DEFAULT_UID_BASE
            }
        );
        assert_eq!(
            root.uid_reservation_dir,
            PathBuf::from(DEFAULT_UID_RESERVATION_DIR)
        );
        assert_eq!(root.id_files, crate::uids::IdFiles::default());
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = |text: &str| {
            build(text, Overrides::default(), 1000)
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("state_dir"));
        assert!(err("state_dir = \"rel\"").contains("state_dir"));
        assert!(err("state_dir = \"/x\"\nnode = \"tcp:10.0.0.1:5\"").contains("loopback"));
        assert!(err("state_dir = \"/x\"\nnonce_cache = 0").contains("nonce_cache"));
        assert!(err("state_dir = \"/x\"\nuid_mode = \"per_app\"").contains("root"));
        assert!(err("state_dir = \"/x\"\nbogus = 1").contains("t.toml"));
        assert!(err(&format!("state_dir = \"/{}\"", "d".repeat(100))).contains("socket_root"));
        assert!(err("state_dir = \"/x\"\ndaemon_label = \"a=b\"").contains("daemon_label"));
        assert!(
            err("state_dir = \"/x\"\ndocker_host = \"/var/run/d.sock\"").contains("docker_host")
        );
        assert!(err("state_dir = \"/x\"\nrestart = \"always\"").contains("restart"));
        assert!(err("state_dir = \"/x\"\naudit_max_bytes = 0").contains("audit_max_bytes"));
        assert!(err("state_dir = \"/x\"\naudit_keep = 0").contains("audit_keep"));
        assert!(err("state_dir = \"/x\"\naudit_keep = 1001").contains("audit_keep"));
        let root_err = |text: &str| {
            build(text, Overrides::default(), 0)
                .unwrap_err()
                .to_string()
        };
        assert!(root_err("state_dir = \"/x\"\nuid_base = 4294967000").contains("uid_base"));
        assert!(
            root_err("state_dir = \"/x\"\nuid_reservation_dir = \"rel\"")
                .contains("uid_reservation_dir")
        );
    }

    #[test]
    fn the_container_section_sets_every_default() {
        let c = build(
            "state_dir = \"/x\"\n[container]\nmemory_bytes = 134217728\ncpus = 0.5\npids = 32\n\
             nofile = 512\ntmpfs_bytes = 1048576\nimage = \"foldclient/base\"\npull = \"never\"\n\
             isolation = \"auto\"\ngvisor_runtime = \"runsc-ptrace\"",
            Overrides::default(),
            1000,
        )
        .unwrap();
        assert_eq!(
            c.default_limits,
            ResourceLimits {
                memory_bytes: 128 << 20,
                nano_cpus: 500_000_000,
                pids: 32,
                nofile: 512,
                tmpfs_bytes: 1 << 20,
            }
        );
        assert_eq!(c.default_image, "foldclient/base");
        assert_eq!(c.pull, PullPolicy::Never);
        assert_eq!(c.default_isolation, IsolationRequest::Auto);
        assert_eq!(c.docker_settings().gvisor_runtime, "runsc-ptrace");
        let plain = build("state_dir = \"/x\"", Overrides::default(), 1000).unwrap();
        assert_eq!(plain.default_limits, ResourceLimits::default());
        assert_eq!(plain.default_isolation, DEFAULT_ISOLATION);
        assert_eq!(plain.pull, PullPolicy::Missing);
        assert_eq!(plain.gvisor_runtime, DEFAULT_GVISOR_RUNTIME);
        let err = |text: &str| {
            build(
                &format!("state_dir = \"/x\"\n{text}"),
                Overrides::default(),
                1000,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(err("[container]\nisolation = \"kvm\"").contains("container.isolation"));
        assert!(err("[container]\npull = \"sometimes\"").contains("container.pull"));
        assert!(err("[container]\ncpus = 0.0").contains("container.cpus"));
        assert!(err("[container]\npids = 0").contains("container.pids"));
        assert!(err("[container]\ngvisor_runtime = \"a b\"").contains("gvisor_runtime"));
        assert!(err("default_image = \"a\"\n[container]\nimage = \"b\"").contains("not both"));
        assert!(err("[container]\nbogus = 1").contains("t.toml"));
    }

    #[test]
    fn audit_rotation_comes_from_the_file() {
        let c = build(
            "state_dir = \"/x\"\naudit_max_bytes = 1048576\naudit_keep = 2",
            Overrides::default(),
            1000,
        )
        .unwrap();
        assert_eq!(
            c.audit_rotation(),
            crate::audit::Rotation {
                max_bytes: 1024 * 1024,
                keep: 2
            }
        );
    }

    #[test]
    fn container_settings_have_defaults() {
        let over = |dir: &str| Overrides {
            state_dir: Some(dir.into()),
            ..Overrides::default()
        };
        let a = build("", over("/srv/a"), 0).unwrap();
        let a2 = build("", over("/srv/a"), 0).unwrap();
        let b = build("", over("/srv/b"), 0).unwrap();
        assert_eq!(a.daemon_label, a2.daemon_label, "stable across restarts");
        assert_ne!(a.daemon_label, b.daemon_label, "distinct per state dir");
        assert!(a.daemon_label.starts_with("sd-"));
        assert_eq!(a.docker_host, DEFAULT_DOCKER_HOST);
        assert_eq!(a.storage_limit, Some(DEFAULT_STORAGE_LIMIT));
        assert_eq!(
            a.restart,
            RestartPolicy::OnFailure {
                max_restarts: DEFAULT_MAX_RESTARTS
            }
        );
        let c = build(
            "restart = \"never\"\nstorage_limit_bytes = 0\nmax_lifetime_secs = 60\ndaemon_label = \"ci-1\"",
            Overrides {
                docker_host: Some("tcp://127.0.0.1:2375".into()),
                ..over("/srv/c")
            },
            0,
        )
        .unwrap();
        assert_eq!(c.restart, RestartPolicy::Never);
        assert_eq!(c.storage_limit, None);
        assert_eq!(c.max_lifetime, Some(Duration::from_secs(60)));
        assert_eq!(c.daemon_label, "ci-1");
        assert_eq!(c.docker_host, "tcp://127.0.0.1:2375");
    }
}
