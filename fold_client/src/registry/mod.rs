//! The app registry: who each app is, what it may do, and how it proves it.
//!
//! Entries live in memory as immutable [`App`] snapshots behind `Arc`s; a change (grant,
//! rotation, removal) swaps the snapshot, so the next request on any open connection sees
//! it. Each entry is persisted as one file (see `store`); a corrupt file is reported by name
//! and the other apps are still served.

pub mod secrets;
mod store;

pub use secrets::IssuedSecrets;
pub use store::CorruptEntry;

use crate::config::UidMode;
use crate::fsutil;
use crate::policy::Grant;
use crate::sandbox::ResourceLimits;
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// How an app authenticates its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Token plus ed25519 signature, timestamp and nonce (the default).
    Signed,
    /// Token only, as clients built for the reference implementation do. Set explicitly at
    /// install; every such request is marked `unsigned` in the audit.
    Token,
}

impl AuthMode {
    /// `signed` or `token`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Signed => "signed",
            AuthMode::Token => "token",
        }
    }
    /// Parses `signed` or `token`.
    pub fn parse(text: &str) -> Option<AuthMode> {
        match text {
            "signed" => Some(AuthMode::Signed),
            "token" => Some(AuthMode::Token),
            _ => None,
        }
    }
}

/// Where an app's processes run, which decides who may connect to its socket. Part of the
/// app's record, so the rule holds before the first launch and after every restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// In a container (the default): only a process of its running container may connect,
    /// and nobody while none runs.
    #[default]
    Container,
    /// On the host, unsandboxed (dev mode, chosen explicitly): any process of its uid.
    Host,
}

impl Placement {
    /// `container` or `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Container => "container",
            Placement::Host => "host",
        }
    }
    /// Parses `container` or `host`.
    pub fn parse(text: &str) -> Option<Placement> {
        match text {
            "container" => Some(Placement::Container),
            "host" => Some(Placement::Host),
            _ => None,
        }
    }
}

/// One installed app. Immutable: changes replace the whole snapshot.
#[derive(Debug, Clone)]
pub struct App {
    /// `app_` and 12 hex digits; names its socket, directories and container.
    pub id: String,
    /// The name people use; unique.
    pub name: String,
    /// The uid the app runs as and that may connect to its socket.
    pub uid: u32,
    /// The app's gid.
    pub gid: u32,
    /// What the app may do; everything else is denied.
    pub grants: Vec<Grant>,
    /// How the app authenticates.
    pub auth_mode: AuthMode,
    /// Where it runs, and so who may connect.
    pub placement: Placement,
    /// SHA-256 of the app's token.
    pub token_hash: [u8; 32],
    /// The app's ed25519 public key.
    pub public_key: VerifyingKey,
    /// File name of the app's binary inside its app directory.
    pub binary: String,
    /// Container image; the daemon's default when `None`.
    pub image: Option<String>,
    /// A named network the app may use; no network when `None`.
    pub network: Option<String>,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// When it was installed (ms since the epoch).
    pub created_ms: u64,
    /// Bumped on every rotation.
    pub generation: u64,
}

/// What `install` needs to know.
#[derive(Debug, Clone)]
pub struct InstallSpec {
    /// The app's name.
    pub name: String,
    /// File name the binary gets inside the app directory.
    pub binary: String,
    /// Initial grants.
    pub grants: Vec<Grant>,
    /// How it authenticates.
    pub auth_mode: AuthMode,
    /// Where it runs.
    pub placement: Placement,
    /// Container image.
    pub image: Option<String>,
    /// Named network.
    pub network: Option<String>,
    /// Resource limits.
    pub limits: ResourceLimits,
}

/// Why a registry change failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No app has this name or id.
    #[error("no app named {0:?}; `fold_client app list` shows the installed apps")]
    NotFound(String),
    /// The name is taken.
    #[error("an app named {0:?} is already installed; pick another name or remove it first")]
    NameTaken(String),
    /// The name breaks the naming rule.
    #[error("app name {0:?} is invalid: use 1-32 lowercase letters, digits, '_' or '-', starting with a letter")]
    BadName(String),
    /// Every uid in the per-app range is used.
    #[error("no free uid left for a new app")]
    NoFreeUid,
    /// Writing the entry failed; nothing changed.
    #[error("cannot save registry entry: {0}")]
    Io(#[from] std::io::Error),
}

/// The set of installed apps.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    uid_mode: UidMode,
    daemon_ids: (u32, u32),
    apps: RwLock<HashMap<String, Arc<App>>>,
    /// Serialises changes, so check-then-write (names, uids) cannot race.
    changes: Mutex<()>,
}

fn valid_app_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Registry {
    /// Opens (creating if needed) the registry in `dir`. Entries that cannot be loaded are
    /// returned beside the registry, each naming its file; the rest are served.
    ///
    /// # Errors
    ///
    /// Only when the directory itself cannot be created or listed.
    pub fn open(
        dir: &Path,
        uid_mode: UidMode,
        daemon_ids: (u32, u32),
    ) -> std::io::Result<(Registry, Vec<CorruptEntry>)> {
        fsutil::private_dir(dir, 0o700)?;
        let mut apps = HashMap::new();
        let mut corrupt = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            match store::load(&path) {
                Ok(app) => {
                    apps.insert(app.id.clone(), Arc::new(app));
                }
                Err(e) => corrupt.push(e),
            }
        }
        let registry = Registry {
            dir: dir.to_path_buf(),
            uid_mode,
            daemon_ids,
            apps: RwLock::new(apps),
            changes: Mutex::new(()),
        };
        Ok((registry, corrupt))
    }

    /// The app with this id, as it is now.
    pub fn get(&self, id: &str) -> Option<Arc<App>> {
        self.apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The app with this name or id.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`].
    pub fn find(&self, name_or_id: &str) -> Result<Arc<App>, RegistryError> {
        let apps = self.apps.read().unwrap_or_else(PoisonError::into_inner);
        apps.get(name_or_id)
            .or_else(|| apps.values().find(|a| a.name == name_or_id))
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(name_or_id.to_string()))
    }

    /// Every app, sorted by name.
    pub fn list(&self) -> Vec<Arc<App>> {
        let mut apps: Vec<_> = self
            .apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        apps
    }

    /// Installs a new app: id, uid, token and key pair. Returns the entry and the secrets,
    /// which the caller hands to the app (credentials file) and then forgets.
    ///
    /// # Errors
    ///
    /// Bad or taken name, no free uid, or the entry could not be saved.
    pub fn install(
        &self,
        spec: InstallSpec,
        now_ms: u64,
    ) -> Result<(Arc<App>, IssuedSecrets), RegistryError> {
        if !valid_app_name(&spec.name) {
            return Err(RegistryError::BadName(spec.name));
        }
        let _guard = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let existing = self.list();
        if existing.iter().any(|a| a.name == spec.name) {
            return Err(RegistryError::NameTaken(spec.name));
        }
        let (uid, gid) = match self.uid_mode {
            UidMode::Daemon => self.daemon_ids,
            UidMode::PerApp { base } => {
                let uid = (1..100_000u32)
                    .map(|n| base + n)
                    .find(|uid| existing.iter().all(|a| a.uid != *uid))
                    .ok_or(RegistryError::NoFreeUid)?;
                (uid, uid)
            }
        };
        let id = loop {
            let id = secrets::new_app_id();
            if self.get(&id).is_none() {
                break id;
            }
        };
        let issued = IssuedSecrets::generate();
        let app = App {
            id,
            name: spec.name,
            uid,
            gid,
            grants: spec.grants,
            auth_mode: spec.auth_mode,
            placement: spec.placement,
            token_hash: secrets::token_hash(&issued.token),
            public_key: issued.signing_key.verifying_key(),
            binary: spec.binary,
            image: spec.image,
            network: spec.network,
            limits: spec.limits,
            created_ms: now_ms,
            generation: 1,
        };
        let app = self.commit(app)?;
        Ok((app, issued))
    }

    /// Applies `change` to a copy of the app and stores it.
    ///
    /// # Errors
    ///
    /// Unknown app, or the entry could not be saved (nothing changed then).
    pub fn update(
        &self,
        name_or_id: &str,
        change: impl FnOnce(&mut App),
    ) -> Result<Arc<App>, RegistryError> {
        let _guard = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut app = (*self.find(name_or_id)?).clone();
        change(&mut app);
        self.commit(app)
    }

    /// Issues a new token and key pair; the old ones stop working at once.
    ///
    /// # Errors
    ///
    /// Unknown app, or the entry could not be saved.
    pub fn rotate(&self, name_or_id: &str) -> Result<(Arc<App>, IssuedSecrets), RegistryError> {
        let issued = IssuedSecrets::generate();
        let app = self.update(name_or_id, |app| {
            app.token_hash = secrets::token_hash(&issued.token);
            app.public_key = issued.signing_key.verifying_key();
            app.generation += 1;
        })?;
        Ok((app, issued))
    }

    /// Removes an app; its next request is refused.
    ///
    /// # Errors
    ///
    /// Unknown app, or its file could not be removed.
    pub fn remove(&self, name_or_id: &str) -> Result<Arc<App>, RegistryError> {
        let _guard = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let app = self.find(name_or_id)?;
        match std::fs::remove_file(store::path_of(&self.dir, &app.id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.apps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&app.id);
        Ok(app)
    }

    fn commit(&self, app: App) -> Result<Arc<App>, RegistryError> {
        store::save(&self.dir, &app)?;
        let app = Arc::new(app);
        self.apps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(app.id.clone(), Arc::clone(&app));
        Ok(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn spec(name: &str) -> InstallSpec {
        InstallSpec {
            name: name.into(),
            binary: "app".into(),
            grants: vec!["query:post".parse().unwrap()],
            auth_mode: AuthMode::Signed,
            placement: Placement::Container,
            image: None,
            network: None,
            limits: ResourceLimits::default(),
        }
    }

    #[test]
    fn install_persists_and_survives_reopen_with_a_corrupt_neighbour() {
        let dir = tempfile::tempdir().unwrap();
        let reg_dir = dir.path().join("registry");
        let mode = UidMode::PerApp { base: 300_000 };
        let (reg, corrupt) = Registry::open(&reg_dir, mode, (0, 0)).unwrap();
        assert!(corrupt.is_empty());
        let (a, secrets) = reg.install(spec("alpha"), 1).unwrap();
        let (b, _) = reg.install(spec("beta"), 2).unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(a.uid > 300_000);
        assert!(matches!(
            reg.install(spec("alpha"), 3),
            Err(RegistryError::NameTaken(_))
        ));
        assert!(matches!(
            reg.install(spec("../x"), 3),
            Err(RegistryError::BadName(_))
        ));

        let file = reg_dir.join(format!("{}.toml", a.id));
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&reg_dir).unwrap().mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains(&secrets.token),
            "the token itself is never stored"
        );
        assert!(
            !text.contains(&hex::encode(secrets.signing_key.to_bytes())),
            "nor the private key"
        );

        std::fs::write(reg_dir.join(format!("{}.toml", b.id)), "garbage = [").unwrap();
        let (reg, corrupt) = Registry::open(&reg_dir, mode, (0, 0)).unwrap();
        assert_eq!(corrupt.len(), 1);
        assert!(corrupt[0].to_string().contains(&b.id), "{}", corrupt[0]);
        let a2 = reg.find("alpha").unwrap();
        assert_eq!(a2.token_hash, a.token_hash);
        assert_eq!(a2.grants, a.grants);
    }

    #[test]
    fn rotate_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, _) = Registry::open(dir.path(), UidMode::Daemon, (1000, 1000)).unwrap();
        let (a, old) = reg.install(spec("alpha"), 1).unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1000));
        let (a2, new) = reg.rotate("alpha").unwrap();
        assert_eq!(a2.generation, 2);
        assert!(!secrets::token_matches(&old.token, &a2.token_hash));
        assert!(secrets::token_matches(&new.token, &a2.token_hash));
        reg.remove(&a.id).unwrap();
        assert!(reg.get(&a.id).is_none());
        assert!(matches!(
            reg.remove("alpha"),
            Err(RegistryError::NotFound(_))
        ));
    }
}
