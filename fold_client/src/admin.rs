//! The admin socket: how the CLI drives the daemon. Framed JSON (the `fold_ipc` framing),
//! one request and one response at a time. Only the daemon's own uid (or root) may connect:
//! the socket is 0600 in the 0700 state directory and the peer uid is checked.
//!
//! These types cross a socket, but only between the `fold_client` binary and itself, so they
//! live here rather than in `fold_ipc` (which is the app-facing contract).

mod apps;

pub use apps::app_view;

use crate::app_limits::LimitSettings;
use crate::daemon::{DaemonError, Shared};
use crate::ipc::AppSocket;
use crate::policy::Grant;
use apps::execute;
use fold_ipc::frame::{read_frame, write_frame};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// Largest admin frame.
const MAX_ADMIN_FRAME: usize = 1024 * 1024;
/// How long an admin connection may stay idle.
const ADMIN_IDLE: Duration = Duration::from_secs(60);

/// A command from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Daemon status.
    Status,
    /// Install an app.
    Install {
        /// App name.
        name: String,
        /// Absolute path of the binary to copy.
        binary: PathBuf,
        /// Grants, `OP:SCHEMA`.
        #[serde(default)]
        grants: Vec<String>,
        /// Container image.
        #[serde(default)]
        image: Option<String>,
        /// `signed` (default) or `token`.
        #[serde(default)]
        auth: Option<String>,
        /// Named network.
        #[serde(default)]
        network: Option<String>,
        /// Memory limit, e.g. `256m`.
        #[serde(default)]
        memory: Option<String>,
        /// CPU limit in cores, e.g. 0.5.
        #[serde(default)]
        cpus: Option<f64>,
        /// Process limit.
        #[serde(default)]
        pids: Option<u64>,
        /// Place it on the host (dev mode): any process of its uid may connect. Without
        /// it, only a process of its running container may.
        #[serde(default)]
        direct: bool,
        /// Node limits set for this app; the rest come from the config.
        #[serde(default)]
        node_limits: LimitSettings,
    },
    /// Change an app's node limits (only those set).
    Limits {
        /// Name or id.
        app: String,
        /// The limits to change.
        node_limits: LimitSettings,
    },
    /// List apps.
    List,
    /// One app in detail.
    Show {
        /// Name or id.
        app: String,
    },
    /// Add grants.
    Grant {
        /// Name or id.
        app: String,
        /// Grants to add.
        grants: Vec<String>,
    },
    /// Remove grants.
    Ungrant {
        /// Name or id.
        app: String,
        /// Grants to remove.
        grants: Vec<String>,
    },
    /// New token and key.
    Rotate {
        /// Name or id.
        app: String,
    },
    /// Uninstall.
    Remove {
        /// Name or id.
        app: String,
    },
    /// Start the app with the daemon's default restart policy and lifetime.
    Launch {
        /// Name or id.
        app: String,
        /// Run on the host, NOT sandboxed.
        #[serde(default)]
        direct: bool,
        /// Arguments for the binary.
        #[serde(default)]
        args: Vec<String>,
    },
    /// Start the app with explicit supervision options (absent ones: daemon defaults).
    LaunchWith {
        /// Name or id.
        app: String,
        /// Run on the host, NOT sandboxed.
        #[serde(default)]
        direct: bool,
        /// Arguments for the binary.
        #[serde(default)]
        args: Vec<String>,
        /// Image for this launch instead of the app's.
        #[serde(default)]
        image: Option<String>,
        /// `never` or `on-failure`.
        #[serde(default)]
        restart: Option<String>,
        /// Most restarts in a row after failures.
        #[serde(default)]
        max_restarts: Option<u32>,
        /// Hard limit on the run time, ms.
        #[serde(default)]
        max_lifetime_ms: Option<u64>,
    },
    /// Run the app once: start, wait at most `timeout_ms`, stop, remove; answers when done.
    Run {
        /// Name or id.
        app: String,
        /// Run on the host, NOT sandboxed.
        #[serde(default)]
        direct: bool,
        /// Arguments for the binary.
        #[serde(default)]
        args: Vec<String>,
        /// Image for this run instead of the app's.
        #[serde(default)]
        image: Option<String>,
        /// Kill it after this long, ms.
        timeout_ms: u64,
    },
    /// Stop the app.
    Stop {
        /// Name or id.
        app: String,
        /// Grace before SIGKILL, ms.
        #[serde(default)]
        grace_ms: Option<u64>,
    },
    /// Wait until the app is no longer running.
    Wait {
        /// Name or id.
        app: String,
        /// Give up after this long, ms.
        timeout_ms: u64,
    },
    /// States of launched apps.
    Ps,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The command's result.
    #[serde(default)]
    pub result: Value,
    /// What went wrong and what to do.
    #[serde(default)]
    pub error: Option<String>,
}

/// Binds the admin socket and serves it in the background.
///
/// # Errors
///
/// The socket cannot be bound (for instance another daemon serves this state directory).
pub fn serve(shared: &Arc<Shared>) -> Result<(), crate::ipc::SocketError> {
    let socket = bind(&shared.config)?;
    spawn(shared, socket);
    Ok(())
}

/// Binds the admin socket (0600) without serving it yet. Binding first is how a second
/// daemon on the same state directory finds out, before it touches anything else.
///
/// # Errors
///
/// The socket cannot be bound, or a live daemon answers on it.
pub fn bind(config: &crate::config::Config) -> Result<AppSocket, crate::ipc::SocketError> {
    let path = &config.admin_socket;
    let io = |source: std::io::Error| crate::ipc::SocketError::Io {
        path: path.clone(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(io(std::io::Error::other(
            "admin socket path has no directory or file name",
        )));
    };
    let dir = crate::fsutil::Dir::open(dir).map_err(io)?;
    crate::ipc::bind_socket(&dir, name, crate::fsutil::Access::private(0o600))
}

/// Starts serving a socket from [`bind`].
pub fn spawn(shared: &Arc<Shared>, socket: AppSocket) {
    let owned = Arc::clone(shared);
    shared.tasks.spawn(accept_loop(socket.listener, owned));
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let euid = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid != Some(euid) && uid != Some(0) {
            continue;
        }
        let shared = Arc::clone(&shared);
        shared
            .tasks
            .clone()
            .spawn(async move { serve_admin(stream, shared).await });
    }
}

async fn serve_admin(mut stream: UnixStream, shared: Arc<Shared>) {
    loop {
        let body = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout(ADMIN_IDLE, read_frame(&mut stream, MAX_ADMIN_FRAME)) => match r {
                Ok(Ok(Some(body))) => body,
                _ => return,
            },
        };
        let response = match serde_json::from_slice::<AdminRequest>(&body) {
            Ok(request) => match execute(&shared, request).await {
                Ok(result) => AdminResponse {
                    ok: true,
                    result,
                    error: None,
                },
                Err(e) => AdminResponse {
                    ok: false,
                    result: Value::Null,
                    error: Some(e.to_string()),
                },
            },
            Err(e) => AdminResponse {
                ok: false,
                result: Value::Null,
                error: Some(format!("bad admin request: {e}")),
            },
        };
        let body = serde_json::to_vec(&response).unwrap_or_default();
        if tokio::time::timeout(
            Duration::from_secs(10),
            write_frame(&mut stream, &body, MAX_ADMIN_FRAME),
        )
        .await
        .is_err()
        {
            return;
        }
    }
}

/// Parses a size such as `256m`, `1g`, `512k` or a plain byte count.
///
/// # Errors
///
/// A message naming the bad value.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size like 256m, 1g or 65536"))
}

/// Parses a duration such as `30s`, `500ms`, `5m`, `1h` or plain seconds (`2.5`).
///
/// # Errors
///
/// A message naming the bad value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || format!("{text:?} is not a duration like 30s, 500ms, 5m or 1h");
    let (digits, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let value: f64 = digits.parse().map_err(|_| bad())?;
    let secs = value * scale;
    if !(secs > 0.0 && secs < 1e9) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_grants(grants: &[String]) -> Result<Vec<Grant>, DaemonError> {
    grants
        .iter()
        .map(|g| {
            g.parse::<Grant>()
                .map_err(|e| DaemonError::Invalid(format!("grant {e}")))
        })
        .collect()
}

fn binary_name(path: &std::path::Path) -> Result<String, DaemonError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || name.starts_with('.')
    {
        return Err(DaemonError::Invalid(format!(
            "binary file name {name:?} must be 1-64 of [A-Za-z0-9._-]"
        )));
    }
    Ok(name.to_string())
}

/// Sends one admin request (used by the CLI).
///
/// # Errors
///
/// The daemon is not reachable, or the exchange failed.
pub async fn call(
    socket: &std::path::Path,
    request: &AdminRequest,
    timeout: Duration,
) -> std::io::Result<AdminResponse> {
    let mut stream = UnixStream::connect(socket).await?;
    let body = serde_json::to_vec(request)?;
    let exchange = async {
        write_frame(&mut stream, &body, MAX_ADMIN_FRAME)
            .await
            .map_err(std::io::Error::other)?;
        let reply = read_frame(&mut stream, 16 * MAX_ADMIN_FRAME)
            .await
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other("the daemon closed the admin connection"))?;
        serde_json::from_slice::<AdminResponse>(&reply).map_err(std::io::Error::other)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the daemon did not answer in time",
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        for bad in ["", "0", "-1s", "5 parsecs", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
