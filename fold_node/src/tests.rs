//! In-process tests of the node: things that need the internals (query plans) or are
//! quicker to check without a socket. The socket-level suite is `tests/it`.

use crate::Node;
use fold_ipc::operation::{Mutation, MutationResult, Record};
use fold_ipc::query::{and, eq, gt, prefix, Query, QueryResult};
use fold_ipc::schema::{FieldDef, FieldType, SchemaDef};
use fold_ipc::{Operation, WireError};
use serde_json::{json, Value};

fn def(name: &str, fields: &[(&str, FieldType, bool, bool)]) -> SchemaDef {
    SchemaDef {
        name: name.into(),
        fields: fields
            .iter()
            .map(|(n, ty, required, indexed)| {
                (
                    (*n).to_string(),
                    FieldDef {
                        ty: *ty,
                        required: *required,
                        indexed: *indexed,
                    },
                )
            })
            .collect(),
    }
}

fn record(v: &Value) -> Record {
    v.as_object().cloned().unwrap()
}

async fn run(node: &Node, op: Operation) -> Result<Value, WireError> {
    let raw = node.execute(Some("test_app"), op).await?;
    Ok(serde_json::from_str(raw.get()).unwrap())
}

async fn setup() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path().join("data")).unwrap();
    let d = def(
        "post",
        &[
            ("title", FieldType::String, true, true),
            ("n", FieldType::Int, false, false),
            ("ok", FieldType::Bool, false, false),
            ("meta", FieldType::Json, false, false),
        ],
    );
    run(&node, Operation::CreateSchema(d)).await.unwrap();
    (dir, node)
}

async fn create(node: &Node, data: Value) -> MutationResult {
    let v = run(
        node,
        Operation::Mutation(Mutation::Create {
            schema: "post".into(),
            data: record(&data),
        }),
    )
    .await
    .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn query(node: &Node, q: Query) -> QueryResult {
    serde_json::from_value(run(node, Operation::Query(q)).await.unwrap()).unwrap()
}

#[tokio::test]
async fn rows_keep_json_types() {
    let (_dir, node) = setup().await;
    let r = create(
        &node,
        json!({"title": "a\"b", "n": 3, "ok": true, "meta": {"x": [1, 2.5]}}),
    )
    .await;
    let page = query(&node, Query::new("post")).await;
    assert_eq!(page.rows.len(), 1);
    assert_eq!(
        Value::Object(page.rows[0].clone()),
        json!({"id": r.id, "title": "a\"b", "n": 3, "ok": true, "meta": {"x": [1, 2.5]}})
    );
    let page = query(
        &node,
        Query::new("post").fields(["ok", "_version", "_created_by"]),
    )
    .await;
    assert_eq!(
        Value::Object(page.rows[0].clone()),
        json!({"id": r.id, "ok": true, "_version": 1, "_created_by": "test_app"})
    );
}

fn plan_uses(plan: &[String], index: &str) -> bool {
    plan.iter().any(|l| l.contains(index))
}

#[tokio::test]
async fn indexed_fields_use_their_index_and_others_do_not() {
    let (_dir, node) = setup().await;
    for i in 0..50 {
        create(&node, json!({"title": format!("t{i}"), "n": i})).await;
    }
    node.analyze().await.unwrap();
    let plan = node
        .explain(Query::new("post").filter(eq("title", "t3")))
        .await
        .unwrap();
    assert!(
        plan_uses(&plan, "USING INDEX \"fx_1_title\"")
            || plan_uses(&plan, "USING INDEX fx_1_title"),
        "{plan:?}"
    );
    let plan = node
        .explain(Query::new("post").filter(prefix("title", "t1")))
        .await
        .unwrap();
    assert!(plan_uses(&plan, "fx_1_title"), "{plan:?}");
    let plan = node
        .explain(
            Query::new("post")
                .filter(and([eq("title", "t3"), gt("n", 1)]))
                .order_by("title"),
        )
        .await
        .unwrap();
    assert!(plan_uses(&plan, "fx_1_title"), "{plan:?}");
    let plan = node
        .explain(Query::new("post").filter(eq("n", 3)))
        .await
        .unwrap();
    assert!(
        !plan_uses(&plan, "fx_"),
        "unindexed field scans the schema's rows: {plan:?}"
    );
    let page = query(&node, Query::new("post").filter(eq("title", "t3"))).await;
    assert_eq!(page.rows.len(), 1);
}
