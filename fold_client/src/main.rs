//! `fold_client`: run the daemon (`serve`) or drive it (`app ...`, `audit ...`).
//!
//! Phase one of the configuration: clap parses argv and environment here, then
//! `Config::build` validates and merges them with the config file.

mod cli;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// FoldClient host daemon and admin CLI.
#[derive(Debug, Parser)]
#[command(
    name = "fold_client",
    version,
    about = "Run third-party apps against your data node, sandboxed"
)]
struct Args {
    /// State directory: registry, app binaries, sockets, logs, audit, node data.
    #[arg(long, global = true, env = "FOLD_CLIENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Config file (TOML).
    #[arg(long, global = true, env = "FOLD_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    Serve(cli::ServeArgs),
    /// Install, inspect, launch and stop apps.
    #[command(subcommand)]
    App(Box<cli::AppCommand>),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(cli::AuditCommand),
    /// Check the host and the Docker engine; print each problem with its fix.
    Doctor,
    /// Run a static binary or a script once as a throwaway app: a fresh identity and uid,
    /// no grants unless given, the same hardening as any app; everything is removed after.
    /// Streams its output, returns its exit code (124 when it timed out).
    Run {
        /// What to run, where and for how long.
        #[command(flatten)]
        request: fold_client::admin::protocol::JobRequest,
        /// Print the job's output as it is, control characters included (for piping).
        #[arg(long)]
        raw: bool,
    },
    /// Follow lifecycle and decision events as they happen (launch, exit, restart, oom,
    /// grant, revoke, rotate, deny, ...), like `docker events`; one line each, or one JSON
    /// object per line with --json. Runs until interrupted.
    Events(fold_client::admin::protocol::EventsRequest),
    /// Print a shell completion script for `fold_client` (bash, zsh, fish, elvish or
    /// powershell), generated from these very commands: e.g. `fold_client completions
    /// bash > /etc/bash_completion.d/fold_client`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from these very commands: e.g.
    /// `fold_client man | man -l -`.
    Man,
}

fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/fold_client");
    }
    match std::env::var_os("XDG_STATE_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state").into_os_string())
    }) {
        Some(base) => PathBuf::from(base).join("fold_client"),
        None => PathBuf::from("/tmp/fold_client"),
    }
}

/// Writes what `completions` and `man` print, from the clap definitions; `None` for the
/// other commands.
fn generated(command: &Command) -> Option<Result<()>> {
    use clap::CommandFactory;
    let mut cli = Args::command();
    let mut out = std::io::stdout().lock();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "fold_client", &mut out);
            Some(Ok(()))
        }
        Command::Man => Some(
            clap_mangen::Man::new(cli)
                .render(&mut out)
                .context("cannot write the manual page"),
        ),
        _ => None,
    }
}

fn main() -> Result<()> {
    fold_client::return_large_buffers_to_the_system();
    let args = Args::parse();
    if let Some(done) = generated(&args.command) {
        return done;
    }
    let runtime = fold_ipc::heavy::serving_runtime().context("cannot start the async runtime")?;
    let state_dir = match args.state_dir.clone() {
        Some(dir) => std::path::absolute(dir).context("cannot resolve --state-dir")?,
        None => default_state_dir(),
    };
    let ctx = cli::Context {
        state_dir,
        config_file: args.config.clone(),
        json: args.json,
    };
    let code = runtime.block_on(async {
        match args.command {
            Command::Serve(serve) => cli::serve(&ctx, serve).await.map(|()| 0),
            Command::App(cmd) => cli::app(&ctx, *cmd).await,
            Command::Audit(cmd) => cli::audit(&ctx, cmd).await.map(|()| 0),
            Command::Doctor => cli::doctor(&ctx).await,
            Command::Run { request, raw } => cli::job(&ctx, request, raw).await,
            Command::Events(request) => cli::events(&ctx, request).await.map(|()| 0),
            Command::Completions { .. } | Command::Man => Ok(0),
        }
    })?;
    std::process::exit(code);
}
