//! Authentication over a real socket: each failure is a typed response, an audit record,
//! and the connection stays usable.

use crate::support::{code, start_daemon, Conn};
use fold_ipc::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use fold_ipc::{ErrorCode, Operation, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[tokio::test]
async fn each_forgery_is_refused_and_the_connection_stays_usable() {
    let d = start_daemon("").await;
    let creds = d.install("alpha", &["query:*"], None).await;
    let c = d.connect(&creds).await;

    let mut wrong_token = c.signed(&Operation::Ping);
    wrong_token.token = Some("ab".repeat(32));
    assert_eq!(
        code(&c.send(&wrong_token).await),
        ErrorCode::Unauthenticated
    );

    let mut wrong_sig = c.signed(&Operation::Ping);
    wrong_sig.request_id.push('x'); // a signed field changed after signing
    assert_eq!(code(&c.send(&wrong_sig).await), ErrorCode::BadSignature);

    let mut garbage_sig = c.signed(&Operation::Ping);
    garbage_sig.signature = Some("00".repeat(64));
    assert_eq!(code(&c.send(&garbage_sig).await), ErrorCode::BadSignature);

    let accepted = c.signed(&Operation::Ping);
    assert!(c.send(&accepted).await.success);
    let replay = c.send(&accepted).await;
    assert_eq!(
        code(&replay),
        ErrorCode::Replay,
        "replay of an accepted request"
    );

    let mut stale = c.signed(&Operation::Ping);
    stale.timestamp = Some(stale.timestamp.unwrap() - 120_000);
    fold_ipc::signing::sign_request(&mut stale, &creds.signing_key).unwrap();
    assert_eq!(
        code(&c.send(&stale).await),
        ErrorCode::Replay,
        "stale timestamp"
    );

    let mut future_version = c.signed(&Operation::Ping);
    future_version.v = Some(7);
    assert_eq!(
        code(&c.send(&future_version).await),
        ErrorCode::UnsupportedVersion
    );

    // Still usable after all of that.
    assert!(c.call(&Operation::Ping).await.success);

    let reasons: Vec<String> = d
        .audit_lines()
        .await
        .iter()
        .filter(|l| l["verdict"] == "deny")
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "bad_token",
        "bad_signature",
        "replayed_nonce",
        "stale_timestamp",
        "unsupported_version",
    ] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "audit has {expected}: {reasons:?}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn credentials_of_app_a_fail_on_app_b_socket() {
    let d = start_daemon("").await;
    let a = d.install("app_a", &["*:*"], None).await;
    let b = d.install("app_b", &["*:*"], None).await;
    // A's perfectly valid signed request, sent on B's socket.
    let on_b = Conn::connect(&d.socket(&b.app_id), a.clone()).await;
    assert_eq!(
        code(&on_b.call(&Operation::Ping).await),
        ErrorCode::Unauthenticated
    );
    // B's id with A's token and key.
    let mut mixed = a.clone();
    mixed.app_id = b.app_id.clone();
    let on_b = Conn::connect(&d.socket(&b.app_id), mixed).await;
    assert_eq!(
        code(&on_b.call(&Operation::Ping).await),
        ErrorCode::Unauthenticated
    );
    d.stop().await;
}

#[tokio::test]
async fn repeated_failures_are_rate_limited() {
    let d = start_daemon("failure_limit = 5\nfailure_window_secs = 60").await;
    let creds = d.install("noisy", &[], None).await;
    let c = d.connect(&creds).await;
    for _ in 0..5 {
        let mut r = c.signed(&Operation::Ping);
        r.token = Some("00".repeat(32));
        assert_eq!(code(&c.send(&r).await), ErrorCode::Unauthenticated);
    }
    assert_eq!(
        code(&c.call(&Operation::Ping).await),
        ErrorCode::RateLimited,
        "even a good request, until the window passes"
    );
    d.stop().await;
}

async fn raw(d: &crate::support::TestDaemon, app_id: &str) -> UnixStream {
    UnixStream::connect(d.socket(app_id)).await.unwrap()
}

async fn reply(s: &mut UnixStream) -> Response {
    let body = read_frame(s, DEFAULT_MAX_FRAME)
        .await
        .unwrap()
        .expect("a response, not a close");
    Response::decode(&body).unwrap()
}

#[tokio::test]
async fn malformed_and_oversized_frames() {
    let d = start_daemon("max_frame_bytes = 65536").await;
    let creds = d.install("alpha", &[], None).await;
    let mut s = raw(&d, &creds.app_id).await;
    write_frame(&mut s, b"{this is not json", DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    assert_eq!(code(&reply(&mut s).await), ErrorCode::BadRequest);
    write_frame(&mut s, b"\xff\xfe", DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    assert_eq!(code(&reply(&mut s).await), ErrorCode::BadRequest);
    // Still usable: a valid signed ping on the same connection.
    let conn = crate::support::Conn {
        mux: fold_ipc::mux::MuxConnection::new(s, DEFAULT_MAX_FRAME),
        creds: creds.clone(),
    };
    assert!(conn.call(&Operation::Ping).await.success);

    let mut s = raw(&d, &creds.app_id).await;
    s.write_all(&(65537u32).to_be_bytes()).await.unwrap();
    let r = reply(&mut s).await;
    assert_eq!(code(&r), ErrorCode::TooLarge);
    assert!(
        read_frame(&mut s, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .is_none(),
        "closed after too_large"
    );
    d.stop().await;
}

#[tokio::test]
async fn reference_shaped_unsigned_requests() {
    let d = start_daemon("").await;
    let signed_app = d.install("modern", &["*:*"], None).await;
    let token_app = d.install("legacy", &["*:*"], Some("token")).await;
    // Exactly what a reference-implementation client sends: no v, no signature.
    let body = |creds: &fold_ipc::Credentials| {
        format!(
            r#"{{"request_id":"7f9c0e1e-2f7b-4c55-9d3e-3c1f3a2b1c0d","app_id":"{}","token":"{}","operation":"list_schemas","params":null,"signature":null}}"#,
            creds.app_id, creds.token
        )
    };
    let mut s = raw(&d, &signed_app.app_id).await;
    write_frame(&mut s, body(&signed_app).as_bytes(), DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    let r = reply(&mut s).await;
    assert_eq!(code(&r), ErrorCode::BadSignature);
    assert!(r.error.unwrap().message.contains("signatures are required"));

    let mut s = raw(&d, &token_app.app_id).await;
    write_frame(&mut s, body(&token_app).as_bytes(), DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    let r = reply(&mut s).await;
    assert!(r.success, "{:?}", r.error);
    let audit = d.audit_lines().await;
    assert!(
        audit
            .iter()
            .any(|l| l["app"] == "legacy" && l["verdict"] == "allow" && l["auth"] == "unsigned"),
        "unsigned requests are marked in the audit"
    );
    d.stop().await;
}
