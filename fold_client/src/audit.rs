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
//!
//! The file is size-capped ([`Rotation`]): a line that would push it past `max_bytes` first
//! renames it to `audit.jsonl.1` (shifting older ones to `.2`, ... and dropping the one past
//! `keep`) and opens a fresh 0600 file. Rotation happens only between lines, after a flush,
//! so every kept file holds whole JSON lines, and the audit costs at most about
//! `(keep + 1) * max_bytes` of disk however fast apps send requests.

use serde::Serialize;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// Bytes the writer buffers before writing to the file.
const BUFFER: usize = 64 * 1024;

/// When the audit file is rotated and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The live file is rotated before a line would take it past this size. A single line
    /// longer than this is still written whole, to a file of its own.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` is the newest; at least one); older ones are
    /// deleted.
    pub keep: u32,
}

/// The `n`th rotated file of the audit at `path`: `<path>.<n>` (`audit.jsonl.1` is the
/// newest).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Opens (appending) or creates the audit file, owner-only.
async fn open_file(path: &Path) -> std::io::Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await?;
    // open() keeps an existing file's mode; the audit is owner-only whatever made it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .await?;
    let size = file.metadata().await?.len();
    Ok((file, size))
}

/// `from` renamed to `to`; a missing `from` (fewer rotated files so far) is not an error.
async fn shift(from: &Path, to: &Path) -> std::io::Result<()> {
    match tokio::fs::rename(from, to).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The live audit file, as the writer task owns it.
struct Writer {
    path: PathBuf,
    rotation: Rotation,
    out: BufWriter<tokio::fs::File>,
    /// Bytes in the live file, including what is still buffered.
    size: u64,
}

impl Writer {
    async fn open(path: &Path, rotation: Rotation) -> std::io::Result<Writer> {
        let (file, size) = open_file(path).await?;
        Ok(Writer {
            path: path.to_path_buf(),
            rotation,
            out: BufWriter::with_capacity(BUFFER, file),
            size,
        })
    }

    /// Writes one line (with its newline), rotating first if it would pass the cap.
    async fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.rotation.max_bytes {
            if let Err(e) = self.rotate().await {
                tracing::error!(
                    "cannot rotate the audit log {}: {e}; still writing to it",
                    self.path.display()
                );
                // Retry after another `max_bytes` rather than on every line, so a lasting
                // problem (disk full, permissions) does not flood the daemon's log.
                self.size = 0;
            }
        }
        self.out.write_all(line.as_bytes()).await?;
        self.size += len;
        Ok(())
    }

    /// `audit.jsonl` becomes `audit.jsonl.1` (older ones shift up, the one past `keep` is
    /// replaced), then a fresh file is opened.
    async fn rotate(&mut self) -> std::io::Result<()> {
        // Everything written so far belongs to the file being rotated out, durably.
        self.out.flush().await?;
        self.out.get_ref().sync_data().await?;
        let keep = self.rotation.keep.max(1);
        for n in (1..keep).rev() {
            shift(
                &rotated_path(&self.path, n),
                &rotated_path(&self.path, n + 1),
            )
            .await?;
        }
        let first = rotated_path(&self.path, 1);
        tokio::fs::rename(&self.path, &first).await?;
        match open_file(&self.path).await {
            Ok((file, size)) => {
                self.out = BufWriter::with_capacity(BUFFER, file);
                self.size = size;
                Ok(())
            }
            Err(e) => {
                // Put the live file back, so the handle still writes to `audit.jsonl`
                // rather than to a file the next rotation would shift away and delete.
                let _ = tokio::fs::rename(&first, &self.path).await;
                Err(e)
            }
        }
    }
}

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

/// Lines a live follower may be behind before it misses some.
pub const LIVE_BACKLOG: usize = 4096;

/// Handle to the audit writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<Message>,
    /// Every line as it is queued, for live followers (`fold_client events`); nothing is
    /// built for it while nobody follows.
    live: tokio::sync::broadcast::Sender<Arc<str>>,
}

#[derive(Debug)]
enum Message {
    Line(String),
    /// Answered once every line queued before it is written and flushed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Audit {
    /// Opens (appending, mode 0600) the audit file and starts its writer task, which
    /// rotates the file per `rotation`. The task ends when every handle is dropped, after
    /// writing what was queued.
    ///
    /// # Errors
    ///
    /// The file cannot be opened.
    pub async fn open(path: &Path, rotation: Rotation) -> std::io::Result<(Audit, JoinHandle<()>)> {
        let mut writer = Writer::open(path, rotation).await?;
        let (tx, mut rx) = mpsc::channel::<Message>(4096);
        let task = tokio::spawn(async move {
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
                                ok &= writer.write_line(&line).await.is_ok();
                            }
                            Message::Flush(done) => waiters.push(done),
                        }
                        next = rx.try_recv().ok();
                    }
                    ok &= writer.out.flush().await.is_ok();
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
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BACKLOG);
        Ok((Audit { tx, live }, task))
    }

    /// Every audit line from now on, as written (without its newline). A follower that
    /// falls more than [`LIVE_BACKLOG`] lines behind is told how many it missed.
    pub fn follow(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.live.subscribe()
    }

    async fn write(&self, mut line: String) {
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::from(line.as_str()));
        }
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

    const ROTATION: Rotation = Rotation {
        max_bytes: 1024 * 1024,
        keep: 4,
    };

    fn denial(request_id: &str) -> RequestRecord<'_> {
        RequestRecord {
            app_id: "app_1",
            app_name: Some("flooder"),
            request_id,
            operation: "query",
            schema: Some("post"),
            verdict: Verdict::Deny,
            code: Some("rate_limited"),
            reason: Some("too_many_failures"),
            auth: Some("signed"),
            latency_us: 3,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[tokio::test]
    async fn rotation_bounds_disk_use_under_a_flood() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: 16 * 1024,
            keep: 3,
        };
        let (audit, task) = Audit::open(&path, rotation).await.unwrap();
        // About 1.3 MB of denials: 80 times the cap, so rotation runs dozens of times, with
        // many lines gathered into each write.
        let total = 5_000u64;
        for i in 0..total {
            audit.request(&denial(&i.to_string())).await;
        }
        drop(audit);
        task.await.unwrap();

        assert!(
            !rotated_path(&path, rotation.keep + 1).exists(),
            "more rotated files than `keep`"
        );
        let oldest_first = [
            rotated_path(&path, 3),
            rotated_path(&path, 2),
            rotated_path(&path, 1),
            path.clone(),
        ];
        let mut used = 0;
        let mut ids = Vec::new();
        let mut longest = 0;
        for file in &oldest_first {
            assert_eq!(mode(file), 0o600, "{}", file.display());
            let text = std::fs::read_to_string(file).unwrap();
            used += text.len() as u64;
            assert!(
                text.len() as u64 <= rotation.max_bytes,
                "{} holds {} bytes",
                file.display(),
                text.len()
            );
            assert!(text.ends_with('\n'), "{} ends mid-line", file.display());
            for line in text.lines() {
                longest = longest.max(line.len() as u64 + 1);
                let record: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("not a whole JSON line in {}: {e}: {line}", file.display())
                });
                ids.push(
                    record["request_id"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap(),
                );
            }
        }
        assert!(used <= u64::from(rotation.keep + 1) * rotation.max_bytes);
        // The kept records are the newest ones, in order, none missing in between, and the
        // rotated files were full (a file is rotated only when the next line does not fit).
        assert_eq!(ids.last(), Some(&(total - 1)));
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "a gap in {ids:?}");
        assert!(used > u64::from(rotation.keep) * (rotation.max_bytes - longest));
    }

    #[tokio::test]
    async fn an_existing_file_is_made_private_and_rotated_once_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let old = format!("{}\n", json!({"kind": "event", "event": "old"}));
        std::fs::write(&path, old.repeat(100)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let rotation = Rotation {
            max_bytes: old.len() as u64 * 50,
            keep: 1,
        };
        let (audit, task) = Audit::open(&path, rotation).await.unwrap();
        assert_eq!(mode(&path), 0o600, "made owner-only at open");
        audit.event("app_1", None, "install", "new").await;
        drop(audit);
        task.await.unwrap();
        let rotated = rotated_path(&path, 1);
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), old.repeat(100));
        assert_eq!(mode(&rotated), 0o600);
        let live = std::fs::read_to_string(&path).unwrap();
        assert_eq!(live.lines().count(), 1);
        assert!(live.contains("\"event\":\"install\""), "{live}");
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn records_are_json_lines_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (audit, task) = Audit::open(&path, ROTATION).await.unwrap();
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
