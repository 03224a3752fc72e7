//! `app launch` and `app run`: images pulled with progress before the daemon is asked,
//! warnings shown, and one-shot runs whose output streams while they run.

use super::Context;
use anyhow::{bail, Result};
use fold_client::admin::protocol::{
    ForgetJobRequest, JobRequest, LaunchRequest, RunRequest, RunResponse, ShowRequest,
    StatusRequest, StatusResponse, WaitRequest,
};
use fold_client::sandbox::docker;
use fold_client::terminal::escape;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// Extra time allowed for a launch request beyond the image pull.
const LAUNCH_SLACK: Duration = Duration::from_secs(120);

/// Warns about dev mode, or makes sure the image is present (pulling it with progress).
///
/// The CLI pulls, not the daemon, because the admin protocol has one answer per request and
/// progress needs a stream; it pulls from the daemon's own engine with the daemon's
/// deadlines (`status`), so both agree on what is present. A pull changes nothing of the
/// daemon's state: the launch that follows is the daemon's.
async fn prepare(
    ctx: &Context,
    status: &StatusResponse,
    app: &str,
    direct: bool,
    image: Option<&str>,
) -> Result<()> {
    if direct {
        eprintln!(
            "WARNING: --direct runs {} on this host, NOT SANDBOXED (dev mode)",
            escape(app)
        );
        return Ok(());
    }
    // Asked even with `--image`: an app that does not exist is refused before any pull.
    let shown = ctx
        .call(
            ShowRequest {
                app: app.to_string(),
            },
            super::app::ADMIN_TIMEOUT,
        )
        .await?;
    let image = image.map_or(shown.app.image, str::to_string);
    let quiet = ctx.json;
    let mut last = String::new();
    let mut progress = |line: &str| {
        if !quiet && line != last {
            // Progress comes from the engine and the registry: escaped like app text.
            eprintln!("{}", escape(line));
            last = line.to_string();
        }
    };
    if let Err(e) = docker::prepare_image(
        &status.docker_host,
        status.engine_timeout,
        status.pull_timeout,
        &image,
        &mut progress,
    )
    .await
    {
        bail!("{e}");
    }
    Ok(())
}

/// The daemon's settings the CLI must agree with (its engine, its deadlines).
async fn status(ctx: &Context) -> Result<StatusResponse> {
    ctx.call(StatusRequest {}, super::app::ADMIN_TIMEOUT).await
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("WARNING: {}", escape(w));
    }
}

/// `app launch`: returns the exit code (with `--wait`, the app's).
pub async fn launch(ctx: &Context, request: LaunchRequest, wait: bool) -> Result<i32> {
    let status = status(ctx).await?;
    let app = request.app.clone();
    prepare(ctx, &status, &app, request.direct, request.image.as_deref()).await?;
    let result = ctx
        .call(request, status.pull_timeout + LAUNCH_SLACK)
        .await?;
    warn_all(&result.warnings);
    if ctx.json {
        println!("{}", super::json(&result)?);
    } else {
        let tier = result
            .isolation
            .map(|t| format!(" (isolation {t})"))
            .unwrap_or_default();
        let sandbox = match (result.sandboxed, &result.container) {
            (true, Some(c)) => format!(
                "{} container {}{tier}",
                escape(&result.sandbox),
                escape(&c[..c.len().min(12)])
            ),
            (true, None) => escape(&result.sandbox).into_owned(),
            (false, _) => "direct (NOT SANDBOXED)".into(),
        };
        println!(
            "launched {} ({}) in {sandbox}; log: {}",
            escape(&result.name),
            escape(&result.id),
            escape(&result.log.to_string_lossy())
        );
    }
    if !wait {
        return Ok(0);
    }
    let day = Duration::from_secs(24 * 3600);
    let done = ctx.call(WaitRequest { app, timeout: day }, day).await?;
    if !ctx.json {
        println!("{} {}", escape(&done.name), escape(&done.state));
    }
    Ok(exit_code(&done.state))
}

/// `exited(3)` -> 3; `stopped` -> 0; `oom_killed` -> 137; anything else abnormal -> 1.
fn exit_code(state: &str) -> i32 {
    if let Some(code) = state
        .strip_prefix("exited(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return code.parse().unwrap_or(1);
    }
    match state {
        "stopped" => 0,
        "oom_killed" => 137,
        _ => 1,
    }
}

/// `app run`: streams the job's stdout and stderr, each to its own, while it runs (escaped
/// for the terminal unless `raw`), every byte up to the job's output cap, and says on
/// stderr what was dropped past it; returns its exit code, 124 when it was killed at the
/// timeout.
pub async fn run(ctx: &Context, mut request: RunRequest, raw: bool) -> Result<i32> {
    let status = status(ctx).await?;
    let app = request.app.clone();
    let timeout = request.timeout;
    prepare(ctx, &status, &app, request.direct, request.image.as_deref()).await?;
    let shown = ctx
        .call(ShowRequest { app }, super::app::ADMIN_TIMEOUT)
        .await?;
    // The run's output directory is named here, so it can be followed while the job runs.
    let run_id = new_run_id();
    let dir = shown.app.job_output.join(&run_id);
    request.run_id = Some(run_id);
    let deadline = timeout + status.stop_grace + status.pull_timeout + LAUNCH_SLACK;
    let result = followed(ctx, dir, raw, ctx.call(request, deadline)).await?;
    finish(ctx, &result, timeout, None)
}

/// `fold_client run`: as `app run`, for a binary or script run once as a throwaway app
/// (installed, run and removed by the daemon); its output is deleted once read.
pub async fn job(ctx: &Context, mut request: JobRequest, raw: bool) -> Result<i32> {
    let status = status(ctx).await?;
    if request.direct {
        eprintln!(
            "WARNING: --direct runs {} on this host, NOT SANDBOXED (dev mode)",
            escape(&request.binary.to_string_lossy())
        );
    }
    let run_id = new_run_id();
    let dir = status.jobs_dir.join(&run_id);
    request.run_id = Some(run_id.clone());
    let timeout = request.timeout;
    // A job may wait its turn behind others (`max_concurrent_jobs`) before its timeout runs.
    let deadline = Duration::from_secs(24 * 3600);
    let result = followed(ctx, dir.clone(), raw, ctx.call(request, deadline)).await;
    // `--json` carries the output itself: the files are deleted next.
    let output = ctx.json.then(|| {
        let text = |name: &str| {
            String::from_utf8_lossy(&std::fs::read(dir.join(name)).unwrap_or_default()).into_owned()
        };
        serde_json::json!({"stdout": text("stdout"), "stderr": text("stderr")})
    });
    let _ = ctx
        .call(ForgetJobRequest { run_id }, super::app::ADMIN_TIMEOUT)
        .await;
    finish(ctx, &result?, timeout, output)
}

fn new_run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Awaits `call` while copying the output the job keeps in `dir` to this process's stdout
/// and stderr (unless `--json`).
async fn followed<T>(
    ctx: &Context,
    dir: PathBuf,
    raw: bool,
    call: impl std::future::Future<Output = T>,
) -> T {
    let (done_tx, done_rx) = watch::channel(false);
    let follow = (!ctx.json).then(|| tokio::spawn(follow(dir, done_rx, raw)));
    let result = call.await;
    let _ = done_tx.send(true);
    if let Some(follow) = follow {
        let _ = follow.await;
    }
    result
}

/// Reports how the job ended: what was dropped (on stderr), then the result (`--json`, with
/// `output` when given) or one line; returns the exit code for it.
fn finish(
    ctx: &Context,
    result: &RunResponse,
    timeout: Duration,
    output: Option<serde_json::Value>,
) -> Result<i32> {
    warn_all(&result.warnings);
    for (name, stream) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
        if stream.dropped > 0 {
            eprintln!(
                "output truncated: {} bytes of {name} dropped past the {} cap",
                stream.dropped,
                human_bytes(result.output_cap)
            );
        }
    }
    if ctx.json {
        let mut value = serde_json::to_value(result)?;
        if let (Some(output), Some(object)) = (output, value.as_object_mut()) {
            object.insert("output".into(), output);
        }
        println!("{}", super::json(&value)?);
    } else if result.timed_out {
        eprintln!(
            "{} timed out after {:.1} s: killed ({})",
            escape(&result.name),
            timeout.as_secs_f64(),
            escape(&result.state)
        );
    } else {
        eprintln!(
            "{} {} after {:.1} s",
            escape(&result.name),
            escape(&result.state),
            result.duration.as_secs_f64()
        );
    }
    Ok(if result.timed_out {
        124
    } else {
        result.exit_code.unwrap_or(1)
    })
}

/// `8 MiB`, `512 KiB`, `100 B`: a cap as people write it.
fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// Copies what the job's `stdout` and `stderr` files in `dir` gain to this process's own,
/// until `done` (then once more, to the end). The files only grow (to the job's cap), so
/// nothing written is missed.
async fn follow(dir: PathBuf, mut done: watch::Receiver<bool>, raw: bool) {
    let mut out = Follower::new(dir.join("stdout"));
    let mut err = Follower::new(dir.join("stderr"));
    loop {
        let finished = *done.borrow();
        out.copy(&mut std::io::stdout(), raw, finished).await;
        err.copy(&mut std::io::stderr(), raw, finished).await;
        if finished {
            return;
        }
        tokio::select! {
            _ = done.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// One stream's file, read from where the last read ended.
struct Follower {
    path: PathBuf,
    offset: u64,
    /// An escaped stream's unfinished line.
    line: Vec<u8>,
}

impl Follower {
    fn new(path: PathBuf) -> Follower {
        Follower {
            path,
            offset: 0,
            line: Vec::new(),
        }
    }

    /// Writes what the file gained to `to`: as it is with `raw`, else escaped line by line
    /// (an unfinished line waits for its end, or for `last`).
    async fn copy(&mut self, to: &mut impl std::io::Write, raw: bool, last: bool) {
        loop {
            let bytes = self.read_more().await;
            if bytes.is_empty() {
                break;
            }
            if raw {
                to.write_all(&bytes).expect("cannot write the app's output");
            } else {
                self.line.extend_from_slice(&bytes);
                if let Some(end) = self.line.iter().rposition(|&b| b == b'\n') {
                    let rest = self.line.split_off(end + 1);
                    for line in super::audit::lines(&self.line) {
                        super::audit::show_line(to, line, false);
                    }
                    self.line = rest;
                }
            }
        }
        if last && !self.line.is_empty() {
            super::audit::show_line(to, &std::mem::take(&mut self.line), false);
        }
        let _ = to.flush();
    }

    /// Up to 1 MiB of what follows the offset (nothing when the file is not there yet).
    async fn read_more(&mut self) -> Vec<u8> {
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return Vec::new();
        };
        if file
            .seek(std::io::SeekFrom::Start(self.offset))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.take(1 << 20).read_to_end(&mut bytes).await.is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        bytes
    }
}
