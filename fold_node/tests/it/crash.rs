//! Durability: the real binary is killed with SIGKILL at a random moment while writes are
//! in flight, restarted on the same data directory, and every acknowledged write must be
//! there, with its history.

use crate::support::{post_schema, Client, TIMEOUT};
use fold_ipc::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use fold_ipc::Response;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

const ROUNDS: usize = 3;
const WRITERS: usize = 4;
const MAX_WRITES_PER_WRITER: usize = 100;
/// Acknowledged writes to wait for in each round before the random delay and the kill.
const MIN_ACKED_PER_ROUND: usize = 40;

/// What a client knows about one record: the data of each acknowledged version.
type Known = BTreeMap<String, Vec<Value>>;

fn spawn_node(data: &Path, socket: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fold_node"))
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--socket")
        .arg(socket)
        .env("FOLD_NODE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn fold_node")
}

async fn wait_ready(socket: &Path) -> Client {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(stream) = UnixStream::connect(socket).await {
            drop(stream);
            let mut c = Client::unix(socket).await;
            c.ok("ping", json!(null)).await;
            return c;
        }
        assert!(Instant::now() < deadline, "node did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request on a raw stream; `None` once the node is gone.
async fn call(stream: &mut UnixStream, id: u64, params: &Value) -> Option<Value> {
    let body =
        json!({"v": 1, "request_id": format!("c{id}"), "operation": "mutation", "params": params});
    write_frame(stream, body.to_string().as_bytes(), DEFAULT_MAX_FRAME)
        .await
        .ok()?;
    let frame = read_frame(stream, DEFAULT_MAX_FRAME).await.ok()??;
    let r = Response::decode(&frame).unwrap();
    Some(r.into_result::<Value>().expect("the write itself is valid"))
}

/// Writes until the node dies or the quota is reached; records what was acknowledged.
async fn writer(socket: PathBuf, known: Arc<Mutex<Known>>, acked: Arc<AtomicUsize>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Ok(mut stream) = UnixStream::connect(&socket).await else {
        return;
    };
    let mut mine: Vec<String> = Vec::new();
    for n in 0..MAX_WRITES_PER_WRITER as u64 {
        let data = json!({"title": format!("w{seed}-{n}"), "likes": rng.gen_range(0..1_000_000)});
        if mine.is_empty() || rng.gen_bool(0.4) {
            let params = json!({"schema": "post", "action": "create", "data": data});
            let Some(r) = call(&mut stream, n, &params).await else {
                return;
            };
            let id = r["id"].as_str().unwrap().to_string();
            known.lock().unwrap().insert(id.clone(), vec![data]);
            acked.fetch_add(1, Ordering::SeqCst);
            mine.push(id);
        } else {
            let id = mine[rng.gen_range(0..mine.len())].clone();
            let patch = json!({"likes": data["likes"]});
            let params = json!({"schema": "post", "action": "update", "id": id, "data": patch});
            let Some(r) = call(&mut stream, n, &params).await else {
                return;
            };
            let mut k = known.lock().unwrap();
            let versions = k.get_mut(&id).unwrap();
            let mut next = versions.last().unwrap().clone();
            next["likes"] = patch["likes"].clone();
            versions.push(next);
            assert_eq!(r["version"], json!(versions.len()));
            acked.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Checks every acknowledged version against the restarted node, then adopts what the
/// node has (a write in flight at the kill may or may not have landed).
async fn verify(c: &mut Client, known: &mut Known) {
    for (id, acked) in known.iter_mut() {
        let h = c.ok("history", json!({"schema": "post", "id": id})).await;
        let versions = h["versions"].as_array().unwrap();
        assert!(
            versions.len() >= acked.len() && versions.len() <= acked.len() + 1,
            "{id}: {} versions on disk, {} acknowledged",
            versions.len(),
            acked.len()
        );
        for (i, data) in acked.iter().enumerate() {
            assert_eq!(versions[i]["version"], json!(i + 1), "{id}");
            assert_eq!(&versions[i]["data"], data, "{id} version {}", i + 1);
        }
        *acked = versions.iter().map(|v| v["data"].clone()).collect();
        let row = c
            .query(
                json!({"schema": "post", "filter": {"op": "eq", "field": "id", "value": id},
                          "fields": ["title", "likes", "_version"]}),
            )
            .await;
        let row = &row["rows"][0];
        assert_eq!(row["_version"], json!(acked.len()), "{id}");
        assert_eq!(row["likes"], acked.last().unwrap()["likes"], "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("sock").join("node.sock");
    let mut rng = rand::thread_rng();
    let mut known = Known::new();
    let mut total_acked = 0;
    for round in 0..ROUNDS {
        let mut child = spawn_node(&data, &socket);
        let mut c = wait_ready(&socket).await;
        if round == 0 {
            c.create_schema(post_schema()).await;
        }
        verify(&mut c, &mut known).await;
        let shared = Arc::new(Mutex::new(std::mem::take(&mut known)));
        let acked = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let seed = (round * WRITERS + w) as u64 + rng.gen::<u32>() as u64;
                let (known, acked) = (Arc::clone(&shared), Arc::clone(&acked));
                tokio::spawn(writer(socket.clone(), known, acked, seed))
            })
            .collect();
        let deadline = Instant::now() + TIMEOUT;
        while acked.load(Ordering::SeqCst) < MIN_ACKED_PER_ROUND && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let delay = Duration::from_millis(rng.gen_range(0..80));
        tokio::time::sleep(delay).await;
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().unwrap();
        for w in writers {
            tokio::time::timeout(TIMEOUT, w).await.unwrap().unwrap();
        }
        known = Arc::try_unwrap(shared).unwrap().into_inner().unwrap();
        let acked: usize = known.values().map(Vec::len).sum();
        assert!(
            acked >= MIN_ACKED_PER_ROUND,
            "writes were acknowledged before the kill"
        );
        eprintln!("round {round}: killed {delay:?} after {MIN_ACKED_PER_ROUND} acks; {acked} versions acknowledged so far");
        total_acked = acked;
    }
    // A last restart: everything is there; then a graceful stop on SIGTERM.
    let mut child = spawn_node(&data, &socket);
    let mut c = wait_ready(&socket).await;
    verify(&mut c, &mut known).await;
    assert!(total_acked > 0, "some writes were acknowledged");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    assert!(!socket.exists(), "socket removed on graceful shutdown");
}
