//! The app-side client: what an app uses to talk to its `fold_client` daemon.
//!
//! ```no_run
//! use fold_ipc::client::Client;
//! use fold_ipc::query::{eq, Query};
//! use serde_json::json;
//!
//! # async fn run() -> fold_ipc::client::Result<()> {
//! let client = Client::from_env().await?; // app id, socket and credentials from the host
//! let created = client.create("post", json!({"title": "hi", "author": "alice"})).await?;
//! let page = client
//!     .query(Query::new("post").filter(eq("author", "alice")).limit(20))
//!     .await?;
//! println!("{} is one of {} posts", created.id, page.rows.len());
//! # Ok(()) }
//! ```
//!
//! # How the pieces fit
//!
//! - [`ClientBuilder`] (`builder.rs`): socket path, identity (a credentials file, or a bare
//!   token in dev mode), timeout, frame cap, reconnect backoff. [`ClientBuilder::from_env`]
//!   reads the variables the daemon sets for the app.
//! - [`Client`] (this file and `ops.rs`): one method per operation. Cheap to clone; clones
//!   share one connection, on which any number of calls are in flight at once, matched by
//!   `request_id` ([`mux`](crate::mux)).
//! - `auth.rs`: stamps each request with the protocol version, a fresh id, the token, the
//!   time, a random nonce, and signs it ([`signing`](crate::signing)).
//! - `link.rs`: opens the connection on demand and reopens it with exponential backoff
//!   after the daemon restarts, within the call's timeout.
//! - [`Error`] (`error.rs`): one variant per failure, mapped from the daemon's
//!   [`ErrorCode`].
//! - [`blocking`]: the same API for apps without an async runtime.
//!
//! # Timeouts and retries
//!
//! Every call has a timeout ([`DEFAULT_TIMEOUT`] unless set), which covers connecting too.
//! A request is never sent twice when it may have reached the daemon: if the connection
//! closes while it is in flight, or no answer comes in time, the call fails with
//! [`Error::Disconnected`] (`sent: true`) or [`Error::Timeout`], and the app decides whether
//! to retry. The next call reconnects by itself. A request the client knows was not sent
//! (the connection was already closed) goes out on a fresh connection.

pub mod blocking;

mod auth;
mod builder;
mod error;
mod link;
mod ops;

#[cfg(test)]
mod tests;

pub use builder::{
    ClientBuilder, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_TIMEOUT, ENV_APP_ID,
    ENV_APP_TOKEN, ENV_CREDENTIALS, ENV_SOCKET_DIR,
};
pub use error::{Error, Result};

use crate::credentials::Credentials;
use crate::error::ErrorCode;
use auth::{Auth, RequestIds};
use link::{Backoff, Link};
use serde_json::value::RawValue;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// A connection to the app's daemon. `Clone + Send + Sync`: clones share the connection and
/// may call concurrently.
///
/// Build one with [`Client::from_env`], [`Client::connect`] or a [`ClientBuilder`]. The
/// operations (`ping`, `query`, `create`, ...) are listed below; [`Client::send`] takes any
/// [`Operation`](crate::Operation). `Debug` shows the app id and socket, never secrets.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// This handle's per-call timeout; see [`Client::with_timeout`].
    timeout: Duration,
}

/// What all clones of a client share.
#[derive(Debug)]
struct Inner {
    link: Link,
    /// The identity in use; replaced when a rotated credentials file is re-read.
    auth: RwLock<Arc<Auth>>,
    /// The credentials file to re-read after an `unauthenticated` answer, if there is one.
    credentials_path: Option<PathBuf>,
    ids: RequestIds,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("app_id", &self.app_id())
            .field("socket_path", &self.socket_path())
            .field("signed", &self.current_auth().is_signed())
            .field("timeout", &self.timeout)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Client {
    /// Connects as the app the environment names; see [`ClientBuilder::from_env`] for the
    /// variables read and [`ClientBuilder::connect`] for how connecting is retried.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming a missing variable or unreadable credentials file, or
    /// [`Error::Disconnected`] when the socket cannot be reached within the timeout.
    pub async fn from_env() -> Result<Client> {
        ClientBuilder::from_env()?.connect().await
    }

    /// Connects to the socket at `socket_path`, signing with `credentials`, with default
    /// settings.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] when the socket cannot be reached within the timeout.
    pub async fn connect(
        socket_path: impl Into<PathBuf>,
        credentials: Credentials,
    ) -> Result<Client> {
        ClientBuilder::new(socket_path, credentials).connect().await
    }

    pub(crate) fn from_builder(builder: ClientBuilder) -> Client {
        let backoff = Backoff {
            initial: builder.backoff_initial,
            max: builder.backoff_max,
        };
        Client {
            inner: Arc::new(Inner {
                link: Link::new(builder.socket_path, builder.max_frame, backoff),
                auth: RwLock::new(Arc::new(builder.auth)),
                credentials_path: builder.credentials_path,
                ids: RequestIds::new(),
            }),
            timeout: builder.timeout,
        }
    }

    /// A handle on the same connection whose calls use `timeout` instead.
    ///
    /// ```no_run
    /// # async fn run(client: fold_ipc::client::Client) -> fold_ipc::client::Result<()> {
    /// use std::time::Duration;
    /// let pong = client.with_timeout(Duration::from_millis(500)).ping().await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            timeout,
        }
    }

    /// This handle's per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The app this client speaks for.
    pub fn app_id(&self) -> String {
        self.current_auth().app_id().to_string()
    }

    /// The socket this client connects to.
    pub fn socket_path(&self) -> &Path {
        self.inner.link.path()
    }

    /// Whether a connection is open right now. A closed one is reopened by the next call.
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    /// Sends any operation and returns its result as JSON, for operations without a typed
    /// method or results read generically.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn send(&self, operation: &crate::Operation) -> Result<serde_json::Value> {
        self.call(operation).await
    }

    /// Sends an operation by name with `params` as given, byte for byte, and returns the
    /// raw result. For operations newer than this crate; the daemon checks the params.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn send_raw(
        &self,
        operation: &str,
        params: Option<&RawValue>,
    ) -> Result<Box<RawValue>> {
        self.call_raw(operation, params.map(ToOwned::to_owned))
            .await
    }

    /// Opens the connection now (with backoff) if none is open.
    pub(crate) async fn ensure_connected(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let auth = self.current_auth();
        let connected = self.inner.link.connect_as(deadline, auth.session()).await;
        connected.map(|_| ())
    }

    fn current_auth(&self) -> Arc<Auth> {
        Arc::clone(
            &self
                .inner
                .auth
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Sends `operation` with `params` and returns the raw result, or the typed error.
    async fn call_raw(
        &self,
        operation: &str,
        params: Option<Box<RawValue>>,
    ) -> Result<Box<RawValue>> {
        let deadline = Instant::now() + self.timeout;
        let mut reloaded = false;
        loop {
            let auth = self.current_auth();
            // Stamped and signed once the connection is open (again on each attempt); on a
            // session the connection stands for the signature.
            let make = |session: bool| match session {
                true => Auth::session_request(self.inner.ids.next(), operation, params.clone()),
                false => auth.request(self.inner.ids.next(), operation, params.clone()),
            };
            let session = auth.session();
            let response = match self.inner.link.call(make, deadline, session).await {
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        message: format!(
                            "no response to {operation} within {:?}; it may have been applied",
                            self.timeout
                        ),
                    })
                }
                other => other?,
            };
            if response.success {
                // An absent result reads as JSON `null`.
                return Ok(response.result.unwrap_or_default());
            }
            let Some(error) = response.error else {
                return Err(Error::protocol(
                    "the daemon reported a failure without an error object",
                ));
            };
            // Refused before anything was applied: after a rotation the new credentials
            // make it go through, so one retry with them is safe.
            if error.code == ErrorCode::Unauthenticated && !reloaded && session.is_some() {
                // A session ends when the app's record changes (rotation, grants): a new
                // connection opens a new one, with the credentials the file holds now.
                self.reload(&auth);
                self.inner.link.reset();
                reloaded = true;
                continue;
            }
            if error.code == ErrorCode::Unauthenticated && !reloaded && self.reload(&auth) {
                reloaded = true;
                continue;
            }
            return Err(error.into());
        }
    }

    /// Re-reads the credentials file; true when it now holds other secrets for the same app.
    fn reload(&self, used: &Auth) -> bool {
        let Some(path) = &self.inner.credentials_path else {
            return false;
        };
        let Ok(fresh) = Credentials::load(path) else {
            return false;
        };
        if fresh.app_id != used.app_id() {
            return false;
        }
        let fresh = Auth::Signed(Box::new(fresh));
        if !fresh.differs_from(used) {
            return false;
        }
        *self
            .inner
            .auth
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        true
    }
}
