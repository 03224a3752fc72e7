//! fold_client integration tests: a real daemon with a real node on temp dirs, real Unix
//! sockets, the real admin socket.

mod abuse;
mod auth;
mod boundary;
mod docker;
mod examples;
mod fairness;
mod fairness_node;
mod faults;
mod hostile;
mod jobs;
mod lifecycle;
mod metrics_endpoint;
mod node;
mod operations;
mod packaging;
mod peer;
mod replay;
mod sdk;
mod secrets;
mod sessions;
mod support;
mod terminal;
mod tidy;
mod uids;
