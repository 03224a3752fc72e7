//! Schema operations: create, get, list, delete; conflicts; name rules.

use crate::support::{post_schema, start};
use fold_ipc::ErrorCode;
use serde_json::json;

#[tokio::test]
async fn create_get_list_delete() {
    let node = start().await;
    let mut c = node.client().await;
    assert_eq!(
        c.ok("list_schemas", json!(null)).await,
        json!({"schemas": []})
    );
    let created = c.ok("create_schema", post_schema()).await;
    // The stored definition spells out the defaults.
    let normal = serde_json::to_value(
        serde_json::from_value::<fold_ipc::schema::SchemaDef>(post_schema()).unwrap(),
    )
    .unwrap();
    assert_eq!(created, normal);
    assert_eq!(
        created["fields"]["body"],
        json!({"type": "string", "required": false, "indexed": false})
    );
    c.create_schema(json!({"name": "author", "fields": {}}))
        .await;
    assert_eq!(
        c.ok("list_schemas", json!(null)).await,
        json!({"schemas": ["author", "post"]})
    );
    assert_eq!(c.ok("get_schema", json!({"name": "post"})).await, normal);
    let pong = c.ok("ping", json!(null)).await;
    assert_eq!(pong, json!({"pong": true, "version": 1}));

    let e = c
        .err("create_schema", post_schema(), ErrorCode::Conflict)
        .await;
    assert!(e.message.contains("already exists"), "{e}");
    c.err("get_schema", json!({"name": "nope"}), ErrorCode::NotFound)
        .await;
    c.err(
        "delete_schema",
        json!({"name": "nope"}),
        ErrorCode::NotFound,
    )
    .await;

    assert_eq!(
        c.ok("delete_schema", json!({"name": "author"})).await,
        json!({"deleted": true, "records": 0})
    );
    assert_eq!(
        c.ok("list_schemas", json!(null)).await,
        json!({"schemas": ["post"]})
    );
    node.stop().await;
}

#[tokio::test]
async fn deleting_a_schema_with_records_needs_force() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    let id = c.create("post", json!({"title": "a"})).await;
    c.create("post", json!({"title": "b"})).await;
    let e = c
        .err(
            "delete_schema",
            json!({"name": "post"}),
            ErrorCode::Conflict,
        )
        .await;
    assert!(e.message.contains("2 records"), "{e}");
    assert_eq!(
        c.ok("delete_schema", json!({"name": "post", "force": true}))
            .await,
        json!({"deleted": true, "records": 2})
    );
    c.err("query", json!({"schema": "post"}), ErrorCode::NotFound)
        .await;
    // A new schema of the same name starts empty, without the old history.
    c.create_schema(post_schema()).await;
    assert_eq!(
        c.query(json!({"schema": "post"})).await,
        json!({"rows": []})
    );
    c.err(
        "history",
        json!({"schema": "post", "id": id}),
        ErrorCode::NotFound,
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn traversal_and_bad_names_are_refused_everywhere() {
    let node = start().await;
    let mut c = node.client().await;
    let long = "a".repeat(65);
    let bad_names = [
        "../x",
        "a/b",
        "",
        long.as_str(),
        "Post",
        "..",
        "/etc/passwd",
        "a\0b",
    ];
    for name in bad_names {
        c.bad("get_schema", json!({"name": name}), "params.name")
            .await;
        c.bad("delete_schema", json!({"name": name}), "params.name")
            .await;
        c.bad(
            "create_schema",
            json!({"name": name, "fields": {}}),
            "params.name",
        )
        .await;
        c.bad("query", json!({"schema": name}), "params.schema")
            .await;
        c.bad(
            "mutation",
            json!({"schema": name, "action": "create", "data": {}}),
            "params.schema",
        )
        .await;
        c.bad(
            "history",
            json!({"schema": name, "id": "x"}),
            "params.schema",
        )
        .await;
    }
    // Field names follow the same rule, and `id` is reserved.
    c.bad(
        "create_schema",
        json!({"name": "p", "fields": {"../x": {"type": "string"}}}),
        "params.fields.../x",
    )
    .await;
    c.bad(
        "create_schema",
        json!({"name": "p", "fields": {"id": {"type": "string"}}}),
        "params.fields.id",
    )
    .await;
    c.bad(
        "create_schema",
        json!({"name": "p", "fields": {"a": {"type": "blob"}}}),
        "params.fields.a.type",
    )
    .await;
    // Nothing was created anywhere near the data directory.
    assert_eq!(
        c.ok("list_schemas", json!(null)).await,
        json!({"schemas": []})
    );
    let mut entries: Vec<_> = std::fs::read_dir(&node.data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert!(
        entries.iter().all(|e| e.starts_with("fold_node.sqlite3")),
        "only the database files: {entries:?}"
    );
    assert!(!node.dir.path().join("x").exists());
    node.stop().await;
}

#[tokio::test]
async fn a_schema_with_the_maximum_number_of_fields_works() {
    let node = start().await;
    let mut c = node.client().await;
    let mut fields = serde_json::Map::new();
    for i in 0..fold_ipc::schema::MAX_FIELDS {
        fields.insert(
            format!("f{i}"),
            json!({"type": "int", "indexed": i % 16 == 0}),
        );
    }
    c.create_schema(json!({"name": "wide", "fields": fields}))
        .await;
    let id = c.create("wide", json!({"f0": 1, "f127": 2})).await;
    let r = c.query(json!({"schema": "wide"})).await;
    let row = r["rows"][0].as_object().unwrap();
    assert_eq!(row.len(), 129, "id and every field");
    assert_eq!(row["id"], json!(id));
    assert_eq!(row["f127"], json!(2));
    assert_eq!(row["f5"], json!(null));
    assert_eq!(
        c.ids(json!({"schema": "wide", "filter": {"op": "eq", "field": "f16", "value": 5}}))
            .await
            .len(),
        0
    );
    node.stop().await;
}
