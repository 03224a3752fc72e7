//! Warm pools: containers prepared ahead of a launch, each created and started with
//! exactly the app's container (its hardening, mounts, limits and tier: [`warm_body`]) but
//! with the holder in front of the app's binary, blocked on a stdin only the daemon's
//! attach holds. A launch whose own container would be identical takes one and sends the
//! holder the launch's arguments; the holder `execve`s the app, and the pool refills in the
//! background. A prepared container is used once: a taken one is the app's run from then
//! on and is removed when it ends, like any other.
//!
//! Across a daemon restart: a taken container has a record (`<warm_dir>/runs/<id>.json`,
//! the launch's labels and arguments, which its own labels could not carry) and is adopted
//! with it; a prepared one has none and is removed (its holder saw its stdin close with the
//! old daemon and has exited).

use super::super::holder;
use super::super::{Isolation, LaunchSpec, SandboxError, WarmPool, MAX_WARM};
use super::lifecycle::{create_started, plan, pull, remove, short};
use super::spec::{container_name, warm_body};
use super::{lock, Inner};
use crate::fsutil::{self, Access};
use bollard::container::AttachContainerResults;
use bollard::models::ContainerCreateBody;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// One app's pool.
#[derive(Debug)]
pub(super) struct Pool {
    /// How many prepared containers the app keeps.
    target: usize,
    /// Whether a taken container is replaced (not for a pool meant for one launch).
    refill: bool,
    /// What its containers are prepared from: the app's launch defaults.
    spec: LaunchSpec,
    /// The tier they run under, and its runtime.
    tier: (Isolation, Option<String>),
    /// The create request of every container in the pool (without a storage limit, which
    /// is the daemon's and the same for all); a launch takes one only if its own is equal.
    body: ContainerCreateBody,
    /// Prepared containers, oldest first.
    ready: VecDeque<Prepared>,
    /// Preparations under way.
    preparing: usize,
    /// Bumped when `body` changes: a preparation of an older one is removed on arrival.
    generation: u64,
    /// Why the last preparation failed, or a prepared container died, until one succeeds.
    problem: Option<String>,
}

/// A prepared container: running, its holder waiting for the word.
pub(super) struct Prepared {
    /// Its id.
    pub id: String,
    /// Its init's host pid.
    pub pid: Option<u32>,
    /// Its output, and the stdin its holder reads the word from.
    pub attached: AttachContainerResults,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// What a taken container needs at adoption that its labels, set before any launch, could
/// not say.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TakenRecord {
    /// The launch's labels (`LaunchSpec::labels`).
    labels: HashMap<String, String>,
    /// The launch's arguments.
    args: Vec<String>,
}

/// The holder's path on the host, written on first use.
fn holder_path(inner: &Inner) -> Result<&Path, SandboxError> {
    inner
        .holder
        .get_or_init(|| holder::install(&inner.settings.warm_dir))
        .as_deref()
        .map_err(|e| SandboxError::Backend(e.clone()))
}

/// The body every container of the app's pool has, for `spec` under `tier`.
fn pool_body(
    inner: &Inner,
    spec: &LaunchSpec,
    tier: &(Isolation, Option<String>),
) -> Result<ContainerCreateBody, SandboxError> {
    let none = HashMap::new();
    warm_body(&plan(inner, spec, &none, tier, None), holder_path(inner)?)
}

/// Keeps `target` prepared containers for the app `spec` describes (its launch defaults):
/// prepares what is missing, and removes prepared containers that no longer match its
/// container (its image, limits, tier or binary changed) or are beyond the target. 0
/// removes the pool. With `refill`, a taken container is replaced; without, the pool
/// serves `target` launches and then stays empty.
///
/// # Errors
///
/// Above [`MAX_WARM`], no holder in this build, the tier is not offered, or the spec asks
/// for what no container may have.
pub(super) async fn keep(
    inner: &Arc<Inner>,
    spec: &LaunchSpec,
    (target, replace): (usize, bool),
) -> Result<(), SandboxError> {
    if target == 0 {
        let pool = lock(&inner.pools).remove(&spec.app_id);
        discard_all(inner, pool.map(|p| p.ready).unwrap_or_default());
        return Ok(());
    }
    if target > MAX_WARM {
        return Err(SandboxError::Backend(format!(
            "app {} asks for {target} prepared containers; at most {MAX_WARM}",
            spec.app_name
        )));
    }
    let tier = super::lifecycle::resolve(inner, spec).await?;
    let body = pool_body(inner, spec, &tier)?;
    let app_id = spec.app_id.clone();
    let mut spec = spec.clone();
    spec.args.clear();
    spec.interpreter = None;
    spec.capture = None;
    spec.labels.clear();
    spec.legacy_token = None;
    let stale = {
        let mut pools = lock(&inner.pools);
        let pool = pools.entry(spec.app_id.clone()).or_insert_with(|| Pool {
            target,
            refill: replace,
            spec: spec.clone(),
            tier: tier.clone(),
            body: body.clone(),
            ready: VecDeque::new(),
            preparing: 0,
            generation: 0,
            problem: None,
        });
        let mut stale = VecDeque::new();
        if pool.body != body {
            pool.generation += 1;
            pool.body = body;
            pool.tier = tier;
            stale = std::mem::take(&mut pool.ready);
        }
        pool.spec = spec;
        pool.target = target;
        pool.refill = replace;
        while pool.ready.len() > target {
            stale.extend(pool.ready.pop_back());
        }
        stale
    };
    discard_all(inner, stale);
    refill(inner, &app_id);
    Ok(())
}

/// Starts preparations until the pool has its target ready or under way.
fn refill(inner: &Arc<Inner>, app_id: &str) {
    if inner.shutdown.is_cancelled() {
        return;
    }
    let jobs: Vec<_> = {
        let mut pools = lock(&inner.pools);
        let Some(pool) = pools.get_mut(app_id) else {
            return;
        };
        let missing = pool
            .target
            .saturating_sub(pool.ready.len() + pool.preparing);
        pool.preparing += missing;
        (0..missing)
            .map(|_| (pool.spec.clone(), pool.tier.clone(), pool.generation))
            .collect()
    };
    for (spec, tier, generation) in jobs {
        let task = Arc::clone(inner);
        inner.tasks.spawn(async move {
            let prepared = prepare(&task, &spec, &tier).await;
            settle(&task, &spec.app_id, generation, prepared).await;
        });
    }
}

/// Creates and starts one prepared container.
async fn prepare(
    inner: &Arc<Inner>,
    spec: &LaunchSpec,
    tier: &(Isolation, Option<String>),
) -> Result<Prepared, SandboxError> {
    pull(inner, spec, None).await?;
    let holder = holder_path(inner)?;
    let none = HashMap::new();
    let body = |storage| warm_body(&plan(inner, spec, &none, tier, storage), holder);
    let name = format!(
        "{}_warm_{:08x}",
        container_name(&spec.app_id),
        rand::random::<u32>()
    );
    let started = create_started(inner, spec, &name, (&body, true), |_| {}).await?;
    tracing::debug!(app = %spec.app_name, container = %short(&started.id), "container prepared");
    Ok(Prepared {
        id: started.id,
        pid: started.pid,
        attached: started.attached,
    })
}

/// Puts a finished preparation in its pool, or removes the container when the pool no
/// longer wants it (removed, changed, full, or the daemon is stopping).
async fn settle(
    inner: &Arc<Inner>,
    app_id: &str,
    generation: u64,
    prepared: Result<Prepared, SandboxError>,
) {
    let unwanted = {
        let mut pools = lock(&inner.pools);
        match pools.get_mut(app_id) {
            Some(pool) => {
                pool.preparing = pool.preparing.saturating_sub(1);
                match prepared {
                    Ok(p)
                        if pool.generation == generation
                            && pool.ready.len() < pool.target
                            && !inner.shutdown.is_cancelled() =>
                    {
                        pool.problem = None;
                        pool.ready.push_back(p);
                        None
                    }
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(app = %pool.spec.app_name, "cannot prepare a warm container: {e}");
                        pool.problem = Some(format!("cannot prepare a container: {e}"));
                        None
                    }
                }
            }
            None => prepared.ok(),
        }
    };
    if let Some(p) = unwanted {
        discard(inner, p).await;
    }
}

/// Takes a prepared container for a launch of `spec` under `tier`, if the pool has one
/// whose container is exactly the one the launch would create; the pool refills.
pub(super) fn take(
    inner: &Arc<Inner>,
    spec: &LaunchSpec,
    tier: &(Isolation, Option<String>),
) -> Option<Prepared> {
    let args = super::spec::command(spec).1;
    if !lock(&inner.pools).contains_key(&spec.app_id) || holder::word(&args).is_err() {
        return None;
    }
    let body = pool_body(inner, spec, tier).ok()?;
    let taken = {
        let mut pools = lock(&inner.pools);
        let pool = pools.get_mut(&spec.app_id)?;
        if pool.body != body {
            return None;
        }
        let taken = pool.ready.pop_front();
        if !pool.refill && taken.is_some() {
            pool.target = pool.target.saturating_sub(1);
        }
        taken
    };
    refill(inner, &spec.app_id);
    taken
}

/// Sends a taken container's holder the launch's arguments and lets go of its stdin (the
/// engine then closes it: `stdin_once`); records the launch for adoption. The output stays
/// attached for the log.
///
/// # Errors
///
/// The word could not be sent in time (the caller removes the container).
pub(super) async fn give_word(
    inner: &Inner,
    id: &str,
    input: &mut std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    spec: &LaunchSpec,
) -> Result<(), SandboxError> {
    let word = holder::word(&super::spec::command(spec).1).map_err(SandboxError::Backend)?;
    let sent = tokio::time::timeout(inner.settings.engine_timeout, async {
        input.write_all(&word).await?;
        input.shutdown().await
    });
    match sent.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(SandboxError::Backend(format!(
                "cannot start the app in prepared container {}: {e}",
                short(id)
            )))
        }
        Err(_) => {
            return Err(SandboxError::Backend(format!(
                "the prepared container {} did not take its arguments in {} s",
                short(id),
                inner.settings.engine_timeout.as_secs()
            )))
        }
    }
    let record = TakenRecord {
        labels: spec.labels.clone(),
        args: spec.args.clone(),
    };
    if let Err(e) = write_record(inner, id, &record) {
        // The run goes on; a restarted daemon would then remove it rather than adopt it.
        tracing::warn!(container = %short(id), "cannot record a warm start for adoption: {e}");
    }
    Ok(())
}

fn runs_dir(inner: &Inner) -> PathBuf {
    inner.settings.warm_dir.join("runs")
}

/// A record's file name: the engine's hex id, nothing else.
fn record_name(id: &str) -> Option<String> {
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{id}.json"))
}

fn write_record(inner: &Inner, id: &str, record: &TakenRecord) -> std::io::Result<()> {
    let name = record_name(id).ok_or_else(|| std::io::Error::other("not a container id"))?;
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    fsutil::private_dir(&runs_dir(inner), 0o700)?.write_file(&name, &bytes, Access::private(0o600))
}

/// The record of taken container `id`, if it has one.
fn read_record(inner: &Inner, id: &str) -> Option<TakenRecord> {
    let name = record_name(id)?;
    let dir = fsutil::Dir::open(&runs_dir(inner)).ok()?;
    let bytes = dir.read_file(&name, 1 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Forgets the record of container `id` (it ended, or was removed).
pub(super) fn forget_record(inner: &Inner, id: &str) {
    if let (Some(name), Ok(dir)) = (record_name(id), fsutil::Dir::open(&runs_dir(inner))) {
        let _ = dir.remove(&name);
    }
}

/// At adoption: a warm container with a record is a taken one, to adopt with the record's
/// labels and arguments (returned); one without is a prepared leftover and is removed.
pub(super) async fn sort_leftover(
    inner: &Inner,
    id: &str,
    labels: &mut HashMap<String, String>,
) -> Option<Vec<String>> {
    if let Some(record) = read_record(inner, id) {
        labels.extend(record.labels);
        return Some(record.args);
    }
    tracing::info!(container = %short(id), "removing a prepared container of an earlier run");
    if let Err(e) = remove(inner, id).await {
        tracing::warn!(container = %short(id), "cannot remove a prepared container: {e}");
    }
    None
}

/// Removes records whose containers are gone (`live`: the ids of this daemon's containers).
pub(super) fn prune_records(inner: &Inner, live: &[String]) {
    let Ok(dir) = fsutil::Dir::open(&runs_dir(inner)) else {
        return;
    };
    for name in dir.names().unwrap_or_default() {
        let id = name.strip_suffix(".json").unwrap_or(&name);
        if !live.iter().any(|l| l == id) {
            let _ = dir.remove(&name);
        }
    }
}

/// A prepared container of the app died (not a taken one): it leaves the pool, which is
/// not refilled until the next launch or change (a container that dies while it waits
/// says something is wrong; preparing again at once could loop).
pub(super) fn on_died(inner: &Arc<Inner>, app_id: &str, id: &str) {
    let gone = {
        let mut pools = lock(&inner.pools);
        let Some(pool) = pools.get_mut(app_id) else {
            return;
        };
        let Some(at) = pool.ready.iter().position(|p| p.id == id) else {
            return;
        };
        pool.problem = Some(format!(
            "prepared container {} died while waiting",
            short(id)
        ));
        pool.ready.remove(at)
    };
    if let Some(prepared) = gone {
        tracing::warn!(app_id, container = %short(id), "a prepared container died while waiting");
        discard_all(inner, VecDeque::from([prepared]));
    }
}

/// The app's pool as `app ps` shows it.
pub(super) fn status(inner: &Inner, app_id: &str) -> Option<WarmPool> {
    lock(&inner.pools).get(app_id).map(|pool| WarmPool {
        ready: pool.ready.len(),
        target: pool.target,
        problem: pool.problem.clone(),
        containers: pool.ready.iter().map(|p| p.id.clone()).collect(),
    })
}

/// Removes every prepared container (daemon shutdown); the pools stay empty.
pub(super) async fn drain(inner: &Arc<Inner>) {
    let all: Vec<Prepared> = lock(&inner.pools)
        .values_mut()
        .flat_map(|pool| {
            pool.target = 0;
            std::mem::take(&mut pool.ready)
        })
        .collect();
    futures::future::join_all(all.into_iter().map(|p| discard(inner, p))).await;
}

fn discard_all(inner: &Arc<Inner>, prepared: VecDeque<Prepared>) {
    for p in prepared {
        let task = Arc::clone(inner);
        inner.tasks.spawn(async move { discard(&task, p).await });
    }
}

async fn discard(inner: &Inner, prepared: Prepared) {
    let id = prepared.id.clone();
    // Closing its stdin lets the holder end by itself; the removal kills it in any case.
    drop(prepared);
    if let Err(e) = remove(inner, &id).await {
        tracing::warn!(container = %short(&id), "cannot remove a prepared container: {e}");
    }
}
