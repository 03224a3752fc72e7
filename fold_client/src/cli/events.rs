//! `fold_client events`: the daemon's live event stream, one line per event.

use super::Context;
use anyhow::{bail, Result};
use fold_client::admin::protocol::{EventView, EventsRequest};
use fold_client::admin::AdminClient;
use fold_client::config::Overrides;
use std::io::Write;
use std::time::Duration;

/// Prints events until the daemon stops (or the command is interrupted).
pub async fn events(ctx: &Context, request: EventsRequest) -> Result<()> {
    let config = ctx.config(Overrides::default())?;
    let client = AdminClient::new(&config.admin_socket, Duration::from_secs(10));
    let mut stream = match client.follow(request).await {
        Ok(stream) => stream,
        Err(e) => bail!(
            "cannot follow the daemon's events at {}: {e}",
            config.admin_socket.display()
        ),
    };
    let mut out = std::io::stdout().lock();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => bail!("{}", fold_client::terminal::escape_text(&e.to_string())),
        };
        if ctx.json {
            // One compact object per line (a stream), escaped as `--json` always is.
            let text = serde_json::to_string(&event)?;
            writeln!(out, "{}", fold_client::terminal::escape_json(&text))?;
        } else {
            writeln!(out, "{}", line(&event))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// `TIME  APP  KIND  DETAIL`, every app-chosen string escaped for the terminal.
fn line(e: &EventView) -> String {
    let app = e.app.as_deref().unwrap_or(&e.app_id);
    format!(
        "{}  {}  {}  {}",
        e.ts,
        fold_client::terminal::escape_text(app),
        e.kind,
        fold_client::terminal::escape_text(&e.detail)
    )
}
