//! Integration tests of fold_ipc (one test binary).
//!
//! - `docs_vectors`: `docs/protocol.md` checked against the crate: the known-answer vectors,
//!   the example envelope and frame, the error codes, operations, limits and JSON examples.

mod docs_vectors;
