//! Who the client speaks for, and how each request is stamped and signed.

use crate::credentials::Credentials;
use crate::message::Request;
use crate::signing::sign_request;
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::value::RawValue;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The app's identity and the secrets that prove it.
#[derive(Clone)]
pub(crate) enum Auth {
    /// The normal case: token plus an ed25519 signature on every request.
    Signed(Box<Credentials>),
    /// Dev mode for apps installed with `auth = "token"`: the token alone, no signature.
    TokenOnly {
        /// The app's id.
        app_id: String,
        /// The app's bearer token.
        token: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Signed(creds) => f.debug_tuple("Signed").field(creds).finish(),
            Auth::TokenOnly { app_id, .. } => f
                .debug_struct("TokenOnly")
                .field("app_id", app_id)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

impl Auth {
    /// The app the requests are made for.
    pub(crate) fn app_id(&self) -> &str {
        match self {
            Auth::Signed(creds) => &creds.app_id,
            Auth::TokenOnly { app_id, .. } => app_id,
        }
    }

    /// Whether requests are signed.
    pub(crate) fn is_signed(&self) -> bool {
        matches!(self, Auth::Signed(_))
    }

    /// The credentials to open a session with, when the app may (protocol v2).
    pub(crate) fn session(&self) -> Option<&Credentials> {
        match self {
            Auth::Signed(creds) if creds.session => Some(creds),
            _ => None,
        }
    }

    /// Whether `other` holds different secrets (after the credentials file was rewritten).
    pub(crate) fn differs_from(&self, other: &Auth) -> bool {
        match (self, other) {
            (Auth::Signed(a), Auth::Signed(b)) => {
                a.app_id != b.app_id
                    || a.token != b.token
                    || a.signing_key.to_bytes() != b.signing_key.to_bytes()
            }
            _ => true,
        }
    }

    /// A complete request: version, ids, token, a fresh timestamp and nonce, and (when the
    /// app has a key) the signature over all of it.
    pub(crate) fn request(
        &self,
        request_id: String,
        operation: &str,
        params: Option<Box<RawValue>>,
    ) -> Request {
        let mut request = self.stamped(request_id, operation, params);
        if let Auth::Signed(creds) = self {
            // Every signed field was just set, so signing cannot miss one.
            let _ = sign_request(&mut request, &creds.signing_key);
        }
        request
    }

    /// A request on a session (protocol v2): the version, the id, the operation and its
    /// params; the connection stands for the rest.
    pub(crate) fn session_request(
        request_id: String,
        operation: &str,
        params: Option<Box<RawValue>>,
    ) -> Request {
        Request {
            v: Some(crate::session::VERSION),
            request_id,
            app_id: None,
            token: None,
            operation: operation.to_string(),
            params,
            timestamp: None,
            nonce: None,
            signature: None,
            limits: None,
        }
    }

    fn stamped(
        &self,
        request_id: String,
        operation: &str,
        params: Option<Box<RawValue>>,
    ) -> Request {
        Request {
            v: Some(crate::version::CURRENT),
            request_id,
            app_id: Some(self.app_id().to_string()),
            token: Some(match self {
                Auth::Signed(creds) => creds.token.clone(),
                Auth::TokenOnly { token, .. } => token.clone(),
            }),
            operation: operation.to_string(),
            params,
            timestamp: Some(now_ms()),
            nonce: Some(nonce()),
            signature: None,
            limits: None,
        }
    }
}

/// The hello that opens a session on a connection whose challenge is `server_nonce`.
pub(crate) fn hello(creds: &Credentials, server_nonce: &str) -> Request {
    let client_nonce = nonce();
    let timestamp = now_ms();
    let fields = crate::session::HelloFields {
        app_id: &creds.app_id,
        server_nonce,
        client_nonce: &client_nonce,
        timestamp,
    };
    let signature = crate::session::sign(&creds.signing_key, &fields);
    let params = crate::session::HelloParams {
        server_nonce: server_nonce.to_string(),
    };
    Request {
        v: Some(crate::session::VERSION),
        request_id: crate::session::HELLO.to_string(),
        app_id: Some(creds.app_id.clone()),
        token: Some(creds.token.clone()),
        operation: crate::session::HELLO.to_string(),
        params: serde_json::value::to_raw_value(&params).ok(),
        timestamp: Some(timestamp),
        nonce: Some(client_nonce),
        signature: Some(signature),
        limits: None,
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 16 bytes from the OS random generator, as 32 lowercase hex digits.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Request ids unique for the client's lifetime: a random per-client prefix and a counter,
/// e.g. `3fa9c1d2-17`. The prefix keeps ids apart across clients and restarts, which makes
/// daemon logs easier to read; uniqueness on a connection only needs the counter.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> RequestIds {
        let mut bytes = [0u8; 4];
        OsRng.fill_bytes(&mut bytes);
        RequestIds {
            prefix: hex::encode(bytes),
            next: AtomicU64::new(1),
        }
    }

    pub(crate) fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{verify, SignedFields};
    use ed25519_dalek::SigningKey;

    fn creds() -> Credentials {
        Credentials {
            app_id: "app_1".into(),
            token: "tok".repeat(10),
            signing_key: SigningKey::from_bytes(&[3u8; 32]),
            version: 1,
            session: false,
        }
    }

    #[test]
    fn signed_requests_verify_and_are_fresh() {
        let auth = Auth::Signed(Box::new(creds()));
        let params = RawValue::from_string(r#"{"name":"post"}"#.into()).unwrap();
        let a = auth.request("r-1".into(), "get_schema", Some(params));
        let b = auth.request("r-2".into(), "ping", None);
        let key = creds().signing_key.verifying_key();
        for req in [&a, &b] {
            let decoded = Request::decode(&req.encode()).unwrap();
            let fields = SignedFields::of(&decoded).unwrap();
            verify(&key, &fields, decoded.signature.as_deref().unwrap()).unwrap();
            assert_eq!(decoded.v, Some(crate::version::CURRENT));
            assert_eq!(decoded.nonce.as_deref().map(str::len), Some(32));
        }
        assert_ne!(a.nonce, b.nonce);
        let now = now_ms();
        assert!(a.timestamp.unwrap() <= now && now - a.timestamp.unwrap() < 60_000);
    }

    #[test]
    fn token_only_requests_are_unsigned_and_debug_hides_secrets() {
        let auth = Auth::TokenOnly {
            app_id: "app_1".into(),
            token: "sekrit-token".into(),
        };
        let req = auth.request("r".into(), "ping", None);
        assert_eq!(req.signature, None);
        assert_eq!(req.token.as_deref(), Some("sekrit-token"));
        assert_eq!(req.v, Some(1));
        assert!(!format!("{auth:?}").contains("sekrit"));
        let signed = Auth::Signed(Box::new(creds()));
        assert!(!format!("{signed:?}").contains(&"tok".repeat(10)));
        assert!(signed.differs_from(&auth));
        assert!(!signed.differs_from(&Auth::Signed(Box::new(creds()))));
    }

    #[test]
    fn request_ids_are_unique() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(a.len() <= crate::message::MAX_ID_LEN);
        assert_ne!(RequestIds::new().next(), a, "prefixes differ per client");
    }
}
