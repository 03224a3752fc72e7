//! The supervision logic on the scriptable fake backend, under paused tokio time: restart
//! delays, giving up, the maximum lifetime, adoption and stop requests are checked to the
//! millisecond without processes, containers or real waiting.

use super::*;
use crate::config::{AppPaths, UidMode};
use crate::registry::{InstallSpec, Placement};
use crate::sandbox::fake::{FakeSandbox, Script};
use crate::sandbox::{Found, ResourceLimits};
use crate::supervisor::options::LABEL_RESTARTS;

const BASE: Duration = Duration::from_millis(500);

/// A supervisor over two fakes (a direct one and a container one) with one installed app.
struct Rig {
    supervisor: Arc<Supervisor>,
    direct: Arc<FakeSandbox>,
    container: Arc<FakeSandbox>,
    registry: Arc<Registry>,
    app: Arc<App>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

fn install(registry: &Registry, name: &str) -> Arc<App> {
    let spec = InstallSpec {
        name: name.into(),
        binary: "app".into(),
        grants: Vec::new(),
        auth_mode: AuthMode::Signed,
        placement: Placement::Container,
        isolation: crate::sandbox::IsolationRequest::Auto,
        image: None,
        network: None,
        limits: ResourceLimits::default(),
        node_limits: crate::app_limits::LimitSettings::default(),
        warm: 0,
    };
    registry.install(spec, now_ms()).unwrap().0
}

async fn rig(restart_backoff: Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ids = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let (registry, _) = Registry::open(&dir.path().join("registry"), UidMode::Daemon, ids).unwrap();
    let registry = Arc::new(registry);
    let app = install(&registry, "alpha");
    let rotation = crate::audit::Rotation {
        max_bytes: 1 << 20,
        keep: 1,
    };
    let (audit, _) = Audit::open(&dir.path().join("audit.jsonl"), rotation)
        .await
        .unwrap();
    let settings = SupervisorSettings {
        paths: AppPaths {
            socket_root: dir.path().join("sockets"),
            apps_dir: dir.path().join("apps"),
            logs_dir: dir.path().join("logs"),
        },
        default_image: "base:1".into(),
        pull: crate::sandbox::PullPolicy::Missing,
        log_cap: 1 << 20,
        restart: RestartPolicy::OnFailure { max_restarts: 3 },
        restart_backoff,
        stop_grace: Duration::from_secs(5),
    };
    let direct = Arc::new(FakeSandbox::new(SandboxKind::Direct));
    let container = Arc::new(FakeSandbox::new(SandboxKind::Docker));
    let shutdown = CancellationToken::new();
    let supervisor = Supervisor::new(
        settings,
        Backends {
            direct: Arc::clone(&direct) as Arc<dyn Sandbox>,
            container: Arc::clone(&container) as Arc<dyn Sandbox>,
        },
        Arc::clone(&registry),
        audit,
        TaskTracker::new(),
        shutdown.clone(),
    );
    Rig {
        supervisor,
        direct,
        container,
        registry,
        app,
        shutdown,
        _dir: dir,
    }
}

fn options(restart: RestartPolicy) -> LaunchOptions {
    LaunchOptions {
        direct: false,
        args: vec!["serve".into()],
        interpreter: None,
        image: None,
        restart,
        max_lifetime: None,
        capture: None,
    }
}

fn exits_after(secs: u64, code: i32) -> Script {
    Script::EndsAfter {
        after: Duration::from_secs(secs),
        state: AppState::Exited { code },
    }
}

/// Polls `done` every 10 ms of (paused) time, for at most 10 minutes of it.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..60_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn failed_runs_are_restarted_after_a_doubling_backoff() {
    let r = rig(BASE).await;
    for _ in 0..3 {
        r.container.script(&r.app.id, exits_after(1, 1));
    }
    let mut peer = r.supervisor.peer_rule(&r.app.id);
    assert_eq!(*peer.borrow_and_update(), PeerRule::Nobody);
    let outcome = r
        .supervisor
        .launch(
            &r.app,
            options(RestartPolicy::OnFailure { max_restarts: 5 }),
        )
        .await
        .unwrap();
    assert_eq!(outcome.kind, SandboxKind::Docker);
    assert_eq!(outcome.container.as_deref(), Some("fake-container-0"));
    assert_eq!(
        *peer.borrow_and_update(),
        PeerRule::Container {
            id: "fake-container-0".into(),
            init_pid: 10_000,
            isolation: crate::sandbox::Isolation::Container,
        }
    );

    eventually("the third restart runs", || {
        r.container.launches().len() == 4
            && r.supervisor.state(&r.app.id).map(|(_, s)| s)
                == Some(AppState::Running { pid: Some(10_003) })
    })
    .await;
    let launches = r.container.launches();
    let gaps: Vec<Duration> = launches.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Each run lasts 1 s; then 0.5 s, 1 s, 2 s of backoff.
    let want: Vec<Duration> = (0..3)
        .map(|n| Duration::from_secs(1) + backoff(BASE, n))
        .collect();
    assert_eq!(gaps, want);
    assert_eq!(
        want[1..],
        [Duration::from_secs(2), Duration::from_secs(3)],
        "the backoff doubles"
    );
    let counted: Vec<&str> = launches
        .iter()
        .map(|l| l.spec.labels[LABEL_RESTARTS].as_str())
        .collect();
    assert_eq!(
        counted,
        ["0", "1", "2", "3"],
        "each run records its restarts"
    );
    assert_eq!(
        launches[3].spec.args,
        ["serve"],
        "restarts reuse the options"
    );
    let status = r.supervisor.status(&r.app.id).unwrap();
    assert_eq!(status.restarts, 3);
    assert_eq!(status.container.as_deref(), Some("fake-container-3"));
    assert_eq!(
        *peer.borrow(),
        PeerRule::Container {
            id: "fake-container-3".into(),
            init_pid: 10_003,
            isolation: crate::sandbox::Isolation::Container,
        },
        "the peer rule follows the restarted container"
    );
    assert!(r.direct.launches().is_empty());
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn restarting_gives_up_after_max_restarts() {
    let r = rig(BASE).await;
    for _ in 0..5 {
        r.container.script(&r.app.id, exits_after(1, 7));
    }
    let started = Instant::now();
    r.supervisor
        .launch(
            &r.app,
            options(RestartPolicy::OnFailure { max_restarts: 2 }),
        )
        .await
        .unwrap();
    let ended = r.supervisor.wait(&r.app.id).await;
    assert_eq!(ended, Some(AppState::Exited { code: 7 }));
    // Three runs of 1 s, two backoffs (0.5 s, 1 s).
    assert_eq!(started.elapsed(), Duration::from_millis(4500));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        r.container.launches().len(),
        3,
        "no restart after giving up"
    );
    let status = r.supervisor.status(&r.app.id).unwrap();
    assert_eq!(status.note.as_deref(), Some("gave up after 2 restarts"));
    assert_eq!(status.restarts, 2);
    assert_eq!(
        *r.supervisor.peer_rule(&r.app.id).borrow(),
        PeerRule::Nobody
    );
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_clean_exit_or_the_never_policy_is_final() {
    let r = rig(BASE).await;
    r.container.script(&r.app.id, exits_after(1, 0));
    r.supervisor
        .launch(
            &r.app,
            options(RestartPolicy::OnFailure { max_restarts: 3 }),
        )
        .await
        .unwrap();
    assert_eq!(
        r.supervisor.wait(&r.app.id).await,
        Some(AppState::Exited { code: 0 })
    );
    r.container.script(&r.app.id, exits_after(1, 1));
    r.supervisor
        .launch(&r.app, options(RestartPolicy::Never))
        .await
        .unwrap();
    assert_eq!(
        r.supervisor.wait(&r.app.id).await,
        Some(AppState::Exited { code: 1 })
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(r.container.launches().len(), 2);
    assert_eq!(r.supervisor.status(&r.app.id).unwrap().note, None);
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_maximum_lifetime_kills_without_a_restart() {
    let r = rig(BASE).await;
    let mut opts = options(RestartPolicy::OnFailure { max_restarts: 3 });
    opts.max_lifetime = Some(Duration::from_secs(10));
    let started = Instant::now();
    r.supervisor.launch(&r.app, opts).await.unwrap();
    let deadline = r.container.launches()[0].spec.labels[options::LABEL_DEADLINE]
        .parse::<u64>()
        .unwrap();
    assert!(
        deadline >= now_ms() + 9_000,
        "the deadline is on the labels"
    );
    assert_eq!(r.supervisor.wait(&r.app.id).await, Some(AppState::Stopped));
    // The deadline is wall-clock time (it survives a daemon restart on the labels), so the
    // kill comes within a few (real) milliseconds of 10 s after the launch.
    let lived = started.elapsed();
    assert!(
        lived <= Duration::from_secs(10) && lived >= Duration::from_millis(9_900),
        "{lived:?}"
    );
    let stops = r.container.stops();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].grace, Duration::ZERO, "a hard kill");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(r.container.launches().len(), 1, "never restarted");
    let status = r.supervisor.status(&r.app.id).unwrap();
    assert_eq!(status.state, AppState::Stopped);
    assert_eq!(
        status.note.as_deref(),
        Some("killed: maximum lifetime exceeded")
    );
    assert_eq!(
        *r.supervisor.peer_rule(&r.app.id).borrow(),
        PeerRule::Nobody
    );
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_backoff_ends_the_restarts() {
    let r = rig(Duration::from_secs(10)).await;
    r.container.script(&r.app.id, exits_after(1, 1));
    r.supervisor
        .launch(
            &r.app,
            options(RestartPolicy::OnFailure { max_restarts: 3 }),
        )
        .await
        .unwrap();
    eventually("the app waits to be restarted", || {
        r.supervisor.state(&r.app.id).map(|(_, s)| s) == Some(AppState::Restarting)
    })
    .await;
    let asked = Instant::now();
    let grace = Duration::from_secs(5);
    let state = r.supervisor.stop(&r.app.id, grace).await.unwrap();
    assert_eq!(state, AppState::Stopped);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "not after the backoff"
    );
    assert_eq!(r.container.stops()[0].grace, grace);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(r.container.launches().len(), 1, "no restart after the stop");
    assert_eq!(
        r.supervisor.state(&r.app.id).map(|(_, s)| s),
        Some(AppState::Stopped)
    );
    assert!(matches!(
        r.supervisor.stop(&r.app.id, grace).await,
        Err(SandboxError::NotRunning(_))
    ));
    r.shutdown.cancel();
}

fn leftover(app_id: &str, container: &str, running: bool, restarts: u32) -> Found {
    let policy = options(RestartPolicy::OnFailure { max_restarts: 4 });
    Found {
        app_id: app_id.into(),
        container_id: container.into(),
        running,
        labels: policy.labels(restarts, None),
        args: vec!["serve".into()],
        image: "base:2".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_running_container_is_adopted_with_its_restart_count() {
    let r = rig(BASE).await;
    let running = AppState::Running { pid: Some(4242) };
    r.container
        .leave(leftover(&r.app.id, "c-running", true, 2), running.clone());
    r.container
        .leave(leftover("app_gone", "c-orphan", true, 0), running.clone());
    r.supervisor.adopt().await;
    assert_eq!(
        r.container.discarded(),
        ["c-orphan"],
        "an orphan is removed"
    );
    let adopted = r.container.adopted();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].container_id, "c-running");
    let status = r.supervisor.status(&r.app.id).unwrap();
    assert_eq!(
        (status.kind, status.state, status.restarts),
        (SandboxKind::Docker, running, 2)
    );
    assert_eq!(status.container.as_deref(), Some("c-running"));
    assert_eq!(
        status.note.as_deref(),
        Some("adopted after a daemon restart")
    );
    assert_eq!(
        *r.supervisor.peer_rule(&r.app.id).borrow(),
        PeerRule::Container {
            id: "c-running".into(),
            init_pid: 4242,
            isolation: crate::sandbox::Isolation::Container,
        }
    );
    assert!(matches!(
        r.supervisor
            .launch(&r.app, options(RestartPolicy::Never))
            .await,
        Err(SandboxError::AlreadyRunning(_))
    ));

    // It fails: its policy comes from its labels (on-failure, 4), its count goes on from 2.
    let failed = Instant::now();
    r.container
        .set_state(&r.app.id, AppState::Exited { code: 1 });
    eventually("the adopted app is restarted", || {
        r.container.launches().len() == 1
    })
    .await;
    let relaunch = &r.container.launches()[0];
    assert_eq!(relaunch.at - failed, backoff(BASE, 2));
    assert_eq!(relaunch.spec.labels[LABEL_RESTARTS], "3");
    assert_eq!(relaunch.spec.image, "base:2", "the image it ran");
    assert_eq!(relaunch.spec.args, ["serve"]);
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn ended_containers_are_adopted_and_restarted_as_their_policy_says() {
    let r = rig(BASE).await;
    let clean = install(&r.registry, "beta");
    r.container.leave(
        leftover(&r.app.id, "c-failed", false, 0),
        AppState::Exited { code: 3 },
    );
    r.container.leave(
        leftover(&clean.id, "c-clean", false, 0),
        AppState::Exited { code: 0 },
    );
    let adopted_at = Instant::now();
    r.supervisor.adopt().await;
    assert_eq!(r.container.adopted().len(), 2);
    assert_eq!(
        r.supervisor.wait(&clean.id).await,
        Some(AppState::Exited { code: 0 }),
        "a clean exit stays final"
    );
    eventually("the failed app is restarted", || {
        r.container.launches().len() == 1
    })
    .await;
    let relaunch = &r.container.launches()[0];
    assert_eq!(relaunch.spec.app_id, r.app.id);
    assert_eq!(relaunch.at - adopted_at, BASE);
    assert_eq!(relaunch.spec.labels[LABEL_RESTARTS], "1");
    assert_eq!(
        r.supervisor.state(&r.app.id).map(|(_, s)| s),
        Some(AppState::Running { pid: Some(10_000) })
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(r.container.launches().len(), 1, "only the failed one");
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn direct_launches_run_in_the_direct_backend_and_admit_no_container() {
    let r = rig(BASE).await;
    let mut opts = options(RestartPolicy::Never);
    opts.direct = true;
    let outcome = r.supervisor.launch(&r.app, opts).await.unwrap();
    assert_eq!(
        (outcome.kind, outcome.container),
        (SandboxKind::Direct, None)
    );
    assert_eq!(r.direct.launches().len(), 1);
    assert!(r.container.launches().is_empty());
    assert_eq!(
        *r.supervisor.peer_rule(&r.app.id).borrow(),
        PeerRule::Nobody
    );
    r.supervisor.stop_all(Duration::from_secs(1)).await;
    assert_eq!(
        r.supervisor.state(&r.app.id),
        Some((SandboxKind::Direct, AppState::Stopped))
    );
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_failed_launch_is_reported_and_not_watched() {
    let r = rig(BASE).await;
    r.container
        .script(&r.app.id, Script::Fails("engine refused".into()));
    let err = r
        .supervisor
        .launch(
            &r.app,
            options(RestartPolicy::OnFailure { max_restarts: 3 }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "engine refused");
    assert_eq!(
        r.supervisor.state(&r.app.id).map(|(_, s)| s),
        Some(AppState::Failed {
            reason: "engine refused".into()
        })
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        r.container.launches().len(),
        1,
        "no restart of a failed start"
    );
    assert_eq!(
        *r.supervisor.peer_rule(&r.app.id).borrow(),
        PeerRule::Nobody
    );
    r.shutdown.cancel();
}
