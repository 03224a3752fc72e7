//! Mutations: generated ids, partial updates, deletes, and value validation.

use crate::support::{post_schema, start};
use fold_ipc::ErrorCode;
use serde_json::json;

#[tokio::test]
async fn create_returns_real_unique_ids() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    let r = c
        .ok(
            "mutation",
            json!({"schema": "post", "action": "create", "data": {"title": "a"}}),
        )
        .await;
    assert_eq!(r["version"], json!(1));
    let first = r["id"].as_str().unwrap().to_string();
    let parsed = uuid::Uuid::parse_str(&first).expect("a UUID");
    assert_eq!(parsed.get_version_num(), 7);
    let mut ids = vec![first];
    for i in 0..50 {
        ids.push(c.create("post", json!({"title": format!("t{i}")})).await);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    assert!(!ids.contains(&"123".to_string()));
    // Ids are time-ordered: the default order is creation order.
    assert_eq!(c.ids(json!({"schema": "post"})).await, ids);
    node.stop().await;
}

#[tokio::test]
async fn update_patches_and_null_clears() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    let id = c
        .create(
            "post",
            json!({"title": "a", "body": "b", "likes": 1, "meta": {"k": [1]}}),
        )
        .await;
    let r = c
        .update("post", &id, json!({"likes": 2, "body": null}))
        .await;
    assert_eq!(r, json!({"id": id, "version": 2}));
    let row = &c.query(json!({"schema": "post"})).await["rows"][0];
    assert_eq!(
        row,
        &json!({"id": id, "title": "a", "body": null, "likes": 2, "score": null,
                "draft": null, "at": null, "meta": {"k": [1]}})
    );
    // Clearing a required field is refused and changes nothing.
    c.bad(
        "mutation",
        json!({"schema": "post", "action": "update", "id": id, "data": {"title": null}}),
        "params.data.title",
    )
    .await;
    // An update with a bad value changes nothing either.
    c.bad(
        "mutation",
        json!({"schema": "post", "action": "update", "id": id, "data": {"likes": 3, "draft": "yes"}}),
        "params.data.draft",
    )
    .await;
    let row = &c
        .query(json!({"schema": "post", "fields": ["title", "likes", "_version"]}))
        .await["rows"][0];
    assert_eq!(
        row,
        &json!({"id": id, "title": "a", "likes": 2, "_version": 2})
    );
    node.stop().await;
}

#[tokio::test]
async fn delete_and_missing_records() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    let id = c.create("post", json!({"title": "a"})).await;
    let r = c
        .ok(
            "mutation",
            json!({"schema": "post", "action": "delete", "id": id}),
        )
        .await;
    assert_eq!(r, json!({"id": id, "version": 2}));
    assert_eq!(
        c.query(json!({"schema": "post"})).await,
        json!({"rows": []})
    );
    for action in [
        json!({"action": "delete"}),
        json!({"action": "update", "data": {"title": "x"}}),
    ] {
        let mut p = json!({"schema": "post", "id": id});
        p.as_object_mut()
            .unwrap()
            .extend(action.as_object().unwrap().clone());
        c.err("mutation", p, ErrorCode::NotFound).await;
    }
    let ghost = uuid::Uuid::now_v7().to_string();
    c.err(
        "mutation",
        json!({"schema": "post", "action": "delete", "id": ghost}),
        ErrorCode::NotFound,
    )
    .await;
    c.err(
        "mutation",
        json!({"schema": "nope", "action": "create", "data": {}}),
        ErrorCode::NotFound,
    )
    .await;
    c.bad(
        "mutation",
        json!({"schema": "post", "action": "delete", "id": "../x"}),
        "params.id",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn values_are_validated_against_the_schema() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    let create = |data| json!({"schema": "post", "action": "create", "data": data});
    let cases = [
        (json!({"title": "a", "bogus": 1}), "params.data.bogus"),
        (json!({"body": "no title"}), "params.data.title"),
        (json!({"title": null}), "params.data.title"),
        (json!({"title": 5}), "params.data.title"),
        (json!({"title": "a", "likes": 1.5}), "params.data.likes"),
        (json!({"title": "a", "likes": "1"}), "params.data.likes"),
        (
            json!({"title": "a", "likes": 9_223_372_036_854_775_808u64}),
            "params.data.likes",
        ),
        (json!({"title": "a", "score": "1.5"}), "params.data.score"),
        (json!({"title": "a", "draft": 1}), "params.data.draft"),
        (json!({"title": "a", "at": 1.5}), "params.data.at"),
        (json!({"title": "a", "at": "2024-01-01"}), "params.data.at"),
    ];
    for (data, field) in cases {
        let e = c.bad("mutation", create(data.clone()), field).await;
        let name = field.trim_start_matches("params.data.");
        assert!(e.message.contains(name), "{data}: {e}");
    }
    // The edges that are allowed.
    let id = c
        .create(
            "post",
            json!({"title": "", "likes": i64::MIN, "score": 3, "draft": false,
                   "at": 1_700_000_000_000i64, "meta": null, "body": null}),
        )
        .await;
    c.create(
        "post",
        json!({"title": "x", "likes": i64::MAX, "score": -1.5e300, "meta": [1, "two", null]}),
    )
    .await;
    c.create("post", json!({"title": "y", "meta": "just a string"}))
        .await;
    let r = c
        .query(json!({"schema": "post", "fields": ["likes", "score", "meta", "body"], "limit": 1}))
        .await;
    // Nulls are not invented into values, and nothing is invented for absent fields.
    assert_eq!(
        r["rows"][0],
        json!({"id": id, "likes": i64::MIN, "score": 3, "meta": null, "body": null})
    );
    node.stop().await;
}
