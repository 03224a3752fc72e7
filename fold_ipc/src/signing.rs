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
//! non-canonical signatures. [`verify_all`] checks several signatures in one batch and
//! accepts exactly what `verify_strict` accepts (see there).

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
    let signature = parse_signature(signature_hex)?;
    verify_bytes(key, &canonical_bytes(fields), &signature)
}

/// Parses a signature sent as 128 hex digits.
///
/// # Errors
///
/// [`SignatureError::Malformed`] when it is not 128 hex digits.
pub fn parse_signature(signature_hex: &str) -> Result<Signature, SignatureError> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut bytes).map_err(|_| SignatureError::Malformed)?;
    Ok(Signature::from_bytes(&bytes))
}

/// `verify_strict` of `signature` over `message` (canonical bytes).
///
/// # Errors
///
/// [`SignatureError::Invalid`] when it does not verify.
pub fn verify_bytes(
    key: &VerifyingKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    key.verify_strict(message, signature)
        .map_err(|_| SignatureError::Invalid)
}

/// The `y` coordinates (sign bit cleared) of the eight points of small order: 1 (the
/// identity), p - 1 (order 2), 0 (order 4), and the two of order 8.
const SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Whether `r` (a signature's `R`) passes, by its encoding alone, the checks
/// `verify_strict` makes of `R` beyond the verification equation: its `y` is canonical
/// (below p = 2^255 - 19), so the encoding is the point's only one, and it is not a point
/// of small order (whatever its sign bit). Whether it is on the curve at all is left to
/// the batch equation, which fails for such an `R`.
fn plain_r(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    let at_least_p = y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed;
    !at_least_p && !SMALL_ORDER_Y.contains(&y)
}

/// One signature of a batch: the key, the canonical bytes it covers, the signature.
pub type BatchItem<'a> = (&'a VerifyingKey, &'a [u8], &'a Signature);

/// Verifies several signatures at once; each result is what [`verify_bytes`]
/// (`verify_strict`) gives for that item, but for the one case below (a key holder's own
/// deliberately malformed signature), and several together cost about half as much per
/// signature (one multi-scalar multiplication, `ed25519_dalek::verify_batch`).
///
/// What the batch accepts, against `verify_strict`. `verify_strict` refuses a non-canonical
/// `s` (so does the batch), an `R` that is not a point (so does the batch), a key or an `R`
/// of small order, and an `R` whose encoding is not canonical; then it checks
/// `R = [s]B - [k]A` without the cofactor. Items whose key is weak, or whose `R` is of small
/// order or not canonically encoded (checked on its bytes), skip the batch and get
/// `verify_strict` itself. The batch checks the same cofactorless equation for a random
/// linear combination (128-bit coefficients), so a batch that passes holds every item's
/// equation, except with negligible probability, or when an item's residual
/// `R + [k]A - [s]B` is a nonzero point of small order that the coefficient happens to
/// cancel. Building such a residual means choosing `R` and `s` around the key's discrete
/// log: only the holder of the private key can, and that holder can sign validly anyway,
/// so no third party can get a forgery past the batch that `verify_strict` would refuse.
/// The one difference is therefore a key holder's own deliberately malformed signature,
/// accepted in a batch. A batch that fails is checked item by item with `verify_strict`,
/// so a bad signature never costs the good ones their answer.
pub fn verify_all(items: &[BatchItem<'_>]) -> Vec<Result<(), SignatureError>> {
    let mut results = vec![Err(SignatureError::Invalid); items.len()];
    let mut batch = Vec::with_capacity(items.len());
    for (i, (key, message, signature)) in items.iter().enumerate() {
        if !key.is_weak() && plain_r(signature.r_bytes()) {
            batch.push(i);
        } else {
            results[i] = verify_bytes(key, message, signature);
        }
    }
    // A batch of one would cost more than `verify_strict` alone.
    let batched = batch.len() > 1 && {
        let messages: Vec<&[u8]> = batch.iter().map(|&i| items[i].1).collect();
        let signatures: Vec<Signature> = batch.iter().map(|&i| *items[i].2).collect();
        let keys: Vec<VerifyingKey> = batch.iter().map(|&i| *items[i].0).collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    };
    for i in batch {
        results[i] = if batched {
            Ok(())
        } else {
            let (key, message, signature) = items[i];
            verify_bytes(key, message, signature)
        };
    }
    results
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
    fn small_order_table_is_small_order() {
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut encoding = y;
                encoding[31] |= sign;
                if let Ok(point) = VerifyingKey::from_bytes(&encoding) {
                    assert!(point.is_weak(), "{}", hex::encode(encoding));
                }
                assert!(!plain_r(&encoding));
            }
        }
        // p itself (non-canonical 0), p + 1 (non-canonical 1), and the largest encoding.
        let mut p = [0xff; 32];
        p[31] = 0x7f;
        for low in [0xed, 0xee, 0xff] {
            p[0] = low;
            assert!(!plain_r(&p));
        }
        p[0] = 0xec; // p - 1: canonical, but of small order
        assert!(!plain_r(&p));
        let ordinary = key(VECTORS[0].seed_hex).verifying_key().to_bytes();
        assert!(plain_r(&ordinary));
    }

    /// A batch gives each item the answer `verify_strict` gives, whatever the mix.
    #[test]
    fn verify_all_matches_verify_strict_item_by_item() {
        use ed25519_dalek::Signer;
        let keys: Vec<SigningKey> = (0..6u8)
            .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
            .collect();
        let messages: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 40 + usize::from(i)]).collect();
        let good: Vec<Signature> = keys.iter().zip(&messages).map(|(k, m)| k.sign(m)).collect();
        let publics: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        // Forgeries: a flipped bit; R of small order (s = 0); the weak key's universal
        // forgery; a non-canonical s (s + L).
        let mut flipped = good[1].to_bytes();
        flipped[40] ^= 1;
        let mut small_r = [0u8; 64];
        small_r[..32].copy_from_slice(&identity);
        let mut big_s = good[2].to_bytes();
        big_s[63] |= 0xf0;
        let bad = [
            Signature::from_bytes(&flipped),
            Signature::from_bytes(&small_r),
            Signature::from_bytes(&big_s),
        ];
        let mut cases: Vec<(VerifyingKey, Vec<u8>, Signature)> = Vec::new();
        for i in 0..6 {
            cases.push((publics[i], messages[i].clone(), good[i]));
        }
        cases.push((publics[1], messages[1].clone(), bad[0]));
        cases.push((publics[3], messages[3].clone(), bad[1]));
        cases.push((weak, messages[4].clone(), Signature::from_bytes(&small_r)));
        cases.push((publics[2], messages[2].clone(), bad[2]));
        cases.push((publics[0], messages[5].clone(), good[0])); // another message
                                                                // Every prefix and the all-good batch, so both the batch and the fallback run.
        for n in 0..=cases.len() {
            let items: Vec<BatchItem<'_>> = cases[..n]
                .iter()
                .map(|(k, m, s)| (k, m.as_slice(), s))
                .collect();
            let expected: Vec<_> = items
                .iter()
                .map(|(k, m, s)| verify_bytes(k, m, s))
                .collect();
            assert_eq!(verify_all(&items), expected, "{n} items");
        }
        assert!(verify_all(
            &cases[..6]
                .iter()
                .map(|(k, m, s)| (k, m.as_slice(), s))
                .collect::<Vec<_>>()
        )
        .iter()
        .all(Result::is_ok));
        assert!(cases[6..]
            .iter()
            .all(|(k, m, s)| verify_bytes(k, m, s).is_err()));
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
