//! The client against a fake daemon on a real Unix socket.

mod daemon;

use super::{blocking, Client, ClientBuilder, Error};
use crate::error::ErrorCode;
use crate::operation::Operation;
use crate::query::{eq, Query};
use daemon::{credentials, FakeDaemon, APP_ID};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

async fn client(daemon: &FakeDaemon) -> Client {
    Client::connect(&daemon.path, credentials(1)).await.unwrap()
}

#[test]
fn client_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Client>();
    check::<blocking::Client>();
    check::<Error>();
}

#[tokio::test]
async fn every_operation_is_signed_and_answered() {
    let daemon = FakeDaemon::start(false).await;
    let client = client(&daemon).await;

    assert_eq!(client.ping().await.unwrap().version, 1);
    assert_eq!(client.list_schemas().await.unwrap(), vec!["post"]);
    let def = client.get_schema("post").await.unwrap();
    assert_eq!(def.name, "post");
    assert_eq!(client.create_schema(def.clone()).await.unwrap(), def);
    assert_eq!(client.delete_schema("post", true).await.unwrap(), 3);

    let page = client
        .query(Query::new("post").filter(eq("author", "alice")).limit(20))
        .await
        .unwrap();
    assert_eq!(page.next_cursor.as_deref(), Some("c2"));
    assert_eq!(page.rows[0]["limit"], json!(20));
    assert_eq!(
        page.rows[0]["filter"],
        json!({"op": "eq", "field": "author", "value": "alice"})
    );

    #[derive(serde::Deserialize)]
    struct Row {
        id: String,
        schema: String,
    }
    let rows: Vec<Row> = client.query_as(Query::new("post")).await.unwrap();
    assert_eq!(
        (rows[0].id.as_str(), rows[0].schema.as_str()),
        ("r1", "post")
    );

    let created = client.create("post", json!({"n": 7})).await.unwrap();
    assert_eq!((created.id.as_str(), created.version), ("id-7", 1));
    assert_eq!(
        client
            .update("post", "x1", json!({"n": 8}))
            .await
            .unwrap()
            .version,
        2
    );
    assert_eq!(client.delete("post", "x1").await.unwrap().version, 3);
    let history = client.history("post", "x1").await.unwrap();
    assert_eq!(history.versions[0].writer, APP_ID);

    let value = client.send(&Operation::Ping).await.unwrap();
    assert_eq!(value, json!({"pong": true, "version": 1}));
    let raw = client.send_raw("list_schemas", None).await.unwrap();
    assert_eq!(raw.get(), r#"{"schemas":["post"]}"#);

    assert_eq!(daemon.state.accepted.load(Ordering::SeqCst), 13);
    assert_eq!(daemon.state.unsigned.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_calls_on_one_connection_are_matched() {
    let daemon = FakeDaemon::start(false).await;
    let client = client(&daemon).await;
    let mut tasks = Vec::new();
    for n in 0..100 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let created = client.create("post", json!({ "n": n })).await.unwrap();
            assert_eq!(created.id, format!("id-{n}"));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(daemon.state.accepted.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn each_daemon_error_code_becomes_its_variant() {
    let daemon = FakeDaemon::start(false).await;
    let client = client(&daemon).await;
    type IsVariant = fn(&Error) -> bool;
    let cases: [(ErrorCode, IsVariant); 13] = [
        (
            ErrorCode::BadRequest,
            |e| matches!(e, Error::Invalid { field: Some(f), .. } if f == "params.x"),
        ),
        (ErrorCode::UnsupportedVersion, |e| {
            matches!(e, Error::Protocol { .. })
        }),
        (ErrorCode::Unauthenticated, |e| {
            matches!(e, Error::Unauthenticated { .. })
        }),
        (ErrorCode::BadSignature, |e| {
            matches!(e, Error::BadSignature { .. })
        }),
        (ErrorCode::Replay, |e| matches!(e, Error::Replay { .. })),
        (ErrorCode::Forbidden, |e| {
            matches!(e, Error::Forbidden { .. })
        }),
        (ErrorCode::NotFound, |e| matches!(e, Error::NotFound { .. })),
        (ErrorCode::Conflict, |e| matches!(e, Error::Conflict { .. })),
        (ErrorCode::TooLarge, |e| matches!(e, Error::Protocol { .. })),
        (ErrorCode::RateLimited, |e| {
            matches!(e, Error::RateLimited { .. })
        }),
        (ErrorCode::NodeUnavailable, |e| {
            matches!(e, Error::NodeUnavailable { .. })
        }),
        (ErrorCode::Timeout, |e| matches!(e, Error::Timeout { .. })),
        (ErrorCode::Internal, |e| matches!(e, Error::Internal { .. })),
    ];
    for (code, is_variant) in cases {
        let err = client.get_schema(&format!("e_{code}")).await.unwrap_err();
        assert!(is_variant(&err), "{code}: {err:?}");
        assert_eq!(err.code(), Some(code));
        assert_eq!(err.message(), format!("canned {code}"));
    }
    // The connection survived every refusal.
    assert!(client.is_connected());
    client.ping().await.unwrap();
}

#[tokio::test]
async fn wrong_secrets_are_refused_with_typed_errors() {
    let daemon = FakeDaemon::start(false).await;
    let mut wrong_key = credentials(1);
    wrong_key.signing_key = credentials(2).signing_key;
    let err = Client::connect(&daemon.path, wrong_key)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");

    let err = Client::connect(&daemon.path, credentials(2))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");

    // A token-only client is refused by a daemon that wants signatures...
    let dev = ClientBuilder::token_only(&daemon.path, APP_ID, credentials(1).token);
    let err = dev.connect().await.unwrap().ping().await.unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
}

#[tokio::test]
async fn token_only_client_works_with_a_token_only_app() {
    let daemon = FakeDaemon::start(true).await;
    let dev = ClientBuilder::token_only(&daemon.path, APP_ID, credentials(1).token)
        .connect()
        .await
        .unwrap();
    dev.ping().await.unwrap();
    assert_eq!(daemon.state.unsigned.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_the_connection_stays_usable() {
    let daemon = FakeDaemon::start(false).await;
    let client = client(&daemon).await;
    let started = Instant::now();
    let err = client
        .with_timeout(Duration::from_millis(200))
        .get_schema("slow")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::Timeout));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(client.is_connected());
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_in_flight_call_fails_and_the_next_reconnects() {
    let mut daemon = FakeDaemon::start(false).await;
    let client = client(&daemon).await;
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.get_schema("slow").await }
    });
    daemon.state.slow_arrived.notified().await;
    daemon.kill().await;
    let err = in_flight.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Disconnected { sent: true, .. }),
        "{err:?}"
    );

    daemon.restart();
    client.ping().await.unwrap();
    assert_eq!(
        daemon.state.slow.load(Ordering::SeqCst),
        1,
        "a request that may have been applied is never resent"
    );
}

#[tokio::test]
async fn while_the_daemon_is_down_calls_fail_after_bounded_backoff() {
    let mut daemon = FakeDaemon::start(false).await;
    let client = client(&daemon).await;
    daemon.kill().await;

    let started = Instant::now();
    let err = client
        .with_timeout(Duration::from_millis(600))
        .ping()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, Error::Disconnected { sent: false, message }
            if message.contains(&daemon.path.display().to_string())),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A daemon that comes back during the backoff is found by the same call.
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.restart();
        daemon
    });
    client.ping().await.unwrap();
    let _daemon = restarted.await.unwrap();
}

#[tokio::test]
async fn a_call_waiting_for_a_restarted_daemon_is_signed_after_it_came_up() {
    // A restarted daemon refuses timestamps from before its start (docs/protocol.md 6.5):
    // a call made while the daemon is down must be stamped and signed once connected.
    let mut daemon = FakeDaemon::start(false).await;
    let client = client(&daemon).await;
    client.ping().await.unwrap();
    daemon.kill().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.create("post", json!({"n": 1})).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.restart();
    call.await.unwrap().unwrap();
    assert_eq!(daemon.state.signed_before_start.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rotated_credentials_are_re_read_once() {
    let daemon = FakeDaemon::start(false).await;
    let path = daemon.dir.path().join("credentials.json");
    std::fs::write(&path, credentials(1).to_json()).unwrap();
    let client = ClientBuilder::from_credentials_file(&daemon.path, &path)
        .unwrap()
        .connect()
        .await
        .unwrap();
    client.ping().await.unwrap();

    // The daemon rotates: until the file is rewritten, the old secrets are refused.
    *daemon.state.expected.lock().unwrap() = credentials(3);
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");
    std::fs::write(&path, credentials(3).to_json()).unwrap();
    client.ping().await.unwrap();
}

#[tokio::test]
async fn from_lookup_finds_socket_and_credentials() {
    let daemon = FakeDaemon::start(false).await;
    let path = daemon.dir.path().join("credentials.json");
    std::fs::write(&path, credentials(1).to_json()).unwrap();
    let dir = daemon.dir.path().as_os_str().to_owned();
    let client = ClientBuilder::from_lookup(|name| match name {
        super::ENV_APP_ID => Some(APP_ID.into()),
        super::ENV_SOCKET_DIR => Some(dir.clone()),
        super::ENV_CREDENTIALS => Some(path.clone().into_os_string()),
        _ => None,
    })
    .unwrap()
    .connect()
    .await
    .unwrap();
    assert_eq!(client.socket_path(), daemon.path);
    client.ping().await.unwrap();

    let dbg = format!("{client:?}");
    let secrets = credentials(1);
    assert!(dbg.contains(APP_ID), "{dbg}");
    assert!(!dbg.contains(&secrets.token), "{dbg}");
    assert!(
        !dbg.contains(&hex::encode(secrets.signing_key.to_bytes())),
        "{dbg}"
    );
}

#[test]
fn blocking_client_works_without_a_runtime() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let daemon = runtime.block_on(FakeDaemon::start(false));
    let client = blocking::Client::connect(&daemon.path, credentials(1)).unwrap();
    assert_eq!(client.ping().unwrap().version, 1);
    assert_eq!(client.create("post", json!({"n": 1})).unwrap().id, "id-1");
    let rows: Vec<Value> = client.query_as(Query::new("post")).unwrap();
    assert_eq!(rows.len(), 1);

    let threads: Vec<_> = (0..4)
        .map(|n| {
            let client = client.clone();
            std::thread::spawn(move || client.create("post", json!({ "n": n })).unwrap().id)
        })
        .collect();
    for (n, thread) in threads.into_iter().enumerate() {
        assert_eq!(thread.join().unwrap(), format!("id-{n}"));
    }
    let err = client.get_schema("e_forbidden").unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    drop(client);
    drop(daemon);
}
