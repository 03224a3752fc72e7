//! `fold_client`: the FoldClient host daemon.
//!
//! It gives each installed app an identity (id, token, ed25519 key), a private Unix socket,
//! and a place to run (a hardened container, or the host in dev mode); it authenticates every
//! request the app sends and forwards it to the data node only within the app's grants.
//!
//! # Layout
//!
//! Modules follow a request:
//! - [`config`]: the validated [`Config`](config::Config) (phase two of the configuration).
//! - [`registry`]: installed apps, their uids, token hashes and public keys.
//! - [`ipc`]: per-app sockets, the peer check, and the request handler.
//! - [`auth`]: token, signature, timestamp and nonce checks; pure.
//! - [`nonce_journal`]: accepted nonces kept across restarts, so replays stay refused.
//! - [`verifier`]: signature verification, in batches when an app's requests arrive together.
//! - [`policy`]: grants; deny by default.
//! - [`proxy`]: the only way to the node (embedded or external).
//! - [`audit`]: one JSON line per decision and lifecycle event.
//! - [`metrics`]: where each request's time goes (counters per stage).
//! - [`sandbox`]: where apps run, behind one trait: hardened Docker containers and the host
//!   in dev mode (`direct`, NOT sandboxed); tests add a scriptable fake.
//! - [`restart`]: the restart policy and backoff (plain data for config and supervisor).
//! - [`supervisor`]: launching, stopping, restarting and tracking apps; adoption after a
//!   daemon restart; it publishes each app's peer rule for the socket's peer check.
//! - [`uids`]: per-app uids that belong to the app alone (host databases, live processes,
//!   host-wide reservations).
//! - [`admin`]: the admin socket the CLI uses: its typed protocol, client and server.
//! - [`apps`]: the app lifecycle (install, rotate, remove, placement, grants, limits).
//! - [`daemon`]: startup, app lifecycle, shutdown; [`run`] is the entry point.

pub mod admin;
pub mod app_limits;
pub mod app_metrics;
pub mod apps;
pub mod audit;
pub mod auth;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod ipc;
pub mod metrics;
pub mod nonce_journal;
pub mod policy;
pub mod prometheus;
pub mod proxy;
pub mod registry;
pub mod restart;
pub mod sandbox;
pub mod supervisor;
pub mod terminal;
pub mod uids;
pub mod verifier;

pub use daemon::{run, DaemonError};

/// Makes the allocator give every large buffer (a request frame, a record of an app) back
/// to the system when it is freed, instead of keeping it for reuse.
///
/// glibc's default raises its mmap threshold each time a large block is freed, after which
/// blocks of that size come from per-thread arenas and stay resident once freed: with a
/// few worker threads, each 4 MiB request an app sends could leave that much behind on
/// every thread. A fixed threshold keeps that behaviour off, so the daemon's peak memory
/// follows what its requests hold at once (`fold_bench`'s hostile-frame row measures it).
/// Call it first thing in `main`, before any thread starts.
pub fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Blocks from this size up are mapped on their own and unmapped when freed.
        const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
        // SAFETY: mallopt only sets allocator parameters; meant to be called before any thread starts.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}
