//! Fair sharing (issue 13), as the attacks: one app's expensive queries or write flood must
//! not starve another app, and a request's deadline stops its work.

use crate::deadline::{call, parse};
use crate::support::Client;
use fold_ipc::limits::{RequestLimits, Share};
use fold_ipc::{ErrorCode, WireError};
use fold_node::{Listener, Node, NodeConfig};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn limits(reads: u32, writes: u32, timeout_ms: Option<u64>) -> RequestLimits {
    RequestLimits {
        timeout_ms,
        share: Share { reads, writes },
        quota: fold_ipc::limits::Quota::UNLIMITED,
    }
}

async fn run(
    node: &Node,
    tenant: &str,
    limits: &RequestLimits,
    operation: &str,
    params: &Value,
) -> Result<Value, WireError> {
    let raw = node
        .execute_limited(Some(tenant), parse(operation, params), Some(limits))
        .await?;
    Ok(serde_json::from_str(raw.get()).unwrap())
}

/// A `blob` schema with `rows` strings of `size` bytes of `a`, and the query that scans
/// them at length: an `or` of 80 `contains`, each needle almost matching everywhere
/// (within the query limits; many short SQLite steps, so progress checks come often).
async fn hostile_data(node: &Node, rows: usize, size: usize) -> Value {
    call(
        node,
        "create_schema",
        json!({"name": "blob", "fields": {"text": {"type": "string"}}}),
    )
    .await;
    let text = "a".repeat(size);
    let loads: Vec<_> = (0..rows)
        .map(|_| {
            let node = node.clone();
            let text = text.clone();
            tokio::spawn(async move {
                call(
                    &node,
                    "mutation",
                    json!({"schema": "blob", "action": "create", "data": {"text": text}}),
                )
                .await
            })
        })
        .collect();
    for load in loads {
        load.await.unwrap();
    }
    let needle = format!("{}b", "a".repeat(199));
    // 80 needles of 200 bytes: 16,000 bytes, just within the node's 16 KiB of filter values.
    let filters: Vec<Value> = (0..80)
        .map(|_| json!({"op": "contains", "field": "text", "value": needle}))
        .collect();
    json!({"schema": "blob", "filter": {"op": "or", "filters": filters}, "limit": 100})
}

/// The victim's schema and one record of it; the point read of that record.
async fn victim_data(node: &Node) -> Value {
    call(
        node,
        "create_schema",
        json!({"name": "note", "fields": {"title": {"type": "string"}}}),
    )
    .await;
    let made = call(
        node,
        "mutation",
        json!({"schema": "note", "action": "create", "data": {"title": "mine"}}),
    )
    .await;
    json!({"schema": "note", "filter": {"op": "eq", "field": "id", "value": made["id"]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_queries_of_one_app_do_not_starve_another_apps_point_reads() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path().join("node")).unwrap(); // 4 read slots
    let heavy = hostile_data(&node, 200, 4096).await;
    let point = victim_data(&node).await;
    let hostile = limits(2, 32, None);
    let victim = limits(2, 32, None);

    // How long one expensive query takes alone, for the report below.
    let t = Instant::now();
    run(&node, "hostile", &hostile, "query", &heavy)
        .await
        .unwrap();
    let alone = t.elapsed();

    // The attack: more expensive queries than the node has read slots.
    let attack: Vec<_> = (0..6)
        .map(|_| {
            let node = node.clone();
            let heavy = heavy.clone();
            tokio::spawn(async move { run(&node, "hostile", &hostile, "query", &heavy).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let page = tokio::time::timeout(
            Duration::from_secs(10),
            run(&node, "victim", &victim, "query", &point),
        )
        .await
        .expect("the victim's point read timed out behind the expensive queries")
        .unwrap();
        worst = worst.max(t.elapsed());
        assert_eq!(page["rows"].as_array().map(Vec::len), Some(1), "{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_running = attack.iter().filter(|a| !a.is_finished()).count();
    for a in &attack {
        a.abort();
    }
    eprintln!(
        "one expensive query alone: {alone:?}; victim's slowest point read under the attack: \
         {worst:?}; expensive queries still running at the end: {still_running}"
    );
    assert!(
        still_running > 0,
        "the expensive queries ended before the victim's reads ({alone:?} alone): the test \
         did not overlap them"
    );
    assert!(
        worst < Duration::from_millis(250),
        "a point read of the victim took {worst:?} while another app's expensive queries ran"
    );
}

/// A point read finishes within the inline budget and takes no read slot: it is answered
/// even while every slot is held, here by the same app's expensive queries (its share is
/// spent, so the old rule, a slot for every read, made it wait for them). A slot held by a
/// thread the kernel had preempted used to make every other read wait for that thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_read_needs_no_read_slot_even_when_every_slot_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        readers: 1,
        ..NodeConfig::new(dir.path().join("node"))
    };
    let node = Node::open_with(config).unwrap();
    let heavy = hostile_data(&node, 200, 4096).await;
    let point = victim_data(&node).await;
    let one = limits(1, 32, None);
    let attack: Vec<_> = (0..3)
        .map(|_| {
            let node = node.clone();
            let heavy = heavy.clone();
            tokio::spawn(async move { run(&node, "app", &one, "query", &heavy).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let page = tokio::time::timeout(
        Duration::from_secs(10),
        run(&node, "app", &one, "query", &point),
    )
    .await
    .expect("the point read timed out")
    .unwrap();
    let took = t.elapsed();
    let still_running = attack.iter().filter(|a| !a.is_finished()).count();
    for a in &attack {
        a.abort();
    }
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(1), "{page}");
    assert!(
        still_running > 0,
        "the expensive queries ended first: the test did not overlap them"
    );
    assert!(
        took < Duration::from_millis(250),
        "the point read took {took:?} while the only slot was held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flood_of_one_app_delays_another_apps_writes_by_about_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path().join("node")).unwrap();
    call(
        &node,
        "create_schema",
        json!({"name": "log", "fields": {"n": {"type": "int"}}}),
    )
    .await;
    let create = |n: u64| json!({"schema": "log", "action": "create", "data": {"n": n}});

    // The flood keeps this many writes queued at the writer at all times.
    const FLOOD: usize = 5000;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let (node, stop, done) = (node.clone(), Arc::clone(&stop), Arc::clone(&done));
            tokio::spawn(async move {
                let l = limits(2, 32, None);
                while !stop.load(Ordering::Relaxed) {
                    run(&node, "flood", &l, "mutation", &create(i as u64))
                        .await
                        .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Let the backlog build and the writer reach its pace.
    while done.load(Ordering::Relaxed) < FLOOD {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let victim = limits(2, 32, None);
    let start = Instant::now();
    let flood_before = done.load(Ordering::Relaxed);
    let mut times = Vec::new();
    for n in 0..20 {
        let t = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(30),
            run(&node, "victim", &victim, "mutation", &create(1_000_000 + n)),
        )
        .await
        .expect("the victim's write timed out behind the flood")
        .unwrap();
        times.push(t.elapsed());
    }
    let window = start.elapsed();
    let flood_writes = done.load(Ordering::Relaxed) - flood_before;
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }

    // The writer's pace during the victim's writes: time per full batch of the flood.
    let batch = window.mul_f64(fold_node::MAX_BATCH as f64 / flood_writes.max(1) as f64);
    let backlog = batch.mul_f64(FLOOD as f64 / fold_node::MAX_BATCH as f64);
    let worst = times.iter().max().copied().unwrap();
    eprintln!(
        "flood: {flood_writes} writes in {window:?}, one batch ~{batch:?}, its backlog \
         ~{backlog:?}; victim's writes: slowest {worst:?}"
    );
    // About one batch (the one being committed when the write arrives) and the small batch
    // that carries it; the flood's backlog is ~20 batches.
    let bound = batch * 3 + Duration::from_millis(50);
    assert!(
        worst < bound,
        "a write of the victim took {worst:?}, more than {bound:?} (a batch is ~{batch:?}, \
         the flood's backlog ~{backlog:?})"
    );
}

#[tokio::test]
async fn a_write_whose_deadline_passed_before_it_started_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path().join("node")).unwrap();
    call(
        &node,
        "create_schema",
        json!({"name": "log", "fields": {"n": {"type": "int"}}}),
    )
    .await;
    let create = |n: u64| json!({"schema": "log", "action": "create", "data": {"n": n}});
    let late = run(
        &node,
        "app",
        &limits(2, 32, Some(0)),
        "mutation",
        &create(7),
    )
    .await
    .unwrap_err();
    assert_eq!(late.code, ErrorCode::Timeout, "{late}");
    assert!(late.message.contains("deadline"), "{late}");
    // A later write of the same app commits; the dropped one never did.
    run(&node, "app", &limits(2, 32, None), "mutation", &create(8))
        .await
        .unwrap();
    let rows = call(&node, "query", json!({"schema": "log"})).await;
    let ns: Vec<&Value> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["n"])
        .collect();
    assert_eq!(ns, [&json!(8)], "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_over_the_socket_stops_an_expensive_query_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().join("node"));
    config.readers = 1;
    let node = Node::open_with(config).unwrap();
    let heavy = hostile_data(&node, 200, 4096).await;
    let point = victim_data(&node).await;
    let socket = dir.path().join("sock").join("node.sock");
    let listener = fold_node::bind_unix(&socket).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fold_node::serve(
        Listener::Unix(listener),
        node.clone(),
        fold_ipc::server::ConnectionLimits::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = Client::unix(&socket).await;
    let request = |id: &str, params: &Value, timeout_ms: Option<u64>| {
        json!({"v": 1, "request_id": id, "app_id": "hostile", "operation": "query",
               "params": params, "limits": limits(2, 32, timeout_ms)})
        .to_string()
    };

    let t = Instant::now();
    client
        .send_raw(request("heavy", &heavy, Some(200)).as_bytes())
        .await;
    let answer = client.recv().await;
    let answered = t.elapsed();
    let error = answer
        .error
        .clone()
        .expect("the expensive query was meant to time out");
    assert_eq!(error.code, ErrorCode::Timeout, "{error}");
    assert!(
        answered >= Duration::from_millis(190) && answered < Duration::from_millis(600),
        "answered `timeout` after {answered:?}, not near its 200 ms deadline"
    );

    // The only read slot is free again: a point read right after is answered at once.
    let t = Instant::now();
    client
        .send_raw(request("point", &point, None).as_bytes())
        .await;
    let answer = client.recv().await;
    let point_took = t.elapsed();
    assert!(answer.success, "{:?}", answer.error);
    eprintln!("timeout answered after {answered:?}; the next point read took {point_took:?}");
    assert!(
        point_took < Duration::from_millis(100),
        "the point read after the timed-out query took {point_took:?}: the slot was still held"
    );

    drop(stop);
    server.await.unwrap();
}
