//! A blocking client, for apps without an async runtime.
//!
//! [`Client`] owns a small tokio runtime (one worker thread, which keeps the connection's
//! reader and writer running between calls) and exposes the async client's methods as
//! plain functions. Clones share the runtime and the connection, and may be used from
//! several threads at once.
//!
//! ```no_run
//! use fold_ipc::client::blocking::Client;
//! use fold_ipc::query::{eq, Query};
//!
//! fn main() -> fold_ipc::client::Result<()> {
//!     let client = Client::from_env()?;
//!     let created = client.create("post", serde_json::json!({"title": "hi"}))?;
//!     let page = client.query(Query::new("post").filter(eq("title", "hi")))?;
//!     println!("{} of {}", created.id, page.rows.len());
//!     Ok(())
//! }
//! ```
//!
//! # Panics
//!
//! Every method panics when called from inside an async runtime (tokio refuses to block a
//! runtime thread), and so does dropping the last clone there. Async code should use
//! [`super::Client`].

use super::error::{Error, Result};
use super::ClientBuilder;
use crate::credentials::Credentials;
use crate::operation::{HistoryResult, MutationResult, Operation, Pong};
use crate::query::{Query, QueryResult};
use crate::schema::SchemaDef;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// The blocking form of [`super::Client`]: the same methods, without `.await`.
#[derive(Clone)]
pub struct Client {
    inner: super::Client,
    runtime: Arc<Runtime>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Client")
            .field("client", &self.inner)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Builds a [`blocking::Client`](Client) and opens its connection; see
    /// [`ClientBuilder::connect`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the runtime cannot start, or [`Error::Disconnected`] when the
    /// socket cannot be reached within the timeout.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn connect_blocking(self) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fold-ipc-client")
            .enable_all()
            .build()
            .map_err(|e| Error::config(format!("cannot start the client's runtime: {e}")))?;
        let inner = runtime.block_on(self.connect())?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }
}

impl Client {
    /// Connects as the app the environment names; see [`ClientBuilder::from_env`].
    ///
    /// # Errors
    ///
    /// As [`super::Client::from_env`].
    pub fn from_env() -> Result<Client> {
        ClientBuilder::from_env()?.connect_blocking()
    }

    /// Connects to the socket at `socket_path`, signing with `credentials`.
    ///
    /// # Errors
    ///
    /// As [`super::Client::connect`].
    pub fn connect(socket_path: impl Into<PathBuf>, credentials: Credentials) -> Result<Client> {
        ClientBuilder::new(socket_path, credentials).connect_blocking()
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A handle on the same connection whose calls use `timeout` instead.
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.with_timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    /// This handle's per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout()
    }

    /// The app this client speaks for.
    pub fn app_id(&self) -> String {
        self.inner.app_id()
    }

    /// The socket this client connects to.
    pub fn socket_path(&self) -> &Path {
        self.inner.socket_path()
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    /// See [`super::Client::ping`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn ping(&self) -> Result<Pong> {
        self.block_on(self.inner.ping())
    }

    /// See [`super::Client::list_schemas`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn list_schemas(&self) -> Result<Vec<String>> {
        self.block_on(self.inner.list_schemas())
    }

    /// See [`super::Client::get_schema`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn get_schema(&self, name: &str) -> Result<SchemaDef> {
        self.block_on(self.inner.get_schema(name))
    }

    /// See [`super::Client::create_schema`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn create_schema(&self, schema: SchemaDef) -> Result<SchemaDef> {
        self.block_on(self.inner.create_schema(schema))
    }

    /// See [`super::Client::delete_schema`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn delete_schema(&self, name: &str, force: bool) -> Result<u64> {
        self.block_on(self.inner.delete_schema(name, force))
    }

    /// See [`super::Client::query`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn query(&self, query: Query) -> Result<QueryResult> {
        self.block_on(self.inner.query(query))
    }

    /// See [`super::Client::query_as`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn query_as<T: DeserializeOwned>(&self, query: Query) -> Result<Vec<T>> {
        self.block_on(self.inner.query_as(query))
    }

    /// See [`super::Client::create`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn create<D: Serialize>(&self, schema: &str, data: D) -> Result<MutationResult> {
        self.block_on(self.inner.create(schema, data))
    }

    /// See [`super::Client::update`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn update<D: Serialize>(&self, schema: &str, id: &str, patch: D) -> Result<MutationResult> {
        self.block_on(self.inner.update(schema, id, patch))
    }

    /// See [`super::Client::delete`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn delete(&self, schema: &str, id: &str) -> Result<MutationResult> {
        self.block_on(self.inner.delete(schema, id))
    }

    /// See [`super::Client::history`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn history(&self, schema: &str, id: &str) -> Result<HistoryResult> {
        self.block_on(self.inner.history(schema, id))
    }

    /// See [`super::Client::send`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn send(&self, operation: &Operation) -> Result<serde_json::Value> {
        self.block_on(self.inner.send(operation))
    }

    /// See [`super::Client::send_raw`].
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub fn send_raw(&self, operation: &str, params: Option<&RawValue>) -> Result<Box<RawValue>> {
        self.block_on(self.inner.send_raw(operation, params))
    }
}
