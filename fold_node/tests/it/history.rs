//! History and provenance.

use crate::support::{post_schema, start};
use fold_ipc::operation::HistoryResult;
use fold_ipc::ErrorCode;
use serde_json::json;

#[tokio::test]
async fn every_write_is_an_immutable_version() {
    let node = start().await;
    let mut app = node.client().await;
    app.app_id = Some("social".into());
    let mut direct = node.client().await; // no app_id: the node's own identity
    direct.create_schema(post_schema()).await;

    let before = now_ms();
    let id = app.create("post", json!({"title": "v1", "likes": 1})).await;
    direct.update("post", &id, json!({"likes": 2})).await;
    app.update("post", &id, json!({"title": "v3", "likes": null}))
        .await;
    let h: HistoryResult =
        serde_json::from_value(app.ok("history", json!({"schema": "post", "id": id})).await)
            .unwrap();
    let v = &h.versions;
    assert_eq!(v.len(), 3);
    assert_eq!(v.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        v.iter().map(|v| v.writer.as_str()).collect::<Vec<_>>(),
        ["social", "node", "social"]
    );
    let data: Vec<_> = v
        .iter()
        .map(|v| serde_json::to_value(&v.data).unwrap())
        .collect();
    assert_eq!(
        data,
        [
            json!({"title": "v1", "likes": 1}),
            json!({"title": "v1", "likes": 2}),
            json!({"title": "v3"})
        ]
    );
    assert!(v.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    assert!(v[0].timestamp >= before && v[2].timestamp <= now_ms());

    // Provenance in rows, when asked for.
    let row = &app
        .query(json!({"schema": "post", "fields":
            ["_created_by", "_updated_by", "_created_at", "_updated_at", "_version"]}))
        .await["rows"][0];
    assert_eq!(row["_created_by"], json!("social"));
    assert_eq!(row["_updated_by"], json!("social"));
    assert_eq!(row["_version"], json!(3));
    assert_eq!(row["_created_at"], json!(v[0].timestamp));
    assert_eq!(row["_updated_at"], json!(v[2].timestamp));
    // ... and filterable.
    assert_eq!(
        app.ids(json!({"schema": "post", "filter": {"op": "eq", "field": "_created_by", "value": "social"}}))
            .await,
        std::slice::from_ref(&id)
    );
    assert!(app
        .ids(json!({"schema": "post", "filter": {"op": "eq", "field": "_created_by", "value": "node"}}))
        .await
        .is_empty());

    // A delete is a version too, and the history outlives the record.
    direct
        .ok(
            "mutation",
            json!({"schema": "post", "action": "delete", "id": id}),
        )
        .await;
    let h = app.ok("history", json!({"schema": "post", "id": id})).await;
    let last = &h["versions"][3];
    assert_eq!(last["action"], json!("delete"));
    assert_eq!(last["writer"], json!("node"));
    assert!(last.get("data").is_none(), "{last}");
    node.stop().await;
}

#[tokio::test]
async fn history_of_unknown_records_is_not_found() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    let ghost = uuid::Uuid::now_v7().to_string();
    c.err(
        "history",
        json!({"schema": "post", "id": ghost}),
        ErrorCode::NotFound,
    )
    .await;
    c.err(
        "history",
        json!({"schema": "nope", "id": ghost}),
        ErrorCode::NotFound,
    )
    .await;
    c.bad(
        "history",
        json!({"schema": "post", "id": "a/b"}),
        "params.id",
    )
    .await;
    node.stop().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
