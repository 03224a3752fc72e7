//! A scriptable, recording fake backend, so the supervision logic (restarts, backoff,
//! maximum lifetime, adoption) can be tested without processes or containers. Compiled for
//! tests and with the `test-support` feature only: it never ships in the daemon.
//!
//! Each launch follows the next [`Script`] queued for its app (by default it starts and runs
//! until stopped); `launch`, `stop`, `adopt` and `discard` calls are recorded with the
//! (tokio) time they were made, so a test under `start_paused` time can check delays
//! exactly. [`FakeSandbox::set_state`] drives any app into any state, as if it had
//! exited or been OOM-killed.

use super::{AppState, Found, Isolation, LaunchSpec, Launched, Sandbox, SandboxError, SandboxKind};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Fake pids handed out by launches start here.
pub const FIRST_FAKE_PID: u32 = 10_000;

/// How one launch of an app goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Starts and runs until stopped (what an unscripted launch does).
    Runs,
    /// Starts, then ends by itself `after` the start, in `state` (`Exited { code }`,
    /// `OomKilled`, ...), unless it was stopped first.
    EndsAfter {
        /// How long the run lasts.
        after: Duration,
        /// How it ends.
        state: AppState,
    },
    /// Does not start: the launch fails with `SandboxError::Backend(reason)` and the app's
    /// state becomes `Failed`.
    Fails(String),
}

/// One recorded `launch` call.
#[derive(Debug, Clone)]
pub struct LaunchCall {
    /// What was asked for.
    pub spec: LaunchSpec,
    /// When (tokio time: paused in tests).
    pub at: Instant,
}

/// One recorded `stop` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCall {
    /// The app asked to stop.
    pub app_id: String,
    /// The grace period it was given.
    pub grace: Duration,
    /// When (tokio time: paused in tests).
    pub at: Instant,
}

/// The scriptable, recording fake. A launch of an app that is live fails with
/// `AlreadyRunning`; a stop of a live app succeeds with `Stopped`.
#[derive(Debug)]
pub struct FakeSandbox {
    kind: SandboxKind,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    launches: Vec<LaunchCall>,
    stops: Vec<StopCall>,
    adopted: Vec<Found>,
    discarded: Vec<String>,
    scripts: HashMap<String, VecDeque<Script>>,
    leftovers: Vec<(Found, AppState)>,
    states: HashMap<String, watch::Sender<AppState>>,
    containers: HashMap<String, String>,
    /// Launches that started, for pids, container ids and telling runs apart.
    started: u32,
    /// Which start an app's current run is (a scripted end applies to its own run only).
    run_of: HashMap<String, u32>,
}

impl Inner {
    fn current(&self, app_id: &str) -> Option<AppState> {
        self.states.get(app_id).map(|tx| tx.borrow().clone())
    }

    fn set(&mut self, app_id: &str, state: AppState) {
        match self.states.get(app_id) {
            Some(tx) => {
                tx.send_replace(state);
            }
            None => {
                self.states
                    .insert(app_id.to_owned(), watch::Sender::new(state));
            }
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeSandbox {
    /// A fake with no apps and nothing recorded, claiming to be the `kind` backend. As
    /// `Docker` it hands each run a container id (`fake-container-N`), as `Direct` none.
    pub fn new(kind: SandboxKind) -> FakeSandbox {
        FakeSandbox {
            kind,
            inner: Arc::default(),
        }
    }

    /// Queues how the next unscripted launch of `app_id` goes (scripts are used in order).
    pub fn script(&self, app_id: &str, script: Script) {
        self.lock()
            .scripts
            .entry(app_id.to_owned())
            .or_default()
            .push_back(script);
    }

    /// Adds a run the next [`Sandbox::leftovers`] reports; adopting it puts the app in
    /// `state` (running, or how it ended while the daemon was down).
    pub fn leave(&self, found: Found, state: AppState) {
        self.lock().leftovers.push((found, state));
    }

    /// Every `launch` call so far, in order, including ones that failed.
    pub fn launches(&self) -> Vec<LaunchCall> {
        self.lock().launches.clone()
    }

    /// Every `stop` call so far, in order, including ones that failed.
    pub fn stops(&self) -> Vec<StopCall> {
        self.lock().stops.clone()
    }

    /// Every leftover adopted so far, in order.
    pub fn adopted(&self) -> Vec<Found> {
        self.lock().adopted.clone()
    }

    /// The container ids of every leftover discarded so far, in order.
    pub fn discarded(&self) -> Vec<String> {
        self.lock().discarded.clone()
    }

    /// Puts `app_id` into `state` (as if the app exited, was OOM-killed, ...), creating it if
    /// it was never launched. Wakes subscribers.
    pub fn set_state(&self, app_id: &str, state: AppState) {
        self.lock().set(app_id, state);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn launch_now(&self, spec: &LaunchSpec) -> Result<Launched, SandboxError> {
        let mut inner = self.lock();
        inner.launches.push(LaunchCall {
            spec: spec.clone(),
            at: Instant::now(),
        });
        if inner.current(&spec.app_id).is_some_and(|s| s.is_live()) {
            return Err(SandboxError::AlreadyRunning(spec.app_id.clone()));
        }
        let script = inner
            .scripts
            .get_mut(&spec.app_id)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Script::Runs);
        if let Script::Fails(reason) = script {
            let error = SandboxError::Backend(reason);
            let state = AppState::Failed {
                reason: error.to_string(),
            };
            inner.set(&spec.app_id, state);
            return Err(error);
        }
        let run = inner.started;
        inner.started += 1;
        inner.run_of.insert(spec.app_id.clone(), run);
        let container = (self.kind == SandboxKind::Docker).then(|| format!("fake-container-{run}"));
        match &container {
            Some(id) => inner.containers.insert(spec.app_id.clone(), id.clone()),
            None => inner.containers.remove(&spec.app_id),
        };
        let state = AppState::Running {
            pid: Some(FIRST_FAKE_PID + run),
        };
        inner.set(&spec.app_id, state.clone());
        if let Script::EndsAfter { after, state } = script {
            let shared = Arc::clone(&self.inner);
            let app_id = spec.app_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut inner = lock(&shared);
                let same_run = inner.run_of.get(&app_id) == Some(&run);
                if same_run && inner.current(&app_id).is_some_and(|s| s.is_live()) {
                    inner.set(&app_id, state);
                }
            });
        }
        Ok(Launched {
            isolation: container.as_ref().map(|_| Isolation::Container),
            state,
            container,
            warnings: Vec::new(),
        })
    }

    fn stop_now(&self, app_id: &str, grace: Duration) -> Result<AppState, SandboxError> {
        let mut inner = self.lock();
        inner.stops.push(StopCall {
            app_id: app_id.to_owned(),
            grace,
            at: Instant::now(),
        });
        if !inner.current(app_id).is_some_and(|s| s.is_live()) {
            return Err(SandboxError::NotRunning(app_id.to_owned()));
        }
        inner.set(app_id, AppState::Stopped);
        Ok(AppState::Stopped)
    }

    fn adopt_now(&self, spec: &LaunchSpec, found: &Found) -> Result<AppState, SandboxError> {
        let mut inner = self.lock();
        let state = inner
            .leftovers
            .iter()
            .find(|(f, _)| f.container_id == found.container_id)
            .map(|(_, state)| state.clone())
            .ok_or_else(|| SandboxError::Backend(format!("no leftover {}", found.container_id)))?;
        inner.adopted.push(found.clone());
        inner
            .containers
            .insert(spec.app_id.clone(), found.container_id.clone());
        inner.run_of.remove(&spec.app_id);
        inner.set(&spec.app_id, state.clone());
        Ok(state)
    }
}

impl Sandbox for FakeSandbox {
    fn kind(&self) -> SandboxKind {
        self.kind
    }

    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Launched, SandboxError>> {
        async move { self.launch_now(spec) }.boxed()
    }

    fn stop<'a>(
        &'a self,
        app_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        async move { self.stop_now(app_id, grace) }.boxed()
    }

    fn subscribe(&self, app_id: &str) -> Option<watch::Receiver<AppState>> {
        self.lock().states.get(app_id).map(watch::Sender::subscribe)
    }

    fn container(&self, app_id: &str) -> Option<String> {
        self.lock().containers.get(app_id).cloned()
    }

    /// A fake container runs under the tier its launch resolved (`Auto` resolves to the
    /// container tier: the fake offers no other).
    fn isolation(&self, app_id: &str) -> Option<Isolation> {
        self.lock()
            .containers
            .contains_key(app_id)
            .then_some(Isolation::Container)
    }

    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<Found>, SandboxError>> {
        let found = self
            .lock()
            .leftovers
            .iter()
            .map(|(f, _)| f.clone())
            .collect();
        futures::future::ready(Ok(found)).boxed()
    }

    fn adopt<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        found: &'a Found,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        async move { self.adopt_now(spec, found) }.boxed()
    }

    fn discard<'a>(&'a self, found: &'a Found) -> BoxFuture<'a, Result<(), SandboxError>> {
        self.lock().discarded.push(found.container_id.clone());
        futures::future::ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::ResourceLimits;
    use std::path::PathBuf;

    fn spec(app_id: &str) -> LaunchSpec {
        LaunchSpec {
            app_id: app_id.into(),
            app_name: "demo".into(),
            app_dir: PathBuf::from("/apps/demo"),
            binary: "demo".into(),
            args: Vec::new(),
            interpreter: None,
            socket_dir: PathBuf::from("/run/fold/demo"),
            credentials_file: "credentials.json".into(),
            uid: 200_001,
            gid: 200_001,
            limits: ResourceLimits::default(),
            image: "alpine:latest".into(),
            pull: crate::sandbox::PullPolicy::Missing,
            isolation: crate::sandbox::IsolationRequest::Auto,
            network: None,
            log_path: PathBuf::from("/var/log/demo.log"),
            log_cap: 1 << 20,
            capture: None,
            legacy_token: None,
            labels: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn records_calls_and_drives_states() {
        let fake = FakeSandbox::new(SandboxKind::Docker);
        assert_eq!(fake.kind(), SandboxKind::Docker);
        let a = spec("a");
        let first = fake.launch(&a).await.unwrap();
        assert_eq!(first.state, AppState::Running { pid: Some(10_000) });
        assert_eq!(first.container.as_deref(), Some("fake-container-0"));
        assert!(matches!(
            fake.launch(&a).await,
            Err(SandboxError::AlreadyRunning(_))
        ));
        assert_eq!(fake.launches().len(), 2);
        assert_eq!(fake.launches()[0].spec.app_id, "a");

        let waiter = fake.wait("a");
        fake.set_state("a", AppState::OomKilled);
        assert_eq!(waiter.await, Some(AppState::OomKilled));
        assert_eq!(fake.state("a"), Some(AppState::OomKilled));
        assert!(matches!(
            fake.stop("a", Duration::ZERO).await,
            Err(SandboxError::NotRunning(_))
        ));

        let second = fake.launch(&a).await.unwrap();
        assert_eq!(second.state, AppState::Running { pid: Some(10_001) });
        assert_eq!(fake.container("a").as_deref(), Some("fake-container-1"));
        let grace = Duration::from_secs(5);
        assert_eq!(fake.stop("a", grace).await.unwrap(), AppState::Stopped);
        let calls = fake.stops();
        assert_eq!((calls[1].app_id.as_str(), calls[1].grace), ("a", grace));
        assert_eq!(fake.wait("a").await, Some(AppState::Stopped));
        assert_eq!(fake.wait("never").await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn scripts_are_followed_in_order() {
        let fake = FakeSandbox::new(SandboxKind::Direct);
        let b = spec("b");
        fake.script("b", Script::Fails("engine down".into()));
        let exit = AppState::Exited { code: 3 };
        fake.script(
            "b",
            Script::EndsAfter {
                after: Duration::from_secs(2),
                state: exit.clone(),
            },
        );
        let err = fake.launch(&b).await.unwrap_err();
        assert_eq!(err.to_string(), "engine down");
        assert_eq!(
            fake.state("b"),
            Some(AppState::Failed {
                reason: "engine down".into()
            })
        );
        let started = Instant::now();
        let launched = fake.launch(&b).await.unwrap();
        assert_eq!(launched.container, None, "a direct fake has no containers");
        assert_eq!(fake.wait("b").await, Some(exit));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Unscripted: runs until stopped.
        fake.launch(&b).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(fake.state("b").is_some_and(|s| s.is_live()));
        assert_eq!(fake.launches().len(), 3);
    }
}
