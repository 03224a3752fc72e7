//! `fold_client serve`.

use super::Context;
use anyhow::{Context as _, Result};
use fold_client::config::Overrides;
use std::path::PathBuf;

/// Flags of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Root of the per-app socket directories (default: STATE_DIR/sockets).
    #[arg(long)]
    socket_root: Option<PathBuf>,
    /// The node: `embedded` (default), `unix:PATH` or `tcp:127.0.0.1:PORT`.
    #[arg(long, env = "FOLD_CLIENT_NODE")]
    node: Option<String>,
    /// File holding the node secret, for `tcp:` nodes.
    #[arg(long)]
    node_secret_file: Option<PathBuf>,
    /// `per_app` (each app its own uid; needs root) or `daemon` (apps run as the daemon's uid).
    #[arg(long)]
    uid_mode: Option<String>,
    /// Docker engine address, e.g. unix:///var/run/docker.sock or tcp://127.0.0.1:2375.
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// Log filter, e.g. `info` or `fold_client=debug`.
    #[arg(long, env = "FOLD_CLIENT_LOG", default_value = "info")]
    log: String,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(ctx: &Context, args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = ctx.config(Overrides {
        socket_root: args.socket_root,
        node: args.node,
        node_secret_file: args.node_secret_file,
        uid_mode: args.uid_mode,
        docker_host: args.docker_host.filter(|h| !h.trim().is_empty()),
        ..Overrides::default()
    })?;
    eprintln!(
        "fold_client: state {}, sockets {}, admin {}, engine {} (label {})",
        config.state_dir.display(),
        config.socket_root.display(),
        config.admin_socket.display(),
        config.docker_host,
        config.daemon_label
    );
    fold_client::run(config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
