//! The socket server: framing errors, access control, TCP secret, concurrency, shutdown.

use crate::support::{post_schema, start, start_with, Client, TIMEOUT};
use fold_ipc::server::ConnectionLimits;
use fold_ipc::ErrorCode;
use fold_node::{Listener, Node, NodeError, NodeSecret};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn socket_is_0600_in_a_0700_dir() {
    let node = start().await;
    assert_eq!(mode(&node.socket), 0o600);
    assert_eq!(mode(node.socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&node.data), 0o700);
    assert_eq!(mode(&node.data.join(fold_node::store::DB_FILE)), 0o600);
    node.stop().await;
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
    let node = start().await;
    match fold_node::bind_unix(&node.socket).await {
        Err(NodeError::SocketInUse(_)) => {}
        other => panic!("expected SocketInUse, got {other:?}"),
    }
    // Still served.
    node.client().await.ok("ping", json!(null)).await;

    // A socket file nobody listens on is stale: removed and rebound.
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    fold_node::store::ensure_private_dir(&private).unwrap();
    let path = private.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let l = fold_node::bind_unix(&path).await.unwrap();
    drop(l);
    // A regular file is never removed.
    let file = private.join("file.sock");
    std::fs::write(&file, "keep").unwrap();
    assert!(matches!(
        fold_node::bind_unix(&file).await,
        Err(NodeError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    // A directory other users can reach is refused.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(
        fold_node::bind_unix(&open.join("n.sock")).await,
        Err(NodeError::InsecureDir { .. })
    ));
    node.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_answered_and_the_connection_stays_usable() {
    let node = start().await;
    let mut c = node.client().await;
    c.send_raw(b"{this is not json").await;
    let r = c.recv().await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadRequest);
    c.send_raw(br#"{"request_id":"x1","operation":"frobnicate"}"#)
        .await;
    let r = c.recv().await;
    assert_eq!(r.request_id.as_deref(), Some("x1"));
    assert_eq!(r.error.unwrap().field.as_deref(), Some("operation"));
    c.send_raw(br#"{"v":99,"request_id":"x2","operation":"ping"}"#)
        .await;
    assert_eq!(
        c.recv().await.error.unwrap().code,
        ErrorCode::UnsupportedVersion
    );
    c.send_raw(br#"{"request_id":"x3","operation":"get_schema","params":{"nam":"post"}}"#)
        .await;
    assert_eq!(
        c.recv().await.error.unwrap().field.as_deref(),
        Some("params.nam")
    );
    c.send_raw(b"[1,2,3]").await;
    assert_eq!(c.recv().await.error.unwrap().code, ErrorCode::BadRequest);
    // A reference-era request without `v` is still served.
    c.send_raw(br#"{"request_id":"x4","operation":"list_schemas","params":null}"#)
        .await;
    assert!(c.recv().await.success);
    c.ok("ping", json!(null)).await;
    node.stop().await;
}

#[tokio::test]
async fn oversized_frames_get_too_large() {
    let node = start_with(ConnectionLimits {
        max_frame: 1024,
        ..ConnectionLimits::default()
    })
    .await;
    let mut c = node.client().await;
    let big = format!(
        r#"{{"v":1,"request_id":"big","operation":"ping","nonce":"{}"}}"#,
        "x".repeat(2000)
    );
    let mut stream = tokio::net::UnixStream::connect(&node.socket).await.unwrap();
    stream
        .write_all(&(big.len() as u32).to_be_bytes())
        .await
        .unwrap();
    let body = fold_ipc::frame::read_frame(&mut stream, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let r = fold_ipc::Response::decode(&body).unwrap();
    assert_eq!(r.error.unwrap().code, ErrorCode::TooLarge);
    // Other connections are unaffected.
    c.ok("ping", json!(null)).await;
    node.stop().await;
}

#[tokio::test]
async fn tcp_requires_the_node_secret() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path().join("data")).unwrap();
    let secret_path = NodeSecret::default_path(node.data_dir());
    let (secret, created) = NodeSecret::load_or_create(&secret_path).unwrap();
    assert!(created);
    assert_eq!(mode(&secret_path), 0o600);
    let text = std::fs::read_to_string(&secret_path)
        .unwrap()
        .trim()
        .to_string();
    let listener = fold_node::bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fold_node::serve(
        Listener::Tcp { listener, secret },
        node,
        ConnectionLimits::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let mut c = Client::tcp(addr).await;
    let e = c.err("ping", json!(null), ErrorCode::Unauthenticated).await;
    assert!(!e.message.contains(&text));
    c.token = Some("0".repeat(64));
    c.err("list_schemas", json!(null), ErrorCode::Unauthenticated)
        .await;
    c.token = Some(text[..32].to_string());
    c.err("list_schemas", json!(null), ErrorCode::Unauthenticated)
        .await;
    // Unauthenticated requests are refused before their operation is even parsed.
    c.err("frobnicate", json!(null), ErrorCode::Unauthenticated)
        .await;
    c.token = Some(text.clone());
    c.ok("ping", json!(null)).await;
    c.create_schema(post_schema()).await;
    c.create("post", json!({"title": "over tcp"})).await;
    assert_eq!(c.ids(json!({"schema": "post"})).await.len(), 1);

    for addr in ["0.0.0.0:0", "192.0.2.1:9000", "[::]:0"] {
        match fold_node::bind_tcp(addr.parse().unwrap()).await {
            Err(NodeError::NotLoopback(_)) => {}
            other => panic!("{addr}: expected NotLoopback, got {other:?}"),
        }
    }
    stop.send(()).unwrap();
    tokio::time::timeout(TIMEOUT, server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_connections_concurrently() {
    let node = start().await;
    node.client().await.create_schema(post_schema()).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let socket = node.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::unix(&socket).await;
            c.app_id = Some(format!("app{t}"));
            let mut mine = Vec::new();
            for i in 0..10 {
                mine.push(c.create("post", json!({"title": format!("{t}-{i}"), "likes": t})).await);
                c.ids(json!({"schema": "post", "filter": {"op": "eq", "field": "likes", "value": t}}))
                    .await;
            }
            let got = c
                .ids(json!({"schema": "post", "filter": {"op": "eq", "field": "_created_by", "value": format!("app{t}")}}))
                .await;
            assert_eq!(got, mine);
        }));
    }
    for t in tasks {
        tokio::time::timeout(TIMEOUT, t).await.unwrap().unwrap();
    }
    let all = node
        .client()
        .await
        .ids(json!({"schema": "post", "limit": 1000}))
        .await;
    assert_eq!(all.len(), 160);
    node.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_removes_the_socket() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    // Pipeline writes, then stop while they are in flight. Requests the server had read
    // are answered (and committed); the rest were never read, so never applied.
    for i in 0..50 {
        let body = json!({"v": 1, "request_id": format!("w{i}"), "operation": "mutation",
                          "params": {"schema": "post", "action": "create", "data": {"title": "x"}}});
        c.send_raw(body.to_string().as_bytes()).await;
    }
    let socket = node.socket.clone();
    let data = node.data.clone();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let stopper = tokio::spawn(node.stop());
    let mut answered = 0;
    while let Some(r) = c.recv_opt().await {
        assert!(r.success, "{:?}", r.error);
        answered += 1;
    }
    let dir = tokio::time::timeout(TIMEOUT, stopper)
        .await
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "socket removed on shutdown");
    let reopened = Node::open(&data).unwrap();
    let page = reopened
        .execute(
            None,
            fold_ipc::Operation::Query(fold_ipc::query::Query::new("post").limit(1000)),
        )
        .await
        .unwrap();
    let page: fold_ipc::query::QueryResult = serde_json::from_str(page.get()).unwrap();
    assert_eq!(
        page.rows.len(),
        answered,
        "exactly the answered writes were applied"
    );
    drop(dir);
}
