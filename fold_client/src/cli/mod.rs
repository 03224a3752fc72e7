//! The CLI's commands. Everything that changes the daemon's state goes through its admin
//! socket ([`fold_client::admin::AdminClient`], typed requests and answers). Read-only
//! exceptions, each on the paths and settings the daemon itself uses: `audit tail` and
//! `app logs` read the files the daemon writes, `app launch` and `app run` pull a missing
//! image from the daemon's engine first (to show progress), and `doctor` asks the engine
//! and looks at the host itself.

mod app;
mod audit;
mod doctor;
mod events;
mod run;
mod serve;

pub use app::{app, AppCommand};
pub use audit::{audit, AuditCommand};
pub use doctor::doctor;
pub use events::events;
pub use run::job;
pub use serve::{serve, ServeArgs};

use anyhow::{bail, Context as _, Result};
use fold_client::admin::{AdminCall, AdminClient, AdminError};
use fold_client::config::{Config, FileConfig, Overrides};
use fold_client::terminal::escape;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// What every command knows from the global flags.
#[derive(Debug)]
pub struct Context {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The config file, if any.
    pub config_file: Option<PathBuf>,
    /// JSON output.
    pub json: bool,
}

impl Context {
    /// Builds the validated config from the file and `over`.
    pub fn config(&self, mut over: Overrides) -> Result<Config> {
        let file = match &self.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                FileConfig::parse(&text, path)?
            }
            None => FileConfig::default(),
        };
        over.state_dir = Some(self.state_dir.clone());
        if over.docker_host.is_none() {
            over.docker_host = std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.trim().is_empty());
        }
        Ok(Config::build(file, over, nix::unistd::geteuid().as_raw())?)
    }

    /// Sends an admin request to the running daemon; returns its result.
    pub async fn call<R: AdminCall>(&self, request: R, timeout: Duration) -> Result<R::Response> {
        let config = self.config(Overrides::default())?;
        let client = AdminClient::new(&config.admin_socket, timeout);
        match client.call(request).await {
            Ok(response) => Ok(response),
            // The daemon's message may quote what an app chose (a name, its binary's bytes).
            Err(AdminError::Refused(error)) => {
                bail!("{}", fold_client::terminal::escape_text(&error))
            }
            Err(AdminError::Unreachable { source, .. }) => bail!(
                "cannot reach the fold_client daemon at {} ({source}); start it with `fold_client --state-dir {} serve`",
                config.admin_socket.display(),
                self.state_dir.display()
            ),
            Err(e) => bail!(
                "the fold_client daemon at {}: {e}",
                config.admin_socket.display()
            ),
        }
    }
}

/// `--json` output: pretty JSON in which nothing a terminal acts on is left raw (serde_json
/// escapes C0 controls; `terminal::escape_json` the C1 controls and bidi overrides it keeps).
/// Printed through `serde_json::Value`, so objects come out as `--json` always printed them.
///
/// # Errors
///
/// Serialization failed.
pub fn json(value: &impl Serialize) -> Result<String> {
    let text = serde_json::to_string_pretty(&serde_json::to_value(value)?)?;
    Ok(fold_client::terminal::escape_json(&text).into_owned())
}

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    // Cells may hold app-controlled text: escaped before they are measured.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// An optional value as a table cell: `-` when absent.
pub fn cell(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A JSON value as plain text for a field of `print_object` or an audit record, with every
/// control character escaped (`fold_client::terminal`): the values come from the daemon but
/// may carry app-controlled text.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => escape(s).into_owned(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}
