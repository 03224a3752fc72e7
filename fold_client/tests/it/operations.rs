//! Every operation through the daemon, and the grants around them.

use crate::support::{code, start_daemon};
use fold_ipc::operation::Mutation;
use fold_ipc::query::{eq, Query};
use fold_ipc::schema::SchemaDef;
use fold_ipc::{ErrorCode, Operation};
use serde_json::json;

fn post_schema() -> Operation {
    let def: SchemaDef = serde_json::from_value(json!({
        "name": "post",
        "fields": {
            "title": {"type": "string", "required": true},
            "author": {"type": "string", "indexed": true},
            "likes": {"type": "int"}
        }
    }))
    .unwrap();
    Operation::CreateSchema(def)
}

fn create(schema: &str, data: &serde_json::Value) -> Operation {
    Operation::Mutation(Mutation::Create {
        schema: schema.into(),
        data: data.as_object().unwrap().clone(),
    })
}

#[tokio::test]
async fn happy_path_for_every_operation() {
    let d = start_daemon("").await;
    let creds = d.install("admin_app", &["*:*"], None).await;
    let c = d.connect(&creds).await;

    assert_eq!(c.ok(&Operation::Ping).await["pong"], true);
    c.ok(&post_schema()).await;
    assert_eq!(
        c.ok(&Operation::ListSchemas).await["schemas"],
        json!(["post"])
    );
    assert_eq!(
        c.ok(&Operation::GetSchema {
            name: "post".into()
        })
        .await["name"],
        "post"
    );

    let id = c
        .ok(&create(
            "post",
            &json!({"title": "hello", "author": "alice", "likes": 1}),
        ))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(&create("post", &json!({"title": "other", "author": "bob"})))
        .await;
    let patch = json!({"likes": 2}).as_object().unwrap().clone();
    assert_eq!(
        c.ok(&Operation::Mutation(Mutation::Update {
            schema: "post".into(),
            id: id.clone(),
            data: patch
        }))
        .await["version"],
        2
    );

    let page = c
        .ok(&Operation::Query(
            Query::new("post")
                .fields(["title", "likes"])
                .filter(eq("author", "alice")),
        ))
        .await;
    assert_eq!(
        page["rows"],
        json!([{"id": id, "title": "hello", "likes": 2}])
    );

    let history = c
        .ok(&Operation::History {
            schema: "post".into(),
            id: id.clone(),
        })
        .await;
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        versions[0]["writer"],
        creds.app_id.as_str(),
        "provenance is the app id"
    );

    c.ok(&Operation::Mutation(Mutation::Delete {
        schema: "post".into(),
        id,
    }))
    .await;
    let r = c
        .call(&Operation::DeleteSchema {
            name: "post".into(),
            force: false,
        })
        .await;
    assert_eq!(code(&r), ErrorCode::Conflict, "still holds bob's post");
    c.ok(&Operation::DeleteSchema {
        name: "post".into(),
        force: true,
    })
    .await;
    assert_eq!(
        code(
            &c.call(&Operation::GetSchema {
                name: "post".into()
            })
            .await
        ),
        ErrorCode::NotFound
    );
    d.stop().await;
}

#[tokio::test]
async fn grants_scope_operations_and_list_schemas() {
    let d = start_daemon("").await;
    let admin = d.connect(&d.install("owner", &["*:*"], None).await).await;
    admin.ok(&post_schema()).await;
    let mut comment = serde_json::from_value::<SchemaDef>(
        json!({"name": "comment", "fields": {"body": {"type": "string"}}}),
    )
    .unwrap();
    admin.ok(&Operation::CreateSchema(comment.clone())).await;
    comment.name = "secret".into();
    admin.ok(&Operation::CreateSchema(comment)).await;

    let reader = d
        .connect(
            &d.install("reader", &["query:post", "mutation:comment"], None)
                .await,
        )
        .await;
    assert_eq!(
        reader.ok(&Operation::ListSchemas).await["schemas"],
        json!(["comment", "post"])
    );
    reader.ok(&Operation::Query(Query::new("post"))).await;
    reader.ok(&create("comment", &json!({"body": "hi"}))).await;
    for op in [
        Operation::Query(Query::new("secret")),
        create("post", &json!({"title": "x"})),
        Operation::GetSchema {
            name: "post".into(),
        },
        Operation::DeleteSchema {
            name: "post".into(),
            force: true,
        },
        Operation::History {
            schema: "post".into(),
            id: "abc".into(),
        },
    ] {
        let r = reader.call(&op).await;
        assert_eq!(code(&r), ErrorCode::Forbidden, "{op:?}");
        assert!(r
            .error
            .unwrap()
            .message
            .contains("fold_client app grant reader"));
    }
    let denials = d
        .audit_lines()
        .await
        .iter()
        .filter(|l| l["app"] == "reader" && l["reason"] == "not_granted")
        .count();
    assert_eq!(denials, 5, "every denial is audited");
    d.stop().await;
}

#[tokio::test]
async fn bad_params_are_bad_request_naming_the_field() {
    let d = start_daemon("").await;
    let c = d.connect(&d.install("a", &["*:*"], None).await).await;
    let mut r = c.signed(&Operation::Ping);
    r.operation = "query".into();
    r.params = Some(
        serde_json::value::RawValue::from_string(r#"{"schema":"post","limit":"many"}"#.into())
            .unwrap(),
    );
    fold_ipc::signing::sign_request(&mut r, &c.creds.signing_key).unwrap();
    let resp = c.send(&r).await;
    assert_eq!(code(&resp), ErrorCode::BadRequest);
    assert_eq!(resp.error.unwrap().field.as_deref(), Some("params.limit"));
    d.stop().await;
}
