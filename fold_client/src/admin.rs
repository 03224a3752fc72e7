//! The admin socket: how the CLI drives the daemon. Framed JSON (the `fold_ipc` framing),
//! one request and one response at a time. Only the daemon's own uid (or root) may connect:
//! the socket is 0600 in the 0700 state directory and the peer uid is checked.
//!
//! These types cross a socket, but only between the `fold_client` binary and itself, so they
//! live here rather than in `fold_ipc` (which is the app-facing contract).

use crate::daemon::{self, DaemonError, InstallRequest, Shared};
use crate::policy::Grant;
use crate::registry::{App, AuthMode, InstallSpec};
use crate::sandbox::ResourceLimits;
use fold_ipc::frame::{read_frame, write_frame};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
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
    /// Start the app.
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
    let path = &shared.config.admin_socket;
    let socket = crate::ipc::bind_socket(path, None)?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let shared2 = Arc::clone(shared);
    shared.tasks.spawn(accept_loop(socket.listener, shared2));
    Ok(())
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

/// The JSON view of an app (no secrets).
pub fn app_view(shared: &Shared, app: &App) -> Value {
    let (sandbox, state) = match shared.supervisor.state(&app.id) {
        Some((kind, state)) => (Some(kind.as_str()), state.to_string()),
        None => (None, "not running".to_string()),
    };
    json!({
        "id": app.id,
        "name": app.name,
        "uid": app.uid,
        "gid": app.gid,
        "grants": app.grants.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "auth": app.auth_mode.as_str(),
        "binary": app.binary,
        "image": app.image.clone().unwrap_or_else(|| shared.config.default_image.clone()),
        "network": app.network,
        "limits": {
            "memory_bytes": app.limits.memory_bytes,
            "nano_cpus": app.limits.nano_cpus,
            "pids": app.limits.pids,
            "nofile": app.limits.nofile,
            "tmpfs_bytes": app.limits.tmpfs_bytes,
        },
        "generation": app.generation,
        "created_ms": app.created_ms,
        "socket": shared.socket_path(&app.id),
        "credentials": shared.socket_dir(&app.id).join(crate::ipc::CREDENTIALS_FILE),
        "app_dir": shared.app_dir(&app.id),
        "log": shared.log_path(&app.id),
        "sandbox": sandbox,
        "state": state,
    })
}

async fn execute(shared: &Arc<Shared>, request: AdminRequest) -> Result<Value, DaemonError> {
    let registry = &shared.registry;
    Ok(match request {
        AdminRequest::Status => json!({
            "state_dir": shared.config.state_dir,
            "socket_root": shared.config.socket_root,
            "apps": registry.list().len(),
            "node": format!("{:?}", shared.config.node),
            "audit": shared.config.audit_path(),
            "pid": std::process::id(),
        }),
        AdminRequest::Install { name, binary, grants, image, auth, network, memory, cpus, pids } => {
            let mut limits = ResourceLimits { ..shared.config.default_limits };
            if let Some(m) = memory {
                limits.memory_bytes = parse_size(&m).map_err(DaemonError::Invalid)?;
            }
            if let Some(c) = cpus {
                if !(c > 0.0 && c <= 1024.0) {
                    return Err(DaemonError::Invalid(format!("--cpus {c} must be between 0 and 1024")));
                }
                limits.nano_cpus = (c * 1e9) as u64;
            }
            if let Some(p) = pids {
                limits.pids = p.max(1);
            }
            let auth_mode = match auth.as_deref() {
                None => AuthMode::Signed,
                Some(a) => AuthMode::parse(a).ok_or_else(|| DaemonError::Invalid(format!("--auth {a:?}: expected signed or token")))?,
            };
            let spec = InstallSpec { name, binary: binary_name(&binary)?, grants: parse_grants(&grants)?, auth_mode, image, network, limits };
            let app = daemon::install(shared, InstallRequest { spec, binary_path: binary }).await?;
            app_view(shared, &app)
        }
        AdminRequest::List => Value::Array(registry.list().iter().map(|a| app_view(shared, a)).collect()),
        AdminRequest::Show { app } => app_view(shared, &*registry.find(&app)?),
        AdminRequest::Grant { app, grants } => {
            let add = parse_grants(&grants)?;
            let app = daemon::set_grants(shared, &app, |g| {
                for grant in add {
                    if !g.contains(&grant) {
                        g.push(grant);
                    }
                }
            })
            .await?;
            app_view(shared, &app)
        }
        AdminRequest::Ungrant { app, grants } => {
            let drop = parse_grants(&grants)?;
            let app = daemon::set_grants(shared, &app, |g| g.retain(|x| !drop.contains(x))).await?;
            app_view(shared, &app)
        }
        AdminRequest::Rotate { app } => app_view(shared, &*daemon::rotate(shared, &app).await?),
        AdminRequest::Remove { app } => {
            let app = daemon::remove(shared, &app).await?;
            json!({"id": app.id, "name": app.name, "removed": true})
        }
        AdminRequest::Launch { app, direct, args } => {
            let app = registry.find(&app)?;
            let (kind, state) = shared.supervisor.launch(shared, &app, direct, args).await?;
            let sandboxed = kind != crate::sandbox::SandboxKind::Direct;
            let detail = if sandboxed { kind.as_str().to_string() } else { "direct: NOT SANDBOXED".to_string() };
            shared.audit.event(&app.id, Some(&app.name), "launch", &detail).await;
            json!({"id": app.id, "name": app.name, "sandbox": kind.as_str(), "sandboxed": sandboxed, "state": state.to_string(), "log": shared.log_path(&app.id)})
        }
        AdminRequest::Stop { app, grace_ms } => {
            let app = registry.find(&app)?;
            let grace = grace_ms.map_or(shared.config.stop_grace, Duration::from_millis);
            let state = shared.supervisor.stop(&app.id, grace).await?;
            shared.audit.event(&app.id, Some(&app.name), "stop", &state.to_string()).await;
            json!({"id": app.id, "name": app.name, "state": state.to_string()})
        }
        AdminRequest::Wait { app, timeout_ms } => {
            let app = registry.find(&app)?;
            let state = tokio::time::timeout(Duration::from_millis(timeout_ms), shared.supervisor.wait(&app.id)).await;
            let state = match state {
                Ok(state) => state.map_or_else(|| "not running".to_string(), |s| s.to_string()),
                Err(_) => return Err(DaemonError::Invalid(format!("app {} still running after {timeout_ms} ms", app.name))),
            };
            json!({"id": app.id, "name": app.name, "state": state})
        }
        AdminRequest::Ps => Value::Array(
            registry
                .list()
                .iter()
                .filter_map(|a| shared.supervisor.state(&a.id).map(|(kind, s)| json!({"id": a.id, "name": a.name, "sandbox": kind.as_str(), "state": s.to_string()})))
                .collect(),
        ),
    })
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
}
