//! Adoption after a daemon restart: this daemon's containers (by label) are found and
//! taken over (state, output, events); ones that ended meanwhile are finalized.

use super::super::logfile::LogFile;
use super::super::{AppState, Found, Isolation, LaunchSpec, SandboxError};
use super::lifecycle::{finalize, new_entry, short};
use super::spec::{LABEL_APP, LABEL_DAEMON, LABEL_ISOLATION, LABEL_WARM};
use super::{engine, lock, logs, warm, Inner};
use bollard::query_parameters::ListContainersOptionsBuilder;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) async fn find_ours(inner: &Inner) -> Result<Vec<Found>, SandboxError> {
    let timeout = inner.settings.engine_timeout;
    let filter = format!("{LABEL_DAEMON}={}", inner.settings.label);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&HashMap::from([("label", vec![filter.as_str()])]))
        .build();
    let list = engine::call_ok(
        &inner.docker,
        timeout,
        "listing this daemon's containers",
        inner.docker.list_containers(Some(options)),
    )
    .await?;
    let mut found = Vec::new();
    let mut ids = Vec::new();
    for summary in list {
        let Some(id) = summary.id else { continue };
        let Some(c) = engine::inspect(&inner.docker, timeout, &id).await? else {
            continue;
        };
        let config = c.config.unwrap_or_default();
        let mut labels = config.labels.unwrap_or_default();
        // The filter already selected our label; check again, never touch another daemon's.
        if labels.get(LABEL_DAEMON) != Some(&inner.settings.label) {
            continue;
        }
        let Some(app_id) = labels.get(LABEL_APP).cloned() else {
            continue;
        };
        // A warm container: taken ones are adopted as their launch recorded them; prepared
        // ones are removed here.
        let args = if labels.contains_key(LABEL_WARM) {
            match warm::sort_leftover(inner, &id, &mut labels).await {
                Some(args) => args,
                None => continue,
            }
        } else {
            config.cmd.unwrap_or_default()
        };
        ids.push(id.clone());
        found.push(Found {
            app_id,
            container_id: id,
            running: c.state.and_then(|s| s.running).unwrap_or(false),
            labels,
            args,
            image: config.image.unwrap_or_default(),
        });
    }
    warm::prune_records(inner, &ids);
    Ok(found)
}

pub(super) async fn adopt(
    inner: &Arc<Inner>,
    spec: &LaunchSpec,
    found: &Found,
) -> Result<AppState, SandboxError> {
    let log = LogFile::open(&spec.log_path, spec.log_cap)?;
    // Containers of daemons before tiers carry no label: they ran under runc.
    let isolation = found
        .labels
        .get(LABEL_ISOLATION)
        .and_then(|tier| tier.parse().ok())
        .unwrap_or(Isolation::Container);
    let entry = new_entry(
        &spec.app_id,
        log,
        Some(found.container_id.clone()),
        isolation,
    );
    lock(&inner.apps).insert(spec.app_id.clone(), Arc::clone(&entry));
    let timeout = inner.settings.engine_timeout;
    let id = &found.container_id;
    let state = engine::inspect(&inner.docker, timeout, id)
        .await?
        .and_then(|c| c.state);
    if state.as_ref().and_then(|s| s.running) == Some(true) {
        let pid = state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        let pump = logs::follow_adopted(
            &inner.tasks,
            &inner.docker,
            id,
            entry.log.clone(),
            &spec.log_path,
        );
        *lock(&entry.pump) = Some(pump);
        let _ = entry.log.write_marker(&format!(
            "adopted running container {} after a daemon restart",
            short(id)
        ));
        entry.state.send_if_modified(|s| {
            let starting = *s == AppState::Starting;
            if starting {
                *s = AppState::Running { pid };
            }
            starting
        });
    } else {
        let _ = entry.log.write_marker(&format!(
            "container {} ended while the daemon was down",
            short(id)
        ));
        // Its exit code now, in case it is gone by the time finalize asks again (an earlier
        // daemon may have asked the engine to remove it just before it died).
        let hint = state
            .and_then(|s| s.exit_code)
            .and_then(|c| i32::try_from(c).ok());
        finalize(inner, &entry, id, hint).await;
    }
    let state = entry.state.borrow().clone();
    Ok(state)
}
