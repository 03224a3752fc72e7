//! Persistence of registry entries: one TOML file per app, written atomically, mode 0600 in a
//! 0700 directory.

use super::{App, AuthMode, Placement};
use crate::app_limits::LimitSettings;
use crate::fsutil;
use crate::policy::Grant;
use crate::sandbox::{Isolation, IsolationRequest, ResourceLimits};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The on-disk form of an [`App`]. Holds the token's hash and the public key, never a secret.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredApp {
    id: String,
    name: String,
    uid: u32,
    gid: u32,
    grants: Vec<String>,
    auth: String,
    /// Missing in entries written before placement was recorded: those are containers.
    #[serde(default)]
    placement: Option<String>,
    /// Missing in entries written before isolation tiers: those ran under runc.
    #[serde(default)]
    isolation: Option<IsolationRequest>,
    token_sha256: String,
    public_key: String,
    binary: String,
    image: Option<String>,
    network: Option<String>,
    created_ms: u64,
    generation: u64,
    limits: StoredLimits,
    /// Missing in entries written before node limits existed: the config's defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    node_limits: LimitSettings,
    /// Prepared containers it keeps; missing in entries written before warm pools: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    warm: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_default(settings: &LimitSettings) -> bool {
    *settings == LimitSettings::default()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredLimits {
    memory_bytes: u64,
    nano_cpus: u64,
    pids: u64,
    nofile: u64,
    tmpfs_bytes: u64,
}

/// A registry file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("registry entry {path}: {message}")]
pub struct CorruptEntry {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

pub(super) fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.toml"))
}

pub(super) fn save(dir: &Path, app: &App) -> std::io::Result<()> {
    let stored = StoredApp {
        id: app.id.clone(),
        name: app.name.clone(),
        uid: app.uid,
        gid: app.gid,
        grants: app.grants.iter().map(ToString::to_string).collect(),
        auth: app.auth_mode.as_str().to_string(),
        placement: Some(app.placement.as_str().to_string()),
        isolation: Some(app.isolation),
        token_sha256: hex::encode(app.token_hash),
        public_key: hex::encode(app.public_key.as_bytes()),
        binary: app.binary.clone(),
        image: app.image.clone(),
        network: app.network.clone(),
        created_ms: app.created_ms,
        generation: app.generation,
        limits: StoredLimits {
            memory_bytes: app.limits.memory_bytes,
            nano_cpus: app.limits.nano_cpus,
            pids: app.limits.pids,
            nofile: app.limits.nofile,
            tmpfs_bytes: app.limits.tmpfs_bytes,
        },
        node_limits: app.node_limits,
        warm: app.warm,
    };
    let text = toml::to_string(&stored).map_err(std::io::Error::other)?;
    fsutil::write_atomic(&path_of(dir, &app.id), text.as_bytes(), 0o600)
}

pub(super) fn load(path: &Path) -> Result<App, CorruptEntry> {
    let corrupt = |message: String| CorruptEntry {
        path: path.to_path_buf(),
        message,
    };
    let text = fsutil::read_capped(path, 1024 * 1024).map_err(|e| corrupt(e.to_string()))?;
    let s: StoredApp = toml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let expected = path_of(path.parent().unwrap_or(Path::new("")), &s.id);
    if expected != path {
        return Err(corrupt(format!(
            "holds app {} but is not named {}.toml",
            s.id, s.id
        )));
    }
    let mut token_hash = [0u8; 32];
    hex::decode_to_slice(&s.token_sha256, &mut token_hash)
        .map_err(|_| corrupt("token_sha256 is not 64 hex digits".into()))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(&s.public_key, &mut key)
        .map_err(|_| corrupt("public_key is not 64 hex digits".into()))?;
    let public_key = VerifyingKey::from_bytes(&key)
        .map_err(|_| corrupt("public_key is not an ed25519 key".into()))?;
    if public_key.is_weak() {
        return Err(corrupt("public_key is a weak (low-order) key".into()));
    }
    let grants = s
        .grants
        .iter()
        .map(|g| {
            g.parse::<Grant>()
                .map_err(|e| corrupt(format!("grant {g:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let auth_mode = AuthMode::parse(&s.auth)
        .ok_or_else(|| corrupt(format!("auth {:?}: expected signed or token", s.auth)))?;
    let placement = match s.placement.as_deref() {
        None => Placement::Container,
        Some(text) => Placement::parse(text)
            .ok_or_else(|| corrupt(format!("placement {text:?}: expected container or host")))?,
    };
    Ok(App {
        id: s.id,
        name: s.name,
        uid: s.uid,
        gid: s.gid,
        grants,
        auth_mode,
        placement,
        isolation: s
            .isolation
            .unwrap_or(IsolationRequest::Exactly(Isolation::Container)),
        token_hash,
        public_key,
        binary: s.binary,
        image: s.image,
        network: s.network,
        created_ms: s.created_ms,
        generation: s.generation,
        limits: ResourceLimits {
            memory_bytes: s.limits.memory_bytes,
            nano_cpus: s.limits.nano_cpus,
            pids: s.limits.pids,
            nofile: s.limits.nofile,
            tmpfs_bytes: s.limits.tmpfs_bytes,
        },
        node_limits: s.node_limits,
        warm: s.warm,
    })
}
