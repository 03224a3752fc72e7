//! Protocol v2 sessions (`fold_ipc::session`) against a real daemon, over the raw
//! protocol: the challenge, the hello, and what may follow it. Each attack is one test:
//! a bad signature, a stale timestamp, another app's token, a hello replayed from another
//! connection, a request before the hello, a second hello; a rotation ends the session at
//! once; a revoked grant is refused on the open session; a signed (v1) client works beside
//! a session on the same app and on a signed app; the SDK opens sessions by itself and the
//! audit says which requests came over one.

use crate::support::{code, start_daemon, Conn, TestDaemon, TIMEOUT};
use fold_client::admin::protocol::{AuthRequest, RotateRequest, UngrantRequest};
use fold_ipc::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use fold_ipc::session::{self, Challenge, HelloFields, HelloParams, CHALLENGE_ID, HELLO};
use fold_ipc::{Credentials, ErrorCode, Operation, Request, Response};
use serde_json::json;
use tokio::net::UnixStream;

/// A raw connection to a session app's socket, its challenge read.
struct Raw {
    stream: UnixStream,
    challenge: String,
}

impl Raw {
    async fn connect(d: &TestDaemon, creds: &Credentials) -> Raw {
        let mut stream = UnixStream::connect(d.socket(&creds.app_id)).await.unwrap();
        let first = recv(&mut stream).await;
        assert_eq!(first.request_id.as_deref(), Some(CHALLENGE_ID));
        let challenge: Challenge =
            serde_json::from_str(first.result.as_ref().unwrap().get()).unwrap();
        assert_eq!(challenge.v, 2);
        assert_eq!(challenge.nonce.len(), 64);
        Raw {
            stream,
            challenge: challenge.nonce,
        }
    }

    async fn send(&mut self, request: &Request) -> Response {
        write_frame(&mut self.stream, &request.encode(), DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        recv(&mut self.stream).await
    }

    /// A request on the session: v2, no token, nonce or signature.
    async fn call(&mut self, id: &str, op: &Operation) -> Response {
        let mut request = Request::unsigned(id.to_string(), None, op);
        request.v = Some(2);
        self.send(&request).await
    }
}

async fn recv(stream: &mut UnixStream) -> Response {
    let body = tokio::time::timeout(TIMEOUT, read_frame(stream, DEFAULT_MAX_FRAME))
        .await
        .expect("an answer in time")
        .unwrap()
        .expect("the daemon did not close");
    Response::decode(&body).unwrap()
}

/// A hello for `challenge` from `creds`, signed as `tamper` leaves it.
fn hello(
    creds: &Credentials,
    challenge: &str,
    tamper: impl FnOnce(&mut HelloFields<'_>),
) -> Request {
    let client_nonce = format!("{:032x}", rand_u128());
    let mut fields = HelloFields {
        app_id: &creds.app_id,
        server_nonce: challenge,
        client_nonce: &client_nonce,
        timestamp: crate::support::now_ms(),
    };
    tamper(&mut fields);
    let signature = session::sign(&creds.signing_key, &fields);
    let params = HelloParams {
        server_nonce: challenge.to_string(),
    };
    Request {
        v: Some(2),
        request_id: HELLO.into(),
        app_id: Some(creds.app_id.clone()),
        token: Some(creds.token.clone()),
        operation: HELLO.into(),
        params: Some(serde_json::value::to_raw_value(&params).unwrap()),
        timestamp: Some(fields.timestamp),
        nonce: Some(client_nonce.clone()),
        signature: Some(signature),
        limits: None,
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    u128::from(h.finish()) << 64 | u128::from(h.finish().rotate_left(7))
}

async fn session_app(d: &TestDaemon, name: &str) -> Credentials {
    let creds = d.install(name, &["*:post"], Some("session")).await;
    assert!(
        creds.session,
        "the credentials file says the app may open sessions"
    );
    creds
}

async fn reason_of(d: &TestDaemon, app_id: &str) -> Vec<String> {
    d.audit_lines()
        .await
        .into_iter()
        .filter(|l| l["app_id"] == app_id && l["verdict"] == "deny")
        .filter_map(|l| l["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_hello_opens_a_session_whose_requests_need_no_signature_and_are_audited_so() {
    let d = start_daemon("").await;
    let creds = session_app(&d, "sess").await;
    let mut raw = Raw::connect(&d, &creds).await;
    let opened = raw
        .send(&hello(&creds, &raw.challenge.clone(), |_| {}))
        .await;
    assert!(opened.success, "{:?}", opened.error);
    assert_eq!(opened.request_id.as_deref(), Some(HELLO));
    let pong = raw.call("p1", &Operation::Ping).await;
    assert!(pong.success, "{:?}", pong.error);
    let lines = d.audit_lines().await;
    let of_app: Vec<_> = lines
        .iter()
        .filter(|l| l["app_id"] == creds.app_id.as_str())
        .collect();
    assert!(
        of_app.iter().any(|l| l["event"] == "session_open"),
        "{of_app:?}"
    );
    let ping = of_app.iter().find(|l| l["request_id"] == "p1").unwrap();
    assert_eq!(ping["auth"], "session");
    let hello_line = of_app.iter().find(|l| l["operation"] == "hello").unwrap();
    assert_eq!(hello_line["auth"], "signed");
    d.stop().await;
}

#[tokio::test]
async fn forged_stale_foreign_and_replayed_hellos_are_refused() {
    let d = start_daemon("").await;
    let creds = session_app(&d, "target").await;
    let other = session_app(&d, "other").await;
    // A bad signature: signed with another app's key.
    let mut raw = Raw::connect(&d, &creds).await;
    let mut wrong_key = creds.clone();
    wrong_key.signing_key = other.signing_key.clone();
    let forged = hello(&wrong_key, &raw.challenge.clone(), |_| {});
    assert_eq!(code(&raw.send(&forged).await), ErrorCode::BadSignature);
    // A stale timestamp, correctly signed.
    let stale = hello(&creds, &raw.challenge.clone(), |f| {
        f.timestamp -= 10 * 60 * 1000
    });
    assert_eq!(code(&raw.send(&stale).await), ErrorCode::Replay);
    // Another app's token.
    let mut wrong_token = hello(&creds, &raw.challenge.clone(), |_| {});
    wrong_token.token = Some(other.token.clone());
    assert_eq!(
        code(&raw.send(&wrong_token).await),
        ErrorCode::Unauthenticated
    );
    // None of these opened a session.
    assert_eq!(
        code(&raw.call("after", &Operation::Ping).await),
        ErrorCode::Unauthenticated
    );
    // A hello that was good on another connection, replayed here.
    let mut first = Raw::connect(&d, &creds).await;
    let good = hello(&creds, &first.challenge.clone(), |_| {});
    assert!(first.send(&good).await.success);
    let mut second = Raw::connect(&d, &creds).await;
    assert_eq!(code(&second.send(&good).await), ErrorCode::Replay);
    assert_eq!(
        code(&second.call("p", &Operation::Ping).await),
        ErrorCode::Unauthenticated
    );
    let reasons = reason_of(&d, &creds.app_id).await;
    for reason in [
        "bad_signature",
        "stale_timestamp",
        "bad_token",
        "no_session",
        "replayed_hello",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} not in {reasons:?}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn a_request_before_the_hello_and_a_second_hello_are_refused() {
    let d = start_daemon("").await;
    let creds = session_app(&d, "early").await;
    let mut raw = Raw::connect(&d, &creds).await;
    let early = raw.call("early", &Operation::Ping).await;
    assert_eq!(code(&early), ErrorCode::Unauthenticated);
    assert!(early.error.unwrap().message.contains("hello"));
    let challenge = raw.challenge.clone();
    assert!(raw.send(&hello(&creds, &challenge, |_| {})).await.success);
    let again = raw.send(&hello(&creds, &challenge, |_| {})).await;
    assert_eq!(code(&again), ErrorCode::Unauthenticated);
    // The first session stands.
    assert!(raw.call("p", &Operation::Ping).await.success);
    // An app that may not open sessions gets no challenge, and its hello is refused.
    let signed = d.install("plain", &["*:post"], None).await;
    let conn = Conn::connect(&d.socket(&signed.app_id), signed.clone()).await;
    let refused = conn.send(&hello(&signed, "00", |_| {})).await;
    assert!(!refused.success);
    assert!(
        conn.call(&Operation::Ping).await.success,
        "its signed requests work"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_rotation_ends_open_sessions_at_once_and_a_revoked_grant_is_refused_on_them() {
    let d = start_daemon("").await;
    let creds = session_app(&d, "rotated").await;
    let mut raw = Raw::connect(&d, &creds).await;
    assert!(
        raw.send(&hello(&creds, &raw.challenge.clone(), |_| {}))
            .await
            .success
    );
    let schema = Operation::CreateSchema(
        serde_json::from_value(json!({"name": "post", "fields": {"title": {"type": "string"}}}))
            .unwrap(),
    );
    assert!(raw.call("c", &schema).await.success);
    let list = Operation::parse(
        "query",
        Some(&serde_json::value::RawValue::from_string(r#"{"schema":"post"}"#.into()).unwrap()),
    )
    .unwrap();
    assert!(raw.call("q1", &list).await.success);
    d.admin(UngrantRequest {
        app: "rotated".into(),
        grants: vec!["*:post".parse().unwrap()],
    })
    .await
    .unwrap();
    assert_eq!(code(&raw.call("q2", &list).await), ErrorCode::Forbidden);
    d.admin(fold_client::admin::protocol::GrantRequest {
        app: "rotated".into(),
        grants: vec!["query:post".parse().unwrap()],
    })
    .await
    .unwrap();
    assert!(raw.call("q3", &list).await.success);
    d.admin(RotateRequest {
        app: "rotated".into(),
    })
    .await
    .unwrap();
    let ended = raw.call("q4", &list).await;
    assert_eq!(code(&ended), ErrorCode::Unauthenticated);
    assert!(ended.error.unwrap().message.contains("session ended"));
    // So does taking the mode away.
    let fresh =
        Credentials::load(&d.shared.socket_dir(&creds.app_id).join("credentials.json")).unwrap();
    let mut raw = Raw::connect(&d, &fresh).await;
    assert!(
        raw.send(&hello(&fresh, &raw.challenge.clone(), |_| {}))
            .await
            .success
    );
    assert!(raw.call("q5", &list).await.success);
    d.admin(AuthRequest {
        app: "rotated".into(),
        mode: "signed".parse().unwrap(),
    })
    .await
    .unwrap();
    assert_eq!(
        code(&raw.call("q6", &list).await),
        ErrorCode::Unauthenticated
    );
    let after =
        Credentials::load(&d.shared.socket_dir(&creds.app_id).join("credentials.json")).unwrap();
    assert!(!after.session, "the credentials file follows the mode");
    d.stop().await;
}

#[tokio::test]
async fn the_sdk_opens_a_session_by_itself_and_a_v1_client_works_beside_it() {
    let d = start_daemon("").await;
    let creds = session_app(&d, "sdk").await;
    let file = d.shared.socket_dir(&creds.app_id).join("credentials.json");
    let client = fold_ipc::ClientBuilder::from_credentials_file(d.socket(&creds.app_id), &file)
        .unwrap()
        .connect()
        .await
        .unwrap();
    client.ping().await.unwrap();
    client.ping().await.unwrap();
    // A signed (v1) client of the same app, and of a signed app, at the same time.
    let v1 = Conn::connect(&d.socket(&creds.app_id), creds.clone()).await;
    assert!(v1.call(&Operation::Ping).await.success);
    let signed = d.install("signed", &["*:post"], None).await;
    let plain = fold_ipc::Client::connect(d.socket(&signed.app_id), signed.clone())
        .await
        .unwrap();
    plain.ping().await.unwrap();
    // After a rotation the SDK opens a new session with the new credentials by itself.
    d.admin(RotateRequest { app: "sdk".into() }).await.unwrap();
    client.ping().await.unwrap();
    let lines = d.audit_lines().await;
    let auths = |app: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["app_id"] == app && l["operation"] == "ping" && l["verdict"] == "allow")
            .map(|l| l["auth"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        auths(&creds.app_id),
        ["session", "session", "signed", "session"]
    );
    assert_eq!(auths(&signed.app_id), ["signed"]);
    let opened = lines
        .iter()
        .filter(|l| l["app_id"] == creds.app_id.as_str() && l["event"] == "session_open")
        .count();
    assert_eq!(opened, 2, "one hello per connection");
    // The blocking client too.
    let creds =
        Credentials::load(&d.shared.socket_dir(&creds.app_id).join("credentials.json")).unwrap();
    let socket = d.socket(&creds.app_id);
    tokio::task::spawn_blocking(move || {
        let blocking = fold_ipc::client::blocking::Client::connect(socket, creds).unwrap();
        blocking.ping().unwrap();
    })
    .await
    .unwrap();
    d.stop().await;
}
