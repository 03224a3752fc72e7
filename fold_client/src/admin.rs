//! The admin socket: how the CLI drives the daemon. Framed JSON (the `fold_ipc` framing),
//! one request and one response at a time. Only the daemon's own uid (or root) may connect:
//! the socket is 0600 in the 0700 state directory and the peer uid is checked.
//!
//! The requests and their responses are typed ([`protocol`]); the daemon answers them in
//! `apps` and the CLI sends them with [`AdminClient`]. These types cross a socket, but only
//! between the `fold_client` binary and itself, so they live here rather than in `fold_ipc`
//! (which is the app-facing contract).

mod apps;
mod events;
mod jobs;
pub(crate) use jobs::{fill_job_slots, remove_leftover_jobs};
pub mod protocol;

pub use protocol::{AdminCall, AdminReply, AdminRequest};

use crate::apps::{DaemonError, Shared};
use crate::ipc::AppSocket;
use fold_ipc::frame::{read_frame, write_frame};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// Largest admin frame.
const MAX_ADMIN_FRAME: usize = 1024 * 1024;
/// How long an admin connection may stay idle.
const ADMIN_IDLE: Duration = Duration::from_secs(60);

/// Binds the admin socket and serves it in the background.
///
/// # Errors
///
/// The socket cannot be bound (for instance another daemon serves this state directory).
pub fn serve(shared: &Arc<Shared>) -> Result<(), crate::ipc::SocketError> {
    let socket = bind(&shared.config)?;
    spawn(shared, socket);
    Ok(())
}

/// Binds the admin socket (0600) without serving it yet. Binding first is how a second
/// daemon on the same state directory finds out, before it touches anything else.
///
/// # Errors
///
/// The socket cannot be bound, or a live daemon answers on it.
pub fn bind(config: &crate::config::Config) -> Result<AppSocket, crate::ipc::SocketError> {
    let path = &config.admin_socket;
    let io = |source: std::io::Error| crate::ipc::SocketError::Io {
        path: path.clone(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(io(std::io::Error::other(
            "admin socket path has no directory or file name",
        )));
    };
    let dir = crate::fsutil::Dir::open(dir).map_err(io)?;
    crate::ipc::bind_socket(&dir, name, crate::fsutil::Access::private(0o600))
}

/// Starts serving a socket from [`bind`].
pub fn spawn(shared: &Arc<Shared>, socket: AppSocket) {
    let owned = Arc::clone(shared);
    shared.tasks.spawn(accept_loop(socket.listener, owned));
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let euid = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid != Some(euid) && uid != Some(0) {
            continue;
        }
        let shared = Arc::clone(&shared);
        shared
            .tasks
            .clone()
            .spawn(async move { serve_admin(stream, shared).await });
    }
}

async fn serve_admin(mut stream: UnixStream, shared: Arc<Shared>) {
    loop {
        let body = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout(ADMIN_IDLE, read_frame(&mut stream, MAX_ADMIN_FRAME)) => match r {
                Ok(Ok(Some(body))) => body,
                _ => return,
            },
        };
        let body = match serde_json::from_slice::<AdminRequest>(&body) {
            Ok(AdminRequest::Events(request)) => {
                events::stream(&mut stream, &shared, request).await;
                return;
            }
            Ok(request) => apps::execute(&shared, request).await,
            Err(e) => encode(&AdminReply::<()>::failed(format!("bad admin request: {e}"))),
        };
        if !send(&mut stream, &body).await {
            return;
        }
    }
}

/// Writes one admin frame, within a deadline; false when the client is gone or too slow.
async fn send(stream: &mut UnixStream, body: &[u8]) -> bool {
    let written = write_frame(stream, body, MAX_ADMIN_FRAME);
    matches!(
        tokio::time::timeout(Duration::from_secs(10), written).await,
        Ok(Ok(()))
    )
}

/// Parses a size such as `256m`, `1g`, `512k` or a plain byte count.
///
/// # Errors
///
/// A message naming the bad value.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size like 256m, 1g or 65536"))
}

/// Parses a duration such as `30s`, `500ms`, `5m`, `1h` or plain seconds (`2.5`).
///
/// # Errors
///
/// A message naming the bad value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || format!("{text:?} is not a duration like 30s, 500ms, 5m or 1h");
    let (digits, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let value: f64 = digits.parse().map_err(|_| bad())?;
    let secs = value * scale;
    if !(secs > 0.0 && secs < 1e9) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a stop grace: a duration as [`parse_duration`] takes it, or `0` (SIGKILL at once).
///
/// # Errors
///
/// A message naming the bad value.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// Parses a CPU limit in cores, more than 0 and at most 1024 (e.g. `0.5`).
///
/// # Errors
///
/// A message naming the bad value.
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    let cpus: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of cores like 1 or 0.5"))?;
    check_cpus(cpus)
}

/// `cpus` if it is a CPU limit the daemon accepts: more than 0, at most 1024 cores.
fn check_cpus(cpus: f64) -> Result<f64, String> {
    if cpus > 0.0 && cpus <= 1024.0 {
        Ok(cpus)
    } else {
        Err(format!("--cpus {cpus} must be between 0 and 1024"))
    }
}

/// Makes `text` an absolute path against the CLI's working directory (the daemon's may
/// differ), without touching the file system.
///
/// # Errors
///
/// The working directory is unknown.
pub fn parse_absolute_path(text: &str) -> Result<PathBuf, String> {
    std::path::absolute(text).map_err(|e| format!("cannot resolve {text}: {e}"))
}

fn binary_name(path: &std::path::Path) -> Result<String, DaemonError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || name.starts_with('.')
    {
        return Err(DaemonError::Invalid(format!(
            "binary file name {name:?} must be 1-64 of [A-Za-z0-9._-]"
        )));
    }
    Ok(name.to_string())
}

/// An answer as the bytes of one frame. Every admin type serializes (plain data, string
/// keys), so this cannot fail; if it did, the client would see the connection close.
fn encode<T: serde::Serialize>(reply: &AdminReply<T>) -> Vec<u8> {
    serde_json::to_vec(reply).unwrap_or_default()
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing answers on the admin socket: the daemon is not running (or serves another
    /// state directory).
    #[error("cannot connect to {}: {source}", socket.display())]
    Unreachable {
        /// The admin socket.
        socket: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// The request cannot be written as JSON (a path that is not UTF-8, for instance).
    #[error("the request cannot be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    /// The connection failed midway.
    #[error("the admin exchange failed: {0}")]
    Exchange(#[source] std::io::Error),
    /// The daemon took longer than the call's deadline.
    #[error("the daemon did not answer within {0:?}")]
    TimedOut(Duration),
    /// The daemon's answer is not the response of this request.
    #[error("the daemon's answer cannot be read: {0}")]
    BadReply(#[source] serde_json::Error),
    /// The daemon refused the request; its message says why and what to do. It may quote
    /// what an app chose (a name, its binary's bytes): escape it before printing.
    #[error("{0}")]
    Refused(String),
}

/// The answers of a streaming request, in order (see [`AdminClient::follow`]).
#[derive(Debug)]
pub struct AdminStream<T> {
    stream: UnixStream,
    answers: std::marker::PhantomData<T>,
}

impl<T: serde::de::DeserializeOwned> AdminStream<T> {
    /// The next answer; `None` once the daemon has closed the stream.
    pub async fn next(&mut self) -> Option<Result<T, AdminError>> {
        let body = match read_frame(&mut self.stream, 16 * MAX_ADMIN_FRAME).await {
            Ok(Some(body)) => body,
            Ok(None) => return None,
            Err(e) => return Some(Err(AdminError::Exchange(std::io::Error::other(e)))),
        };
        Some(answer(&body))
    }
}

/// The client side of the admin socket: one typed request, one typed answer.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AdminClient {
    /// A client of the daemon whose admin socket is `socket`; each call may take at most
    /// `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> AdminClient {
        AdminClient {
            socket: socket.into(),
            timeout,
        }
    }

    /// This client with another deadline per call.
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> AdminClient {
        AdminClient {
            socket: self.socket.clone(),
            timeout,
        }
    }

    /// The admin socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a streaming `request` (`events`) on a connection of its own; its answers come
    /// one by one from [`AdminStream::next`], without a deadline, until the daemon stops.
    ///
    /// # Errors
    ///
    /// The daemon is not reachable, or the request could not be sent.
    pub async fn follow<R: AdminCall>(
        &self,
        request: R,
    ) -> Result<AdminStream<R::Response>, AdminError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let stream = self.send(request.into(), deadline).await?;
        Ok(AdminStream {
            stream,
            answers: std::marker::PhantomData,
        })
    }

    /// Sends `request` on a connection of its own and returns the daemon's result.
    ///
    /// # Errors
    ///
    /// The daemon is not reachable, the exchange failed or timed out, the answer is not
    /// this request's response, or the daemon refused the request.
    pub async fn call<R: AdminCall>(&self, request: R) -> Result<R::Response, AdminError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut stream = self.send(request.into(), deadline).await?;
        let read = read_frame(&mut stream, 16 * MAX_ADMIN_FRAME);
        let reply = tokio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| AdminError::TimedOut(self.timeout))?
            .map_err(|e| AdminError::Exchange(std::io::Error::other(e)))?
            .ok_or_else(|| {
                AdminError::Exchange(std::io::Error::other(
                    "the daemon closed the admin connection",
                ))
            })?;
        answer(&reply)
    }

    /// Connects and writes `request`, before `deadline`.
    async fn send(
        &self,
        request: AdminRequest,
        deadline: tokio::time::Instant,
    ) -> Result<UnixStream, AdminError> {
        let body = serde_json::to_vec(&request).map_err(AdminError::Encode)?;
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| AdminError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        tokio::time::timeout_at(deadline, write_frame(&mut stream, &body, MAX_ADMIN_FRAME))
            .await
            .map_err(|_| AdminError::TimedOut(self.timeout))?
            .map_err(|e| AdminError::Exchange(std::io::Error::other(e)))?;
        Ok(stream)
    }
}

/// The result an answer frame carries, or the daemon's refusal.
fn answer<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    let reply: AdminReply<T> = serde_json::from_slice(body).map_err(AdminError::BadReply)?;
    match reply {
        AdminReply {
            ok: true,
            result: Some(result),
            ..
        } => Ok(result),
        AdminReply { error, .. } => Err(AdminError::Refused(
            error.unwrap_or_else(|| "the daemon refused the request".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        for bad in ["", "0", "-1s", "5 parsecs", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn graces() {
        assert_eq!(parse_grace("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("0.0").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_grace("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_grace("-1").is_err());
        assert!(parse_grace("soon").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert_eq!(parse_cpus("1024").unwrap(), 1024.0);
        for bad in ["0", "-1", "1025", "NaN", "many"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absolute_paths() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(parse_absolute_path("bin/app").unwrap(), cwd.join("bin/app"));
        assert_eq!(
            parse_absolute_path("/bin/true").unwrap(),
            PathBuf::from("/bin/true")
        );
    }
}
