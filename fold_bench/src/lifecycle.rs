//! Parts 3 and 4: launching an app until its first request is answered, against
//! `docker run --rm` of the same static binary with the same hardening; and stopping an app
//! that ignores SIGTERM.
//!
//! The daemon runs in this process (per-app uids, its own container label), so the bench
//! sees the moment it answers the app's first request ([`Metrics::requests`] goes up). The
//! launch is the real CLI (`fold_client app launch`), a process of its own as `docker run`
//! is.
//!
//! [`Metrics::requests`]: fold_client::metrics::Metrics::requests

use crate::report::{Row, Verdict};
use crate::rt::{admin_call, install, install_placed};
use crate::stats::{num, ratio, Summary};
use crate::Options;
use anyhow::{bail, Context as _, Result};
use fold_client::admin::protocol::{
    LaunchRequest, RestartMode, StopRequest, WaitRequest, WarmRequest,
};
use fold_client::config::{Config, FileConfig, Overrides};
use fold_client::daemon::{self, Shared};
use fold_client::sandbox::docker::spec::pids_limit;
use fold_client::sandbox::Isolation;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `fold_client` binary next to this one, built first when missing (never during a
/// smoke run, which may run under `cargo test` holding the build lock).
pub fn fold_client_binary(o: &Options) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let sibling = exe.parent()?.join("fold_client");
    if sibling.is_file() {
        return Some(sibling);
    }
    if o.smoke {
        return None;
    }
    let release = exe.parent()?.ends_with("release");
    eprintln!("fold_bench: building fold_client (cargo build -p fold_client)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "fold_client", "--bin", "fold_client"]);
    if release {
        cmd.arg("--release");
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    (ok && sibling.is_file()).then_some(sibling)
}

/// Whether an engine answers, and the static test app and base image if so.
pub fn docker_setup(o: &Options) -> Result<(PathBuf, String), String> {
    if !o.docker {
        return Err(if o.smoke {
            "skipped in --smoke".into()
        } else {
            "--no-docker".into()
        });
    }
    if !fold_testkit::docker_available() {
        return Err("Docker backend unavailable (no engine answers)".into());
    }
    let image = fold_testkit::ensure_base_image()
        .map_err(|e| format!("Docker backend unavailable (base image: {e:#})"))?;
    let app = fold_testkit::build_static_binary("fixture-test_app", "test_app")
        .map_err(|e| format!("static test app could not be built: {e:#}"))?;
    Ok((app, image))
}

/// A daemon in this process for launches: per-app uids when root, its own label.
pub struct LaunchDaemon {
    /// Its state.
    pub shared: Arc<Shared>,
    /// Its config.
    pub config: Config,
    /// The config file (for the CLI).
    pub config_file: PathBuf,
    /// The state directory (for the CLI).
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for LaunchDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchDaemon")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The config text of a bench daemon that launches apps.
pub fn launch_config_text(label: &str, uid_base: u32) -> String {
    let uid_mode = if nix::unistd::geteuid().is_root() {
        "per_app"
    } else {
        "daemon"
    };
    format!(
        "uid_mode = \"{uid_mode}\"\nuid_base = {uid_base}\ndaemon_label = \"{label}\"\n\
         stop_grace_ms = 2000\n"
    )
}

impl LaunchDaemon {
    /// Starts a daemon with its own state, label (`tag`) and uid range.
    pub(crate) async fn start(tag: &str) -> Result<LaunchDaemon> {
        LaunchDaemon::start_with(tag, "").await
    }

    /// [`LaunchDaemon::start`] with more config text (`extra`).
    pub(crate) async fn start_with(tag: &str, extra: &str) -> Result<LaunchDaemon> {
        let dir = tempfile::Builder::new().prefix("fbl").tempdir_in("/tmp")?;
        let state_dir = dir.path().join("state");
        let label = format!("fold-bench-{tag}-{}", std::process::id());
        // Each daemon of this process its own range: tags differ in their first letters.
        let tag_offset = u32::from(tag.as_bytes()[0] % 32) * 100_000;
        let uid_base = 700_000 + tag_offset + (std::process::id() % 1000) * 100;
        let text = format!("{}{extra}", launch_config_text(&label, uid_base));
        let config_file = dir.path().join("fold_client.toml");
        std::fs::write(&config_file, &text)?;
        let file = FileConfig::parse(&text, &config_file)?;
        let over = Overrides {
            state_dir: Some(state_dir.clone()),
            docker_host: Some(fold_testkit::docker_host()),
            ..Overrides::default()
        };
        let config = Config::build(file, over, nix::unistd::geteuid().as_raw())?;
        let shared = daemon::start(config.clone()).await?;
        Ok(LaunchDaemon {
            shared,
            config,
            config_file,
            state_dir,
            _dir: dir,
        })
    }
}

/// Waits (polling every 200 µs) until the daemon has answered more than `before` requests.
pub(crate) fn wait_answer(shared: &Shared, before: u64, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if shared.metrics.requests() > before {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("no request answered within {within:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `docker run --rm` with the flags the Docker backend gives the app's container under
/// `isolation` (under gVisor: the runtime, the sandbox's pids headroom, nproc).
pub(crate) fn docker_run_command(
    shared: &Shared,
    app: &fold_client::registry::App,
    image: &str,
    args: &[&str],
    isolation: Isolation,
) -> Command {
    let l = &app.limits;
    let socket_dir = shared.socket_dir(&app.id);
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--network", "none", "--read-only"]);
    let pids = pids_limit(isolation, l.pids);
    if isolation == Isolation::Gvisor {
        cmd.args(["--runtime", fold_client::config::DEFAULT_GVISOR_RUNTIME])
            .args(["--ulimit", &format!("nproc={0}:{0}", l.pids)]);
    }
    cmd.args([
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--init",
    ])
    .args(["--user", &format!("{}:{}", app.uid, app.gid)])
    .args(["--memory", &l.memory_bytes.to_string()])
    .args(["--memory-swap", &l.memory_bytes.to_string()])
    .args(["--cpus", &format!("{}", l.nano_cpus as f64 / 1e9)])
    .args(["--pids-limit", &pids.to_string()])
    .args(["--ulimit", &format!("nofile={0}:{0}", l.nofile)])
    .args([
        "--tmpfs",
        &format!(
            "/tmp:rw,noexec,nosuid,nodev,size={},uid={},gid={}",
            l.tmpfs_bytes, app.uid, app.gid
        ),
    ])
    .args([
        "--mount",
        &format!(
            "type=bind,src={},dst=/app,readonly",
            shared.app_dir(&app.id).display()
        ),
    ])
    .args([
        "--mount",
        &format!(
            "type=bind,src={},dst=/tmp/fold_client_sockets,readonly",
            socket_dir.display()
        ),
    ])
    .args(["-w", "/app", "--log-driver", "json-file"])
    .args(["--log-opt", "max-size=8m", "--log-opt", "max-file=1"])
    .args(["--stop-timeout", "2", "--label", "io.foldclient.bench=1"])
    .args(["-e", &format!("FOLD_CLIENT_APP_ID={}", app.id)])
    .args(["-e", "FOLD_CLIENT_SOCKET_DIR=/tmp/fold_client_sockets"])
    .args([
        "-e",
        "FOLD_CLIENT_CREDENTIALS=/tmp/fold_client_sockets/credentials.json",
    ])
    .args(["-e", "FOLD_CLIENT_SANDBOX=docker"])
    .args(["-e", &format!("FOLD_CLIENT_ISOLATION={isolation}")])
    .args(["--entrypoint", &format!("/app/{}", app.binary)])
    .arg(image)
    .args(args)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// The CLI, pointed at `d`.
pub(crate) fn cli(bin: &Path, d: &LaunchDaemon, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--state-dir")
        .arg(&d.state_dir)
        .arg("--config")
        .arg(&d.config_file)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

pub(crate) fn wait_stopped(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    app: &str,
) -> Result<()> {
    runtime.block_on(admin_call(
        &d.config.admin_socket,
        WaitRequest {
            app: app.into(),
            timeout: Duration::from_secs(60),
        },
    ))?;
    Ok(())
}

/// Launch samples, in ms: `app launch` → first answer, cold and warm (a prepared
/// container); `docker run` → first answer, and → returned.
struct LaunchSamples {
    launch: Vec<f64>,
    warm: Vec<f64>,
    docker_answer: Vec<f64>,
    docker_total: Vec<f64>,
}

/// Which launch a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Cold,
    Warm,
    Docker,
}

/// `app launch NAME --restart never -- query` until its first answer; returns the ms.
fn launch_once(d: &LaunchDaemon, cli_bin: &Path, name: &str) -> Result<f64> {
    let before = d.shared.metrics.requests();
    let started = Instant::now();
    let out = cli(
        cli_bin,
        d,
        &["app", "launch", name, "--restart", "never", "--", "query"],
    )
    .spawn()?;
    let answered = wait_answer(&d.shared, before, Duration::from_secs(60))?;
    let out = out.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "app launch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((answered - started).as_secs_f64() * 1000.0)
}

/// Waits until the app's pool has all its prepared containers (so that no preparation runs
/// beside a measurement).
pub(crate) fn wait_warm(shared: &Shared, app_id: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let pool = shared.supervisor.warm(app_id);
        if pool.as_ref().is_some_and(|p| p.ready == p.target) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the warm pool did not fill within {within:?}: {pool:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn measure_launch(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    cli_bin: &Path,
    image: &str,
    runs: usize,
) -> Result<LaunchSamples> {
    let launched = d
        .shared
        .registry
        .find("launched")
        .context("app `launched`")?;
    let warmed = d.shared.registry.find("warmed").context("app `warmed`")?;
    let plain = d.shared.registry.find("plain").context("app `plain`")?;
    let mut s = LaunchSamples {
        launch: Vec::new(),
        warm: Vec::new(),
        docker_answer: Vec::new(),
        docker_total: Vec::new(),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let order = [Contender::Cold, Contender::Warm, Contender::Docker];
    // One unrecorded run of each first: image and binary in the page cache.
    for i in 0..=runs {
        let record = i > 0;
        for k in 0..order.len() {
            match order[(i + k) % order.len()] {
                Contender::Cold => {
                    let took = launch_once(d, cli_bin, &launched.name)?;
                    if record {
                        s.launch.push(took);
                    }
                    wait_stopped(runtime, d, &launched.name)?;
                }
                Contender::Warm => {
                    wait_warm(&d.shared, &warmed.id, Duration::from_secs(60))?;
                    let took = launch_once(d, cli_bin, &warmed.name)?;
                    if record {
                        s.warm.push(took);
                    }
                    wait_stopped(runtime, d, &warmed.name)?;
                    wait_warm(&d.shared, &warmed.id, Duration::from_secs(60))?;
                }
                Contender::Docker => {
                    let before = d.shared.metrics.requests();
                    let started = Instant::now();
                    let child = docker_run_command(
                        &d.shared,
                        &plain,
                        image,
                        &["query"],
                        Isolation::Container,
                    )
                    .spawn()?;
                    let answered = wait_answer(&d.shared, before, Duration::from_secs(60))?;
                    let status = child.wait_with_output()?.status;
                    let done = Instant::now();
                    if !status.success() {
                        bail!("docker run failed: {status}");
                    }
                    if record {
                        s.docker_answer.push(ms(answered - started));
                        s.docker_total.push(ms(done - started));
                    }
                }
            }
        }
    }
    Ok(s)
}

/// Sequential one-off jobs (the app's `probe` step, which needs no daemon): seconds for
/// `runs` of `fold_client run`, and for `runs` of `docker run --rm`, interleaved.
fn measure_jobs(
    d: &LaunchDaemon,
    cli_bin: &Path,
    app_binary: &Path,
    image: &str,
    runs: usize,
) -> Result<(f64, f64)> {
    let plain = d.shared.registry.find("plain").context("app `plain`")?;
    let binary = app_binary
        .to_str()
        .context("the app binary's path is not UTF-8")?;
    let (mut ours, mut docker) = (Duration::ZERO, Duration::ZERO);
    // One unrecorded run of each first.
    for i in 0..=runs {
        let started = Instant::now();
        let out = cli(
            cli_bin,
            d,
            &[
                "run",
                "--image",
                image,
                "--timeout",
                "60s",
                binary,
                "--",
                "probe",
            ],
        )
        .output()?;
        if !out.status.success() {
            bail!(
                "fold_client run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let took = started.elapsed();
        let started = Instant::now();
        let status = docker_run_command(&d.shared, &plain, image, &["probe"], Isolation::Container)
            .status()?;
        if !status.success() {
            bail!("docker run failed: {status}");
        }
        if i > 0 {
            ours += took;
            docker += started.elapsed();
        }
    }
    Ok((ours.as_secs_f64(), docker.as_secs_f64()))
}

/// Stop times (ms) of an app that ignores SIGTERM, grace 2 s.
fn measure_stop(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    app: &str,
    direct: bool,
    runs: usize,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let before = d.shared.metrics.requests();
        runtime.block_on(admin_call(
            &d.config.admin_socket,
            LaunchRequest {
                direct,
                args: ["ignore-term", "query", "sleep", "3600"]
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                restart: Some(RestartMode::Never),
                ..LaunchRequest::new(app)
            },
        ))?;
        // Its first answer means `ignore-term` (the step before) is in force.
        wait_answer(&d.shared, before, Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        runtime.block_on(admin_call(
            &d.config.admin_socket,
            StopRequest {
                app: app.into(),
                grace: Some(Duration::from_secs(2)),
            },
        ))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        wait_stopped(runtime, d, app)?;
    }
    Ok(times)
}

/// The direct backend's stop time with an app ignoring SIGTERM, from a `/bin/sh` script
/// (for smoke runs, which have no static test app).
fn measure_stop_sh(
    runtime: &tokio::runtime::Runtime,
    d: &LaunchDaemon,
    runs: usize,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        runtime.block_on(admin_call(
            &d.config.admin_socket,
            LaunchRequest {
                direct: true,
                args: vec![
                    "-c".into(),
                    "trap '' TERM; while :; do sleep 1; done".into(),
                ],
                restart: Some(RestartMode::Never),
                ..LaunchRequest::new("stubborn")
            },
        ))?;
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        runtime.block_on(admin_call(
            &d.config.admin_socket,
            StopRequest {
                app: "stubborn".into(),
                grace: Some(Duration::from_secs(2)),
            },
        ))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        wait_stopped(runtime, d, "stubborn")?;
    }
    Ok(times)
}

const JOBS_ROW: &str = "3. one-off jobs per second, sequential: `fold_client run` of the static binary (install, hardened container, remove; no prepared slots) vs `docker run --rm` of it with the same hardening, in a loop";
const LAUNCH_ROW: &str = "3. launch: `fold_client app launch` until the app's first request is answered vs `docker run --rm` of the same static binary with the same hardening (returned)";
const WARM_ROW: &str = "3. warm launch: `fold_client app launch` of an app with a prepared container until its first request is answered vs `docker run --rm` of the same static binary with the same hardening (returned)";
const LAUNCH_SIDE_ROW: &str =
    "3. launch vs `docker run --rm` until the same app's first request is answered";
const STOP_DOCKER_ROW: &str =
    "4. stop an app that ignores SIGTERM, grace 2 s, until gone: Docker backend";
const STOP_DIRECT_ROW: &str = "4. the same, direct backend (dev mode)";

/// Runs parts 3 and 4; every failure becomes a "not measured" row saying why.
pub fn run(runtime: &tokio::runtime::Runtime, o: &Options) -> Vec<Row> {
    let (launch_runs, stop_runs) = if o.smoke { (2, 1) } else { (20, 5) };
    let d = match runtime.block_on(LaunchDaemon::start("launch")) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("daemon failed to start: {e:#}");
            return [
                LAUNCH_ROW,
                WARM_ROW,
                LAUNCH_SIDE_ROW,
                JOBS_ROW,
                crate::warm::JOBS_ROW,
                crate::warm::JOB_LATENCY_ROW,
                crate::warm::MEMORY_ROW,
                STOP_DOCKER_ROW,
                STOP_DIRECT_ROW,
            ]
            .iter()
            .map(|r| Row::missing(*r, &why))
            .collect();
        }
    };
    let mut rows = Vec::new();
    let docker = docker_setup(o);
    let cli_bin = fold_client_binary(o);
    match (&docker, &cli_bin) {
        (Ok((app, image)), Some(cli_bin)) => {
            eprintln!("fold_bench: launch: {launch_runs} runs each, alternating");
            let result = (|| {
                let socket = &d.config.admin_socket;
                for name in ["launched", "stopper", "warmed"] {
                    runtime.block_on(install(socket, name, app, &["*:post"], Some(image)))?;
                }
                runtime.block_on(admin_call(
                    socket,
                    WarmRequest {
                        app: "warmed".into(),
                        count: 1,
                    },
                ))?;
                // The `docker run` baseline's container is not the daemon's, and the peer
                // rule admits only the daemon's own container for a container app: its app
                // is placed on the host, whose rule admits any process of the app's uid.
                runtime.block_on(install_placed(
                    socket,
                    "plain",
                    app,
                    &["*:post"],
                    Some(image),
                    true,
                ))?;
                measure_launch(runtime, &d, cli_bin, image, launch_runs)
            })();
            match result {
                Ok(s) => {
                    let (l, a, t) = (
                        Summary::of(&s.launch),
                        Summary::of(&s.docker_answer),
                        Summary::of(&s.docker_total),
                    );
                    rows.push(Row::new(
                        LAUNCH_ROW,
                        l.brief("ms"),
                        format!("docker run --rm {}", t.brief("ms")),
                        ratio(l.p50 / t.p50),
                        "≤ 1.0x",
                        Verdict::goal(l.p50 / t.p50 <= 1.0),
                    ));
                    let w = Summary::of(&s.warm);
                    rows.push(Row::new(
                        WARM_ROW,
                        w.brief("ms"),
                        format!("docker run --rm {}", t.brief("ms")),
                        ratio(w.p50 / t.p50),
                        "≤ 0.1x",
                        Verdict::goal(w.p50 / t.p50 <= 0.1),
                    ));
                    rows.push(Row::new(
                        LAUNCH_SIDE_ROW,
                        format!("p50 {} ms", num(l.p50)),
                        format!("docker run --rm, first answer {}", a.brief("ms")),
                        ratio(l.p50 / a.p50),
                        "",
                        Verdict::Context,
                    ));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    rows.push(Row::missing(LAUNCH_ROW, &why));
                    rows.push(Row::missing(WARM_ROW, &why));
                    rows.push(Row::missing(LAUNCH_SIDE_ROW, &why));
                }
            }
            eprintln!("fold_bench: jobs: {launch_runs} sequential one-off jobs each");
            match measure_jobs(&d, cli_bin, app, image, launch_runs) {
                Ok((ours, docker)) => {
                    let (ours_rate, docker_rate) =
                        (launch_runs as f64 / ours, launch_runs as f64 / docker);
                    rows.push(Row::new(
                        JOBS_ROW,
                        format!("{} jobs/s", num(ours_rate)),
                        format!("docker run --rm {} jobs/s", num(docker_rate)),
                        ratio(ours_rate / docker_rate),
                        "",
                        Verdict::Context,
                    ));
                }
                Err(e) => rows.push(Row::missing(JOBS_ROW, format!("{e:#}"))),
            }
            eprintln!("fold_bench: jobs with prepared slots: {launch_runs} sequential each");
            rows.extend(crate::warm::jobs_rows(
                runtime,
                (cli_bin, app, image),
                launch_runs,
            ));
            eprintln!("fold_bench: memory of idle prepared containers");
            rows.push(crate::warm::memory_row(runtime, &d, app, image));
            eprintln!("fold_bench: stop: {stop_runs} runs per backend");
            let grace_goal = 2200.0;
            for (row, direct) in [(STOP_DOCKER_ROW, false), (STOP_DIRECT_ROW, true)] {
                match measure_stop(runtime, &d, "stopper", direct, stop_runs) {
                    Ok(t) => {
                        let s = Summary::of(&t);
                        rows.push(Row::new(
                            row,
                            s.brief("ms"),
                            "grace 2,000 ms",
                            ratio(s.max / 2000.0),
                            "max ≤ 2,200 ms",
                            Verdict::goal(s.max <= grace_goal),
                        ));
                    }
                    Err(e) => rows.push(Row::missing(row, format!("{e:#}"))),
                }
            }
        }
        (docker, _) => {
            let why = match (docker, &cli_bin) {
                (Err(why), _) => why.clone(),
                (Ok(_), None) => "no fold_client binary (cargo build -p fold_client)".into(),
                _ => String::new(),
            };
            rows.push(Row::missing(LAUNCH_ROW, &why));
            rows.push(Row::missing(WARM_ROW, &why));
            rows.push(Row::missing(LAUNCH_SIDE_ROW, &why));
            rows.push(Row::missing(JOBS_ROW, &why));
            rows.push(Row::missing(crate::warm::JOBS_ROW, &why));
            rows.push(Row::missing(crate::warm::JOB_LATENCY_ROW, &why));
            rows.push(Row::missing(crate::warm::MEMORY_ROW, &why));
            rows.push(Row::missing(STOP_DOCKER_ROW, &why));
            let sh = runtime
                .block_on(install(
                    &d.config.admin_socket,
                    "stubborn",
                    Path::new("/bin/sh"),
                    &[],
                    None,
                ))
                .and_then(|_| measure_stop_sh(runtime, &d, stop_runs));
            match sh {
                Ok(t) => {
                    let s = Summary::of(&t);
                    rows.push(Row::new(
                        format!("{STOP_DIRECT_ROW}, `sh` trapping SIGTERM"),
                        s.brief("ms"),
                        "grace 2,000 ms",
                        ratio(s.max / 2000.0),
                        "max ≤ 2,200 ms",
                        Verdict::goal(s.max <= 2200.0),
                    ));
                }
                Err(e) => rows.push(Row::missing(STOP_DIRECT_ROW, format!("{e:#}"))),
            }
        }
    }
    runtime.block_on(daemon::stop(&d.shared));
    rows
}
