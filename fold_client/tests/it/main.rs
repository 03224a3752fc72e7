//! fold_client integration tests: a real daemon with a real node on temp dirs, real Unix
//! sockets, the real admin socket.

mod auth;
mod lifecycle;
mod operations;
mod support;
mod node;
mod peer;
mod secrets;
