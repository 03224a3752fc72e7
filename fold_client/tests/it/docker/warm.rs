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

/// Waits until `name`'s pool has `ready` prepared containers; returns their ids, as the
/// daemon's `app ps` names them.
pub async fn wait_ready(d: &DockerDaemon, name: &str, ready: usize) -> Vec<String> {
    wait_pool(&d.config.admin_socket, name, ready).await
}

/// [`wait_ready`] for the daemon at `socket`.
async fn wait_pool(socket: &Path, name: &str, ready: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let row = ps_row(socket, name).await;
        let warm = row.as_ref().and_then(|r| r.warm.clone());
        if let Some(warm) = warm.filter(|w| w.ready == ready) {
            return warm.containers;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "pool of {name} not at {ready} ready: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the daemon's containers whose first process is still the holder (not given
/// a word yet), as the host's /proc shows them (runc only).
async fn holders_of(d: &DockerDaemon) -> Vec<String> {
    let mut holding = Vec::new();
    for id in containers_of(&d.config.daemon_label).await {
        let Some(c) = inspect(&id).await else {
            continue;
        };
        if holder_pid(&c).is_some() {
            holding.push(id);
        }
    }
    holding.sort();
    holding
}

/// The host pid of the container's holder, while its first process is still the holder.
fn holder_pid(c: &bollard::models::ContainerInspectResponse) -> Option<String> {
    let pid = c.state.as_ref()?.pid.filter(|p| *p > 0)?;
    // docker-init is the container's pid 1; its child is the holder, or the app.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let child = children.split_whitespace().next()?.to_string();
    let exe = std::fs::read_link(format!("/proc/{child}/exe")).ok()?;
    exe.to_string_lossy()
        .ends_with(".fold_holder")
        .then_some(child)
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_launch_answers_at_once_takes_a_prepared_container_once_and_the_pool_refills() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = install_warm(&d, "warmy", &env, 2).await;
    let log = view.app.log.clone();
    let mut prepared = wait_ready(&d, "warmy", 2).await;
    prepared.sort();
    assert_eq!(
        holders_of(&d).await,
        prepared,
        "two prepared containers, holding"
    );
    // Idle prepared containers cost no CPU: the holder is blocked on its stdin.
    for id in &prepared {
        let c = inspect(id).await.unwrap();
        let holder = holder_pid(&c).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{holder}/stat")).unwrap();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert_eq!(state, "S", "the holder sleeps: {stat}");
        let row = ps_row(&d.config.admin_socket, "warmy").await.unwrap();
        assert_eq!(row.state, "warm");
    }

    let started = Instant::now();
    let r = d
        .admin(launch(
            "warmy",
            &["query", "sleep", "60"],
            RestartMode::Never,
            None,
        ))
        .await
        .unwrap();
    let first = r.container.clone().unwrap();
    assert!(
        prepared.contains(&first),
        "took a prepared container: {first} of {prepared:?}"
    );
    let text = wait_for_text(&log, "\"step\":\"query\"", TIMEOUT).await;
    let answered = started.elapsed();
    assert_eq!(steps(&text, "query")[0]["ok"], true, "{text}");
    assert!(text.contains("in prepared container"), "{text}");
    eprintln!("warm launch to first answer: {answered:?}");

    // The pool refills with a new container; the taken one is the app's alone.
    let refilled = wait_ready(&d, "warmy", 2).await;
    assert!(!refilled.contains(&first), "{refilled:?}");
    assert!(
        holder_pid(&inspect(&first).await.unwrap()).is_none(),
        "the app runs"
    );
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
    assert!(
        inspect(&first).await.is_none(),
        "a used container is removed"
    );
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

/// The attack: a process in a prepared container of the same app (its uid, its socket
/// directory mounted, its credentials readable) tries the app's socket while the app runs in
/// another container. Only the container the app runs in may connect.
#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_a_prepared_sibling_is_refused_while_the_app_runs_in_another() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = install_warm(&d, "sibling", &env, 2).await;
    let (uid, gid) = (view.app.uid, view.app.gid);
    let r = d
        .admin(launch(
            "sibling",
            &["query", "sleep", "60"],
            RestartMode::Never,
            None,
        ))
        .await
        .unwrap();
    let running = r.container.unwrap();
    let text = wait_for_text(&view.app.log, "\"step\":\"query\"", TIMEOUT).await;
    assert_eq!(steps(&text, "query")[0]["ok"], true, "{text}");
    let siblings = wait_ready(&d, "sibling", 2).await;
    let sibling = siblings.iter().find(|id| **id != running).unwrap();
    let user = format!("{uid}:{gid}");
    let (code, out) = super::exec_in(sibling, &user, &["/app/test_app", "query"]).await;
    assert_ne!(code, 0, "a prepared sibling was served: {out}");
    d.shared.audit.flush().await;
    let audit = std::fs::read_to_string(d.config.audit_path()).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("peer_rejected")
            && l.contains(&view.app.id)
            && l.contains(&running[..12])),
        "the sibling's connection is refused, naming the app's container: {audit}"
    );
    // The same probe from inside the app's own container is served.
    let (code, out) = super::exec_in(&running, &user, &["/app/test_app", "query"]).await;
    assert_eq!(code, 0, "{out}");
    d.stop().await;
}

/// A daemon killed with SIGKILL while a warm-started app runs and two containers wait: the
/// restarted daemon adopts the app's container with its launch's options (here: never
/// restart), removes the prepared ones (their holders saw stdin close and ended) and
/// prepares new ones.
#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_adopts_a_warm_started_app_and_replaces_the_prepared_containers() {
    use super::adoption::{allowed, wait_admin, ChildPlace};
    let env = setup();
    let place = ChildPlace::new("warmkill", 470_000);
    let (config, socket) = (&place.config, place.config.admin_socket.clone());
    let mut first = place.spawn();
    wait_admin(&socket).await;
    let mut request = super::install_request("kept", &env.app, &env.image, None);
    request.warm = Some(2);
    let view = super::call(&socket, request).await.unwrap();
    let app_id = view.app.id.clone();
    wait_pool(&socket, "kept", 2).await;
    let r = super::call(
        &socket,
        launch("kept", &["serve", "200"], RestartMode::Never, None),
    )
    .await
    .unwrap();
    let taken = r.container.unwrap();
    wait_for_text(&view.app.log, "\"n\":2,\"ok\":true", TIMEOUT).await;
    let old = wait_pool(&socket, "kept", 2).await;
    assert!(!old.contains(&taken));

    first.signal(nix::sys::signal::Signal::SIGKILL);
    let before = allowed(&config.audit_path(), &app_id);
    let _second = place.spawn();
    wait_admin(&socket).await;
    let row = ps_row(&socket, "kept").await.expect("adopted");
    assert_eq!(row.state, "running", "{row:?}");
    assert_eq!(row.container.as_deref(), Some(&taken[..12]));
    assert_eq!(row.note.as_deref(), Some("adopted after a daemon restart"));
    for id in &old {
        assert!(
            inspect(id).await.is_none(),
            "prepared {id} of the old daemon removed"
        );
    }
    let new = wait_pool(&socket, "kept", 2).await;
    assert!(
        new.iter().all(|id| !old.contains(id) && *id != taken),
        "{new:?}"
    );
    // The adopted app keeps being served.
    let start = Instant::now();
    while allowed(&config.audit_path(), &app_id) < before + 3 {
        assert!(start.elapsed() < TIMEOUT, "no requests after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its launch said never restart (recorded, as labels set before the launch cannot
    // say): killed, it stays down (the config's default would restart it).
    let docker = fold_testkit::connect_docker().await.unwrap();
    docker
        .kill_container(
            &taken,
            Some(
                bollard::query_parameters::KillContainerOptionsBuilder::default()
                    .signal("SIGKILL")
                    .build(),
            ),
        )
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let row = ps_row(&socket, "kept").await.unwrap();
        if row.state.starts_with("exited") {
            assert_eq!(row.restarts, 0, "{row:?}");
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "{row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = ps_row(&socket, "kept").await.unwrap();
    assert!(row.state.starts_with("exited"), "not restarted: {row:?}");
}

/// The job slots of `d` whose container is prepared: (slot name, container id).
async fn ready_slots(d: &DockerDaemon) -> Vec<(String, String)> {
    let rows = super::call(
        &d.config.admin_socket,
        fold_client::admin::protocol::PsRequest {},
    )
    .await
    .unwrap()
    .apps;
    rows.into_iter()
        .filter(|r| r.name.starts_with("job-"))
        .filter_map(|r| Some((r.name, r.warm?.containers.first()?.clone())))
        .collect()
}

async fn wait_slots(d: &DockerDaemon, count: usize) -> Vec<(String, String)> {
    let start = Instant::now();
    loop {
        let slots = ready_slots(d).await;
        if slots.len() == count {
            return slots;
        }
        assert!(start.elapsed() < TIMEOUT, "slots: {slots:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `script` (its text) as a one-off job with `flags`; returns the `--json` result.
async fn job(d: &DockerDaemon, name: &str, script: &str, flags: &[&str]) -> serde_json::Value {
    let path = d.dir.path().join(name);
    std::fs::write(&path, script).unwrap();
    let mut args = vec!["--json", "run", "--timeout", "60s"];
    args.extend_from_slice(flags);
    args.push(path.to_str().unwrap());
    let out = super::lifecycle::cli_async(d, &args).await;
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `warm_jobs = 2`: a one-off job with the defaults takes a prepared slot (its own file,
/// its own grants, hardened as any job), leaves nothing of it behind, and a new slot is
/// prepared; a job asking for other limits runs cold and leaves the slots alone.
#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_job_takes_a_prepared_slot_once_and_a_new_one_is_prepared() {
    let env = setup();
    let extra = format!("default_image = \"{}\"\nwarm_jobs = 2\n", env.image);
    let d = DockerDaemon::start(&extra).await;
    let slots = wait_slots(&d, 2).await;
    let whoami = "#!/bin/sh\necho \"first uid $(id -u) net $(ls /sys/class/net | tr '\\n' ' ')\"\ntouch /probe 2>/dev/null || echo read-only\n";
    let r = job(&d, "first.sh", whoami, &[]).await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let said = r["output"]["stdout"].as_str().unwrap();
    assert!(
        said.starts_with("first uid ") && !said.contains("uid 0 "),
        "{said}"
    );
    assert!(
        said.contains("net lo") && said.contains("read-only"),
        "{said}"
    );
    let used = r["container"].as_str().unwrap().to_string();
    let (slot_name, _) = slots
        .iter()
        .find(|(_, c)| *c == used)
        .unwrap_or_else(|| panic!("{used} is not a prepared slot: {slots:?}"))
        .clone();
    assert_eq!(r["name"], slot_name.as_str());
    assert!(
        inspect(&used).await.is_none(),
        "the used container is removed"
    );

    // The second job gets its own file in another slot, never the first one's.
    let r = job(&d, "second.sh", "#!/bin/sh\necho second\n", &[]).await;
    assert_eq!(r["output"]["stdout"], "second\n", "{r}");
    assert_ne!(r["container"].as_str().unwrap(), used);

    // Other limits: a cold job; the slots stay (refilled to 2, none of them used).
    let before = wait_slots(&d, 2).await;
    assert!(before.iter().all(|(name, _)| *name != slot_name));
    let r = job(
        &d,
        "cold.sh",
        "#!/bin/sh\necho cold\n",
        &["--memory", "32m"],
    )
    .await;
    assert_eq!(r["output"]["stdout"], "cold\n", "{r}");
    let cold = r["container"].as_str().unwrap();
    assert!(
        before.iter().all(|(_, c)| c != cold),
        "{cold} of {before:?}"
    );
    assert_eq!(ready_slots(&d).await, before);
    d.stop().await;
}
