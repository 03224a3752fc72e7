//! `fold_client app ...`.

use super::{table, text, Context};
use anyhow::{Context as _, Result};
use fold_client::admin::AdminRequest;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Deadline of one ordinary admin request.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

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
        /// Place the app on the host (dev mode, NOT sandboxed): any process of its uid may
        /// connect. By default only a process of its running container may.
        #[arg(long)]
        direct: bool,
        /// Its share of the node, storage quota and write rate (default: the config's).
        #[command(flatten)]
        node_limits: LimitArgs,
    },
    /// Change an app's share of the node, storage quota or write rate; applies to its
    /// next request. Only the limits given change.
    Limits {
        /// Name or id.
        app: String,
        /// The limits to change.
        #[command(flatten)]
        node_limits: LimitArgs,
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
    /// Start the app in a hardened container (or on the host with `--direct`), supervised:
    /// restarted on failure (bounded, with backoff) unless `--restart never`.
    Launch {
        /// Name or id.
        app: String,
        /// Dev mode: run on the host, NOT sandboxed.
        #[arg(long)]
        direct: bool,
        /// Wait for the app to end and return its exit status.
        #[arg(long)]
        wait: bool,
        /// Container image for this launch instead of the app's.
        #[arg(long)]
        image: Option<String>,
        /// `on-failure` (default) or `never`.
        #[arg(long)]
        restart: Option<String>,
        /// Most restarts in a row after failures.
        #[arg(long)]
        max_restarts: Option<u32>,
        /// Kill the app (no restart) once it has run this long, e.g. 1h or 90s.
        #[arg(long)]
        max_lifetime: Option<String>,
        /// Arguments for the app.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the app once as a job: stream its output, kill it at the timeout, return its exit
    /// code (124 when it timed out), remove its container.
    Run {
        /// Name or id.
        app: String,
        /// Kill the app after this long, e.g. 30s, 5m.
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// Dev mode: run on the host, NOT sandboxed.
        #[arg(long)]
        direct: bool,
        /// Container image for this run instead of the app's.
        #[arg(long)]
        image: Option<String>,
        /// Print the app's output as it is, control characters included (for piping); by
        /// default they are shown escaped (`\x1b`).
        #[arg(long)]
        raw: bool,
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
    /// States of launched apps: starting, running, exited(code), oom_killed, restarting,
    /// stopped, failed.
    Ps,
    /// Print the app's log.
    Logs {
        /// Name or id.
        app: String,
        /// Keep printing as the log grows.
        #[arg(short, long)]
        follow: bool,
        /// Print the log as it is, control characters included (for piping); by default
        /// they are shown escaped (`\x1b`).
        #[arg(long)]
        raw: bool,
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
            direct,
            node_limits,
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
                direct,
                node_limits: node_limits.settings()?,
            }
        }
        AppCommand::Limits { app, node_limits } => AdminRequest::Limits {
            app,
            node_limits: node_limits.settings()?,
        },
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
            image,
            restart,
            max_restarts,
            max_lifetime,
            args,
        } => {
            let max_lifetime_ms = match max_lifetime {
                Some(text) => Some(millis(&text)?),
                None => None,
            };
            let request = AdminRequest::LaunchWith {
                app,
                direct,
                args,
                image,
                restart,
                max_restarts,
                max_lifetime_ms,
            };
            return super::run::launch(ctx, request, wait).await;
        }
        AppCommand::Run {
            app,
            timeout,
            direct,
            image,
            raw,
            args,
        } => {
            let request = AdminRequest::Run {
                app,
                direct,
                args,
                image,
                timeout_ms: millis(&timeout)?,
            };
            return super::run::run(ctx, request, raw).await;
        }
        AppCommand::Stop { app, grace } => AdminRequest::Stop {
            app,
            grace_ms: grace.map(|g| (g * 1000.0) as u64),
        },
        AppCommand::Ps => AdminRequest::Ps,
        AppCommand::Logs { app, follow, raw } => {
            return logs(ctx, &app, follow, raw).await.map(|()| 0)
        }
    };
    let list = matches!(request, AdminRequest::List | AdminRequest::Ps);
    let ps = matches!(request, AdminRequest::Ps);
    let result = ctx.admin(&request, ADMIN_TIMEOUT).await?;
    if ctx.json {
        println!("{}", super::json(&result)?);
    } else if list {
        print_list(&result, ps);
    } else {
        print_object(&result);
    }
    for w in result["warnings"].as_array().into_iter().flatten() {
        eprintln!("WARNING: {}", text(w));
    }
    Ok(0)
}

fn millis(text: &str) -> Result<u64> {
    let d = fold_client::admin::parse_duration(text).map_err(anyhow::Error::msg)?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn print_list(result: &Value, ps: bool) {
    let keys: &[&str] = if ps {
        &[
            "name",
            "id",
            "state",
            "sandbox",
            "restarts",
            "container",
            "note",
        ]
    } else {
        &["name", "id", "state", "sandbox", "grants"]
    };
    let rows: Vec<Vec<String>> = result
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| keys.iter().map(|k| text(&a[*k])).collect())
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    table(&headers, &rows);
}

fn print_object(result: &Value) {
    if let Some(map) = result.as_object() {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        // Warnings go to stderr, after the object.
        for (k, v) in map.iter().filter(|(k, _)| *k != "warnings") {
            let shown = if v.is_object() {
                fold_client::terminal::escape_json(&v.to_string()).into_owned()
            } else {
                text(v)
            };
            println!("{k:<width$}  {shown}");
        }
    }
}

async fn logs(ctx: &Context, app: &str, follow: bool, raw: bool) -> Result<()> {
    let shown = ctx
        .admin(
            &AdminRequest::Show {
                app: app.to_string(),
            },
            ADMIN_TIMEOUT,
        )
        .await?;
    let path = PathBuf::from(shown["log"].as_str().unwrap_or_default());
    super::audit::print_file(&path, follow, raw).await
}

/// Flags setting an app's node limits; each one not given keeps its current value (at
/// install: the config's default). Quotas and the write rate take 0 for unlimited.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Most reads of the app the node runs at once while other apps wait.
    #[arg(long)]
    share_reads: Option<u32>,
    /// Most writes of the app queued at the node's writer while other apps wait.
    #[arg(long)]
    share_writes: Option<u32>,
    /// Storage quota: bytes of record data (current and kept versions), e.g. 256m; 0 for none.
    #[arg(long)]
    max_bytes: Option<String>,
    /// Storage quota: live records the app created; 0 for none.
    #[arg(long)]
    max_records: Option<u64>,
    /// Versions kept per record, the current one included; 0 keeps all.
    #[arg(long)]
    max_versions: Option<u32>,
    /// Past --max-versions: `prune` the oldest (default) or `refuse` the write.
    #[arg(long)]
    history: Option<String>,
    /// Writes per second; 0 for unlimited.
    #[arg(long)]
    write_rate: Option<u32>,
    /// Writes allowed at once after a pause.
    #[arg(long)]
    write_burst: Option<u32>,
    /// Request bytes the app may have in flight over all its connections, e.g. 16m.
    #[arg(long)]
    bytes_in_flight: Option<String>,
}

impl LimitArgs {
    fn settings(&self) -> Result<fold_client::app_limits::LimitSettings> {
        let size = |flag: &str, text: &Option<String>| -> Result<Option<u64>> {
            match text.as_deref().map(str::trim) {
                None => Ok(None),
                Some("0" | "none") => Ok(Some(0)),
                Some(t) => fold_client::admin::parse_size(t)
                    .map(Some)
                    .map_err(|m| anyhow::anyhow!("--{flag}: {m}")),
            }
        };
        let history = match self.history.as_deref() {
            None => None,
            Some("prune") => Some(fold_ipc::limits::HistoryPolicy::Prune),
            Some("refuse") => Some(fold_ipc::limits::HistoryPolicy::Refuse),
            Some(other) => anyhow::bail!("--history {other:?}: expected prune or refuse"),
        };
        let settings = fold_client::app_limits::LimitSettings {
            share_reads: self.share_reads,
            share_writes: self.share_writes,
            max_bytes: size("max-bytes", &self.max_bytes)?,
            max_records: self.max_records,
            max_versions: self.max_versions,
            history,
            write_rate: self.write_rate,
            write_burst: self.write_burst,
            bytes_in_flight: size("bytes-in-flight", &self.bytes_in_flight)?,
        };
        settings.validate().map_err(|m| anyhow::anyhow!("{m}"))?;
        Ok(settings)
    }
}
