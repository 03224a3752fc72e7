//! Part 5: the daemon's memory, as a process of its own (`fold_client serve`): resident set
//! with 1 installed app, with many (sockets bound, idle), and per running container.

use crate::lifecycle::{docker_setup, fold_client_binary, launch_config_text};
use crate::report::{Row, Verdict};
use crate::rt::{admin_call, install};
use crate::stats::{num, thousands};
use crate::Options;
use anyhow::{bail, Context as _, Result};
use fold_client::admin::protocol::{LaunchRequest, RestartMode, StatusRequest, StopRequest};
use fold_client::config::{Config, FileConfig, Overrides};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `fold_bench __daemon --state-dir DIR --config FILE`: the daemon, as `fold_client serve`
/// runs it, for when no `fold_client` binary is at hand (smoke runs under `cargo test`).
///
/// # Errors
///
/// Bad arguments, or the daemon fails.
pub fn serve_daemon(args: &[String]) -> Result<()> {
    fold_client::return_large_buffers_to_the_system();
    let mut state_dir = None;
    let mut config_file = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--state-dir" => state_dir = it.next().map(PathBuf::from),
            "--config" => config_file = it.next().map(PathBuf::from),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let config_file = config_file.context("--config")?;
    let text = std::fs::read_to_string(&config_file)?;
    let file = FileConfig::parse(&text, &config_file)?;
    let over = Overrides {
        state_dir,
        docker_host: Some(fold_testkit::docker_host()),
        ..Overrides::default()
    };
    let config = Config::build(file, over, nix::unistd::geteuid().as_raw())?;
    let runtime = fold_ipc::heavy::serving_runtime()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        fold_client::run(config, async move {
            term.recv().await;
        })
        .await?;
        anyhow::Ok(())
    })
}

/// The daemon child and where it lives.
pub(crate) struct DaemonProcess {
    pub(crate) child: Child,
    pub(crate) admin: PathBuf,
    pub(crate) binary: String,
    _dir: tempfile::TempDir,
}

impl DaemonProcess {
    pub(crate) fn start(o: &Options, runtime: &tokio::runtime::Runtime) -> Result<DaemonProcess> {
        let dir = tempfile::Builder::new().prefix("fbm").tempdir_in("/tmp")?;
        let state = dir.path().join("state");
        let label = format!("fold-bench-mem-{}", std::process::id());
        let uid_base = 800_000 + (std::process::id() % 1000) * 1000;
        let config_file = dir.path().join("fold_client.toml");
        std::fs::write(&config_file, launch_config_text(&label, uid_base))?;
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let (mut cmd, binary) = match fold_client_binary(o) {
            Some(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg("--state-dir")
                    .arg(&state)
                    .arg("--config")
                    .arg(&config_file)
                    .arg("serve");
                (cmd, "`fold_client serve`")
            }
            None => {
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg("__daemon")
                    .arg("--state-dir")
                    .arg(&state)
                    .arg("--config")
                    .arg(&config_file);
                (cmd, "the daemon library in `fold_bench __daemon`")
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the daemon")?;
        let admin = state.join("admin.sock");
        let mut d = DaemonProcess {
            child,
            admin,
            binary: binary.into(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if d.admin.exists()
                && runtime
                    .block_on(admin_call(&d.admin, StatusRequest {}))
                    .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                bail!("the daemon exited at startup: {status}");
            }
            if Instant::now() > deadline {
                bail!("the daemon did not answer on {}", d.admin.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// VmRSS in KiB: the mean of a few readings after a pause.
    fn rss_kib(&self) -> Result<f64> {
        std::thread::sleep(Duration::from_millis(500));
        let mut total = 0.0;
        for _ in 0..5 {
            let status = format!("/proc/{}/status", self.child.id());
            total += crate::procfs::kib(&status, "VmRSS").context("no VmRSS")? as f64;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(total / 5.0)
    }

    pub(crate) fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs `names` with up to 8 installs at once.
fn install_many(runtime: &tokio::runtime::Runtime, admin: &Path, names: &[String]) -> Result<()> {
    runtime.block_on(async {
        for chunk in names.chunks(8) {
            let calls = chunk.iter().map(|name| async move {
                install(admin, name, Path::new("/bin/true"), &["query:item"], None).await
            });
            for r in futures::future::join_all(calls).await {
                r?;
            }
        }
        anyhow::Ok(())
    })
}

const IDLE_ROW: &str = "5. daemon memory (VmRSS) per idle installed app (socket bound)";
const CONTAINER_ROW: &str = "5. daemon memory per running container (Docker backend)";

/// Runs part 5.
pub fn run(runtime: &tokio::runtime::Runtime, o: &Options) -> Vec<Row> {
    let apps = if o.smoke { 20 } else { 500 };
    let d = match DaemonProcess::start(o, runtime) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("{e:#}");
            return vec![
                Row::missing(IDLE_ROW, &why),
                Row::missing(CONTAINER_ROW, &why),
            ];
        }
    };
    let mut rows = Vec::new();
    eprintln!("fold_bench: memory: {apps} apps, daemon {}", d.binary);
    let idle = (|| {
        let empty = d.rss_kib()?;
        install_many(runtime, &d.admin, &["m000".to_string()])?;
        let one = d.rss_kib()?;
        let names: Vec<String> = (1..apps).map(|i| format!("m{i:03}")).collect();
        install_many(runtime, &d.admin, &names)?;
        let many = d.rss_kib()?;
        anyhow::Ok((empty, one, many))
    })();
    match idle {
        Ok((empty, one, many)) => {
            let per_app = (many - one) / (apps - 1) as f64;
            rows.push(Row::new(
                format!("{IDLE_ROW}: 1 app vs {apps} apps, daemon = {}", d.binary),
                format!(
                    "{} KiB per app ({} KiB with 1 app, {} KiB with {apps})",
                    num(per_app),
                    thousands(one.round() as i64),
                    thousands(many.round() as i64)
                ),
                format!("daemon with no app {} KiB", thousands(empty.round() as i64)),
                "",
                "< 64 KiB per app",
                Verdict::goal(per_app < 64.0),
            ));
        }
        Err(e) => rows.push(Row::missing(IDLE_ROW, format!("{e:#}"))),
    }
    match docker_setup(o) {
        Err(why) => rows.push(Row::missing(CONTAINER_ROW, why)),
        Ok((app, image)) => {
            let k = 5;
            let result = (|| {
                let names: Vec<String> = (0..k).map(|i| format!("c{i}")).collect();
                for name in &names {
                    runtime.block_on(install(&d.admin, name, &app, &["*:post"], Some(&image)))?;
                }
                let before = d.rss_kib()?;
                for name in &names {
                    runtime.block_on(admin_call(
                        &d.admin,
                        LaunchRequest {
                            args: vec!["sleep".into(), "3600".into()],
                            restart: Some(RestartMode::Never),
                            ..LaunchRequest::new(name.clone())
                        },
                    ))?;
                }
                std::thread::sleep(Duration::from_secs(1));
                let after = d.rss_kib()?;
                for name in &names {
                    let _ = runtime.block_on(admin_call(
                        &d.admin,
                        StopRequest {
                            app: name.clone(),
                            grace: Some(Duration::ZERO),
                        },
                    ));
                }
                anyhow::Ok((before, after))
            })();
            match result {
                Ok((before, after)) => rows.push(Row::new(
                    format!("{CONTAINER_ROW}: {k} containers running `sleep`"),
                    format!("{} KiB per container", num((after - before) / k as f64)),
                    format!(
                        "{} KiB before, {} KiB with {k} running",
                        thousands(before.round() as i64),
                        thousands(after.round() as i64)
                    ),
                    "",
                    "",
                    Verdict::Context,
                )),
                Err(e) => rows.push(Row::missing(CONTAINER_ROW, format!("{e:#}"))),
            }
        }
    }
    d.stop();
    rows
}
