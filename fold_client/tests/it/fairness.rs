//! Fair sharing (issue 13), each test written as the attack: one app must not be able to
//! blow up the daemon's memory, flood the node's writer, fill the disk, or stall the other
//! apps' reads.

use crate::abuse::{signed_raw, tempdir, Raw, MIB};
use crate::faults::ChildDaemon;
use crate::support::{code, start_daemon, Conn};
use fold_ipc::frame::DEFAULT_MAX_FRAME;
use fold_ipc::operation::Mutation;
use fold_ipc::{ErrorCode, Operation, Response};
use serde_json::json;
use std::time::{Duration, Instant};

/// A mutation whose params hold about `DEFAULT_MAX_FRAME / 2` JSON zeros: the frame is
/// just under the cap, and built naively its params take tens of times the frame.
fn zeros_frame(creds: &fold_ipc::Credentials, schema: &str) -> Vec<u8> {
    let mut n = DEFAULT_MAX_FRAME / 2 - 1024;
    loop {
        let params = format!(
            r#"{{"schema":"{schema}","action":"create","data":{{"blob":[{}0]}}}}"#,
            "0,".repeat(n)
        );
        let body = signed_raw(creds, "mutation", Some(&params)).encode();
        if body.len() <= DEFAULT_MAX_FRAME {
            return body;
        }
        n -= (body.len() - DEFAULT_MAX_FRAME) / 2 + 1;
    }
}

fn error_of(r: &Response) -> &fold_ipc::WireError {
    r.error.as_ref().expect("an error response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_frame_of_zeros_costs_the_daemon_a_few_frames_of_memory_not_tens() {
    let dir = tempdir("fm");
    let d = ChildDaemon::start(dir.path(), "");
    let hostile = d.install("hostile", &["*:blob"], None);
    let sock = d.socket(&hostile.app_id);
    let mut c = Raw::connect(&sock).await;
    let create = create_schema(&json!({"name": "blob", "fields": {"blob": {"type": "json"}}}));
    let body = signed_raw(&hostile, "create_schema", create.params_json().as_deref()).encode();
    assert!(c.call(&body).await.success);
    let (_, baseline) = d.memory_kib();

    // Not granted: refused from the schema name alone, the params never built.
    for _ in 0..2 {
        let r = c.call(&zeros_frame(&hostile, "secret")).await;
        assert_eq!(error_of(&r).code, ErrorCode::Forbidden, "{r:?}");
    }
    // Granted: refused for holding too many values, before they are built.
    for _ in 0..2 {
        let r = c.call(&zeros_frame(&hostile, "blob")).await;
        let e = error_of(&r);
        assert_eq!(e.code, ErrorCode::BadRequest, "{r:?}");
        assert_eq!(e.limit.as_deref(), Some("max_param_values"), "{r:?}");
    }
    let (_, peak) = d.memory_kib();
    let frame_kib = (DEFAULT_MAX_FRAME / 1024) as u64;
    eprintln!(
        "daemon peak RSS {baseline} KiB -> {peak} KiB after 4 MiB zero frames ({:.1}x the frame)",
        (peak - baseline) as f64 / frame_kib as f64
    );
    assert!(
        peak <= baseline + 3 * frame_kib,
        "peak RSS grew {} KiB for 4 MiB frames: more than 3x the frame",
        peak - baseline
    );

    // Many connections at once: what the app's requests hold is capped by its byte
    // budget (16 MiB by default), however many frames it sends together.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let sock = sock.clone();
        let forbidden = zeros_frame(&hostile, "secret");
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(&sock).await;
            let r = c.call(&forbidden).await;
            assert_eq!(error_of(&r).code, ErrorCode::Forbidden);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, peak_many) = d.memory_kib();
    eprintln!("daemon peak RSS {peak_many} KiB after 8 concurrent 4 MiB frames");
    assert!(
        peak_many <= baseline + 3 * 16 * MIB,
        "8 concurrent frames raised the peak by {} KiB, over 3x the 16 MiB budget",
        peak_many - baseline
    );
}

/// Sequential single-record writes: each one's latency.
async fn timed_writes(conn: &Conn, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let op = create("note", &json!({"text": format!("victim {i}")}));
        let started = Instant::now();
        let r = conn.call(&op).await;
        assert!(r.success, "the victim's write failed: {:?}", r.error);
        took.push(started.elapsed());
    }
    took.sort();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flood_is_rate_limited_and_another_apps_writes_keep_their_latency() {
    let d = start_daemon("").await;
    let flood = d.install("flood", &["*:*"], None).await;
    let victim = d.install("victim", &["*:*"], None).await;
    // The flooding app's own, lower rate (`app limits`); the victim keeps the default.
    let view = d
        .admin(fold_client::admin::protocol::LimitsRequest {
            app: "flood".into(),
            node_limits: fold_client::app_limits::LimitSettings {
                write_rate: Some(20),
                write_burst: Some(10),
                ..Default::default()
            },
        })
        .await
        .unwrap();
    assert_eq!(view.node_limits.write_rate, Some(20), "{view:?}");
    let fc = d.connect(&flood).await;
    let vc = d.connect(&victim).await;
    fc.ok(&create_schema(
        &json!({"name": "note", "fields": {"text": {"type": "string"}}}),
    ))
    .await;
    let alone = timed_writes(&vc, 20).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    let fc = std::sync::Arc::new(fc);
    for t in 0..16 {
        let fc = std::sync::Arc::clone(&fc);
        let stop = std::sync::Arc::clone(&stop);
        flooders.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut hint) = (0u64, 0u64, None);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let op = create(
                    "note",
                    &json!({"text": format!("flood {t} {i} {}", "x".repeat(4096))}),
                );
                let r = fc.call(&op).await;
                if r.success {
                    ok += 1;
                } else {
                    assert_eq!(code(&r), ErrorCode::RateLimited, "{:?}", r.error);
                    limited += 1;
                    hint = r.error.and_then(|e| e.retry_after_ms);
                }
            }
            (ok, limited, hint)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flooded = timed_writes(&vc, 20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut limited, mut hint) = (0, 0, None);
    for f in flooders {
        let (o, l, h) = f.await.unwrap();
        ok += o;
        limited += l;
        hint = hint.or(h);
    }
    let p50 = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "victim write p50 alone {:?}, under the flood {:?} (max {:?}); flood: {ok} applied, {limited} rate_limited",
        p50(&alone),
        p50(&flooded),
        flooded.last().unwrap()
    );
    assert!(limited > 0, "the flood was never rate limited");
    assert!(
        hint.is_some_and(|ms| ms > 0),
        "rate_limited carries a retry hint"
    );
    assert!(
        p50(&flooded) <= p50(&alone) * 3 + Duration::from_millis(20),
        "the victim's median write went from {:?} to {:?}",
        p50(&alone),
        p50(&flooded)
    );
}

pub(crate) fn create_schema(def: &serde_json::Value) -> Operation {
    Operation::parse(
        "create_schema",
        Some(&serde_json::value::to_raw_value(def).unwrap()),
    )
    .unwrap()
}

pub(crate) fn create(schema: &str, data: &serde_json::Value) -> Operation {
    Operation::Mutation(Mutation::Create {
        schema: schema.into(),
        data: data.as_object().cloned().unwrap(),
    })
}
