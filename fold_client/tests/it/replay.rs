//! Replay across a daemon restart, written as the attack: a frame the daemon accepted is
//! captured byte for byte and sent again after the daemon was stopped (SIGTERM) or crashed
//! (SIGKILL) and restarted on the same state directory. It must be refused, and the record
//! it wrote must exist once.
//!
//! Two frames are replayed: one stamped with the client's clock (the usual case), and one
//! stamped 30 s ahead of it (inside the ±60 s window). A rule "refuse what was signed before
//! this daemon started" alone would let the second one through again; only the nonce
//! journal refuses it, so the audit must name `replayed_nonce` for it.

use crate::faults::ChildDaemon;
use crate::support::{now_ms, Conn};
use fold_ipc::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use fold_ipc::operation::Mutation;
use fold_ipc::query::Query;
use fold_ipc::signing::sign_request;
use fold_ipc::{ErrorCode, Operation, Response};
use serde_json::json;
use std::path::Path;
use tokio::net::UnixStream;

#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill,
}

fn create(n: i64) -> Operation {
    Operation::Mutation(Mutation::Create {
        schema: "entry".into(),
        data: json!({ "n": n }).as_object().unwrap().clone(),
    })
}

/// Sends `frame` as it is on a fresh connection and reads the answer.
async fn send_raw(socket: &Path, frame: &[u8]) -> Response {
    let mut s = connect(socket).await;
    write_frame(&mut s, frame, DEFAULT_MAX_FRAME).await.unwrap();
    let body = read_frame(&mut s, DEFAULT_MAX_FRAME)
        .await
        .unwrap()
        .expect("a response, not a close");
    Response::decode(&body).unwrap()
}

/// Connects, waiting for a restarted daemon to bind the app's socket (the admin socket comes
/// up first).
async fn connect(socket: &Path) -> UnixStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot connect to {}: {e}", socket.display()),
        }
    }
}

fn error_code(r: &Response) -> Option<ErrorCode> {
    r.error.as_ref().map(|e| e.code)
}

/// The `n` of every `entry` record.
async fn entries(c: &Conn) -> Vec<i64> {
    let page = c
        .ok(&Operation::Query(
            Query::new("entry").fields(["n"]).limit(100),
        ))
        .await;
    let mut ns: Vec<i64> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    ns
}

/// Audit records (`request` lines) for `request_id`, oldest first.
fn audit_for(d: &ChildDaemon, request_id: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.config.audit_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["request_id"] == request_id)
        .collect()
}

async fn replay_across_restart(stop: Stop) {
    let dir = tempfile::Builder::new()
        .prefix("rp")
        .tempdir_in("/tmp")
        .unwrap();
    let mut d = ChildDaemon::start(dir.path(), "");
    let creds = d.install("replayer", &["*:*"], None);
    let socket = d.socket(&creds.app_id);
    let c = Conn::connect(&socket, creds.clone()).await;
    let def =
        serde_json::from_value(json!({"name": "entry", "fields": {"n": {"type": "int"}}})).unwrap();
    c.ok(&Operation::CreateSchema(def)).await;

    // The captured frames: one stamped now, one stamped ahead of the daemon's clock.
    let now_request = c.signed(&create(1));
    let mut ahead_request = c.signed(&create(2));
    ahead_request.timestamp = Some(now_ms() + 30_000);
    sign_request(&mut ahead_request, &creds.signing_key).unwrap();
    let frames = [
        (now_request.request_id.clone(), now_request.encode()),
        (ahead_request.request_id.clone(), ahead_request.encode()),
    ];
    for (id, frame) in &frames {
        let first = send_raw(&socket, frame).await;
        assert!(first.success, "{id}: first send refused: {:?}", first.error);
        let again = send_raw(&socket, frame).await;
        assert_eq!(
            error_code(&again),
            Some(ErrorCode::Replay),
            "{id}: identical frame"
        );
    }
    assert_eq!(entries(&c).await, [1, 2]);
    drop(c);
    // The audit trails the answers by up to its gather delay (a SIGKILL inside it loses
    // those lines, not the nonces, which are journaled before the answer): let it catch
    // up, so the audit checked below is complete.
    let started = std::time::Instant::now();
    while audit_for(&d, &ahead_request.request_id).len() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the audit never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    match stop {
        Stop::Term => d.terminate(),
        Stop::Kill => d.kill9(),
    }
    d.spawn();

    for (id, frame) in &frames {
        let replayed = send_raw(&socket, frame).await;
        assert_eq!(
            error_code(&replayed),
            Some(ErrorCode::Replay),
            "{id}: the identical frame after a {stop:?} restart: {replayed:?}"
        );
    }
    let c = Conn::connect(&socket, creds.clone()).await;
    assert_eq!(
        entries(&c).await,
        [1, 2],
        "each record written once, after a {stop:?} restart"
    );
    // The daemon serves the app normally after the restart.
    assert!(c.call(&Operation::Ping).await.success);

    // The frame stamped ahead of the clock was refused by its nonce, remembered across the
    // restart (the journal), not by its timestamp.
    d.terminate();
    let reasons: Vec<_> = audit_for(&d, &ahead_request.request_id)
        .iter()
        .map(|v| v["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        reasons,
        ["", "replayed_nonce", "replayed_nonce"],
        "audit of the frame stamped ahead"
    );
    // The frame stamped with the client's clock: after a graceful stop the journal ends
    // clean and refuses it by its nonce too; after a crash, its timestamp is from before
    // the new daemon's start, refused before the nonce is looked at.
    let reasons: Vec<_> = audit_for(&d, &now_request.request_id)
        .iter()
        .map(|v| v["reason"].as_str().unwrap_or("").to_string())
        .collect();
    let after_restart = match stop {
        Stop::Term => "replayed_nonce",
        Stop::Kill => "signed_before_start",
    };
    assert_eq!(reasons, ["", "replayed_nonce", after_restart]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_frame_is_refused_after_a_sigterm_restart() {
    replay_across_restart(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_frame_is_refused_after_a_sigkill_restart() {
    replay_across_restart(Stop::Kill).await;
}
