//! One-off jobs (`fold_client run`): a binary or script run once as a throwaway app
//! (`job-<id>`, a fresh identity and uid, no grants unless given), which is removed after,
//! under a turn of `max_concurrent_jobs`; its output is kept until its client has read it.

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
    let run_id = run_id_or_new(request.run_id);
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
    // Marks the app as this job's, so that a daemon stopped during the job removes it at
    // its next start (the name alone could be an app installed before names were kept).
    let marker = job_marker(shared, &run_id);
    if let Err(e) = write_job_marker(&marker, &installed.app.id) {
        let _ = apps::remove(shared, &name).await;
        return Err(apps::setup(format!(
            "cannot mark the job in {}",
            marker.display()
        ))(e));
    }
    let run = RunRequest {
        app: name.clone(),
        timeout: request.timeout,
        direct: request.direct,
        image: request.image,
        output_cap: request.output_cap,
        run_id: Some(run_id.clone()),
        args: request.args,
    };
    let result = run_into(shared, run, &shared.one_off_output_dir(&run_id)).await;
    match apps::remove(shared, &name).await {
        Ok(_) => {
            let _ = std::fs::remove_file(&marker);
        }
        Err(e) => tracing::error!(app = %name, "cannot remove a one-off job's app: {e}"),
    }
    result
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
