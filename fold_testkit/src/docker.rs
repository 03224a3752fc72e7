//! Engine detection and connection.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use bollard::Docker;

use crate::util::block_on;

/// Name of the environment variable that says the Docker tests must run (CI): with it,
/// `scripts/test.sh` fails when no engine answers instead of leaving them ignored, and
/// tests with other host requirements fail instead of skipping.
pub const REQUIRE_DOCKER_ENV: &str = "FOLD_REQUIRE_DOCKER";

/// Deadline for one short engine request (version, ping, inspect, remove).
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(20);

const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// The engine address used by this crate: `DOCKER_HOST` when set and not empty, else the
/// default local socket.
pub fn docker_host() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.trim().is_empty() => host,
        _ => DEFAULT_DOCKER_HOST.to_owned(),
    }
}

/// Connects to the engine at [`docker_host`] and negotiates the API version.
///
/// Negotiation matters: bollard speaks a newer API version by default than Docker 20.10
/// (API 1.41) or Podman's compat API accept, and such engines reject every request that
/// carries a newer version.
pub async fn connect_docker() -> Result<Docker> {
    let host = docker_host();
    let docker = Docker::connect_with_host(&host)
        .with_context(|| format!("connecting to the Docker engine at {host}"))?;
    let docker = tokio::time::timeout(ENGINE_TIMEOUT, docker.negotiate_version())
        .await
        .map_err(|_| anyhow!("the Docker engine at {host} did not answer within 20 s"))?
        .with_context(|| format!("asking the Docker engine at {host} for its version"))?;
    tokio::time::timeout(ENGINE_TIMEOUT, docker.ping())
        .await
        .map_err(|_| anyhow!("the Docker engine at {host} did not answer a ping within 20 s"))?
        .with_context(|| format!("pinging the Docker engine at {host}"))?;
    Ok(docker)
}

/// Probes the engine once per process; the outcome is cached.
fn engine_status() -> &'static Result<(), String> {
    static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
    STATUS.get_or_init(|| {
        block_on(|| async {
            connect_docker().await?;
            Ok(())
        })
        .map_err(|e| format!("{e:#}"))
    })
}

/// Whether a Docker-compatible engine answers at [`docker_host`] (checked once per process).
pub fn docker_available() -> bool {
    engine_status().is_ok()
}

/// First call of a test that needs a real engine. Such tests are marked
/// `#[ignore = "needs a Docker engine"]`, so a plain `cargo test` reports them ignored
/// rather than passed, and `cargo test -- --include-ignored` (as `scripts/test.sh` does
/// when an engine answers) runs them; without an engine they fail here, with the reason.
///
/// # Panics
///
/// When no engine answers at [`docker_host`].
pub fn need_docker() {
    if let Err(reason) = engine_status() {
        panic!(
            "this test needs a Docker engine, and none answers at {}: {reason}",
            docker_host()
        );
    }
}

/// The OCI runtime name the gVisor tests expect the engine to have (`runsc`, as
/// `.ci/run` registers it and FoldClient's config defaults to).
pub const GVISOR_RUNTIME: &str = "runsc";

/// A gVisor runtime registered (by `.ci/run`) with arguments that pass FoldClient's check
/// but make every start fail after runsc has started its sandbox and gofer
/// (`--network=sandbox` after `--network=none`: the last wins, and runsc then refuses a
/// container without network: "cannot run with network enabled in root network
/// namespace"), which is the failure that left them running.
pub const GVISOR_BROKEN_RUNTIME: &str = "runsc-broken";

/// Whether the engine has the gVisor runtime registered (checked once per process).
pub fn gvisor_available() -> bool {
    static STATUS: OnceLock<bool> = OnceLock::new();
    *STATUS.get_or_init(|| {
        block_on(|| async {
            let docker = connect_docker().await?;
            let info = tokio::time::timeout(ENGINE_TIMEOUT, docker.info()).await??;
            Ok(info
                .runtimes
                .is_some_and(|r| r.contains_key(GVISOR_RUNTIME)))
        })
        .unwrap_or(false)
    })
}

/// Whether the engine at [`docker_host`] is Podman (its version names a Podman component;
/// checked once per process).
pub fn engine_is_podman() -> bool {
    static PODMAN: OnceLock<bool> = OnceLock::new();
    *PODMAN.get_or_init(|| {
        block_on(|| async {
            let docker = connect_docker().await?;
            let version = tokio::time::timeout(ENGINE_TIMEOUT, docker.version()).await??;
            Ok(version
                .components
                .unwrap_or_default()
                .iter()
                .any(|c| c.name.to_ascii_lowercase().contains("podman")))
        })
        .unwrap_or(false)
    })
}

/// First call of a test that needs Podman's Docker-compatible API (`DOCKER_HOST` pointing
/// at `podman system service`; `scripts/test.sh` runs them so when `FOLD_PODMAN_HOST` is
/// set).
///
/// # Panics
///
/// When no engine answers, or it is not Podman.
pub fn need_podman() {
    need_docker();
    assert!(
        engine_is_podman(),
        "this test needs DOCKER_HOST to point at Podman's API (`podman system service \
         --time=0 unix:///run/fold-ci-podman.sock`), not at {}",
        docker_host()
    );
}

/// First call of a test that needs gVisor. Such tests are marked
/// `#[ignore = "needs a Docker engine with gVisor"]`; `scripts/test.sh` runs them when the
/// engine has the `runsc` runtime (and says loudly when it skips them).
///
/// # Panics
///
/// When no engine answers, or it has no `runsc` runtime.
pub fn need_gvisor() {
    need_docker();
    assert!(
        gvisor_available(),
        "this test needs the engine at {} to have the OCI runtime {GVISOR_RUNTIME:?} \
         (gVisor): install runsc and register it in /etc/docker/daemon.json, as .ci/run does",
        docker_host()
    );
}

/// Force-removes a container (and its anonymous volumes); a container that is already gone
/// (404) or already being removed (409) counts as removed.
pub async fn remove_container_if_exists(docker: &Docker, name: &str) -> Result<()> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let result = tokio::time::timeout(ENGINE_TIMEOUT, docker.remove_container(name, Some(options)))
        .await
        .map_err(|_| anyhow!("removing container {name}: no answer within 20 s"))?;
    match result {
        Ok(())
        | Err(BollardError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing container {name}")),
    }
}
