//! The live event stream (`fold_client events`): the audit's lines as they are written,
//! reduced to what happened to whom. Lifecycle events (install, launch, exit, restart,
//! stop, remove, ...) and decisions (grant, revoke, rotate, a denied request) pass; allowed
//! requests do not (the audit keeps them). Pure: one audit line in, at most one event out.

use super::protocol::EventView;
use serde_json::Value;

/// The event an audit line stands for, if it is one.
pub fn classify(line: &str) -> Option<EventView> {
    let value: Value = serde_json::from_str(line).ok()?;
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    let (kind, detail) = match value.get("kind")?.as_str()? {
        "request" if value.get("verdict")?.as_str()? == "deny" => {
            let mut detail = format!(
                "{} on {}",
                text("operation").unwrap_or_default(),
                text("schema").unwrap_or_else(|| "*".into())
            );
            if let Some(reason) = text("reason").or_else(|| text("code")) {
                detail = format!("{detail}: {reason}");
            }
            ("deny".to_string(), detail)
        }
        "request" => return None,
        "event" => {
            let event = text("event")?;
            let detail = text("detail").unwrap_or_default();
            // An exit by OOM kill is its own kind, as `docker events` has `oom`.
            let kind = match event.as_str() {
                "exit" if detail.contains("oom_killed") => "oom".to_string(),
                _ => event,
            };
            (kind, detail)
        }
        _ => return None,
    };
    Some(EventView {
        ts: value.get("ts").and_then(Value::as_u64).unwrap_or(0),
        app_id: text("app_id").unwrap_or_default(),
        app: text("app"),
        kind,
        detail,
    })
}

/// Streams events to an admin client until it leaves or the daemon stops: one
/// `AdminReply<EventView>` frame each, only `request.app`'s when it names one.
pub(super) async fn stream(
    out: &mut tokio::net::UnixStream,
    shared: &std::sync::Arc<crate::apps::Shared>,
    request: super::protocol::EventsRequest,
) {
    use super::protocol::AdminReply;
    use tokio::sync::broadcast::error::RecvError;
    let mut live = shared.audit.follow();
    let only = match request.app.as_deref().map(|a| shared.registry.find(a)) {
        None => None,
        Some(Ok(app)) => Some(app.id.clone()),
        Some(Err(e)) => {
            let _ = super::send(
                out,
                &super::encode(&AdminReply::<EventView>::failed(e.to_string())),
            )
            .await;
            return;
        }
    };
    loop {
        let event = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            line = live.recv() => match line {
                Ok(line) => classify(&line),
                Err(RecvError::Lagged(missed)) => Some(EventView {
                    ts: crate::audit::now_ms(),
                    app_id: "-".into(),
                    app: None,
                    kind: "lost".into(),
                    detail: format!("{missed} events missed: this client read too slowly"),
                }),
                Err(RecvError::Closed) => return,
            },
        };
        let Some(event) = event.filter(|e| only.as_ref().is_none_or(|id| *id == e.app_id)) else {
            continue;
        };
        if !super::send(
            out,
            &super::encode(&AdminReply::from(Ok::<_, String>(event))),
        )
        .await
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_and_lifecycle_pass_and_allowed_requests_do_not() {
        let deny = r#"{"ts":5,"kind":"request","app_id":"app_1","app":"a","operation":"query","schema":"post","verdict":"deny","code":"forbidden","reason":"not_granted"}"#;
        let e = classify(deny).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.detail.as_str(), e.ts),
            ("deny", "query on post: not_granted", 5)
        );
        let allow = deny.replace("\"deny\"", "\"allow\"");
        assert!(classify(&allow).is_none());
        let oom = r#"{"ts":6,"kind":"event","app_id":"app_1","app":"a","event":"exit","detail":"oom_killed"}"#;
        assert_eq!(classify(oom).unwrap().kind, "oom");
        let exit = oom.replace("oom_killed", "exited(3)");
        assert_eq!(classify(&exit).unwrap().kind, "exit");
        let rotate = r#"{"ts":7,"kind":"event","app_id":"app_1","app":"a","event":"rotate","detail":"generation 2"}"#;
        assert_eq!(classify(rotate).unwrap().kind, "rotate");
        assert!(classify("not json").is_none());
    }
}
