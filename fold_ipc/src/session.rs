//! Protocol v2 sessions: sign once per connection instead of once per request.
//!
//! On a connection to the socket of an app allowed sessions, the daemon first sends a
//! [`Challenge`] (a response with `request_id` [`CHALLENGE_ID`]) carrying a fresh random
//! nonce chosen for this connection alone. The app's first request is a `hello`: its app id,
//! its token, its own nonce, a timestamp, and an ed25519 signature over
//!
//! ```text
//! canonical = "foldclient-session" 0x00       domain tag (19 bytes)
//!             u32be(2)
//!             lp(app_id) lp(server_nonce) lp(client_nonce)
//!             u64be(timestamp)                milliseconds since the Unix epoch
//! lp(x)     = u32be(byte length of x) x
//! ```
//!
//! The daemon checks token, signature (`verify_strict`), timestamp window and the server
//! nonce (this connection's), once. From then on the connection is the app's session: its
//! requests carry `v: 2` and no token, nonce or signature; the kernel has already named the
//! peer, and nobody else can write into the connection. A hello cannot be replayed on
//! another connection, whose challenge differs. The domain tag differs from a request's
//! (`foldclient-request`), so neither signature can stand for the other.
//!
//! Pure functions and the wire types of the handshake; no I/O.

use crate::signing::SignatureError;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The domain tag that starts a hello's canonical bytes.
pub const DOMAIN_TAG: &[u8] = b"foldclient-session\0";

/// The protocol version of sessions.
pub const VERSION: u32 = crate::version::V2;

/// The `request_id` of the challenge the daemon sends first on a session connection.
pub const CHALLENGE_ID: &str = "session-challenge";

/// The operation name of the hello.
pub const HELLO: &str = "hello";

/// Bytes of randomness in a challenge's nonce (sent as twice as many hex digits).
pub const CHALLENGE_BYTES: usize = 32;

/// The `result` of the challenge response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// The session protocol version (2).
    pub v: u32,
    /// The nonce the daemon chose for this connection, hex.
    pub nonce: String,
}

/// The `params` of a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloParams {
    /// The challenge's nonce, as received.
    pub server_nonce: String,
}

/// The `result` of an accepted hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionOpened {
    /// The session protocol version (2).
    pub v: u32,
}

/// What a hello's signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloFields<'a> {
    /// The app the session is for.
    pub app_id: &'a str,
    /// The daemon's nonce for this connection.
    pub server_nonce: &'a str,
    /// The app's own nonce.
    pub client_nonce: &'a str,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// The canonical bytes a hello's signature covers.
pub fn canonical_bytes(fields: &HelloFields<'_>) -> Vec<u8> {
    let parts = [fields.app_id, fields.server_nonce, fields.client_nonce];
    let mut out = Vec::with_capacity(
        DOMAIN_TAG.len() + 12 + parts.iter().map(|p| p.len() + 4).sum::<usize>(),
    );
    out.extend_from_slice(DOMAIN_TAG);
    out.extend_from_slice(&VERSION.to_be_bytes());
    for part in parts {
        // Every field is bounded far below 4 GiB by the frame cap.
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(&fields.timestamp.to_be_bytes());
    out
}

/// Signs a hello; returns the signature as lowercase hex.
pub fn sign(key: &SigningKey, fields: &HelloFields<'_>) -> String {
    hex::encode(key.sign(&canonical_bytes(fields)).to_bytes())
}

/// Verifies a hello's hex signature with `verify_strict`.
///
/// # Errors
///
/// [`SignatureError::Malformed`] when it is not 128 hex digits, [`SignatureError::Invalid`]
/// when it does not verify (or the key is weak).
pub fn verify(
    key: &VerifyingKey,
    fields: &HelloFields<'_>,
    signature_hex: &str,
) -> Result<(), SignatureError> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut bytes).map_err(|_| SignatureError::Malformed)?;
    key.verify_strict(&canonical_bytes(fields), &Signature::from_bytes(&bytes))
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vector {
        seed_hex: &'static str,
        app_id: &'static str,
        server_nonce: &'static str,
        client_nonce: &'static str,
        timestamp: u64,
        canonical_hex: &'static str,
        signature_hex: &'static str,
    }

    /// Known-answer vectors, printed in docs/protocol.md (section 10.4) and checked there
    /// by `fold_ipc/tests/it/docs_vectors.rs`.
    const SESSION_VECTORS: &[Vector] = &[Vector {
        seed_hex: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        app_id: "app_0123456789ab",
        server_nonce: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        client_nonce: "00112233445566778899aabbccddeeff",
        timestamp: 1_700_000_000_000,
        canonical_hex: "666f6c64636c69656e742d73657373696f6e0000000002000000106170705f30313233343536373839616200000040303030313032303330343035303630373038303930613062306330643065306631303131313231333134313531363137313831393161316231633164316531660000002030303131323233333434353536363737383839396161626263636464656566660000018bcfe56800",
        signature_hex: "446d7b761ed4eda2f0ebde48a501815b57517d4c42efbe93c0abbea0b858fb8029ff8556237ece4cf2818779102a6b357e834e54c7262e7193baa139fa418300",
    }];

    fn key(seed_hex: &str) -> SigningKey {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(seed_hex, &mut seed).unwrap();
        SigningKey::from_bytes(&seed)
    }

    #[test]
    fn session_vectors_hold() {
        for v in SESSION_VECTORS {
            let fields = HelloFields {
                app_id: v.app_id,
                server_nonce: v.server_nonce,
                client_nonce: v.client_nonce,
                timestamp: v.timestamp,
            };
            let key = key(v.seed_hex);
            assert_eq!(hex::encode(canonical_bytes(&fields)), v.canonical_hex);
            assert_eq!(sign(&key, &fields), v.signature_hex);
            verify(&key.verifying_key(), &fields, v.signature_hex).unwrap();
        }
    }

    #[test]
    fn a_hello_for_another_connection_or_app_does_not_verify() {
        let key = key(SESSION_VECTORS[0].seed_hex);
        let fields = HelloFields {
            app_id: "app_1",
            server_nonce: "aa",
            client_nonce: "bb",
            timestamp: 5,
        };
        let signature = sign(&key, &fields);
        let public = key.verifying_key();
        verify(&public, &fields, &signature).unwrap();
        for other in [
            HelloFields {
                server_nonce: "ab",
                ..fields
            },
            HelloFields {
                app_id: "app_2",
                ..fields
            },
            HelloFields {
                client_nonce: "bc",
                ..fields
            },
            HelloFields {
                timestamp: 6,
                ..fields
            },
        ] {
            assert_eq!(
                verify(&public, &other, &signature),
                Err(SignatureError::Invalid)
            );
        }
        assert_eq!(
            verify(&public, &fields, "zz"),
            Err(SignatureError::Malformed)
        );
        // A request's signature over the same bytes' shape never passes for a hello: the
        // domain tags differ.
        assert!(canonical_bytes(&fields).starts_with(b"foldclient-session\0"));
    }
}
