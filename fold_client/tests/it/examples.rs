//! The example apps against a real daemon (embedded node, real sockets, real admin socket):
//!
//! - `hello_app` and `social_app`, built static (the same binaries serve containers), launched
//!   in direct mode. This is also the end-to-end test of direct-execution dev mode: the log
//!   starts with the NOT SANDBOXED marker, the audit's `launch` event says NOT SANDBOXED, and
//!   every request the apps make is audited as allowed (except the one the social app makes
//!   on purpose without a grant).
//! - `social_app` launched sandboxed in Docker (local base image), as
//!   `scripts/run_social_app.sh` runs it. Skipped without an engine unless
//!   `FOLD_REQUIRE_DOCKER` is set.
//! - `examples/python_client/client.py`, written from `docs/protocol.md` alone, signed and
//!   token-only. Needs `python3` with `cryptography`; skipped (with a message) without it,
//!   unless `FOLD_REQUIRE_DOCKER` is set (CI), where it must run.

use crate::support::{start_daemon, TestDaemon};
use fold_client::admin::protocol::{InstallRequest, InstallResponse, LaunchRequest, WaitRequest};
use fold_client::config::{Config, FileConfig, Overrides};
use fold_ipc::schema::SchemaDef;
use fold_ipc::Operation;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long one example app may run.
const APP_DEADLINE: Duration = Duration::from_secs(120);

/// The grants the social app is installed with: what `social_app --print-grants` says.
const SOCIAL_GRANTS: [&str; 10] = [
    "create_schema:user",
    "create_schema:post",
    "create_schema:comment",
    "query:user",
    "query:post",
    "query:comment",
    "mutation:user",
    "mutation:post",
    "mutation:comment",
    "history:post",
];

/// Builds an example binary statically (off the async runtime: it runs cargo).
async fn build_example(package: &'static str, bin: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || fold_testkit::build_static_binary(package, bin))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("building {package}: {e:#}"))
}

/// A daemon that can run the example apps, in direct mode or in containers.
///
/// As root (CI), apps get their own uids (`uid_mode = "per_app"`, a uid range of this daemon's
/// own, so parallel tests never share a uid), as a real root daemon does: the support's
/// daemon uid mode would run them as root, which both backends refuse. In direct mode an app's
/// own uid must then be able to walk to its binary and socket: the daemon makes the state and
/// apps directories searchable (0711: no listing); the test's own temp directory is opened
/// the same way, as `scripts/run_social_app.sh` does with its state root.
async fn example_daemon() -> TestDaemon {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if !nix::unistd::geteuid().is_root() {
        return start_daemon("").await;
    }
    let dir = tempfile::Builder::new()
        .prefix("fc")
        .tempdir_in("/tmp")
        .unwrap();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let uid_base = 600_000 + (std::process::id() % 1000) * 100 + n * 10;
    let text = format!(
        "uid_mode = \"per_app\"\nuid_base = {uid_base}\nuid_reservation_dir = \"{}\"\n",
        dir.path().join("uids").display()
    );
    let file = FileConfig::parse(&text, Path::new("test.toml")).unwrap();
    let over = Overrides {
        state_dir: Some(dir.path().join("state")),
        ..Overrides::default()
    };
    let config = Config::build(file, over, 0).unwrap();
    let shared = fold_client::daemon::start(config.clone()).await.unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    for path in [&config.state_dir, &config.apps_dir()] {
        let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(path).unwrap()) & 0o777;
        assert_eq!(
            mode,
            0o711,
            "{} is searchable by per-app uids, not listable",
            path.display()
        );
    }
    TestDaemon {
        shared,
        config,
        dir,
    }
}

/// Installs `binary` as `name` with `grants`; returns the app view.
async fn install(d: &TestDaemon, name: &str, binary: &Path, grants: &[&str]) -> InstallResponse {
    install_in(d, name, binary, grants, None).await
}

/// Installs `binary` as `name` with `grants` and `image`; returns the app view.
async fn install_in(
    d: &TestDaemon,
    name: &str,
    binary: &Path,
    grants: &[&str],
    image: Option<String>,
) -> InstallResponse {
    let mut install = InstallRequest::new(name, binary);
    install.grants = grants.iter().map(|g| g.parse().unwrap()).collect();
    install.image = image;
    d.admin(install)
        .await
        .unwrap_or_else(|e| panic!("installing {name}: {e}"))
}

/// Launches `name` in direct mode, waits for it to end; returns its final state and log.
async fn run_direct(d: &TestDaemon, name: &str) -> (String, String) {
    run(d, name, true).await
}

/// Launches `name` (in direct mode or in the default sandbox), waits for it to end; returns
/// its final state and log.
async fn run(d: &TestDaemon, name: &str, direct: bool) -> (String, String) {
    let launched = d
        .admin(LaunchRequest {
            direct,
            ..LaunchRequest::new(name)
        })
        .await
        .unwrap_or_else(|e| panic!("launching {name}: {e}"));
    assert_eq!(launched.sandboxed, !direct, "{launched:?}");
    let waited = tokio::time::timeout(
        APP_DEADLINE,
        d.admin(WaitRequest {
            app: name.into(),
            timeout: APP_DEADLINE,
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} still running after {APP_DEADLINE:?}"))
    .unwrap();
    let log = std::fs::read_to_string(&launched.log).unwrap();
    (waited.state, log)
}

/// This app's audit records.
async fn audit_of(d: &TestDaemon, app_id: &str) -> Vec<Value> {
    d.audit_lines()
        .await
        .into_iter()
        .filter(|r| r["app_id"] == app_id)
        .collect()
}

/// Checks the direct-mode audit trail of one app: a `launch` event saying NOT SANDBOXED
/// per run, and every request allowed except those on `denied_schema`.
fn check_direct_audit(records: &[Value], runs: usize, denied_schema: Option<&str>) -> usize {
    let launches: Vec<&Value> = records.iter().filter(|r| r["event"] == "launch").collect();
    assert_eq!(launches.len(), runs, "{launches:?}");
    for launch in launches {
        assert!(
            launch["detail"].as_str().unwrap().contains("NOT SANDBOXED"),
            "{launch}"
        );
    }
    let requests: Vec<&Value> = records.iter().filter(|r| r["kind"] == "request").collect();
    let mut allowed = 0;
    for r in &requests {
        if r["verdict"] == "allow" {
            assert_eq!(r["auth"], "signed", "{r}");
            allowed += 1;
        } else {
            assert_eq!(r["schema"].as_str(), denied_schema, "unexpected denial {r}");
            assert_eq!(r["code"], "forbidden", "{r}");
        }
    }
    assert!(allowed > 0, "no allowed requests in {requests:?}");
    allowed
}

#[tokio::test]
async fn hello_and_social_apps_run_in_direct_mode_and_are_audited() {
    let social = build_example("example-social_app", "social_app").await;
    let hello = build_example("example-hello_app", "hello_app").await;

    // The app declares the grants it needs; the test grants exactly those.
    let printed = std::process::Command::new(&social)
        .arg("--print-grants")
        .output()
        .unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(printed.lines().collect::<Vec<_>>(), SOCIAL_GRANTS);

    let d = example_daemon().await;
    let view = install(&d, "social", &social, &SOCIAL_GRANTS).await;
    let social_id = view.app.id;

    let (state, log) = run_direct(&d, "social").await;
    assert_eq!(state, "exited(0)", "{log}");
    assert!(
        log.starts_with("=== NOT SANDBOXED (direct mode): social runs as a host process ===\n"),
        "{log}"
    );
    for expected in [
        format!("stdout: social_app: connected as {social_id} (protocol v1, sandbox: direct)"),
        "stdout: schemas: user created, post created, comment created".into(),
        "stdout: users: alice, bob, carol (3 new this run)".into(),
        "stdout:   @bob    Rust tip".into(),
        "stdout:   @carol: Great tip, thanks!".into(),
        format!("stdout:   v2 update by {social_id}"),
        "stdout: reading schema private_notes: refused as expected (forbidden:".into(),
        "stdout: social_app: done".into(),
        "=== app exited(0) ===".into(),
    ] {
        assert!(log.contains(&expected), "missing {expected:?} in:\n{log}");
    }
    assert!(
        !log.lines()
            .any(|l| l.starts_with("stdout:   @") && l.contains("draft")),
        "the feed leaves drafts out:\n{log}"
    );

    // Again, on the same node: the schemas and users exist now, which the app takes in stride.
    let (state, log) = run_direct(&d, "social").await;
    assert_eq!(state, "exited(0)", "{log}");
    let second = &log[log.rfind("=== NOT SANDBOXED").unwrap()..];
    for expected in [
        "stdout: schemas: user already there, post already there, comment already there",
        "stdout: users: alice, bob, carol (0 new this run)",
        "stdout:   posts     10 on the node, 5 new this run",
        "stdout: social_app: done",
    ] {
        assert!(
            second.contains(expected),
            "missing {expected:?} in:\n{second}"
        );
    }
    let social_audit = audit_of(&d, &social_id).await;
    let allowed = check_direct_audit(&social_audit, 2, Some("private_notes"));
    // 19 requests on the first run, 16 on the second (the users exist by then).
    assert_eq!(allowed, 19 + 16);
    for op in ["ping", "create_schema", "query", "mutation", "history"] {
        assert!(
            social_audit
                .iter()
                .any(|r| r["operation"] == op && r["verdict"] == "allow"),
            "no allowed {op} in the audit"
        );
    }

    // hello_app sees only the schemas it holds a grant on.
    let view = install(&d, "hello", &hello, &["query:post", "query:user"]).await;
    let hello_id = view.app.id;
    let (state, log) = run_direct(&d, "hello").await;
    assert_eq!(state, "exited(0)", "{log}");
    assert!(log.starts_with("=== NOT SANDBOXED"), "{log}");
    assert!(
        log.contains(&format!("stdout: hello from {hello_id}: protocol v1\n")),
        "{log}"
    );
    assert!(
        log.contains("stdout: 2 schema(s) visible: [\"post\", \"user\"]\n"),
        "{log}"
    );
    let hello_audit = audit_of(&d, &hello_id).await;
    assert_eq!(check_direct_audit(&hello_audit, 1, None), 2);
    d.stop().await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test]
async fn social_app_runs_sandboxed_in_docker() {
    tokio::task::spawn_blocking(fold_testkit::need_docker)
        .await
        .unwrap();
    let image = tokio::task::spawn_blocking(fold_testkit::ensure_base_image)
        .await
        .unwrap()
        .expect("base image");
    let social = build_example("example-social_app", "social_app").await;

    let d = example_daemon().await;
    let view = install_in(&d, "social", &social, &SOCIAL_GRANTS, Some(image)).await;
    let social_id = view.app.id;
    let (state, log) = run(&d, "social", false).await;
    assert_eq!(state, "exited(0)", "{log}");
    assert!(!log.contains("NOT SANDBOXED"), "{log}");
    for expected in [
        format!("social_app: connected as {social_id} (protocol v1, sandbox: docker)"),
        "schemas: user created, post created, comment created".into(),
        format!("v2 update by {social_id}"),
        "refused as expected (forbidden:".into(),
        "social_app: done".into(),
    ] {
        assert!(log.contains(&expected), "missing {expected:?} in:\n{log}");
    }
    let records = audit_of(&d, &social_id).await;
    let launch = records
        .iter()
        .find(|r| r["event"] == "launch")
        .expect("a launch event");
    assert!(
        launch["detail"].as_str().unwrap().contains("docker"),
        "{launch}"
    );
    let allowed = records
        .iter()
        .filter(|r| r["kind"] == "request" && r["verdict"] == "allow")
        .count();
    assert_eq!(allowed, 19, "{records:?}");
    d.stop().await;
}

/// Whether `python3` with `cryptography` is here; if not, whether the test may skip.
fn python_ready() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os(fold_testkit::REQUIRE_DOCKER_ENV).is_none(),
            "python3 with the cryptography package is required here (FOLD_REQUIRE_DOCKER is set); \
             install it: apt-get install python3-cryptography, or pip install cryptography"
        );
        eprintln!(
            "SKIPPED: the python client test needs python3 with the cryptography package \
             (apt-get install python3-cryptography, or pip install cryptography)"
        );
    }
    ok
}

/// Runs the python client with `env` (and nothing else from this process's environment).
async fn run_python(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let script = fold_testkit::workspace_root().join("examples/python_client/client.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .kill_on_drop(true);
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home); // where pip --user puts packages
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the python client did not finish within 60 s")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn python_client_from_the_spec_talks_to_the_daemon() {
    if !python_ready() {
        return;
    }
    let (ok, out, err) = run_python(&["--self-test"], &[]).await;
    assert!(
        ok && out.contains("both signature vectors and the session vector match"),
        "{out}{err}"
    );

    let d = start_daemon("").await;
    // A schema for the python app to see, created by another app.
    let maker = d.install("maker", &["create_schema:post"], None).await;
    let def: SchemaDef = serde_json::from_value(serde_json::json!(
        {"name": "post", "fields": {"title": {"type": "string"}}}
    ))
    .unwrap();
    d.connect(&maker)
        .await
        .ok(&Operation::CreateSchema(def))
        .await;

    // Signed, with the credentials file, as a launched app would be.
    let creds = d.install("py", &["query:post"], None).await;
    let socket_dir = d.socket(&creds.app_id).parent().unwrap().to_path_buf();
    let env = [
        ("FOLD_CLIENT_APP_ID", creds.app_id.clone()),
        ("FOLD_CLIENT_SOCKET_DIR", socket_dir.display().to_string()),
        (
            "FOLD_CLIENT_CREDENTIALS",
            socket_dir.join("credentials.json").display().to_string(),
        ),
    ];
    let (ok, out, err) = run_python(&[], &env).await;
    assert!(ok, "python client failed:\n{out}{err}");
    assert_eq!(
        out,
        format!(
            "hello from {} (python, signed): protocol v1\n1 schema(s) visible: [\"post\"]\n",
            creds.app_id
        ),
        "{err}"
    );
    let records = audit_of(&d, &creds.app_id).await;
    let ops: Vec<(&str, &str, &str)> = records
        .iter()
        .filter(|r| r["kind"] == "request")
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["verdict"].as_str().unwrap(),
                r["auth"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops.len(),
        2,
        "one ping and one list_schemas, pipelined: {ops:?}"
    );
    for op in ["ping", "list_schemas"] {
        assert!(ops.contains(&(op, "allow", "signed")), "{ops:?}");
    }

    // A wrong app id in the environment: the client refuses to start (spec 2.2).
    let mut wrong = env.clone();
    wrong[0].1 = "app_other".into();
    let (ok, _, err) = run_python(&[], &wrong).await;
    assert!(!ok && err.contains("credentials file is for"), "{err}");

    // Token-only (reference-era) app in dev mode: unsigned requests with the token alone.
    let token_app = d.install("pytoken", &["query:post"], Some("token")).await;
    let socket_dir = d.socket(&token_app.app_id).parent().unwrap().to_path_buf();
    let env = [
        ("FOLD_CLIENT_APP_ID", token_app.app_id.clone()),
        ("FOLD_CLIENT_SOCKET_DIR", socket_dir.display().to_string()),
        ("FOLD_CLIENT_APP_TOKEN", token_app.token.clone()),
    ];
    let (ok, out, err) = run_python(&[], &env).await;
    assert!(ok, "token-only python client failed:\n{out}{err}");
    assert!(out.contains("1 schema(s) visible: [\"post\"]"), "{out}");
    assert!(
        !out.contains(&token_app.token) && !err.contains(&token_app.token),
        "the token must never be printed"
    );
    let records = audit_of(&d, &token_app.app_id).await;
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "request")
            .all(|r| r["verdict"] == "allow" && r["auth"] == "unsigned"),
        "{records:?}"
    );

    // A session app: the client opens a session (challenge, one signed hello) and sends
    // its requests unsigned (protocol v2, section 6.8).
    let session_app = d
        .install("pysession", &["query:post"], Some("session"))
        .await;
    let socket_dir = d
        .socket(&session_app.app_id)
        .parent()
        .unwrap()
        .to_path_buf();
    let env = [
        ("FOLD_CLIENT_APP_ID", session_app.app_id.clone()),
        ("FOLD_CLIENT_SOCKET_DIR", socket_dir.display().to_string()),
        (
            "FOLD_CLIENT_CREDENTIALS",
            socket_dir.join("credentials.json").display().to_string(),
        ),
    ];
    let (ok, out, err) = run_python(&[], &env).await;
    assert!(ok, "session python client failed:\n{out}{err}");
    assert!(
        out.contains("(python, session)") && out.contains("[\"post\"]"),
        "{out}"
    );
    let records = audit_of(&d, &session_app.app_id).await;
    let auths: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["kind"] == "request")
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["auth"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        auths,
        [
            ("hello", "signed"),
            ("ping", "session"),
            ("list_schemas", "session")
        ],
        "{records:?}"
    );
    d.stop().await;
}
