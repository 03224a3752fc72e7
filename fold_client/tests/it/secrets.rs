//! Secrets never reach the audit file or the daemon's log, even at debug level.

use fold_ipc::Credentials;
use std::process::Stdio;
use std::time::Duration;

#[tokio::test]
async fn no_secret_in_audit_or_debug_log() {
    let dir = tempfile::Builder::new()
        .prefix("fk")
        .tempdir_in("/tmp")
        .unwrap();
    let state = dir.path().join("state");
    let bin = env!("CARGO_BIN_EXE_fold_client");
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = tokio::process::Command::new(bin)
        .args(["--state-dir"])
        .arg(&state)
        .args(["serve", "--uid-mode", "daemon", "--log", "debug"])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin = state.join("admin.sock");
    for _ in 0..100 {
        if admin.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = cli(&[
        "--json",
        "app",
        "install",
        "leaky",
        "--direct",
        "--binary",
        "/bin/true",
        "--grant",
        "query:*",
    ]);
    let view: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let creds =
        Credentials::load(std::path::Path::new(view["credentials"].as_str().unwrap())).unwrap();
    let c = crate::support::Conn::connect(
        std::path::Path::new(view["socket"].as_str().unwrap()),
        creds.clone(),
    )
    .await;
    let good = c.signed(&fold_ipc::Operation::ListSchemas);
    assert!(c.send(&good).await.success);
    let mut bad = c.signed(&fold_ipc::Operation::Ping);
    bad.token = Some(format!("{}00", &creds.token[..62]));
    assert!(!c.send(&bad).await.success);
    cli(&["app", "rotate", "leaky"]);
    let list = cli(&["app", "list"]);
    assert!(list.contains("leaky"), "{list}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful shutdown on SIGTERM");
    assert!(!admin.exists(), "sockets removed on shutdown");

    let secrets = [
        creds.token.clone(),
        hex::encode(creds.signing_key.to_bytes()),
        good.signature.clone().unwrap(),
    ];
    let audit = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    let log_text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log_text.contains("DEBUG") || log_text.contains("debug"),
        "the daemon really logged at debug level"
    );
    for secret in &secrets {
        assert!(!audit.contains(secret.as_str()), "secret in the audit log");
        assert!(
            !log_text.contains(secret.as_str()),
            "secret in the daemon log"
        );
    }
    for entry in std::fs::read_dir(state.join("registry")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(
            !text.contains(&secrets[0]) && !text.contains(&secrets[1]),
            "secret in the registry"
        );
    }
}
