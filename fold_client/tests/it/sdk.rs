//! The app SDK (`fold_ipc::Client`) against a real daemon: pipelining, typed errors,
//! reconnecting after a daemon restart, timeouts.

use crate::support::{config_in, start_daemon};
use fold_ipc::client::{ClientBuilder, Error};
use fold_ipc::query::{eq, Query};
use fold_ipc::schema::SchemaDef;
use fold_ipc::Client;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn note_schema() -> SchemaDef {
    serde_json::from_value(json!({
        "name": "note",
        "fields": {"text": {"type": "string", "required": true}, "n": {"type": "int", "indexed": true}}
    }))
    .unwrap()
}

#[derive(Debug, Deserialize)]
struct Note {
    id: String,
    n: i64,
}

#[tokio::test]
async fn pipelined_requests_from_one_client() {
    let d = start_daemon("").await;
    let creds = d.install("notes", &["*:note"], None).await;
    let client = Client::connect(d.socket(&creds.app_id), creds.clone())
        .await
        .unwrap();
    client.create_schema(note_schema()).await.unwrap();
    let tasks: Vec<_> = (0..100i64)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.create("note", json!({"text": "hi", "n": n})).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let notes: Vec<Note> = client
        .query_as(Query::new("note").fields(["n"]).order_by("n").limit(1000))
        .await
        .unwrap();
    assert_eq!(
        notes.iter().map(|n| n.n).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    assert!(notes.iter().all(|n| !n.id.is_empty()));
    let allowed = d
        .audit_lines()
        .await
        .iter()
        .filter(|l| l["app"] == "notes" && l["verdict"] == "allow")
        .count();
    assert!(
        allowed >= 102,
        "one connection carried them all, each audited: {allowed}"
    );
    d.stop().await;
}

#[tokio::test]
async fn each_failure_is_a_typed_error() {
    let d = start_daemon("").await;
    let creds = d.install("typed", &["*:note", "query:other"], None).await;
    let client = Client::connect(d.socket(&creds.app_id), creds.clone())
        .await
        .unwrap();
    client.create_schema(note_schema()).await.unwrap();

    let err = client.create_schema(note_schema()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    let err = client.get_schema("missing").await.unwrap_err();
    assert!(
        matches!(err, Error::Forbidden { .. }),
        "no grant on `missing`: {err:?}"
    );
    let err = client
        .query(Query::new("other").filter(eq("x", 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }),
        "granted but absent: {err:?}"
    );
    let err = client.create("note", json!({"text": 5})).await.unwrap_err();
    match &err {
        Error::Invalid { field, message } => {
            assert_eq!(field.as_deref(), Some("params.data.text"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(
        err.to_string().contains("text"),
        "the daemon's message is kept: {err}"
    );

    d.admin(fold_client::admin::protocol::RemoveRequest {
        app: "typed".into(),
    })
    .await
    .unwrap();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");
    d.stop().await;
}

#[tokio::test]
async fn reconnects_after_a_daemon_restart() {
    let d = start_daemon("").await;
    let creds = d.install("sticky", &["*:note"], None).await;
    let socket = d.socket(&creds.app_id);
    let client = ClientBuilder::new(&socket, creds.clone())
        .timeout(Duration::from_secs(10))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    client.ping().await.unwrap();

    let dir = d.stop().await;
    let err = client.ping().await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected { .. }),
        "daemon down: {err:?}"
    );

    let again = fold_client::daemon::start(config_in(dir.path(), ""))
        .await
        .unwrap();
    client
        .ping()
        .await
        .expect("the same client reconnects by itself");
    client.create_schema(note_schema()).await.unwrap();
    fold_client::daemon::stop(&again).await;
}

#[tokio::test]
async fn calls_time_out_and_the_client_stays_usable() {
    // A node that never answers one request kind stands in for a stuck node.
    let outer = tempfile::Builder::new()
        .prefix("ft")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = outer.path().join("node.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let node = fold_node::Node::open(outer.path().join("data")).unwrap();
    let handler = Arc::new(Stuck { node });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h = Arc::clone(&handler);
            tokio::spawn(fold_ipc::server::serve_connection(
                stream,
                h,
                Default::default(),
                std::future::pending(),
            ));
        }
    });
    let d = start_daemon(&format!(
        "node = \"unix:{}\"\nrequest_timeout_ms = 30000",
        sock.display()
    ))
    .await;
    let creds = d.install("waiter", &["*:*"], None).await;
    let client = Client::connect(d.socket(&creds.app_id), creds)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let err = client.get_schema("anything").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        client.list_schemas().await.is_ok(),
        "usable after a timeout"
    );
    d.stop().await;
}

struct Stuck {
    node: fold_node::Node,
}

impl fold_ipc::server::Handler for Stuck {
    async fn handle(&self, request: fold_ipc::Request) -> fold_ipc::Response {
        let op = match request.operation() {
            Ok(op) => op,
            Err(e) => return fold_ipc::Response::error(Some(request.request_id), e),
        };
        if matches!(op, fold_ipc::Operation::GetSchema { .. }) {
            std::future::pending::<()>().await;
        }
        match self.node.execute(request.app_id.as_deref(), op).await {
            Ok(raw) => fold_ipc::Response::ok_raw(request.request_id, raw),
            Err(e) => fold_ipc::Response::error(Some(request.request_id), e),
        }
    }
}
