//! A read whose caller gave up stops at once: it neither keeps a core busy nor holds one of
//! the node's read slots for the reads of others (the expensive-query attack of issue 13).

use fold_ipc::Operation;
use fold_node::{Node, NodeConfig};
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) async fn call(node: &Node, operation: &str, params: Value) -> Value {
    let params = serde_json::value::to_raw_value(&params).unwrap();
    let op = Operation::parse(operation, Some(&params)).unwrap();
    let raw = node.execute(Some("app_test"), op).await.unwrap();
    serde_json::from_str(raw.get()).unwrap()
}

pub(crate) fn parse(operation: &str, params: &Value) -> Operation {
    let params = serde_json::value::to_raw_value(params).unwrap();
    Operation::parse(operation, Some(&params)).unwrap()
}

#[tokio::test]
async fn an_abandoned_expensive_query_frees_its_read_slot_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().join("node"));
    config.readers = 1; // the attacker's query holds the only read slot
    config.max_vm_steps = u64::MAX; // no work budget: only abandonment stops it
    let node = Node::open_with(config).unwrap();
    call(
        &node,
        "create_schema",
        json!({"name": "blob", "fields": {"text": {"type": "string"}}}),
    )
    .await;
    let text = "a".repeat(1 << 20);
    for _ in 0..16 {
        call(
            &node,
            "mutation",
            json!({"schema": "blob", "action": "create", "data": {"text": text}}),
        )
        .await;
    }
    let victim = call(
        &node,
        "mutation",
        json!({"schema": "blob", "action": "create", "data": {"text": "short"}}),
    )
    .await;
    let victim_id = victim["id"].as_str().unwrap().to_string();

    // Within the query limits: an `or` of 250 `eq` and `contains` over 1 MiB fields (each
    // reads the whole field out of the record).
    let filters: Vec<Value> = (0..250)
        .map(|i| json!({"op": if i % 2 == 0 { "eq" } else { "contains" }, "field": "text", "value": "b"}))
        .collect();
    let heavy = parse(
        "query",
        &json!({"schema": "blob", "filter": {"op": "or", "filters": filters}, "limit": 100}),
    );
    // The caller (the daemon's proxy) gives up, as it does at its request timeout.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), node.execute(None, heavy)).await;
    assert!(
        gave_up.is_err(),
        "the expensive query was meant to run long"
    );

    // The victim's one-row read gets the slot: it does not wait for the abandoned scan.
    let point = parse(
        "query",
        &json!({"schema": "blob", "filter": {"op": "eq", "field": "id", "value": victim_id}}),
    );
    let answered = tokio::time::timeout(Duration::from_secs(5), node.execute(None, point))
        .await
        .expect("the read slot is still held by the abandoned query")
        .unwrap();
    let page: Value = serde_json::from_str(answered.get()).unwrap();
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(1), "{page}");
}
