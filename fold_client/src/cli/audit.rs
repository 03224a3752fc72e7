//! `fold_client audit tail`.

use super::Context;
use anyhow::{Context as _, Result};
use fold_client::config::Overrides;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

/// The `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Print the last audit records.
    Tail {
        /// Keep printing new records.
        #[arg(short, long)]
        follow: bool,
        /// Only this app's records (name or id).
        #[arg(long)]
        app: Option<String>,
        /// How many records to show before following.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
}

/// Runs an `audit` subcommand.
pub async fn audit(ctx: &Context, cmd: AuditCommand) -> Result<()> {
    let AuditCommand::Tail { follow, app, lines } = cmd;
    let path = ctx.config(Overrides::default())?.audit_path();
    let text = tokio::fs::read_to_string(&path)
        .await
        .with_context(|| format!("cannot read the audit log {}", path.display()))?;
    let matches = |line: &str| match &app {
        None => true,
        Some(app) => serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| v["app"] == app.as_str() || v["app_id"] == app.as_str()),
    };
    let selected: Vec<&str> = text.lines().filter(|l| matches(l)).collect();
    for line in &selected[selected.len().saturating_sub(lines)..] {
        print_record(line, ctx.json);
    }
    if follow {
        let json = ctx.json;
        follow_from(&path, text.len() as u64, |line| {
            if matches(line) {
                print_record(line, json);
            }
        })
        .await?;
    }
    Ok(())
}

fn print_record(line: &str, json: bool) {
    if json {
        println!("{line}");
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        println!("{line}");
        return;
    };
    let s = |k: &str| super::text(&v[k]);
    if v["kind"] == "request" {
        println!(
            "{} {} {} {} {} {} {} {}us",
            s("ts"),
            s("app"),
            s("verdict"),
            s("operation"),
            s("schema"),
            s("code"),
            s("reason"),
            s("latency_us")
        );
    } else {
        println!(
            "{} {} event {} {}",
            s("ts"),
            s("app"),
            s("event"),
            s("detail")
        );
    }
}

/// Prints a file (lines passing `keep`), then, with `follow`, what is appended to it.
pub async fn print_file(path: &Path, follow: bool, keep: impl Fn(&str) -> bool) -> Result<()> {
    let text = match tokio::fs::read(path).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    for line in text.lines().filter(|l| keep(l)) {
        println!("{line}");
    }
    if follow {
        follow_from(path, text.len() as u64, |line| {
            if keep(line) {
                println!("{line}");
            }
        })
        .await?;
    }
    Ok(())
}

async fn follow_from(path: &Path, mut offset: u64, mut each: impl FnMut(&str)) -> Result<()> {
    loop {
        let len = tokio::fs::metadata(path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if len < offset {
            offset = 0; // rotated or truncated
        }
        if len > offset {
            let mut file = tokio::fs::File::open(path).await?;
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            while reader.read_line(&mut line).await? > 0 {
                if !line.ends_with('\n') {
                    break;
                }
                offset += line.len() as u64;
                each(line.trim_end());
                line.clear();
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
