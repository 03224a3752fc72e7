//! Part 7: what the gVisor tier costs, side by side with the container tier in one run.
//!
//! - launch until the app's first request is answered, under `gvisor` and under `container`,
//!   against `docker run --rm --runtime=runsc` of the same static binary with the same
//!   hardening and limits (as the backend sets them under gVisor). That baseline's
//!   container is not the daemon's, so no socket of the daemon accepts it (the gVisor peer
//!   rule admits only the app's own sandbox): it runs the app's `probe` step, which needs no
//!   daemon, and is timed until it returned;
//! - a signed point read, p50, timed inside the app (`test_app reads`), from a gVisor app
//!   and from a runc app.

use crate::lifecycle::{cli, docker_run_command, wait_answer, wait_stopped, LaunchDaemon};
use crate::report::{Row, Verdict};
use crate::rt::admin_call;
use crate::stats::{num, ratio, Summary};
use anyhow::{bail, Context as _, Result};
use fold_client::admin::protocol::{InstallRequest, LaunchRequest, RestartMode};
use fold_client::sandbox::{Isolation, IsolationRequest};
use std::path::Path;
use std::time::{Duration, Instant};

const LAUNCH_ROW: &str = "7. launch under gvisor: `fold_client app launch` until the first answer vs `docker run --rm --runtime=runsc`, same binary, hardening and limits (returned)";
const TIERS_ROW: &str = "7. launch until the first answer: gvisor vs container, p50";
const READ_ROW: &str =
    "7. signed point read p50, timed inside the app: from a gVisor app vs from a runc app";
const ROWS: [&str; 3] = [LAUNCH_ROW, TIERS_ROW, READ_ROW];

/// The app names of each tier.
fn app(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::Container => "tier_runc",
        Isolation::Gvisor => "tier_gvisor",
    }
}

async fn install_tier(
    d: &LaunchDaemon,
    binary: &Path,
    image: &str,
    isolation: Isolation,
) -> Result<()> {
    let mut install = InstallRequest::new(app(isolation), binary);
    install.grants = vec!["*:post".parse().map_err(anyhow::Error::msg)?];
    install.image = Some(image.into());
    install.isolation = Some(IsolationRequest::Exactly(isolation));
    admin_call(&d.config.admin_socket, install).await?;
    Ok(())
}

/// Launch samples (ms): `app launch` to first answer per tier, and the runsc baseline.
#[derive(Default)]
struct Samples {
    runc: Vec<f64>,
    gvisor: Vec<f64>,
    runsc_run: Vec<f64>,
}

fn launch_once(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    cli_bin: &Path,
    isolation: Isolation,
) -> Result<f64> {
    let before = d.shared.metrics.requests();
    let started = Instant::now();
    let name = app(isolation);
    let child = cli(
        cli_bin,
        d,
        &["app", "launch", name, "--restart", "never", "--", "query"],
    )
    .spawn()?;
    let answered = wait_answer(&d.shared, before, Duration::from_secs(60))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "app launch {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_stopped(runtime, d, name)?;
    Ok((answered - started).as_secs_f64() * 1000.0)
}

fn measure_launches(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    cli_bin: &Path,
    image: &str,
    runs: usize,
) -> Result<Samples> {
    let gvisor_app = d
        .shared
        .registry
        .find(app(Isolation::Gvisor))
        .context("the gVisor app")?;
    let mut s = Samples::default();
    // One unrecorded round first: image, binary and runsc in the page cache. The three
    // kinds rotate, so none always runs first.
    for i in 0..=runs {
        for k in 0..3 {
            let ms = match (i + k) % 3 {
                0 => launch_once(runtime, d, cli_bin, Isolation::Container)?,
                1 => launch_once(runtime, d, cli_bin, Isolation::Gvisor)?,
                _ => {
                    let started = Instant::now();
                    let cmd = docker_run_command(
                        &d.shared,
                        &gvisor_app,
                        image,
                        &["probe"],
                        Isolation::Gvisor,
                    )
                    .status()?;
                    if !cmd.success() {
                        bail!("docker run --runtime=runsc failed: {cmd}");
                    }
                    started.elapsed().as_secs_f64() * 1000.0
                }
            };
            if i == 0 {
                continue;
            }
            match (i + k) % 3 {
                0 => s.runc.push(ms),
                1 => s.gvisor.push(ms),
                _ => s.runsc_run.push(ms),
            }
        }
    }
    Ok(s)
}

/// The `reads` step's p50 (µs) from inside the app under `isolation`.
fn read_p50(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    isolation: Isolation,
    reads: usize,
) -> Result<f64> {
    let name = app(isolation);
    let launch = LaunchRequest {
        args: ["query", "reads", &reads.to_string()]
            .iter()
            .map(ToString::to_string)
            .collect(),
        restart: Some(RestartMode::Never),
        ..LaunchRequest::new(name)
    };
    let launched = runtime.block_on(admin_call(&d.config.admin_socket, launch))?;
    wait_stopped(runtime, d, name)?;
    let log = std::fs::read_to_string(&launched.log)?;
    let line = log
        .lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["step"] == "reads")
        .with_context(|| format!("no reads line in {name}'s log"))?;
    line["p50_us"]
        .as_f64()
        .with_context(|| format!("no p50 in {line}"))
}

/// Runs part 7; every failure becomes a "not measured" row saying why.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    smoke: bool,
    setup: Result<(std::path::PathBuf, String), String>,
    cli_bin: Option<&Path>,
) -> Vec<Row> {
    let missing = |why: &str| ROWS.iter().map(|r| Row::missing(*r, why)).collect();
    let (binary, image) = match setup {
        Ok(found) => found,
        Err(why) => return missing(&why),
    };
    let Some(cli_bin) = cli_bin else {
        return missing("no fold_client binary (cargo build -p fold_client)");
    };
    if !fold_testkit::gvisor_available() {
        return missing(
            "the engine has no runsc runtime (docs/operations.md, \"Isolation tiers\")",
        );
    }
    let d = match runtime.block_on(LaunchDaemon::start("tiers")) {
        Ok(d) => d,
        Err(e) => return missing(&format!("daemon failed to start: {e:#}")),
    };
    let (runs, reads) = if smoke { (1, 20) } else { (10, 2000) };
    eprintln!("fold_bench: tiers: {runs} launches of each kind, {reads} reads per tier");
    let rows = (|| -> Result<Vec<Row>> {
        for isolation in Isolation::ALL {
            runtime.block_on(install_tier(&d, &binary, &image, isolation))?;
        }
        let s = measure_launches(runtime, &d, cli_bin, &image, runs)?;
        let (runc, gvisor, runsc) = (
            Summary::of(&s.runc),
            Summary::of(&s.gvisor),
            Summary::of(&s.runsc_run),
        );
        let runc_read = read_p50(runtime, &d, Isolation::Container, reads)?;
        let gvisor_read = read_p50(runtime, &d, Isolation::Gvisor, reads)?;
        Ok(vec![
            Row::new(
                LAUNCH_ROW,
                gvisor.brief("ms"),
                format!("docker run --rm --runtime=runsc {}", runsc.brief("ms")),
                ratio(gvisor.p50 / runsc.p50),
                "≤ 1.0x",
                Verdict::goal(gvisor.p50 <= runsc.p50),
            ),
            Row::new(
                TIERS_ROW,
                format!("gvisor p50 {} ms", num(gvisor.p50)),
                format!("container {}", runc.brief("ms")),
                ratio(gvisor.p50 / runc.p50),
                "",
                Verdict::Context,
            ),
            Row::new(
                READ_ROW,
                format!("gvisor p50 {} µs", num(gvisor_read)),
                format!("runc p50 {} µs", num(runc_read)),
                ratio(gvisor_read / runc_read),
                "",
                Verdict::Context,
            ),
        ])
    })();
    runtime.block_on(fold_client::daemon::stop(&d.shared));
    rows.unwrap_or_else(|e| missing(&format!("{e:#}")))
}
