//! The request parser: `Request::decode` (the envelope) then `Operation::parse` (the typed
//! operation), on arbitrary frame bodies.
//!
//! Checked: decoding never panics; a refusal is `bad_request` and encodes as a valid
//! response; an accepted envelope keeps every length limit, keeps `params` as the exact bytes
//! of the body, survives an encode/decode round trip, and yields canonical bytes for
//! signing; an accepted operation survives `params_json` and `parse` unchanged (what the
//! SDK sends is what the daemon reads).
#![no_main]

use ed25519_dalek::{SigningKey, VerifyingKey};
use fold_ipc::message::{MAX_ID_LEN, MAX_OPERATION_LEN, MAX_SECRET_LEN};
use fold_ipc::signing::{canonical_bytes, verify, SignedFields};
use fold_ipc::{ErrorCode, Operation, Request, Response};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|body: &[u8]| {
    let request = match Request::decode(body) {
        Ok(request) => request,
        Err(err) => {
            assert_eq!(err.error.code, ErrorCode::BadRequest);
            if let Some(id) = &err.request_id {
                assert!(id.len() <= MAX_ID_LEN);
            }
            let response = Response::from(err).encode();
            let back = Response::decode(&response).expect("an error response decodes");
            assert!(!back.success);
            return;
        }
    };

    assert!(!request.request_id.is_empty() && request.request_id.len() <= MAX_ID_LEN);
    assert!(request.operation.len() <= MAX_OPERATION_LEN);
    for (value, max) in [
        (&request.app_id, MAX_ID_LEN),
        (&request.nonce, MAX_ID_LEN),
        (&request.token, MAX_SECRET_LEN),
        (&request.signature, MAX_SECRET_LEN),
    ] {
        assert!(value.as_ref().is_none_or(|s| s.len() <= max));
    }
    if let Some(params) = &request.params {
        assert_ne!(params.get(), "null");
        assert!(
            contains(body, params.get().as_bytes()),
            "params must be the exact bytes that arrived"
        );
    }

    // What goes out comes back unchanged.
    let again = Request::decode(&request.encode()).expect("an encoded request decodes");
    assert_eq!(again.v, request.v);
    assert_eq!(again.request_id, request.request_id);
    assert_eq!(again.app_id, request.app_id);
    assert_eq!(again.token, request.token);
    assert_eq!(again.operation, request.operation);
    assert_eq!(
        again.params.as_ref().map(|p| p.get()),
        request.params.as_ref().map(|p| p.get())
    );
    assert_eq!(again.timestamp, request.timestamp);
    assert_eq!(again.nonce, request.nonce);
    assert_eq!(again.signature, request.signature);

    // Signing material can always be built, and a bogus signature is refused, not a panic.
    if let Ok(fields) = SignedFields::of(&request) {
        let bytes = canonical_bytes(&fields);
        assert!(bytes.len() >= fields.params.len());
        let key = ed25519_key();
        let sig = request.signature.as_deref().unwrap_or("");
        assert!(verify(&key, &fields, sig).is_err());
    }

    match request.operation() {
        Ok(op) => {
            assert_eq!(op.name(), request.operation);
            let text = op.params_json();
            let raw = text
                .as_deref()
                .map(|t| RawValue::from_string(t.to_string()).expect("params_json is JSON"));
            let back = Operation::parse(op.name(), raw.as_deref())
                .unwrap_or_else(|e| panic!("params_json {text:?} does not parse back: {e:?}"));
            assert_eq!(back, op);
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.field.is_some(), "a params error names its field: {e:?}");
        }
    }
});

/// The public key of a fixed seed; no fuzz input carries a signature made with it.
fn ed25519_key() -> VerifyingKey {
    SigningKey::from_bytes(&[7u8; 32]).verifying_key()
}
