//! Which apps run where: launches apps in a sandbox backend, stops them, reports states.

use crate::config::Config;
use crate::daemon::Shared;
use crate::ipc::CREDENTIALS_FILE;
use crate::registry::{App, AuthMode};
use crate::sandbox::direct::DirectSandbox;
use crate::sandbox::{AppState, LaunchSpec, Sandbox, SandboxError, SandboxKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The token for `FOLD_CLIENT_APP_TOKEN`: only in direct mode, only for apps installed with
/// `auth = "token"` (reference-era apps read it from the environment). Read back from the
/// credentials file, the one place the daemon keeps it.
fn legacy_token(shared: &Shared, app: &App) -> Option<String> {
    if app.auth_mode != AuthMode::Token {
        return None;
    }
    let path = shared.socket_dir(&app.id).join(CREDENTIALS_FILE);
    fold_ipc::Credentials::load(&path).ok().map(|c| c.token)
}

/// Launches and tracks apps across backends.
#[derive(Debug)]
pub struct Supervisor {
    direct: Arc<dyn Sandbox>,
    /// The backend each launched app last ran in.
    placed: Mutex<HashMap<String, Arc<dyn Sandbox>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor with the backends this host supports.
    pub fn new(_config: &Config) -> Supervisor {
        Supervisor {
            direct: Arc::new(DirectSandbox::new()),
            placed: Mutex::new(HashMap::new()),
        }
    }

    /// Starts `app`. `direct` runs it on the host, NOT sandboxed (dev mode).
    ///
    /// # Errors
    ///
    /// The app is already running, or the backend could not start it.
    pub async fn launch(
        &self,
        shared: &Shared,
        app: &App,
        direct: bool,
        args: Vec<String>,
    ) -> Result<(SandboxKind, AppState), SandboxError> {
        if !direct {
            return Err(SandboxError::Backend(
                "the Docker backend is not available in this build; run the app in dev mode with `--direct` (NOT sandboxed)".into(),
            ));
        }
        if let Some((_, state)) = self.state(&app.id) {
            if state.is_live() {
                return Err(SandboxError::AlreadyRunning(app.name.clone()));
            }
        }
        let backend = Arc::clone(&self.direct);
        let spec = LaunchSpec {
            app_id: app.id.clone(),
            app_name: app.name.clone(),
            app_dir: shared.app_dir(&app.id),
            binary: app.binary.clone(),
            args,
            socket_dir: shared.socket_dir(&app.id),
            credentials_file: CREDENTIALS_FILE.to_string(),
            uid: app.uid,
            gid: app.gid,
            limits: app.limits,
            image: app
                .image
                .clone()
                .unwrap_or_else(|| shared.config.default_image.clone()),
            network: app.network.clone(),
            log_path: shared.log_path(&app.id),
            log_cap: shared.config.log_cap,
            legacy_token: legacy_token(shared, app),
        };
        let state = backend.launch(&spec).await?;
        let kind = backend.kind();
        lock(&self.placed).insert(app.id.clone(), backend);
        Ok((kind, state))
    }

    /// Stops the app: SIGTERM, then SIGKILL after `grace`.
    ///
    /// # Errors
    ///
    /// The app is not running.
    pub async fn stop(&self, app_id: &str, grace: Duration) -> Result<AppState, SandboxError> {
        let backend = lock(&self.placed)
            .get(app_id)
            .cloned()
            .ok_or_else(|| SandboxError::NotRunning(app_id.to_string()))?;
        backend.stop(app_id, grace).await
    }

    /// The app's backend and state, if it was launched since the daemon started.
    pub fn state(&self, app_id: &str) -> Option<(SandboxKind, AppState)> {
        let backend = lock(&self.placed).get(app_id).cloned()?;
        backend.state(app_id).map(|s| (backend.kind(), s))
    }

    /// Waits until the app is no longer live.
    pub async fn wait(&self, app_id: &str) -> Option<AppState> {
        let backend = lock(&self.placed).get(app_id).cloned()?;
        backend.wait(app_id).await
    }

    /// Stops every live app (daemon shutdown).
    pub async fn stop_all(&self, grace: Duration) {
        let placed: Vec<_> = lock(&self.placed)
            .iter()
            .map(|(id, b)| (id.clone(), Arc::clone(b)))
            .collect();
        let stops = placed
            .iter()
            .filter(|(id, b)| b.state(id).is_some_and(|s| s.is_live()))
            .map(|(id, b)| b.stop(id, grace));
        futures::future::join_all(stops).await;
    }
}
