//! The peer check: a process with another uid is refused before anything is read, even when
//! the file modes would let it connect.

use crate::support::start_daemon;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[tokio::test]
async fn a_peer_with_another_uid_is_closed_unread() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: running a client as another uid needs root");
        return;
    }
    let d = start_daemon("").await;
    let creds = d.install("guarded", &["*:*"], None).await;
    let sock = d.socket(&creds.app_id);
    // Open the modes up so only the peer check stands in the way.
    for dir in [
        sock.parent().unwrap(),
        d.config.socket_root.as_path(),
        d.config.state_dir.as_path(),
        d.dir.path(),
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // A valid, signed request, sent by a process running as nobody.
    let conn = crate::support::Conn::connect(&sock, creds.clone()).await;
    let body = conn.signed(&fold_ipc::Operation::Ping).encode();
    drop(conn);
    let script = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
body = sys.stdin.buffer.read()
try:
    # The daemon may close before the whole request is written: that is the point.
    s.sendall(struct.pack(">I", len(body)) + body)
    data = s.recv(65536)
except (BrokenPipeError, ConnectionResetError):
    data = b""
print("received", len(data))
"#;
    let sock_path = sock.clone();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&sock_path)
            .uid(65534)
            .gid(65534)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "received 0", "closed without an answer");
    let audit = d.audit_lines().await;
    assert!(
        audit
            .iter()
            .any(|l| l["event"] == "peer_rejected" && l["app_id"] == creds.app_id.as_str()),
        "peer rejection audited"
    );
    assert!(
        !audit.iter().any(|l| l["kind"] == "request"),
        "nothing was read, so no request was decided"
    );
    d.stop().await;
}
