//! Query cost bounds (issue 13): a query within the protocol's limits cannot make the node
//! work for seconds. Each test is an attack that ran for many seconds before these bounds.

use crate::support::start;
use fold_ipc::ErrorCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Generous: the attacks below took many seconds (minutes in a debug build) before.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn contains(needle: &str) -> Value {
    json!({"op": "contains", "field": "text", "value": needle})
}

/// 16 records whose `text` is 64 KiB of `a`, plus one short record.
async fn blobs(c: &mut crate::support::Client) {
    c.create_schema(json!({"name": "blob", "fields": {"text": {"type": "string"}}}))
        .await;
    let text = "a".repeat(64 * 1024);
    for _ in 0..16 {
        c.create("blob", json!({"text": text})).await;
    }
    c.create("blob", json!({"text": "short"})).await;
}

#[tokio::test]
async fn the_issue_13_contains_attack_is_refused_at_once() {
    let node = start().await;
    let mut c = node.client().await;
    blobs(&mut c).await;
    // The attack as reported: an `or` of 200 `contains`, each needle 2,000 bytes that
    // almost match everywhere.
    let needle = format!("{}b", "a".repeat(1999));
    let filters: Vec<Value> = (0..200).map(|_| contains(&needle)).collect();
    let started = Instant::now();
    let e = c
        .err(
            "query",
            json!({"schema": "blob", "filter": {"op": "or", "filters": filters}, "limit": 100}),
            ErrorCode::TooExpensive,
        )
        .await;
    assert!(started.elapsed() < ANSWER_WITHIN, "{:?}", started.elapsed());
    assert_eq!(e.limit.as_deref(), Some("max_filter_value_bytes"), "{e}");
    assert_eq!(
        e.field.as_deref(),
        Some("params.filter.filters[0].value"),
        "{e}"
    );
    node.stop().await;
}

#[tokio::test]
async fn contains_within_the_limits_runs_in_linear_time() {
    let node = start().await;
    let mut c = node.client().await;
    blobs(&mut c).await;
    // Within every size limit: 16 needles of 1,000 bytes (16,000 bytes in all). With
    // SQLite's `instr` each needle cost 64 Ki x 1,000 byte comparisons per record.
    let needle = format!("{}b", "a".repeat(999));
    let filters: Vec<Value> = (0..16).map(|_| contains(&needle)).collect();
    let started = Instant::now();
    let page = c
        .query(json!({"schema": "blob", "filter": {"op": "or", "filters": filters}, "limit": 100}))
        .await;
    assert!(started.elapsed() < ANSWER_WITHIN, "{:?}", started.elapsed());
    assert_eq!(page["rows"], json!([]), "no record holds the needle");
    // The same needles, one of them present, find what they should.
    let mut filters: Vec<Value> = (0..15).map(|_| contains(&needle)).collect();
    filters.push(contains(&"a".repeat(1000)));
    let page = c
        .query(json!({"schema": "blob", "fields": [], "filter": {"op": "or", "filters": filters}}))
        .await;
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(16));
    node.stop().await;
}

#[tokio::test]
async fn contains_keeps_its_semantics() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(
        json!({"name": "note", "fields": {"text": {"type": "string"}, "n": {"type": "int"}}}),
    )
    .await;
    let plain = c.create("note", json!({"text": "Hello, wörld"})).await;
    let empty = c.create("note", json!({"text": ""})).await;
    let absent = c.create("note", json!({"n": 1})).await;
    let ids = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let q = |filter: Value| json!({"schema": "note", "filter": filter});
    // Case-sensitive byte substring of the UTF-8 text.
    assert_eq!(c.ids(q(contains("wörld"))).await, ids(&[&plain]));
    assert_eq!(c.ids(q(contains("ö"))).await, ids(&[&plain]));
    assert_eq!(c.ids(q(contains("hello"))).await, ids(&[]));
    assert_eq!(c.ids(q(contains("Hello, wörld!"))).await, ids(&[]));
    // The empty needle is in every string; a record without the field matches nothing.
    assert_eq!(c.ids(q(contains(""))).await, ids(&[&plain, &empty]));
    // `not` matches exactly what `contains` does not, absent values included.
    assert_eq!(
        c.ids(q(json!({"op": "not", "filter": contains("ö")})))
            .await,
        ids(&[&empty, &absent])
    );
    node.stop().await;
}

#[tokio::test]
async fn filters_over_a_size_limit_are_too_expensive_naming_the_limit() {
    let node = start().await;
    let mut c = node.client().await;
    blobs(&mut c).await;
    let q = |filter: Value| json!({"schema": "blob", "filter": filter});
    let over = |limit: &'static str, field: &'static str, filter: Value| (limit, field, filter);
    let big = "x".repeat(fold_ipc::query::MAX_FILTER_VALUE_BYTES + 1);
    let needle = "x".repeat(1000);
    let mut deep = contains("a");
    for _ in 0..fold_ipc::query::MAX_FILTER_DEPTH {
        deep = json!({"op": "not", "filter": deep});
    }
    let cases = [
        over(
            "max_filter_value_bytes",
            "params.filter.value",
            contains(&big),
        ),
        over(
            "max_filter_value_bytes",
            "params.filter.values[1]",
            json!({"op": "in", "field": "text", "values": ["a", big]}),
        ),
        over(
            "max_filter_bytes",
            "params.filter.filters[16].value",
            json!({"op": "or", "filters": (0..17).map(|_| contains(&needle)).collect::<Vec<_>>()}),
        ),
        over(
            "max_filter_bytes",
            "params.filter.values[819]",
            json!({"op": "in", "field": "text", "values": (0..1000).map(|i| format!("{i:020}")).collect::<Vec<_>>()}),
        ),
        over("max_filter_depth", "params.filter", deep),
        over(
            "max_filter_nodes",
            "params.filter",
            json!({"op": "or", "filters": (0..fold_ipc::query::MAX_FILTER_NODES).map(|_| contains("a")).collect::<Vec<_>>()}),
        ),
        over(
            "max_in_values",
            "params.filter.values",
            json!({"op": "in", "field": "text", "values": (0..=fold_ipc::query::MAX_IN_VALUES).map(|i| i.to_string()).collect::<Vec<_>>()}),
        ),
    ];
    for (limit, field, filter) in cases {
        let e = c.err("query", q(filter), ErrorCode::TooExpensive).await;
        assert_eq!(e.limit.as_deref(), Some(limit), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
    // Right at the limits is fine.
    let at = "a".repeat(fold_ipc::query::MAX_FILTER_VALUE_BYTES);
    c.query(q(contains(&at))).await;
    node.stop().await;
}

#[tokio::test]
async fn json_values_nest_at_most_125_levels() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(json!({"name": "doc", "fields": {"meta": {"type": "json"}}}))
        .await;
    let body = |levels: usize| {
        // Built as text: serde_json's own recursion limit would refuse to build the value.
        format!(
            r#"{{"v":1,"request_id":"r","operation":"mutation","params":{{"schema":"doc","action":"create","data":{{"meta":{}{}}}}}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    c.send_raw(body(125).as_bytes()).await;
    let ok = c.recv().await;
    assert!(ok.success, "{:?}", ok.error);
    c.send_raw(body(126).as_bytes()).await;
    let refused = c.recv().await;
    assert!(!refused.success);
    assert_eq!(refused.error.unwrap().code, ErrorCode::BadRequest);
    node.stop().await;
}
