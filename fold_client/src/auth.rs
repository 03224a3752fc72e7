//! Authentication of one request: pure functions of the request, the app's registry entry
//! and the clock. No I/O; the only state is the per-app [`NonceCache`] and
//! [`FailureLimiter`], which the caller owns.
//!
//! Order of checks (cheapest and least revealing first): protocol version, `app_id` is the
//! socket's app, token (constant time), signature (`verify_strict`), timestamp window,
//! nonce. The nonce is remembered only after the signature verified, so forged requests
//! cannot fill the cache.
//!
//! Across restarts the caller keeps the replay check true: it journals each accepted nonce
//! before the request goes on and loads the journal back into the caches at start
//! (`crate::nonce_journal`), and passes a floor under which timestamps are refused
//! ([`Freshness::not_before_ms`]) for what a power loss may have dropped from the journal.

use crate::registry::{secrets, App, AuthMode};
use ed25519_dalek::Signature;
use fold_ipc::signing::{self, SignedFields};
use fold_ipc::{version, ErrorCode, Request, WireError};
use std::collections::HashMap;
use std::time::Duration;

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    /// Token, signature, timestamp and nonce all checked.
    Signed,
    /// Token only: a reference-era request from an app installed with `auth = "token"`.
    Unsigned,
    /// On a session: the connection's hello was checked (token, signature, window, the
    /// connection's own challenge), and the app's record has not changed since.
    Session,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `v` names a version this daemon does not speak.
    #[error("protocol version {0} is not supported; this daemon speaks {supported:?}", supported = version::SUPPORTED)]
    UnsupportedVersion(u32),
    /// `app_id` is missing or names another app than the socket's.
    #[error("app_id does not match this socket's app")]
    WrongApp,
    /// The token is missing or wrong.
    #[error("invalid or missing token")]
    BadToken,
    /// An unsigned request from an app that must sign.
    #[error("signatures are required: sign each request with the app's ed25519 key (protocol v1, see docs/protocol.md); unsigned token-only requests are accepted only for apps installed with --auth token")]
    SignatureRequired,
    /// A signed field is missing.
    #[error("{0}")]
    Missing(signing::MissingField),
    /// The signature is malformed or does not verify.
    #[error("signature rejected: {0}")]
    BadSignature(signing::SignatureError),
    /// The timestamp is outside the window.
    #[error(
        "timestamp is {skew_ms} ms away from the daemon's clock; the window is ±{window_ms} ms"
    )]
    Stale {
        /// Distance from now, in ms.
        skew_ms: u64,
        /// The window, in ms.
        window_ms: u64,
    },
    /// The timestamp is from before the floor: this daemon started after a crash, and a
    /// request signed before that may have been accepted by the daemon that crashed.
    #[error(
        "timestamp is {before_ms} ms before this daemon started (after an unclean stop); \
         requests signed before a restart are refused: sign again with the current time"
    )]
    SignedBeforeStart {
        /// How far before the floor, in ms.
        before_ms: u64,
    },
    /// The nonce was used before.
    #[error("nonce was already used: replayed request")]
    Replayed,
    /// The nonce cache is full of nonces still inside the window.
    #[error("too many requests in the replay window; slow down")]
    NonceCacheFull,
    /// Too many failures recently.
    #[error("too many failed authentication attempts; try again later")]
    RateLimited,
    /// An unsigned request on a connection without a session.
    #[error("no session on this connection: send the hello first (protocol v2, docs/protocol.md section 6.8), or sign the request")]
    NoSession,
    /// A hello from an app that may not open sessions, or a second hello.
    #[error("{0}")]
    SessionRefused(&'static str),
    /// The hello names another connection's challenge.
    #[error("the hello signs another connection's challenge: a replayed hello")]
    WrongChallenge,
    /// The app's record changed since the session opened (credentials rotated, grants or
    /// auth mode changed): the session ended.
    #[error("the session ended: the app's credentials, grants or auth mode changed; open a new connection and send a new hello")]
    SessionEnded,
}

impl AuthError {
    /// The wire error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            AuthError::WrongApp | AuthError::BadToken => ErrorCode::Unauthenticated,
            AuthError::SignatureRequired | AuthError::Missing(_) | AuthError::BadSignature(_) => {
                ErrorCode::BadSignature
            }
            AuthError::Stale { .. } | AuthError::SignedBeforeStart { .. } | AuthError::Replayed => {
                ErrorCode::Replay
            }
            AuthError::NonceCacheFull | AuthError::RateLimited => ErrorCode::RateLimited,
            AuthError::NoSession | AuthError::SessionRefused(_) | AuthError::SessionEnded => {
                ErrorCode::Unauthenticated
            }
            AuthError::WrongChallenge => ErrorCode::Replay,
        }
    }

    /// A short stable reason for the audit (`bad_token`, `stale`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::UnsupportedVersion(_) => "unsupported_version",
            AuthError::WrongApp => "wrong_app",
            AuthError::BadToken => "bad_token",
            AuthError::SignatureRequired => "signature_required",
            AuthError::Missing(_) => "missing_signed_field",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::Stale { .. } => "stale_timestamp",
            AuthError::SignedBeforeStart { .. } => "signed_before_start",
            AuthError::Replayed => "replayed_nonce",
            AuthError::NonceCacheFull => "nonce_cache_full",
            AuthError::RateLimited => "rate_limited",
            AuthError::NoSession => "no_session",
            AuthError::SessionRefused(_) => "session_refused",
            AuthError::WrongChallenge => "replayed_hello",
            AuthError::SessionEnded => "session_ended",
        }
    }

    /// The error as sent to the app.
    pub fn to_wire(&self) -> WireError {
        WireError::new(self.code(), self.to_string())
    }
}

/// What [`check`] leaves to do.
#[derive(Debug, Clone)]
pub enum Check {
    /// Nothing: a token-only request from an app that may send them.
    Unsigned,
    /// The signature must verify (`verify_strict`) over `message` with the app's key.
    Signature {
        /// The canonical bytes the signature covers.
        message: Vec<u8>,
        /// The parsed signature.
        signature: Signature,
    },
}

/// Checks version, app id and token of `request` for `app` (the app whose socket it came
/// on), and whether it must be signed; the signature itself is returned as a
/// [`Check::Signature`] for the caller to verify, so that several requests' signatures can
/// share one batch (`crate::verifier`). Does not touch the nonce cache; see
/// [`check_freshness`].
///
/// # Errors
///
/// The first check that fails.
pub fn check(request: &Request, app: &App) -> Result<Check, AuthError> {
    let Some(v) = request.v else {
        // A reference-era request: token only, if this app was installed for it.
        check_app_and_token(request, app)?;
        return match app.auth_mode {
            AuthMode::Token => Ok(Check::Unsigned),
            AuthMode::Signed | AuthMode::Session => Err(AuthError::SignatureRequired),
        };
    };
    if !version::is_supported(v) {
        return Err(AuthError::UnsupportedVersion(v));
    }
    check_app_and_token(request, app)?;
    let Some(signature) = request.signature.as_deref() else {
        return match app.auth_mode {
            AuthMode::Token => Ok(Check::Unsigned),
            AuthMode::Signed | AuthMode::Session => Err(AuthError::SignatureRequired),
        };
    };
    let fields = SignedFields::of(request).map_err(AuthError::Missing)?;
    let signature = signing::parse_signature(signature).map_err(AuthError::BadSignature)?;
    Ok(Check::Signature {
        message: signing::canonical_bytes(&fields),
        signature,
    })
}

/// Checks a hello (`fold_ipc::session`) on a connection whose challenge is `challenge`:
/// version 2, the app may open sessions, app id, token, the challenge, the timestamp window
/// and floor, and the signature (`verify_strict`). Pure: the caller records the session.
///
/// # Errors
///
/// The first check that fails.
pub fn check_hello(
    request: &Request,
    app: &App,
    challenge: &str,
    (now_ms, rules): (u64, Freshness),
) -> Result<(), AuthError> {
    if request.v != Some(fold_ipc::session::VERSION) {
        return Err(AuthError::SessionRefused(
            "a hello must be protocol version 2",
        ));
    }
    if app.auth_mode != AuthMode::Session {
        return Err(AuthError::SessionRefused(
            "this app may not open sessions: install it with --auth session (or `fold_client app auth NAME session`), or sign each request",
        ));
    }
    check_app_and_token(request, app)?;
    let params: fold_ipc::session::HelloParams = request
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .ok_or(AuthError::SessionRefused(
            "a hello's params are {\"server_nonce\": the challenge's nonce}",
        ))?;
    let (Some(timestamp), Some(client_nonce), Some(signature)) = (
        request.timestamp,
        request.nonce.as_deref(),
        request.signature.as_deref(),
    ) else {
        return Err(AuthError::Missing(signing::MissingField(
            "timestamp, nonce or signature",
        )));
    };
    // Constant time is not needed: the challenge is public to the connection's peer.
    if params.server_nonce != challenge {
        return Err(AuthError::WrongChallenge);
    }
    let fields = fold_ipc::session::HelloFields {
        app_id: &app.id,
        server_nonce: challenge,
        client_nonce,
        timestamp,
    };
    fold_ipc::session::verify(&app.public_key, &fields, signature)
        .map_err(AuthError::BadSignature)?;
    check_window(timestamp, now_ms, rules).map(drop)
}

/// Checks `timestamp` against the window around `now_ms` and the floor; returns the
/// window in ms.
fn check_window(timestamp: u64, now_ms: u64, rules: Freshness) -> Result<u64, AuthError> {
    let window_ms = u64::try_from(rules.window.as_millis()).unwrap_or(u64::MAX);
    let skew_ms = now_ms.abs_diff(timestamp);
    if skew_ms > window_ms {
        return Err(AuthError::Stale { skew_ms, window_ms });
    }
    if timestamp < rules.not_before_ms {
        return Err(AuthError::SignedBeforeStart {
            before_ms: rules.not_before_ms - timestamp,
        });
    }
    Ok(window_ms)
}

fn check_app_and_token(request: &Request, app: &App) -> Result<(), AuthError> {
    if request.app_id.as_deref() != Some(app.id.as_str()) {
        return Err(AuthError::WrongApp);
    }
    match request.token.as_deref() {
        Some(token) if secrets::token_matches(token, &app.token_hash) => Ok(()),
        _ => Err(AuthError::BadToken),
    }
}

/// The timestamp rules [`check_freshness`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Timestamps further than this from the daemon's clock are refused.
    pub window: Duration,
    /// Timestamps before this (ms since the epoch) are refused; 0 for none.
    pub not_before_ms: u64,
}

/// A request that passed [`check_freshness`]: its nonce is in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fresh {
    /// When its nonce may be forgotten (ms): the window rejects its timestamp from then.
    pub expires_ms: u64,
    /// Whether it is stamped ahead of the daemon's clock.
    pub ahead: bool,
}

/// Checks a verified request's timestamp against the window and the floor, and records its
/// nonce.
///
/// # Errors
///
/// [`AuthError::Stale`], [`AuthError::SignedBeforeStart`], [`AuthError::Replayed`] or
/// [`AuthError::NonceCacheFull`].
pub fn check_freshness(
    request: &Request,
    now_ms: u64,
    rules: Freshness,
    nonces: &mut NonceCache,
) -> Result<Fresh, AuthError> {
    let (Some(timestamp), Some(nonce)) = (request.timestamp, request.nonce.as_deref()) else {
        return Err(AuthError::Missing(signing::MissingField("timestamp")));
    };
    let window_ms = check_window(timestamp, now_ms, rules)?;
    // The nonce must be remembered until the window would reject its timestamp anyway.
    let expires_ms = timestamp.saturating_add(window_ms);
    nonces.insert(nonce, expires_ms, now_ms)?;
    Ok(Fresh {
        expires_ms,
        ahead: timestamp > now_ms,
    })
}

/// The nonces an app used recently. Bounded: entries whose timestamps the window already
/// rejects are forgotten; when the cache is full of live entries, new requests are refused
/// rather than a live nonce being forgotten (which would allow a replay).
#[derive(Debug)]
pub struct NonceCache {
    /// Nonce -> the time after which it can be forgotten (ms).
    seen: HashMap<Box<str>, u64>,
    capacity: usize,
    /// Sweep expired entries when the map reaches this size (amortises the sweep).
    next_sweep: usize,
}

impl NonceCache {
    /// An empty cache holding at most `capacity` live nonces.
    pub fn new(capacity: usize) -> NonceCache {
        NonceCache {
            seen: HashMap::new(),
            capacity,
            next_sweep: capacity.min(1024),
        }
    }

    /// Records `nonce`, valid until `expires_ms`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Replayed`] if it is still remembered; [`AuthError::NonceCacheFull`] if
    /// there is no room.
    pub fn insert(&mut self, nonce: &str, expires_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        if let Some(expiry) = self.seen.get(nonce) {
            if *expiry >= now_ms {
                return Err(AuthError::Replayed);
            }
        }
        if self.seen.len() >= self.next_sweep {
            self.seen.retain(|_, expiry| *expiry >= now_ms);
            self.next_sweep = (self.seen.len() * 2).clamp(1024.min(self.capacity), self.capacity);
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthError::NonceCacheFull);
        }
        self.seen.insert(nonce.into(), expires_ms);
        Ok(())
    }

    /// Puts back a nonce remembered across a restart, even beyond the capacity (a live
    /// nonce is never dropped; new requests are refused until there is room again).
    pub fn restore(&mut self, nonce: &str, expires_ms: u64) {
        let expiry = self.seen.entry(nonce.into()).or_insert(expires_ms);
        *expiry = (*expiry).max(expires_ms);
    }

    /// Calls `visit` with every nonce still live at `now_ms` and its expiry.
    pub fn for_each_live(&self, now_ms: u64, mut visit: impl FnMut(&str, u64)) {
        for (nonce, expiry) in &self.seen {
            if *expiry >= now_ms {
                visit(nonce, *expiry);
            }
        }
    }

    /// Live and not yet swept entries.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Counts authentication failures per app in a fixed window; beyond the limit the app's
/// requests are refused with `rate_limited` before any crypto is done.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: u32,
    window_ms: u64,
    window_start: u64,
    failures: u32,
}

impl FailureLimiter {
    /// At most `limit` failures per `window`.
    pub fn new(limit: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            limit,
            window_ms: window.as_millis() as u64,
            window_start: 0,
            failures: 0,
        }
    }

    fn roll(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.window_start) >= self.window_ms {
            self.window_start = now_ms;
            self.failures = 0;
        }
    }

    /// Whether a request may be attempted now.
    pub fn allows(&mut self, now_ms: u64) -> bool {
        self.roll(now_ms);
        self.failures < self.limit
    }

    /// Records a failure.
    pub fn record_failure(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.failures = self.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::IssuedSecrets;
    use crate::sandbox::ResourceLimits;
    use fold_ipc::Operation;

    const NOW: u64 = 1_700_000_000_000;
    const WINDOW: Duration = Duration::from_secs(60);

    fn app(mode: AuthMode) -> (App, IssuedSecrets) {
        let s = IssuedSecrets::generate();
        let app = App {
            id: "app_000000000001".into(),
            name: "a".into(),
            uid: 1,
            gid: 1,
            grants: vec![],
            auth_mode: mode,
            placement: crate::registry::Placement::Container,
            isolation: crate::sandbox::IsolationRequest::Auto,
            token_hash: secrets::token_hash(&s.token),
            public_key: s.signing_key.verifying_key(),
            binary: "a".into(),
            image: None,
            network: None,
            limits: ResourceLimits::default(),
            node_limits: Default::default(),
            warm: 0,
            created_ms: 0,
            generation: 1,
        };
        (app, s)
    }

    fn signed(app: &App, s: &IssuedSecrets, nonce: &str, ts: u64) -> Request {
        let mut r = Request::unsigned("r1", Some(app.id.clone()), &Operation::Ping);
        r.token = Some(s.token.clone());
        r.timestamp = Some(ts);
        r.nonce = Some(nonce.into());
        signing::sign_request(&mut r, &s.signing_key).unwrap();
        r
    }

    /// [`check`], then the signature with `verify_strict`: what the daemon decides.
    fn verify(request: &Request, app: &App) -> Result<Authenticated, AuthError> {
        match super::check(request, app)? {
            Check::Unsigned => Ok(Authenticated::Unsigned),
            Check::Signature { message, signature } => {
                signing::verify_bytes(&app.public_key, &message, &signature)
                    .map_err(AuthError::BadSignature)?;
                Ok(Authenticated::Signed)
            }
        }
    }

    /// One check per row: a request, and the refusal expected.
    fn check(request: &Request, app: &App, expected: &Result<Authenticated, AuthError>) {
        assert_eq!(&verify(request, app), expected, "{request:?}");
    }

    #[test]
    fn each_failure_has_its_code() {
        let (a, s) = app(AuthMode::Signed);
        let good = signed(&a, &s, "n1", NOW);
        check(&good, &a, &Ok(Authenticated::Signed));

        let mut r = good.clone();
        r.token = Some("00".repeat(32));
        check(&r, &a, &Err(AuthError::BadToken));
        r.token = None;
        check(&r, &a, &Err(AuthError::BadToken));

        let mut r = good.clone();
        r.app_id = Some("app_000000000002".into());
        check(&r, &a, &Err(AuthError::WrongApp));

        let mut r = good.clone();
        r.nonce = Some("n2".into()); // signed field changed after signing
        check(
            &r,
            &a,
            &Err(AuthError::BadSignature(signing::SignatureError::Invalid)),
        );

        let mut r = good.clone();
        r.signature = None;
        check(&r, &a, &Err(AuthError::SignatureRequired));

        let mut r = good;
        r.v = Some(9);
        check(&r, &a, &Err(AuthError::UnsupportedVersion(9)));
        assert_eq!(
            AuthError::UnsupportedVersion(9).code(),
            ErrorCode::UnsupportedVersion
        );

        // Another app's valid signature on this app's token and id.
        let (_, other) = app(AuthMode::Signed);
        let mut r = signed(&a, &other, "n3", NOW);
        r.token = Some(s.token);
        check(
            &r,
            &a,
            &Err(AuthError::BadSignature(signing::SignatureError::Invalid)),
        );
    }

    #[test]
    fn reference_shaped_requests() {
        let (a, s) = app(AuthMode::Signed);
        let mut legacy = Request::unsigned("r", Some(a.id.clone()), &Operation::ListSchemas);
        legacy.v = None;
        legacy.token = Some(s.token.clone());
        check(&legacy, &a, &Err(AuthError::SignatureRequired));
        assert_eq!(AuthError::SignatureRequired.code(), ErrorCode::BadSignature);
        let (t, ts) = app(AuthMode::Token);
        legacy.app_id = Some(t.id.clone());
        legacy.token = Some(ts.token);
        check(&legacy, &t, &Ok(Authenticated::Unsigned));
        legacy.token = Some(s.token);
        check(&legacy, &t, &Err(AuthError::BadToken));
    }

    const RULES: Freshness = Freshness {
        window: WINDOW,
        not_before_ms: 0,
    };

    #[test]
    fn freshness_window_and_replay() {
        let (a, s) = app(AuthMode::Signed);
        let mut nonces = NonceCache::new(10);
        let r = signed(&a, &s, "n1", NOW);
        assert_eq!(
            check_freshness(&r, NOW, RULES, &mut nonces),
            Ok(Fresh {
                expires_ms: NOW + 60_000,
                ahead: false
            })
        );
        assert_eq!(
            check_freshness(&r, NOW + 1, RULES, &mut nonces),
            Err(AuthError::Replayed)
        );
        let old = signed(&a, &s, "n2", NOW - 61_000);
        assert!(matches!(
            check_freshness(&old, NOW, RULES, &mut nonces),
            Err(AuthError::Stale { .. })
        ));
        let future = signed(&a, &s, "n3", NOW + 61_000);
        assert!(matches!(
            check_freshness(&future, NOW, RULES, &mut nonces),
            Err(AuthError::Stale { .. })
        ));
        let ahead = signed(&a, &s, "n4", NOW + 5);
        assert_eq!(
            check_freshness(&ahead, NOW, RULES, &mut nonces).map(|f| f.ahead),
            Ok(true)
        );
        // Once the window has passed, the replay is refused as stale, and the nonce may go.
        assert!(matches!(
            check_freshness(&r, NOW + 61_000, RULES, &mut nonces),
            Err(AuthError::Stale { .. })
        ));
    }

    #[test]
    fn timestamps_before_the_floor_are_refused_without_using_the_nonce() {
        let (a, s) = app(AuthMode::Signed);
        let mut nonces = NonceCache::new(10);
        let rules = Freshness {
            window: WINDOW,
            not_before_ms: NOW,
        };
        let before = signed(&a, &s, "n1", NOW - 1);
        let e = check_freshness(&before, NOW + 10, rules, &mut nonces).unwrap_err();
        assert_eq!(e, AuthError::SignedBeforeStart { before_ms: 1 });
        assert_eq!(
            (e.code(), e.reason()),
            (ErrorCode::Replay, "signed_before_start")
        );
        assert!(nonces.is_empty());
        let at = signed(&a, &s, "n2", NOW);
        assert!(check_freshness(&at, NOW + 10, rules, &mut nonces).is_ok());
    }

    #[test]
    fn restored_nonces_are_refused_even_beyond_the_capacity() {
        let mut c = NonceCache::new(1);
        c.restore("a", 100);
        c.restore("b", 100);
        c.restore("b", 50);
        assert_eq!(c.insert("a", 100, 10), Err(AuthError::Replayed));
        assert_eq!(c.insert("b", 100, 99), Err(AuthError::Replayed));
        assert_eq!(c.insert("c", 100, 10), Err(AuthError::NonceCacheFull));
        let mut live = Vec::new();
        c.for_each_live(100, |n, e| live.push((n.to_string(), e)));
        live.sort();
        assert_eq!(live, [("a".to_string(), 100), ("b".to_string(), 100)]);
        c.for_each_live(101, |_, _| panic!("nothing is live after its expiry"));
    }

    #[test]
    fn nonce_cache_is_bounded_and_never_forgets_live_nonces() {
        let mut c = NonceCache::new(3);
        for n in ["a", "b", "c"] {
            c.insert(n, 100, 0).unwrap();
        }
        assert_eq!(c.insert("d", 100, 0), Err(AuthError::NonceCacheFull));
        assert_eq!(c.insert("a", 100, 50), Err(AuthError::Replayed));
        // After expiry the sweep frees room.
        c.insert("d", 300, 200).unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn failure_limiter_windows() {
        let mut l = FailureLimiter::new(2, Duration::from_secs(10));
        assert!(l.allows(0));
        l.record_failure(0);
        l.record_failure(1);
        assert!(!l.allows(2));
        assert!(l.allows(10_001));
    }
}
