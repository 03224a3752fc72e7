//! Part 3, warm pools: what an idle prepared container costs the host, beside what a
//! running app's container costs, both measured in this run.
//!
//! Memory is the proportional set size (Pss, `/proc/<pid>/smaps_rollup`) of the engine's
//! processes (dockerd, containerd, the containerd shims) and of every process in a
//! container's cgroup (docker-init, the holder or the app), summed over the host before and
//! after; the daemon's share is this process's resident set (the daemon runs in it).

use crate::lifecycle::{wait_stopped, wait_warm, LaunchDaemon};
use crate::report::{Row, Verdict};
use crate::rt::{admin_call, install};
use crate::stats::{num, ratio};
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
