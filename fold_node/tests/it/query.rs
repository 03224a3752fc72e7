//! Queries: every filter operator, projection, ordering, limits, offsets and cursors.

use crate::support::{post_schema, start, Client};
use fold_ipc::ErrorCode;
use serde_json::{json, Value};

const FRUIT: [&str; 10] = [
    "apple",
    "apricot",
    "banana",
    "blueberry",
    "cherry",
    "date",
    "elder",
    "fig",
    "grape",
    "honeydew",
];

/// Ten posts: `likes` = index (absent for the last), `score` = index / 2, `draft` for
/// even indexes, `at` = 1000 + index, `meta` = {"tag": index % 3}.
async fn fruit(c: &mut Client) {
    c.create_schema(post_schema()).await;
    for (i, name) in FRUIT.iter().enumerate() {
        let mut data = json!({"title": name, "score": i as f64 / 2.0, "draft": i % 2 == 0,
                              "at": 1000 + i, "meta": {"tag": i % 3}});
        if i < 9 {
            data["likes"] = json!(i);
        }
        c.create("post", data).await;
    }
}

async fn titles(c: &mut Client, filter: Value) -> Vec<String> {
    let r = c
        .query(json!({"schema": "post", "filter": filter, "fields": ["title"]}))
        .await;
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["title"].as_str().unwrap().to_string())
        .collect()
}

fn pick(idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| FRUIT[i].to_string()).collect()
}

#[tokio::test]
async fn every_filter_operator() {
    let node = start().await;
    let mut c = node.client().await;
    fruit(&mut c).await;
    let all: Vec<usize> = (0..10).collect();
    let cases: Vec<(Value, Vec<usize>)> = vec![
        (
            json!({"op": "eq", "field": "title", "value": "banana"}),
            vec![2],
        ),
        (json!({"op": "eq", "field": "likes", "value": 3}), vec![3]),
        (json!({"op": "eq", "field": "score", "value": 2.5}), vec![5]),
        (json!({"op": "eq", "field": "score", "value": 2}), vec![4]),
        (
            json!({"op": "eq", "field": "draft", "value": true}),
            vec![0, 2, 4, 6, 8],
        ),
        (json!({"op": "eq", "field": "at", "value": 1007}), vec![7]),
        (
            json!({"op": "eq", "field": "meta", "value": {"tag": 1}}),
            vec![1, 4, 7],
        ),
        (
            json!({"op": "eq", "field": "likes", "value": null}),
            vec![9],
        ),
        (
            json!({"op": "ne", "field": "likes", "value": 3}),
            vec![0, 1, 2, 4, 5, 6, 7, 8],
        ),
        (
            json!({"op": "ne", "field": "likes", "value": null}),
            (0..9).collect(),
        ),
        (
            json!({"op": "ne", "field": "draft", "value": true}),
            vec![1, 3, 5, 7, 9],
        ),
        (
            json!({"op": "lt", "field": "likes", "value": 2}),
            vec![0, 1],
        ),
        (
            json!({"op": "lte", "field": "likes", "value": 2}),
            vec![0, 1, 2],
        ),
        (json!({"op": "gt", "field": "likes", "value": 7}), vec![8]),
        (
            json!({"op": "gte", "field": "likes", "value": 7}),
            vec![7, 8],
        ),
        (
            json!({"op": "lt", "field": "score", "value": 1.0}),
            vec![0, 1],
        ),
        (
            json!({"op": "gte", "field": "score", "value": 4.25}),
            vec![9],
        ),
        (
            json!({"op": "gt", "field": "title", "value": "fig"}),
            vec![8, 9],
        ),
        (
            json!({"op": "lte", "field": "at", "value": 1001}),
            vec![0, 1],
        ),
        (
            json!({"op": "in", "field": "likes", "values": [1, 3, 99]}),
            vec![1, 3],
        ),
        (
            json!({"op": "in", "field": "title", "values": ["fig", "nope"]}),
            vec![7],
        ),
        (
            json!({"op": "in", "field": "meta", "values": [{"tag": 2}]}),
            vec![2, 5, 8],
        ),
        (json!({"op": "in", "field": "likes", "values": []}), vec![]),
        (
            json!({"op": "contains", "field": "title", "value": "rr"}),
            vec![3, 4],
        ),
        (
            json!({"op": "contains", "field": "title", "value": "RR"}),
            vec![],
        ),
        (
            json!({"op": "prefix", "field": "title", "value": "ap"}),
            vec![0, 1],
        ),
        (
            json!({"op": "prefix", "field": "title", "value": "b"}),
            vec![2, 3],
        ),
        (
            json!({"op": "prefix", "field": "title", "value": "B"}),
            vec![],
        ),
        (
            json!({"op": "prefix", "field": "title", "value": ""}),
            all.clone(),
        ),
        (
            json!({"op": "and", "filters": [
                {"op": "prefix", "field": "title", "value": "b"},
                {"op": "gt", "field": "likes", "value": 2}]}),
            vec![3],
        ),
        (
            json!({"op": "or", "filters": [
                {"op": "eq", "field": "title", "value": "apple"},
                {"op": "eq", "field": "likes", "value": 7}]}),
            vec![0, 7],
        ),
        // `not` matches exactly what its filter does not, records without the field included.
        (
            json!({"op": "not", "filter": {"op": "eq", "field": "likes", "value": 3}}),
            vec![0, 1, 2, 4, 5, 6, 7, 8, 9],
        ),
        (
            json!({"op": "not", "filter": {"op": "or", "filters": [
                {"op": "lt", "field": "likes", "value": 5},
                {"op": "eq", "field": "draft", "value": true}]}}),
            vec![5, 7, 9],
        ),
        (json!({"op": "and", "filters": []}), all.clone()),
        (json!({"op": "or", "filters": []}), vec![]),
        (
            json!({"op": "not", "filter": {"op": "and", "filters": []}}),
            vec![],
        ),
        (
            json!({"op": "prefix", "field": "_created_by", "value": "no"}),
            all.clone(),
        ),
        (
            json!({"op": "gte", "field": "_version", "value": 2}),
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            titles(&mut c, filter.clone()).await,
            pick(&expected),
            "{filter}"
        );
    }
    // By id, too.
    let ids = c.ids(json!({"schema": "post"})).await;
    let one = c
        .ids(json!({"schema": "post", "filter": {"op": "eq", "field": "id", "value": ids[4]}}))
        .await;
    assert_eq!(one, [ids[4].clone()]);
    let some = c
        .ids(json!({"schema": "post", "filter": {"op": "in", "field": "id", "values": [ids[1], ids[2], "zz"]}}))
        .await;
    assert_eq!(some, ids[1..3]);
    node.stop().await;
}

#[tokio::test]
async fn filter_errors_name_the_filter_node() {
    let node = start().await;
    let mut c = node.client().await;
    fruit(&mut c).await;
    let q = |filter: Value| json!({"schema": "post", "filter": filter});
    let cases = [
        (
            json!({"op": "eq", "field": "nope", "value": 1}),
            "params.filter.field",
        ),
        (
            json!({"op": "and", "filters": [{"op": "eq", "field": "title", "value": "a"},
                                            {"op": "gt", "field": "nope", "value": 1}]}),
            "params.filter.filters[1].field",
        ),
        (
            json!({"op": "not", "filter": {"op": "eq", "field": "likes", "value": "3"}}),
            "params.filter.filter.value",
        ),
        (
            json!({"op": "eq", "field": "title", "value": 3}),
            "params.filter.value",
        ),
        (
            json!({"op": "eq", "field": "likes", "value": 1.5}),
            "params.filter.value",
        ),
        (
            json!({"op": "gt", "field": "score", "value": "1"}),
            "params.filter.value",
        ),
        (
            json!({"op": "eq", "field": "draft", "value": 1}),
            "params.filter.value",
        ),
        (
            json!({"op": "lt", "field": "at", "value": "yesterday"}),
            "params.filter.value",
        ),
        (
            json!({"op": "lt", "field": "likes", "value": null}),
            "params.filter.value",
        ),
        (
            json!({"op": "in", "field": "likes", "values": [1, "2"]}),
            "params.filter.values[1]",
        ),
        (
            json!({"op": "in", "field": "likes", "values": [null]}),
            "params.filter.values[0]",
        ),
        (
            json!({"op": "contains", "field": "likes", "value": "1"}),
            "params.filter.field",
        ),
        (
            json!({"op": "prefix", "field": "meta", "value": "{"}),
            "params.filter.field",
        ),
        (
            json!({"op": "lt", "field": "meta", "value": {"tag": 1}}),
            "params.filter.field",
        ),
        (
            json!({"op": "eq", "field": "id", "value": 5}),
            "params.filter.value",
        ),
    ];
    for (filter, field) in cases {
        c.bad("query", q(filter), field).await;
    }
    // Malformed trees are refused while parsing, also naming the filter.
    for filter in [
        json!({"op": "like", "field": "title", "value": "a"}),
        json!({"op": "eq", "field": "title"}),
        json!({"op": "eq", "field": "title", "value": "a", "extra": 1}),
    ] {
        let e = c
            .err("query", q(filter.clone()), ErrorCode::BadRequest)
            .await;
        assert!(
            e.field
                .as_deref()
                .unwrap_or("")
                .starts_with("params.filter"),
            "{filter}: {e}"
        );
    }
    // Limits on the tree's size.
    let mut deep = json!({"op": "eq", "field": "likes", "value": 1});
    for _ in 0..fold_ipc::query::MAX_FILTER_DEPTH {
        deep = json!({"op": "not", "filter": deep});
    }
    // (Each is `too_expensive` naming the limit; see `cost.rs` for all of them.)
    let e = c.err("query", q(deep), ErrorCode::TooExpensive).await;
    assert_eq!(e.limit.as_deref(), Some("max_filter_depth"), "{e}");
    assert_eq!(e.field.as_deref(), Some("params.filter"), "{e}");
    let values: Vec<i64> = (0..=fold_ipc::query::MAX_IN_VALUES as i64).collect();
    let e = c
        .err(
            "query",
            q(json!({"op": "in", "field": "likes", "values": values})),
            ErrorCode::TooExpensive,
        )
        .await;
    assert_eq!(e.limit.as_deref(), Some("max_in_values"), "{e}");
    node.stop().await;
}

/// A filter nested past the JSON parser's limit (128 levels) is refused while parsing: the
/// error names `params.filter` (docs/protocol.md, section 7), not the 900-byte path to where
/// the parser stopped, and its message stays short.
#[tokio::test]
async fn a_filter_nested_200_deep_names_params_filter_in_a_short_error() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    for depth in [200, 1000] {
        let mut deep = json!({"op": "eq", "field": "likes", "value": 1});
        for _ in 0..depth {
            deep = json!({"op": "not", "filter": deep});
        }
        let e = c
            .bad(
                "query",
                json!({"schema": "post", "filter": deep}),
                "params.filter",
            )
            .await;
        assert!(
            e.message.len() <= 300,
            "depth {depth}: {} bytes: {e}",
            e.message.len()
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn projection_and_ordering() {
    let node = start().await;
    let mut c = node.client().await;
    fruit(&mut c).await;
    let r = c
        .query(
            json!({"schema": "post", "fields": ["likes", "title"], "limit": 2,
                      "order_by": [{"field": "likes", "desc": true}]}),
        )
        .await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let keys: Vec<_> = rows[0].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 3, "id and the two fields: {keys:?}");
    assert_eq!(rows[0]["likes"], json!(8));
    assert_eq!(rows[1]["likes"], json!(7));
    assert!(r["next_cursor"].is_string());

    // Ascending puts records without a value first; descending puts them last.
    let asc = titles_ordered(&mut c, json!([{"field": "likes"}])).await;
    assert_eq!(asc[0], "honeydew");
    let desc = titles_ordered(&mut c, json!([{"field": "likes", "desc": true}])).await;
    assert_eq!(desc.last().unwrap(), "honeydew");
    let by_title = titles_ordered(&mut c, json!([{"field": "title", "desc": true}])).await;
    let mut expected = pick(&(0..10).collect::<Vec<_>>());
    expected.reverse();
    assert_eq!(by_title, expected);
    // Ties broken by the next key, then by id.
    let two = titles_ordered(
        &mut c,
        json!([{"field": "draft"}, {"field": "score", "desc": true}]),
    )
    .await;
    assert_eq!(two, pick(&[9, 7, 5, 3, 1, 8, 6, 4, 2, 0]));

    c.bad(
        "query",
        json!({"schema": "post", "fields": ["title", "nope"]}),
        "params.fields[1]",
    )
    .await;
    c.bad(
        "query",
        json!({"schema": "post", "order_by": [{"field": "nope"}]}),
        "params.order_by[0].field",
    )
    .await;
    c.bad(
        "query",
        json!({"schema": "post", "order_by": [{"field": "meta"}]}),
        "params.order_by[0].field",
    )
    .await;
    c.err("query", json!({"schema": "nope"}), ErrorCode::NotFound)
        .await;
    node.stop().await;
}

async fn titles_ordered(c: &mut Client, order_by: Value) -> Vec<String> {
    let r = c
        .query(json!({"schema": "post", "fields": ["title"], "order_by": order_by}))
        .await;
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["title"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn limits_offsets_and_cursors() {
    let node = start().await;
    let mut c = node.client().await;
    c.create_schema(post_schema()).await;
    let mut created = Vec::new();
    for i in 0..250 {
        let mut data = json!({"title": format!("p{i:03}"), "draft": i % 3 == 0});
        if i % 7 != 0 {
            data["likes"] = json!(i % 10);
        }
        created.push(c.create("post", data).await);
    }
    // Default page size, then the cursor to the end.
    let first = c.query(json!({"schema": "post"})).await;
    assert_eq!(
        first["rows"].as_array().unwrap().len(),
        fold_ipc::query::DEFAULT_LIMIT as usize
    );
    let mut seen = ids_of(&first);
    let mut cursor = first["next_cursor"].as_str().unwrap().to_string();
    loop {
        let page = c.query(json!({"schema": "post", "cursor": cursor})).await;
        seen.extend(ids_of(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, created);
    // Offsets and limits.
    assert_eq!(
        c.ids(json!({"schema": "post", "offset": 240})).await,
        created[240..]
    );
    assert_eq!(
        c.ids(json!({"schema": "post", "offset": 5, "limit": 3}))
            .await,
        created[5..8]
    );
    assert_eq!(
        c.ids(json!({"schema": "post", "limit": 1000})).await.len(),
        250
    );
    c.bad(
        "query",
        json!({"schema": "post", "limit": 1001}),
        "params.limit",
    )
    .await;
    c.bad(
        "query",
        json!({"schema": "post", "limit": 0}),
        "params.limit",
    )
    .await;
    c.bad(
        "query",
        json!({"schema": "post", "offset": 1, "cursor": cursor}),
        "params.cursor",
    )
    .await;
    c.bad(
        "query",
        json!({"schema": "post", "cursor": "garbage"}),
        "params.cursor",
    )
    .await;

    // A cursor belongs to its query.
    let page = c.query(json!({"schema": "post", "limit": 10})).await;
    let cursor = page["next_cursor"].as_str().unwrap();
    c.bad(
        "query",
        json!({"schema": "post", "cursor": cursor, "filter": {"op": "eq", "field": "draft", "value": true}}),
        "params.cursor",
    )
    .await;
    c.bad(
        "query",
        json!({"schema": "post", "cursor": cursor, "order_by": [{"field": "likes"}]}),
        "params.cursor",
    )
    .await;

    // Keyset paging over a non-unique key with missing values, while records are added:
    // every record that existed throughout appears exactly once, in order.
    let order = json!([{"field": "likes", "desc": true}, {"field": "draft"}]);
    let expected = c
        .ids(json!({"schema": "post", "order_by": order, "limit": 1000}))
        .await;
    let filter_out_new = |ids: Vec<String>| -> Vec<String> {
        ids.into_iter().filter(|id| created.contains(id)).collect()
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = json!({"schema": "post", "order_by": order, "limit": 17});
        if let Some(c) = &cursor {
            q["cursor"] = json!(c);
        }
        let page = c.query(q).await;
        seen.extend(ids_of(&page));
        pages += 1;
        c.create(
            "post",
            json!({"title": format!("new{pages}"), "likes": pages % 10}),
        )
        .await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    assert_eq!(filter_out_new(seen), expected);
    node.stop().await;
}

fn ids_of(page: &Value) -> Vec<String> {
    page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}
