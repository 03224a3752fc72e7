//! Executing admin requests against the daemon.

use super::{binary_name, parse_grants, parse_size, AdminRequest};
use crate::daemon::{self, DaemonError, InstallRequest, Shared};
use crate::registry::{App, AuthMode, InstallSpec, Placement};
use crate::sandbox::{ResourceLimits, SandboxKind};
use crate::supervisor::{LaunchOptions, LaunchOutcome, RestartPolicy};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The JSON view of an app (no secrets).
pub fn app_view(shared: &Shared, app: &App) -> Value {
    let status = shared.supervisor.status(&app.id);
    let (sandbox, state) = match &status {
        Some(s) => (Some(s.kind.as_str()), s.state.to_string()),
        None => (None, "not running".to_string()),
    };
    json!({
        "id": app.id,
        "name": app.name,
        "uid": app.uid,
        "gid": app.gid,
        "grants": app.grants.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "auth": app.auth_mode.as_str(),
        "placement": app.placement.as_str(),
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
        "node_limits": node_limits_view(&app.node_limits.resolve(&shared.config.default_node_limits)),
        "node_limits_set": app.node_limits,
        "generation": app.generation,
        "created_ms": app.created_ms,
        "socket": shared.socket_path(&app.id),
        "credentials": shared.socket_dir(&app.id).join(crate::ipc::CREDENTIALS_FILE),
        "app_dir": shared.app_dir(&app.id),
        "log": shared.log_path(&app.id),
        "sandbox": sandbox,
        "state": state,
        "restarts": status.as_ref().map(|s| s.restarts),
        "note": status.as_ref().and_then(|s| s.note.clone()),
        "container": status.and_then(|s| s.container),
    })
}

/// How long `app show` and `app ps` wait for the node's count of an app's usage.
const USAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What an app's records take on the node, with its quota beside each count; if the node
/// cannot say, why not (the rest of the view is still shown).
async fn usage_view(shared: &Shared, app: &App) -> Value {
    let quota = app
        .node_limits
        .resolve(&shared.config.default_node_limits)
        .quota;
    match shared.node.usage(&app.id, USAGE_TIMEOUT).await {
        Ok(u) => json!({
            "bytes": u.bytes,
            "max_bytes": quota.max_bytes,
            "records": u.records,
            "max_records": quota.max_records,
            "versions": u.versions,
        }),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// An app's node limits as shown: `null` for an unlimited quota or rate.
fn node_limits_view(limits: &crate::app_limits::NodeLimits) -> Value {
    let rate = (limits.write_rate > 0).then_some(limits.write_rate);
    json!({
        "share_reads": limits.share.reads,
        "share_writes": limits.share.writes,
        "max_bytes": limits.quota.max_bytes,
        "max_records": limits.quota.max_records,
        "max_versions": limits.quota.max_versions,
        "history": limits.quota.history,
        "write_rate": rate,
        "write_burst": limits.write_burst,
        "bytes_in_flight": limits.bytes_in_flight,
    })
}

/// Warnings about an installed binary: a glibc-dynamic binary for a musl/busybox image.
fn install_warnings(shared: &Shared, app: &App) -> Vec<String> {
    let image = app
        .image
        .clone()
        .unwrap_or_else(|| shared.config.default_image.clone());
    let binary = shared.app_dir(&app.id).join(&app.binary);
    crate::sandbox::docker::image_mismatch(&binary, &image)
        .into_iter()
        .collect()
}

fn ps_row(shared: &Shared, app: &App) -> Option<Value> {
    let s = shared.supervisor.status(&app.id)?;
    Some(json!({
        "id": app.id,
        "name": app.name,
        "sandbox": s.kind.as_str(),
        "state": s.state.to_string(),
        "restarts": s.restarts,
        "note": s.note,
        "container": s.container.map(|c| c[..c.len().min(12)].to_string()),
    }))
}

fn launch_options(
    shared: &Shared,
    direct: bool,
    args: Vec<String>,
    image: Option<String>,
    restart: Option<&str>,
    max_restarts: Option<u32>,
    max_lifetime_ms: Option<u64>,
) -> Result<LaunchOptions, DaemonError> {
    let mut options = LaunchOptions::defaults(&shared.config, direct, args);
    options.image = image;
    let max = max_restarts.unwrap_or(shared.config.restart.max_restarts());
    options.restart = match restart {
        Some(r) => RestartPolicy::parse(r, max)
            .map_err(|e| DaemonError::Invalid(format!("--restart {e}")))?,
        None => match options.restart {
            RestartPolicy::OnFailure { .. } => RestartPolicy::OnFailure { max_restarts: max },
            RestartPolicy::Never => RestartPolicy::Never,
        },
    };
    if let Some(ms) = max_lifetime_ms {
        options.max_lifetime = Some(Duration::from_millis(ms.max(1)));
    }
    Ok(options)
}

fn placement_of(direct: bool) -> Placement {
    if direct {
        Placement::Host
    } else {
        Placement::Container
    }
}

fn sandbox_detail(kind: SandboxKind, outcome: &LaunchOutcome) -> String {
    match (kind, &outcome.container) {
        (SandboxKind::Direct, _) => "direct: NOT SANDBOXED".to_string(),
        (kind, Some(c)) => format!("{} container {}", kind.as_str(), &c[..c.len().min(12)]),
        (kind, None) => kind.as_str().to_string(),
    }
}

async fn launch(
    shared: &Arc<Shared>,
    app: &str,
    options: LaunchOptions,
) -> Result<Value, DaemonError> {
    let app = daemon::place(shared, app, placement_of(options.direct)).await?;
    let outcome = shared.supervisor.launch(&app, options).await?;
    let kind = outcome.kind;
    let detail = sandbox_detail(kind, &outcome);
    shared
        .audit
        .event(&app.id, Some(&app.name), "launch", &detail)
        .await;
    Ok(json!({
        "id": app.id,
        "name": app.name,
        "sandbox": kind.as_str(),
        "sandboxed": kind != SandboxKind::Direct,
        "state": outcome.state.to_string(),
        "container": outcome.container,
        "warnings": outcome.warnings,
        "log": shared.log_path(&app.id),
    }))
}

async fn run(
    shared: &Arc<Shared>,
    app: &str,
    options: LaunchOptions,
    timeout: Duration,
) -> Result<Value, DaemonError> {
    let app = daemon::place(shared, app, placement_of(options.direct)).await?;
    let grace = shared.config.stop_grace;
    let outcome = shared.supervisor.run(&app, options, timeout, grace).await?;
    let kind = outcome.launch.kind;
    let detail = format!(
        "{}; {}{}",
        sandbox_detail(kind, &outcome.launch),
        outcome.state,
        if outcome.timed_out {
            " (timed out)"
        } else {
            ""
        }
    );
    shared
        .audit
        .event(&app.id, Some(&app.name), "run", &detail)
        .await;
    Ok(json!({
        "id": app.id,
        "name": app.name,
        "sandbox": kind.as_str(),
        "sandboxed": kind != SandboxKind::Direct,
        "state": outcome.state.to_string(),
        // As in `ps`: what the state cannot say (a child's OOM kill, a timeout kill).
        "note": shared.supervisor.status(&app.id).and_then(|s| s.note),
        "exit_code": outcome.exit_code,
        "timed_out": outcome.timed_out,
        "duration_ms": u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        "container": outcome.launch.container,
        "warnings": outcome.launch.warnings,
        "log": shared.log_path(&app.id),
    }))
}

/// Executes one admin request.
pub(super) async fn execute(
    shared: &Arc<Shared>,
    request: AdminRequest,
) -> Result<Value, DaemonError> {
    let registry = &shared.registry;
    Ok(match request {
        AdminRequest::Status => json!({
            "state_dir": shared.config.state_dir,
            "socket_root": shared.config.socket_root,
            "apps": registry.list().len(),
            "node": format!("{:?}", shared.config.node),
            "audit": shared.config.audit_path(),
            "pid": std::process::id(),
            "docker_host": shared.config.docker_host,
            "daemon_label": shared.config.daemon_label,
        }),
        AdminRequest::Install {
            name,
            binary,
            grants,
            image,
            auth,
            network,
            memory,
            cpus,
            pids,
            direct,
            node_limits,
        } => {
            node_limits.validate().map_err(DaemonError::Invalid)?;
            let mut limits = ResourceLimits {
                ..shared.config.default_limits
            };
            if let Some(m) = memory {
                limits.memory_bytes = parse_size(&m).map_err(DaemonError::Invalid)?;
            }
            if let Some(c) = cpus {
                if !(c > 0.0 && c <= 1024.0) {
                    return Err(DaemonError::Invalid(format!(
                        "--cpus {c} must be between 0 and 1024"
                    )));
                }
                limits.nano_cpus = (c * 1e9) as u64;
            }
            if let Some(p) = pids {
                limits.pids = p.max(1);
            }
            let auth_mode = match auth.as_deref() {
                None => AuthMode::Signed,
                Some(a) => AuthMode::parse(a).ok_or_else(|| {
                    DaemonError::Invalid(format!("--auth {a:?}: expected signed or token"))
                })?,
            };
            let spec = InstallSpec {
                name,
                binary: binary_name(&binary)?,
                grants: parse_grants(&grants)?,
                auth_mode,
                placement: placement_of(direct),
                image,
                network,
                limits,
                node_limits,
            };
            let app = daemon::install(
                shared,
                InstallRequest {
                    spec,
                    binary_path: binary,
                },
            )
            .await?;
            let mut view = app_view(shared, &app);
            view["warnings"] = json!(install_warnings(shared, &app));
            view
        }
        AdminRequest::List => Value::Array(
            registry
                .list()
                .iter()
                .map(|a| app_view(shared, a))
                .collect(),
        ),
        AdminRequest::Show { app } => {
            let app = registry.find(&app)?;
            let mut view = app_view(shared, &app);
            view["usage"] = usage_view(shared, &app).await;
            view
        }
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
        AdminRequest::Limits { app, node_limits } => {
            node_limits.validate().map_err(DaemonError::Invalid)?;
            let app = daemon::set_node_limits(shared, &app, &node_limits).await?;
            app_view(shared, &app)
        }
        AdminRequest::Rotate { app } => app_view(shared, &*daemon::rotate(shared, &app).await?),
        AdminRequest::Remove { app } => {
            let app = daemon::remove(shared, &app).await?;
            json!({"id": app.id, "name": app.name, "removed": true})
        }
        AdminRequest::Launch { app, direct, args } => {
            let options = launch_options(shared, direct, args, None, None, None, None)?;
            launch(shared, &app, options).await?
        }
        AdminRequest::LaunchWith {
            app,
            direct,
            args,
            image,
            restart,
            max_restarts,
            max_lifetime_ms,
        } => {
            let options = launch_options(
                shared,
                direct,
                args,
                image,
                restart.as_deref(),
                max_restarts,
                max_lifetime_ms,
            )?;
            launch(shared, &app, options).await?
        }
        AdminRequest::Run {
            app,
            direct,
            args,
            image,
            timeout_ms,
        } => {
            let options = launch_options(shared, direct, args, image, Some("never"), None, None)?;
            run(
                shared,
                &app,
                options,
                Duration::from_millis(timeout_ms.max(1)),
            )
            .await?
        }
        AdminRequest::Stop { app, grace_ms } => {
            let app = registry.find(&app)?;
            let grace = grace_ms.map_or(shared.config.stop_grace, Duration::from_millis);
            let state = shared.supervisor.stop(&app.id, grace).await?;
            shared
                .audit
                .event(&app.id, Some(&app.name), "stop", &state.to_string())
                .await;
            json!({"id": app.id, "name": app.name, "state": state.to_string()})
        }
        AdminRequest::Wait { app, timeout_ms } => {
            let app = registry.find(&app)?;
            let state = tokio::time::timeout(
                Duration::from_millis(timeout_ms),
                shared.supervisor.wait(&app.id),
            )
            .await;
            let state = match state {
                Ok(state) => state.map_or_else(|| "not running".to_string(), |s| s.to_string()),
                Err(_) => {
                    return Err(DaemonError::Invalid(format!(
                        "app {} still running after {timeout_ms} ms",
                        app.name
                    )))
                }
            };
            json!({"id": app.id, "name": app.name, "state": state})
        }
        AdminRequest::Ps => {
            let mut rows = Vec::new();
            for app in registry.list() {
                if let Some(mut row) = ps_row(shared, &app) {
                    row["usage"] = usage_view(shared, &app).await;
                    rows.push(row);
                }
            }
            Value::Array(rows)
        }
    })
}
