//! One app request, from decoded envelope to response: authenticate, check grants, proxy,
//! audit. Transport concerns (framing, timeouts, concurrency) are `fold_ipc::server`'s.

use super::Services;
use crate::app_limits::TokenBucket;
use crate::audit::{now_ms, RequestRecord, Verdict};
use crate::auth::{self, Authenticated, FailureLimiter, Freshness, NonceCache};
use crate::metrics::Stage;
use crate::policy;
use crate::verifier::Verifier;
use fold_ipc::heavy::{self, HEAVY_BYTES};
use fold_ipc::operation::SchemaList;
use fold_ipc::server::{Arrival, ByteBudget, Handler, ServerStats};
use fold_ipc::signing;
use fold_ipc::{ErrorCode, Operation, OperationKind, Request, Response, WireError};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Per-app authentication state, shared by all of the app's connections.
#[derive(Debug)]
pub struct AppRuntime {
    /// Nonces seen inside the window.
    pub nonces: Mutex<NonceCache>,
    /// Recent authentication failures.
    pub failures: Mutex<FailureLimiter>,
    /// Signatures waiting to be verified together.
    pub verifier: Verifier,
    /// The app's write rate.
    pub writes: Mutex<TokenBucket>,
    /// Request bytes the app's connections may hold at once (new connections take the
    /// current one).
    pub bytes: Mutex<Arc<ByteBudget>>,
    /// Its answered requests, for the metrics endpoint.
    pub requests: crate::app_metrics::RequestCounts,
}

impl AppRuntime {
    /// Fresh state sized by the daemon's config.
    pub fn new(config: &crate::config::Config) -> AppRuntime {
        AppRuntime {
            nonces: Mutex::new(NonceCache::new(config.nonce_cache)),
            failures: Mutex::new(FailureLimiter::new(
                config.failure_limit,
                config.failure_window,
            )),
            verifier: Verifier::new(config.batch_signatures),
            writes: Mutex::new(TokenBucket::full(
                config.default_node_limits.write_burst,
                Instant::now(),
            )),
            bytes: Mutex::new(ByteBudget::new(config.default_node_limits.bytes_in_flight)),
            requests: crate::app_metrics::RequestCounts::default(),
        }
    }

    /// Sizes the app's byte budget by `limits`; connections opened from now on use it.
    pub fn apply(&self, limits: &crate::app_limits::NodeLimits) {
        let mut bytes = lock(&self.bytes);
        let wanted = ByteBudget::new(limits.bytes_in_flight);
        if wanted.total() != bytes.total() {
            *bytes = wanted;
        }
    }

    /// Per-app state for every app with nonces in `entries` (loaded from the nonce journal
    /// at start), their caches holding those nonces.
    pub fn restore(
        config: &crate::config::Config,
        entries: &[crate::nonce_journal::Entry],
    ) -> HashMap<String, Arc<AppRuntime>> {
        let mut runtimes: HashMap<String, AppRuntime> = HashMap::new();
        for e in entries {
            runtimes
                .entry(e.app_id.clone())
                .or_insert_with(|| AppRuntime::new(config))
                .nonces
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .restore(&e.nonce, e.expires_ms);
        }
        runtimes
            .into_iter()
            .map(|(id, runtime)| (id, Arc::new(runtime)))
            .collect()
    }
}

/// Answers requests arriving on one app's socket.
#[derive(Debug)]
pub struct AppHandler {
    /// The app this socket belongs to; requests must be for it.
    pub app_id: String,
    /// The app's authentication state.
    pub runtime: Arc<AppRuntime>,
    /// What the daemon hands its sockets.
    pub shared: Arc<Services>,
}

/// When and how a request reached the handler.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the handler got it; stage times are counted from here.
    started: Instant,
    /// What the connection had received behind it.
    arrival: Arrival,
}

/// A refusal: the wire error and the audit reason.
struct Denial {
    error: WireError,
    reason: &'static str,
}

impl Denial {
    fn new(code: ErrorCode, message: impl Into<String>, reason: &'static str) -> Denial {
        Denial {
            error: WireError::new(code, message),
            reason,
        }
    }
}

impl Handler for AppHandler {
    fn stats(&self) -> Option<Arc<ServerStats>> {
        Some(self.shared.metrics.transport())
    }

    fn byte_budget(&self) -> Option<Arc<ByteBudget>> {
        Some(Arc::clone(&lock(&self.runtime.bytes)))
    }

    async fn handle(&self, request: Request) -> Response {
        self.handle_arrived(request, Arrival::default()).await
    }

    async fn handle_arrived(&self, request: Request, arrival: Arrival) -> Response {
        self.answer(request, arrival, None).await
    }
}

impl AppHandler {
    /// Answers one request that arrived as `arrival` says, on a connection with `session`
    /// state (the socket of an app that may open sessions) or without.
    pub(super) async fn answer(
        &self,
        request: Request,
        arrival: Arrival,
        session: Option<&super::session::SessionState>,
    ) -> Response {
        let started = Instant::now();
        let _answering = self.runtime.verifier.arrive();
        let app = self.shared.registry.get(&self.app_id);
        let mut auth_kind = None;
        let mut schema = None;
        let outcome = match &app {
            None => Err(Denial::new(
                ErrorCode::Unauthenticated,
                "this app is no longer installed",
                "app_removed",
            )),
            Some(app) => {
                let seen = Seen { started, arrival };
                self.process(&request, (app, session), seen, &mut auth_kind, &mut schema)
                    .await
            }
        };
        let audit_started = Instant::now();
        let (verdict, code, reason, response) = match outcome {
            Ok(Ok(result)) => (
                Verdict::Allow,
                None,
                None,
                Response::ok_raw(request.request_id.clone(), result),
            ),
            Ok(Err(node_error)) => {
                let code = node_error.code;
                (
                    Verdict::Allow,
                    Some(code),
                    None,
                    Response::error(Some(request.request_id.clone()), node_error),
                )
            }
            Err(denial) => {
                let code = denial.error.code;
                (
                    Verdict::Deny,
                    Some(code),
                    Some(denial.reason),
                    Response::error(Some(request.request_id.clone()), denial.error),
                )
            }
        };
        self.shared
            .audit
            .request(&RequestRecord {
                app_id: &self.app_id,
                app_name: app.as_deref().map(|a| a.name.as_str()),
                request_id: &request.request_id,
                operation: &request.operation,
                schema: schema.as_deref(),
                verdict,
                code: code.map(ErrorCode::as_str),
                reason,
                auth: auth_kind.map(|k| match k {
                    Authenticated::Signed => "signed",
                    Authenticated::Unsigned => "unsigned",
                    Authenticated::Session => "session",
                }),
                latency_us: started.elapsed().as_micros() as u64,
            })
            .await;
        self.shared.metrics.add(Stage::Audit, audit_started);
        self.shared.metrics.answered();
        self.runtime.requests.record(
            &request.operation,
            verdict == Verdict::Allow,
            started.elapsed(),
        );
        response
    }

    /// `Err` is a daemon refusal; `Ok(Err)` is the node's own error (an allowed request).
    /// Stage times are counted from `seen.started`.
    async fn process(
        &self,
        request: &Request,
        (app, session): (&crate::registry::App, Option<&super::session::SessionState>),
        seen: Seen,
        auth_kind: &mut Option<Authenticated>,
        schema: &mut Option<String>,
    ) -> Result<Result<Box<RawValue>, WireError>, Denial> {
        let now = now_ms();
        if !lock(&self.runtime.failures).allows(now) {
            return Err(denial(&auth::AuthError::RateLimited));
        }
        let kind = match session.map(|s| s.route(request)) {
            Some(super::session::Route::Hello(state)) => {
                let opened = self.hello(request, app, state, now).await;
                if opened.is_err() {
                    lock(&self.runtime.failures).record_failure(now);
                } else {
                    *auth_kind = Some(Authenticated::Signed);
                }
                return opened.map(Ok);
            }
            Some(super::session::Route::Session(opened)) => {
                // The record changes with every rotation, grant change and auth change.
                if opened != app.generation || app.auth_mode != crate::registry::AuthMode::Session {
                    return Err(denial(&auth::AuthError::SessionEnded));
                }
                Authenticated::Session
            }
            Some(super::session::Route::Closed)
                if request.signature.is_none() && request.v.is_some() =>
            {
                lock(&self.runtime.failures).record_failure(now);
                return Err(denial(&auth::AuthError::NoSession));
            }
            Some(super::session::Route::Closed) | None => {
                self.authenticate(request, app, seen, now).await?
            }
        };
        *auth_kind = Some(kind);
        let authenticated = self.shared.metrics.add(Stage::Auth, seen.started);
        self.authorize_and_call(request, app, authenticated, schema)
            .await
    }

    /// Opens the session of the connection whose state is `state`, if the hello holds.
    async fn hello(
        &self,
        request: &Request,
        app: &crate::registry::App,
        state: &super::session::SessionState,
        now: u64,
    ) -> Result<Box<RawValue>, Denial> {
        let rules = Freshness {
            window: self.shared.config.auth_window,
            not_before_ms: self.shared.journal.floor_ms(),
        };
        // One signature, verified at once: a hello is one per connection, never batched.
        let checked = auth::check_hello(request, app, state.challenge(), (now, rules));
        let opened = checked.and_then(|()| {
            state
                .open(app.generation)
                .then_some(())
                .ok_or(auth::AuthError::SessionRefused(
                    "this connection already has a session",
                ))
        });
        let detail = format!(
            "challenge {}…, generation {}",
            &state.challenge()[..12],
            app.generation
        );
        match opened {
            Ok(()) => {
                self.shared
                    .audit
                    .event(&app.id, Some(&app.name), "session_open", &detail)
                    .await;
                let result = fold_ipc::session::SessionOpened {
                    v: fold_ipc::session::VERSION,
                };
                serde_json::value::to_raw_value(&result)
                    .map_err(|e| Denial::new(ErrorCode::Internal, e.to_string(), "internal"))
            }
            Err(e) => Err(denial(&e)),
        }
    }

    /// Checks a request's own credentials (v1: token, signature, window, nonce; or a
    /// token-only app's token), journals its nonce, and says how it was authenticated.
    async fn authenticate(
        &self,
        request: &Request,
        app: &crate::registry::App,
        seen: Seen,
        now: u64,
    ) -> Result<Authenticated, Denial> {
        let config = &self.shared.config;
        // A large request is bulk work (`fold_ipc::heavy`): its canonical bytes, its
        // signature and its params are worked on off the async worker, at low priority.
        let params_len = request.params.as_ref().map_or(0, |p| p.get().len());
        let checked = match heavy::run(params_len, || auth::check(request, app)) {
            Ok(auth::Check::Unsigned) => Ok(Authenticated::Unsigned),
            // Verified alone: batching saves little next to hashing a large message, and
            // it would hold up the batch's other requests.
            Ok(auth::Check::Signature { message, signature }) if params_len >= HEAVY_BYTES => {
                self.shared.metrics.verified(1);
                heavy::run(params_len, || {
                    signing::verify_bytes(&app.public_key, &message, &signature)
                })
                .map(|()| Authenticated::Signed)
                .map_err(auth::AuthError::BadSignature)
            }
            Ok(auth::Check::Signature { message, signature }) => self
                .runtime
                .verifier
                .verify(
                    app.public_key,
                    message,
                    signature,
                    &self.shared.metrics,
                    seen.arrival.received_behind > 0,
                )
                .await
                .map(|()| Authenticated::Signed)
                .map_err(auth::AuthError::BadSignature),
            Err(e) => Err(e),
        };
        let rules = Freshness {
            window: config.auth_window,
            not_before_ms: self.shared.journal.floor_ms(),
        };
        let checked = checked.and_then(|kind| {
            let fresh = match kind {
                Authenticated::Signed => Some(auth::check_freshness(
                    request,
                    now,
                    rules,
                    &mut lock(&self.runtime.nonces),
                )?),
                Authenticated::Unsigned | Authenticated::Session => None,
            };
            Ok((kind, fresh))
        });
        let checked = match checked {
            Ok((kind, Some(fresh))) => {
                // The nonce reaches the journal (the kernel, or the disk when stamped ahead
                // of the clock) before the request goes anywhere; if it cannot, the request
                // is refused: a restarted daemon would not know it.
                let nonce = request.nonce.as_deref().unwrap_or_default();
                if let Err(e) =
                    self.shared
                        .journal
                        .append(&app.id, nonce, fresh.expires_ms, fresh.ahead)
                {
                    tracing::error!(app = %app.name, "refusing a request: {e}");
                    return Err(Denial::new(
                        ErrorCode::Internal,
                        format!("{e}; the request was not applied"),
                        "nonce_journal_failed",
                    ));
                }
                Ok(kind)
            }
            Ok((kind, None)) => Ok(kind),
            Err(e) => Err(e),
        };
        match checked {
            Ok(kind) => Ok(kind),
            Err(e) => {
                lock(&self.runtime.failures).record_failure(now);
                Err(denial(&e))
            }
        }
    }

    /// Checks the grant, limits and params of an authenticated request, and passes it on.
    async fn authorize_and_call(
        &self,
        request: &Request,
        app: &crate::registry::App,
        authenticated: Instant,
        schema: &mut Option<String>,
    ) -> Result<Result<Box<RawValue>, WireError>, Denial> {
        let config = &self.shared.config;
        let params_len = request.params.as_ref().map_or(0, |p| p.get().len());
        let metrics = &self.shared.metrics;
        let bad = |error| Denial {
            error,
            reason: "bad_request",
        };
        // The grant is checked on the operation's name and the schema its params name,
        // before the params are built: a request for something the app may not do costs
        // no more memory than its frame.
        let Some(kind) = OperationKind::from_name(&request.operation) else {
            return Err(bad(request.operation().err().unwrap_or_else(|| {
                WireError::bad_field("operation", "unknown operation")
            })));
        };
        let params = request.params.as_deref();
        let target = fold_ipc::params::target_schema(kind, params).map_err(bad)?;
        schema.clone_from(&target);
        if !policy::allows_on(&app.grants, kind, target.as_deref()) {
            let target = target.as_deref().unwrap_or("*");
            let op = kind.as_str();
            return Err(Denial::new(
                ErrorCode::Forbidden,
                format!(
                    "app {} is not granted {op} on schema {target:?}; an operator can grant it with `fold_client app grant {} {op}:{target}`",
                    app.name, app.name,
                ),
                "not_granted",
            ));
        }
        let op = heavy::run(params_len, || {
            fold_ipc::params::check_value_count(params, fold_ipc::params::MAX_PARAM_VALUES)?;
            request.operation()
        })
        .map_err(bad)?;
        if op.schema() != target.as_deref() {
            return Err(bad(WireError::bad_field(
                "params",
                "names its schema more than once",
            )));
        }
        let limits = app.node_limits.resolve(&config.default_node_limits);
        if kind.is_write() {
            let taken = lock(&self.runtime.writes).take(
                limits.write_rate,
                limits.write_burst,
                Instant::now(),
            );
            if let Err(wait) = taken {
                return Err(Denial {
                    error: WireError::over_limit(
                        ErrorCode::RateLimited,
                        "write_rate",
                        format!(
                            "app {} may make {} writes a second (burst {}); retry in {} ms",
                            app.name,
                            limits.write_rate,
                            limits.write_burst,
                            wait.as_millis().max(1)
                        ),
                    )
                    .retry_after(wait.max(std::time::Duration::from_millis(1))),
                    reason: "write_rate",
                });
            }
        }
        let is_list = matches!(op, Operation::ListSchemas);
        let allowed = metrics.add(Stage::Policy, authenticated);
        let timeout = config.request_timeout;
        let result = self
            .shared
            .node
            .call(&app.id, op, timeout, &limits.for_request(timeout))
            .await;
        metrics.add(Stage::Node, allowed);
        Ok(if is_list {
            result.and_then(|raw| filter_schemas(&raw, &app.grants))
        } else {
            result
        })
    }
}

fn denial(e: &auth::AuthError) -> Denial {
    Denial {
        error: e.to_wire(),
        reason: e.reason(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps only the schemas the app holds a grant on.
fn filter_schemas(raw: &RawValue, grants: &[policy::Grant]) -> Result<Box<RawValue>, WireError> {
    let mut list: SchemaList = serde_json::from_str(raw.get()).map_err(|e| {
        WireError::new(
            ErrorCode::Internal,
            format!("unexpected list_schemas result from the node: {e}"),
        )
    })?;
    list.schemas.retain(|s| policy::visible(grants, s));
    serde_json::value::to_raw_value(&list)
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
}
