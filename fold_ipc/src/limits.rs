//! What one app may use of the node, sent by the daemon with each request it proxies.
//!
//! An app never sends these: the daemon drops whatever an app puts in `limits` and sets its
//! own (from the app's install and the config file) on the request it makes to the node. A
//! node applies them to the request's `app_id`: a fair share of its read slots and its
//! writer, a storage quota, and a deadline after which the request's work is stopped.

use serde::{Deserialize, Serialize};

/// The limits a node applies to one request, for the request's `app_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLimits {
    /// Milliseconds the requester waits for the answer; when they pass, the node stops the
    /// request's work (a read is interrupted, a queued write is dropped unapplied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The app's share of the node's work.
    #[serde(default)]
    pub share: Share,
    /// The app's storage quota.
    #[serde(default)]
    pub quota: Quota,
}

/// An app's share of the node's read slots and writer. An app alone may use every slot;
/// while other apps are waiting, it holds at most these, and free slots go to the waiting
/// apps in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Most reads of the app running at once while another app waits for a read slot.
    pub reads: u32,
    /// Most writes of the app queued at the writer at once; further writes wait their
    /// turn behind other apps' writes.
    pub writes: u32,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            reads: DEFAULT_SHARE_READS,
            writes: DEFAULT_SHARE_WRITES,
        }
    }
}

/// Default [`Share::reads`].
pub const DEFAULT_SHARE_READS: u32 = 2;
/// Default [`Share::writes`].
pub const DEFAULT_SHARE_WRITES: u32 = 32;

/// An app's storage quota: what the records it wrote may take. `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Bytes of record data (current versions and kept history) written by the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Live records created by the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records: Option<u64>,
    /// Versions kept per record the app writes, the current one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_versions: Option<u32>,
    /// What happens to a write that would keep more than `max_versions` versions.
    #[serde(default)]
    pub history: HistoryPolicy,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            max_bytes: Some(DEFAULT_MAX_BYTES),
            max_records: Some(DEFAULT_MAX_RECORDS),
            max_versions: Some(DEFAULT_MAX_VERSIONS),
            history: HistoryPolicy::Prune,
        }
    }
}

impl Quota {
    /// No limit at all (the node's own writes, and clients that send no limits).
    pub const UNLIMITED: Quota = Quota {
        max_bytes: None,
        max_records: None,
        max_versions: None,
        history: HistoryPolicy::Prune,
    };
}

/// Default [`Quota::max_bytes`]: 256 MiB per app.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Default [`Quota::max_records`].
pub const DEFAULT_MAX_RECORDS: u64 = 1_000_000;
/// Default [`Quota::max_versions`].
pub const DEFAULT_MAX_VERSIONS: u32 = 64;

/// What to do when a write would keep more versions of a record than the quota allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryPolicy {
    /// Drop the oldest versions (the write succeeds).
    #[default]
    Prune,
    /// Refuse the write with `quota_exceeded`.
    Refuse,
}

/// What an app's records take on a node, as counted against its [`Quota`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of record data (current versions and kept history) written by the app.
    pub bytes: u64,
    /// Live records created by the app.
    pub records: u64,
    /// Versions kept, current ones included.
    pub versions: u64,
}

/// The node-only operation that answers what one app's records take ([`Usage`]), with
/// params [`UsageParams`]. Only the daemon sends it (it reaches the node's socket; apps do
/// not), so it is not an [`Operation`](crate::Operation).
pub const USAGE_OPERATION: &str = "usage";

/// The params of [`USAGE_OPERATION`]: `{"app_id":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// The app whose usage is asked for.
    pub app_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialises `value`, checks the text is `json`, and that it reads back equal.
    fn round_trip<T>(value: &T, json: &str)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_string(value).unwrap(), json);
        assert_eq!(&serde_json::from_str::<T>(json).unwrap(), value);
    }

    #[test]
    fn usage_shapes_round_trip() {
        round_trip(
            &UsageParams {
                app_id: "app_7f3a".into(),
            },
            r#"{"app_id":"app_7f3a"}"#,
        );
        round_trip(
            &Usage {
                bytes: 10,
                records: 2,
                versions: 3,
            },
            r#"{"bytes":10,"records":2,"versions":3}"#,
        );
        assert!(serde_json::from_str::<UsageParams>(r#"{"app_id":"a","x":1}"#).is_err());
    }
}
