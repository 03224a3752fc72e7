//! Smoke tests against a real engine: the base image, and the static probe inside a
//! hardened container (non-root, no network, no capabilities, read-only root, limits).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use bollard::Docker;
use fold_testkit::probe::ProbeReport;
use futures::StreamExt;

const APP_UID: u32 = 200_001;
const MEMORY_BYTES: i64 = 64 * 1024 * 1024;
const PIDS: i64 = 32;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished container produced.
#[derive(Debug)]
struct Run {
    name: String,
    exit_code: i64,
    stdout: String,
    stderr: String,
}

fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "fold_testkit_{what}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `cmd` in a hardened container from `image`, with `probe` (if any) bind-mounted
/// read-only at `/app/fold_probe`, and removes the container whatever happens.
async fn run_hardened(
    docker: &Docker,
    image: &str,
    cmd: &[&str],
    probe: Option<&Path>,
) -> Result<Run> {
    let name = unique_name("smoke");
    let result = create_start_wait(docker, &name, image, cmd, probe).await;
    let removed = fold_testkit::remove_container_if_exists(docker, &name).await;
    let run = result?;
    removed?;
    Ok(run)
}

async fn create_start_wait(
    docker: &Docker,
    name: &str,
    image: &str,
    cmd: &[&str],
    probe: Option<&Path>,
) -> Result<Run> {
    let binds = probe.map(|path| vec![format!("{}:/app/fold_probe:ro", path.display())]);
    let host_config = HostConfig {
        network_mode: Some("none".to_owned()),
        cap_drop: Some(vec!["ALL".to_owned()]),
        readonly_rootfs: Some(true),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,noexec,nosuid,size=16m,uid={APP_UID},gid={APP_UID}"),
        )])),
        memory: Some(MEMORY_BYTES),
        memory_swap: Some(MEMORY_BYTES),
        pids_limit: Some(PIDS),
        binds,
        ..Default::default()
    };
    let config = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
        user: Some(format!("{APP_UID}:{APP_UID}")),
        labels: Some(HashMap::from([(
            "io.foldclient.testkit".to_owned(),
            "smoke".to_owned(),
        )])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    tokio::time::timeout(RUN_TIMEOUT, docker.create_container(Some(options), config))
        .await
        .map_err(|_| anyhow!("creating {name}: timed out"))?
        .with_context(|| format!("creating container {name}"))?;
    tokio::time::timeout(RUN_TIMEOUT, docker.start_container(name, None))
        .await
        .map_err(|_| anyhow!("starting {name}: timed out"))?
        .with_context(|| format!("starting container {name}"))?;

    let waited = tokio::time::timeout(RUN_TIMEOUT, docker.wait_container(name, None).next())
        .await
        .map_err(|_| anyhow!("container {name} still running after {RUN_TIMEOUT:?}"))?;
    let exit_code = match waited {
        Some(Ok(response)) => response.status_code,
        // bollard reports a non-zero exit as this error.
        Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => return Err(e).with_context(|| format!("waiting for {name}")),
        None => bail!("wait stream for {name} ended without a result"),
    };

    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = docker.logs(name, Some(options));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let collect = async {
        while let Some(chunk) = logs.next().await {
            match chunk.with_context(|| format!("reading logs of {name}"))? {
                LogOutput::StdOut { message } => {
                    stdout.push_str(&String::from_utf8_lossy(&message))
                }
                other => stderr.push_str(&other.to_string()),
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(RUN_TIMEOUT, collect)
        .await
        .map_err(|_| anyhow!("reading logs of {name}: timed out"))??;
    Ok(Run {
        name: name.to_owned(),
        exit_code,
        stdout,
        stderr,
    })
}

#[ignore = "needs a Docker engine"]
#[tokio::test]
async fn base_image_runs_busybox_as_non_root() -> Result<()> {
    fold_testkit::need_docker();
    let image = fold_testkit::ensure_base_image()?;
    // Idempotent: a second call finds the image and changes nothing.
    assert_eq!(fold_testkit::ensure_base_image()?, image);
    let docker = fold_testkit::connect_docker().await?;
    let run = run_hardened(
        &docker,
        &image,
        &["/bin/sh", "-c", "echo hello; id -u"],
        None,
    )
    .await?;
    println!(
        "base image: ran container {} from {image}: exit {} stdout {:?} stderr {:?}",
        run.name, run.exit_code, run.stdout, run.stderr
    );
    assert_eq!(run.exit_code, 0, "{run:?}");
    assert_eq!(run.stdout, format!("hello\n{APP_UID}\n"));
    Ok(())
}

#[ignore = "needs a Docker engine"]
#[tokio::test]
async fn probe_in_hardened_container_sees_the_controls() -> Result<()> {
    fold_testkit::need_docker();
    let image = fold_testkit::ensure_base_image()?;
    let probe = fold_testkit::build_static_binary("fold_testkit", "fold_probe")?;
    let docker = fold_testkit::connect_docker().await?;
    let run = run_hardened(&docker, &image, &["/app/fold_probe"], Some(&probe)).await?;
    println!(
        "docker smoke: ran container {} from {image} with {}: exit {}\n  output: {}  stderr: {:?}",
        run.name,
        probe.display(),
        run.exit_code,
        run.stdout,
        run.stderr
    );
    assert_eq!(run.exit_code, 0, "{run:?}");
    let report: ProbeReport = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("parsing probe output {:?}", run.stdout))?;

    assert_eq!(report.uid, APP_UID);
    assert_eq!(report.euid, APP_UID);
    assert_eq!(report.gid, APP_UID);
    assert!(!report.can_write_root, "root fs is writable: {report:?}");
    assert!(
        report.can_write_tmp,
        "tmpfs /tmp must be writable for the app uid: {report:?}"
    );
    assert_eq!(report.interfaces, vec!["lo".to_owned()]);
    assert_eq!(report.cap_eff, 0, "capabilities left: {report:?}");
    assert_eq!(report.cap_bnd, 0, "bounding set not empty: {report:?}");
    assert_eq!(report.no_new_privs, 1);
    // Limits are visible where the engine mounts the container's own cgroup.
    if let Some(limit) = report.memory_limit_bytes {
        assert_eq!(limit, u64::try_from(MEMORY_BYTES)?);
    }
    if let Some(limit) = report.pids_limit {
        assert_eq!(limit, u64::try_from(PIDS)?);
    }
    Ok(())
}
