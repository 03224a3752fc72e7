//! The boundary between an app and root, and between an app and the host: each test is an
//! attack the first attacker's review made (docs/security.md, "Files" and "Peer rule").

use crate::support::{per_app_config, per_app_daemon, run_as, start_daemon, start_with, Conn};
use fold_client::admin::protocol::{RotateRequest, RunRequest, ShowRequest};
use fold_client::registry::Placement;
use fold_ipc::frame::{encode_frame, DEFAULT_MAX_FRAME};
use fold_ipc::Credentials;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn root_never_writes_through_a_symlink_the_app_planted() {
    let Some(d) = per_app_daemon().await else {
        return;
    };
    let creds = d.install("planter", &["query:post"], None).await;
    let app = d.shared.registry.find("planter").unwrap();
    let socket_dir = d.shared.socket_dir(&app.id);
    // A file of root's that the app must never get: the symlinks point at it.
    let victim = d.dir.path().join("victim");
    std::fs::write(&victim, b"root's own file\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let v = victim.display();
    let s = socket_dir.display();
    // The names root writes or re-binds in the socket directory, as the attacker found them
    // (the temporary file carried the daemon's pid), plus the credentials and socket names.
    let pid = std::process::id();
    let planted = run_as(
        app.uid,
        app.gid,
        &format!(
            "ln -sf {v} {s}/.credentials.json.tmp{pid} && ln -sf {v} {s}/planted && \
             rm -f {s}/credentials.json && ln -s {v} {s}/credentials.json"
        ),
    );
    assert!(!planted, "the app can write its socket directory");
    d.admin(RotateRequest {
        app: "planter".into(),
    })
    .await
    .unwrap();
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's own file\n");
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 0, 0o644));

    // The layout: root's directory and files, the app's group may read, nobody else.
    let dir_meta = std::fs::symlink_metadata(&socket_dir).unwrap();
    assert_eq!(
        (dir_meta.uid(), dir_meta.gid(), dir_meta.mode() & 0o777),
        (0, app.gid, 0o750)
    );
    let creds_path = socket_dir.join("credentials.json");
    let creds_meta = std::fs::symlink_metadata(&creds_path).unwrap();
    assert!(creds_meta.file_type().is_file());
    assert_eq!(
        (
            creds_meta.uid(),
            creds_meta.gid(),
            creds_meta.mode() & 0o777
        ),
        (0, app.gid, 0o640)
    );
    let sock_meta = std::fs::symlink_metadata(d.socket(&app.id)).unwrap();
    assert_eq!(
        (sock_meta.uid(), sock_meta.gid(), sock_meta.mode() & 0o777),
        (0, app.gid, 0o660)
    );
    // The app can still read its new credentials and reach its socket.
    assert!(run_as(
        app.uid,
        app.gid,
        &format!("cat {} >/dev/null", creds_path.display())
    ));
    let rotated = Credentials::load(&creds_path).unwrap();
    assert_ne!(rotated.token, creds.token);
    // Another uid cannot.
    assert!(!run_as(
        65534,
        65534,
        &format!("cat {} >/dev/null", creds_path.display())
    ));
    d.stop().await;
}

#[tokio::test]
async fn a_socket_directory_of_the_earlier_layout_is_taken_back() {
    let Some(d) = per_app_daemon().await else {
        return;
    };
    d.install("legacy", &["query:post"], None).await;
    let app = d.shared.registry.find("legacy").unwrap();
    let socket_dir = d.shared.socket_dir(&app.id);
    let victim = d.dir.path().join("victim");
    std::fs::write(&victim, b"root's\n").unwrap();
    // As an earlier version left it: the app owns its directory and credentials, and
    // has planted a symlink where the daemon binds and writes.
    std::os::unix::fs::chown(&socket_dir, Some(app.uid), Some(app.gid)).unwrap();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let creds_path = socket_dir.join("credentials.json");
    std::os::unix::fs::chown(&creds_path, Some(app.uid), Some(app.gid)).unwrap();
    assert!(run_as(
        app.uid,
        app.gid,
        &format!(
            "ln -s {} {}/.credentials.json.tmp1",
            victim.display(),
            socket_dir.display()
        )
    ));
    let before = Credentials::load(&creds_path).unwrap();
    let dir = d.stop().await;
    let config = per_app_config(&dir);
    let d = start_with(dir, config).await;
    let meta = std::fs::symlink_metadata(&socket_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o750));
    assert!(
        std::fs::symlink_metadata(socket_dir.join(".credentials.json.tmp1")).is_err(),
        "the planted symlink is gone"
    );
    let kept = Credentials::load(&creds_path).unwrap();
    assert_eq!(kept.token, before.token, "the app keeps its credentials");
    assert_eq!(std::fs::metadata(&creds_path).unwrap().uid(), 0);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's\n");
    d.stop().await;
}

/// Whether a signed `ping` from this (host) process, which has the app's uid and
/// credentials, is answered at all.
async fn served(socket: &Path, creds: &Credentials) -> bool {
    let conn = Conn::connect(socket, creds.clone()).await;
    let body = conn.signed(&fold_ipc::Operation::Ping).encode();
    drop(conn);
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let frame = encode_frame(&body, DEFAULT_MAX_FRAME).unwrap();
    if stream.write_all(&frame).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(8), stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

fn peer_rejections(lines: &[serde_json::Value], app_id: &str) -> usize {
    lines
        .iter()
        .filter(|l| l["event"] == "peer_rejected" && l["app_id"] == app_id)
        .count()
}

#[tokio::test]
async fn a_host_process_is_refused_for_a_container_app_before_launch_and_after_a_restart() {
    let d = start_daemon("").await;
    // The test process has the app's uid (uid_mode daemon) and its credentials.
    let creds = d.install_placed("boxed", &["*:*"], None, false).await;
    let socket = d.socket(&creds.app_id);
    assert!(
        !served(&socket, &creds).await,
        "installed, not launched: nobody may connect"
    );
    // A host-placed app is the control: the same process is served.
    let host = d.install("onhost", &["*:*"], None).await;
    assert!(served(&d.socket(&host.app_id), &host).await);
    let audit = d.audit_lines().await;
    assert!(peer_rejections(&audit, &creds.app_id) >= 1, "audited");
    assert!(
        !audit
            .iter()
            .any(|l| l["kind"] == "request" && l["app_id"] == creds.app_id.as_str()),
        "no request of the refused peer reached auth"
    );

    // After a graceful restart the rule comes from the record, not from memory.
    let config = d.config.clone();
    let dir = d.stop().await;
    let d = start_with(dir, config).await;
    assert!(!served(&socket, &creds).await, "refused after a restart");
    assert!(served(&d.socket(&host.app_id), &host).await);
    d.stop().await;
}

#[tokio::test]
async fn launching_on_the_host_places_the_app_there_and_the_record_says_so() {
    let Some(d) = per_app_daemon().await else {
        return;
    };
    d.install_placed("mover", &["*:*"], None, false).await;
    let show = || {
        d.admin(ShowRequest {
            app: "mover".into(),
        })
    };
    assert_eq!(show().await.unwrap().app.placement, Placement::Container);
    let launched = d
        .admin(RunRequest {
            app: "mover".into(),
            direct: true,
            output_cap: None,
            run_id: None,
            args: vec![],
            image: None,
            interpreter: None,
            timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
    assert!(!launched.sandboxed);
    assert_eq!(show().await.unwrap().app.placement, Placement::Host);
    let audit = d.audit_lines().await;
    assert!(audit
        .iter()
        .any(|l| l["event"] == "placement" && l["detail"] == "host"));
    d.stop().await;
}
