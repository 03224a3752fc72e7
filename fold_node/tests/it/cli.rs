//! The admin commands of the `fold_node` binary, on a data directory.

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn fold_node(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fold_node"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env("FOLD_NODE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok_json(data: &Path, args: &[&str], stdin: Option<&str>) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = fold_node(data, &all, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn schema_query_and_dump_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let def = json!({"name": "note", "fields": {"text": {"type": "string", "required": true, "indexed": true}}});
    let created = ok_json(&data, &["schema", "create", "-"], Some(&def.to_string()));
    assert_eq!(created, def);
    assert_eq!(
        ok_json(&data, &["schema", "list"], None),
        json!({"schemas": ["note"]})
    );
    assert_eq!(ok_json(&data, &["schema", "show", "note"], None), def);

    // Write a record through the library (the CLI has no mutation command), then read it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = fold_node::Node::open(&data).unwrap();
        let op = fold_ipc::Operation::Mutation(fold_ipc::operation::Mutation::Create {
            schema: "note".into(),
            data: json!({"text": "hello"}).as_object().cloned().unwrap(),
        });
        node.execute(Some("cli_test"), op).await.unwrap();
    });
    let q = ok_json(
        &data,
        &[
            "query",
            "note",
            "--filter",
            r#"{"op":"prefix","field":"text","value":"he"}"#,
            "--fields",
            "text,_created_by",
        ],
        None,
    );
    assert_eq!(q["rows"][0]["text"], json!("hello"));
    assert_eq!(q["rows"][0]["_created_by"], json!("cli_test"));
    let plan = ok_json(
        &data,
        &[
            "query",
            "note",
            "--filter",
            r#"{"op":"eq","field":"text","value":"x"}"#,
            "--explain",
        ],
        None,
    );
    assert!(plan["plan"].to_string().contains("fx_"), "{plan}");
    let dump = ok_json(&data, &["dump"], None);
    assert_eq!(dump["schemas"][0]["schema"], def);
    assert_eq!(dump["schemas"][0]["records"][0]["text"], json!("hello"));

    // Errors: a message on stderr and a failing exit status.
    let out = fold_node(&data, &["schema", "delete", "note"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflict"),
        "{out:?}"
    );
    let out = fold_node(&data, &["schema", "show", "../etc"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad_request"),
        "{out:?}"
    );
    let deleted = ok_json(&data, &["schema", "delete", "note", "--force"], None);
    assert_eq!(deleted, json!({"deleted": true, "records": 1}));

    // Human output.
    let out = fold_node(&data, &["schema", "list"], None);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[test]
fn serve_refuses_non_loopback_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let out = fold_node(
        &dir.path().join("data"),
        &["serve", "--tcp", "0.0.0.0:0"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}
