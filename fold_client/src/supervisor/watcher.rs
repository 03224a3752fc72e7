//! The watcher of one launch (restarts, maximum lifetime), and adoption of this daemon's
//! containers after a restart.

use super::{backoff, LaunchOptions, Supervisor, Tracked, RESTART_RESET};
use crate::audit::now_ms;
use crate::daemon::Shared;
use crate::sandbox::docker::DockerSandbox;
use crate::sandbox::{AppState, Sandbox};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spawns the watcher of `tracked` (observes daemon shutdown).
pub(super) fn spawn(shared: &Arc<Shared>, tracked: Arc<Tracked>, app_id: String) {
    let owned = Arc::clone(shared);
    shared
        .tasks
        .spawn(async move { watch(owned, tracked, app_id).await });
}

/// Resolves at `deadline_ms` (never without one).
async fn until(deadline_ms: Option<u64>) {
    match deadline_ms {
        Some(deadline) => {
            let left = deadline.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
        None => std::future::pending().await,
    }
}

async fn audit(shared: &Shared, app_id: &str, event: &str, detail: &str) {
    let name = shared.registry.get(app_id).map(|a| a.name.clone());
    shared
        .audit
        .event(app_id, name.as_deref(), event, detail)
        .await;
}

/// The hard kill when an app outlives its maximum lifetime (never restarted after).
async fn lifetime_exceeded(shared: &Shared, tracked: &Tracked, app_id: &str) -> Option<AppState> {
    tracked.set_note("killed: maximum lifetime exceeded");
    tracked.stop.cancel();
    audit(
        shared,
        app_id,
        "max_lifetime",
        "maximum lifetime exceeded; killed",
    )
    .await;
    match tracked.backend.stop(app_id, Duration::ZERO).await {
        Ok(state) => Some(state),
        Err(_) => tracked.backend.state(app_id),
    }
}

async fn watch(shared: Arc<Shared>, tracked: Arc<Tracked>, app_id: String) {
    let mut run_started = Instant::now();
    loop {
        let ended = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            state = tracked.backend.wait(&app_id) => state,
            () = until(tracked.deadline_ms) => lifetime_exceeded(&shared, &tracked, &app_id).await,
        };
        let ended = match ended {
            Some(state) if !state.is_live() => state,
            other => AppState::Failed {
                reason: format!("lost track of the app ({other:?})"),
            },
        };
        // E.g. a child's OOM kill, while the app's own exit is what `ended` says.
        let exit_note = tracked.backend.exit_note(&app_id);
        let detail = with_note(ended.to_string(), exit_note.as_deref());
        audit(&shared, &app_id, "exit", &detail).await;
        let policy = tracked.options.restart;
        let mut restarts = tracked.restarts.load(Ordering::SeqCst);
        if run_started.elapsed() >= RESTART_RESET {
            restarts = 0;
        }
        // Decided before publishing, so waiters never see an exit that is followed by a
        // restart: the state goes straight to `restarting`.
        if tracked.stop.is_cancelled() || !policy.should_restart(&ended, restarts) {
            if !tracked.stop.is_cancelled()
                && policy.max_restarts() > 0
                && policy.should_restart(&ended, 0)
            {
                let gave_up = format!("gave up after {restarts} restarts");
                audit(&shared, &app_id, "restart_gave_up", &gave_up).await;
                tracked.set_note(with_note(gave_up, exit_note.as_deref()));
            } else if let Some(exit_note) = exit_note {
                // Added, not replacing: a note on why the run was killed (maximum lifetime,
                // run timeout) still holds.
                tracked.add_note(&exit_note);
            }
            tracked.state.send_replace(ended);
            return;
        }
        tracked.state.send_replace(AppState::Restarting);
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tracked.stop.cancelled() => {
                tracked.state.send_replace(AppState::Stopped);
                return;
            }
            () = tokio::time::sleep(backoff(shared.config.restart_backoff, restarts)) => {}
        }
        let Some(app) = shared.registry.get(&app_id) else {
            tracked.set_note("removed while restarting");
            tracked.state.send_replace(AppState::Stopped);
            return;
        };
        restarts += 1;
        tracked.restarts.store(restarts, Ordering::SeqCst);
        let started = shared
            .supervisor
            .start_run(
                &shared,
                &app,
                &tracked.options,
                restarts,
                tracked.deadline_ms,
            )
            .await;
        match started {
            Ok(outcome) => {
                tracked.state.send_replace(outcome.state);
                let detail = format!(
                    "restart {restarts} of {} after {ended}",
                    policy.max_restarts()
                );
                audit(&shared, &app_id, "restart", &detail).await;
            }
            Err(e) => {
                let reason = e.to_string();
                audit(&shared, &app_id, "restart_failed", &reason).await;
                tracked.state.send_replace(AppState::Failed { reason });
                return;
            }
        }
        run_started = Instant::now();
        if tracked.stop.is_cancelled() {
            // A stop arrived while the restart was starting.
            let _ = tracked
                .backend
                .stop(&app_id, shared.config.stop_grace)
                .await;
        }
    }
}

/// Takes over this daemon's containers found in the engine: running ones are supervised
/// again (state, logs, events, restart policy, lifetime), ended ones are finalized (and
/// restarted if their policy says so), ones of apps no longer installed are removed.
pub(super) async fn adopt_all(shared: &Arc<Shared>, docker: &DockerSandbox) {
    let found = match docker.find_ours().await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("cannot list this daemon's containers; none adopted: {e}");
            return;
        }
    };
    let backend: Arc<dyn Sandbox> = Arc::new(docker.clone());
    for f in found {
        let Some(app) = shared.registry.get(&f.app_id) else {
            tracing::warn!(container = %f.container_id, app_id = %f.app_id, "removing a container of an app that is no longer installed");
            if let Err(e) = docker.discard(&f.container_id).await {
                tracing::warn!("cannot remove orphan container: {e}");
            }
            audit(shared, &f.app_id, "orphan_removed", &f.container_id).await;
            continue;
        };
        let (options, restarts, deadline_ms) =
            LaunchOptions::from_labels(&f.labels, &shared.config, f.args.clone(), f.image.clone());
        let spec = Supervisor::spec(shared, &app, &options);
        match docker.adopt(&spec, &f).await {
            Ok(state) => {
                let detail = format!(
                    "container {} {state}",
                    &f.container_id[..12.min(f.container_id.len())]
                );
                tracing::info!(app = %app.name, "adopted: {detail}");
                audit(shared, &app.id, "adopt", &detail).await;
                shared.supervisor.track_adopted(
                    shared,
                    Arc::clone(&backend),
                    &app.id,
                    state,
                    options,
                    restarts,
                    deadline_ms,
                );
            }
            Err(e) => tracing::warn!(app = %app.name, "cannot adopt container: {e}"),
        }
    }
}

/// `text`, then `; note` when there is one.
pub(super) fn with_note(text: String, note: Option<&str>) -> String {
    match note {
        Some(note) => format!("{text}; {note}"),
        None => text,
    }
}
