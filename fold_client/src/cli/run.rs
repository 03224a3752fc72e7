//! `app launch` and `app run`: images pulled with progress before the daemon is asked,
//! warnings shown, and one-shot runs whose output streams while they run.

use super::{text, Context};
use anyhow::{bail, Result};
use fold_client::admin::AdminRequest;
use fold_client::config::Overrides;
use fold_client::sandbox::docker;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// Extra time allowed for a launch request beyond the image pull.
const LAUNCH_SLACK: Duration = Duration::from_secs(120);

/// Warns about dev mode, or makes sure the image is present (pulling it with progress).
async fn prepare(ctx: &Context, app: &str, direct: bool, image: Option<&str>) -> Result<()> {
    if direct {
        eprintln!("WARNING: --direct runs {app} on this host, NOT SANDBOXED (dev mode)");
        return Ok(());
    }
    let shown = ctx
        .admin(
            &AdminRequest::Show {
                app: app.to_string(),
            },
            super::app::ADMIN_TIMEOUT,
        )
        .await?;
    let image = image.map_or_else(|| text(&shown["image"]), str::to_string);
    let config = ctx.config(Overrides::default())?;
    let quiet = ctx.json;
    let mut last = String::new();
    let mut progress = |line: &str| {
        if !quiet && line != last {
            // Progress comes from the engine and the registry: escaped like app text.
            eprintln!("{}", fold_client::terminal::escape(line));
            last = line.to_string();
        }
    };
    let timeout = config.engine_timeout;
    if let Err(e) = docker::prepare_image(
        &config.docker_host,
        timeout,
        config.pull_timeout,
        &image,
        &mut progress,
    )
    .await
    {
        bail!("{e}");
    }
    Ok(())
}

fn warn_all(result: &Value) {
    for w in result["warnings"].as_array().into_iter().flatten() {
        eprintln!("WARNING: {}", text(w));
    }
}

fn request_app(request: &AdminRequest) -> (String, bool, Option<String>) {
    match request {
        AdminRequest::LaunchWith {
            app, direct, image, ..
        }
        | AdminRequest::Run {
            app, direct, image, ..
        } => (app.clone(), *direct, image.clone()),
        AdminRequest::Launch { app, direct, .. } => (app.clone(), *direct, None),
        _ => (String::new(), false, None),
    }
}

/// `app launch`: returns the exit code (with `--wait`, the app's).
pub async fn launch(ctx: &Context, request: AdminRequest, wait: bool) -> Result<i32> {
    let (app, direct, image) = request_app(&request);
    prepare(ctx, &app, direct, image.as_deref()).await?;
    let config = ctx.config(Overrides::default())?;
    let result = ctx
        .admin(&request, config.pull_timeout + LAUNCH_SLACK)
        .await?;
    warn_all(&result);
    if ctx.json {
        println!("{}", super::json(&result)?);
    } else {
        let sandbox = match (&result["sandboxed"], &result["container"]) {
            (Value::Bool(true), Value::String(c)) => {
                format!(
                    "{} container {}",
                    text(&result["sandbox"]),
                    &c[..c.len().min(12)]
                )
            }
            (Value::Bool(true), _) => text(&result["sandbox"]),
            _ => "direct (NOT SANDBOXED)".into(),
        };
        println!(
            "launched {} ({}) in {sandbox}; log: {}",
            text(&result["name"]),
            text(&result["id"]),
            text(&result["log"])
        );
    }
    if !wait {
        return Ok(0);
    }
    let done = ctx
        .admin(
            &AdminRequest::Wait {
                app,
                timeout_ms: 24 * 3600 * 1000,
            },
            Duration::from_secs(24 * 3600),
        )
        .await?;
    let state = text(&done["state"]);
    if !ctx.json {
        println!("{} {state}", text(&done["name"]));
    }
    Ok(exit_code(&state))
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
pub async fn run(ctx: &Context, request: AdminRequest, raw: bool) -> Result<i32> {
    let (app, direct, image) = request_app(&request);
    let AdminRequest::Run { timeout_ms, .. } = &request else {
        bail!("not a run request");
    };
    prepare(ctx, &app, direct, image.as_deref()).await?;
    let config = ctx.config(Overrides::default())?;
    let shown = ctx
        .admin(
            &AdminRequest::Show { app: app.clone() },
            super::app::ADMIN_TIMEOUT,
        )
        .await?;
    let log = PathBuf::from(shown["log"].as_str().unwrap_or_default());
    let offset = tokio::fs::metadata(&log).await.map_or(0, |m| m.len());
    let (done_tx, done_rx) = watch::channel(false);
    let tail = (!ctx.json).then(|| tokio::spawn(tail(log, offset, done_rx, raw)));
    let deadline =
        Duration::from_millis(*timeout_ms) + config.stop_grace + config.pull_timeout + LAUNCH_SLACK;
    let result = ctx.admin(&request, deadline).await;
    let _ = done_tx.send(true);
    if let Some(tail) = tail {
        let _ = tokio::time::timeout(Duration::from_secs(5), tail).await;
    }
    let result = result?;
    warn_all(&result);
    let timed_out = result["timed_out"] == Value::Bool(true);
    if ctx.json {
        println!("{}", super::json(&result)?);
    } else if timed_out {
        eprintln!(
            "{} timed out after {:.1} s: killed ({})",
            text(&result["name"]),
            Duration::from_millis(*timeout_ms).as_secs_f64(),
            text(&result["state"])
        );
    } else {
        eprintln!(
            "{} {} after {:.1} s",
            text(&result["name"]),
            text(&result["state"]),
            result["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
    }
    Ok(if timed_out {
        124
    } else {
        result["exit_code"]
            .as_i64()
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(1)
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
