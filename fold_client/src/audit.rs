//! The audit log: one JSON line per decision and per lifecycle event, appended to a 0600
//! file by one writer task. Records carry ids, names, operations, verdicts and reasons;
//! never a token, key or signature.
//!
//! Requests never wake the writer one by one: after each write it sleeps for
//! [`GATHER_DELAY`] and then writes everything queued meanwhile in one go, so under load it
//! runs once per delay, not once per request (each wake-up of another thread costs tens of
//! microseconds on a small VM). An idle writer waits on the queue, so a line arriving after
//! a quiet spell is written at once. Lines reach the file at most [`GATHER_DELAY`] after
//! they were recorded; [`Audit::flush`] waits for them.

use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated, granted, and passed to the node (whatever the node answered).
    Allow,
    /// Refused by the daemon.
    Deny,
}

/// One request decision.
#[derive(Debug, Clone)]
pub struct RequestRecord<'a> {
    /// The socket's app.
    pub app_id: &'a str,
    /// The app's name, when it is (still) installed.
    pub app_name: Option<&'a str>,
    /// The request's id.
    pub request_id: &'a str,
    /// The operation's name as sent.
    pub operation: &'a str,
    /// The schema, when the operation names one.
    pub schema: Option<&'a str>,
    /// Allowed or denied.
    pub verdict: Verdict,
    /// The wire error code, for denials and node errors.
    pub code: Option<&'a str>,
    /// Why (for denials: a stable reason such as `bad_token`).
    pub reason: Option<&'a str>,
    /// `signed`, or `unsigned` for token-only requests.
    pub auth: Option<&'a str>,
    /// Time spent in the daemon and node, microseconds.
    pub latency_us: u64,
}

/// How long the writer gathers lines after a write before writing again.
pub const GATHER_DELAY: Duration = Duration::from_millis(5);

/// A request record as written: keys in alphabetical order, absent values as `null`.
#[derive(Serialize)]
struct RequestLine<'a> {
    app: Option<&'a str>,
    app_id: &'a str,
    auth: Option<&'a str>,
    code: Option<&'a str>,
    kind: &'static str,
    latency_us: u64,
    operation: &'a str,
    reason: Option<&'a str>,
    request_id: &'a str,
    schema: Option<&'a str>,
    ts: u64,
    verdict: &'static str,
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<Message>,
}

#[derive(Debug)]
enum Message {
    Line(String),
    /// Answered once every line queued before it is written and flushed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Audit {
    /// Opens (appending, mode 0600) the audit file and starts its writer task. The task ends
    /// when every handle is dropped, after writing what was queued.
    ///
    /// # Errors
    ///
    /// The file cannot be opened.
    pub async fn open(path: &Path) -> std::io::Result<(Audit, JoinHandle<()>)> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await?;
        let (tx, mut rx) = mpsc::channel::<Message>(4096);
        let task = tokio::spawn(async move {
            let mut out = BufWriter::with_capacity(64 * 1024, file);
            let mut waiters = Vec::new();
            // Idle: wait on the queue.
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                // Busy: write what is queued, then gather for a while without being woken.
                loop {
                    let mut ok = true;
                    let mut wrote = false;
                    while let Some(message) = next.take() {
                        match message {
                            Message::Line(line) => {
                                wrote = true;
                                ok &= out.write_all(line.as_bytes()).await.is_ok();
                            }
                            Message::Flush(done) => waiters.push(done),
                        }
                        next = rx.try_recv().ok();
                    }
                    ok &= out.flush().await.is_ok();
                    if !ok {
                        tracing::error!("cannot write the audit log");
                    }
                    for done in waiters.drain(..) {
                        let _ = done.send(());
                    }
                    if !wrote {
                        break;
                    }
                    tokio::time::sleep(GATHER_DELAY).await;
                    match rx.try_recv() {
                        Ok(message) => next = Some(message),
                        // Quiet (or every handle dropped): back to waiting on the queue,
                        // which also notices the end.
                        Err(_) => break,
                    }
                }
            }
        });
        Ok((Audit { tx }, task))
    }

    async fn write(&self, mut line: String) {
        line.push('\n');
        // Back-pressure rather than loss: a full queue slows requests down.
        let _ = self.tx.send(Message::Line(line)).await;
    }

    /// Waits until every record queued so far is written to the file.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Records a request decision.
    pub async fn request(&self, r: &RequestRecord<'_>) {
        let line = RequestLine {
            app: r.app_name,
            app_id: r.app_id,
            auth: r.auth,
            code: r.code,
            kind: "request",
            latency_us: r.latency_us,
            operation: r.operation,
            reason: r.reason,
            request_id: r.request_id,
            schema: r.schema,
            ts: now_ms(),
            verdict: match r.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny",
            },
        };
        // A struct of strings and integers always serialises.
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.reserve(1);
        self.write(text).await;
    }

    /// Records a lifecycle event (install, launch, stop, peer rejected, ...).
    pub async fn event(&self, app_id: &str, app_name: Option<&str>, event: &str, detail: &str) {
        let line = json!({
            "ts": now_ms(),
            "kind": "event",
            "app_id": app_id,
            "app": app_name,
            "event": event,
            "detail": detail,
        });
        self.write(line.to_string()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn records_are_json_lines_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (audit, task) = Audit::open(&path).await.unwrap();
        audit
            .event("app_1", Some("a"), "install", "grants query:post")
            .await;
        audit
            .request(&RequestRecord {
                app_id: "app_1",
                app_name: Some("a"),
                request_id: "r1",
                operation: "query",
                schema: Some("post"),
                verdict: Verdict::Deny,
                code: Some("forbidden"),
                reason: Some("not_granted"),
                auth: Some("signed"),
                latency_us: 12,
            })
            .await;
        drop(audit);
        task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["verdict"], "deny");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }
}
