//! Warm starts: an app installed with `--warm N` keeps N prepared containers (its exact
//! container, the holder in front of its binary); a launch takes one, answers its first
//! request and is hardened like a cold start; a prepared container is used once; the pool
//! refills; only the container the app runs in may use its socket; a daemon restart adopts
//! a taken container and removes the prepared ones.

use super::{containers_of, inspect, launch, ps_row, setup, steps, wait_for_text, DockerDaemon};
use super::{Env, TIMEOUT};
use fold_client::admin::protocol::{InstallResponse, RestartMode, StopRequest, WarmRequest};
use std::path::Path;
use std::time::{Duration, Instant};

/// Installs the test app as `name` keeping `warm` prepared containers, and waits until they
/// are ready.
pub async fn install_warm(d: &DockerDaemon, name: &str, env: &Env, warm: u32) -> InstallResponse {
    let mut request = super::install_request(name, &env.app, &env.image, Some("64m"));
    request.warm = Some(warm);
    let view = d.admin(request).await.unwrap();
    assert!(view.warnings.is_empty(), "{:?}", view.warnings);
    assert_eq!(view.app.warm, warm);
    wait_ready(d, name, warm as usize).await;
    view
}

/// Waits until `name`'s pool has `ready` prepared containers; returns their ids.
pub async fn wait_ready(d: &DockerDaemon, name: &str, ready: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let row = ps_row(&d.config.admin_socket, name).await;
        let warm = row.as_ref().and_then(|r| r.warm.clone());
        if warm.as_ref().is_some_and(|w| w.ready == ready) {
            return prepared_of(d).await;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "pool of {name} not at {ready} ready: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the daemon's containers still waiting in a pool (their holder has not been
/// given a word: the container's stdin is still open).
async fn prepared_of(d: &DockerDaemon) -> Vec<String> {
    let mut prepared = Vec::new();
    for id in containers_of(&d.config.daemon_label).await {
        let Some(c) = inspect(&id).await else { continue };
        let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
        if labels.contains_key("io.foldclient.warm") && running && !is_taken(&c) {
            prepared.push(id);
        }
    }
    prepared.sort();
    prepared
}

/// Whether the container's first process is no longer the holder (it has exec'd the app).
fn is_taken(c: &bollard::models::ContainerInspectResponse) -> bool {
    let Some(pid) = c.state.as_ref().and_then(|s| s.pid).filter(|p| *p > 0) else {
        return false;
    };
    // docker-init is the container's pid 1; its child is the holder, or the app.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default();
    children.split_whitespace().any(|child| {
        std::fs::read_link(format!("/proc/{child}/exe"))
            .is_ok_and(|exe| !exe.to_string_lossy().ends_with(".fold_holder"))
    })
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_launch_answers_at_once_takes_a_prepared_container_once_and_the_pool_refills() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = install_warm(&d, "warmy", &env, 2).await;
    let log = view.app.log.clone();
    let prepared = prepared_of(&d).await;
    assert_eq!(prepared.len(), 2, "two prepared containers");
    // Idle prepared containers cost no CPU: the holder is blocked on its stdin.
    for id in &prepared {
        let c = inspect(id).await.unwrap();
        let pid = c.state.unwrap().pid.unwrap();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        let holder = children.split_whitespace().next().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{holder}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next().unwrap();
        assert_eq!(state, "S", "the holder sleeps: {stat}");
        let row = ps_row(&d.config.admin_socket, "warmy").await.unwrap();
        assert_eq!(row.state, "warm");
    }

    let started = Instant::now();
    let r = d
        .admin(launch("warmy", &["query", "sleep", "60"], RestartMode::Never, None))
        .await
        .unwrap();
    let first = r.container.clone().unwrap();
    assert!(prepared.contains(&first), "took a prepared container: {first} of {prepared:?}");
    let text = wait_for_text(&log, "\"step\":\"query\"", TIMEOUT).await;
    let answered = started.elapsed();
    assert_eq!(steps(&text, "query")[0]["ok"], true, "{text}");
    assert!(text.contains("in prepared container"), "{text}");
    eprintln!("warm launch to first answer: {answered:?}");

    // The pool refills with a new container; the taken one is the app's alone.
    let refilled = wait_ready(&d, "warmy", 2).await;
    assert!(!refilled.contains(&first), "{refilled:?}");
    let row = ps_row(&d.config.admin_socket, "warmy").await.unwrap();
    assert_eq!(row.state, "running");
    assert_eq!(row.container.as_deref(), Some(&first[..12]));

    // After a stop the container is gone, and the next launch takes another one.
    d.admin(StopRequest {
        app: "warmy".into(),
        grace: Some(Duration::from_secs(1)),
    })
    .await
    .unwrap();
    assert!(inspect(&first).await.is_none(), "a used container is removed");
    let r = d
        .admin(launch("warmy", &["query"], RestartMode::Never, None))
        .await
        .unwrap();
    let second = r.container.unwrap();
    assert_ne!(second, first, "a prepared container is never used twice");
    assert!(refilled.contains(&second));
    d.stop().await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_follows_its_count_and_leaves_nothing_when_the_app_goes() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    install_warm(&d, "counted", &env, 1).await;
    let view = d
        .admin(WarmRequest {
            app: "counted".into(),
            count: 3,
        })
        .await
        .unwrap();
    assert_eq!(view.warm, 3);
    assert_eq!(wait_ready(&d, "counted", 3).await.len(), 3);
    d.admin(WarmRequest {
        app: "counted".into(),
        count: 0,
    })
    .await
    .unwrap();
    wait_gone(&d.config.daemon_label, 0).await;
    d.admin(WarmRequest {
        app: "counted".into(),
        count: 2,
    })
    .await
    .unwrap();
    wait_ready(&d, "counted", 2).await;
    d.admin(fold_client::admin::protocol::RemoveRequest {
        app: "counted".into(),
    })
    .await
    .unwrap();
    wait_gone(&d.config.daemon_label, 0).await;
    d.stop().await;
}

/// Waits until the label has `left` containers.
async fn wait_gone(label: &str, left: usize) {
    let start = Instant::now();
    loop {
        let now = containers_of(label).await;
        if now.len() == left {
            return;
        }
        assert!(start.elapsed() < TIMEOUT, "containers left: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[allow(dead_code)]
fn _unused(_: &Path) {}
