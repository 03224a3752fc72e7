//! The work budget of a read (issue 13): SQLite virtual-machine steps, plus the bytes a
//! `contains` scans, counted over the whole read (inline attempt and rerun on the pool).

use fold_ipc::{ErrorCode, Operation, WireError};
use fold_node::{Node, NodeConfig};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn parse(operation: &str, params: &Value) -> Operation {
    let params = serde_json::value::to_raw_value(params).unwrap();
    Operation::parse(operation, Some(&params)).unwrap()
}

async fn call(node: &Node, operation: &str, params: Value) -> Result<Value, WireError> {
    let raw = node
        .execute(Some("app_test"), parse(operation, &params))
        .await?;
    Ok(serde_json::from_str(raw.get()).unwrap())
}

async fn node_with(max_vm_steps: u64) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().join("node"));
    config.max_vm_steps = max_vm_steps;
    let node = Node::open_with(config).unwrap();
    let def = json!({"name": "item", "fields": {"text": {"type": "string"}, "n": {"type": "int"}}});
    call(&node, "create_schema", def).await.unwrap();
    (dir, node)
}

fn over_budget(e: &WireError) {
    assert_eq!(e.code, ErrorCode::TooExpensive, "{e}");
    assert_eq!(e.limit.as_deref(), Some("max_vm_steps"), "{e}");
    assert!(
        e.message.contains("narrow"),
        "tells the app what to do: {e}"
    );
}

#[tokio::test]
async fn a_query_over_the_work_budget_is_too_expensive() {
    let (_dir, node) = node_with(20_000).await;
    for n in 0..300 {
        call(
            &node,
            "mutation",
            json!({"schema": "item", "action": "create", "data": {"n": n}}),
        )
        .await
        .unwrap();
    }
    // 200 comparisons on each of 300 records: far more than 20,000 steps.
    let wide: Vec<Value> = (0..200)
        .map(|i| json!({"op": "eq", "field": "n", "value": -1 - i}))
        .collect();
    for limit in [10, 100] {
        // Short pages start inline and are rerun on the pool; long ones start there.
        let q = json!({"schema": "item", "filter": {"op": "or", "filters": wide}, "limit": limit});
        over_budget(&call(&node, "query", q).await.unwrap_err());
    }
    // A cheap read under the same budget is answered, and the connection is reusable.
    let page = call(&node, "query", json!({"schema": "item", "limit": 5}))
        .await
        .unwrap();
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn the_bytes_contains_scans_count_into_the_budget() {
    let (_dir, node) = node_with(50_000).await;
    let text = "a".repeat(1 << 20);
    for _ in 0..4 {
        call(
            &node,
            "mutation",
            json!({"schema": "item", "action": "create", "data": {"text": text}}),
        )
        .await
        .unwrap();
    }
    // A handful of VM steps, but 4 MiB scanned: 65,536 steps at 64 bytes a step.
    let q = json!({"schema": "item", "fields": [], "filter": {"op": "contains", "field": "text", "value": "b"}});
    over_budget(&call(&node, "query", q).await.unwrap_err());
    // The same scan by `prefix` (no bytes counted) is within the budget.
    let q = json!({"schema": "item", "fields": [], "filter": {"op": "prefix", "field": "text", "value": "b"}});
    assert_eq!(call(&node, "query", q).await.unwrap()["rows"], json!([]));
}

#[tokio::test]
async fn within_the_default_budget_a_full_page_is_answered() {
    let (_dir, node) = node_with(fold_node::node::DEFAULT_MAX_VM_STEPS).await;
    for n in 0..2000 {
        call(&node, "mutation", json!({"schema": "item", "action": "create", "data": {"n": n, "text": format!("item {n}")}}))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let q = json!({"schema": "item", "order_by": [{"field": "text", "desc": true}], "limit": 1000,
        "filter": {"op": "contains", "field": "text", "value": "item"}});
    let page = call(&node, "query", q).await.unwrap();
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(1000));
    assert!(started.elapsed() < Duration::from_secs(20));
}
