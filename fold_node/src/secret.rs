//! The node secret: what a TCP client must send as its request `token`.

use crate::error::NodeError;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// The secret file's name inside the data directory.
pub const SECRET_FILE: &str = "node.secret";

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// A node secret. Only its SHA-256 digest is kept, and tokens are compared digest to
/// digest in constant time, so neither the secret's content nor its length leaks
/// through timing. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct NodeSecret {
    digest: [u8; 32],
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSecret(<redacted>)")
    }
}

impl NodeSecret {
    /// A secret given directly (for example from the environment).
    ///
    /// # Errors
    ///
    /// [`NodeError::WeakSecret`] when it is shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &str) -> Result<NodeSecret, NodeError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(NodeError::WeakSecret {
                min: MIN_SECRET_LEN,
            });
        }
        Ok(NodeSecret {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Reads the secret from `path`, or, when the file does not exist, generates 32 random
    /// bytes, writes them hex-encoded to a new 0600 file, and returns `created = true`.
    ///
    /// # Errors
    ///
    /// [`NodeError::InsecureFile`] when the existing file is readable by other users,
    /// [`NodeError::Io`] when it cannot be read or written, and
    /// [`NodeError::WeakSecret`] when it holds too short a secret.
    pub fn load_or_create(path: &Path) -> Result<(NodeSecret, bool), NodeError> {
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(NodeError::InsecureFile {
                        path: path.to_path_buf(),
                        mode,
                    });
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| NodeError::io("cannot read the node secret", path, e))?;
                Ok((NodeSecret::new(text.trim())?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                let text = hex::encode(bytes);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| NodeError::io("cannot create the node secret", path, e))?;
                file.write_all(format!("{text}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| NodeError::io("cannot write the node secret", path, e))?;
                Ok((NodeSecret::new(&text)?, true))
            }
            Err(e) => Err(NodeError::io("cannot inspect the node secret", path, e)),
        }
    }

    /// The default secret file of a data directory.
    pub fn default_path(data_dir: &Path) -> PathBuf {
        data_dir.join(SECRET_FILE)
    }

    /// Whether `token` is this secret, compared in constant time.
    pub fn matches(&self, token: Option<&str>) -> bool {
        let Some(token) = token else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        bool::from(digest.ct_eq(&self.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        let (secret, created) = NodeSecret::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(secret.matches(Some(text.trim())));
        assert!(!secret.matches(Some("wrong")));
        assert!(!secret.matches(None));
        let (again, created) = NodeSecret::load_or_create(&path).unwrap();
        assert!(!created);
        assert!(again.matches(Some(text.trim())));
        assert_eq!(format!("{again:?}"), "NodeSecret(<redacted>)");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            NodeSecret::load_or_create(&path),
            Err(NodeError::InsecureFile { .. })
        ));
        assert!(NodeSecret::new("short").is_err());
    }
}
