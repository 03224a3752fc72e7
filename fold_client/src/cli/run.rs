//! `app launch` and `app run`: images pulled with progress before the daemon is asked,
//! warnings shown, and one-shot runs whose output streams while they run.

use super::Context;
use anyhow::{bail, Result};
use fold_client::admin::protocol::{
    LaunchRequest, RunRequest, ShowRequest, StatusRequest, StatusResponse, WaitRequest,
};
use fold_client::sandbox::docker;
use fold_client::terminal::escape;
use std::path::{Path, PathBuf};
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

/// `app run`: streams the app's output while it runs (escaped for the terminal unless
/// `raw`); returns its exit code, 124 when it was killed at the timeout.
pub async fn run(ctx: &Context, request: RunRequest, raw: bool) -> Result<i32> {
    let status = status(ctx).await?;
    let app = request.app.clone();
    let timeout = request.timeout;
    prepare(ctx, &status, &app, request.direct, request.image.as_deref()).await?;
    let shown = ctx
        .call(ShowRequest { app }, super::app::ADMIN_TIMEOUT)
        .await?;
    let log = shown.app.log;
    let offset = tokio::fs::metadata(&log).await.map_or(0, |m| m.len());
    let (done_tx, done_rx) = watch::channel(false);
    let tail = (!ctx.json).then(|| tokio::spawn(tail(log, offset, done_rx, raw)));
    let deadline = timeout + status.stop_grace + status.pull_timeout + LAUNCH_SLACK;
    let result = ctx.call(request, deadline).await;
    let _ = done_tx.send(true);
    if let Some(tail) = tail {
        let _ = tokio::time::timeout(Duration::from_secs(5), tail).await;
    }
    let result = result?;
    warn_all(&result.warnings);
    if ctx.json {
        println!("{}", super::json(&result)?);
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

/// Prints what is appended to the app's log from `offset` until `done` (then once more).
async fn tail(path: PathBuf, mut offset: u64, mut done: watch::Receiver<bool>, raw: bool) {
    loop {
        let finished = *done.borrow();
        offset = print_new(&path, offset, raw).await;
        if finished {
            return;
        }
        tokio::select! {
            _ = done.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Prints the complete lines after `offset` (escaped unless `raw`); returns the offset
/// after them.
async fn print_new(path: &Path, offset: u64, raw: bool) -> u64 {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return offset;
    };
    let len = file.metadata().await.map_or(0, |m| m.len());
    let offset = if len < offset { 0 } else { offset }; // rotated
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return offset;
    }
    let mut bytes = Vec::new();
    if file.take(4 << 20).read_to_end(&mut bytes).await.is_err() {
        return offset;
    }
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return offset;
    };
    // The app wrote these bytes (need not be UTF-8): each line escaped unless `raw`.
    for line in super::audit::lines(&bytes[..=end]) {
        if let Some(out) = line.strip_prefix(b"stdout: ") {
            super::audit::show_line(&mut std::io::stdout(), out, raw);
        } else if let Some(err) = line.strip_prefix(b"stderr: ") {
            super::audit::show_line(&mut std::io::stderr(), err, raw);
        } else {
            super::audit::show_line(&mut std::io::stderr(), line, raw);
        }
    }
    offset + end as u64 + 1
}
