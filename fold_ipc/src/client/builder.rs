//! [`ClientBuilder`]: where the socket is, who the app is, and the client's limits.

use super::auth::Auth;
use super::error::{Error, Result};
use super::Client;
use crate::credentials::Credentials;
use crate::frame::DEFAULT_MAX_FRAME;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The app's id; names its socket and goes in every request.
pub const ENV_APP_ID: &str = "FOLD_CLIENT_APP_ID";
/// The directory holding the app's socket, `<dir>/<app_id>.sock`.
pub const ENV_SOCKET_DIR: &str = "FOLD_CLIENT_SOCKET_DIR";
/// The path of the app's credentials file (token and signing key).
pub const ENV_CREDENTIALS: &str = "FOLD_CLIENT_CREDENTIALS";
/// Dev mode only: the app's token, for token-only apps that have no credentials file.
pub const ENV_APP_TOKEN: &str = "FOLD_CLIENT_APP_TOKEN";

/// How long a call may take, connecting included, unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait between connection attempts after a failure; it doubles each time.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Configures a [`Client`]: socket path, identity, timeout, frame cap, reconnect backoff.
///
/// Most apps use [`Client::from_env`], which is `ClientBuilder::from_env()?.connect()`.
/// `Debug` shows the app id and settings, never the token or key.
///
/// ```no_run
/// # async fn run() -> fold_ipc::client::Result<()> {
/// use fold_ipc::client::ClientBuilder;
/// use std::time::Duration;
///
/// let client = ClientBuilder::from_env()?
///     .timeout(Duration::from_secs(3))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    pub(crate) socket_path: PathBuf,
    pub(crate) auth: Auth,
    /// Where the credentials came from, so they can be re-read after a rotation.
    pub(crate) credentials_path: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) max_frame: usize,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("socket_path", &self.socket_path)
            .field("auth", &self.auth)
            .field("credentials_path", &self.credentials_path)
            .field("timeout", &self.timeout)
            .field("max_frame", &self.max_frame)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

impl ClientBuilder {
    /// A client for the socket at `socket_path`, signing with `credentials`.
    pub fn new(socket_path: impl Into<PathBuf>, credentials: Credentials) -> ClientBuilder {
        ClientBuilder::with_auth(
            socket_path.into(),
            Auth::Signed(Box::new(credentials)),
            None,
        )
    }

    /// A client signing with the credentials in the file at `path`. After an
    /// `unauthenticated` answer the client re-reads the file once (the daemon may have
    /// rotated the credentials) and, if they changed, retries with the new ones.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the file when it cannot be read or parsed.
    pub fn from_credentials_file(
        socket_path: impl Into<PathBuf>,
        path: impl Into<PathBuf>,
    ) -> Result<ClientBuilder> {
        let path = path.into();
        let credentials = load_credentials(&path)?;
        Ok(ClientBuilder::with_auth(
            socket_path.into(),
            Auth::Signed(Box::new(credentials)),
            Some(path),
        ))
    }

    /// Dev mode: a client that sends the token alone, unsigned. The daemon accepts that only
    /// for apps installed with `auth = "token"`; any other app gets [`Error::BadSignature`].
    pub fn token_only(
        socket_path: impl Into<PathBuf>,
        app_id: impl Into<String>,
        token: impl Into<String>,
    ) -> ClientBuilder {
        let auth = Auth::TokenOnly {
            app_id: app_id.into(),
            token: token.into(),
        };
        ClientBuilder::with_auth(socket_path.into(), auth, None)
    }

    fn with_auth(
        socket_path: PathBuf,
        auth: Auth,
        credentials_path: Option<PathBuf>,
    ) -> ClientBuilder {
        ClientBuilder {
            socket_path,
            auth,
            credentials_path,
            timeout: DEFAULT_TIMEOUT,
            max_frame: DEFAULT_MAX_FRAME,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }

    /// Reads the variables the daemon sets for the app: [`ENV_APP_ID`], [`ENV_SOCKET_DIR`],
    /// and [`ENV_CREDENTIALS`] or, in dev mode without a credentials file, [`ENV_APP_TOKEN`].
    /// The socket is `<FOLD_CLIENT_SOCKET_DIR>/<FOLD_CLIENT_APP_ID>.sock`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable that is missing or malformed, or the
    /// credentials file that cannot be read or belongs to another app.
    pub fn from_env() -> Result<ClientBuilder> {
        ClientBuilder::from_lookup(|name| std::env::var_os(name))
    }

    /// [`ClientBuilder::from_env`] with the variables read through `lookup` instead of the
    /// process environment (for tests, or for apps that take the values from elsewhere).
    /// An empty value counts as unset.
    ///
    /// ```
    /// use fold_ipc::client::{ClientBuilder, Error};
    ///
    /// let err = ClientBuilder::from_lookup(|_| None).unwrap_err();
    /// assert!(matches!(&err, Error::Config { message } if message.contains("FOLD_CLIENT_APP_ID")));
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`ClientBuilder::from_env`].
    pub fn from_lookup<F>(lookup: F) -> Result<ClientBuilder>
    where
        F: Fn(&str) -> Option<OsString>,
    {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let app_id = get(ENV_APP_ID)
            .ok_or_else(|| Error::config(format!("{ENV_APP_ID} is not set")))?
            .into_string()
            .map_err(|_| Error::config(format!("{ENV_APP_ID} is not valid UTF-8")))?;
        check_app_id(&app_id)?;
        let socket_dir = get(ENV_SOCKET_DIR)
            .ok_or_else(|| Error::config(format!("{ENV_SOCKET_DIR} is not set")))?;
        let socket_path = Path::new(&socket_dir).join(format!("{app_id}.sock"));

        if let Some(path) = get(ENV_CREDENTIALS) {
            let path = PathBuf::from(path);
            let credentials = load_credentials(&path)
                .map_err(|e| Error::config(format!("{ENV_CREDENTIALS}: {}", e.message())))?;
            if credentials.app_id != app_id {
                return Err(Error::config(format!(
                    "{ENV_CREDENTIALS} names {}, which holds the credentials of app {:?}, \
                     but {ENV_APP_ID} is {app_id:?}",
                    path.display(),
                    credentials.app_id
                )));
            }
            return Ok(ClientBuilder::with_auth(
                socket_path,
                Auth::Signed(Box::new(credentials)),
                Some(path),
            ));
        }
        let token = get(ENV_APP_TOKEN)
            .ok_or_else(|| {
                Error::config(format!(
                    "neither {ENV_CREDENTIALS} nor (dev mode) {ENV_APP_TOKEN} is set"
                ))
            })?
            .into_string()
            .map_err(|_| Error::config(format!("{ENV_APP_TOKEN} is not valid UTF-8")))?;
        Ok(ClientBuilder::token_only(socket_path, app_id, token))
    }

    /// How long each call may take, connecting included ([`DEFAULT_TIMEOUT`] by default).
    /// When it passes, the call fails with [`Error::Timeout`] (or [`Error::Disconnected`] if no
    /// connection could be made). Use [`Client::with_timeout`] to change it per call site.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// The largest frame sent or accepted, in bytes ([`DEFAULT_MAX_FRAME`] by default). Raise
    /// it only together with the daemon's cap.
    #[must_use]
    pub fn max_frame(mut self, max_frame: usize) -> ClientBuilder {
        self.max_frame = max_frame;
        self
    }

    /// The backoff between connection attempts: `initial` after the first failure, doubling
    /// up to `max`. Attempts stop when the call's timeout would pass.
    #[must_use]
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> ClientBuilder {
        self.backoff_initial = initial.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_initial);
        self
    }

    /// The socket the client will connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The app the client will speak for.
    pub fn app_id(&self) -> &str {
        self.auth.app_id()
    }

    /// Builds the client and opens its connection, retrying with backoff until the timeout
    /// (so an app started just before its daemon still connects).
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] (with `sent: false`) naming the socket when it cannot be
    /// reached within the timeout.
    pub async fn connect(self) -> Result<Client> {
        let client = Client::from_builder(self);
        client.ensure_connected().await?;
        Ok(client)
    }
}

fn load_credentials(path: &Path) -> Result<Credentials> {
    use crate::credentials::CredentialsError;
    Credentials::load(path).map_err(|e| match e {
        // These already name the file.
        CredentialsError::Read { .. } | CredentialsError::TooLarge(_) => {
            Error::config(e.to_string())
        }
        CredentialsError::Malformed(_) => Error::config(format!("{}: {e}", path.display())),
    })
}

/// The app id names the socket file, so it must be a plain file-name component.
fn check_app_id(app_id: &str) -> Result<()> {
    let ok = app_id != "."
        && app_id != ".."
        && app_id.len() <= crate::message::MAX_ID_LEN
        && !app_id.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{ENV_APP_ID} is {app_id:?}, which is not an app id"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn config_message(result: Result<ClientBuilder>) -> String {
        match result {
            Err(Error::Config { message }) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn missing_variables_are_named() {
        let msg = config_message(ClientBuilder::from_lookup(lookup(&[])));
        assert!(msg.contains(ENV_APP_ID), "{msg}");
        let msg = config_message(ClientBuilder::from_lookup(lookup(&[(ENV_APP_ID, "a")])));
        assert!(msg.contains(ENV_SOCKET_DIR), "{msg}");
        let msg = config_message(ClientBuilder::from_lookup(lookup(&[
            (ENV_APP_ID, "a"),
            (ENV_SOCKET_DIR, "/s"),
            (ENV_CREDENTIALS, ""),
        ])));
        assert!(
            msg.contains(ENV_CREDENTIALS) && msg.contains(ENV_APP_TOKEN),
            "{msg}"
        );
        let msg = config_message(ClientBuilder::from_lookup(lookup(&[
            (ENV_APP_ID, "../x"),
            (ENV_SOCKET_DIR, "/s"),
        ])));
        assert!(msg.contains(ENV_APP_ID), "{msg}");
    }

    #[test]
    fn credentials_file_problems_name_the_variable_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let msg = config_message(ClientBuilder::from_lookup(lookup(&[
            (ENV_APP_ID, "a"),
            (ENV_SOCKET_DIR, "/s"),
            (ENV_CREDENTIALS, missing.to_str().unwrap()),
        ])));
        assert!(
            msg.contains(ENV_CREDENTIALS) && msg.contains("nope.json"),
            "{msg}"
        );

        let creds = Credentials {
            app_id: "other".into(),
            token: "t".repeat(64),
            signing_key: SigningKey::from_bytes(&[1; 32]),
            version: 1,
            session: false,
        };
        let path = dir.path().join("creds.json");
        std::fs::write(&path, creds.to_json()).unwrap();
        let msg = config_message(ClientBuilder::from_lookup(lookup(&[
            (ENV_APP_ID, "a"),
            (ENV_SOCKET_DIR, "/s"),
            (ENV_CREDENTIALS, path.to_str().unwrap()),
        ])));
        assert!(
            msg.contains("\"other\"") && msg.contains(ENV_APP_ID),
            "{msg}"
        );
        assert!(!msg.contains(&"t".repeat(64)));
    }

    #[test]
    fn credentials_win_over_the_dev_token_and_debug_hides_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials {
            app_id: "a".into(),
            token: "f00d".repeat(16),
            signing_key: SigningKey::from_bytes(&[1; 32]),
            version: 1,
            session: false,
        };
        let path = dir.path().join("creds.json");
        std::fs::write(&path, creds.to_json()).unwrap();
        let builder = ClientBuilder::from_lookup(lookup(&[
            (ENV_APP_ID, "a"),
            (ENV_SOCKET_DIR, "/run/s"),
            (ENV_CREDENTIALS, path.to_str().unwrap()),
            (ENV_APP_TOKEN, "devtoken"),
        ]))
        .unwrap();
        assert!(builder.auth.is_signed());
        assert_eq!(builder.socket_path(), Path::new("/run/s/a.sock"));
        let dbg = format!("{builder:?}");
        assert!(!dbg.contains(&creds.token), "{dbg}");

        let dev = ClientBuilder::from_lookup(lookup(&[
            (ENV_APP_ID, "a"),
            (ENV_SOCKET_DIR, "/run/s"),
            (ENV_APP_TOKEN, "devtoken"),
        ]))
        .unwrap();
        assert!(!dev.auth.is_signed());
        assert_eq!(dev.app_id(), "a");
        assert!(!format!("{dev:?}").contains("devtoken"));
    }
}
