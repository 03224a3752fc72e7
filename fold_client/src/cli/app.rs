//! `fold_client app ...`.

use super::{cell, table, text, Context};
use anyhow::Result;
use fold_client::admin::protocol::{
    AdminCall, AppView, AuthRequest, GrantRequest, InstallRequest, LaunchRequest, LimitsRequest,
    ListRequest, PsRequest, RemoveRequest, RotateRequest, RunRequest, ShowRequest, StopRequest,
    UngrantRequest, WarmRequest,
};
use fold_client::app_limits::LimitSettings;
use fold_ipc::limits::HistoryPolicy;
use serde::Serialize;
use std::time::Duration;

/// Deadline of one ordinary admin request.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `app` subcommands. Each one that talks to the daemon is its request's flags
/// (`fold_client::admin::protocol`), plus what only the CLI uses.
#[derive(Debug, clap::Subcommand)]
pub enum AppCommand {
    /// Install an app: issue its id, token and key, copy its binary, serve its socket.
    Install {
        /// What to install.
        #[command(flatten)]
        request: InstallRequest,
        /// Its share of the node, storage quota and write rate (default: the config's).
        #[command(flatten)]
        node_limits: LimitArgs,
    },
    /// Change an app's share of the node, storage quota or write rate; applies to its
    /// next request. Only the limits given change.
    Limits {
        /// Which app.
        #[command(flatten)]
        request: LimitsRequest,
        /// The limits to change.
        #[command(flatten)]
        node_limits: LimitArgs,
    },
    /// List installed apps.
    List,
    /// Show one app.
    Show(ShowRequest),
    /// Add grants.
    Grant(GrantRequest),
    /// Remove grants.
    Ungrant(UngrantRequest),
    /// Keep COUNT prepared containers of the app (0 for none), so that a launch or run
    /// starts in milliseconds; each is used once, and the pool refills.
    Warm(WarmRequest),
    /// Change how the app authenticates: signed, session (signed, and it may open
    /// sessions) or token; its credentials file says which.
    Auth(AuthRequest),
    /// Issue a new token and key; the old ones stop working at once.
    Rotate(RotateRequest),
    /// Uninstall (stops it first).
    Remove(RemoveRequest),
    /// Start the app in a hardened container (or on the host with `--direct`), supervised:
    /// restarted on failure (bounded, with backoff) unless `--restart never`.
    Launch {
        /// What to launch, and how.
        #[command(flatten)]
        request: LaunchRequest,
        /// Wait for the app to end and return its exit status.
        #[arg(long)]
        wait: bool,
    },
    /// Run the app once as a job: stream its output, kill it at the timeout, return its exit
    /// code (124 when it timed out), remove its container.
    Run {
        /// What to run, and for how long.
        #[command(flatten)]
        request: RunRequest,
        /// Print the app's output as it is, control characters included (for piping); by
        /// default they are shown escaped (`\x1b`).
        #[arg(long)]
        raw: bool,
    },
    /// Stop the app: SIGTERM, then SIGKILL after the grace period.
    Stop(StopRequest),
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
    match cmd {
        AppCommand::Install {
            mut request,
            node_limits,
        } => {
            request.node_limits = node_limits.try_into()?;
            let installed = call(ctx, request).await?;
            print(ctx, &installed)?;
            for w in &installed.warnings {
                eprintln!("WARNING: {}", fold_client::terminal::escape(w));
            }
        }
        AppCommand::Limits {
            mut request,
            node_limits,
        } => {
            request.node_limits = node_limits.try_into()?;
            print(ctx, &call(ctx, request).await?)?;
        }
        AppCommand::List => {
            let list = call(ctx, ListRequest {}).await?;
            if ctx.json {
                println!("{}", super::json(&list)?);
            } else {
                print_list(&list.apps);
            }
        }
        AppCommand::Show(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Grant(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Ungrant(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Warm(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Auth(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Rotate(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Remove(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Launch { request, wait } => {
            return super::run::launch(ctx, request, wait).await
        }
        AppCommand::Run { request, raw } => return super::run::run(ctx, request, raw).await,
        AppCommand::Stop(request) => print(ctx, &call(ctx, request).await?)?,
        AppCommand::Ps => {
            let ps = call(ctx, PsRequest {}).await?;
            if ctx.json {
                println!("{}", super::json(&ps)?);
            } else {
                let rows: Vec<Vec<String>> = ps
                    .apps
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.id.clone(),
                            a.state.clone(),
                            a.sandbox.clone(),
                            cell(a.isolation.as_ref()),
                            a.restarts.to_string(),
                            cell(a.container.as_ref()),
                            a.warm
                                .as_ref()
                                .map_or("-".into(), |w| format!("{}/{}", w.ready, w.target)),
                            cell(a.note.as_ref()),
                        ]
                    })
                    .collect();
                let headers = [
                    "NAME",
                    "ID",
                    "STATE",
                    "SANDBOX",
                    "ISOLATION",
                    "RESTARTS",
                    "CONTAINER",
                    "WARM",
                    "NOTE",
                ];
                table(&headers, &rows);
            }
        }
        AppCommand::Logs { app, follow, raw } => logs(ctx, app, follow, raw).await?,
    }
    Ok(0)
}

/// Sends an ordinary request (deadline [`ADMIN_TIMEOUT`]).
async fn call<R: AdminCall>(ctx: &Context, request: R) -> Result<R::Response> {
    ctx.call(request, ADMIN_TIMEOUT).await
}

/// Prints one answer: `--json`, or one `key  value` line per field.
fn print(ctx: &Context, answer: &impl Serialize) -> Result<()> {
    if ctx.json {
        println!("{}", super::json(answer)?);
    } else {
        print_object(answer)?;
    }
    Ok(())
}

fn print_list(apps: &[AppView]) {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let grants: Vec<String> = a.grants.iter().map(ToString::to_string).collect();
            vec![
                a.name.clone(),
                a.id.clone(),
                a.state.clone(),
                cell(a.sandbox.as_ref()),
                grants.join(","),
            ]
        })
        .collect();
    table(&["NAME", "ID", "STATE", "SANDBOX", "GRANTS"], &rows);
}

/// Prints an answer's fields as aligned `key  value` lines, sorted by key; a nested object
/// as one line of JSON. Warnings are left out: they go to stderr, after the object.
fn print_object(answer: &impl Serialize) -> Result<()> {
    let serde_json::Value::Object(map) = serde_json::to_value(answer)? else {
        anyhow::bail!("the daemon's answer is not an object");
    };
    let width = map.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in map.iter().filter(|(k, _)| *k != "warnings") {
        let shown = if v.is_object() {
            fold_client::terminal::escape_json(&v.to_string()).into_owned()
        } else {
            text(v)
        };
        println!("{k:<width$}  {shown}");
    }
    Ok(())
}

/// `app logs`: the daemon says where the app's log is; the CLI reads the file itself (the
/// admin protocol has one answer per request, no stream to follow).
async fn logs(ctx: &Context, app: String, follow: bool, raw: bool) -> Result<()> {
    let shown = call(ctx, ShowRequest { app }).await?;
    super::audit::print_file(&shown.app.log, follow, raw).await
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
    #[arg(long, value_parser = parse_limit_size)]
    max_bytes: Option<u64>,
    /// Storage quota: live records the app created; 0 for none.
    #[arg(long)]
    max_records: Option<u64>,
    /// Versions kept per record, the current one included; 0 keeps all.
    #[arg(long)]
    max_versions: Option<u32>,
    /// Past --max-versions: `prune` the oldest (default) or `refuse` the write.
    #[arg(long, value_parser = parse_history)]
    history: Option<HistoryPolicy>,
    /// Writes per second; 0 for unlimited.
    #[arg(long)]
    write_rate: Option<u32>,
    /// Writes allowed at once after a pause.
    #[arg(long)]
    write_burst: Option<u32>,
    /// Request bytes the app may have in flight over all its connections, e.g. 16m.
    #[arg(long, value_parser = parse_limit_size)]
    bytes_in_flight: Option<u64>,
}

/// The settings the flags name, checked as the daemon checks them.
impl TryFrom<LimitArgs> for LimitSettings {
    type Error = anyhow::Error;

    fn try_from(args: LimitArgs) -> Result<LimitSettings> {
        let settings = LimitSettings {
            share_reads: args.share_reads,
            share_writes: args.share_writes,
            max_bytes: args.max_bytes,
            max_records: args.max_records,
            max_versions: args.max_versions,
            history: args.history,
            write_rate: args.write_rate,
            write_burst: args.write_burst,
            bytes_in_flight: args.bytes_in_flight,
        };
        settings.validate().map_err(anyhow::Error::msg)?;
        Ok(settings)
    }
}

/// A size limit: as [`fold_client::admin::parse_size`] takes it, or `0` / `none`.
fn parse_limit_size(text: &str) -> Result<u64, String> {
    match text.trim() {
        "0" | "none" => Ok(0),
        t => fold_client::admin::parse_size(t),
    }
}

/// `prune` or `refuse`.
fn parse_history(text: &str) -> Result<HistoryPolicy, String> {
    match text {
        "prune" => Ok(HistoryPolicy::Prune),
        "refuse" => Ok(HistoryPolicy::Refuse),
        other => Err(format!("{other:?}: expected prune or refuse")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `fold_client app ...` alone, to check what clap makes of the flags.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        app: AppCommand,
    }

    fn parse(args: &[&str]) -> Result<AppCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("app").chain(args.iter().copied())).map(|c| c.app)
    }

    #[test]
    fn install_flags_become_typed_values() {
        let AppCommand::Install {
            request,
            node_limits,
        } = parse(&[
            "install",
            "notes",
            "--binary",
            "bin/notes",
            "--grant",
            "query:post",
            "--grant",
            "mutation:*",
            "--auth",
            "token",
            "--memory",
            "256m",
            "--cpus",
            "0.5",
            "--max-bytes",
            "none",
            "--history",
            "refuse",
            "--bytes-in-flight",
            "16m",
        ])
        .unwrap()
        else {
            panic!("not an install");
        };
        assert!(request.binary.is_absolute(), "{}", request.binary.display());
        assert!(request.binary.ends_with("bin/notes"));
        let grants: Vec<String> = request.grants.iter().map(ToString::to_string).collect();
        assert_eq!(grants, ["query:post", "mutation:*"]);
        assert_eq!(request.auth, Some(fold_client::registry::AuthMode::Token));
        assert_eq!(request.memory_bytes, Some(256 << 20));
        assert_eq!(request.cpus, Some(0.5));
        let settings = LimitSettings::try_from(node_limits).unwrap();
        assert_eq!(settings.max_bytes, Some(0));
        assert_eq!(settings.history, Some(HistoryPolicy::Refuse));
        assert_eq!(settings.bytes_in_flight, Some(16 << 20));
    }

    #[test]
    fn bad_values_are_refused_by_clap() {
        for args in [
            &["install", "n", "--binary", "/b", "--grant", "nonsense"][..],
            &["install", "n", "--binary", "/b", "--auth", "password"],
            &["install", "n", "--binary", "/b", "--memory", "lots"],
            &["install", "n", "--binary", "/b", "--cpus", "0"],
            &["limits", "n", "--history", "forget"],
            &["launch", "n", "--restart", "always"],
            &["launch", "n", "--max-lifetime", "1d"],
            &["run", "n", "--timeout", "0"],
            &["stop", "n", "--grace", "soon"],
            &["grant", "n"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn zero_limits_are_refused_as_the_daemon_refuses_them() {
        let AppCommand::Limits { node_limits, .. } =
            parse(&["limits", "n", "--share-reads", "0"]).unwrap()
        else {
            panic!("not limits");
        };
        let error = LimitSettings::try_from(node_limits).unwrap_err();
        assert_eq!(error.to_string(), "share_reads must be at least 1");
    }

    #[test]
    fn launch_and_run_flags() {
        use fold_client::admin::protocol::RestartMode;
        let AppCommand::Launch { request, wait } = parse(&[
            "launch",
            "n",
            "--restart",
            "never",
            "--max-lifetime",
            "90s",
            "--wait",
            "--",
            "a",
            "--b",
        ])
        .unwrap() else {
            panic!("not a launch");
        };
        assert!(wait);
        assert_eq!(request.restart, Some(RestartMode::Never));
        assert_eq!(request.max_lifetime, Some(Duration::from_secs(90)));
        assert_eq!(request.args, ["a", "--b"]);
        let AppCommand::Launch { request, .. } =
            parse(&["launch", "n", "--restart", "on_failure"]).unwrap()
        else {
            panic!("not a launch");
        };
        assert_eq!(request.restart, Some(RestartMode::OnFailure));
        let AppCommand::Run { request, raw } = parse(&["run", "n"]).unwrap() else {
            panic!("not a run");
        };
        assert!(!raw);
        assert_eq!(request.timeout, Duration::from_secs(30), "the default");
        let AppCommand::Stop(stop) = parse(&["stop", "n", "--grace", "0"]).unwrap() else {
            panic!("not a stop");
        };
        assert_eq!(stop.grace, Some(Duration::ZERO));
        let AppCommand::Stop(stop) = parse(&["stop", "n", "--grace", "2.5"]).unwrap() else {
            panic!("not a stop");
        };
        assert_eq!(stop.grace, Some(Duration::from_millis(2500)));
    }
}
