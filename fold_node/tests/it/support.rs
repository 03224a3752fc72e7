//! Shared helpers: a real node on a temp dir, served on a Unix socket, and a small
//! client that speaks raw frames.

use fold_ipc::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use fold_ipc::server::ConnectionLimits;
use fold_ipc::{Response, WireError};
use fold_node::{Listener, Node};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single test request may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A node served in-process on a Unix socket in a temp dir.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub socket: PathBuf,
    /// The node being served, for in-process checks beside the socket.
    #[allow(dead_code)]
    pub node: Node,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts a node with default limits.
pub async fn start() -> TestNode {
    start_with(ConnectionLimits::default()).await
}

/// Starts a node with these connection limits.
pub async fn start_with(limits: ConnectionLimits) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("sock").join("node.sock");
    let node = Node::open(&data).unwrap();
    let listener = fold_node::bind_unix(&socket).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(fold_node::serve(
        Listener::Unix(listener),
        node.clone(),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    TestNode {
        dir,
        data,
        socket,
        node,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestNode {
    /// A new connection to the node.
    pub async fn client(&self) -> Client {
        Client::unix(&self.socket).await
    }

    /// Signals shutdown and waits for the server to finish; returns the temp dir so the
    /// caller can look at what is left.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        }
        self.dir
    }
}

trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A client speaking raw frames; each call is one request and its response.
pub struct Client {
    stream: Pin<Box<dyn Io>>,
    next: u64,
    /// Sent as `app_id` when set.
    pub app_id: Option<String>,
    /// Sent as `token` when set.
    pub token: Option<String>,
}

impl Client {
    pub async fn unix(path: &std::path::Path) -> Client {
        Client::over(UnixStream::connect(path).await.unwrap())
    }

    pub async fn tcp(addr: std::net::SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap())
    }

    fn over(stream: impl AsyncRead + AsyncWrite + Send + 'static) -> Client {
        Client {
            stream: Box::pin(stream),
            next: 0,
            app_id: None,
            token: None,
        }
    }

    /// Sends a raw frame body.
    pub async fn send_raw(&mut self, body: &[u8]) {
        write_frame(&mut self.stream, body, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
    }

    /// Reads one response, or `None` when the server closed the connection.
    pub async fn recv_opt(&mut self) -> Option<Response> {
        let body = tokio::time::timeout(TIMEOUT, read_frame(&mut self.stream, DEFAULT_MAX_FRAME))
            .await
            .expect("response in time")
            .ok()??;
        Some(Response::decode(&body).unwrap())
    }

    /// Reads one response.
    pub async fn recv(&mut self) -> Response {
        let body = tokio::time::timeout(TIMEOUT, read_frame(&mut self.stream, DEFAULT_MAX_FRAME))
            .await
            .expect("response in time")
            .unwrap()
            .expect("a response, not the end of the stream");
        Response::decode(&body).unwrap()
    }

    /// Sends `operation` with `params` (omitted when `Value::Null`) and returns the result
    /// or the wire error.
    pub async fn call(&mut self, operation: &str, params: Value) -> Result<Value, WireError> {
        self.next += 1;
        let id = format!("r{}", self.next);
        let mut req = json!({"v": 1, "request_id": id, "operation": operation});
        if !params.is_null() {
            req["params"] = params;
        }
        if let Some(app) = &self.app_id {
            req["app_id"] = json!(app);
        }
        if let Some(token) = &self.token {
            req["token"] = json!(token);
        }
        self.send_raw(req.to_string().as_bytes()).await;
        let resp = self.recv().await;
        assert_eq!(resp.request_id.as_deref(), Some(id.as_str()));
        resp.into_result::<Value>()
    }

    /// Like [`Client::call`], expecting success.
    pub async fn ok(&mut self, operation: &str, params: Value) -> Value {
        match self.call(operation, params.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("{operation} {params} failed: {e}"),
        }
    }

    /// Like [`Client::call`], expecting an error with this code; returns it.
    pub async fn err(
        &mut self,
        operation: &str,
        params: Value,
        code: fold_ipc::ErrorCode,
    ) -> WireError {
        match self.call(operation, params.clone()).await {
            Ok(v) => panic!("{operation} {params} succeeded with {v}; expected {code}"),
            Err(e) => {
                assert_eq!(e.code, code, "{operation} {params}: {e}");
                e
            }
        }
    }

    /// Expects `bad_request` naming `field`.
    pub async fn bad(&mut self, operation: &str, params: Value, field: &str) -> WireError {
        let e = self
            .err(operation, params.clone(), fold_ipc::ErrorCode::BadRequest)
            .await;
        assert_eq!(e.field.as_deref(), Some(field), "{operation} {params}: {e}");
        assert!(e.message.contains(field), "message names the field: {e}");
        e
    }

    // Shorthands.

    pub async fn create_schema(&mut self, def: Value) {
        self.ok("create_schema", def).await;
    }

    pub async fn create(&mut self, schema: &str, data: Value) -> String {
        let r = self
            .ok(
                "mutation",
                json!({"schema": schema, "action": "create", "data": data}),
            )
            .await;
        r["id"].as_str().unwrap().to_string()
    }

    pub async fn update(&mut self, schema: &str, id: &str, data: Value) -> Value {
        self.ok(
            "mutation",
            json!({"schema": schema, "action": "update", "id": id, "data": data}),
        )
        .await
    }

    pub async fn query(&mut self, params: Value) -> Value {
        self.ok("query", params).await
    }

    /// The ids of the rows of a query result, in order.
    pub async fn ids(&mut self, params: Value) -> Vec<String> {
        let r = self.query(params).await;
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The `post` schema most tests use.
pub fn post_schema() -> Value {
    json!({"name": "post", "fields": {
        "title": {"type": "string", "required": true, "indexed": true},
        "body": {"type": "string"},
        "likes": {"type": "int", "indexed": true},
        "score": {"type": "float"},
        "draft": {"type": "bool"},
        "at": {"type": "timestamp"},
        "meta": {"type": "json"}
    }})
}
