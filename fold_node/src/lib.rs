//! `fold_node`: the FoldClient data node.
//!
//! A small, durable store of typed records: schemas with validated names and typed
//! fields, records with generated ids, queries (projection, filter tree, order, paging),
//! mutations that each leave an immutable version, and provenance (which app wrote what).
//! Storage is SQLite in WAL mode; the node speaks the `fold_ipc` protocol over a private
//! Unix socket or loopback TCP, and can be embedded in-process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fold_ipc::query::{eq, Query};
//! use fold_ipc::Operation;
//! let node = fold_node::Node::open("/var/lib/fold")?;
//! let page = node
//!     .execute(Some("social"), Operation::Query(Query::new("post").filter(eq("author", "alice"))))
//!     .await?;
//! println!("{}", page.get());
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`node`]: [`Node`], the in-process API; [`Node::execute`] runs one
//!   [`fold_ipc::Operation`].
//! - [`server`]: [`serve`] a node on a [`Listener`]; a thin [`NodeHandler`] over
//!   [`Node::execute`], on top of `fold_ipc::server::serve_connection`.
//! - [`listen`]: [`bind_unix`] (0600 socket, 0700 directory, stale-socket cleanup) and
//!   [`bind_tcp`] (loopback only).
//! - [`secret`]: the node secret TCP clients must present.
//! - [`store`]: the SQLite file, connection settings, [`Durability`] and the table layout.
//! - `catalog` (schemas and indexes), `validate` (record values), `records` (writes),
//!   `history`, `columns` / `filter` / `query` / `cursor` (query compilation to
//!   parameterised SQL), `writer` (the group-committing writer thread, fed by per-app
//!   queues), `fair` (the read slots, shared fairly among apps).
//! - [`error`]: [`NodeError`], and its single mapping to a wire error.
//!
//! The data model, durability choice and cursor design are described in `docs/node.md`.

#![warn(missing_docs)]

mod budget;
mod catalog;
mod columns;
mod cursor;
pub mod error;
mod fair;
mod filter;
mod history;
pub mod listen;
pub mod node;
mod query;
mod records;
pub mod secret;
pub mod server;
pub mod store;
mod usage;
mod validate;
mod writer;

pub use columns::META_FIELDS;
pub use error::NodeError;
pub use filter::MAX_SQL_PARAMS;
pub use listen::{bind_tcp, bind_unix};
pub use node::{Node, NodeConfig, DEFAULT_IDENTITY};
pub use secret::NodeSecret;
pub use server::{serve, Listener, NodeHandler};
pub use store::Durability;
pub use writer::MAX_BATCH;

#[cfg(test)]
mod tests;
