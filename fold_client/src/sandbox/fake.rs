//! A recording fake backend, so the daemon's supervision logic can be tested without
//! processes or containers.
//!
//! Every `launch` and `stop` call is recorded; a test can make the next launch fail and can
//! drive any app into any state with [`FakeSandbox::set_state`], which also wakes `wait`.

use super::{AppState, LaunchSpec, Sandbox, SandboxError, SandboxKind};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// Fake pids handed out by launches start here.
pub const FIRST_FAKE_PID: u32 = 10_000;

/// One recorded `stop` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCall {
    /// The app asked to stop.
    pub app_id: String,
    /// The grace period it was given.
    pub grace: Duration,
}

/// The recording fake. A launch of an app that is not live succeeds with
/// `Running { pid: Some(..) }`; a stop of a live app succeeds with `Stopped`.
#[derive(Debug, Default)]
pub struct FakeSandbox {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    launches: Vec<LaunchSpec>,
    stops: Vec<StopCall>,
    fail_next: Option<SandboxError>,
    states: HashMap<String, watch::Sender<AppState>>,
    pids_used: u32,
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

impl FakeSandbox {
    /// A fake with no apps and nothing recorded.
    pub fn new() -> FakeSandbox {
        FakeSandbox::default()
    }

    /// Every `launch` call so far, in order, including ones that failed.
    pub fn launches(&self) -> Vec<LaunchSpec> {
        self.lock().launches.clone()
    }

    /// Every `stop` call so far, in order, including ones that failed.
    pub fn stops(&self) -> Vec<StopCall> {
        self.lock().stops.clone()
    }

    /// Makes the next `launch` (of any app) fail with `error`; the app's state becomes
    /// `Failed`. Only one failure is queued: a second call replaces the first.
    pub fn fail_next_launch(&self, error: SandboxError) {
        self.lock().fail_next = Some(error);
    }

    /// Puts `app_id` into `state` (as if the app exited, was OOM-killed, ...), creating it if
    /// it was never launched. Wakes `wait` callers when the state is not live.
    pub fn set_state(&self, app_id: &str, state: AppState) {
        self.lock().set(app_id, state);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn launch_now(&self, spec: &LaunchSpec) -> Result<AppState, SandboxError> {
        let mut inner = self.lock();
        inner.launches.push(spec.clone());
        if let Some(error) = inner.fail_next.take() {
            inner.set(
                &spec.app_id,
                AppState::Failed {
                    reason: error.to_string(),
                },
            );
            return Err(error);
        }
        if inner.current(&spec.app_id).is_some_and(|s| s.is_live()) {
            return Err(SandboxError::AlreadyRunning(spec.app_id.clone()));
        }
        let pid = FIRST_FAKE_PID + inner.pids_used;
        inner.pids_used += 1;
        let state = AppState::Running { pid: Some(pid) };
        inner.set(&spec.app_id, state.clone());
        Ok(state)
    }

    fn stop_now(&self, app_id: &str, grace: Duration) -> Result<AppState, SandboxError> {
        let mut inner = self.lock();
        inner.stops.push(StopCall {
            app_id: app_id.to_owned(),
            grace,
        });
        if !inner.current(app_id).is_some_and(|s| s.is_live()) {
            return Err(SandboxError::NotRunning(app_id.to_owned()));
        }
        inner.set(app_id, AppState::Stopped);
        Ok(AppState::Stopped)
    }
}

impl Sandbox for FakeSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Fake
    }

    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        async move { self.launch_now(spec) }.boxed()
    }

    fn stop<'a>(
        &'a self,
        app_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<AppState, SandboxError>> {
        async move { self.stop_now(app_id, grace) }.boxed()
    }

    fn state(&self, app_id: &str) -> Option<AppState> {
        self.lock().current(app_id)
    }

    fn wait<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, Option<AppState>> {
        let rx = self.lock().states.get(app_id).map(watch::Sender::subscribe);
        async move {
            let mut rx = rx?;
            let state = rx.wait_for(|s| !s.is_live()).await.ok()?.clone();
            Some(state)
        }
        .boxed()
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
            socket_dir: PathBuf::from("/run/fold/demo"),
            credentials_file: "credentials.json".into(),
            uid: 200_001,
            gid: 200_001,
            limits: ResourceLimits::default(),
            image: "alpine:latest".into(),
            network: None,
            log_path: PathBuf::from("/var/log/demo.log"),
            log_cap: 1 << 20,
            legacy_token: None,
        }
    }

    #[tokio::test]
    async fn records_calls_and_drives_states() {
        let fake = FakeSandbox::new();
        assert_eq!(fake.kind(), SandboxKind::Fake);
        let a = spec("a");
        assert_eq!(
            fake.launch(&a).await.unwrap(),
            AppState::Running { pid: Some(10_000) }
        );
        assert!(matches!(
            fake.launch(&a).await,
            Err(SandboxError::AlreadyRunning(_))
        ));
        assert_eq!(fake.launches().len(), 2);
        assert_eq!(fake.launches()[0].app_id, "a");

        let waiter = fake.wait("a");
        fake.set_state("a", AppState::OomKilled);
        assert_eq!(waiter.await, Some(AppState::OomKilled));
        assert_eq!(fake.state("a"), Some(AppState::OomKilled));
        assert!(matches!(
            fake.stop("a", Duration::ZERO).await,
            Err(SandboxError::NotRunning(_))
        ));

        assert_eq!(
            fake.launch(&a).await.unwrap(),
            AppState::Running { pid: Some(10_001) }
        );
        let grace = Duration::from_secs(5);
        assert_eq!(fake.stop("a", grace).await.unwrap(), AppState::Stopped);
        let calls = fake.stops();
        assert_eq!(
            calls[1],
            StopCall {
                app_id: "a".into(),
                grace
            }
        );
        assert_eq!(fake.wait("a").await, Some(AppState::Stopped));
        assert_eq!(fake.wait("never").await, None);
    }

    #[tokio::test]
    async fn injected_failure_hits_only_the_next_launch() {
        let fake = FakeSandbox::new();
        fake.fail_next_launch(SandboxError::Backend("engine down".into()));
        let err = fake.launch(&spec("b")).await.unwrap_err();
        assert_eq!(err.to_string(), "engine down");
        assert_eq!(
            fake.state("b"),
            Some(AppState::Failed {
                reason: "engine down".into()
            })
        );
        assert!(fake.launch(&spec("b")).await.is_ok());
        assert_eq!(fake.launches().len(), 2);
    }
}
