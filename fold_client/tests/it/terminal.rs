//! App-controlled text never reaches the operator's terminal raw. Each test is an attack of
//! the first review: a forged audit line, a hostile ELF interpreter in an install warning,
//! escape codes in an app's output (`app run`, `app logs`), and colour codes in the daemon's
//! log file. The real `fold_client` binary prints; its bytes are checked for ESC.

use crate::faults::ChildDaemon;
use crate::support::{cli, install_script, per_app_daemon, start_daemon, Conn};
use fold_ipc::signing::sign_request;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

const ESC: u8 = 0x1b;

/// The attacker's sequence: up one line, erase it, carriage return, then the forgery.
const FORGED: &str = "\u{1b}[1A\u{1b}[2K\rallow";

fn has_esc(out: &Output) -> bool {
    out.stdout.contains(&ESC) || out.stderr.contains(&ESC)
}

fn shown(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn audit_tail_shows_a_forged_operation_escaped() {
    let d = start_daemon("").await;
    let creds = d.install("forger", &["query:post"], None).await;
    let conn = Conn::connect(&d.socket(&creds.app_id), creds.clone()).await;
    let mut request = conn.signed(&fold_ipc::Operation::Ping);
    request.operation = format!("query{FORGED}");
    sign_request(&mut request, &creds.signing_key).unwrap();
    let answer = conn.send(&request).await;
    assert!(!answer.success);
    d.shared.audit.flush().await;
    let audit = std::fs::read_to_string(d.config.audit_path()).unwrap();
    assert!(
        audit.contains("[2K"),
        "the forgery is in the audit: {audit}"
    );

    let state = d.config.state_dir.clone();
    let out = cli(&state, &["audit", "tail"]).await;
    assert!(out.status.success(), "{}", shown(&out));
    assert!(!has_esc(&out), "raw ESC on the terminal: {:?}", shown(&out));
    assert!(
        shown(&out).contains("\\x1b[1A\\x1b[2K\\rallow"),
        "{}",
        shown(&out)
    );
    let out = cli(&state, &["--json", "audit", "tail"]).await;
    assert!(out.status.success() && !has_esc(&out), "{}", shown(&out));
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("--json stays JSON");
        assert!(record.is_object());
    }
    // An object with `--json` (pretty, several lines) stays JSON too.
    let out = cli(&state, &["--json", "app", "show", "forger"]).await;
    assert!(out.status.success() && !has_esc(&out), "{}", shown(&out));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(view["name"], "forger");
    d.stop().await;
}

/// `/bin/true` (glibc, dynamic) with its loader path rewritten to carry the forgery, same
/// length, so the ELF stays well formed and still names `ld-linux`.
fn hostile_interpreter_binary(dir: &Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read("/bin/true").unwrap();
    let loader = b"/lib64/ld-linux-x86-64.so.2\0";
    let hostile = b"/lib64/ld-linux\x1b[1A\x1b[2K\r.so\0";
    assert_eq!(loader.len(), hostile.len());
    let at = bytes
        .windows(loader.len())
        .position(|w| w == loader)
        .expect("/bin/true is a dynamic glibc binary");
    bytes[at..at + loader.len()].copy_from_slice(hostile);
    let path = dir.join("hostile_interp");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn install_warning_shows_a_hostile_elf_interpreter_escaped() {
    let d = start_daemon("").await;
    let binary = hostile_interpreter_binary(d.dir.path());
    let out = cli(
        &d.config.state_dir,
        &[
            "app",
            "install",
            "interp",
            "--binary",
            binary.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", shown(&out));
    let text = shown(&out);
    assert!(text.contains("WARNING"), "the glibc/musl warning: {text}");
    assert!(!has_esc(&out), "raw ESC on the terminal: {text:?}");
    assert!(text.contains("ld-linux\\x1b[1A\\x1b[2K\\r.so"), "{text}");
    d.stop().await;
}

#[tokio::test]
async fn app_run_and_app_logs_show_app_output_escaped_unless_raw() {
    let Some(d) = per_app_daemon().await else {
        return;
    };
    install_script(&d, "printer", "#!/bin/sh\nprintf 'real line\\n\\033[1A\\033[2K\\rforged line\\n'\nprintf 'err\\033]0;title\\007\\n' >&2\n").await;
    let state = d.config.state_dir.clone();
    let run = |raw: bool| {
        let mut args = vec!["app", "run", "printer", "--direct", "--timeout", "20s"];
        if raw {
            args.push("--raw");
        }
        args
    };
    let out = cli(&state, &run(false)).await;
    assert!(out.status.success(), "{}", shown(&out));
    assert!(!has_esc(&out), "raw ESC from app run: {:?}", shown(&out));
    assert!(
        shown(&out).contains("\\x1b[2K\\rforged line"),
        "{}",
        shown(&out)
    );
    assert!(
        shown(&out).contains("err\\x1b]0;title\\x07"),
        "{}",
        shown(&out)
    );
    // `--raw` is for piping: the bytes as the app wrote them (so the check above can fail).
    let raw = cli(&state, &run(true)).await;
    assert!(has_esc(&raw), "--raw keeps the bytes: {:?}", shown(&raw));

    let logs = cli(&state, &["app", "logs", "printer"]).await;
    assert!(logs.status.success(), "{}", shown(&logs));
    assert!(shown(&logs).contains("forged line"), "{}", shown(&logs));
    assert!(!has_esc(&logs), "raw ESC from app logs: {:?}", shown(&logs));
    let raw_logs = cli(&state, &["app", "logs", "printer", "--raw"]).await;
    assert!(has_esc(&raw_logs), "--raw keeps the bytes");
    d.stop().await;
}

#[tokio::test]
async fn the_daemon_log_carries_no_colour_codes_when_not_a_terminal() {
    let dir = tempfile::Builder::new()
        .prefix("ft")
        .tempdir_in("/tmp")
        .unwrap();
    let mut daemon = ChildDaemon::start_logging(dir.path(), "", "debug");
    daemon.install("plain", &[], None);
    daemon.terminate();
    let log = daemon.log_text().into_bytes();
    assert!(
        String::from_utf8_lossy(&log).contains("daemon started"),
        "the log has lines: {}",
        String::from_utf8_lossy(&log)
    );
    assert!(
        !log.contains(&ESC),
        "colour codes in a log file: {}",
        String::from_utf8_lossy(&log)
    );
}

/// Spawns the CLI with `args` and gathers its stdout until it holds `want` (or 20 s pass);
/// then ends it. Returns what it printed (stdout, then stderr).
async fn follow_until(
    state: &Path,
    args: &[&str],
    want: &[u8],
    meanwhile: impl std::future::Future<Output = ()>,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fold_client"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Let it print what is there and start following before anything new is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    meanwhile.await;
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        while !seen.windows(want.len()).any(|w| w == want) {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let mut err = Vec::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), stderr.read_to_end(&mut err)).await;
    }
    let _ = child.wait().await;
    seen.extend_from_slice(&err);
    seen
}

#[tokio::test]
async fn audit_tail_follow_shows_a_forged_operation_escaped() {
    let d = start_daemon("").await;
    let creds = d.install("forger", &["query:post"], None).await;
    let conn = Conn::connect(&d.socket(&creds.app_id), creds.clone()).await;
    let state = d.config.state_dir.clone();
    let forge = async {
        let mut request = conn.signed(&fold_ipc::Operation::Ping);
        request.operation = format!("query{FORGED}");
        sign_request(&mut request, &creds.signing_key).unwrap();
        assert!(!conn.send(&request).await.success);
        d.shared.audit.flush().await;
    };
    let out = follow_until(&state, &["audit", "tail", "-f"], b"\\rallow", forge).await;
    let text = String::from_utf8_lossy(&out);
    assert!(!out.contains(&ESC), "raw ESC from audit tail -f: {text:?}");
    assert!(
        text.contains("query\\x1b[1A\\x1b[2K\\rallow"),
        "the forged operation, shown: {text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn app_logs_follow_shows_an_apps_bytes_escaped_even_when_not_utf8() {
    let Some(d) = per_app_daemon().await else {
        return;
    };
    // ESC, a lone C1 CSI byte (0x9b, not UTF-8) and a byte that is never UTF-8 (0xff).
    install_script(
        &d,
        "bytes",
        "#!/bin/sh\nprintf 'start\\n\\033[2K\\233\\377forged\\n'\n",
    )
    .await;
    let state = d.config.state_dir.clone();
    let run = async {
        let out = cli(
            &state,
            &["app", "run", "bytes", "--direct", "--timeout", "20s"],
        )
        .await;
        assert!(out.status.success(), "{}", shown(&out));
        assert!(!has_esc(&out), "raw ESC from app run: {:?}", shown(&out));
        assert!(
            shown(&out).contains("\\x1b[2K\\x9b\\xffforged"),
            "{}",
            shown(&out)
        );
    };
    let out = follow_until(&state, &["app", "logs", "bytes", "-f"], b"forged", run).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        !out.contains(&ESC) && !out.contains(&0x9b),
        "raw from app logs -f: {text:?}"
    );
    assert!(text.contains("\\x1b[2K\\x9b\\xffforged"), "{text}");
    // Read back whole, and raw for piping: the app's bytes exactly.
    let whole = cli(&state, &["app", "logs", "bytes"]).await;
    assert!(
        shown(&whole).contains("\\x1b[2K\\x9b\\xffforged"),
        "{}",
        shown(&whole)
    );
    let raw = cli(&state, &["app", "logs", "bytes", "--raw"]).await;
    let written: &[u8] = b"\x1b[2K\x9b\xffforged";
    assert!(
        raw.stdout.windows(written.len()).any(|w| w == written),
        "--raw keeps the bytes: {:?}",
        shown(&raw)
    );
    d.stop().await;
}
