//! `fold_node` against plain rusqlite, with the same table layout and the same SQL.
//!
//! Run: `cargo bench -p fold_node` (100,000 records), or small:
//! `FOLD_BENCH_RECORDS=2000 FOLD_BENCH_READS=200 cargo bench -p fold_node`.
//!
//! Prints a markdown table. For each operation: plain rusqlite on one connection (the raw
//! engine), the node in-process ([`Node::execute`]), and the node over its Unix socket
//! from a client in the same process; plus the socket round trip alone (`ping`), so that
//! "node overhead with the round trip subtracted" is `(socket p50 - ping p50) / raw p50`.

use fold_ipc::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use fold_ipc::operation::Mutation;
use fold_ipc::query::{eq, Query};
use fold_ipc::server::ConnectionLimits;
use fold_ipc::{Operation, Request, Response};
use fold_node::{Listener, Node};
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection, TransactionBehavior};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

const CATEGORIES: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record(i: usize) -> Value {
    json!({
        "name": format!("item-{i:08}"),
        "cat": format!("c{:02}", i % CATEGORIES),
        "tag": format!("t{:02}", (i / 7) % CATEGORIES),
        "n": i,
    })
}

fn schema(name: &str) -> Value {
    json!({"name": name, "fields": {
        "name": {"type": "string", "required": true},
        "cat": {"type": "string", "indexed": true},
        "tag": {"type": "string"},
        "n": {"type": "int"},
    }})
}

/// Latencies of one measured operation.
struct Sample {
    times: Vec<Duration>,
}

impl Sample {
    fn p50_us(&self) -> f64 {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2].as_secs_f64() * 1e6
    }
    fn per_sec(&self) -> f64 {
        let total: Duration = self.times.iter().sum();
        self.times.len() as f64 / total.as_secs_f64()
    }
}

fn measure_sync(n: usize, mut f: impl FnMut(usize)) -> Sample {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i);
        times.push(t.elapsed());
    }
    Sample { times }
}

/// Times `$body` (which may `.await`) once per `$i` in `0..$n`.
macro_rules! measure {
    ($n:expr, |$i:ident| $body:expr) => {{
        let mut times = Vec::with_capacity($n);
        for $i in 0..$n {
            let t = Instant::now();
            $body;
            times.push(t.elapsed());
        }
        Sample { times }
    }};
}

// ---- the raw engine: the node's layout and SQL, on one plain connection ----

const RAW_LAYOUT: &str = "
PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
PRAGMA mmap_size=268435456;
CREATE TABLE schemas (sid INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    def TEXT NOT NULL, created_at INTEGER NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE records (sid INTEGER NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    data BLOB NOT NULL, created_at INTEGER NOT NULL, created_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL, updated_by TEXT NOT NULL, PRIMARY KEY (sid, id));
CREATE TABLE versions (sid INTEGER NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    action TEXT NOT NULL, ts INTEGER NOT NULL, writer TEXT NOT NULL, data TEXT,
    PRIMARY KEY (sid, id, version));
CREATE INDEX fx_1_cat ON records(json_extract(data,'$.cat'), id) WHERE sid = 1;
";

/// The statement the node compiles for `Query::new("item").filter(eq(FIELD, ?)).limit(N)`
/// (the limit is a literal, one more than the page, as the node writes it).
fn raw_select(field_expr: &str, limit: u32) -> String {
    let fetch = u64::from(limit) + 1;
    format!(
        "SELECT json_object('id', id, 'cat', data -> '$.cat', 'n', data -> '$.n', \
         'name', data -> '$.name', 'tag', data -> '$.tag'), id FROM records \
         WHERE sid = 1 AND {field_expr} = ? ORDER BY id LIMIT {fetch} OFFSET ?"
    )
}

fn raw_insert(conn: &mut Connection, i: usize) -> String {
    let text = record(i).to_string();
    let id = uuid::Uuid::now_v7().to_string();
    let now = 1_700_000_000_000i64;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    tx.prepare_cached(
        "INSERT INTO records (sid, id, version, data, created_at, created_by, updated_at, updated_by)
         VALUES (1, ?1, 1, jsonb(?2), ?3, 'raw', ?3, 'raw')",
    )
    .unwrap()
    .execute(params![id, text, now])
    .unwrap();
    tx.prepare_cached(
        "INSERT INTO versions (sid, id, version, action, ts, writer, data)
         VALUES (1, ?1, 1, 'create', ?2, 'raw', ?3)",
    )
    .unwrap()
    .execute(params![id, now, text])
    .unwrap();
    tx.commit().unwrap();
    id
}

/// Runs one query and builds the same result text the node returns.
fn raw_query(conn: &Connection, sql: &str, value: &str, limit: i64) -> String {
    let mut stmt = conn.prepare_cached(sql).unwrap();
    let mut rows = stmt.query(params![value, 0]).unwrap();
    let mut out = String::from("{\"rows\":[");
    let mut n = 0;
    while let Some(row) = rows.next().unwrap() {
        if n == limit {
            break;
        }
        if n > 0 {
            out.push(',');
        }
        out.push_str(row.get_ref(0).unwrap().as_str().unwrap());
        n += 1;
    }
    out.push_str("]}");
    assert!(n > 0, "{sql} {value}");
    out
}

// ---- a socket client ----

struct SocketClient {
    stream: UnixStream,
    next: u64,
}

impl SocketClient {
    /// One round trip; the response is decoded (the envelope, with the result kept raw)
    /// and checked for success, as a client that forwards results would do.
    async fn call(&mut self, op: &Operation) {
        self.next += 1;
        let req = Request::unsigned(format!("b{}", self.next), None, op);
        write_frame(&mut self.stream, &req.encode(), DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        let body = read_frame(&mut self.stream, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        let response = Response::decode(&body).unwrap();
        assert!(response.success, "{:?}", response.error);
    }
}

fn query_op(field: &str, value: &str, limit: u32) -> Operation {
    Operation::Query(Query::new("item").filter(eq(field, value)).limit(limit))
}

fn create_op(schema: &str, i: usize) -> Operation {
    Operation::Mutation(Mutation::Create {
        schema: schema.into(),
        data: record(i).as_object().cloned().unwrap(),
    })
}

struct Row {
    name: String,
    raw: Sample,
    node: Sample,
    socket: Option<Sample>,
}

fn main() {
    let records = env_usize("FOLD_BENCH_RECORDS", 100_000);
    let reads = env_usize("FOLD_BENCH_READS", 2_000);
    let socket_inserts = env_usize("FOLD_BENCH_SOCKET_INSERTS", records.min(5_000));
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    eprintln!("fold_node bench: {records} records, {reads} reads per measurement");

    // Raw engine: load.
    let raw_path = dir.path().join("raw.sqlite3");
    let mut raw = Connection::open(&raw_path).unwrap();
    raw.set_prepared_statement_cache_capacity(64);
    raw.execute_batch(RAW_LAYOUT).unwrap();
    raw.execute(
        "INSERT INTO schemas (name, def, created_at, created_by) VALUES ('item', ?1, 0, 'raw')",
        [schema("item").to_string()],
    )
    .unwrap();
    let mut raw_ids = Vec::with_capacity(records);
    let raw_insert_sample = measure_sync(records, |i| raw_ids.push(raw_insert(&mut raw, i)));
    raw.execute_batch("PRAGMA analysis_limit=1000; ANALYZE;")
        .unwrap();
    eprintln!("raw: loaded");

    let rows = rt.block_on(async {
        let node = Node::open(dir.path().join("node")).unwrap();
        node.execute(
            None,
            Operation::CreateSchema(serde_json::from_value(schema("item")).unwrap()),
        )
        .await
        .unwrap();
        node.execute(
            None,
            Operation::CreateSchema(serde_json::from_value(schema("item2")).unwrap()),
        )
        .await
        .unwrap();
        let mut ids = Vec::with_capacity(records);
        let node_insert = measure!(records, |i| {
            let r = node.execute(None, create_op("item", i)).await.unwrap();
            let v: Value = serde_json::from_str(r.get()).unwrap();
            ids.push(v["id"].as_str().unwrap().to_string());
        });
        node.analyze().await.unwrap();
        eprintln!("node: loaded");
        let plan = node
            .explain(Query::new("item").filter(eq("cat", "c01")).limit(100))
            .await
            .unwrap();
        eprintln!("node plan for the indexed filter: {}", plan.join("; "));

        let socket = dir.path().join("sock").join("node.sock");
        let listener = fold_node::bind_unix(&socket).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(fold_node::serve(
            Listener::Unix(listener),
            node.clone(),
            ConnectionLimits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut client = SocketClient {
            stream: UnixStream::connect(&socket).await.unwrap(),
            next: 0,
        };
        let socket_insert = measure!(socket_inserts, |i| client
            .call(&create_op("item2", i))
            .await);

        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let picks: Vec<usize> = (0..reads).map(|_| rng.gen_range(0..records)).collect();
        let cats: Vec<String> = (0..reads)
            .map(|i| format!("c{:02}", (i * 37) % CATEGORIES))
            .collect();
        let tags: Vec<String> = (0..reads)
            .map(|i| format!("t{:02}", (i * 37) % CATEGORIES))
            .collect();

        // Warm the caches of both sides once.
        for i in 0..reads.min(200) {
            node.execute(None, query_op("id", &ids[picks[i]], 100))
                .await
                .unwrap();
            client.call(&query_op("cat", &cats[i], 100)).await;
            raw_query(&raw, &raw_select("id", 100), &raw_ids[picks[i]], 100);
        }

        let ping = measure!(reads, |_i| client.call(&Operation::Ping).await);

        let mut rows = vec![Row {
            name: "insert (1 in flight, 1 commit each)".into(),
            raw: raw_insert_sample,
            node: node_insert,
            socket: Some(socket_insert),
        }];
        let shapes: [(&str, &str, &str, &Vec<String>, u32); 3] = [
            ("point read by id", "id", "id", &Vec::new(), 100),
            (
                "filter on indexed field (eq, 100 rows)",
                "cat",
                "json_extract(data,'$.cat')",
                &cats,
                100,
            ),
            (
                "filter on unindexed field (eq, 100 rows)",
                "tag",
                "json_extract(data,'$.tag')",
                &tags,
                100,
            ),
        ];
        for (name, field, expr, values, limit) in shapes {
            let value = |i: usize, node_side: bool| -> String {
                if field == "id" {
                    if node_side {
                        ids[picks[i]].clone()
                    } else {
                        raw_ids[picks[i]].clone()
                    }
                } else {
                    values[i].clone()
                }
            };
            let sql = raw_select(expr, limit);
            let raw_s = measure_sync(reads, |i| {
                raw_query(&raw, &sql, &value(i, false), i64::from(limit));
            });
            let node_s = measure!(reads, |i| {
                let op = query_op(field, &value(i, true), limit);
                node.execute(None, op).await.unwrap()
            });
            let socket_s = measure!(reads, |i| {
                let op = query_op(field, &value(i, true), limit);
                client.call(&op).await
            });
            rows.push(Row {
                name: name.into(),
                raw: raw_s,
                node: node_s,
                socket: Some(socket_s),
            });
        }

        // Group commit: 64 concurrent writers in-process.
        let concurrent = 64;
        let per = (records / 10).max(concurrent) / concurrent;
        let t = Instant::now();
        let tasks: Vec<_> = (0..concurrent)
            .map(|w| {
                let node = node.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        node.execute(None, create_op("item2", w * per + i))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = t.elapsed();
        let concurrent_rate = (concurrent * per) as f64 / elapsed.as_secs_f64();

        drop(stop);
        let _ = stop_server(server).await;
        print_table(records, reads, &rows, &ping, concurrent, concurrent_rate);
        rows
    });
    drop(rows);
    check_raw_plan(&raw_path);
}

async fn stop_server(server: tokio::task::JoinHandle<()>) -> Result<(), tokio::task::JoinError> {
    server.await
}

fn check_raw_plan(path: &Path) {
    let conn = Connection::open(path).unwrap();
    let plan: String = conn
        .query_row(
            &format!(
                "EXPLAIN QUERY PLAN {}",
                raw_select("json_extract(data,'$.cat')", 100)
            ),
            params!["c01", 0],
            |r| r.get(3),
        )
        .unwrap();
    eprintln!("raw plan for the indexed filter: {plan}");
}

fn print_table(
    records: usize,
    reads: usize,
    rows: &[Row],
    ping: &Sample,
    concurrent: usize,
    rate: f64,
) {
    let ping_us = ping.p50_us();
    println!("Records: {records}; reads per measurement: {reads}; durability: synchronous=FULL (fsync per commit).");
    println!(
        "Latencies are p50 per operation, in microseconds; throughput is operations per second."
    );
    println!();
    println!("| operation | raw rusqlite | node in-process | ratio | node over socket | socket - ping | ratio (socket - ping) |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let raw = r.raw.p50_us();
        let node = r.node.p50_us();
        let (sock, sock_net) = match &r.socket {
            Some(s) => (s.p50_us(), s.p50_us() - ping_us),
            None => (f64::NAN, f64::NAN),
        };
        println!(
            "| {} | {raw:.1} µs ({:.0}/s) | {node:.1} µs ({:.0}/s) | {:.2}x | {sock:.1} µs | {sock_net:.1} µs | {:.2}x |",
            r.name,
            r.raw.per_sec(),
            r.node.per_sec(),
            node / raw,
            sock_net / raw,
        );
    }
    println!("| socket round trip alone (ping) | | | | {ping_us:.1} µs | | |");
    println!();
    println!(
        "Means (µs), to show outliers: {}",
        rows.iter()
            .map(|r| format!(
                "{}: raw {:.1}, node {:.1}",
                r.name,
                1e6 / r.raw.per_sec(),
                1e6 / r.node.per_sec()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!();
    println!("Concurrent inserts in-process ({concurrent} writers, group commit): {rate:.0}/s.");
}
