//! `fold_client app ...`.

use super::{table, text, Context};
use anyhow::{Context as _, Result};
use fold_client::admin::AdminRequest;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `app` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AppCommand {
    /// Install an app: issue its id, token and key, copy its binary, serve its socket.
    Install {
        /// The app's name.
        name: String,
        /// The app's binary (static, for containers).
        #[arg(long)]
        binary: PathBuf,
        /// Container image (default alpine:latest).
        #[arg(long)]
        image: Option<String>,
        /// A grant OPERATION:SCHEMA (`*` for any); repeat for more.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// `signed` (default) or `token` (accept unsigned reference-era requests; audited).
        #[arg(long)]
        auth: Option<String>,
        /// A named network the app may use (default: none).
        #[arg(long)]
        network: Option<String>,
        /// Memory limit, e.g. 256m.
        #[arg(long)]
        memory: Option<String>,
        /// CPU limit in cores, e.g. 1 or 0.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// Process limit.
        #[arg(long)]
        pids: Option<u64>,
    },
    /// List installed apps.
    List,
    /// Show one app.
    Show {
        /// Name or id.
        app: String,
    },
    /// Add grants.
    Grant {
        /// Name or id.
        app: String,
        /// Grants OPERATION:SCHEMA.
        #[arg(required = true)]
        grants: Vec<String>,
    },
    /// Remove grants.
    Ungrant {
        /// Name or id.
        app: String,
        /// Grants OPERATION:SCHEMA.
        #[arg(required = true)]
        grants: Vec<String>,
    },
    /// Issue a new token and key; the old ones stop working at once.
    Rotate {
        /// Name or id.
        app: String,
    },
    /// Uninstall (stops it first).
    Remove {
        /// Name or id.
        app: String,
    },
    /// Start the app.
    Launch {
        /// Name or id.
        app: String,
        /// Dev mode: run on the host, NOT sandboxed.
        #[arg(long)]
        direct: bool,
        /// Wait for the app to exit and return its exit status.
        #[arg(long)]
        wait: bool,
        /// Arguments for the app.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop the app: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Name or id.
        app: String,
        /// Grace period in seconds.
        #[arg(long)]
        grace: Option<f64>,
    },
    /// States of launched apps.
    Ps,
    /// Print the app's log.
    Logs {
        /// Name or id.
        app: String,
        /// Keep printing as the log grows.
        #[arg(short, long)]
        follow: bool,
    },
}

/// Runs an `app` subcommand; returns the process exit code.
pub async fn app(ctx: &Context, cmd: AppCommand) -> Result<i32> {
    let request = match cmd {
        AppCommand::Install {
            name,
            binary,
            image,
            grants,
            auth,
            network,
            memory,
            cpus,
            pids,
        } => {
            let binary = std::path::absolute(&binary)
                .with_context(|| format!("cannot resolve {}", binary.display()))?;
            AdminRequest::Install {
                name,
                binary,
                grants,
                image,
                auth,
                network,
                memory,
                cpus,
                pids,
            }
        }
        AppCommand::List => AdminRequest::List,
        AppCommand::Show { app } => AdminRequest::Show { app },
        AppCommand::Grant { app, grants } => AdminRequest::Grant { app, grants },
        AppCommand::Ungrant { app, grants } => AdminRequest::Ungrant { app, grants },
        AppCommand::Rotate { app } => AdminRequest::Rotate { app },
        AppCommand::Remove { app } => AdminRequest::Remove { app },
        AppCommand::Launch {
            app,
            direct,
            wait,
            args,
        } => return launch(ctx, app, direct, wait, args).await,
        AppCommand::Stop { app, grace } => AdminRequest::Stop {
            app,
            grace_ms: grace.map(|g| (g * 1000.0) as u64),
        },
        AppCommand::Ps => AdminRequest::Ps,
        AppCommand::Logs { app, follow } => return logs(ctx, &app, follow).await.map(|()| 0),
    };
    let list = matches!(request, AdminRequest::List | AdminRequest::Ps);
    let result = ctx.admin(&request, ADMIN_TIMEOUT).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else if list {
        print_list(&result);
    } else {
        print_object(&result);
    }
    Ok(0)
}

fn print_list(result: &Value) {
    let rows: Vec<Vec<String>> = result
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    ["name", "id", "state", "sandbox", "grants"]
                        .iter()
                        .map(|k| text(&a[*k]))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["NAME", "ID", "STATE", "SANDBOX", "GRANTS"], &rows);
}

fn print_object(result: &Value) {
    if let Some(map) = result.as_object() {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in map {
            let shown = if v.is_object() {
                v.to_string()
            } else {
                text(v)
            };
            println!("{k:<width$}  {shown}");
        }
    }
}

async fn launch(
    ctx: &Context,
    app: String,
    direct: bool,
    wait: bool,
    args: Vec<String>,
) -> Result<i32> {
    if direct {
        eprintln!("WARNING: --direct runs {app} on this host, NOT SANDBOXED (dev mode)");
    }
    let result = ctx
        .admin(
            &AdminRequest::Launch {
                app: app.clone(),
                direct,
                args,
            },
            ADMIN_TIMEOUT,
        )
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let sandbox = if result["sandboxed"] == Value::Bool(true) {
            text(&result["sandbox"])
        } else {
            "direct (NOT SANDBOXED)".into()
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

/// `exited(3)` -> 3; `stopped` -> 0 ... anything else abnormal -> 1.
fn exit_code(state: &str) -> i32 {
    if let Some(code) = state
        .strip_prefix("exited(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return code.parse().unwrap_or(1);
    }
    i32::from(state != "stopped")
}

async fn logs(ctx: &Context, app: &str, follow: bool) -> Result<()> {
    let shown = ctx
        .admin(
            &AdminRequest::Show {
                app: app.to_string(),
            },
            ADMIN_TIMEOUT,
        )
        .await?;
    let path = PathBuf::from(text(&shown["log"]));
    super::audit::print_file(&path, follow, |_| true).await
}
