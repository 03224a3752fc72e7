//! One-off jobs (`fold_client run`): a binary or script run once as a throwaway app
//! (`job-<id>`, a fresh identity and uid, no grants unless given), which is removed after,
//! under a turn of `max_concurrent_jobs`; its output is kept until its client has read it.
//!
//! With `warm_jobs = N` the daemon keeps N **slots**: throwaway apps installed ahead, with
//! the config's image, tier and limits and no grants, each with one prepared container
//! (used once, not replaced: `Supervisor::prepare_once`). A job that asks for nothing else
//! takes a slot: its grants are set, its file is copied in as the slot's binary (`/app/job`,
//! which the prepared container sees through its mount before the holder runs it), it runs,
//! and the slot app is removed like any job's; a new slot is installed in the background.

use super::apps::{install_app, run_id_or_new, run_into, valid_run_id, JOB_PREFIX};
use super::protocol::{ForgetJobResponse, InstallRequest, JobRequest, RunRequest, RunResponse};
use crate::apps::{self, DaemonError, Shared};
use std::path::PathBuf;
use std::sync::Arc;

pub(super) async fn job(
    shared: &Arc<Shared>,
    request: JobRequest,
) -> Result<RunResponse, DaemonError> {
    let _turn = shared
        .jobs
        .acquire()
        .await
        .map_err(|_| DaemonError::Invalid("the daemon is shutting down".into()))?;
    let run_id = run_id_or_new(request.run_id.clone());
    if takes_a_slot(shared, &request) {
        if let Some(slot) = take_slot(shared) {
            fill_job_slots(shared, 1);
            return run_in_slot(shared, &slot, request, &run_id).await;
        }
    }
    let name = format!("{JOB_PREFIX}{run_id}");
    let install = InstallRequest {
        image: request.image.clone(),
        grants: request.grants,
        memory_bytes: request.memory_bytes,
        cpus: request.cpus,
        pids: request.pids,
        direct: request.direct,
        isolation: request.isolation,
        ..InstallRequest::new(name.clone(), request.binary)
    };
    let installed = install_app(shared, install).await?;
    let marker = mark(shared, &run_id, &installed.app.id, &name).await?;
    let run = RunRequest {
        app: name.clone(),
        timeout: request.timeout,
        direct: request.direct,
        image: request.image,
        interpreter: request.interpreter,
        output_cap: request.output_cap,
        run_id: Some(run_id.clone()),
        args: request.args,
    };
    let result = run_into(shared, run, &shared.one_off_output_dir(&run_id)).await;
    remove_job_app(shared, &name, &marker).await;
    result
}

/// Marks app `app_id` (`name`) as job `id`'s, so that a daemon stopped during the job
/// removes it at its next start (the name alone could be an app installed before names
/// were kept); returns the marker. Without a marker the app is removed at once.
async fn mark(
    shared: &Arc<Shared>,
    id: &str,
    app_id: &str,
    name: &str,
) -> Result<PathBuf, DaemonError> {
    let marker = job_marker(shared, id);
    if let Err(e) = write_job_marker(&marker, app_id) {
        let _ = apps::remove(shared, name).await;
        return Err(apps::setup(format!(
            "cannot mark the job in {}",
            marker.display()
        ))(e));
    }
    Ok(marker)
}

async fn remove_job_app(shared: &Arc<Shared>, name: &str, marker: &std::path::Path) {
    match apps::remove(shared, name).await {
        Ok(_) => {
            let _ = std::fs::remove_file(marker);
        }
        Err(e) => tracing::error!(app = %name, "cannot remove a one-off job's app: {e}"),
    }
}

/// Whether a job asks for nothing a slot does not have: the config's image, tier and
/// limits, in a container.
fn takes_a_slot(shared: &Shared, request: &JobRequest) -> bool {
    let config = &shared.config;
    !request.direct
        && request.interpreter.is_none()
        && request.memory_bytes.is_none()
        && request.cpus.is_none()
        && request.pids.is_none()
        && request
            .image
            .as_ref()
            .is_none_or(|image| *image == config.default_image)
        && request
            .isolation
            .is_none_or(|tier| tier == config.default_isolation)
}

/// The oldest slot whose container is prepared, taken out of the list.
fn take_slot(shared: &Shared) -> Option<Arc<crate::registry::App>> {
    let mut slots = apps::lock(&shared.job_slots);
    let at = slots.iter().position(|name| {
        shared.registry.find(name).is_ok_and(|app| {
            shared
                .supervisor
                .warm(&app.id)
                .is_some_and(|pool| pool.ready > 0)
        })
    })?;
    let name = slots.remove(at)?;
    shared.registry.find(&name).ok()
}

/// Runs job `run_id` in `slot`: its grants, its file as the slot's binary, then as any job.
async fn run_in_slot(
    shared: &Arc<Shared>,
    slot: &crate::registry::App,
    request: JobRequest,
    run_id: &str,
) -> Result<RunResponse, DaemonError> {
    let marker = job_marker(shared, slot_id(&slot.name));
    let prepared = async {
        let binary = apps::open_binary(&request.binary)?;
        let grants = request.grants.clone();
        let app = apps::set_grants(shared, &slot.name, move |g| *g = grants).await?;
        apps::copy_binary(shared, &app, (&request.binary, binary))?;
        Ok(())
    };
    if let Err(e) = prepared.await {
        remove_job_app(shared, &slot.name, &marker).await;
        return Err(e);
    }
    let run = RunRequest {
        app: slot.name.clone(),
        timeout: request.timeout,
        direct: false,
        image: None,
        interpreter: None,
        output_cap: request.output_cap,
        run_id: Some(run_id.to_string()),
        args: request.args,
    };
    let result = run_into(shared, run, &shared.one_off_output_dir(run_id)).await;
    remove_job_app(shared, &slot.name, &marker).await;
    result
}

fn slot_id(name: &str) -> &str {
    name.strip_prefix(JOB_PREFIX).unwrap_or(name)
}

/// Installs `count` more job slots in the background, each with one prepared container.
pub(crate) fn fill_job_slots(shared: &Arc<Shared>, count: usize) {
    if count == 0 || shared.config.warm_jobs == 0 {
        return;
    }
    let task = Arc::clone(shared);
    shared.tasks.spawn(async move {
        for _ in 0..count {
            if task.shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = add_slot(&task).await {
                tracing::warn!("cannot prepare a slot for one-off jobs: {e}");
                return;
            }
        }
    });
}

async fn add_slot(shared: &Arc<Shared>) -> Result<(), DaemonError> {
    let placeholder = slot_placeholder(shared)?;
    let id = run_id_or_new(None);
    let name = format!("{JOB_PREFIX}{id}");
    let install = InstallRequest {
        warm: Some(0),
        ..InstallRequest::new(name.clone(), placeholder)
    };
    let installed = install_app(shared, install).await?;
    mark(shared, &id, &installed.app.id, &name).await?;
    let app = shared.registry.find(&name)?;
    if let Err(e) = shared.supervisor.prepare_once(&app).await {
        remove_job_app(shared, &name, &job_marker(shared, &id)).await;
        return Err(e.into());
    }
    apps::lock(&shared.job_slots).push_back(name);
    Ok(())
}

/// The empty file a slot is installed from (`job`), until a job's file replaces it.
fn slot_placeholder(shared: &Shared) -> Result<PathBuf, DaemonError> {
    let dir = shared.config.state_dir.join("warm");
    let handle = crate::fsutil::private_dir(&dir, 0o755)
        .map_err(apps::setup("cannot create the warm directory"))?;
    handle
        .write_file("job", b"", crate::fsutil::Access::private(0o644))
        .map_err(apps::setup("cannot write the job slot placeholder"))?;
    Ok(dir.join("job"))
}

/// The file naming the app of a running one-off job: `<jobs dir>/<run id>.app`.
fn job_marker(shared: &Shared, run_id: &str) -> PathBuf {
    shared.paths.jobs_dir().join(format!("{run_id}.app"))
}

fn write_job_marker(marker: &std::path::Path, app_id: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = marker.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(marker)?;
    std::io::Write::write_all(&mut file, app_id.as_bytes())
}

/// Deletes a one-off job's output, once its client has read it.
pub(super) fn forget_job(shared: &Shared, run_id: &str) -> Result<ForgetJobResponse, DaemonError> {
    if !valid_run_id(run_id) {
        return Err(DaemonError::Invalid(format!("{run_id:?} is not a run id")));
    }
    let dir = shared.one_off_output_dir(run_id);
    let removed = std::fs::remove_dir_all(&dir).is_ok();
    Ok(ForgetJobResponse { removed })
}

/// What a daemon that died during one-off jobs left: their apps (removed, with their uid,
/// socket and container) and their output.
pub(crate) async fn remove_leftover_jobs(shared: &Arc<Shared>) {
    let jobs = shared.paths.jobs_dir();
    let markers = std::fs::read_dir(&jobs).into_iter().flatten().flatten();
    for marker in markers {
        let file_name = marker.file_name();
        let Some(run_id) = file_name.to_str().and_then(|n| n.strip_suffix(".app")) else {
            continue;
        };
        let Ok(app_id) = std::fs::read_to_string(marker.path()) else {
            continue;
        };
        // Only the app the marker names, and only if it is still that job's.
        let name = format!("{JOB_PREFIX}{run_id}");
        match shared.registry.find(app_id.trim()) {
            Ok(app) if app.name == name => {
                if let Err(e) = apps::remove(shared, &app.name).await {
                    tracing::error!(app = %app.name, "cannot remove a leftover one-off job: {e}");
                }
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&jobs);
}
