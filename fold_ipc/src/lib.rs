//! `fold_ipc`: the FoldClient wire protocol, shared by the daemon, the node and apps.
//!
//! Everything that crosses a socket between an app, the `fold_client` daemon and
//! `fold_node` is defined here, once, so the three cannot drift apart.
//!
//! # Layout
//!
//! - [`frame`]: bytes on the socket. A 4-byte big-endian length, then a UTF-8 JSON body,
//!   with a size cap checked before any allocation.
//! - [`message`]: the request and response envelopes ([`Request`], [`Response`]).
//! - [`error`]: the stable wire error codes ([`ErrorCode`], [`WireError`]).
//! - [`operation`]: the typed operations and their parameters ([`Operation`]).
//! - [`schema`] and [`query`]: schema definitions, the filter tree and query parameters.
//! - [`signing`]: the canonical bytes a request signature covers; sign and verify.
//!   Pure functions, no I/O.
//! - [`session`]: protocol v2 sessions, signed once per connection: the challenge, the
//!   hello and its canonical bytes. Pure functions, no I/O.
//! - [`mux`]: the client side of a connection: many requests in flight, matched by `request_id`.
//! - [`server`]: the server side of a connection (shared by the node and the daemon).
//! - [`credentials`]: the credentials file the daemon hands each app.
//! - [`client`]: the app-side client ([`Client`], async, and [`client::blocking::Client`]),
//!   built on [`mux`], [`signing`] and [`credentials`].
//! - [`version`]: protocol version constants and the rule for unknown versions.
//!
//! The byte-level specification, with known-answer vectors, is `docs/protocol.md`.

#![warn(missing_docs)]

pub mod client;
pub mod credentials;
pub mod error;
pub mod frame;
pub mod heavy;
pub mod limits;
pub mod message;
pub mod mux;
pub mod operation;
pub mod params;
pub mod query;
pub mod schema;
pub mod server;
pub mod session;
pub mod signing;

pub use client::{Client, ClientBuilder};
pub use credentials::Credentials;
pub use error::{ErrorCode, WireError};
pub use message::{Request, Response};
pub use operation::{Operation, OperationKind};

/// Protocol versions.
///
/// A request carries its version in the `v` field. The rule for a server:
///
/// - `v` equal to a version in [`version::SUPPORTED`]: served.
/// - `v` present but not supported: answered with an
///   [`ErrorCode::UnsupportedVersion`] error response whose message names the supported
///   versions; the connection stays open.
/// - `v` absent: a client built for the reference implementation (protocol "0", which had
///   no version field). It is parsed leniently so it gets a readable error response
///   (typically `bad_signature`, since it cannot sign) instead of a dropped connection.
pub mod version {
    /// Protocol version 1: length-prefixed JSON, ed25519-signed requests with replay protection.
    pub const V1: u32 = 1;
    /// Protocol version 2: v1's framing and envelopes, plus sessions (`crate::session`):
    /// one signed hello per connection, then requests authenticated by the connection.
    pub const V2: u32 = 2;
    /// The version this crate sends on signed requests.
    pub const CURRENT: u32 = V1;
    /// Every version a server built from this crate accepts.
    pub const SUPPORTED: &[u32] = &[V1, V2];

    /// Whether a server built from this crate accepts requests of version `v`.
    pub fn is_supported(v: u32) -> bool {
        SUPPORTED.contains(&v)
    }
}
