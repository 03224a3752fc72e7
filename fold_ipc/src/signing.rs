//! Request signatures: the canonical bytes a signature covers, and sign / verify.
//!
//! Pure functions, no I/O. The canonical bytes are a length-prefixed concatenation, so no
//! JSON canonicalisation is needed: `params` is covered as the exact bytes on the wire.
//!
//! ```text
//! canonical = "foldclient-request" 0x00       domain tag (19 bytes)
//!             u32be(v)
//!             lp(app_id) lp(request_id)
//!             u64be(timestamp)                milliseconds since the Unix epoch
//!             lp(nonce) lp(operation) lp(params)
//! lp(x)     = u32be(byte length of x) x       params absent or null: empty
//! ```
//!
//! The signature is ed25519 (RFC 8032) over `canonical`, sent as 128 lowercase hex digits.
//! Verification uses `verify_strict`, which also refuses weak (low-order) public keys and
//! non-canonical signatures.

use crate::message::Request;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// The domain tag that starts every canonical byte string, so a signature made for a
/// FoldClient request can never be replayed as anything else.
pub const DOMAIN_TAG: &[u8] = b"foldclient-request\0";

/// The fields a signature covers, borrowed from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedFields<'a> {
    /// Protocol version (`v`).
    pub version: u32,
    /// The app the request is for.
    pub app_id: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The nonce.
    pub nonce: &'a str,
    /// The operation name.
    pub operation: &'a str,
    /// The exact `params` bytes; empty when `params` is absent or null.
    pub params: &'a [u8],
}

/// Which signed field a request lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request has no `{0}`, which a signed request needs")]
pub struct MissingField(pub &'static str);

impl<'a> SignedFields<'a> {
    /// Borrows the signed fields of `request`.
    ///
    /// # Errors
    ///
    /// [`MissingField`] naming the first of `v`, `app_id`, `timestamp`, `nonce` that is absent.
    pub fn of(request: &'a Request) -> Result<SignedFields<'a>, MissingField> {
        Ok(SignedFields {
            version: request.v.ok_or(MissingField("v"))?,
            app_id: request.app_id.as_deref().ok_or(MissingField("app_id"))?,
            request_id: &request.request_id,
            timestamp: request.timestamp.ok_or(MissingField("timestamp"))?,
            nonce: request.nonce.as_deref().ok_or(MissingField("nonce"))?,
            operation: &request.operation,
            params: request
                .params
                .as_deref()
                .map_or(&b""[..], |p| p.get().as_bytes()),
        })
    }
}

/// Builds the canonical bytes a signature covers.
pub fn canonical_bytes(fields: &SignedFields<'_>) -> Vec<u8> {
    let variable = [
        fields.app_id.as_bytes(),
        fields.request_id.as_bytes(),
        fields.nonce.as_bytes(),
        fields.operation.as_bytes(),
        fields.params,
    ];
    let mut out = Vec::with_capacity(
        DOMAIN_TAG.len() + 12 + variable.iter().map(|v| v.len() + 4).sum::<usize>(),
    );
    out.extend_from_slice(DOMAIN_TAG);
    out.extend_from_slice(&fields.version.to_be_bytes());
    push_lp(&mut out, fields.app_id.as_bytes());
    push_lp(&mut out, fields.request_id.as_bytes());
    out.extend_from_slice(&fields.timestamp.to_be_bytes());
    push_lp(&mut out, fields.nonce.as_bytes());
    push_lp(&mut out, fields.operation.as_bytes());
    push_lp(&mut out, fields.params);
    out
}

fn push_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded far below 4 GiB by the frame cap.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Signs the canonical bytes of `fields`; returns the signature as lowercase hex.
pub fn sign(key: &SigningKey, fields: &SignedFields<'_>) -> String {
    hex::encode(key.sign(&canonical_bytes(fields)).to_bytes())
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not 128 hex digits.
    #[error("signature is not 128 hex digits")]
    Malformed,
    /// Well-formed, but it does not verify against the key (or the key is weak).
    #[error("signature does not verify")]
    Invalid,
}

/// Verifies a hex signature over the canonical bytes of `fields` with `verify_strict`.
///
/// # Errors
///
/// [`SignatureError::Malformed`] for a signature that is not 128 hex digits,
/// [`SignatureError::Invalid`] when it does not verify.
pub fn verify(
    key: &VerifyingKey,
    fields: &SignedFields<'_>,
    signature_hex: &str,
) -> Result<(), SignatureError> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut bytes).map_err(|_| SignatureError::Malformed)?;
    let signature = Signature::from_bytes(&bytes);
    key.verify_strict(&canonical_bytes(fields), &signature)
        .map_err(|_| SignatureError::Invalid)
}

/// Sets `request.signature` to a signature by `key` over its signed fields.
///
/// # Errors
///
/// [`MissingField`] when the request lacks a signed field.
pub fn sign_request(request: &mut Request, key: &SigningKey) -> Result<(), MissingField> {
    let signature = sign(key, &SignedFields::of(request)?);
    request.signature = Some(signature);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// Known-answer vectors, also printed in docs/protocol.md.
    pub(crate) struct Vector {
        pub seed_hex: &'static str,
        pub public_hex: &'static str,
        pub app_id: &'static str,
        pub request_id: &'static str,
        pub timestamp: u64,
        pub nonce: &'static str,
        pub operation: &'static str,
        pub params: &'static str,
        pub canonical_hex: &'static str,
        pub signature_hex: &'static str,
    }

    pub(crate) const VECTORS: &[Vector] = &[
        Vector {
            seed_hex: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            public_hex: "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
            app_id: "app_7f3a",
            request_id: "req-1",
            timestamp: 1_700_000_000_000,
            nonce: "00112233445566778899aabbccddeeff",
            operation: "query",
            params: r#"{"schema":"post","limit":2}"#,
            canonical_hex: "666f6c64636c69656e742d726571756573740000000001000000086170705f37663361000000057265712d310000018bcfe568000000002030303131323233333434353536363737383839396161626263636464656566660000000571756572790000001b7b22736368656d61223a22706f7374222c226c696d6974223a327d",
            signature_hex: "dc63ecc970ddd1ebd73a46eec5b571ad97f10c1457e6016b7a79e50cdf4ef1d7a40b349d565d710eb87af5f82a4d9b12e782ce426ef516315850e28ed78c550b",
        },
        Vector {
            seed_hex: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            public_hex: "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
            app_id: "app_7f3a",
            request_id: "req-2",
            timestamp: 1_700_000_000_001,
            nonce: "ffeeddccbbaa99887766554433221100",
            operation: "ping",
            params: "",
            canonical_hex: "666f6c64636c69656e742d726571756573740000000001000000086170705f37663361000000057265712d320000018bcfe568010000002066666565646463636262616139393838373736363535343433333232313130300000000470696e6700000000",
            signature_hex: "9281ac0d3ab2f8fb23e67b775f02afe91538d339d76fe893eeac624db25c73ae0b47d9ffa9ddf81110a3f7b98a238c9823fab859f9b03aaabd5f299f23aa7100",
        },
    ];

    fn key(seed_hex: &str) -> SigningKey {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(seed_hex, &mut seed).unwrap();
        SigningKey::from_bytes(&seed)
    }

    fn fields(v: &Vector) -> SignedFields<'_> {
        SignedFields {
            version: 1,
            app_id: v.app_id,
            request_id: v.request_id,
            timestamp: v.timestamp,
            nonce: v.nonce,
            operation: v.operation,
            params: v.params.as_bytes(),
        }
    }

    #[test]
    fn known_answer_vectors() {
        for v in VECTORS {
            let key = key(v.seed_hex);
            let f = fields(v);
            let canonical = hex::encode(canonical_bytes(&f));
            let signature = sign(&key, &f);
            println!(
                "public {}\ncanonical {canonical}\nsignature {signature}",
                hex::encode(key.verifying_key().as_bytes())
            );
            assert_eq!(hex::encode(key.verifying_key().as_bytes()), v.public_hex);
            assert_eq!(canonical, v.canonical_hex);
            assert_eq!(signature, v.signature_hex);
            verify(&key.verifying_key(), &f, v.signature_hex).unwrap();
        }
    }

    #[test]
    fn a_change_to_any_signed_field_fails_verification() {
        let v = &VECTORS[0];
        let key = key(v.seed_hex);
        let public = key.verifying_key();
        let good = fields(v);
        let sig = sign(&key, &good);
        let params_tampered = br#"{"schema":"post","limit":3}"#;
        let tampered = [
            SignedFields { version: 2, ..good },
            SignedFields {
                app_id: "app_7f3b",
                ..good
            },
            SignedFields {
                request_id: "req-9",
                ..good
            },
            SignedFields {
                timestamp: good.timestamp + 1,
                ..good
            },
            SignedFields {
                nonce: "00112233445566778899aabbccddeefe",
                ..good
            },
            SignedFields {
                operation: "mutation",
                ..good
            },
            SignedFields {
                params: params_tampered,
                ..good
            },
            // Moving bytes between adjacent fields must not keep the signature valid.
            SignedFields {
                app_id: "app_7f3",
                request_id: "areq-1",
                ..good
            },
        ];
        for t in tampered {
            assert_eq!(
                verify(&public, &t, &sig),
                Err(SignatureError::Invalid),
                "{t:?}"
            );
        }
        // Flip each bit of the signature itself.
        let sig_bytes = hex::decode(&sig).unwrap();
        for i in 0..sig_bytes.len() * 8 {
            let mut b = sig_bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(verify(&public, &good, &hex::encode(b)).is_err(), "bit {i}");
        }
        assert_eq!(verify(&public, &good, "zz"), Err(SignatureError::Malformed));
        assert_eq!(
            verify(&public, &good, &sig[..126]),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn low_order_public_key_is_rejected() {
        // The identity point (a low-order point): with it, the signature (R = identity, s = 0)
        // satisfies the plain verification equation for every message. verify_strict refuses it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        assert!(weak.is_weak());
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let f = fields(&VECTORS[0]);
        let msg = canonical_bytes(&f);
        use ed25519_dalek::Verifier;
        assert!(
            weak.verify(&msg, &Signature::from_bytes(&forged)).is_ok(),
            "plain verify accepts the forgery"
        );
        assert_eq!(
            verify(&weak, &f, &hex::encode(forged)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn sign_request_covers_exact_params_bytes() {
        let key = key(VECTORS[0].seed_hex);
        let mut req = Request::unsigned("r", Some("app".into()), &crate::Operation::Ping);
        req.timestamp = Some(1);
        req.nonce = Some("n".into());
        req.params = Some(RawValue::from_string(r#"{ }"#.into()).unwrap());
        sign_request(&mut req, &key).unwrap();
        let decoded = Request::decode(&req.encode()).unwrap();
        let f = SignedFields::of(&decoded).unwrap();
        assert_eq!(f.params, b"{ }", "whitespace inside params is kept");
        verify(
            &key.verifying_key(),
            &f,
            decoded.signature.as_deref().unwrap(),
        )
        .unwrap();

        let unsigned = Request::unsigned("r", None, &crate::Operation::Ping);
        assert_eq!(
            SignedFields::of(&unsigned).unwrap_err(),
            MissingField("app_id")
        );
    }
}
