//! A fake daemon on a real Unix socket in a temp dir: checks the token, verifies signatures
//! and nonces like the real one, and answers with results computed from the request.
//!
//! Conventions: an operation on schema `e_<code>` fails with that wire code; one on schema
//! `slow` never answers (until the daemon is killed).

use crate::credentials::Credentials;
use crate::error::{ErrorCode, WireError};
use crate::message::{Request, Response};
use crate::operation::{
    DeleteSchemaResult, HistoryResult, Mutation, MutationKind, MutationResult, Operation, Pong,
    RecordVersion, SchemaList,
};
use crate::query::QueryResult;
use crate::server::{serve_connection, ConnectionLimits, Handler};
use crate::signing::{verify, SignedFields};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

pub(super) const APP_ID: &str = "app_t";

/// Credentials for the test app; `seed` picks the key (a rotation changes it).
pub(super) fn credentials(seed: u8) -> Credentials {
    Credentials {
        app_id: APP_ID.into(),
        token: format!("{seed:02x}").repeat(32),
        signing_key: SigningKey::from_bytes(&[seed; 32]),
        version: 1,
        session: false,
    }
}

/// What the daemon knows and has seen; shared by every connection.
#[derive(Debug)]
pub(super) struct State {
    /// The credentials requests must match.
    pub(super) expected: Mutex<Credentials>,
    /// Whether unsigned (token-only) requests are accepted.
    pub(super) token_only: bool,
    nonces: Mutex<HashSet<String>>,
    /// Timestamps before this are refused, as the real daemon does after an unclean stop:
    /// set at every (re)start.
    pub(super) floor_ms: AtomicU64,
    /// Requests refused for a timestamp before the floor.
    pub(super) signed_before_start: AtomicUsize,
    /// Requests that passed authentication.
    pub(super) accepted: AtomicUsize,
    /// Of those, how many were unsigned.
    pub(super) unsigned: AtomicUsize,
    /// Requests on schema `slow` received.
    pub(super) slow: AtomicUsize,
    /// Notified when a `slow` request arrives.
    pub(super) slow_arrived: Notify,
}

#[derive(Debug)]
pub(super) struct FakeDaemon {
    pub(super) dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FakeDaemon {
    pub(super) async fn start(token_only: bool) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{APP_ID}.sock"));
        let state = Arc::new(State {
            expected: Mutex::new(credentials(1)),
            token_only,
            nonces: Mutex::new(HashSet::new()),
            floor_ms: AtomicU64::new(0),
            signed_before_start: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            unsigned: AtomicUsize::new(0),
            slow: AtomicUsize::new(0),
            slow_arrived: Notify::new(),
        });
        let mut daemon = FakeDaemon {
            dir,
            path,
            state,
            accept: None,
        };
        daemon.restart();
        daemon
    }

    /// Binds the socket again (after [`FakeDaemon::kill`]) and serves it.
    pub(super) fn restart(&mut self) {
        self.state.floor_ms.store(now_ms(), Ordering::SeqCst);
        let listener = UnixListener::bind(&self.path).unwrap();
        let state = Arc::clone(&self.state);
        self.accept = Some(tokio::spawn(accept_loop(listener, state)));
    }

    /// Stops like a crashed daemon: the listener and every connection close at once, with
    /// requests in flight unanswered, and the socket file goes.
    pub(super) async fn kill(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, state: Arc<State>) {
    // Aborting this task drops the set, which aborts every connection and closes its socket.
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let handler = Arc::new(Fake {
            state: Arc::clone(&state),
        });
        connections.spawn(serve_connection(
            stream,
            handler,
            ConnectionLimits::default(),
            std::future::pending(),
        ));
    }
}

struct Fake {
    state: Arc<State>,
}

impl Handler for Fake {
    async fn handle(&self, request: Request) -> Response {
        let id = request.request_id.clone();
        if let Err(error) = self.state.authenticate(&request) {
            return Response::error(Some(id), error);
        }
        match request.operation() {
            Ok(op) => match self.state.answer(op).await {
                Ok(value) => Response::ok(id, &value),
                Err(error) => Response::error(Some(id), error),
            },
            Err(error) => Response::error(Some(id), error),
        }
    }
}

impl State {
    fn authenticate(&self, request: &Request) -> Result<(), WireError> {
        let expected = self.expected.lock().unwrap().clone();
        if request.app_id.as_deref() != Some(APP_ID)
            || request.token.as_deref() != Some(&expected.token)
        {
            return Err(WireError::new(ErrorCode::Unauthenticated, "wrong token"));
        }
        let bad = |m: &str| WireError::new(ErrorCode::BadSignature, m);
        match &request.signature {
            None if self.token_only => {
                self.unsigned.fetch_add(1, Ordering::SeqCst);
            }
            None => return Err(bad("signed requests are required")),
            Some(signature) => {
                let fields = SignedFields::of(request).map_err(|e| bad(&e.to_string()))?;
                verify(&expected.signing_key.verifying_key(), &fields, signature)
                    .map_err(|e| bad(&e.to_string()))?;
                if request.v != Some(crate::version::CURRENT) {
                    return Err(bad("wrong version"));
                }
                if fields.timestamp < self.floor_ms.load(Ordering::SeqCst) {
                    self.signed_before_start.fetch_add(1, Ordering::SeqCst);
                    return Err(WireError::new(
                        ErrorCode::Replay,
                        "timestamp is from before this daemon started",
                    ));
                }
                let nonce = fields.nonce.to_string();
                if !self.nonces.lock().unwrap().insert(nonce) {
                    return Err(WireError::new(ErrorCode::Replay, "nonce seen before"));
                }
            }
        }
        self.accepted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn answer(&self, op: Operation) -> Result<Value, WireError> {
        if let Some(code) = op.schema().and_then(|s| s.strip_prefix("e_")) {
            let code: ErrorCode = serde_json::from_value(json!(code)).unwrap();
            let mut error = WireError::new(code, format!("canned {code}"));
            if code == ErrorCode::BadRequest {
                error.field = Some("params.x".into());
            }
            return Err(error);
        }
        if op.schema() == Some("slow") {
            self.slow.fetch_add(1, Ordering::SeqCst);
            self.slow_arrived.notify_one();
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        let value = match op {
            Operation::Ping => json!(Pong {
                pong: true,
                version: 1
            }),
            Operation::ListSchemas => json!(SchemaList {
                schemas: vec!["post".into()]
            }),
            Operation::GetSchema { name } => json!({"name": name, "fields": {}}),
            Operation::CreateSchema(def) => json!(def),
            Operation::DeleteSchema { force, .. } => json!(DeleteSchemaResult {
                deleted: true,
                records: if force { 3 } else { 0 },
            }),
            Operation::Query(q) => json!(QueryResult {
                rows: vec![
                    json!({"id": "r1", "schema": q.schema, "limit": q.limit, "filter": q.filter})
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                ],
                next_cursor: Some("c2".into()),
            }),
            Operation::Mutation(m) => {
                let (id, version) = match m {
                    Mutation::Create { data, .. } => (format!("id-{}", data["n"]), 1),
                    Mutation::Update { id, .. } => (id, 2),
                    Mutation::Delete { id, .. } => (id, 3),
                };
                json!(MutationResult { id, version })
            }
            Operation::History { schema, .. } => json!(HistoryResult {
                versions: vec![RecordVersion {
                    version: 1,
                    action: MutationKind::Create,
                    timestamp: 5,
                    writer: APP_ID.into(),
                    data: json!({ "schema": schema }).as_object().cloned(),
                }],
            }),
        };
        Ok(value)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
