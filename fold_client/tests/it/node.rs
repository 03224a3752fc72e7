//! The daemon in front of an external node: outages, recovery, and isolation between apps.

use crate::support::{code, start_daemon};
use fold_ipc::server::{serve_connection, ConnectionLimits, Handler};
use fold_ipc::{ErrorCode, Operation, Request, Response};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A real node served on `path` until the returned sender fires or is dropped.
async fn run_node(data: &Path, path: &Path) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let node = fold_node::Node::open(data.to_path_buf()).unwrap();
    let listener = fold_node::bind_unix(path).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(fold_node::serve(
        fold_node::Listener::Unix(listener),
        node,
        ConnectionLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

#[tokio::test]
async fn node_down_gives_node_unavailable_and_service_resumes_by_itself() {
    let outer = tempfile::Builder::new()
        .prefix("fn")
        .tempdir_in("/tmp")
        .unwrap();
    let data = outer.path().join("data");
    let sock = outer.path().join("node/node.sock");
    let (stop, task) = run_node(&data, &sock).await;
    let d = start_daemon(&format!("node = \"unix:{}\"", sock.display())).await;
    let c = Arc::new(d.connect(&d.install("steady", &["*:*"], None).await).await);
    assert!(c.call(&Operation::ListSchemas).await.success);

    // Load from several tasks while the node goes away and comes back.
    let load = {
        let c = Arc::clone(&c);
        tokio::spawn(async move {
            let (mut ok, mut unavailable, mut other) = (0, 0, 0);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                let r = c.call(&Operation::ListSchemas).await;
                match r.error.as_ref().map(|e| e.code) {
                    None => ok += 1,
                    // A request in flight when the node went away is ambiguous: `timeout`.
                    Some(ErrorCode::NodeUnavailable | ErrorCode::Timeout) => unavailable += 1,
                    Some(_) => other += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, unavailable, other)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = c.call(&Operation::ListSchemas).await;
    assert_eq!(
        code(&r),
        ErrorCode::NodeUnavailable,
        "while the node is down"
    );
    let (_stop, _task) = run_node(&data, &sock).await;
    let (ok, unavailable, other) = load.await.unwrap();
    assert!(
        unavailable > 0 && ok > 0 && other == 0,
        "ok {ok}, unavailable {unavailable}, other {other}"
    );
    assert!(
        c.call(&Operation::ListSchemas).await.success,
        "recovered without a daemon restart"
    );
    d.stop().await;
}

/// A real node whose answers to one app are delayed: the daemon must not let that app's
/// slow requests hold up another app.
struct SlowForOne {
    node: fold_node::Node,
    slow_app: String,
}

impl Handler for SlowForOne {
    async fn handle(&self, request: Request) -> Response {
        if request.app_id.as_deref() == Some(self.slow_app.as_str()) {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let op = match request.operation() {
            Ok(op) => op,
            Err(e) => return Response::error(Some(request.request_id), e),
        };
        match self.node.execute(request.app_id.as_deref(), op).await {
            Ok(raw) => Response::ok_raw(request.request_id, raw),
            Err(e) => Response::error(Some(request.request_id), e),
        }
    }
}

#[tokio::test]
async fn a_slow_app_does_not_slow_another() {
    let outer = tempfile::Builder::new()
        .prefix("fs")
        .tempdir_in("/tmp")
        .unwrap();
    let sock: PathBuf = outer.path().join("node.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let d = start_daemon(&format!("node = \"unix:{}\"", sock.display())).await;
    let slow = d.install("slow", &["*:*"], None).await;
    let fast = d.install("fast", &["*:*"], None).await;
    let handler = Arc::new(SlowForOne {
        node: fold_node::Node::open(outer.path().join("data")).unwrap(),
        slow_app: slow.app_id.clone(),
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(
                stream,
                Arc::clone(&handler),
                ConnectionLimits::default(),
                std::future::pending(),
            ));
        }
    });

    let slow_conn = Arc::new(d.connect(&slow).await);
    let fast_conn = d.connect(&fast).await;
    // Baseline for the fast app alone.
    let started = Instant::now();
    for _ in 0..20 {
        assert!(fast_conn.call(&Operation::ListSchemas).await.success);
    }
    let alone = started.elapsed();

    let pending: Vec<_> = (0..16)
        .map(|_| {
            let c = Arc::clone(&slow_conn);
            tokio::spawn(async move { c.call(&Operation::ListSchemas).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..20 {
        assert!(fast_conn.call(&Operation::ListSchemas).await.success);
    }
    let beside_slow = started.elapsed();
    let slow_done = pending.iter().filter(|t| t.is_finished()).count();
    assert_eq!(
        slow_done, 0,
        "the slow app's requests were still pending while the fast app was served"
    );
    // The fast app finished 20 round trips long before a single slow answer (2 s) came back.
    assert!(
        beside_slow < Duration::from_secs(1),
        "fast app alone {alone:?}, beside the slow app {beside_slow:?}"
    );
    for t in pending {
        assert!(t.await.unwrap().success);
    }
    d.stop().await;
}
