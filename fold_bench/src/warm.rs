//! Part 3, warm pools: what an idle prepared container costs the host, beside what a
//! running app's container costs, both measured in this run.
//!
//! Memory is the proportional set size (Pss, `/proc/<pid>/smaps_rollup`) of the engine's
//! processes (dockerd, containerd, the containerd shims) and of every process in a
//! container's cgroup (docker-init, the holder or the app), summed over the host before and
//! after; the daemon's share is this process's resident set (the daemon runs in it).

use crate::lifecycle::LaunchDaemon;
use crate::lifecycle::{cli, docker_run_command, wait_stopped, wait_warm};
use crate::report::{Row, Verdict};
use crate::rt::{admin_call, install};
use crate::stats::{num, ratio, Summary};
use anyhow::Result;
use fold_client::admin::protocol::{LaunchRequest, RestartMode, WarmRequest};
use std::path::Path;
use std::time::Duration;

/// Prepared containers (and running apps) measured at once.
const COUNT: usize = 8;

pub(crate) const MEMORY_ROW: &str = "3. memory per idle prepared container (8 at once): engine and container processes (Pss), and the daemon, vs per running app container (8 idle apps, started cold)";

/// Pss (KiB) of the engine's processes and of every process in a container cgroup.
fn engine_kib() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let engine =
            comm == "dockerd" || comm == "containerd" || comm.starts_with("containerd-shim");
        if engine || cgroup.contains("/docker/") || cgroup.contains("docker-") {
            total += crate::procfs::kib(&format!("/proc/{pid}/smaps_rollup"), "Pss").unwrap_or(0);
        }
    }
    total
}

/// (engine KiB, daemon KiB), after the engine has settled.
fn sample() -> (u64, u64) {
    std::thread::sleep(Duration::from_secs(2));
    let own = crate::procfs::kib("/proc/self/status", "VmRSS").unwrap_or(0);
    (engine_kib(), own)
}

fn per(after: (u64, u64), before: (u64, u64)) -> (f64, f64) {
    let each = |a: u64, b: u64| a.saturating_sub(b) as f64 / COUNT as f64;
    (each(after.0, before.0), each(after.1, before.1))
}

/// Memory per prepared container and per running app container: (engine, daemon) KiB each.
fn measure(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    app: &Path,
    image: &str,
) -> Result<((f64, f64), (f64, f64))> {
    let socket = &d.config.admin_socket;
    let (pooled, _) = runtime.block_on(install(socket, "pooled", app, &["*:post"], Some(image)))?;
    let before = sample();
    runtime.block_on(admin_call(
        socket,
        WarmRequest {
            app: "pooled".into(),
            count: COUNT as u32,
        },
    ))?;
    wait_warm(&d.shared, &pooled.id, Duration::from_secs(120))?;
    let prepared = per(sample(), before);
    runtime.block_on(admin_call(
        socket,
        WarmRequest {
            app: "pooled".into(),
            count: 0,
        },
    ))?;
    std::thread::sleep(Duration::from_secs(2));
    let names: Vec<String> = (0..COUNT).map(|i| format!("idle{i}")).collect();
    for name in &names {
        runtime.block_on(install(socket, name, app, &["*:post"], Some(image)))?;
    }
    let before = sample();
    for name in &names {
        let launch = LaunchRequest {
            args: vec!["sleep".into(), "600".into()],
            restart: Some(RestartMode::Never),
            ..LaunchRequest::new(name.as_str())
        };
        runtime.block_on(admin_call(socket, launch))?;
    }
    let running = per(sample(), before);
    for name in &names {
        runtime.block_on(admin_call(
            socket,
            fold_client::admin::protocol::StopRequest {
                app: name.clone(),
                grace: Some(Duration::from_secs(1)),
            },
        ))?;
        wait_stopped(runtime, d, name)?;
    }
    Ok((prepared, running))
}

/// The memory row.
pub(crate) fn memory_row(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    app: &Path,
    image: &str,
) -> Row {
    match measure(runtime, d, app, image) {
        Ok(((engine, daemon), (run_engine, run_daemon))) => {
            let mib = |kib: f64| num(kib / 1024.0);
            Row::new(
                MEMORY_ROW,
                format!("engine {} MiB, daemon {} KiB", mib(engine), num(daemon)),
                format!(
                    "running app: engine {} MiB, daemon {} KiB",
                    mib(run_engine),
                    num(run_daemon)
                ),
                ratio((engine + daemon) / (run_engine + run_daemon)),
                "",
                Verdict::Context,
            )
        }
        Err(e) => Row::missing(MEMORY_ROW, format!("{e:#}")),
    }
}

/// Prepared job slots of the jobs daemon.
const SLOTS: usize = 4;

pub(crate) const JOBS_ROW: &str = "3. one-off jobs per second, sequential, with prepared slots (`warm_jobs = 4`): `fold_client run` of the static binary back to back vs `docker run --rm` of it with the same hardening, in a loop";

/// Waits until the daemon has `SLOTS` job slots with a prepared container.
fn wait_slots(d: &LaunchDaemon) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let ready = d
            .shared
            .registry
            .list()
            .iter()
            .filter(|a| a.name.starts_with("job-"))
            .filter(|a| d.shared.supervisor.warm(&a.id).is_some_and(|w| w.ready > 0))
            .count();
        if ready >= SLOTS {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{ready} of {SLOTS} job slots prepared after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each job's time (ms): `runs` pooled jobs back to back (the first `SLOTS` find a
/// prepared slot each), then `runs` of `docker run --rm`.
fn measure_jobs(
    runtime: &tokio::runtime::Runtime,
    (cli_bin, app, image): (&Path, &Path, &str),
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let extra = format!("default_image = \"{image}\"\nwarm_jobs = {SLOTS}\n");
    let d = runtime.block_on(LaunchDaemon::start_with("jobs", &extra))?;
    let socket = &d.config.admin_socket;
    let (plain, _) = runtime.block_on(crate::rt::install_placed(
        socket,
        "plain",
        app,
        &[],
        Some(image),
        true,
    ))?;
    let plain = d.shared.registry.find(&plain.name)?;
    let binary = app
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("binary path not UTF-8"))?;
    let job = || -> Result<()> {
        let out = cli(
            cli_bin,
            &d,
            &["run", "--timeout", "60s", binary, "--", "probe"],
        )
        .output()?;
        anyhow::ensure!(
            out.status.success(),
            "fold_client run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    // One unrecorded job, then a full set of slots.
    job()?;
    wait_slots(&d)?;
    let ms = |since: std::time::Instant| since.elapsed().as_secs_f64() * 1000.0;
    let mut ours = Vec::new();
    for _ in 0..runs {
        let started = std::time::Instant::now();
        job()?;
        ours.push(ms(started));
    }
    let mut docker = Vec::new();
    for _ in 0..runs {
        let started = std::time::Instant::now();
        let status = docker_run_command(
            &d.shared,
            &plain,
            image,
            &["probe"],
            fold_client::sandbox::Isolation::Container,
        )
        .stdout(std::process::Stdio::null())
        .status()?;
        anyhow::ensure!(status.success(), "docker run failed: {status}");
        docker.push(ms(started));
    }
    runtime.block_on(fold_client::daemon::stop(&d.shared));
    Ok((ours, docker))
}

pub(crate) const JOB_LATENCY_ROW: &str = "3. one pooled job end to end (`fold_client run` started to exited), while prepared slots last (the first 4 of the loop) vs one `docker run --rm`";

/// The pooled jobs rows: throughput, and one job's time while slots last.
pub(crate) fn jobs_rows(
    runtime: &tokio::runtime::Runtime,
    binaries: (&Path, &Path, &str),
    runs: usize,
) -> Vec<Row> {
    match measure_jobs(runtime, binaries, runs) {
        Ok((ours, docker)) => {
            let rate = |ms: &[f64]| ms.len() as f64 * 1000.0 / ms.iter().sum::<f64>();
            let (ours_rate, docker_rate) = (rate(&ours), rate(&docker));
            let (burst, one) = (
                Summary::of(&ours[..SLOTS.min(ours.len())]),
                Summary::of(&docker),
            );
            vec![
                Row::new(
                    JOBS_ROW,
                    format!("{} jobs/s", num(ours_rate)),
                    format!("docker run --rm {} jobs/s", num(docker_rate)),
                    ratio(ours_rate / docker_rate),
                    "≥ 10x",
                    Verdict::goal(ours_rate / docker_rate >= 10.0),
                ),
                Row::new(
                    JOB_LATENCY_ROW,
                    burst.brief("ms"),
                    format!("docker run --rm {}", one.brief("ms")),
                    ratio(burst.p50 / one.p50),
                    "",
                    Verdict::Context,
                ),
            ]
        }
        Err(e) => {
            let why = format!("{e:#}");
            vec![
                Row::missing(JOBS_ROW, &why),
                Row::missing(JOB_LATENCY_ROW, &why),
            ]
        }
    }
}
