//! The client's connection to its socket: opened on demand, reopened with backoff after the
//! daemon restarts, never used to resend a request that may already have arrived.

use super::error::{Error, Result};
use crate::credentials::Credentials;
use crate::message::{Request, Response};
use crate::mux::{CallError, MuxConnection};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::time::Instant;

/// How often a request that was certainly not sent (the connection was found closed just as
/// it was handed over) is tried on a fresh connection before giving up.
const NOT_SENT_ATTEMPTS: usize = 3;

/// Exponential backoff between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// Wait after the first failed attempt.
    pub(crate) initial: Duration,
    /// Longest wait between two attempts.
    pub(crate) max: Duration,
}

/// One socket path and the connection to it, if one is open.
#[derive(Debug)]
pub(crate) struct Link {
    path: PathBuf,
    max_frame: usize,
    backoff: Backoff,
    /// The open connection; `None` before the first call and after a failed reconnect.
    current: Mutex<Option<Open>>,
    /// Held while connecting, so concurrent callers wait for one reconnect instead of each
    /// opening their own.
    connecting: tokio::sync::Mutex<()>,
}

impl Link {
    pub(crate) fn new(path: PathBuf, max_frame: usize, backoff: Backoff) -> Link {
        Link {
            path,
            max_frame,
            backoff,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a connection is open right now.
    pub(crate) fn is_connected(&self) -> bool {
        self.open_connection().is_some()
    }

    fn open_connection(&self) -> Option<(Arc<MuxConnection>, bool)> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|open| open.is_alive())
            .map(|open| (Arc::clone(&open.mux), open.session))
    }

    /// Drops the open connection, so the next call opens a new one (with a new session).
    pub(crate) fn reset(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Sends the request `make` builds and waits for its response until `deadline`.
    ///
    /// `make` is called once per attempt, after the connection is open, so every attempt is
    /// stamped and signed afresh: a request signed before the daemon restarted would be
    /// refused by the new daemon (`replay`, docs/protocol.md 6.5), and a request is never
    /// sent twice with one nonce.
    ///
    /// A request is sent at most once on a connection where it may have arrived: if the
    /// connection closes with it in flight the caller gets `Disconnected { sent: true }`.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] (with `sent` saying whether it may have arrived),
    /// [`Error::Timeout`], or [`Error::Protocol`] for a request over the frame cap.
    /// With `session` credentials a new connection opens a session first (protocol v2);
    /// `make` is told whether the connection it stamps for is one.
    pub(crate) async fn call(
        &self,
        make: impl Fn(bool) -> Request,
        deadline: Instant,
        session: Option<&Credentials>,
    ) -> Result<Response> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (conn, in_session) = self.connect_as(deadline, session).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = make(in_session);
            match conn.call(&request, remaining).await {
                Err(CallError::Disconnected { sent: false })
                    if attempts < NOT_SENT_ATTEMPTS && Instant::now() < deadline => {}
                other => return other.map_err(Error::from),
            }
        }
    }

    /// The open connection, or a new one made with backoff until `deadline`, opening a
    /// session on a new connection with `session` credentials; also says whether the
    /// connection is a session.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] with `sent: false`, naming the socket and the last failure,
    /// when no connection could be made in time; the daemon's refusal of a hello.
    pub(crate) async fn connect_as(
        &self,
        deadline: Instant,
        session: Option<&Credentials>,
    ) -> Result<(Arc<MuxConnection>, bool)> {
        if let Some(open) = self.open_connection() {
            return Ok(open);
        }
        let Ok(_guard) = tokio::time::timeout_at(deadline, self.connecting.lock()).await else {
            return Err(Error::not_connected(format!(
                "cannot connect to {}: another call's attempt to connect outlasted this call's \
                 timeout; the request was not sent",
                self.path.display()
            )));
        };
        // Someone else may have reconnected while this call waited for the lock.
        if let Some(open) = self.open_connection() {
            return Ok(open);
        }
        let mut wait = self.backoff.initial;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure =
                match tokio::time::timeout_at(deadline, UnixStream::connect(&self.path)).await {
                    Ok(Ok(mut stream)) => {
                        if let Some(creds) = session {
                            // A refused hello is the app's to see, not a reason to retry.
                            open_session(&mut stream, creds, self.max_frame, deadline).await?;
                        }
                        let probe = stream.as_fd().try_clone_to_owned().ok();
                        let mux = Arc::new(MuxConnection::new(stream, self.max_frame));
                        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Open {
                            mux: Arc::clone(&mux),
                            probe,
                            session: session.is_some(),
                        });
                        return Ok((mux, session.is_some()));
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "connecting took too long".to_string(),
                };
            let now = Instant::now();
            if now + wait >= deadline {
                return Err(self.unreachable(&failure, attempts));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.backoff.max);
        }
    }

    fn unreachable(&self, failure: &str, attempts: usize) -> Error {
        Error::not_connected(format!(
            "cannot connect to {}: {failure} ({attempts} attempts); the request was not sent",
            self.path.display()
        ))
    }
}

/// An open connection, with a duplicate of its socket to check the peer is still there.
#[derive(Debug)]
struct Open {
    mux: Arc<MuxConnection>,
    /// Dropped with the connection, so it never keeps a replaced socket open.
    probe: Option<OwnedFd>,
    /// Whether its hello opened a session (its requests then go unsigned).
    session: bool,
}

/// Opens a session on a new connection: reads the daemon's challenge, sends the hello
/// (`crate::session`), and reads its answer, all before `deadline`.
///
/// # Errors
///
/// [`Error::Disconnected`] (`sent: false`) when the daemon sends no challenge or closes;
/// the daemon's refusal of the hello as its error; [`Error::Protocol`] for anything else.
async fn open_session(
    stream: &mut UnixStream,
    creds: &Credentials,
    max_frame: usize,
    deadline: Instant,
) -> Result<()> {
    use crate::frame::{read_frame, write_frame};
    use crate::session::{Challenge, CHALLENGE_ID, HELLO};
    let handshake = async {
        let challenge = read_response(stream, max_frame).await?;
        if challenge.request_id.as_deref() != Some(CHALLENGE_ID) || !challenge.success {
            return Err(Error::protocol(
                "the daemon sent no session challenge: is the app installed with --auth session?",
            ));
        }
        let challenge: Challenge = challenge
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .ok_or_else(|| Error::protocol("the session challenge is malformed"))?;
        let hello = super::auth::hello(creds, &challenge.nonce);
        write_frame(stream, &hello.encode(), max_frame)
            .await
            .map_err(|e| Error::not_connected(format!("cannot send the hello: {e}")))?;
        let answer = read_response(stream, max_frame).await?;
        match (
            answer.request_id.as_deref() == Some(HELLO),
            answer.success,
            answer.error,
        ) {
            (true, true, _) => Ok(()),
            (_, _, Some(error)) => Err(Error::from(error)),
            _ => Err(Error::protocol("unexpected answer to the hello")),
        }
    };
    async fn read_response(stream: &mut UnixStream, max_frame: usize) -> Result<Response> {
        let body = read_frame(stream, max_frame)
            .await
            .map_err(|e| Error::not_connected(format!("session handshake: {e}")))?
            .ok_or_else(|| {
                Error::not_connected(
                    "the daemon closed the connection during the session handshake",
                )
            })?;
        Response::decode(&body).map_err(|e| Error::protocol(format!("session handshake: {e}")))
    }
    tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| {
            Error::not_connected(
                "the session handshake did not finish in time; the request was not sent",
            )
        })?
}

impl Open {
    /// Whether requests can still go out on this connection.
    ///
    /// The mux notices a closed peer when its reader task next runs, which on a busy or
    /// single-threaded runtime can be after the next request was handed over, making that
    /// request look "maybe sent". A non-blocking peek at the socket sees the daemon's close
    /// (end of stream, or a reset) at once, so a connection closed by a restart or an idle
    /// timeout is replaced before anything is sent on it.
    fn is_alive(&self) -> bool {
        if self.mux.is_closed() {
            return false;
        }
        let Some(fd) = &self.probe else {
            return true;
        };
        let mut byte = [0u8; 1];
        match recv(
            fd.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            // Responses waiting to be read, or nothing yet: the peer is there.
            Ok(n) if n > 0 => true,
            Err(Errno::EAGAIN | Errno::EINTR) => true,
            // End of stream, or the connection was reset.
            Ok(_) | Err(_) => false,
        }
    }
}
