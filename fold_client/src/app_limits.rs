//! What one app may use of the node and of the daemon beyond its container: its share of
//! the node's read slots and writer, its storage quota, its write rate, and the request
//! bytes it may have in flight.
//!
//! An app's record holds only what was set for it (`app install --max-bytes ...`,
//! `app limits`); the config file's values fill in the rest. So changing a default in the
//! config file changes it for every app that did not set its own.

use fold_ipc::limits::{HistoryPolicy, Quota, RequestLimits, Share};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Default [`NodeLimits::write_rate`]: writes per second, per app.
pub const DEFAULT_WRITE_RATE: u32 = 200;
/// Default [`NodeLimits::write_burst`]: writes an app may make at once after being idle.
pub const DEFAULT_WRITE_BURST: u32 = 400;
/// Default [`NodeLimits::bytes_in_flight`]: request bytes per app being read or answered.
pub const DEFAULT_BYTES_IN_FLIGHT: u64 = 16 << 20;

/// The limits that apply to one app, every field resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// Its share of the node's read slots and writer.
    pub share: Share,
    /// Its storage quota.
    pub quota: Quota,
    /// Writes (mutations, schema creation and deletion) per second; 0 is unlimited.
    pub write_rate: u32,
    /// Writes allowed at once after a pause (the token bucket's size).
    pub write_burst: u32,
    /// Bytes of requests being read or answered at once, over all its connections; a
    /// connection stops reading while the app is over it.
    pub bytes_in_flight: u64,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            share: Share::default(),
            quota: Quota::default(),
            write_rate: DEFAULT_WRITE_RATE,
            write_burst: DEFAULT_WRITE_BURST,
            bytes_in_flight: DEFAULT_BYTES_IN_FLIGHT,
        }
    }
}

impl NodeLimits {
    /// The limits sent to the node with one request of this app.
    pub fn for_request(&self, timeout: Duration) -> RequestLimits {
        RequestLimits {
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            share: self.share,
            quota: self.quota,
        }
    }
}

/// What was set for one app; `None` falls back to the config file. In quotas and rates,
/// 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// See [`Share::reads`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_reads: Option<u32>,
    /// See [`Share::writes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_writes: Option<u32>,
    /// See [`Quota::max_bytes`]; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// See [`Quota::max_records`]; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records: Option<u64>,
    /// See [`Quota::max_versions`]; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_versions: Option<u32>,
    /// See [`Quota::history`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryPolicy>,
    /// See [`NodeLimits::write_rate`]; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_rate: Option<u32>,
    /// See [`NodeLimits::write_burst`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_burst: Option<u32>,
    /// See [`NodeLimits::bytes_in_flight`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in_flight: Option<u64>,
}

impl LimitSettings {
    /// These settings over `defaults`.
    pub fn resolve(&self, defaults: &NodeLimits) -> NodeLimits {
        let limit = |set: Option<u64>, default: Option<u64>| match set {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        NodeLimits {
            share: Share {
                reads: self.share_reads.unwrap_or(defaults.share.reads),
                writes: self.share_writes.unwrap_or(defaults.share.writes),
            },
            quota: Quota {
                max_bytes: limit(self.max_bytes, defaults.quota.max_bytes),
                max_records: limit(self.max_records, defaults.quota.max_records),
                max_versions: limit(
                    self.max_versions.map(u64::from),
                    defaults.quota.max_versions.map(u64::from),
                )
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                history: self.history.unwrap_or(defaults.quota.history),
            },
            write_rate: self.write_rate.unwrap_or(defaults.write_rate),
            write_burst: self.write_burst.unwrap_or(defaults.write_burst),
            bytes_in_flight: self.bytes_in_flight.unwrap_or(defaults.bytes_in_flight),
        }
    }

    /// `self` with every field `other` sets replaced.
    pub fn updated(self, other: &LimitSettings) -> LimitSettings {
        LimitSettings {
            share_reads: other.share_reads.or(self.share_reads),
            share_writes: other.share_writes.or(self.share_writes),
            max_bytes: other.max_bytes.or(self.max_bytes),
            max_records: other.max_records.or(self.max_records),
            max_versions: other.max_versions.or(self.max_versions),
            history: other.history.or(self.history),
            write_rate: other.write_rate.or(self.write_rate),
            write_burst: other.write_burst.or(self.write_burst),
            bytes_in_flight: other.bytes_in_flight.or(self.bytes_in_flight),
        }
    }

    /// Checks ranges: shares, burst and bytes in flight must be positive.
    ///
    /// # Errors
    ///
    /// A message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("share_reads", self.share_reads.map(u64::from)),
            ("share_writes", self.share_writes.map(u64::from)),
            ("write_burst", self.write_burst.map(u64::from)),
            ("bytes_in_flight", self.bytes_in_flight),
        ];
        for (name, value) in positive {
            if value == Some(0) {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub fn full(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token, or says how long until one is there. A `rate` of 0 never limits.
    ///
    /// # Errors
    ///
    /// The wait until the next token.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_fall_back_to_the_defaults_and_zero_lifts_a_quota() {
        let defaults = NodeLimits::default();
        assert_eq!(LimitSettings::default().resolve(&defaults), defaults);
        let set = LimitSettings {
            max_bytes: Some(0),
            max_records: Some(10),
            share_reads: Some(1),
            ..LimitSettings::default()
        };
        let limits = set.resolve(&defaults);
        assert_eq!(limits.quota.max_bytes, None);
        assert_eq!(limits.quota.max_records, Some(10));
        assert_eq!(limits.share.reads, 1);
        assert_eq!(limits.share.writes, defaults.share.writes);
        let later = set.updated(&LimitSettings {
            max_records: Some(20),
            ..LimitSettings::default()
        });
        assert_eq!(later.max_records, Some(20));
        assert_eq!(later.share_reads, Some(1));
    }

    #[test]
    fn zero_shares_are_refused() {
        let bad = LimitSettings {
            share_reads: Some(0),
            ..LimitSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("share_reads"));
        assert!(LimitSettings::default().validate().is_ok());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(3, t0);
        for _ in 0..3 {
            bucket.take(10, 3, t0).unwrap();
        }
        let wait = bucket.take(10, 3, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        bucket.take(10, 3, t0 + Duration::from_millis(100)).unwrap();
        assert!(bucket.take(0, 3, t0).is_ok(), "rate 0 never limits");
    }
}
