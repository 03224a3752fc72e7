//! The daemon on Podman (rootful), through Podman's Docker-compatible API: the hardening
//! test as on Docker, `doctor` naming the engine and what it lacks, and a gVisor app refused
//! rather than run weaker (Podman's API ignores the container's OCI runtime).
//!
//! Every test is `#[ignore = "needs Podman's Docker API"]`, starts with
//! [`fold_testkit::need_podman`], and runs only with `DOCKER_HOST` pointing at
//! `podman system service` (`scripts/test.sh` does that when `FOLD_PODMAN_HOST` is set, as
//! in CI; the Docker run skips this module).

use super::adoption::{check_named, doctor};
use super::{launch, setup, DockerDaemon};
use fold_client::admin::protocol::RestartMode;
use fold_client::sandbox::{Isolation, IsolationRequest};

#[ignore = "needs Podman's Docker API"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_queries_through_the_mounted_socket_and_is_hardened() {
    fold_testkit::need_podman();
    super::hardening::hardened_app_queries_through_the_mounted_socket(
        Isolation::Container,
        super::Start::Cold,
    )
    .await;
}

/// A warm start on Podman: the holder waits on the stdin Podman's attach holds, and becomes
/// the app in a container hardened exactly as a cold one.
#[ignore = "needs Podman's Docker API"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_started_app_is_hardened_exactly_like_a_cold_one() {
    fold_testkit::need_podman();
    super::hardening::hardened_app_queries_through_the_mounted_socket(
        Isolation::Container,
        super::Start::Warm,
    )
    .await;
}

#[ignore = "needs Podman's Docker API"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_podman_and_why_it_offers_no_gvisor() {
    fold_testkit::need_podman();
    let _env = setup();
    let d = DockerDaemon::start("").await;
    let (checks, code) = doctor(&d).await;
    let engine = check_named(&checks, "engine");
    assert_eq!(engine["status"], "ok", "{engine}");
    let init = check_named(&checks, "init");
    assert_eq!(init["status"], "ok", "catatonit answers init: true: {init}");
    let isolation = check_named(&checks, "isolation");
    let detail = isolation["detail"].as_str().unwrap();
    assert!(
        detail.contains("podman offers isolation container"),
        "{isolation}"
    );
    assert!(detail.contains("Docker only"), "{isolation}");
    assert_eq!(
        isolation["status"], "warn",
        "the default tier still runs: {isolation}"
    );
    assert_eq!(code, Some(0), "{checks}");
    d.stop().await;
}

#[ignore = "needs Podman's Docker API"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gvisor_app_is_refused_not_run_weaker() {
    fold_testkit::need_podman();
    let env = setup();
    let d = DockerDaemon::start("").await;
    let gvisor = Some(IsolationRequest::Exactly(Isolation::Gvisor));
    d.install_as("walled", &env, Some("64m"), gvisor).await;
    let err = d
        .admin(launch("walled", &["sleep", "30"], RestartMode::Never, None))
        .await
        .unwrap_err();
    assert!(
        err.contains("walled") && err.contains("Docker only"),
        "{err}"
    );
    assert!(super::containers_of(&d.config.daemon_label)
        .await
        .is_empty());
    d.admin(launch("walled", &["sleep", "1"], RestartMode::Never, None))
        .await
        .unwrap_err();
    d.stop().await;
}
