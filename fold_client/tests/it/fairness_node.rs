//! Fair sharing of the node (issue 13): the expensive-query neighbour and the storage
//! quota, through the daemon.

use crate::abuse::signed_raw;
use crate::fairness::{create, create_schema};
use crate::support::start_daemon;
use fold_ipc::{ErrorCode, Operation};
use serde_json::json;
use std::time::{Duration, Instant};

/// The params of an `or` of `n` `contains` filters with needles of `len` bytes that
/// almost match the 64 KiB `body` of the hostile app's records: the reproduction
/// is 200 needles of 2,000 bytes; 16 of 1,000 stay within the node's filter limits.
fn expensive_query(n: usize, len: usize) -> String {
    let needle = format!("{}b", "a".repeat(len - 1));
    let filters: Vec<_> = (0..n)
        .map(|_| json!({"op": "contains", "field": "body", "value": needle}))
        .collect();
    json!({"schema": "doc", "filter": {"op": "or", "filters": filters}, "limit": 1000}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expensive_query_neighbour_does_not_stall_another_apps_point_reads() {
    let d = start_daemon("").await;
    let hostile = d
        .connect(&d.install("hostile", &["*:doc"], None).await)
        .await;
    let victim = d
        .connect(&d.install("victim", &["*:mine"], None).await)
        .await;
    hostile
        .ok(&create_schema(
            &json!({"name": "doc", "fields": {"body": {"type": "string"}}}),
        ))
        .await;
    for _ in 0..8 {
        hostile
            .ok(&create("doc", &json!({"body": "a".repeat(64 * 1024)})))
            .await;
    }
    victim
        .ok(&create_schema(
            &json!({"name": "mine", "fields": {"n": {"type": "int"}}}),
        ))
        .await;
    let id = victim.ok(&create("mine", &json!({"n": 1}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let point = Operation::Query(
        fold_ipc::query::Query::new("mine").filter(fold_ipc::query::eq("id", id.as_str())),
    );
    let mut alone = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        victim.ok(&point).await;
        alone.push(started.elapsed());
    }
    alone.sort();

    let hostile = std::sync::Arc::new(hostile);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    // As in the issue: four concurrent expensive queries, sent again as soon as answered.
    for _ in 0..4 {
        let hostile = std::sync::Arc::clone(&hostile);
        let stop = std::sync::Arc::clone(&stop);
        attackers.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let (n, len) = if i % 2 == 0 { (200, 2000) } else { (16, 1000) };
                i += 1;
                let params = expensive_query(n, len);
                let request = signed_raw(&hostile.creds, "query", Some(&params));
                let r = hostile.send(&request).await;
                codes.push((r.error.map(|e| e.code), started.elapsed()));
            }
            codes
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut attacked = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let r = victim.call(&point).await;
        assert!(r.success, "the victim's read failed: {:?}", r.error);
        attacked.push(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for a in attackers {
        answers.extend(a.await.unwrap());
    }
    attacked.sort();
    let p99 = |v: &[Duration]| v[v.len() * 99 / 100];
    let slowest_attack = answers.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "victim point read p99 alone {:?}, beside the expensive queries {:?}; {} hostile queries, slowest answered in {slowest_attack:?}, codes {:?}",
        p99(&alone),
        p99(&attacked),
        answers.len(),
        answers
            .iter()
            .map(|(c, _)| c.map(ErrorCode::as_str))
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        answers.iter().all(|(c, _)| *c != Some(ErrorCode::Timeout)),
        "an expensive query ran into the request timeout instead of being stopped"
    );
    assert!(
        // A debug build on two cores, with this process also signing the attack: the
        // bound is against the old code's 5 s stall (every read slot held); the release
        // figure against the 2x goal is `fold_bench`'s "fair" row.
        p99(&attacked) <= p99(&alone) * 4 + Duration::from_millis(400),
        "the victim's p99 went from {:?} to {:?}",
        p99(&alone),
        p99(&attacked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_past_the_quota_is_refused_and_leaves_the_other_apps_alone() {
    let d = start_daemon("").await;
    let mut install = fold_client::admin::protocol::InstallRequest::new("filler", "/bin/true");
    install.grants = vec!["*:*".parse().unwrap()];
    install.direct = true;
    install.node_limits.max_bytes = Some(64 * 1024);
    let installed = d.admin(install).await.unwrap();
    let filler_creds = fold_ipc::Credentials::load(&installed.app.credentials).unwrap();
    let filler = d.connect(&filler_creds).await;
    let other = d.connect(&d.install("other", &["*:*"], None).await).await;
    filler
        .ok(&create_schema(
            &json!({"name": "blob", "fields": {"body": {"type": "string"}}}),
        ))
        .await;
    let mut stored = 0;
    let refusal = loop {
        let r = filler
            .call(&create("blob", &json!({"body": "x".repeat(10 * 1024)})))
            .await;
        if !r.success {
            break r.error.unwrap();
        }
        stored += 1;
        assert!(
            stored < 100,
            "64 KiB of quota took {stored} records of 10 KiB"
        );
    };
    assert_eq!(refusal.code, ErrorCode::QuotaExceeded, "{refusal:?}");
    assert_eq!(refusal.limit.as_deref(), Some("max_bytes"), "{refusal:?}");
    assert!(
        (5..=6).contains(&stored),
        "{stored} records of 10 KiB fit in 64 KiB"
    );
    let page = filler
        .ok(&Operation::Query(fold_ipc::query::Query::new("blob")))
        .await;
    assert_eq!(
        page["rows"].as_array().unwrap().len(),
        stored,
        "the refused write left nothing behind"
    );
    // Another app's writes are not counted against it.
    for _ in 0..10 {
        other
            .ok(&create("blob", &json!({"body": "y".repeat(10 * 1024)})))
            .await;
    }
    let show = d
        .admin(fold_client::admin::protocol::ShowRequest {
            app: "filler".into(),
        })
        .await
        .unwrap();
    let fold_client::admin::protocol::UsageView::Counted { bytes: used, .. } = show.usage else {
        panic!("no usage in {show:?}");
    };
    assert!(
        used <= 64 * 1024 && used >= stored as u64 * 10 * 1024,
        "{show:?}"
    );
    assert_eq!(show.app.node_limits.max_bytes, Some(64 * 1024), "{show:?}");
}
