//! Launch, stop, finalize and adopt. State changes after the start come from the engine's
//! events (`events`), which call [`finalize`] when a container dies.

use super::super::logfile::LogFile;
use super::super::{AppState, Isolation, IsolationRequest, LaunchSpec, Launched, SandboxError};
use super::report::StorageSupport;
use super::spec::{self, container_name, Plan, LABEL_APP, LABEL_DAEMON, LABEL_WARM};
use super::{elf, engine, lock, logs, Entry, Inner};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long the output may take to drain once the container has stopped.
const DRAIN: Duration = Duration::from_secs(2);

/// Exit code of a main process killed by SIGKILL (128 + 9), as the OOM killer does.
const SIGKILL_EXIT: i32 = 137;

/// Note for a run whose main process ended by itself while the engine flagged an OOM kill.
pub(super) const OTHER_PROCESS_OOM: &str =
    "another process in the container was OOM-killed (over the memory limit); the app's main process was not";

/// Note for a stopped run during which the engine flagged an OOM kill.
pub(super) const STOPPED_OOM: &str =
    "a process in the container was OOM-killed (over the memory limit) before the stop";

/// How a container's run ended, from what the engine says: whether a stop was requested,
/// its OOM flag (the `OOMKilled` state or an `oom` event), and its exit code when known.
/// Returns the app's state and a note for what the state cannot say.
///
/// The engine flags a container when *any* of its processes is OOM-killed (cgroup v1 and
/// v2 alike), so the flag alone does not mean the app was. The app is `oom_killed` only when
/// its main process died of the kill too: exit code 137 (SIGKILL; `docker-init` passes on
/// its child's signal as 128 + 9), or no exit code at all, where the flag is all there is.
/// Otherwise the app's own exit stands, with a note that a process was OOM-killed.
pub(super) fn exit_state(
    stop_requested: bool,
    oom: bool,
    code: Option<i32>,
) -> (AppState, Option<&'static str>) {
    if stop_requested {
        return (AppState::Stopped, oom.then_some(STOPPED_OOM));
    }
    match code {
        None if oom => (AppState::OomKilled, None),
        Some(SIGKILL_EXIT) if oom => (AppState::OomKilled, None),
        Some(code) => (AppState::Exited { code }, oom.then_some(OTHER_PROCESS_OOM)),
        None => (AppState::Exited { code: -1 }, None),
    }
}

pub(super) fn new_entry(
    app_id: &str,
    log: LogFile,
    container: Option<String>,
    isolation: Isolation,
) -> Arc<Entry> {
    Arc::new(Entry {
        app_id: app_id.to_string(),
        container: Mutex::new(container),
        isolation,
        state: watch::Sender::new(AppState::Starting),
        stop_requested: AtomicBool::new(false),
        oom: AtomicBool::new(false),
        exit_note: Mutex::new(None),
        finalizing: AtomicBool::new(false),
        log,
        pump: Mutex::new(None),
    })
}

/// Registers a new entry for the app unless a live one exists.
fn register(
    inner: &Inner,
    spec: &LaunchSpec,
    isolation: Isolation,
) -> Result<Arc<Entry>, SandboxError> {
    let mut apps = lock(&inner.apps);
    if apps
        .get(&spec.app_id)
        .is_some_and(|e| e.state.borrow().is_live())
    {
        return Err(SandboxError::AlreadyRunning(spec.app_name.clone()));
    }
    let log = LogFile::open(&spec.log_path, spec.log_cap)?;
    log.set_capture(spec.capture.clone());
    let entry = new_entry(&spec.app_id, log, None, isolation);
    apps.insert(spec.app_id.clone(), Arc::clone(&entry));
    Ok(entry)
}

pub(super) async fn launch(
    inner: &Arc<Inner>,
    spec: &LaunchSpec,
    labels: &HashMap<String, String>,
) -> Result<Launched, SandboxError> {
    // Validate (root, host network, the tier) before touching anything.
    let tier = resolve(inner, spec).await?;
    spec::create_body(&plan(inner, spec, labels, &tier, None))?;
    let entry = register(inner, spec, tier.0)?;
    let mut warnings = Vec::new();
    if let Some(w) = elf::image_mismatch(&spec.app_dir.join(&spec.binary), &spec.image) {
        tracing::warn!(app = %spec.app_name, "{w}");
        let _ = entry.log.write_marker(&format!("WARNING: {w}"));
        warnings.push(w);
    }
    let started = match super::warm::take(inner, spec, &tier) {
        Some(prepared) => {
            let _ = entry.log.write_marker(&format!(
                "launching {} in prepared container {} (image {}, isolation {})",
                spec.app_name,
                short(&prepared.id),
                spec.image,
                tier.0
            ));
            start_warm(inner, &entry, spec, (prepared, &mut warnings)).await
        }
        None => {
            let _ = entry.log.write_marker(&format!(
                "launching {} in a container (image {}, isolation {})",
                spec.app_name, spec.image, tier.0
            ));
            start(inner, &entry, spec, (labels, &tier), &mut warnings).await
        }
    };
    match started {
        Ok(container_id) => {
            let state = entry.state.borrow().clone();
            Ok(Launched {
                state,
                container: Some(container_id),
                isolation: Some(tier.0),
                warnings,
            })
        }
        Err(e) => {
            let _ = entry.log.write_marker(&format!("cannot launch: {e}"));
            entry.state.send_replace(AppState::Failed {
                reason: e.to_string(),
            });
            Err(e)
        }
    }
}

/// The tier the app runs under and the runtime to ask for. A miss is checked against a
/// fresh reading of the engine (a runtime may have been registered since it was read).
pub(super) async fn resolve(
    inner: &Inner,
    spec: &LaunchSpec,
) -> Result<(Isolation, Option<String>), SandboxError> {
    let cached = lock(&inner.offer).clone();
    let may_gain =
        spec.isolation != IsolationRequest::Exactly(Isolation::Container) && cached.gvisor.is_err();
    if !may_gain {
        return cached.resolve(&spec.app_name, spec.isolation);
    }
    let timeout = inner.settings.engine_timeout;
    let offer = engine::offer(&inner.docker, timeout, &inner.settings.gvisor_runtime, None).await?;
    *lock(&inner.offer) = offer.clone();
    offer.resolve(&spec.app_name, spec.isolation)
}

pub(super) fn plan<'a>(
    inner: &'a Inner,
    spec: &'a LaunchSpec,
    labels: &'a HashMap<String, String>,
    (isolation, runtime): &'a (Isolation, Option<String>),
    storage: Option<u64>,
) -> Plan<'a> {
    Plan {
        spec,
        daemon_label: &inner.settings.label,
        extra_labels: labels,
        storage,
        grace: inner.settings.grace,
        isolation: *isolation,
        runtime: runtime.as_deref(),
        flavor: lock(&inner.offer).flavor,
    }
}

/// Removes container `id` and kills what it left on the host (`reap`).
///
/// # Errors
///
/// The engine did not remove it.
pub(super) async fn remove(inner: &Inner, id: &str) -> Result<(), SandboxError> {
    super::reap::remove(&inner.docker, inner.settings.engine_timeout, id).await
}

/// A leftover container with the app's name: ours and stopped is removed; someone else's
/// is never touched.
async fn clear_name(inner: &Inner, spec: &LaunchSpec) -> Result<(), SandboxError> {
    let timeout = inner.settings.engine_timeout;
    let name = container_name(&spec.app_id);
    let Some(found) = engine::inspect(&inner.docker, timeout, &name).await? else {
        return Ok(());
    };
    let labels = found
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    if labels.get(LABEL_DAEMON) != Some(&inner.settings.label) {
        return Err(SandboxError::Backend(format!(
            "a container named {name} exists but belongs to another daemon (label {LABEL_DAEMON}={}); \
             it is left alone: remove it yourself if it is stale",
            labels.get(LABEL_DAEMON).map_or("<none>", String::as_str)
        )));
    }
    if found.state.and_then(|s| s.running) == Some(true) {
        return Err(SandboxError::AlreadyRunning(spec.app_name.clone()));
    }
    remove(inner, found.id.as_deref().unwrap_or(&name)).await
}

async fn start(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    spec: &LaunchSpec,
    (labels, tier): (&HashMap<String, String>, &(Isolation, Option<String>)),
    warnings: &mut Vec<String>,
) -> Result<String, SandboxError> {
    pull(inner, spec, Some(&entry.log)).await?;
    clear_name(inner, spec).await?;
    let name = container_name(&spec.app_id);
    let body = |storage| spec::create_body(&plan(inner, spec, labels, tier, storage));
    let record = |id: &str| *lock(&entry.container) = Some(id.to_string());
    let started = create_started(inner, spec, &name, (&body, false), record).await?;
    for w in started.warnings {
        warn(entry, warnings, w);
    }
    let pump = logs::spawn_pump(
        &inner.tasks,
        started.attached.output,
        entry.log.clone(),
        None,
    );
    *lock(&entry.pump) = Some(pump);
    entry.state.send_if_modified(|s| {
        let starting = *s == AppState::Starting;
        if starting {
            *s = AppState::Running { pid: started.pid };
        }
        starting
    });
    tracing::info!(app = %spec.app_name, container = %short(&started.id), "container started");
    Ok(started.id)
}

fn warn(entry: &Entry, warnings: &mut Vec<String>, warning: String) {
    let _ = entry.log.write_marker(&format!("WARNING: {warning}"));
    warnings.push(warning);
}

/// The warning of a launch asking for a storage limit the engine does not enforce.
fn storage_warning(inner: &Inner) -> Option<String> {
    inner.settings.storage_limit?;
    lock(&inner.storage).warning()
}

/// Starts the app in a prepared container (`warm::take`): its output goes to the log from
/// here on, and its holder gets the launch's arguments. It warns as a cold start would.
async fn start_warm(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    spec: &LaunchSpec,
    (prepared, warnings): (super::warm::Prepared, &mut Vec<String>),
) -> Result<String, SandboxError> {
    if let Some(w) = storage_warning(inner) {
        warn(entry, warnings, w);
    }
    let super::warm::Prepared { id, pid, attached } = prepared;
    *lock(&entry.container) = Some(id.clone());
    let mut input = attached.input;
    let pump = logs::spawn_pump(&inner.tasks, attached.output, entry.log.clone(), None);
    *lock(&entry.pump) = Some(pump);
    if let Err(e) = super::warm::give_word(inner, &id, &mut input, spec).await {
        let _ = remove(inner, &id).await;
        return Err(e);
    }
    entry.state.send_if_modified(|s| {
        let starting = *s == AppState::Starting;
        if starting {
            *s = AppState::Running { pid };
        }
        starting
    });
    tracing::info!(app = %spec.app_name, container = %short(&id), "started in a prepared container");
    Ok(id)
}

/// Makes sure the engine has the spec's image (as its pull policy says), noting a pull in
/// `log`.
pub(super) async fn pull(
    inner: &Inner,
    spec: &LaunchSpec,
    log: Option<&LogFile>,
) -> Result<(), SandboxError> {
    let settings = &inner.settings;
    let mut progress = |line: &str| {
        tracing::debug!(image = %spec.image, "{line}");
        if let Some(log) = log.filter(|_| line.starts_with("pulling image")) {
            let _ = log.write_marker(line);
        }
    };
    engine::ensure_image(
        &inner.docker,
        settings.engine_timeout,
        settings.pull_timeout,
        (&spec.image, spec.pull),
        &mut progress,
    )
    .await
}

/// A container created, attached to and started.
pub(super) struct Started {
    /// Its id.
    pub id: String,
    /// Its output (and stdin, when asked for).
    pub attached: bollard::container::AttachContainerResults,
    /// Its init's host pid, where the engine said.
    pub pid: Option<u32>,
    /// What the user should know (the storage limit is not enforced).
    pub warnings: Vec<String>,
}

/// The body to create with a writable-layer limit (or none).
type BodyFor<'a> = dyn Fn(Option<u64>) -> Result<ContainerCreateBody, SandboxError> + Sync + 'a;

/// Creates container `name` from `body` (with the storage limit where the engine takes
/// one; without, once it refuses), calls `created` with its id, attaches to its output
/// (and its stdin, with `stdin`), and starts it. Whatever fails after the create removes
/// the container.
pub(super) async fn create_started(
    inner: &Arc<Inner>,
    spec: &LaunchSpec,
    name: &str,
    (body, stdin): (&BodyFor<'_>, bool),
    created: impl FnOnce(&str),
) -> Result<Started, SandboxError> {
    let settings = &inner.settings;
    let (docker, timeout) = (&inner.docker, settings.engine_timeout);
    let storage = settings
        .storage_limit
        .filter(|_| !matches!(*lock(&inner.storage), StorageSupport::Unsupported(_)));
    let id = match engine::create(docker, timeout, name, body(storage)?).await? {
        Ok(id) => {
            if storage.is_some() {
                *lock(&inner.storage) = StorageSupport::Supported;
            }
            id
        }
        Err(e) if storage.is_some() && engine::is_storage_refusal(&e) => {
            tracing::info!("the engine refuses storage limits: {}", engine::message(&e));
            *lock(&inner.storage) = StorageSupport::Unsupported(engine::message(&e));
            engine::create(docker, timeout, name, body(None)?)
                .await?
                .map_err(|e| refused("create", &e))?
        }
        Err(e) => return Err(refused("create", &e)),
    };
    let warnings = storage_warning(inner).into_iter().collect();
    created(&id);
    let attach = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdin(stdin)
        .stdout(true)
        .stderr(true)
        .build();
    let what = format!("attaching to {name}");
    let attached = engine::call_ok(
        docker,
        timeout,
        &what,
        docker.attach_container(&id, Some(attach)),
    );
    let attached = match attached.await {
        Ok(a) => a,
        Err(e) => {
            let _ = remove(inner, &id).await;
            return Err(e);
        }
    };
    let started = engine::call(
        docker,
        timeout,
        "starting the container",
        docker.start_container(&id, None),
    );
    match started.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = remove(inner, &id).await;
            return Err(start_refused(spec, &e));
        }
        Err(e) => {
            let _ = remove(inner, &id).await;
            return Err(e);
        }
    }
    let pid = engine::inspect(docker, timeout, &id)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.state)
        .and_then(|s| s.pid)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0);
    Ok(Started {
        id,
        attached,
        pid,
        warnings,
    })
}

fn refused(what: &str, e: &bollard::errors::Error) -> SandboxError {
    SandboxError::Backend(format!(
        "the Docker engine refused to {what} the container: {}",
        engine::message(e)
    ))
}

fn start_refused(spec: &LaunchSpec, e: &bollard::errors::Error) -> SandboxError {
    let message = engine::message(e);
    let lower = message.to_ascii_lowercase();
    let hint = if lower.contains("rlimit") || lower.contains("ulimit") {
        format!(
            " (the nofile limit {} may exceed the host's hard limit; lower it)",
            spec.limits.nofile
        )
    } else if lower.contains("no such file") || lower.contains("not found") {
        format!(
            " (is /app/{} a binary that runs in image {}? static binaries run anywhere)",
            spec.binary, spec.image
        )
    } else {
        String::new()
    };
    SandboxError::Backend(format!(
        "the Docker engine refused to start the container: {message}{hint}"
    ))
}

pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub(super) async fn stop(
    inner: &Arc<Inner>,
    app_id: &str,
    grace: Duration,
) -> Result<AppState, SandboxError> {
    let not_running = || SandboxError::NotRunning(app_id.to_string());
    let entry = lock(&inner.apps)
        .get(app_id)
        .cloned()
        .ok_or_else(not_running)?;
    if !entry.state.borrow().is_live() {
        return Err(not_running());
    }
    entry.stop_requested.store(true, Ordering::SeqCst);
    let timeout = inner.settings.engine_timeout;
    let mut rx = entry.state.subscribe();
    // A launch in progress finishes (or fails) first; it cannot take longer than a pull.
    let settled = tokio::time::timeout(
        inner.settings.pull_timeout + 3 * timeout,
        rx.wait_for(|s| *s != AppState::Starting),
    );
    let _ = settled.await;
    let Some(id) = entry.container() else {
        return Ok(entry.state.borrow().clone());
    };
    let ended = |s: &AppState| !s.is_live();
    if entry.state.borrow().is_live() {
        engine::kill(&inner.docker, timeout, &id, "SIGTERM").await?;
        if tokio::time::timeout(grace, rx.wait_for(ended))
            .await
            .is_ok()
        {
            return Ok(entry.state.borrow().clone());
        }
        engine::kill(&inner.docker, timeout, &id, "SIGKILL").await?;
    }
    let killed = tokio::time::timeout(timeout, rx.wait_for(ended))
        .await
        .is_ok();
    if killed {
        let state = entry.state.borrow().clone();
        return Ok(state);
    }
    Err(SandboxError::Backend(format!(
        "container {} of app {app_id} is still running {} s after SIGKILL",
        short(&id),
        timeout.as_secs()
    )))
}

/// Records how a container ended: reads its exit code and OOM flag, drains its output,
/// writes the exit marker, removes it, then publishes the final state. Idempotent; ignores
/// containers that are not the app's current one.
pub(super) async fn finalize(inner: &Arc<Inner>, entry: &Arc<Entry>, id: &str, hint: Option<i32>) {
    if entry.container().as_deref() != Some(id) || entry.finalizing.swap(true, Ordering::SeqCst) {
        return;
    }
    let timeout = inner.settings.engine_timeout;
    let inspected = engine::inspect(&inner.docker, timeout, id)
        .await
        .ok()
        .flatten();
    let state = inspected.and_then(|c| c.state);
    let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false)
        || entry.oom.load(Ordering::SeqCst);
    let code = state
        .as_ref()
        .and_then(|s| s.exit_code)
        .and_then(|c| i32::try_from(c).ok())
        .or(hint);
    let pump = lock(&entry.pump).take();
    if let Some(mut pump) = pump {
        if tokio::time::timeout(DRAIN, &mut pump).await.is_err() {
            tracing::warn!(app_id = %entry.app_id, "container output still open after exit; dropping it");
            pump.abort();
        }
    }
    let (final_state, note) = exit_state(entry.stop_requested.load(Ordering::SeqCst), oom, code);
    let marker = match note {
        Some(note) => format!("app {final_state}; {note}"),
        None => format!("app {final_state}"),
    };
    let _ = entry.log.write_marker(&marker);
    // Set before the state is published, so whoever sees the end also sees the note.
    *lock(&entry.exit_note) = note;
    if let Err(e) = remove(inner, id).await {
        tracing::warn!(app_id = %entry.app_id, "cannot remove container: {e}");
    }
    super::warm::forget_record(inner, id);
    tracing::info!(app_id = %entry.app_id, container = %short(id), state = %final_state, "container ended");
    entry.state.send_replace(final_state);
}

/// Handles one container event of this daemon's containers.
pub(super) fn on_event(
    inner: &Arc<Inner>,
    action: &str,
    id: &str,
    attrs: &HashMap<String, String>,
) {
    let Some(app_id) = attrs.get(LABEL_APP) else {
        return;
    };
    let entry = lock(&inner.apps).get(app_id).cloned();
    let Some(entry) = entry.filter(|e| e.container().as_deref() == Some(id)) else {
        if matches!(action, "die" | "destroy") && attrs.contains_key(LABEL_WARM) {
            super::warm::on_died(inner, app_id, id);
        }
        return;
    };
    match action {
        "oom" => entry.oom.store(true, Ordering::SeqCst),
        "die" | "destroy" => {
            let hint = attrs.get("exitCode").and_then(|c| c.parse().ok());
            let (inner, id) = (Arc::clone(inner), id.to_string());
            inner
                .tasks
                .clone()
                .spawn(async move { finalize(&inner, &entry, &id, hint).await });
        }
        _ => {}
    }
}

/// After the event stream was interrupted: every tracked container that stopped meanwhile
/// is finalized.
pub(super) async fn reconcile(inner: &Arc<Inner>) {
    let live: Vec<Arc<Entry>> = lock(&inner.apps)
        .values()
        .filter(|e| matches!(*e.state.borrow(), AppState::Running { .. }))
        .cloned()
        .collect();
    let timeout = inner.settings.engine_timeout;
    for entry in live {
        let Some(id) = entry.container() else {
            continue;
        };
        let running = match engine::inspect(&inner.docker, timeout, &id).await {
            Ok(c) => c.and_then(|c| c.state).and_then(|s| s.running) == Some(true),
            Err(_) => true, // the engine is not answering yet; its events will tell
        };
        if !running {
            finalize(inner, &entry, &id, None).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_flag_means_oom_killed_only_when_the_main_process_was_killed() {
        // The main process died of the kill (SIGKILL through docker-init): the app's OOM.
        assert_eq!(
            exit_state(false, true, Some(137)),
            (AppState::OomKilled, None)
        );
        // No exit code to tell: the flag is all there is.
        assert_eq!(exit_state(false, true, None), (AppState::OomKilled, None));
        // A child was OOM-killed and the app went on to exit by itself (cgroup v1 flags the
        // whole container): its real exit, and a note that keeps the OOM kill.
        assert_eq!(
            exit_state(false, true, Some(0)),
            (AppState::Exited { code: 0 }, Some(OTHER_PROCESS_OOM))
        );
        assert_eq!(
            exit_state(false, true, Some(1)),
            (AppState::Exited { code: 1 }, Some(OTHER_PROCESS_OOM))
        );
        // Killed by another signal (SIGTERM through init): not the OOM killer's SIGKILL.
        assert_eq!(
            exit_state(false, true, Some(143)),
            (AppState::Exited { code: 143 }, Some(OTHER_PROCESS_OOM))
        );
        // No OOM flag: the exit as it is, 137 included (a SIGKILL from someone else).
        assert_eq!(
            exit_state(false, false, Some(0)),
            (AppState::Exited { code: 0 }, None)
        );
        assert_eq!(
            exit_state(false, false, Some(137)),
            (AppState::Exited { code: 137 }, None)
        );
        assert_eq!(
            exit_state(false, false, None),
            (AppState::Exited { code: -1 }, None)
        );
        // A requested stop is a stop, whatever the exit code; an OOM kill is still noted.
        assert_eq!(
            exit_state(true, false, Some(143)),
            (AppState::Stopped, None)
        );
        assert_eq!(
            exit_state(true, true, Some(137)),
            (AppState::Stopped, Some(STOPPED_OOM))
        );
    }
}
