//! The watcher of one launch (restarts, maximum lifetime, the peer rule of each run), and
//! adoption of this daemon's leftover runs after a restart.

use super::{backoff, peer_rule, LaunchOptions, Supervisor, Tracked, RESTART_RESET};
use crate::audit::now_ms;
use crate::sandbox::{AppState, Sandbox, SandboxError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Spawns the watcher of `tracked` (observes daemon shutdown).
pub(super) fn spawn(supervisor: &Arc<Supervisor>, tracked: Arc<Tracked>) {
    let owned = Arc::clone(supervisor);
    supervisor
        .tasks
        .spawn(async move { watch(owned, tracked).await });
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

impl Supervisor {
    async fn audit(&self, app_id: &str, event: &str, detail: &str) {
        let name = self.registry.get(app_id).map(|a| a.name.clone());
        self.audit
            .event(app_id, name.as_deref(), event, detail)
            .await;
    }

    /// Follows the app's current run in its backend until it ends, publishing the peer
    /// rule at every change of its state; returns how it ended (`None`: the backend lost it).
    async fn follow(&self, tracked: &Tracked) -> Option<AppState> {
        let app_id = &tracked.app_id;
        let mut rx = tracked.backend.subscribe(app_id)?;
        loop {
            let state = rx.borrow_and_update().clone();
            self.publish(app_id, peer_rule(&*tracked.backend, app_id, &state));
            if !state.is_live() {
                return Some(state);
            }
            rx.changed().await.ok()?;
        }
    }

    /// The hard kill when an app outlives its maximum lifetime (never restarted after).
    async fn lifetime_exceeded(&self, tracked: &Tracked) -> Option<AppState> {
        let app_id = &tracked.app_id;
        tracked.set_note("killed: maximum lifetime exceeded");
        tracked.stop.cancel();
        self.audit(app_id, "max_lifetime", "maximum lifetime exceeded; killed")
            .await;
        let state = match tracked.backend.stop(app_id, Duration::ZERO).await {
            Ok(state) => Some(state),
            Err(_) => tracked.backend.state(app_id),
        };
        self.publish_current(app_id, &*tracked.backend);
        state
    }
}

async fn watch(supervisor: Arc<Supervisor>, tracked: Arc<Tracked>) {
    let app_id = tracked.app_id.clone();
    let mut run_started = Instant::now();
    loop {
        let ended = tokio::select! {
            () = supervisor.shutdown.cancelled() => return,
            state = supervisor.follow(&tracked) => state,
            () = until(tracked.deadline_ms) => supervisor.lifetime_exceeded(&tracked).await,
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
        supervisor.audit(&app_id, "exit", &detail).await;
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
                supervisor.audit(&app_id, "restart_gave_up", &gave_up).await;
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
        let delay = backoff(supervisor.settings.restart_backoff, restarts);
        tokio::select! {
            () = supervisor.shutdown.cancelled() => return,
            () = tracked.stop.cancelled() => {
                tracked.state.send_replace(AppState::Stopped);
                return;
            }
            () = tokio::time::sleep(delay) => {}
        }
        let Some(app) = supervisor.registry.get(&app_id) else {
            tracked.set_note("removed while restarting");
            tracked.state.send_replace(AppState::Stopped);
            return;
        };
        restarts += 1;
        tracked.restarts.store(restarts, Ordering::SeqCst);
        let started = supervisor
            .start_run(&app, &tracked.options, restarts, tracked.deadline_ms)
            .await;
        match started {
            Ok(launched) => {
                tracked.state.send_replace(launched.state);
                let detail = format!(
                    "restart {restarts} of {} after {ended}",
                    policy.max_restarts()
                );
                supervisor.audit(&app_id, "restart", &detail).await;
            }
            Err(e) => {
                let reason = e.to_string();
                supervisor.audit(&app_id, "restart_failed", &reason).await;
                tracked.state.send_replace(AppState::Failed { reason });
                return;
            }
        }
        run_started = Instant::now();
        if tracked.stop.is_cancelled() {
            // A stop arrived while the restart was starting.
            let grace = supervisor.settings.stop_grace;
            let _ = tracked.backend.stop(&app_id, grace).await;
        }
    }
}

/// Takes over this daemon's runs found in `backend`: running ones are supervised again
/// (state, logs, events, restart policy, lifetime), ended ones are finalized (and restarted
/// if their policy says so), ones of apps no longer installed are removed.
///
/// # Errors
///
/// The backend could not list its leftovers (nothing was adopted).
pub(super) async fn adopt_all(
    supervisor: &Arc<Supervisor>,
    backend: &Arc<dyn Sandbox>,
) -> Result<(), SandboxError> {
    for f in backend.leftovers().await? {
        let Some(app) = supervisor.registry.get(&f.app_id) else {
            tracing::warn!(container = %f.container_id, app_id = %f.app_id, "removing a container of an app that is no longer installed");
            if let Err(e) = backend.discard(&f).await {
                tracing::warn!("cannot remove orphan container: {e}");
            }
            supervisor
                .audit(&f.app_id, "orphan_removed", &f.container_id)
                .await;
            continue;
        };
        let resumed = LaunchOptions::from_labels(
            &f.labels,
            supervisor.settings.restart,
            f.args.clone(),
            f.image.clone(),
        );
        let spec = supervisor.spec(&app, &resumed.0);
        match backend.adopt(&spec, &f).await {
            Ok(state) => {
                let detail = format!(
                    "container {} {state}",
                    &f.container_id[..12.min(f.container_id.len())]
                );
                tracing::info!(app = %app.name, "adopted: {detail}");
                supervisor.audit(&app.id, "adopt", &detail).await;
                supervisor.track_adopted(backend, &app.id, state, resumed);
            }
            Err(e) => tracing::warn!(app = %app.name, "cannot adopt container: {e}"),
        }
    }
    Ok(())
}

/// `text`, then `; note` when there is one.
pub(super) fn with_note(text: String, note: Option<&str>) -> String {
    match note {
        Some(note) => format!("{text}; {note}"),
        None => text,
    }
}
