//! Where a request's time goes: lock-free counters of nanoseconds per stage, kept always.
//!
//! The transport stages (read, decode, dispatch, encode, queue, write) are counted by
//! `fold_ipc::server` into a [`ServerStats`] the handler hands it; the daemon's own stages
//! (authentication, policy, node, audit) are counted here. Each stage costs two clock reads
//! (`Instant::now`, a vDSO call) and one relaxed atomic add; `fold_bench` measures that cost
//! and reports it beside the breakdown.
//!
//! Read with [`Metrics::snapshot`]; the difference of two snapshots
//! ([`MetricsSnapshot::since`]) covers the requests answered in between.

use fold_ipc::server::{ServerStats, StatsSnapshot};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The daemon's request counters.
#[derive(Debug, Default)]
pub struct Metrics {
    transport: Arc<ServerStats>,
    requests: AtomicU64,
    auth_ns: AtomicU64,
    policy_ns: AtomicU64,
    node_ns: AtomicU64,
    audit_ns: AtomicU64,
    batches: AtomicU64,
    signatures: AtomicU64,
}

/// A daemon stage timed by [`Metrics::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Rate-limit check, token, signature (`verify_strict`), timestamp window, nonce.
    Auth,
    /// Parsing the typed operation and checking the grants.
    Policy,
    /// The node call (embedded: the query itself; external: the proxied round trip).
    Node,
    /// Building the audit line and queueing it for the audit writer.
    Audit,
}

/// A reading of [`Metrics`]: totals since the daemon started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// The app sockets' transport stages (all apps together).
    pub transport: StatsSnapshot,
    /// Requests answered by the daemon's handler.
    pub requests: u64,
    /// See [`Stage::Auth`].
    pub auth_ns: u64,
    /// See [`Stage::Policy`].
    pub policy_ns: u64,
    /// See [`Stage::Node`].
    pub node_ns: u64,
    /// See [`Stage::Audit`].
    pub audit_ns: u64,
    /// Signature verifications run (a batch, or a single `verify_strict`).
    pub batches: u64,
    /// Signatures they verified.
    pub signatures: u64,
}

impl MetricsSnapshot {
    /// The counts accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            transport: self.transport.since(&earlier.transport),
            requests: self.requests.saturating_sub(earlier.requests),
            auth_ns: self.auth_ns.saturating_sub(earlier.auth_ns),
            policy_ns: self.policy_ns.saturating_sub(earlier.policy_ns),
            node_ns: self.node_ns.saturating_sub(earlier.node_ns),
            audit_ns: self.audit_ns.saturating_sub(earlier.audit_ns),
            batches: self.batches.saturating_sub(earlier.batches),
            signatures: self.signatures.saturating_sub(earlier.signatures),
        }
    }
}

impl Metrics {
    /// The counters the app sockets' connection servers fill in.
    pub fn transport(&self) -> Arc<ServerStats> {
        Arc::clone(&self.transport)
    }

    /// Adds the time since `since` to `stage`; returns now, the start of the next stage.
    pub fn add(&self, stage: Stage, since: Instant) -> Instant {
        let now = Instant::now();
        let ns = u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX);
        let counter = match stage {
            Stage::Auth => &self.auth_ns,
            Stage::Policy => &self.policy_ns,
            Stage::Node => &self.node_ns,
            Stage::Audit => &self.audit_ns,
        };
        counter.fetch_add(ns, Ordering::Relaxed);
        now
    }

    /// Counts one verification of `signatures` signatures (1: a single `verify_strict`).
    pub fn verified(&self, signatures: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.signatures
            .fetch_add(signatures as u64, Ordering::Relaxed);
    }

    /// Counts one answered request.
    pub fn answered(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The current totals.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            transport: self.transport.snapshot(),
            requests: get(&self.requests),
            auth_ns: get(&self.auth_ns),
            policy_ns: get(&self.policy_ns),
            node_ns: get(&self.node_ns),
            audit_ns: get(&self.audit_ns),
            batches: get(&self.batches),
            signatures: get(&self.signatures),
        }
    }
}
