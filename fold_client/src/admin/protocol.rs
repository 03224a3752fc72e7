//! The admin protocol: one request type per command, one response type per request, shared
//! by the daemon (which answers them) and the CLI (which sends them and prints the answers).
//!
//! A request travels as one JSON object tagged by `cmd` (`{"cmd":"show","app":"notes"}`),
//! an answer as the envelope [`AdminReply`]. [`AdminCall`] ties each request type to its
//! response type, so neither side ever reads an answer by key.
//!
//! The request types of CLI commands derive `clap::Args` as well: a command's flags are its
//! request's fields, parsed by clap into typed values (grants, sizes, durations, the restart
//! policy), so the shape of a request is written once.

use super::{parse_absolute_path, parse_cpus, parse_duration, parse_grace, parse_size};
use crate::app_limits::LimitSettings;
use crate::policy::Grant;
use crate::registry::{AuthMode, Placement};
use crate::sandbox::{Isolation, IsolationRequest};
use crate::supervisor::RestartPolicy;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// A request with a known response type: what [`crate::admin::AdminClient::call`] sends
/// and what it decodes the answer into.
pub trait AdminCall: Into<AdminRequest> {
    /// The `result` of a successful answer.
    type Response: Serialize + DeserializeOwned;
}

/// Declares [`AdminRequest`] with one variant per request type, and each type's
/// `From` and [`AdminCall`] impls, from one list, so the three cannot drift.
macro_rules! admin_requests {
    ($($(#[$doc:meta])* $variant:ident($request:ident) -> $response:ty;)*) => {
        /// A command from the CLI, tagged by `cmd` on the wire (the variant's name in
        /// snake_case).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "cmd", rename_all = "snake_case")]
        pub enum AdminRequest {
            $($(#[$doc])* $variant($request),)*
        }

        $(
            impl From<$request> for AdminRequest {
                fn from(request: $request) -> AdminRequest {
                    AdminRequest::$variant(request)
                }
            }

            impl AdminCall for $request {
                type Response = $response;
            }
        )*
    };
}

admin_requests! {
    /// Daemon status.
    Status(StatusRequest) -> StatusResponse;
    /// Install an app.
    Install(InstallRequest) -> InstallResponse;
    /// Change an app's node limits (only those set).
    Limits(LimitsRequest) -> AppView;
    /// List apps.
    List(ListRequest) -> ListResponse;
    /// One app in detail.
    Show(ShowRequest) -> ShowResponse;
    /// Add grants.
    Grant(GrantRequest) -> AppView;
    /// Remove grants.
    Ungrant(UngrantRequest) -> AppView;
    /// Set how many prepared containers an app keeps.
    Warm(WarmRequest) -> AppView;
    /// Change how an app authenticates.
    Auth(AuthRequest) -> AppView;
    /// New token and key.
    Rotate(RotateRequest) -> AppView;
    /// Uninstall.
    Remove(RemoveRequest) -> RemoveResponse;
    /// Start the app, supervised.
    Launch(LaunchRequest) -> LaunchResponse;
    /// Run the app once and answer when it is done.
    Run(RunRequest) -> RunResponse;
    /// Run a binary or script once as a throwaway app, then remove the app.
    Job(JobRequest) -> RunResponse;
    /// Delete what a one-off job left for its client to read.
    ForgetJob(ForgetJobRequest) -> ForgetJobResponse;
    /// Stop the app.
    Stop(StopRequest) -> StateResponse;
    /// Wait until the app is no longer running.
    Wait(WaitRequest) -> StateResponse;
    /// States of launched apps.
    Ps(PsRequest) -> PsResponse;
    /// Follow events as they happen: one answer per event, until the client leaves.
    Events(EventsRequest) -> EventView;
}

/// The daemon's answer to one request: `result` when `ok`, else `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminReply<T> {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The command's result (`null` when it failed).
    pub result: Option<T>,
    /// What went wrong and what to do (`None` when it succeeded).
    pub error: Option<String>,
}

impl<T> AdminReply<T> {
    /// The answer to a command that failed with `error`.
    pub fn failed(error: String) -> AdminReply<T> {
        AdminReply {
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

impl<T, E: std::fmt::Display> From<Result<T, E>> for AdminReply<T> {
    fn from(result: Result<T, E>) -> AdminReply<T> {
        match result {
            Ok(result) => AdminReply {
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(e) => AdminReply::failed(e.to_string()),
        }
    }
}

/// Durations on the wire: whole milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }

    /// `Option<Duration>` as milliseconds or `null`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
        }
    }
}

/// Asks for the daemon's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {}

/// Where the daemon keeps its state and which engine it uses: what the CLI needs to agree
/// with it on paths and settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Root of the per-app socket directories.
    pub socket_root: PathBuf,
    /// Installed apps.
    pub apps: usize,
    /// The node, as configured (debug form).
    pub node: String,
    /// The live audit file.
    pub audit: PathBuf,
    /// The daemon's process id.
    pub pid: u32,
    /// The Docker engine the daemon uses.
    pub docker_host: String,
    /// The label value marking this daemon's containers.
    pub daemon_label: String,
    /// Deadline of one engine request.
    #[serde(rename = "engine_timeout_ms", with = "millis")]
    pub engine_timeout: Duration,
    /// Deadline of one image pull.
    #[serde(rename = "pull_timeout_ms", with = "millis")]
    pub pull_timeout: Duration,
    /// Grace between SIGTERM and SIGKILL when the daemon stops an app.
    #[serde(rename = "stop_grace_ms", with = "millis")]
    pub stop_grace: Duration,
    /// Where one-off jobs keep their output for their client (`<run id>/stdout`, ...).
    pub jobs_dir: PathBuf,
}

/// Installs an app: the flags of `app install` (the node limits come from their own
/// flags, `LimitArgs` in the CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// The app's name.
    pub name: String,
    /// The app's binary (static, for containers).
    #[arg(long, value_parser = parse_absolute_path)]
    pub binary: PathBuf,
    /// Container image (default alpine:latest).
    #[arg(long)]
    #[serde(default)]
    pub image: Option<String>,
    /// A grant OPERATION:SCHEMA (`*` for any); repeat for more.
    #[arg(long = "grant")]
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// `signed` (default), `session` (signed, and it may open sessions: one signed hello per
    /// connection, protocol v2) or `token` (accept unsigned reference-era requests; audited).
    #[arg(long)]
    #[serde(default)]
    pub auth: Option<AuthMode>,
    /// A named network the app may use (default: none).
    #[arg(long)]
    #[serde(default)]
    pub network: Option<String>,
    /// Memory limit, e.g. 256m.
    #[arg(long = "memory", value_parser = parse_size)]
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores, e.g. 1 or 0.5.
    #[arg(long, value_parser = parse_cpus)]
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Process limit.
    #[arg(long)]
    #[serde(default)]
    pub pids: Option<u64>,
    /// Place the app on the host (dev mode, NOT sandboxed): any process of its uid may
    /// connect. By default only a process of its running container may.
    #[arg(long)]
    #[serde(default)]
    pub direct: bool,
    /// Isolation tier of its containers: `container` (runc), `gvisor`, or `auto` (the
    /// strongest the engine offers); default from the config (`container`).
    #[arg(long, conflicts_with = "direct")]
    #[serde(default)]
    pub isolation: Option<IsolationRequest>,
    /// Prepared containers to keep, so that a launch or run starts in milliseconds
    /// (default from the config, `warm_pool`: 0).
    #[arg(long, conflicts_with = "direct")]
    #[serde(default)]
    pub warm: Option<u32>,
    /// Node limits set for this app; the rest come from the config.
    #[arg(skip)]
    #[serde(default)]
    pub node_limits: LimitSettings,
}

impl InstallRequest {
    /// An install of `name` from `binary` with every option at its default (no grants,
    /// signed requests, placed in a container).
    pub fn new(name: impl Into<String>, binary: impl Into<PathBuf>) -> InstallRequest {
        InstallRequest {
            name: name.into(),
            binary: binary.into(),
            image: None,
            grants: Vec::new(),
            auth: None,
            network: None,
            memory_bytes: None,
            cpus: None,
            pids: None,
            direct: false,
            isolation: None,
            warm: None,
            node_limits: LimitSettings::default(),
        }
    }
}

/// The installed app, and what its user should know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallResponse {
    /// The app.
    #[serde(flatten)]
    pub app: AppView,
    /// Warnings, e.g. a glibc-dynamic binary for a musl image.
    pub warnings: Vec<String>,
}

/// Changes an app's node limits: the app of `app limits` (the limits come from their own
/// flags, `LimitArgs` in the CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Name or id.
    pub app: String,
    /// The limits to change; those not set keep their value.
    #[arg(skip)]
    pub node_limits: LimitSettings,
}

/// Lists the installed apps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {}

/// The installed apps (a JSON array on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ListResponse {
    /// One view per app, in registry order.
    pub apps: Vec<AppView>,
}

/// Shows one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ShowRequest {
    /// Name or id.
    pub app: String,
}

/// One app in detail, with what its records take on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShowResponse {
    /// The app.
    #[serde(flatten)]
    pub app: AppView,
    /// Its usage on the node.
    pub usage: UsageView,
}

/// Adds grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Name or id.
    pub app: String,
    /// Grants OPERATION:SCHEMA.
    #[arg(required = true)]
    pub grants: Vec<Grant>,
}

/// Removes grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct UngrantRequest {
    /// Name or id.
    pub app: String,
    /// Grants OPERATION:SCHEMA.
    #[arg(required = true)]
    pub grants: Vec<Grant>,
}

/// Sets how many prepared (warm) containers an app keeps: each created and started with
/// exactly the app's container, its binary held until a launch takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct WarmRequest {
    /// Name or id.
    pub app: String,
    /// How many (0 removes them).
    pub count: u32,
}

/// Changes how an app authenticates: `signed` (every request signed), `session` (as
/// signed, and it may open sessions: one signed hello per connection) or `token`. Open
/// sessions end when the app may no longer open them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    /// Name or id.
    pub app: String,
    /// `signed`, `session` or `token`.
    pub mode: AuthMode,
}

/// Issues a new token and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Name or id.
    pub app: String,
}

/// Uninstalls an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// Name or id.
    pub app: String,
}

/// Which app was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoveResponse {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Always `true`: kept so the answer says what happened.
    pub removed: bool,
}

/// Whether a launched app is restarted when it fails: the `--restart` of `app launch`.
/// The most restarts in a row come separately (`--max-restarts`, else the config's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Never restarted.
    #[value(alias = "no")]
    #[serde(alias = "no")]
    Never,
    /// Restarted after a non-zero exit or an OOM kill, with backoff.
    #[value(alias = "on_failure")]
    #[serde(alias = "on_failure")]
    OnFailure,
}

impl RestartMode {
    /// The policy this mode names, with at most `max_restarts` restarts in a row.
    pub fn policy(self, max_restarts: u32) -> RestartPolicy {
        match self {
            RestartMode::Never => RestartPolicy::Never,
            RestartMode::OnFailure => RestartPolicy::OnFailure { max_restarts },
        }
    }
}

/// Starts an app, supervised; options not given take the daemon's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// Name or id.
    pub app: String,
    /// Dev mode: run on the host, NOT sandboxed.
    #[arg(long)]
    #[serde(default)]
    pub direct: bool,
    /// Container image for this launch instead of the app's.
    #[arg(long)]
    #[serde(default)]
    pub image: Option<String>,
    /// `on-failure` (default) or `never`.
    #[arg(long, hide_possible_values = true)]
    #[serde(default)]
    pub restart: Option<RestartMode>,
    /// Most restarts in a row after failures.
    #[arg(long)]
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// Kill the app (no restart) once it has run this long, e.g. 1h or 90s.
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, rename = "max_lifetime_ms", with = "millis::option")]
    pub max_lifetime: Option<Duration>,
    /// Arguments for the app.
    #[arg(last = true)]
    #[serde(default)]
    pub args: Vec<String>,
}

impl LaunchRequest {
    /// A launch of `app` with every option at the daemon's default.
    pub fn new(app: impl Into<String>) -> LaunchRequest {
        LaunchRequest {
            app: app.into(),
            ..LaunchRequest::default()
        }
    }
}

/// Where a launched app runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchResponse {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its backend (`docker`, `direct`, ...).
    pub sandbox: String,
    /// Whether that backend sandboxes it (everything but `direct`).
    pub sandboxed: bool,
    /// Its state right after the start, as `app ps` shows it.
    pub state: String,
    /// Its container (Docker only).
    pub container: Option<String>,
    /// The tier its container runs under (containers only).
    pub isolation: Option<Isolation>,
    /// What the user should know (limits not enforced, binary/image mismatch).
    pub warnings: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// Runs an app once: start, wait at most `timeout`, stop, remove.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Name or id.
    pub app: String,
    /// Kill the app after this long, e.g. 30s, 5m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// Dev mode: run on the host, NOT sandboxed.
    #[arg(long)]
    #[serde(default)]
    pub direct: bool,
    /// Container image for this run instead of the app's.
    #[arg(long)]
    #[serde(default)]
    pub image: Option<String>,
    /// Run the app's binary as a script of this program (`python3` runs `python3
    /// /app/BINARY ARGS`), looked up in the image's PATH or given as an absolute path.
    #[arg(long)]
    #[serde(default)]
    pub interpreter: Option<String>,
    /// Bytes of stdout, and of stderr, kept whole; output past them is dropped and counted
    /// (default: the daemon's `job_output_cap_bytes`, 8 MiB).
    #[arg(long, value_name = "BYTES")]
    #[serde(default)]
    pub output_cap: Option<u64>,
    /// Names the directory the run's output is kept in (8 to 32 lowercase hex digits), so
    /// that a client can follow the files while the job runs; the daemon picks one when
    /// it is missing.
    #[arg(skip)]
    #[serde(default)]
    pub run_id: Option<String>,
    /// Arguments for the app.
    #[arg(last = true)]
    #[serde(default)]
    pub args: Vec<String>,
}

/// Runs `binary` once as a throwaway app (`fold_client run`): a fresh identity and uid, no
/// grants unless given, the hardening of any app; the app, its uid, socket and container
/// are removed afterwards. Jobs beyond the daemon's `max_concurrent_jobs` wait their turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The static binary, or the script (its `#!` interpreter comes from the image), to run.
    #[arg(value_parser = parse_absolute_path)]
    pub binary: PathBuf,
    /// Container image (default: the daemon's).
    #[arg(long)]
    #[serde(default)]
    pub image: Option<String>,
    /// Run the file as a script of this program (`--interpreter python3`: `python3
    /// /app/FILE ARGS`); by default a script's `#!` line names it.
    #[arg(long)]
    #[serde(default)]
    pub interpreter: Option<String>,
    /// Isolation tier: container, gvisor or auto (default: the daemon's).
    #[arg(long, conflicts_with = "direct")]
    #[serde(default)]
    pub isolation: Option<IsolationRequest>,
    /// Grants, as OPERATION:SCHEMA (repeatable; none by default).
    #[arg(long = "grant")]
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Memory limit, e.g. 256m.
    #[arg(long = "memory", value_parser = parse_size)]
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU limit, e.g. 0.5.
    #[arg(long, value_parser = parse_cpus)]
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Process limit.
    #[arg(long)]
    #[serde(default)]
    pub pids: Option<u64>,
    /// Dev mode: run on the host, NOT sandboxed.
    #[arg(long)]
    #[serde(default)]
    pub direct: bool,
    /// Kill the job after this long, e.g. 30s, 5m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// Bytes of stdout, and of stderr, kept whole (default: the daemon's
    /// `job_output_cap_bytes`).
    #[arg(long, value_name = "BYTES")]
    #[serde(default)]
    pub output_cap: Option<u64>,
    /// Names the run (see [`RunRequest::run_id`]); the app is `job-<run id>`.
    #[arg(skip)]
    #[serde(default)]
    pub run_id: Option<String>,
    /// Arguments for the job.
    #[arg(last = true)]
    #[serde(default)]
    pub args: Vec<String>,
}

/// Deletes the output a one-off job kept for its client (`<logs>/jobs/<run id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetJobRequest {
    /// The job's run id.
    pub run_id: String,
}

/// Whether there was anything to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetJobResponse {
    /// Whether the job's output directory was there (and is gone now).
    pub removed: bool,
}

/// One output stream of a job: where it is kept and how much of it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStream {
    /// The file holding what was kept (the daemon's; replaced by the app's next run).
    pub path: PathBuf,
    /// Bytes kept.
    pub captured: u64,
    /// Bytes written past the cap and dropped.
    pub dropped: u64,
}

/// How a one-shot run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResponse {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its backend (`docker`, `direct`, ...).
    pub sandbox: String,
    /// Whether that backend sandboxes it (everything but `direct`).
    pub sandboxed: bool,
    /// Its final state, as `app ps` shows it.
    pub state: String,
    /// What the state cannot say (a child's OOM kill, a timeout kill), as in `ps`.
    pub note: Option<String>,
    /// Its exit code (137 for an OOM kill; `None` when stopped or failed).
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did (from an exit code of 128 + signal).
    pub signal: Option<i32>,
    /// Whether it was killed for exceeding its memory limit.
    pub oom_killed: bool,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
    /// Bytes of each stream kept whole (the cap).
    pub output_cap: u64,
    /// Its stdout.
    pub stdout: JobStream,
    /// Its stderr.
    pub stderr: JobStream,
    /// How long it ran.
    #[serde(rename = "duration_ms", with = "millis")]
    pub duration: Duration,
    /// Its container (Docker only).
    pub container: Option<String>,
    /// The tier its container runs under (containers only).
    pub isolation: Option<Isolation>,
    /// What the user should know (limits not enforced, binary/image mismatch).
    pub warnings: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// Stops an app: SIGTERM, then SIGKILL after the grace period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Name or id.
    pub app: String,
    /// Grace period, e.g. 10s or 500ms (a plain number is seconds; 0 kills at once).
    #[arg(long, value_parser = parse_grace)]
    #[serde(default, rename = "grace_ms", with = "millis::option")]
    pub grace: Option<Duration>,
}

/// Waits until an app is no longer running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    /// Name or id.
    pub app: String,
    /// Give up after this long.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
}

/// An app's state after a stop or a wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateResponse {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state as `app ps` shows it (`exited(3)`, `stopped`, ...; `not running` when it
    /// was never launched).
    pub state: String,
}

/// Follows lifecycle and decision events (launch, exit, restart, oom, grant, revoke,
/// rotate, deny, ...) as they happen, like `docker events`: the daemon answers with one
/// frame per event until the client closes the connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    /// Only this app's events (name or id).
    #[arg(long)]
    #[serde(default)]
    pub app: Option<String>,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// When, ms since the epoch.
    pub ts: u64,
    /// The app's id (`-` for the daemon's own).
    pub app_id: String,
    /// The app's name, when known.
    pub app: Option<String>,
    /// What happened: `launch`, `exit`, `restart`, `oom`, `grant`, `revoke`, `rotate`,
    /// `deny`, `install`, `remove`, `stop`, ... (`lost`: the follower fell behind).
    pub kind: String,
    /// Details, as the audit has them.
    pub detail: String,
}

/// Asks for the states of launched apps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsRequest {}

/// The launched apps (a JSON array on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PsResponse {
    /// One row per launched app, in registry order.
    pub apps: Vec<PsRow>,
}

/// One launched app in `app ps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PsRow {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its backend (`docker`, `direct`, ...).
    pub sandbox: String,
    /// The tier its container runs (ran) under (containers only).
    pub isolation: Option<Isolation>,
    /// Its state (`running`, `exited(3)`, ...).
    pub state: String,
    /// Restarts after failures in a row so far.
    pub restarts: u32,
    /// Why it is in this state, when not obvious.
    pub note: Option<String>,
    /// The first 12 characters of its container's id (Docker only).
    pub container: Option<String>,
    /// Its warm pool, when it keeps one.
    pub warm: Option<WarmView>,
    /// Its usage on the node.
    pub usage: UsageView,
}

/// An app's warm pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmView {
    /// Prepared containers waiting for a launch.
    pub ready: usize,
    /// How many it keeps.
    pub target: usize,
    /// Why it has fewer, until a preparation succeeds.
    pub problem: Option<String>,
    /// The prepared containers' ids, the next one taken first.
    pub containers: Vec<String>,
}

/// One installed app, as `app show` and `app list` present it (no secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The uid it runs as.
    pub uid: u32,
    /// The gid it runs as.
    pub gid: u32,
    /// What it may do.
    pub grants: Vec<Grant>,
    /// How it authenticates.
    pub auth: AuthMode,
    /// Where its processes run.
    pub placement: Placement,
    /// The isolation tier it asks for.
    pub isolation: IsolationRequest,
    /// The tier its current (or last) container runs under, when it was launched in one.
    pub tier: Option<Isolation>,
    /// Its binary's file name in its app directory.
    pub binary: String,
    /// Its container image (the daemon's default when it set none).
    pub image: String,
    /// The named network it may use.
    pub network: Option<String>,
    /// Its resource limits.
    pub limits: ResourceLimitsView,
    /// Its node limits in effect (its own over the config's).
    pub node_limits: NodeLimitsView,
    /// The node limits set for it alone.
    pub node_limits_set: LimitSettings,
    /// Bumped by every change of its record.
    pub generation: u64,
    /// When it was installed, ms since the epoch.
    pub created_ms: u64,
    /// Its socket.
    pub socket: PathBuf,
    /// Its credentials file.
    pub credentials: PathBuf,
    /// The directory holding its binary.
    pub app_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Where its jobs keep their output (`<run id>/stdout`, `<run id>/stderr`).
    pub job_output: PathBuf,
    /// Its backend, when it was launched.
    pub sandbox: Option<String>,
    /// Its state (`not running` when it was never launched).
    pub state: String,
    /// Restarts after failures in a row, when it was launched.
    pub restarts: Option<u32>,
    /// Why it is in this state, when not obvious.
    pub note: Option<String>,
    /// Its current (or last) container.
    pub container: Option<String>,
    /// Prepared containers it keeps (`--warm`).
    pub warm: u32,
    /// Its warm pool now, when it keeps one.
    pub warm_pool: Option<WarmView>,
}

/// An app's resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimitsView {
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// CPU share in billionths of a core.
    pub nano_cpus: u64,
    /// Most processes/threads.
    pub pids: u64,
    /// Most open files.
    pub nofile: u64,
    /// Size of its `/tmp` tmpfs in bytes.
    pub tmpfs_bytes: u64,
}

/// An app's node limits in effect; `None` for an unlimited quota or rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLimitsView {
    /// Most of its reads the node runs at once while other apps wait.
    pub share_reads: u32,
    /// Most of its writes queued at the node's writer while other apps wait.
    pub share_writes: u32,
    /// Storage quota: bytes of record data.
    pub max_bytes: Option<u64>,
    /// Storage quota: live records.
    pub max_records: Option<u64>,
    /// Versions kept per record.
    pub max_versions: Option<u32>,
    /// What happens past `max_versions`.
    pub history: fold_ipc::limits::HistoryPolicy,
    /// Writes per second.
    pub write_rate: Option<u32>,
    /// Writes allowed at once after a pause.
    pub write_burst: u32,
    /// Request bytes it may have in flight.
    pub bytes_in_flight: u64,
}

/// What an app's records take on the node, beside its quota; or why the node cannot say
/// (the rest of the answer is still given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UsageView {
    /// The node's count.
    Counted {
        /// Bytes of record data.
        bytes: u64,
        /// Its byte quota, if any.
        max_bytes: Option<u64>,
        /// Live records.
        records: u64,
        /// Its record quota, if any.
        max_records: Option<u64>,
        /// Versions kept, current ones included.
        versions: u64,
    },
    /// The node did not answer.
    Unknown {
        /// Why not.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Debug;

    /// Serializes `value`, reads it back and checks nothing was lost; returns the JSON.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> String {
        let json = serde_json::to_string(value).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, value, "{json}");
        json
    }

    /// A request round-trips both as itself inside the tagged enum, and carries `cmd`.
    fn request<R: AdminCall + Clone + Debug>(request: R, cmd: &str) -> String
    where
        AdminRequest: From<R>,
    {
        let json = round_trip(&AdminRequest::from(request));
        assert!(json.contains(&format!("\"cmd\":\"{cmd}\"")), "{json}");
        json
    }

    /// A successful and a failed answer carrying `response` round-trip.
    fn response<T: Serialize + DeserializeOwned + PartialEq + Debug + Clone>(response: T) {
        round_trip(&AdminReply::from(Ok::<_, String>(response)));
        round_trip(&AdminReply::<T>::failed("no such app".into()));
    }

    fn view() -> AppView {
        AppView {
            id: "app_1".into(),
            name: "notes".into(),
            uid: 1000,
            gid: 1000,
            grants: vec!["query:post".parse().unwrap(), "*:*".parse().unwrap()],
            auth: AuthMode::Token,
            placement: Placement::Host,
            isolation: IsolationRequest::Auto,
            tier: Some(Isolation::Gvisor),
            binary: "notes".into(),
            image: "alpine:latest".into(),
            network: Some("net".into()),
            limits: ResourceLimitsView {
                memory_bytes: 1,
                nano_cpus: 2,
                pids: 3,
                nofile: 4,
                tmpfs_bytes: 5,
            },
            node_limits: NodeLimitsView {
                share_reads: 1,
                share_writes: 2,
                max_bytes: Some(3),
                max_records: None,
                max_versions: Some(4),
                history: fold_ipc::limits::HistoryPolicy::Refuse,
                write_rate: None,
                write_burst: 5,
                bytes_in_flight: 6,
            },
            node_limits_set: LimitSettings {
                max_bytes: Some(3),
                ..LimitSettings::default()
            },
            generation: 7,
            created_ms: 8,
            socket: "/s/app_1.sock".into(),
            credentials: "/s/credentials.json".into(),
            app_dir: "/a".into(),
            log: "/l".into(),
            job_output: "/l.run".into(),
            sandbox: Some("docker".into()),
            state: "running".into(),
            restarts: Some(1),
            note: None,
            container: Some("abc".into()),
            warm: 2,
            warm_pool: Some(WarmView {
                ready: 1,
                target: 2,
                problem: Some("cannot prepare".into()),
                containers: Vec::new(),
            }),
        }
    }

    fn usage() -> UsageView {
        UsageView::Counted {
            bytes: 1,
            max_bytes: None,
            records: 2,
            max_records: Some(3),
            versions: 4,
        }
    }

    #[test]
    fn status() {
        request(StatusRequest {}, "status");
        response(StatusResponse {
            state_dir: "/state".into(),
            socket_root: "/state/sockets".into(),
            apps: 2,
            node: "Embedded".into(),
            audit: "/state/audit.jsonl".into(),
            pid: 42,
            docker_host: "unix:///var/run/docker.sock".into(),
            daemon_label: "label".into(),
            engine_timeout: Duration::from_secs(30),
            pull_timeout: Duration::from_secs(600),
            stop_grace: Duration::from_millis(1500),
            jobs_dir: "/s/logs/jobs".into(),
        });
    }

    #[test]
    fn install() {
        let mut install = InstallRequest::new("notes", "/bin/true");
        install.grants = vec!["mutation:*".parse().unwrap()];
        install.auth = Some(AuthMode::Signed);
        install.memory_bytes = Some(256 << 20);
        install.cpus = Some(0.5);
        install.node_limits.share_reads = Some(2);
        let json = request(install, "install");
        assert!(json.contains("\"grants\":[\"mutation:*\"]"), "{json}");
        assert!(json.contains("\"auth\":\"signed\""), "{json}");
        // Only name and binary are required.
        let short: AdminRequest =
            serde_json::from_str(r#"{"cmd":"install","name":"n","binary":"/b"}"#).unwrap();
        assert_eq!(short, AdminRequest::Install(InstallRequest::new("n", "/b")));
        response(InstallResponse {
            app: view(),
            warnings: vec!["glibc binary, musl image".into()],
        });
    }

    #[test]
    fn limits() {
        let node_limits = LimitSettings {
            write_rate: Some(0),
            history: Some(fold_ipc::limits::HistoryPolicy::Prune),
            ..LimitSettings::default()
        };
        request(
            LimitsRequest {
                app: "notes".into(),
                node_limits,
            },
            "limits",
        );
        response(view());
    }

    #[test]
    fn list() {
        request(ListRequest {}, "list");
        response(ListResponse {
            apps: vec![view(), view()],
        });
        // A JSON array on the wire, as `--json` prints it.
        let json = serde_json::to_string(&ListResponse { apps: vec![] }).unwrap();
        assert_eq!(json, "[]");
    }

    #[test]
    fn show() {
        request(
            ShowRequest {
                app: "notes".into(),
            },
            "show",
        );
        response(ShowResponse {
            app: view(),
            usage: usage(),
        });
        response(ShowResponse {
            app: view(),
            usage: UsageView::Unknown {
                error: "the node timed out".into(),
            },
        });
    }

    #[test]
    fn grants() {
        let grants: Vec<Grant> = vec!["query:post".parse().unwrap()];
        request(
            GrantRequest {
                app: "notes".into(),
                grants: grants.clone(),
            },
            "grant",
        );
        request(
            UngrantRequest {
                app: "notes".into(),
                grants,
            },
            "ungrant",
        );
        let bad = serde_json::from_str::<AdminRequest>(
            r#"{"cmd":"grant","app":"notes","grants":["nonsense"]}"#,
        );
        assert!(bad.is_err(), "a grant is checked when it is read");
    }

    #[test]
    fn rotate_and_remove() {
        request(
            RotateRequest {
                app: "notes".into(),
            },
            "rotate",
        );
        request(
            RemoveRequest {
                app: "notes".into(),
            },
            "remove",
        );
        response(RemoveResponse {
            id: "app_1".into(),
            name: "notes".into(),
            removed: true,
        });
    }

    #[test]
    fn launch() {
        let json = request(
            LaunchRequest {
                app: "notes".into(),
                direct: true,
                image: Some("busybox".into()),
                restart: Some(RestartMode::OnFailure),
                max_restarts: Some(3),
                max_lifetime: Some(Duration::from_secs(90)),
                args: vec!["serve".into()],
            },
            "launch",
        );
        assert!(json.contains("\"max_lifetime_ms\":90000"), "{json}");
        assert!(json.contains("\"restart\":\"on-failure\""), "{json}");
        request(LaunchRequest::new("notes"), "launch");
        let old: AdminRequest =
            serde_json::from_str(r#"{"cmd":"launch","app":"a","restart":"no"}"#).unwrap();
        let AdminRequest::Launch(old) = old else {
            panic!("{old:?}");
        };
        assert_eq!(old.restart, Some(RestartMode::Never));
        response(LaunchResponse {
            id: "app_1".into(),
            name: "notes".into(),
            sandbox: "docker".into(),
            sandboxed: true,
            state: "running".into(),
            container: Some("0123456789abcdef".into()),
            isolation: Some(Isolation::Gvisor),
            warnings: vec![],
            log: "/l".into(),
        });
    }

    #[test]
    fn restart_modes() {
        assert_eq!(RestartMode::Never.policy(5), RestartPolicy::Never);
        assert_eq!(
            RestartMode::OnFailure.policy(5),
            RestartPolicy::OnFailure { max_restarts: 5 }
        );
    }

    #[test]
    fn run() {
        let json = request(
            RunRequest {
                app: "job".into(),
                timeout: Duration::from_secs(30),
                direct: false,
                image: None,
                interpreter: Some("python3".into()),
                output_cap: Some(4096),
                run_id: Some("00ff00ff".into()),
                args: vec!["exit".into(), "5".into()],
            },
            "run",
        );
        assert!(json.contains("\"timeout_ms\":30000"), "{json}");
        response(RunResponse {
            id: "app_1".into(),
            name: "job".into(),
            sandbox: "direct".into(),
            sandboxed: false,
            state: "exited(5)".into(),
            note: Some("killed at the timeout".into()),
            exit_code: Some(5),
            signal: None,
            oom_killed: false,
            timed_out: false,
            output_cap: 4096,
            stdout: JobStream {
                path: "/l.run/stdout".into(),
                captured: 4096,
                dropped: 10,
            },
            stderr: JobStream {
                path: "/l.run/stderr".into(),
                captured: 0,
                dropped: 0,
            },
            duration: Duration::from_millis(1234),
            container: None,
            isolation: None,
            warnings: vec!["w".into()],
            log: "/l".into(),
        });
    }

    #[test]
    fn stop_and_wait() {
        request(
            StopRequest {
                app: "notes".into(),
                grace: Some(Duration::ZERO),
            },
            "stop",
        );
        request(
            StopRequest {
                app: "notes".into(),
                grace: None,
            },
            "stop",
        );
        request(
            WaitRequest {
                app: "notes".into(),
                timeout: Duration::from_secs(5),
            },
            "wait",
        );
        response(StateResponse {
            id: "app_1".into(),
            name: "notes".into(),
            state: "stopped".into(),
        });
    }

    #[test]
    fn ps() {
        request(PsRequest {}, "ps");
        response(PsResponse {
            apps: vec![PsRow {
                id: "app_1".into(),
                name: "notes".into(),
                sandbox: "docker".into(),
                isolation: Some(Isolation::Container),
                state: "running".into(),
                restarts: 0,
                note: None,
                container: Some("0123456789ab".into()),
                warm: Some(WarmView {
                    ready: 1,
                    target: 2,
                    problem: None,
                    containers: vec!["0123456789abcdef".into()],
                }),
                usage: usage(),
            }],
        });
    }

    #[test]
    fn unknown_commands_and_fields_are_refused() {
        for bad in [
            r#"{"cmd":"format_disk"}"#,
            r#"{"cmd":"show","app":"a","force":true}"#,
            r#"{"cmd":"status","verbose":true}"#,
            r#"{"app":"a"}"#,
        ] {
            assert!(serde_json::from_str::<AdminRequest>(bad).is_err(), "{bad}");
        }
    }
}
