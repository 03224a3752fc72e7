//! The credentials file the daemon hands each app.
//!
//! JSON, written by the daemon with mode 0600 (or 0400) and owned by the app's uid, beside the
//! app's socket. Its path reaches the app in `FOLD_CLIENT_CREDENTIALS`.
//!
//! ```json
//! {"v":1,"app_id":"app_7f3a","token":"<64 hex>","private_key":"<64 hex: ed25519 seed>"}
//! ```

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Largest credentials file read, in bytes.
pub const MAX_CREDENTIALS_FILE: u64 = 64 * 1024;

/// An app's identity and secrets. `Debug` redacts the token and the key.
#[derive(Clone)]
pub struct Credentials {
    /// The app's id.
    pub app_id: String,
    /// The app's bearer token, hex.
    pub token: String,
    /// The app's ed25519 signing key.
    pub signing_key: SigningKey,
    /// The protocol version the daemon speaks.
    pub version: u32,
    /// Whether the app may open a session (protocol v2, [`crate::session`]) instead of
    /// signing every request: the daemon writes `"auth": "session"` for such apps.
    pub session: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("app_id", &self.app_id)
            .field("token", &"<redacted>")
            .field("signing_key", &"<redacted>")
            .field("version", &self.version)
            .field("session", &self.session)
            .finish()
    }
}

/// Unknown keys are ignored, so a newer daemon can add some without breaking older apps.
#[derive(Serialize, Deserialize)]
struct CredentialsFile {
    v: u32,
    app_id: String,
    token: String,
    private_key: String,
    /// `"session"` when the app may open sessions; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CREDENTIALS_FILE`].
    #[error("credentials file {0} is too large to be a credentials file")]
    TooLarge(String),
    /// The contents are not a credentials document.
    #[error("credentials are malformed: {0}")]
    Malformed(String),
}

impl Credentials {
    /// Parses a credentials document.
    ///
    /// # Errors
    ///
    /// [`CredentialsError::Malformed`] saying what is wrong (never echoing a secret).
    pub fn from_json(bytes: &[u8]) -> Result<Credentials, CredentialsError> {
        let file: CredentialsFile = serde_json::from_slice(bytes).map_err(|e| {
            CredentialsError::Malformed(format!(
                "not a credentials document ({})",
                e.classify_name()
            ))
        })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.private_key, &mut seed)
            .map_err(|_| CredentialsError::Malformed("private_key is not 64 hex digits".into()))?;
        Ok(Credentials {
            app_id: file.app_id,
            token: file.token,
            signing_key: SigningKey::from_bytes(&seed),
            version: file.v,
            session: file.auth.as_deref() == Some("session"),
        })
    }

    /// Reads and parses a credentials file.
    ///
    /// # Errors
    ///
    /// [`CredentialsError`] naming the file.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| CredentialsError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_CREDENTIALS_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| CredentialsError::Read {
                path: shown.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_CREDENTIALS_FILE {
            return Err(CredentialsError::TooLarge(shown));
        }
        Credentials::from_json(&bytes)
    }

    /// The credentials document, for the daemon to write. Contains secrets.
    pub fn to_json(&self) -> String {
        let file = CredentialsFile {
            v: self.version,
            app_id: self.app_id.clone(),
            token: self.token.clone(),
            private_key: hex::encode(self.signing_key.to_bytes()),
            auth: self.session.then(|| "session".to_string()),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        // The category only: serde_json's message could quote part of a secret.
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_redaction() {
        let creds = Credentials {
            app_id: "app_1".into(),
            token: "ab".repeat(32),
            signing_key: SigningKey::from_bytes(&[7u8; 32]),
            version: 1,
            session: true,
        };
        let back = Credentials::from_json(creds.to_json().as_bytes()).unwrap();
        assert_eq!(back.app_id, "app_1");
        assert_eq!(back.token, creds.token);
        assert_eq!(back.signing_key.to_bytes(), [7u8; 32]);
        assert!(back.session);
        assert!(creds.to_json().contains(r#""auth":"session""#));
        let dbg = format!("{back:?}");
        assert!(
            !dbg.contains(&creds.token) && !dbg.contains("0707"),
            "{dbg}"
        );
        let err =
            Credentials::from_json(br#"{"v":1,"app_id":"a","token":"secret","private_key":"xyz"}"#)
                .unwrap_err();
        assert!(!err.to_string().contains("xyz"));
    }
}
