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

use crate::app_limits::LimitSettings;
use crate::config::UidMode;
use crate::fsutil;
use crate::policy::Grant;
use crate::sandbox::{IsolationRequest, ResourceLimits};
use crate::uids::UidAllocator;
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// How an app authenticates its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Token plus ed25519 signature, timestamp and nonce (the default).
    Signed,
    /// Token only, as clients built for the reference implementation do. Set explicitly at
    /// install; every such request is marked `unsigned` in the audit.
    Token,
    /// As `Signed`, and the app may also open a session (protocol v2,
    /// `fold_ipc::session`): one signed hello per connection, then requests authenticated
    /// by the connection. Every request is marked `session` or `signed` in the audit.
    Session,
}

impl AuthMode {
    /// `signed` or `token`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Signed => "signed",
            AuthMode::Token => "token",
            AuthMode::Session => "session",
        }
    }
    /// Parses `signed` or `token`.
    pub fn parse(text: &str) -> Option<AuthMode> {
        match text {
            "signed" => Some(AuthMode::Signed),
            "token" => Some(AuthMode::Token),
            "session" => Some(AuthMode::Session),
            _ => None,
        }
    }
}

/// `signed` or `token`, as `app install --auth` takes it.
impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(text: &str) -> Result<AuthMode, String> {
        AuthMode::parse(text).ok_or_else(|| format!("{text:?}: expected signed, session or token"))
    }
}

/// Where an app's processes run, which decides who may connect to its socket. Part of the
/// app's record, so the rule holds before the first launch and after every restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// The isolation tier its containers run under (or `auto`: the strongest offered).
    pub isolation: IsolationRequest,
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
    /// Its own node limits (share, quota, write rate); the config fills in the rest.
    pub node_limits: LimitSettings,
    /// How many prepared (warm) containers it keeps (containers only).
    pub warm: u32,
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
    /// Its isolation tier.
    pub isolation: IsolationRequest,
    /// Container image.
    pub image: Option<String>,
    /// Named network.
    pub network: Option<String>,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// Node limits set for this app.
    pub node_limits: LimitSettings,
    /// Prepared containers it keeps.
    pub warm: u32,
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
    /// Every uid in the per-app range is used, or belongs to someone else on the host.
    #[error(
        "no free uid left for a new app: every uid from uid_base + 1 on is installed, \
         covered by /etc/passwd, /etc/group, /etc/subuid or /etc/subgid, held by a process, \
         or reserved by another daemon; set another uid_base"
    )]
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
    /// Decides which per-app uids belong to nobody else on the host (root daemons); without
    /// one, a uid only has to be free in this registry.
    allocator: Option<Arc<dyn UidAllocator>>,
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
            allocator: None,
        };
        Ok((registry, corrupt))
    }

    /// Hands per-app uids out through `allocator` from now on, and reserves the uids of the
    /// apps installed already (they keep them). Returns one message per app whose uid is
    /// someone else's; such an app is refused at launch until it is reinstalled.
    pub fn with_allocator(mut self, allocator: Arc<dyn UidAllocator>) -> (Registry, Vec<String>) {
        let mut conflicts = Vec::new();
        if matches!(self.uid_mode, UidMode::PerApp { .. }) {
            for app in self.list() {
                if let Err(e) = allocator.keep(app.uid, &app.id) {
                    conflicts.push(format!("app {} ({}): {e}", app.name, app.id));
                }
            }
        }
        self.allocator = Some(allocator);
        (self, conflicts)
    }

    /// Whether apps get uids of their own from the host allocator (root, per-app uids).
    pub fn owns_uids(&self) -> bool {
        self.allocator.is_some() && matches!(self.uid_mode, UidMode::PerApp { .. })
    }

    /// Why the app's uid is not its alone right now (see `uids::check_ids`); `None` when
    /// it is, or when apps do not get uids of their own.
    pub fn uid_problem(&self, app: &App) -> Option<String> {
        if !self.owns_uids() {
            return None;
        }
        self.allocator.as_ref()?.problem(app.uid, &app.id)
    }

    /// Releases a removed app's uid reservation. Call only once none of its processes
    /// remain (`uids::kill_all`); a uid whose processes survive stays reserved.
    ///
    /// # Errors
    ///
    /// The reservation could not be removed.
    pub fn release_uid(&self, app: &App) -> std::io::Result<()> {
        match (&self.allocator, self.owns_uids()) {
            (Some(allocator), true) => allocator.release(app.uid, &app.id),
            _ => Ok(()),
        }
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
        let id = loop {
            let id = secrets::new_app_id();
            if self.get(&id).is_none() {
                break id;
            }
        };
        let (uid, gid) = match self.uid_mode {
            UidMode::Daemon => self.daemon_ids,
            UidMode::PerApp { base } => {
                // Free in this registry, then (root) free on the host and reserved for it.
                let mut candidates = (1..crate::config::MAX_PER_APP_UIDS)
                    .filter_map(|n| base.checked_add(n))
                    .filter(|uid| existing.iter().all(|a| a.uid != *uid && a.gid != *uid));
                let uid = match &self.allocator {
                    Some(allocator) => allocator.allocate(&mut candidates, &id)?,
                    None => candidates.next(),
                }
                .ok_or(RegistryError::NoFreeUid)?;
                (uid, uid)
            }
        };
        let issued = IssuedSecrets::generate();
        let app = App {
            id: id.clone(),
            name: spec.name,
            uid,
            gid,
            grants: spec.grants,
            auth_mode: spec.auth_mode,
            placement: spec.placement,
            isolation: spec.isolation,
            token_hash: secrets::token_hash(&issued.token),
            public_key: issued.signing_key.verifying_key(),
            binary: spec.binary,
            image: spec.image,
            network: spec.network,
            limits: spec.limits,
            node_limits: spec.node_limits,
            warm: spec.warm,
            created_ms: now_ms,
            generation: 1,
        };
        let app = match self.commit(app) {
            Ok(app) => app,
            Err(e) => {
                if let (Some(allocator), UidMode::PerApp { .. }) = (&self.allocator, self.uid_mode)
                {
                    let _ = allocator.release(uid, &id);
                }
                return Err(e);
            }
        };
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
            isolation: IsolationRequest::Exactly(crate::sandbox::Isolation::Container),
            image: None,
            network: None,
            limits: ResourceLimits::default(),
            node_limits: LimitSettings::default(),
            warm: 0,
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

    /// Takes every candidate except `refused`; records what it saw.
    #[derive(Debug, Default)]
    struct FakeAllocator {
        refused: Vec<u32>,
        taken: Mutex<Vec<(u32, String)>>,
        released: Mutex<Vec<u32>>,
    }

    impl UidAllocator for FakeAllocator {
        fn allocate(
            &self,
            candidates: &mut dyn Iterator<Item = u32>,
            app_id: &str,
        ) -> std::io::Result<Option<u32>> {
            let mut uid = None;
            for u in candidates {
                if !self.refused.contains(&u) {
                    uid = Some(u);
                    break;
                }
            }
            if let Some(uid) = uid {
                self.taken.lock().unwrap().push((uid, app_id.to_string()));
            }
            Ok(uid)
        }
        fn keep(&self, id: u32, _app_id: &str) -> Result<(), String> {
            if self.refused.contains(&id) {
                Err(format!("uid {id} is someone else's"))
            } else {
                Ok(())
            }
        }
        fn release(&self, id: u32, _app_id: &str) -> std::io::Result<()> {
            self.released.lock().unwrap().push(id);
            Ok(())
        }
        fn problem(&self, id: u32, _app_id: &str) -> Option<String> {
            self.refused.contains(&id).then(|| format!("{id} overlaps"))
        }
    }

    #[test]
    fn per_app_uids_come_from_the_allocator_and_are_released_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let mode = UidMode::PerApp { base: 300_000 };
        let (reg, _) = Registry::open(dir.path(), mode, (0, 0)).unwrap();
        let (a, _) = reg.install(spec("alpha"), 1).unwrap();
        assert_eq!(a.uid, 300_001);
        let fake = Arc::new(FakeAllocator {
            refused: vec![300_002, 300_003, 300_001],
            ..FakeAllocator::default()
        });
        let (reg, conflicts) = Registry::open(dir.path(), mode, (0, 0))
            .unwrap()
            .0
            .with_allocator(fake.clone());
        assert_eq!(conflicts.len(), 1, "alpha's uid is someone else's now");
        assert!(reg.uid_problem(&a).is_some());
        let (b, _) = reg.install(spec("beta"), 2).unwrap();
        assert_eq!(
            (b.uid, b.gid),
            (300_004, 300_004),
            "refused uids are skipped"
        );
        assert_eq!(fake.taken.lock().unwrap()[0], (300_004, b.id.clone()));
        reg.remove("beta").unwrap();
        assert!(
            fake.released.lock().unwrap().is_empty(),
            "remove alone keeps it"
        );
        reg.release_uid(&b).unwrap();
        assert_eq!(*fake.released.lock().unwrap(), [300_004]);

        // Daemon mode never asks the allocator.
        let dir2 = tempfile::tempdir().unwrap();
        let (reg, _) = Registry::open(dir2.path(), UidMode::Daemon, (7, 7))
            .unwrap()
            .0
            .with_allocator(fake);
        assert!(!reg.owns_uids());
        let (c, _) = reg.install(spec("gamma"), 3).unwrap();
        assert_eq!(c.uid, 7);
        assert!(reg.uid_problem(&c).is_none());
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
