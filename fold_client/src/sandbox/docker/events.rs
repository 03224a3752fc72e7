//! The engine's event stream, filtered to this daemon's containers, drives their states:
//! `oom` marks an OOM kill, `die` (or `destroy`) finalizes the run. No polling loop: if the
//! stream breaks (engine restart), it is reopened from the last event's time with backoff,
//! and the tracked containers are checked once.

use super::lifecycle::{on_event, reconcile};
use super::spec::LABEL_DAEMON;
use super::Inner;
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts following events (until the backend's shutdown token fires).
pub(super) fn spawn(inner: &Arc<Inner>) {
    let follower = Arc::clone(inner);
    inner.tasks.spawn(async move { follow(follower).await });
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn follow(inner: Arc<Inner>) {
    // Replaying a little history is harmless (handling is idempotent, keyed by container
    // id) and closes the gap between this subscription and the first launch or adoption.
    let mut since = now_secs() - 2;
    let mut backoff = Duration::from_millis(100);
    let label = format!("{LABEL_DAEMON}={}", inner.settings.label);
    let mut reconnect = false;
    loop {
        let filters = HashMap::from([("type", vec!["container"]), ("label", vec![label.as_str()])]);
        let options = EventsOptionsBuilder::default()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let mut stream = inner.docker.events(Some(options));
        if reconnect {
            reconcile(&inner).await;
        }
        loop {
            let item = tokio::select! {
                () = inner.shutdown.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(event)) => {
                    backoff = Duration::from_millis(100);
                    since = event.time.unwrap_or(since).max(since);
                    let Some(actor) = event.actor else { continue };
                    let (Some(action), Some(id)) = (event.action, actor.id) else {
                        continue;
                    };
                    let attrs = actor.attributes.unwrap_or_default();
                    tracing::debug!(%action, container = %id, "engine event");
                    on_event(&inner, &action, &id, &attrs);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Docker event stream failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("Docker event stream ended; reconnecting");
                    break;
                }
            }
        }
        reconnect = true;
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
