//! The gVisor tier against a real engine with `runsc` registered: who may use a gVisor
//! app's socket, how `auto` and a missing runtime resolve, and that a failed gVisor start
//! leaves nothing running; and the hardening test and the hostile-app suite, run under
//! gVisor as they run under runc.
//!
//! Every test is `#[ignore = "needs a Docker engine with gVisor"]` and starts with
//! [`fold_testkit::need_gvisor`].

use super::{call, launch, ps_row, setup, steps, wait_for_text, DockerDaemon, Env, TIMEOUT};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, LogsOptionsBuilder,
};
use fold_client::admin::protocol::{InstallResponse, RestartMode};
use fold_client::sandbox::{Isolation, IsolationRequest};
use futures::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const GVISOR: Option<IsolationRequest> = Some(IsolationRequest::Exactly(Isolation::Gvisor));

/// The same app, the same checks, under gVisor: the tier changes the kernel the app talks
/// to, and nothing else.
#[ignore = "needs a Docker engine with gVisor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_queries_through_the_mounted_socket_and_is_hardened() {
    fold_testkit::need_gvisor();
    super::hardening::hardened_app_queries_through_the_mounted_socket(
        Isolation::Gvisor,
        super::Start::Cold,
    )
    .await;
}

/// A warm start under gVisor: the holder runs in the sentry and becomes the app there.
#[ignore = "needs a Docker engine with gVisor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_started_app_is_hardened_exactly_like_a_cold_one() {
    fold_testkit::need_gvisor();
    super::hardening::hardened_app_queries_through_the_mounted_socket(
        Isolation::Gvisor,
        super::Start::Warm,
    )
    .await;
}

/// The hostile app beside its neighbour, both under gVisor: every attempt fails as under
/// runc, and the neighbour keeps being served.
#[ignore = "needs a Docker engine with gVisor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_app_is_contained_and_its_neighbour_keeps_being_served() {
    fold_testkit::need_gvisor();
    crate::hostile::hostile_app_is_contained_beside_its_neighbour(
        Isolation::Gvisor,
        crate::docker::Start::Cold,
    )
    .await;
}

/// The audit's lines, parsed.
async fn audit(d: &DockerDaemon) -> Vec<Value> {
    d.shared.audit.flush().await;
    std::fs::read_to_string(d.config.audit_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count(lines: &[Value], app_id: &str, pick: impl Fn(&Value) -> bool) -> usize {
    lines
        .iter()
        .filter(|l| l["app_id"] == app_id && pick(l))
        .count()
}

/// Runs the test app's `query` in a container the test starts itself, not the daemon:
/// under `runtime`, as the app's uid, with the app's own `/app` and socket directory
/// mounted exactly as the daemon mounts them. Returns its exit code and output.
async fn foreign_query(
    d: &DockerDaemon,
    env: &Env,
    view: &InstallResponse,
    runtime: &str,
) -> (i64, String) {
    let docker = fold_testkit::connect_docker().await.unwrap();
    let app_id = &view.app.id;
    let bind = |source: String, target: &str| Mount {
        source: Some(source),
        target: Some(target.into()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(env.image.clone()),
        entrypoint: Some(vec!["/app/test_app".into()]),
        cmd: Some(vec!["query".into()]),
        user: Some(format!("{}:{}", view.app.uid, view.app.gid)),
        env: Some(vec![
            format!("FOLD_CLIENT_APP_ID={app_id}"),
            "FOLD_CLIENT_SOCKET_DIR=/tmp/fold_client_sockets".into(),
            "FOLD_CLIENT_CREDENTIALS=/tmp/fold_client_sockets/credentials.json".into(),
        ]),
        host_config: Some(HostConfig {
            runtime: Some(runtime.into()),
            network_mode: Some("none".into()),
            mounts: Some(vec![
                bind(d.shared.app_dir(app_id).display().to_string(), "/app"),
                bind(
                    d.shared.socket_dir(app_id).display().to_string(),
                    "/tmp/fold_client_sockets",
                ),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("fold_it_foreign_{runtime}_{}", std::process::id());
    let _ = fold_testkit::remove_container_if_exists(&docker, &name).await;
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let id = docker
        .create_container(Some(options), body)
        .await
        .unwrap()
        .id;
    docker.start_container(&id, None).await.unwrap();
    let mut waits = docker.wait_container(&id, None);
    let code = match tokio::time::timeout(TIMEOUT, waits.next()).await {
        Ok(Some(Ok(status))) => status.status_code,
        // A non-zero exit comes back as an error carrying the code.
        Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
        other => panic!("waiting for {name}: {other:?}"),
    };
    let logs = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .build();
    let output: Vec<String> = docker
        .logs(&id, Some(logs))
        .map(|chunk| chunk.map(|c| c.to_string()).unwrap_or_default())
        .collect()
        .await;
    fold_testkit::remove_container_if_exists(&docker, &id)
        .await
        .unwrap();
    (code, output.concat())
}

/// The peer of a gVisor app's socket must be that app's own sandbox: a host process with
/// the app's uid and credentials, a runc container and another gVisor sandbox (each with
/// the app's socket directory and credentials mounted, as the app's uid) are all refused,
/// and each refusal is audited; the app itself goes on being served.
#[ignore = "needs a Docker engine with gVisor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_own_sandbox_may_use_a_gvisor_apps_socket() {
    fold_testkit::need_gvisor();
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = d.install_as("walled", &env, Some("64m"), GVISOR).await;
    let app_id = view.app.id.clone();
    d.admin(launch(
        "walled",
        &["query", "sleep", "120"],
        RestartMode::Never,
        None,
    ))
    .await
    .unwrap();
    let text = wait_for_text(&view.app.log, "\"step\":\"query\"", TIMEOUT).await;
    assert_eq!(steps(&text, "query")[0]["ok"], true, "{text}");
    let served = |l: &Value| l["verdict"] == "allow";
    let rejected = |l: &Value| l["event"] == "peer_rejected";
    let before = audit(&d).await;
    let allowed_before = count(&before, &app_id, served);
    assert!(allowed_before > 0, "the gVisor app itself is served");

    let mut host = super::hardening::host_client(&d, &env, &view);
    let out = host.output().unwrap();
    assert!(!out.status.success(), "a host process was served: {out:?}");

    for runtime in ["runc", fold_testkit::GVISOR_RUNTIME] {
        let (code, output) = foreign_query(&d, &env, &view, runtime).await;
        assert_ne!(code, 0, "a {runtime} container was served: {output}");
    }

    let after = audit(&d).await;
    assert_eq!(
        count(&after, &app_id, served),
        allowed_before,
        "nothing but the app's own sandbox was served"
    );
    assert!(
        count(&after, &app_id, rejected) >= count(&before, &app_id, rejected) + 3,
        "each of the three foreign peers was audited as rejected: {after:?}"
    );
    d.stop().await;
}

/// `auto` takes the strongest tier the engine offers and says which; an app that asks for
/// gVisor where the runtime is missing is never run weaker: its launch fails, naming how to
/// register the runtime.
#[ignore = "needs a Docker engine with gVisor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_takes_the_strongest_tier_and_a_missing_runtime_is_an_error_naming_the_fix() {
    fold_testkit::need_gvisor();
    let env = setup();
    let d = DockerDaemon::start("").await;
    d.install_as("auto", &env, Some("64m"), Some(IsolationRequest::Auto))
        .await;
    let r = d
        .admin(launch("auto", &["sleep", "30"], RestartMode::Never, None))
        .await
        .unwrap();
    assert_eq!(r.isolation, Some(Isolation::Gvisor));
    let row = ps_row(&d.config.admin_socket, "auto").await.unwrap();
    assert_eq!(row.isolation, Some(Isolation::Gvisor));
    d.stop().await;

    // A daemon told to find gVisor under a name the engine does not have.
    let d = DockerDaemon::start("[container]\ngvisor_runtime = \"fold-no-such-runtime\"\n").await;
    d.install_as("strict", &env, Some("64m"), GVISOR).await;
    d.install_as("flexible", &env, Some("64m"), Some(IsolationRequest::Auto))
        .await;
    let err = d
        .admin(launch("strict", &["sleep", "30"], RestartMode::Never, None))
        .await
        .unwrap_err();
    for part in [
        "strict",
        "gvisor",
        "fold-no-such-runtime",
        "daemon.json",
        "kill -HUP",
    ] {
        assert!(err.contains(part), "{part:?} missing in {err}");
    }
    assert!(
        super::containers_of(&d.config.daemon_label)
            .await
            .is_empty(),
        "nothing was started for the refused launch"
    );
    let r = d
        .admin(launch(
            "flexible",
            &["sleep", "30"],
            RestartMode::Never,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(
        r.isolation,
        Some(Isolation::Container),
        "auto falls back, and says so"
    );
    let rows = call(
        &d.config.admin_socket,
        fold_client::admin::protocol::PsRequest {},
    )
    .await
    .unwrap();
    let strict = rows.apps.iter().find(|r| r.name == "strict").unwrap();
    assert_ne!(strict.state, "running");
    d.stop().await;
}

/// A daemon killed with SIGKILL and started again adopts its running gVisor app: the tier
/// is read back from the container's label, and the gVisor peer rule, rebuilt from the
/// engine's sandbox pid, goes on admitting the app's sandbox (and only it).
#[ignore = "needs a Docker engine with gVisor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_adopts_a_gvisor_app_which_goes_on_being_served() {
    use super::adoption::{allowed, wait_admin, ChildPlace};
    fold_testkit::need_gvisor();
    let env = setup();
    let place = ChildPlace::new("gvisor-adopt", 460_000);
    let (config, socket) = (&place.config, place.config.admin_socket.clone());

    let mut first = place.spawn();
    wait_admin(&socket).await;
    let mut install = super::install_request("steady", &env.app, &env.image, None);
    install.isolation = GVISOR;
    let view = call(&socket, install).await.unwrap();
    let app_id = view.app.id.clone();
    let r = call(
        &socket,
        launch("steady", &["serve", "200"], RestartMode::Never, None),
    )
    .await
    .unwrap();
    let id = r.container.clone().unwrap();
    wait_for_text(&view.app.log, "\"n\":2,\"ok\":true", TIMEOUT).await;
    first.signal(nix::sys::signal::Signal::SIGKILL);
    let before = allowed(&config.audit_path(), &app_id);

    let _second = place.spawn();
    wait_admin(&socket).await;
    let row = ps_row(&socket, "steady").await.expect("adopted app listed");
    assert_eq!(row.state, "running", "{row:?}");
    assert_eq!(row.container.as_deref(), Some(&id[..12]));
    assert_eq!(row.isolation, Some(Isolation::Gvisor), "{row:?}");
    let start = std::time::Instant::now();
    while allowed(&config.audit_path(), &app_id) < before + 4 {
        assert!(
            start.elapsed() < TIMEOUT,
            "the adopted gVisor app is not served:\n{}",
            std::fs::read_to_string(&place.daemon_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Processes on the host whose cgroup names container `id`, or that are its shim.
fn left_behind(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if fold_client::sandbox::cgroup_names(&cgroup, id)
            || (cmdline.contains("containerd-shim") && cmdline.contains(id))
        {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// A gVisor start that fails (here: a runtime registered as `runsc-broken`, whose last
/// `--network=sandbox` argument wins and makes runsc refuse a container without network,
/// after it started its sandbox and gofer) leaves
/// no sandbox, gofer or shim running: runsc leaves them when its start fails, and the
/// daemon reaps them after the engine removed the container.
#[ignore = "needs a Docker engine with gVisor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gvisor_start_leaves_no_process_behind() {
    fold_testkit::need_gvisor();
    let env = setup();
    let docker = fold_testkit::connect_docker().await.unwrap();
    let info = docker.info().await.unwrap();
    assert!(
        info.runtimes
            .is_some_and(|r| r.contains_key(fold_testkit::GVISOR_BROKEN_RUNTIME)),
        "this test needs the runtime {:?} registered as .ci/run registers it",
        fold_testkit::GVISOR_BROKEN_RUNTIME
    );
    let d = DockerDaemon::start(&format!(
        "[container]\ngvisor_runtime = \"{}\"\n",
        fold_testkit::GVISOR_BROKEN_RUNTIME
    ))
    .await;
    d.install_as("doomed", &env, Some("64m"), GVISOR).await;
    // The engine's events name the container the daemon created, which is gone after.
    let label = format!("io.foldclient.daemon={}", d.config.daemon_label);
    let options = EventsOptionsBuilder::default()
        .filters(&HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["create"]),
            ("label", vec![label.as_str()]),
        ]))
        .build();
    let mut events = docker.events(Some(options));
    // Polled from now on: the stream sends its request only when first polled.
    let created =
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(120), events.next()).await },
        );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = d
        .admin(launch("doomed", &["sleep", "30"], RestartMode::Never, None))
        .await
        .unwrap_err();
    assert!(
        err.contains("network enabled"),
        "runsc's own reason is shown: {err}"
    );
    let created = created
        .await
        .unwrap()
        .expect("a create event")
        .unwrap()
        .unwrap();
    let ids = vec![created.actor.and_then(|a| a.id).unwrap()];
    for id in ids {
        let left = left_behind(&id);
        assert!(left.is_empty(), "container {id} left processes: {left:?}");
    }
    d.stop().await;
}

/// Names under which `.ci/run` registers gVisor, read by the tests above.
#[test]
fn the_ci_script_registers_both_runtimes_the_tests_use() {
    let ci = std::fs::read_to_string(fold_testkit::workspace_root().join(".ci/run")).unwrap();
    for runtime in [
        fold_testkit::GVISOR_RUNTIME,
        fold_testkit::GVISOR_BROKEN_RUNTIME,
    ] {
        assert!(
            ci.contains(&format!("\"{runtime}\"")),
            "{runtime} not in .ci/run"
        );
    }
}
