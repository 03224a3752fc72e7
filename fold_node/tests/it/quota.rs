//! Storage quotas (issue 13): what one app's records may take, enforced by the node in the
//! write's own transaction, and what each app uses (`usage`).

use crate::support::Client;
use fold_ipc::limits::{HistoryPolicy, Quota, RequestLimits, Share, Usage};
use fold_ipc::{ErrorCode, Operation, WireError};
use fold_node::{Listener, Node};
use serde_json::{json, Value};

fn limits(quota: Quota) -> RequestLimits {
    RequestLimits {
        timeout_ms: None,
        share: Share::default(),
        quota,
    }
}

fn quota() -> Quota {
    Quota::UNLIMITED
}

fn parse(operation: &str, params: &Value) -> Operation {
    let params = serde_json::value::to_raw_value(params).unwrap();
    Operation::parse(operation, Some(&params)).unwrap()
}

/// A node in a temp dir with a `note` schema.
async fn node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path().join("node")).unwrap();
    let def = json!({"name": "note", "fields": {"text": {"type": "string"}}});
    node.execute(None, parse("create_schema", &def))
        .await
        .unwrap();
    (dir, node)
}

async fn run(
    node: &Node,
    app: &str,
    q: Option<Quota>,
    operation: &str,
    params: Value,
) -> Result<Value, WireError> {
    let l = q.map(limits);
    let raw = node
        .execute_limited(Some(app), parse(operation, &params), l.as_ref())
        .await?;
    Ok(serde_json::from_str(raw.get()).unwrap())
}

async fn create(node: &Node, app: &str, q: Option<Quota>, text: &str) -> Result<String, WireError> {
    let data = json!({"schema": "note", "action": "create", "data": {"text": text}});
    let r = run(node, app, q, "mutation", data).await?;
    Ok(r["id"].as_str().unwrap().to_string())
}

async fn update(
    node: &Node,
    app: &str,
    q: Option<Quota>,
    id: &str,
    text: &str,
) -> Result<Value, WireError> {
    let data = json!({"schema": "note", "action": "update", "id": id, "data": {"text": text}});
    run(node, app, q, "mutation", data).await
}

async fn delete(node: &Node, app: &str, q: Option<Quota>, id: &str) -> Result<Value, WireError> {
    let data = json!({"schema": "note", "action": "delete", "id": id});
    run(node, app, q, "mutation", data).await
}

async fn count(node: &Node) -> usize {
    let r = run(
        node,
        "node",
        None,
        "query",
        json!({"schema": "note", "fields": []}),
    )
    .await
    .unwrap();
    r["rows"].as_array().unwrap().len()
}

async fn history(node: &Node, id: &str) -> Vec<Value> {
    let r = run(
        node,
        "node",
        None,
        "history",
        json!({"schema": "note", "id": id}),
    )
    .await
    .unwrap();
    r["versions"].as_array().unwrap().clone()
}

/// The bytes a version of `{"text": text}` counts for: its JSON text.
fn bytes(text: &str) -> u64 {
    json!({"text": text}).to_string().len() as u64
}

fn over(e: &WireError, limit: &str) {
    assert_eq!(e.code, ErrorCode::QuotaExceeded, "{e}");
    assert_eq!(e.limit.as_deref(), Some(limit), "{e}");
}

#[tokio::test]
async fn filling_past_max_bytes_is_refused_and_leaves_nothing() {
    let (_dir, node) = node().await;
    let text = "x".repeat(1000);
    let q = Some(Quota {
        max_bytes: Some(5 * bytes(&text)),
        ..quota()
    });
    for _ in 0..5 {
        create(&node, "app_a", q, &text).await.unwrap();
    }
    let e = create(&node, "app_a", q, &text).await.unwrap_err();
    over(&e, "max_bytes");
    assert!(
        e.message.contains(&(5 * bytes(&text)).to_string()),
        "says the limit: {e}"
    );
    assert_eq!(count(&node).await, 5, "the refused create left no record");
    // An update that would grow past the quota is refused too, and leaves no version.
    let id = create(&node, "app_b", None, "b").await.unwrap();
    let e = update(&node, "app_a", q, &id, &text).await.unwrap_err();
    over(&e, "max_bytes");
    assert_eq!(history(&node, &id).await.len(), 1);
    let usage = node.usage("app_a").await.unwrap();
    assert_eq!(
        usage,
        Usage {
            bytes: 5 * bytes(&text),
            records: 5,
            versions: 5
        }
    );
}

#[tokio::test]
async fn max_records_counts_live_records_created_by_the_app() {
    let (_dir, node) = node().await;
    let q = Some(Quota {
        max_records: Some(3),
        ..quota()
    });
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create(&node, "app_a", q, &i.to_string()).await.unwrap());
    }
    over(
        &create(&node, "app_a", q, "4").await.unwrap_err(),
        "max_records",
    );
    assert_eq!(count(&node).await, 3);
    // Updates do not create records.
    update(&node, "app_a", q, &ids[0], "again").await.unwrap();
    // Deleting frees a record.
    delete(&node, "app_a", q, &ids[1]).await.unwrap();
    create(&node, "app_a", q, "4").await.unwrap();
    over(
        &create(&node, "app_a", q, "5").await.unwrap_err(),
        "max_records",
    );
}

#[tokio::test]
async fn max_versions_with_prune_keeps_exactly_n_and_frees_their_bytes() {
    let (_dir, node) = node().await;
    let q = Some(Quota {
        max_versions: Some(3),
        history: HistoryPolicy::Prune,
        ..quota()
    });
    let id = create(&node, "app_a", q, "v1").await.unwrap();
    for i in 2..=10 {
        let r = update(&node, "app_a", q, &id, &format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(r["version"], i);
    }
    let versions = history(&node, &id).await;
    let kept: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [8, 9, 10], "the three newest are kept");
    let usage = node.usage("app_a").await.unwrap();
    assert_eq!(
        usage,
        Usage {
            bytes: bytes("v8") + bytes("v9") + bytes("v10"),
            records: 1,
            versions: 3
        }
    );
}

#[tokio::test]
async fn max_versions_with_refuse_refuses_the_write() {
    let (_dir, node) = node().await;
    let q = Some(Quota {
        max_versions: Some(2),
        history: HistoryPolicy::Refuse,
        ..quota()
    });
    let id = create(&node, "app_a", q, "v1").await.unwrap();
    update(&node, "app_a", q, &id, "v2").await.unwrap();
    over(
        &update(&node, "app_a", q, &id, "v3").await.unwrap_err(),
        "max_versions",
    );
    assert_eq!(history(&node, &id).await.len(), 2);
    // A delete is never refused: it frees quota.
    delete(&node, "app_a", q, &id).await.unwrap();
}

#[tokio::test]
async fn deleting_frees_bytes_and_records() {
    let (_dir, node) = node().await;
    let text = "x".repeat(1000);
    let q = Some(Quota {
        max_bytes: Some(3 * bytes(&text)),
        ..quota()
    });
    let a = create(&node, "app_a", q, &text).await.unwrap();
    let b = create(&node, "app_a", q, &text).await.unwrap();
    create(&node, "app_a", q, &text).await.unwrap();
    over(
        &create(&node, "app_a", q, &text).await.unwrap_err(),
        "max_bytes",
    );
    delete(&node, "app_a", q, &a).await.unwrap();
    delete(&node, "app_a", q, &b).await.unwrap();
    assert_eq!(node.usage("app_a").await.unwrap().bytes, bytes(&text));
    assert_eq!(node.usage("app_a").await.unwrap().records, 1);
    create(&node, "app_a", q, &text).await.unwrap();
    create(&node, "app_a", q, &text).await.unwrap();
    // The deleted record's history ends with who deleted it.
    let h = history(&node, &a).await;
    assert_eq!(h.last().unwrap()["action"], "delete");
}

#[tokio::test]
async fn one_full_tenant_does_not_affect_another() {
    let (_dir, node) = node().await;
    let q = Some(Quota {
        max_bytes: Some(bytes("full")),
        max_records: Some(1),
        ..quota()
    });
    create(&node, "app_a", q, "full").await.unwrap();
    // Both limits are hit; `max_bytes` is checked first.
    over(
        &create(&node, "app_a", q, "more").await.unwrap_err(),
        "max_bytes",
    );
    over(
        &create(&node, "app_a", q, "").await.unwrap_err(),
        "max_bytes",
    );
    for i in 0..5 {
        create(
            &node,
            "app_b",
            q.map(|q| Quota {
                max_records: Some(5),
                max_bytes: None,
                ..q
            }),
            &i.to_string(),
        )
        .await
        .unwrap();
    }
    // Versions count against the app that wrote them, records against the one that made them.
    let id = create(&node, "app_c", None, "c").await.unwrap();
    update(&node, "app_b", None, &id, "written by b")
        .await
        .unwrap();
    assert_eq!(
        node.usage("app_a").await.unwrap(),
        Usage {
            bytes: bytes("full"),
            records: 1,
            versions: 1
        }
    );
    let b = node.usage("app_b").await.unwrap();
    assert_eq!((b.records, b.versions), (5, 6));
    let c = node.usage("app_c").await.unwrap();
    assert_eq!(
        c,
        Usage {
            bytes: bytes("c"),
            records: 1,
            versions: 1
        }
    );
    assert_eq!(node.usage("app_nobody").await.unwrap(), Usage::default());
}

#[tokio::test]
async fn no_limits_means_unlimited_as_before() {
    let (_dir, node) = node().await;
    let text = "x".repeat(64 * 1024);
    let id = create(&node, "app_a", None, &text).await.unwrap();
    for _ in 0..100 {
        update(&node, "app_a", None, &id, &text).await.unwrap();
    }
    assert_eq!(history(&node, &id).await.len(), 101);
    delete(&node, "app_a", None, &id).await.unwrap();
    assert_eq!(
        history(&node, &id).await.len(),
        102,
        "history is kept without a quota"
    );
    // The default quota is generous: a few records fit.
    let q = Some(Quota::default());
    create(&node, "app_a", q, "fits").await.unwrap();
}

#[tokio::test]
async fn usage_survives_reopen_and_is_recounted_for_an_old_layout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let expected;
    {
        let node = Node::open(&data).unwrap();
        let def = json!({"name": "note", "fields": {"text": {"type": "string"}}});
        node.execute(None, parse("create_schema", &def))
            .await
            .unwrap();
        let id = create(&node, "app_a", None, "one").await.unwrap();
        update(&node, "app_b", None, &id, "two").await.unwrap();
        create(&node, "app_b", None, "three").await.unwrap();
        expected = (
            node.usage("app_a").await.unwrap(),
            node.usage("app_b").await.unwrap(),
        );
        assert_eq!(
            expected.0,
            Usage {
                bytes: bytes("one"),
                records: 1,
                versions: 1
            }
        );
        assert_eq!(
            expected.1,
            Usage {
                bytes: bytes("two") + bytes("three"),
                records: 1,
                versions: 2
            }
        );
    }
    let node = Node::open(&data).unwrap();
    assert_eq!(
        (
            node.usage("app_a").await.unwrap(),
            node.usage("app_b").await.unwrap()
        ),
        expected
    );
    drop(node);
    // A database of layout 1 (before usage was kept) is counted when it is opened.
    {
        let db = rusqlite::Connection::open(data.join(fold_node::store::DB_FILE)).unwrap();
        db.execute_batch("DROP TABLE usage; PRAGMA user_version = 1;")
            .unwrap();
    }
    let node = Node::open(&data).unwrap();
    assert_eq!(
        (
            node.usage("app_a").await.unwrap(),
            node.usage("app_b").await.unwrap()
        ),
        expected
    );
}

#[tokio::test]
async fn the_daemon_reads_usage_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path().join("node")).unwrap();
    let def = json!({"name": "note", "fields": {"text": {"type": "string"}}});
    node.execute(None, parse("create_schema", &def))
        .await
        .unwrap();
    create(&node, "app_a", None, "one").await.unwrap();
    let socket = dir.path().join("sock").join("node.sock");
    let listener = fold_node::bind_unix(&socket).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fold_node::serve(
        Listener::Unix(listener),
        node.clone(),
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut c = Client::unix(&socket).await;
    let usage = c.ok("usage", json!({"app_id": "app_a"})).await;
    assert_eq!(
        usage,
        json!({"bytes": bytes("one"), "records": 1, "versions": 1})
    );
    c.bad("usage", json!({}), "params.app_id").await;
    // It is not an app operation.
    assert!(Operation::parse("usage", None).is_err());
    let _ = stop.send(());
    task.await.unwrap();
}
