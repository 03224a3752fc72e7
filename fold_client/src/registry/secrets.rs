//! Minting and checking app secrets. Nothing else in the daemon creates or compares them.

use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// A freshly issued token and signing key. Shown to the app once (through its credentials
/// file); the registry keeps only the token's hash and the public key.
pub struct IssuedSecrets {
    /// 256-bit random token, hex.
    pub token: String,
    /// The app's ed25519 signing key.
    pub signing_key: SigningKey,
}

impl fmt::Debug for IssuedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuedSecrets(<redacted>)")
    }
}

impl IssuedSecrets {
    /// Draws a new token and key from the OS random source.
    pub fn generate() -> IssuedSecrets {
        let mut token = [0u8; 32];
        OsRng.fill_bytes(&mut token);
        IssuedSecrets {
            token: hex::encode(token),
            signing_key: SigningKey::generate(&mut OsRng),
        }
    }
}

/// SHA-256 of a token: what the registry stores.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `presented` is the token whose hash is `stored`, in time independent of where
/// they differ (hash, then constant-time comparison of the hashes).
pub fn token_matches(presented: &str, stored: &[u8; 32]) -> bool {
    token_hash(presented).ct_eq(stored).into()
}

/// A fresh app id: `app_` and 12 hex digits.
pub fn new_app_id() -> String {
    let mut bytes = [0u8; 6];
    OsRng.fill_bytes(&mut bytes);
    format!("app_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let a = IssuedSecrets::generate();
        let b = IssuedSecrets::generate();
        assert_eq!(a.token.len(), 64);
        assert_ne!(a.token, b.token);
        assert_ne!(a.signing_key.to_bytes(), b.signing_key.to_bytes());
        assert!(!format!("{a:?}").contains(&a.token));
    }

    #[test]
    fn token_check() {
        let s = IssuedSecrets::generate();
        let h = token_hash(&s.token);
        assert!(token_matches(&s.token, &h));
        assert!(!token_matches(&s.token[..63], &h));
        assert!(!token_matches("", &h));
        assert_eq!(new_app_id().len(), 16);
    }
}
