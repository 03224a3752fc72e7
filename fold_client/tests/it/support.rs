//! Shared helpers: a real daemon (embedded node) on a temp dir, installs through the real
//! admin socket, and a raw signing client with full control over each field.

use fold_client::admin::protocol::InstallRequest;
use fold_client::admin::{AdminCall, AdminClient};
use fold_client::config::{Config, FileConfig, Overrides};
use fold_client::daemon::{self, Shared};
use fold_ipc::mux::MuxConnection;
use fold_ipc::signing::sign_request;
use fold_ipc::{Credentials, Operation, Request, Response};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestDaemon {
    pub shared: Arc<Shared>,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

/// A config for a daemon in `dir`; `extra` is appended to the TOML (e.g. `node = "unix:..."`).
pub fn config_in(dir: &Path, extra: &str) -> Config {
    let text = format!("uid_mode = \"daemon\"\n{extra}");
    let file = FileConfig::parse(&text, Path::new("test.toml")).unwrap();
    let over = Overrides {
        state_dir: Some(dir.join("state")),
        ..Overrides::default()
    };
    Config::build(file, over, nix::unistd::geteuid().as_raw()).unwrap()
}

pub async fn start_daemon(extra: &str) -> TestDaemon {
    let dir = tempfile::Builder::new()
        .prefix("fc")
        .tempdir_in("/tmp")
        .unwrap();
    let config = config_in(dir.path(), extra);
    start_with(dir, config).await
}

/// Starts a daemon with `config` (whose state lives in `dir`).
pub async fn start_with(dir: tempfile::TempDir, config: Config) -> TestDaemon {
    let shared = daemon::start(config.clone()).await.unwrap();
    TestDaemon {
        shared,
        config,
        dir,
    }
}

impl TestDaemon {
    /// Sends `request` to the daemon's admin socket: its typed answer, or the daemon's
    /// refusal.
    pub async fn admin<R: AdminCall>(&self, request: R) -> Result<R::Response, String> {
        admin_call(&self.config.admin_socket, request).await
    }

    /// Installs an app placed on the host (so this test process may connect as it) with
    /// `grants` (auth "signed" unless `auth` is given); returns its credentials, read from
    /// the credentials file the daemon wrote.
    pub async fn install(&self, name: &str, grants: &[&str], auth: Option<&str>) -> Credentials {
        self.install_placed(name, grants, auth, true).await
    }

    /// Installs an app on the host (`direct`) or in a container (not launched).
    pub async fn install_placed(
        &self,
        name: &str,
        grants: &[&str],
        auth: Option<&str>,
        direct: bool,
    ) -> Credentials {
        let mut install = InstallRequest::new(name, "/bin/true");
        install.grants = grants.iter().map(|g| g.parse().unwrap()).collect();
        install.auth = auth.map(|a| a.parse().unwrap());
        install.direct = direct;
        let installed = self.admin(install).await.unwrap();
        Credentials::load(&installed.app.credentials).unwrap()
    }

    pub fn socket(&self, app_id: &str) -> PathBuf {
        self.shared.socket_path(app_id)
    }

    pub async fn connect(&self, creds: &Credentials) -> Conn {
        Conn::connect(&self.socket(&creds.app_id), creds.clone()).await
    }

    pub async fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.shared.audit.flush().await;
        std::fs::read_to_string(self.config.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub async fn stop(self) -> tempfile::TempDir {
        daemon::stop(&self.shared).await;
        self.dir
    }
}

/// Sends `request` to the admin socket at `socket`: the typed answer, or the daemon's
/// refusal; a failed exchange panics.
pub async fn admin_call<R: AdminCall>(socket: &Path, request: R) -> Result<R::Response, String> {
    match AdminClient::new(socket, TIMEOUT).call(request).await {
        Ok(answer) => Ok(answer),
        Err(fold_client::admin::AdminError::Refused(error)) => Err(error),
        Err(e) => panic!("admin call to {}: {e}", socket.display()),
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A raw client: builds signed requests that tests may tamper with before sending.
pub struct Conn {
    pub mux: MuxConnection,
    pub creds: Credentials,
}

pub fn now_ms() -> u64 {
    fold_client::audit::now_ms()
}

impl Conn {
    pub async fn connect(path: &Path, creds: Credentials) -> Conn {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        Conn {
            mux: MuxConnection::new(stream, fold_ipc::frame::DEFAULT_MAX_FRAME),
            creds,
        }
    }

    /// A correctly signed request for `op`.
    pub fn signed(&self, op: &Operation) -> Request {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut r = Request::unsigned(format!("t{n}"), Some(self.creds.app_id.clone()), op);
        r.token = Some(self.creds.token.clone());
        r.timestamp = Some(now_ms());
        r.nonce = Some(format!(
            "{:032x}",
            u128::from(n) << 64 | u128::from(rand_u64())
        ));
        sign_request(&mut r, &self.creds.signing_key).unwrap();
        r
    }

    pub async fn send(&self, request: &Request) -> Response {
        self.mux.call(request, TIMEOUT).await.unwrap()
    }

    pub async fn call(&self, op: &Operation) -> Response {
        self.send(&self.signed(op)).await
    }

    /// Calls and expects success; returns the result as JSON.
    pub async fn ok(&self, op: &Operation) -> serde_json::Value {
        let r = self.call(op).await;
        assert!(r.success, "{op:?} failed: {:?}", r.error);
        serde_json::from_str(r.result.as_ref().unwrap().get()).unwrap()
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.load(Ordering::Relaxed));
    h.finish()
}

/// The error code of a failed response.
pub fn code(r: &Response) -> fold_ipc::ErrorCode {
    assert!(!r.success, "expected a failure, got {:?}", r.result);
    r.error.as_ref().unwrap().code
}

/// A root daemon giving each app its own uid, in a fresh temp dir others may traverse
/// (so a process with the app's uid can reach its socket directory, as in production).
pub async fn per_app_daemon() -> Option<TestDaemon> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: per-app uids need a root daemon");
        return None;
    }
    let dir = traversable_tempdir();
    let config = per_app_config(&dir);
    Some(start_with(dir, config).await)
}

/// A fresh temp dir others may traverse (0711), as a per-app daemon's state needs: a
/// process with an app's uid must reach the app's socket directory below it.
pub fn traversable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("fcb")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// Runs `sh -c script` as `uid:gid`; returns whether it succeeded.
pub fn run_as(uid: u32, gid: u32, script: &str) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(uid)
        .gid(gid)
        .status()
        .unwrap()
        .success()
}

/// The config of a per-app-uid daemon whose state lives in `dir`.
pub fn per_app_config(dir: &tempfile::TempDir) -> Config {
    // A base of its own per test process, far from other users' ranges.
    let base = 3_500_000_000u32 + (std::process::id() % 10_000) * 1_000;
    // uid reservations in the test's own directory, not the host's shared one.
    let text = format!(
        "uid_mode = \"per_app\"\nuid_base = {base}\nuid_reservation_dir = \"{}\"\n",
        dir.path().join("uids").display()
    );
    let file = FileConfig::parse(&text, Path::new("test.toml")).unwrap();
    let over = Overrides {
        state_dir: Some(dir.path().join("state")),
        ..Overrides::default()
    };
    Config::build(file, over, 0).unwrap()
}

/// Runs the `fold_client` CLI on the daemon of `state` without blocking the test's
/// runtime (which serves the daemon).
pub async fn cli(state: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_fold_client"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

/// Installs `body` as a shell script app placed on the host (direct).
pub async fn install_script(d: &TestDaemon, name: &str, body: &str) {
    let script = d.dir.path().join(format!("{name}.sh"));
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.admin(InstallRequest {
        direct: true,
        ..InstallRequest::new(name, script)
    })
    .await
    .unwrap();
}
