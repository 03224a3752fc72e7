//! Apps installed, rotated and removed while the daemon runs; restarts; file modes.

use crate::support::{code, config_in, start_daemon, Conn};
use fold_client::admin::protocol::{RemoveRequest, RotateRequest, ShowRequest};
use fold_ipc::{ErrorCode, Operation};
use std::os::unix::fs::MetadataExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o777
}

#[tokio::test]
async fn installed_while_running_is_served_at_once_and_files_are_private() {
    let d = start_daemon("").await;
    let creds = d.install("fresh", &[], None).await;
    let c = d.connect(&creds).await;
    assert!(c.call(&Operation::Ping).await.success);

    let sock = d.socket(&creds.app_id);
    assert_eq!(mode(&sock), 0o600, "socket");
    assert_eq!(mode(sock.parent().unwrap()), 0o700, "socket dir");
    assert_eq!(
        mode(&sock.parent().unwrap().join("credentials.json")),
        0o600,
        "credentials"
    );
    for entry in std::fs::read_dir(d.config.registry_dir()).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600, "registry file");
    }
    assert_eq!(mode(&d.config.registry_dir()), 0o700);
    assert_eq!(mode(&d.config.audit_path()), 0o600, "audit");
    assert_eq!(mode(&d.config.admin_socket), 0o600, "admin socket");
    assert_eq!(mode(&d.config.state_dir), 0o700, "state dir");
    d.stop().await;
}

#[tokio::test]
async fn rotation_and_removal_apply_to_open_connections() {
    let d = start_daemon("").await;
    let creds = d.install("rotor", &[], None).await;
    let c = d.connect(&creds).await;
    assert!(c.call(&Operation::Ping).await.success);

    d.admin(RotateRequest {
        app: "rotor".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        code(&c.call(&Operation::Ping).await),
        ErrorCode::Unauthenticated,
        "old token refused on the open connection"
    );
    let fresh =
        fold_ipc::Credentials::load(&d.socket(&creds.app_id).with_file_name("credentials.json"))
            .unwrap();
    let c2 = Conn::connect(&d.socket(&creds.app_id), fresh).await;
    assert!(
        c2.call(&Operation::Ping).await.success,
        "new credentials work"
    );

    d.admin(RemoveRequest {
        app: "rotor".into(),
    })
    .await
    .unwrap();
    let r = c2
        .mux
        .call(&c2.signed(&Operation::Ping), crate::support::TIMEOUT)
        .await;
    match r {
        Ok(r) => assert_eq!(
            code(&r),
            ErrorCode::Unauthenticated,
            "removed app refused on its open connection"
        ),
        Err(e) => panic!("expected a refusal, got {e}"),
    }
    assert!(!d.socket(&creds.app_id).exists(), "socket removed");
    assert!(d
        .admin(ShowRequest {
            app: "rotor".into()
        })
        .await
        .unwrap_err()
        .contains("no app named"));
    d.stop().await;
}

#[tokio::test]
async fn registrations_survive_a_restart_and_a_live_socket_is_never_taken_over() {
    let d = start_daemon("").await;
    let creds = d.install("keeper", &["query:post"], None).await;
    let config = d.config.clone();

    // A second daemon on the same state refuses to start: the admin socket is live.
    let second = fold_client::daemon::start(config.clone()).await;
    assert!(
        second.is_err(),
        "a live daemon's sockets are never taken over"
    );
    let c = d.connect(&creds).await;
    assert!(
        c.call(&Operation::Ping).await.success,
        "first daemon unaffected"
    );
    drop(c);

    let dir = d.stop().await;
    assert!(!config.admin_socket.exists(), "sockets removed on shutdown");
    let again = fold_client::daemon::start(config_in(dir.path(), ""))
        .await
        .unwrap();
    let c = Conn::connect(&again.socket_path(&creds.app_id), creds.clone()).await;
    assert!(
        c.call(&Operation::Ping).await.success,
        "same credentials after restart"
    );
    let shown = again.registry.find("keeper").unwrap();
    assert_eq!(shown.grants[0].to_string(), "query:post");
    fold_client::daemon::stop(&again).await;
}

#[tokio::test]
async fn corrupt_registry_entry_is_named_and_others_still_served() {
    let d = start_daemon("").await;
    let good = d.install("good", &[], None).await;
    let bad = d.install("bad", &[], None).await;
    let dir = d.stop().await;
    let config = config_in(dir.path(), "");
    std::fs::write(
        config.registry_dir().join(format!("{}.toml", bad.app_id)),
        "not = [valid",
    )
    .unwrap();
    let again = fold_client::daemon::start(config.clone()).await.unwrap();
    let c = Conn::connect(&again.socket_path(&good.app_id), good).await;
    assert!(c.call(&Operation::Ping).await.success);
    let audit = std::fs::read_to_string(config.audit_path()).unwrap();
    assert!(
        audit.contains("registry_corrupt") && audit.contains(&bad.app_id),
        "the corrupt file is named"
    );
    fold_client::daemon::stop(&again).await;
}
