//! Each app's request counts and latencies, for the Prometheus endpoint (`prometheus`):
//! plain atomics in the app's runtime state, so the request path pays a few relaxed adds
//! and no lock. Operations are counted by kind (`fold_ipc::OperationKind`); a name that is
//! not an operation counts as `other`, so an app cannot grow the label set.

use fold_ipc::OperationKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (the last bucket is `+Inf`).
pub const LATENCY_BOUNDS: [f64; 10] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Operation kinds, plus `other` for a name that is none.
const KINDS: usize = OperationKind::ALL.len() + 1;

/// One app's counters.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// Answered requests by operation and verdict (allow, deny).
    by: [[AtomicU64; 2]; KINDS],
    /// Latency histogram: per bucket (not cumulative), the last one above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    /// Sum of the latencies, ns.
    sum_ns: AtomicU64,
}

/// A copy of one app's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct CountsSnapshot {
    /// (operation, verdict, count) for every non-zero count.
    pub requests: Vec<(&'static str, &'static str, u64)>,
    /// (upper bound, count) per bucket, not cumulative (as the encoder takes them), the
    /// last one unbounded (`f64::MAX`, written `+Inf`).
    pub buckets: Vec<(f64, u64)>,
    /// Requests timed.
    pub count: u64,
    /// Sum of their latencies, seconds.
    pub sum_seconds: f64,
}

fn kind_index(operation: &str) -> usize {
    OperationKind::ALL
        .iter()
        .position(|k| k.as_str() == operation)
        .unwrap_or(KINDS - 1)
}

impl RequestCounts {
    /// Counts one answered request.
    pub fn record(&self, operation: &str, allowed: bool, latency: Duration) {
        let verdict = usize::from(!allowed);
        self.by[kind_index(operation)][verdict].fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> CountsSnapshot {
        let mut requests = Vec::new();
        for (i, verdicts) in self.by.iter().enumerate() {
            let name = OperationKind::ALL.get(i).map_or("other", |k| k.as_str());
            for (v, count) in verdicts.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    requests.push((name, ["allow", "deny"][v], count));
                }
            }
        }
        let mut total = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS.len() + 1);
        for (i, count) in self.buckets.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            buckets.push((LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::MAX), count));
        }
        CountsSnapshot {
            requests,
            buckets,
            count: total,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_verdict_with_unknown_names_as_other() {
        let c = RequestCounts::default();
        c.record("ping", true, Duration::from_micros(50));
        c.record("ping", true, Duration::from_micros(300));
        c.record("query", false, Duration::from_millis(2));
        c.record("no_such_op_1", false, Duration::from_secs(2));
        c.record("no_such_op_2", false, Duration::from_secs(2));
        let s = c.snapshot();
        assert_eq!(
            s.requests,
            [
                ("ping", "allow", 2),
                ("query", "deny", 1),
                ("other", "deny", 2)
            ]
        );
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (0.000_1, 1));
        assert_eq!(s.buckets[1], (0.000_25, 0));
        assert_eq!(s.buckets[2], (0.000_5, 1));
        assert_eq!(s.buckets[4], (0.002_5, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::MAX, 2)), "two above 1 s");
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), s.count);
    }
}
