//! A connection to the socket of an app that may open sessions (`auth = "session"`,
//! protocol v2, `fold_ipc::session`): the daemon greets it with a challenge of its own;
//! the app's hello, checked once, makes the connection the app's session, and its requests
//! after that are authenticated by the connection (see `docs/security.md`, "Sessions").

use super::handler::AppHandler;
use fold_ipc::server::{Arrival, ByteBudget, Handler, ServerStats};
use fold_ipc::session::{Challenge, CHALLENGE_BYTES, CHALLENGE_ID, HELLO, VERSION};
use fold_ipc::{Request, Response};
use rand::RngCore;
use std::sync::{Arc, OnceLock};

/// One connection's session: its challenge, and the app record's generation its hello was
/// checked against, once it has been.
#[derive(Debug)]
pub struct SessionState {
    challenge: String,
    opened: OnceLock<u64>,
}

/// Where a request on a session connection goes.
#[derive(Debug)]
pub(super) enum Route<'a> {
    /// A hello: check it, against this state.
    Hello(&'a SessionState),
    /// The session is open, for this generation of the app's record.
    Session(u64),
    /// No session yet: only a request signed on its own may pass.
    Closed,
}

impl SessionState {
    /// A fresh state with a challenge from the OS random generator.
    pub fn new() -> SessionState {
        let mut bytes = [0u8; CHALLENGE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        SessionState {
            challenge: hex::encode(bytes),
            opened: OnceLock::new(),
        }
    }

    /// The challenge's nonce, hex.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// Opens the session for `generation` of the app's record; false if it was open.
    pub(super) fn open(&self, generation: u64) -> bool {
        self.opened.set(generation).is_ok()
    }

    pub(super) fn route(&self, request: &Request) -> Route<'_> {
        if request.operation == HELLO {
            return Route::Hello(self);
        }
        match self.opened.get() {
            // A request signed on its own is checked as such, session or not.
            Some(generation) if request.signature.is_none() => Route::Session(*generation),
            _ => Route::Closed,
        }
    }
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState::new()
    }
}

/// Serves one connection of a session app: greets with the challenge, then answers as the
/// app's handler does, with this connection's session state.
#[derive(Debug)]
pub struct SessionConnection {
    /// The app's handler (shared by its connections).
    pub app: Arc<AppHandler>,
    /// This connection's session.
    pub state: SessionState,
}

impl Handler for SessionConnection {
    fn stats(&self) -> Option<Arc<ServerStats>> {
        self.app.stats()
    }

    fn byte_budget(&self) -> Option<Arc<ByteBudget>> {
        self.app.byte_budget()
    }

    fn greeting(&self) -> Option<Response> {
        let challenge = Challenge {
            v: VERSION,
            nonce: self.state.challenge.clone(),
        };
        let raw = serde_json::value::to_raw_value(&challenge).ok()?;
        Some(Response::ok_raw(CHALLENGE_ID.to_string(), raw))
    }

    async fn handle(&self, request: Request) -> Response {
        self.handle_arrived(request, Arrival::default()).await
    }

    async fn handle_arrived(&self, request: Request, arrival: Arrival) -> Response {
        self.app.answer(request, arrival, Some(&self.state)).await
    }
}
