//! Executing admin requests against the daemon: one function per request, each returning
//! its request's response type ([`AdminCall::Response`]).

use super::protocol::{
    AdminCall, AdminReply, AdminRequest, AppView, GrantRequest, InstallRequest, InstallResponse,
    JobStream, LaunchRequest, LaunchResponse, LimitsRequest, ListResponse, NodeLimitsView,
    PsResponse, PsRow, RemoveResponse, ResourceLimitsView, RunRequest, RunResponse, ShowResponse,
    StateResponse, StatusResponse, StopRequest, UngrantRequest, UsageView, WaitRequest, WarmView,
};
use super::{binary_name, check_cpus, encode};
use crate::apps::{self, DaemonError, Shared};
use crate::registry::{App, AuthMode, InstallSpec, Placement};
use crate::sandbox::capture::{JobOutput, StreamCount};
use crate::sandbox::{AppState, SandboxKind};
use crate::supervisor::{LaunchOptions, LaunchOutcome, RestartPolicy};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// An app as the admin protocol shows it (no secrets).
fn app_view(shared: &Shared, app: &App) -> AppView {
    let status = shared.supervisor.status(&app.id);
    let (sandbox, state) = match &status {
        Some(s) => (Some(s.kind.as_str().to_string()), s.state.to_string()),
        None => (None, "not running".to_string()),
    };
    let limits = &app.limits;
    AppView {
        id: app.id.clone(),
        name: app.name.clone(),
        uid: app.uid,
        gid: app.gid,
        grants: app.grants.clone(),
        auth: app.auth_mode,
        placement: app.placement,
        isolation: app.isolation,
        tier: status.as_ref().and_then(|s| s.isolation),
        binary: app.binary.clone(),
        image: app
            .image
            .clone()
            .unwrap_or_else(|| shared.config.default_image.clone()),
        network: app.network.clone(),
        limits: ResourceLimitsView {
            memory_bytes: limits.memory_bytes,
            nano_cpus: limits.nano_cpus,
            pids: limits.pids,
            nofile: limits.nofile,
            tmpfs_bytes: limits.tmpfs_bytes,
        },
        node_limits: node_limits_view(&app.node_limits.resolve(&shared.config.default_node_limits)),
        node_limits_set: app.node_limits,
        generation: app.generation,
        created_ms: app.created_ms,
        socket: shared.socket_path(&app.id),
        credentials: shared
            .socket_dir(&app.id)
            .join(crate::ipc::CREDENTIALS_FILE),
        app_dir: shared.app_dir(&app.id),
        log: shared.log_path(&app.id),
        job_output: shared.job_output_dir(&app.id),
        sandbox,
        state,
        restarts: status.as_ref().map(|s| s.restarts),
        note: status.as_ref().and_then(|s| s.note.clone()),
        container: status.and_then(|s| s.container),
        warm: app.warm,
        warm_pool: warm_view(shared, &app.id),
    }
}

fn warm_view(shared: &Shared, app_id: &str) -> Option<WarmView> {
    let pool = shared.supervisor.warm(app_id)?;
    Some(WarmView {
        ready: pool.ready,
        target: pool.target,
        problem: pool.problem,
        containers: pool.containers,
    })
}

/// How long `app show` and `app ps` wait for the node's count of an app's usage.
const USAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What an app's records take on the node, with its quota beside each count; if the node
/// cannot say, why not (the rest of the view is still shown).
async fn usage_view(shared: &Shared, app: &App) -> UsageView {
    let quota = app
        .node_limits
        .resolve(&shared.config.default_node_limits)
        .quota;
    match shared.node.usage(&app.id, USAGE_TIMEOUT).await {
        Ok(u) => UsageView::Counted {
            bytes: u.bytes,
            max_bytes: quota.max_bytes,
            records: u.records,
            max_records: quota.max_records,
            versions: u.versions,
        },
        Err(e) => UsageView::Unknown {
            error: e.to_string(),
        },
    }
}

/// An app's node limits as shown: `None` for an unlimited quota or rate.
fn node_limits_view(limits: &crate::app_limits::NodeLimits) -> NodeLimitsView {
    NodeLimitsView {
        share_reads: limits.share.reads,
        share_writes: limits.share.writes,
        max_bytes: limits.quota.max_bytes,
        max_records: limits.quota.max_records,
        max_versions: limits.quota.max_versions,
        history: limits.quota.history,
        write_rate: (limits.write_rate > 0).then_some(limits.write_rate),
        write_burst: limits.write_burst,
        bytes_in_flight: limits.bytes_in_flight,
    }
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

/// A container id as `ps` shows it: its first 12 characters.
fn short_id(container: &str) -> &str {
    &container[..container.len().min(12)]
}

/// The supervision options of a launch: the daemon's defaults, with what the request sets.
fn launch_options(shared: &Shared, request: LaunchRequest) -> LaunchOptions {
    let mut options = LaunchOptions::defaults(&shared.config, request.direct, request.args);
    options.image = request.image;
    let max = request
        .max_restarts
        .unwrap_or(shared.config.restart.max_restarts());
    options.restart = match request.restart {
        Some(mode) => mode.policy(max),
        None => match options.restart {
            RestartPolicy::OnFailure { .. } => RestartPolicy::OnFailure { max_restarts: max },
            RestartPolicy::Never => RestartPolicy::Never,
        },
    };
    if let Some(lifetime) = request.max_lifetime {
        options.max_lifetime = Some(lifetime.max(Duration::from_millis(1)));
    }
    options
}

fn placement_of(direct: bool) -> Placement {
    if direct {
        Placement::Host
    } else {
        Placement::Container
    }
}

fn sandbox_detail(kind: SandboxKind, outcome: &LaunchOutcome) -> String {
    match (kind, &outcome.container, outcome.isolation) {
        (SandboxKind::Direct, _, _) => "direct: NOT SANDBOXED".to_string(),
        (kind, Some(c), Some(tier)) => {
            format!(
                "{} container {} isolation {tier}",
                kind.as_str(),
                short_id(c)
            )
        }
        (kind, Some(c), None) => format!("{} container {}", kind.as_str(), short_id(c)),
        (kind, None, _) => kind.as_str().to_string(),
    }
}

fn status(shared: &Shared) -> StatusResponse {
    let config = &shared.config;
    StatusResponse {
        state_dir: config.state_dir.clone(),
        socket_root: config.socket_root.clone(),
        apps: shared.registry.list().len(),
        node: format!("{:?}", config.node),
        audit: config.audit_path(),
        pid: std::process::id(),
        docker_host: config.docker_host.clone(),
        daemon_label: config.daemon_label.clone(),
        engine_timeout: config.engine_timeout,
        pull_timeout: config.pull_timeout,
        stop_grace: config.stop_grace,
        jobs_dir: shared.paths.jobs_dir(),
    }
}

/// Names starting so are one-off jobs' (`fold_client run`): removed at the end of the job,
/// and at the daemon's start if it died during one; `app install` refuses them.
pub(crate) const JOB_PREFIX: &str = "job-";

async fn install(
    shared: &Arc<Shared>,
    request: InstallRequest,
) -> Result<InstallResponse, DaemonError> {
    if request.name.starts_with(JOB_PREFIX) {
        return Err(DaemonError::Invalid(format!(
            "app names starting with {JOB_PREFIX:?} are kept for one-off jobs (`fold_client run`); pick another name"
        )));
    }
    install_app(shared, request).await
}

pub(super) async fn install_app(
    shared: &Arc<Shared>,
    request: InstallRequest,
) -> Result<InstallResponse, DaemonError> {
    request
        .node_limits
        .validate()
        .map_err(DaemonError::Invalid)?;
    let mut limits = shared.config.default_limits;
    if let Some(memory) = request.memory_bytes {
        if memory == 0 {
            return Err(DaemonError::Invalid(
                "--memory must be at least 1 byte".into(),
            ));
        }
        limits.memory_bytes = memory;
    }
    if let Some(cpus) = request.cpus {
        limits.nano_cpus = (check_cpus(cpus).map_err(DaemonError::Invalid)? * 1e9) as u64;
    }
    if let Some(pids) = request.pids {
        limits.pids = pids.max(1);
    }
    let warm = match (request.warm, request.direct) {
        (Some(count), _) => crate::config::check_warm("--warm", count)
            .map_err(|e| DaemonError::Invalid(e.to_string()))?,
        (None, false) => shared.config.warm_pool,
        (None, true) => 0,
    };
    let spec = InstallSpec {
        warm,
        name: request.name,
        binary: binary_name(&request.binary)?,
        grants: request.grants,
        auth_mode: request.auth.unwrap_or(AuthMode::Signed),
        placement: placement_of(request.direct),
        isolation: request.isolation.unwrap_or(shared.config.default_isolation),
        image: request.image,
        network: request.network,
        limits,
        node_limits: request.node_limits,
    };
    let app = apps::install(
        shared,
        apps::InstallRequest {
            spec,
            binary_path: request.binary,
        },
    )
    .await?;
    let mut warnings = install_warnings(shared, &app);
    if let Err(e) = shared.supervisor.keep_warm(&app).await {
        warnings.push(format!("no prepared containers: {e}"));
    }
    Ok(InstallResponse {
        app: app_view(shared, &app),
        warnings,
    })
}

async fn grant(shared: &Arc<Shared>, request: GrantRequest) -> Result<AppView, DaemonError> {
    let app = apps::set_grants(shared, &request.app, |g| {
        for grant in request.grants {
            if !g.contains(&grant) {
                g.push(grant);
            }
        }
    })
    .await?;
    Ok(app_view(shared, &app))
}

async fn ungrant(shared: &Arc<Shared>, request: UngrantRequest) -> Result<AppView, DaemonError> {
    let drop = request.grants;
    let app = apps::set_grants(shared, &request.app, |g| g.retain(|x| !drop.contains(x))).await?;
    Ok(app_view(shared, &app))
}

async fn limits(shared: &Arc<Shared>, request: LimitsRequest) -> Result<AppView, DaemonError> {
    request
        .node_limits
        .validate()
        .map_err(DaemonError::Invalid)?;
    let app = apps::set_node_limits(shared, &request.app, &request.node_limits).await?;
    Ok(app_view(shared, &app))
}

async fn show(shared: &Shared, app: &str) -> Result<ShowResponse, DaemonError> {
    let app = shared.registry.find(app)?;
    Ok(ShowResponse {
        app: app_view(shared, &app),
        usage: usage_view(shared, &app).await,
    })
}

async fn launch(
    shared: &Arc<Shared>,
    request: LaunchRequest,
) -> Result<LaunchResponse, DaemonError> {
    let app = request.app.clone();
    let options = launch_options(shared, request);
    let app = apps::place(shared, &app, placement_of(options.direct)).await?;
    let outcome = shared.supervisor.launch(&app, options).await?;
    let kind = outcome.kind;
    let detail = sandbox_detail(kind, &outcome);
    shared
        .audit
        .event(&app.id, Some(&app.name), "launch", &detail)
        .await;
    Ok(LaunchResponse {
        id: app.id.clone(),
        name: app.name.clone(),
        sandbox: kind.as_str().to_string(),
        sandboxed: kind != SandboxKind::Direct,
        state: outcome.state.to_string(),
        container: outcome.container,
        isolation: outcome.isolation,
        warnings: outcome.warnings,
        log: shared.log_path(&app.id),
    })
}

/// A run id a client may choose: 8 to 32 lowercase hex digits (a directory name, nothing
/// more).
pub(super) fn valid_run_id(id: &str) -> bool {
    (8..=32).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn job_stream((path, count): (PathBuf, StreamCount)) -> JobStream {
    JobStream {
        path,
        captured: count.captured,
        dropped: count.dropped,
    }
}

async fn run(shared: &Arc<Shared>, request: RunRequest) -> Result<RunResponse, DaemonError> {
    let run_id = run_id_or_new(request.run_id.clone());
    let app = shared.registry.find(&request.app)?;
    let runs = shared.job_output_dir(&app.id);
    // Only the last run's output is kept.
    if let Ok(old) = std::fs::read_dir(&runs) {
        for entry in old.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    run_into(shared, request, &runs.join(&run_id)).await
}

/// A one-off job: installs `request.binary` as `job-<run id>`, runs it once with its output
/// in `<logs>/jobs/<run id>`, and removes the app (uid, socket and credentials with it; the
/// run removes its container) whatever the run's outcome. The output stays for the client,
/// which deletes it with [`forget_job`]. At most `max_concurrent_jobs` run at once; the
/// rest wait here, in order.
/// The client's run id when it is a valid one, else a fresh one.
pub(super) fn run_id_or_new(asked: Option<String>) -> String {
    asked
        .filter(|id| valid_run_id(id))
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

/// Runs the app of `request` once, its output kept in `output_dir`.
pub(super) async fn run_into(
    shared: &Arc<Shared>,
    request: RunRequest,
    output_dir: &std::path::Path,
) -> Result<RunResponse, DaemonError> {
    let timeout = request.timeout.max(Duration::from_millis(1));
    let launch = LaunchRequest {
        app: request.app,
        direct: request.direct,
        image: request.image,
        restart: Some(super::protocol::RestartMode::Never),
        max_restarts: None,
        max_lifetime: None,
        args: request.args,
    };
    let app = launch.app.clone();
    let mut options = launch_options(shared, launch);
    if let Some(interpreter) = &request.interpreter {
        crate::sandbox::check_interpreter(interpreter).map_err(DaemonError::Invalid)?;
    }
    options.interpreter = request.interpreter;
    let app = apps::place(shared, &app, placement_of(options.direct)).await?;
    let grace = shared.config.stop_grace;
    let cap = request
        .output_cap
        .unwrap_or(shared.config.job_output_cap)
        .max(1);
    let capture = JobOutput::create(output_dir, cap).map_err(apps::setup(format!(
        "cannot create the job's output files in {}",
        output_dir.display()
    )))?;
    options.capture = Some(capture.clone());
    let outcome = shared.supervisor.run(&app, options, timeout, grace).await?;
    let output = capture.summary();
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
    Ok(RunResponse {
        id: app.id.clone(),
        name: app.name.clone(),
        sandbox: kind.as_str().to_string(),
        sandboxed: kind != SandboxKind::Direct,
        state: outcome.state.to_string(),
        // As in `ps`: what the state cannot say (a child's OOM kill, a timeout kill).
        note: shared.supervisor.status(&app.id).and_then(|s| s.note),
        exit_code: outcome.exit_code,
        signal: match outcome.state {
            AppState::Exited { code } if code > 128 => Some(code - 128),
            // The kernel's OOM killer sends SIGKILL.
            AppState::OomKilled => Some(9),
            _ => None,
        },
        oom_killed: outcome.state == AppState::OomKilled,
        timed_out: outcome.timed_out,
        output_cap: output.cap,
        stdout: job_stream(output.stdout),
        stderr: job_stream(output.stderr),
        // Whole milliseconds, as the wire carries them.
        duration: Duration::from_millis(
            u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        ),
        container: outcome.launch.container,
        isolation: outcome.launch.isolation,
        warnings: outcome.launch.warnings,
        log: shared.log_path(&app.id),
    })
}

async fn stop(shared: &Shared, request: StopRequest) -> Result<StateResponse, DaemonError> {
    let app = shared.registry.find(&request.app)?;
    let grace = request.grace.unwrap_or(shared.config.stop_grace);
    let state = shared.supervisor.stop(&app.id, grace).await?;
    shared
        .audit
        .event(&app.id, Some(&app.name), "stop", &state.to_string())
        .await;
    Ok(StateResponse {
        id: app.id.clone(),
        name: app.name.clone(),
        state: state.to_string(),
    })
}

async fn wait(shared: &Shared, request: WaitRequest) -> Result<StateResponse, DaemonError> {
    let app = shared.registry.find(&request.app)?;
    let Ok(state) = tokio::time::timeout(request.timeout, shared.supervisor.wait(&app.id)).await
    else {
        return Err(DaemonError::Invalid(format!(
            "app {} still running after {} ms",
            app.name,
            request.timeout.as_millis()
        )));
    };
    Ok(StateResponse {
        id: app.id.clone(),
        name: app.name.clone(),
        state: state.map_or_else(|| "not running".to_string(), |s| s.to_string()),
    })
}

async fn ps(shared: &Shared) -> PsResponse {
    let mut apps = Vec::new();
    for app in shared.registry.list() {
        let warm = warm_view(shared, &app.id).filter(|w| w.target > 0);
        let row = match (shared.supervisor.status(&app.id), &warm) {
            (Some(s), _) => PsRow {
                id: app.id.clone(),
                name: app.name.clone(),
                sandbox: s.kind.as_str().to_string(),
                isolation: s.isolation,
                state: s.state.to_string(),
                restarts: s.restarts,
                note: s.note,
                container: s.container.as_deref().map(|c| short_id(c).to_string()),
                warm,
                usage: usage_view(shared, &app).await,
            },
            // Never launched, but it keeps prepared containers: it shows as warm.
            (None, Some(pool)) => PsRow {
                id: app.id.clone(),
                name: app.name.clone(),
                sandbox: SandboxKind::Docker.as_str().to_string(),
                isolation: None,
                state: "warm".to_string(),
                restarts: 0,
                note: pool.problem.clone(),
                container: None,
                warm,
                usage: usage_view(shared, &app).await,
            },
            (None, None) => continue,
        };
        apps.push(row);
    }
    PsResponse { apps }
}

/// The answer to `R`, encoded: naming `R` makes the compiler check that the handler
/// returns `R`'s response type.
fn reply<R: AdminCall>(result: Result<R::Response, DaemonError>) -> Vec<u8> {
    encode(&AdminReply::from(result))
}

/// Executes one admin request; returns the encoded answer.
pub(super) async fn execute(shared: &Arc<Shared>, request: AdminRequest) -> Vec<u8> {
    use super::protocol as p;
    match request {
        AdminRequest::Status(_) => reply::<p::StatusRequest>(Ok(status(shared))),
        AdminRequest::Install(r) => reply::<p::InstallRequest>(install(shared, r).await),
        AdminRequest::Limits(r) => reply::<p::LimitsRequest>(limits(shared, r).await),
        AdminRequest::List(_) => reply::<p::ListRequest>(Ok(ListResponse {
            apps: shared
                .registry
                .list()
                .iter()
                .map(|a| app_view(shared, a))
                .collect(),
        })),
        AdminRequest::Show(r) => reply::<p::ShowRequest>(show(shared, &r.app).await),
        AdminRequest::Grant(r) => reply::<p::GrantRequest>(grant(shared, r).await),
        AdminRequest::Ungrant(r) => reply::<p::UngrantRequest>(ungrant(shared, r).await),
        AdminRequest::Auth(r) => reply::<p::AuthRequest>(
            apps::set_auth(shared, &r.app, r.mode)
                .await
                .map(|app| app_view(shared, &app)),
        ),
        AdminRequest::Warm(r) => reply::<p::WarmRequest>(
            apps::set_warm(shared, &r.app, r.count)
                .await
                .map(|app| app_view(shared, &app)),
        ),
        AdminRequest::Rotate(r) => reply::<p::RotateRequest>(
            apps::rotate(shared, &r.app)
                .await
                .map(|app| app_view(shared, &app)),
        ),
        AdminRequest::Remove(r) => {
            reply::<p::RemoveRequest>(apps::remove(shared, &r.app).await.map(|app| {
                RemoveResponse {
                    id: app.id.clone(),
                    name: app.name.clone(),
                    removed: true,
                }
            }))
        }
        AdminRequest::Launch(r) => reply::<p::LaunchRequest>(launch(shared, r).await),
        AdminRequest::Run(r) => reply::<p::RunRequest>(run(shared, r).await),
        AdminRequest::Job(r) => reply::<p::JobRequest>(super::jobs::job(shared, r).await),
        AdminRequest::ForgetJob(r) => {
            reply::<p::ForgetJobRequest>(super::jobs::forget_job(shared, &r.run_id))
        }
        AdminRequest::Stop(r) => reply::<p::StopRequest>(stop(shared, r).await),
        AdminRequest::Wait(r) => reply::<p::WaitRequest>(wait(shared, r).await),
        AdminRequest::Ps(_) => reply::<p::PsRequest>(Ok(ps(shared).await)),
        // A stream, not one answer: the connection's loop serves it (`events::stream`).
        AdminRequest::Events(_) => reply::<p::EventsRequest>(Err(DaemonError::Invalid(
            "events are streamed on a connection of their own".into(),
        ))),
    }
}
