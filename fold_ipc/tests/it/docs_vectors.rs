//! `docs/protocol.md` is the specification other-language clients are written from, so what it
//! states is checked here against the crate:
//!
//! - its known-answer vectors are exactly the ones `src/signing.rs` unit-tests (parsed from that
//!   file's source), and recomputing canonical bytes, public key and signature from each seed
//!   gives the doc's hex;
//! - the byte-by-byte breakdown of vector 1 concatenates to its canonical bytes;
//! - the example envelope decodes, verifies with the vector's key and re-encodes to the same
//!   bytes, and the example frame header is its length;
//! - the error-code table, the operation headings and the limits table match the crate;
//! - every `params:` / `result:` example of an operation is accepted by the crate's parser or
//!   result types, each result example is byte for byte what its type serialises to (for
//!   `query`, what the node's page builder writes), and every example response is a
//!   well-formed response.

use ed25519_dalek::SigningKey;
use fold_ipc::frame::{encode_frame, DEFAULT_MAX_FRAME, HEADER_LEN};
use fold_ipc::operation::{DeleteSchemaResult, HistoryResult, MutationResult, Pong, SchemaList};
use fold_ipc::query::{QueryResult, QueryResultWriter};
use fold_ipc::schema::SchemaDef;
use fold_ipc::signing::{canonical_bytes, sign, verify, SignedFields, DOMAIN_TAG};
use fold_ipc::{Operation, OperationKind, Request, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;

const DOC: &str = include_str!("../../../docs/protocol.md");
const SIGNING_RS: &str = include_str!("../../src/signing.rs");
const ERROR_RS: &str = include_str!("../../src/error.rs");

/// The keys of a vector block in the doc, in order.
const VECTOR_KEYS: [&str; 12] = [
    "vector",
    "seed",
    "public_key",
    "v",
    "app_id",
    "request_id",
    "timestamp",
    "nonce",
    "operation",
    "params",
    "canonical",
    "signature",
];

/// The contents of every fenced block opened with ```` ```<info> ````, in document order.
fn fenced_blocks(doc: &'static str, info: &str) -> Vec<Vec<&'static str>> {
    let opening = format!("```{info}");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&'static str>> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.trim_end() == opening => current = Some(Vec::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(lines) => lines.push(line),
        }
    }
    assert!(current.is_none(), "unterminated ```{info} block");
    blocks
}

/// `key: value` lines; the value is everything after the first `:` and one space.
fn key_values(lines: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    lines
        .iter()
        .map(|line| {
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a `key: value` line: {line:?}"));
            (key, value.strip_prefix(' ').unwrap_or(value))
        })
        .collect()
}

/// The doc's vectors, as maps from key to value, checked for exactly the expected keys.
fn doc_vectors() -> Vec<BTreeMap<&'static str, &'static str>> {
    fenced_blocks(DOC, "foldclient-vector")
        .iter()
        .map(|block| {
            let kv = key_values(block);
            let keys: Vec<_> = kv.iter().map(|(k, _)| *k).collect();
            assert_eq!(keys, VECTOR_KEYS, "a vector block has exactly these keys");
            kv.into_iter().collect()
        })
        .collect()
}

/// The `VECTORS` of `src/signing.rs`, read from its source, with keys renamed to the doc's.
fn source_vectors() -> Vec<BTreeMap<&'static str, String>> {
    let start = SIGNING_RS
        .find("const VECTORS: &[Vector] = &[")
        .expect("signing.rs defines VECTORS");
    let body = &SIGNING_RS[start..];
    let body = &body[..body.find("\n    ];").expect("VECTORS ends with `];`")];
    let mut vectors = Vec::new();
    let mut current: Option<BTreeMap<&'static str, String>> = None;
    for line in body.lines().skip(1).map(str::trim) {
        match line {
            "Vector {" => current = Some(BTreeMap::new()),
            "}," => vectors.extend(current.take()),
            "" => {}
            _ => {
                let fields = current.as_mut().expect("field outside a Vector");
                let (name, value) = line
                    .strip_suffix(',')
                    .and_then(|l| l.split_once(": "))
                    .unwrap_or_else(|| panic!("unexpected line in VECTORS: {line:?}"));
                let value = if let Some(raw) = value.strip_prefix("r#\"") {
                    raw.strip_suffix("\"#").expect("raw string ends with \"#")
                } else if let Some(quoted) = value.strip_prefix('"') {
                    let s = quoted.strip_suffix('"').expect("string ends with \"");
                    assert!(!s.contains('\\'), "escapes are not parsed here: {s}");
                    s
                } else {
                    value
                };
                let key = match name {
                    "seed_hex" => "seed",
                    "public_hex" => "public_key",
                    "canonical_hex" => "canonical",
                    "signature_hex" => "signature",
                    "app_id" => "app_id",
                    "request_id" => "request_id",
                    "timestamp" => "timestamp",
                    "nonce" => "nonce",
                    "operation" => "operation",
                    "params" => "params",
                    other => panic!("unknown Vector field {other}: update this test and the doc"),
                };
                let value = if key == "timestamp" {
                    value.replace('_', "")
                } else {
                    value.to_string()
                };
                assert!(fields.insert(key, value).is_none(), "{name} twice");
            }
        }
    }
    assert!(current.is_none(), "unterminated Vector in signing.rs");
    vectors
}

fn signing_key(seed_hex: &str) -> SigningKey {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(seed_hex, &mut seed).expect("seed is 64 hex digits");
    SigningKey::from_bytes(&seed)
}

fn fields_of<'a>(v: &BTreeMap<&'static str, &'a str>) -> SignedFields<'a> {
    SignedFields {
        version: v["v"].parse().expect("v is an integer"),
        app_id: v["app_id"],
        request_id: v["request_id"],
        timestamp: v["timestamp"].parse().expect("timestamp is an integer"),
        nonce: v["nonce"],
        operation: v["operation"],
        params: v["params"].as_bytes(),
    }
}

/// The text of the section whose heading starts with `heading`, up to the next `## ` heading.
fn section(heading: &str) -> &'static str {
    let start = DOC
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("doc has a section {heading:?}"));
    let rest = &DOC[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn doc_vectors_are_exactly_the_unit_test_vectors() {
    let doc = doc_vectors();
    let source = source_vectors();
    assert!(!source.is_empty(), "signing.rs has vectors");
    assert_eq!(
        doc.len(),
        source.len(),
        "docs/protocol.md must print every vector of signing.rs, and no other"
    );
    for (i, (d, s)) in doc.iter().zip(&source).enumerate() {
        assert_eq!(
            d["vector"],
            (i + 1).to_string(),
            "vectors are numbered 1, 2, ..."
        );
        assert_eq!(d["v"], "1", "the unit tests sign with v = 1");
        for (key, value) in s {
            assert_eq!(d[key], value, "vector {}: {key}", i + 1);
        }
    }
}

#[test]
fn doc_vectors_recompute() {
    let vectors = doc_vectors();
    assert_eq!(vectors.len(), 2);
    for v in &vectors {
        let n = v["vector"];
        let key = signing_key(v["seed"]);
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            v["public_key"],
            "vector {n}: public key"
        );
        let fields = fields_of(v);
        let canonical = canonical_bytes(&fields);
        assert_eq!(
            hex::encode(&canonical),
            v["canonical"],
            "vector {n}: canonical"
        );
        assert!(canonical.starts_with(DOMAIN_TAG));
        assert_eq!(sign(&key, &fields), v["signature"], "vector {n}: signature");
        verify(&key.verifying_key(), &fields, v["signature"]).expect("doc signature verifies");
    }
}

#[test]
fn domain_tag_hex_in_doc_is_the_crate_s() {
    let tag = hex::encode(DOMAIN_TAG);
    assert_eq!(tag, "666f6c64636c69656e742d7265717565737400");
    assert!(DOC.contains(&tag));
}

#[test]
fn canonical_breakdown_concatenates_to_vector_1() {
    let blocks = fenced_blocks(DOC, "foldclient-canonical-breakdown");
    assert_eq!(blocks.len(), 1);
    let mut joined = String::new();
    for line in &blocks[0] {
        let hex_part = line.split_whitespace().next().expect("a hex column");
        hex::decode(hex_part).unwrap_or_else(|_| panic!("not hex: {hex_part}"));
        joined.push_str(hex_part);
    }
    assert_eq!(joined, doc_vectors()[0]["canonical"]);
}

/// The single line of the example envelope block.
fn envelope_body() -> &'static str {
    let blocks = fenced_blocks(DOC, "foldclient-envelope");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].len(), 1, "the envelope is one line");
    blocks[0][0]
}

#[test]
fn example_envelope_decodes_and_verifies() {
    let body = envelope_body();
    let v1 = &doc_vectors()[0];
    let request = Request::decode(body.as_bytes()).expect("the example envelope decodes");
    let token = request.token.as_deref().expect("the example has a token");
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "the example token looks like a real one: 64 hex digits"
    );
    let fields = SignedFields::of(&request).expect("all signed fields present");
    assert_eq!(fields, fields_of(v1), "the envelope carries vector 1");
    assert_eq!(hex::encode(canonical_bytes(&fields)), v1["canonical"]);
    let signature = request.signature.as_deref().expect("signed");
    assert_eq!(signature, v1["signature"]);
    let key = signing_key(v1["seed"]);
    verify(&key.verifying_key(), &fields, signature).expect("envelope verifies");
    assert_eq!(
        String::from_utf8(request.encode()).unwrap(),
        body,
        "the doc says this is how the Rust client serialises it"
    );
    request.operation().expect("the operation parses");
}

#[test]
fn example_frame_header_is_the_body_length() {
    let body = envelope_body();
    let blocks = fenced_blocks(DOC, "foldclient-frame");
    assert_eq!(blocks.len(), 1);
    let kv: BTreeMap<_, _> = key_values(&blocks[0]).into_iter().collect();
    assert_eq!(kv.len(), 2);
    assert_eq!(kv["body_length"], body.len().to_string());
    let len = u32::try_from(body.len()).unwrap();
    assert_eq!(kv["header"], hex::encode(len.to_be_bytes()));
    let frame = encode_frame(body.as_bytes(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(hex::encode(&frame[..HEADER_LEN]), kv["header"]);
    assert_eq!(&frame[HEADER_LEN..], body.as_bytes());
    let spaced: Vec<_> = len
        .to_be_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        DOC.contains(&format!(
            "a {len}-byte body is preceded by the header `{}`",
            spaced.join(" ")
        )),
        "the framing section's example matches"
    );
}

#[test]
fn error_table_lists_every_code() {
    let codes: Vec<&str> = ERROR_RS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ErrorCode::"))
        .filter_map(|l| l.split_once(" => \""))
        .filter_map(|(_, rest)| rest.strip_suffix("\","))
        .filter(|code| *code != "unknown")
        .collect();
    assert!(codes.len() >= 13, "parsed ErrorCode::as_str: {codes:?}");
    let table: Vec<&str> = section("## 8. Error codes")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(code, _)| code)
        .collect();
    assert_eq!(
        table, codes,
        "the table lists every code, in the enum's order"
    );
}

#[test]
fn every_operation_has_a_section() {
    let ops = section("## 7. Operations");
    let headings: Vec<&str> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.strip_suffix('`'))
        .collect();
    let kinds: Vec<&str> = OperationKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        headings, kinds,
        "one section per operation, in protocol order"
    );
}

#[test]
fn limits_table_matches_the_constants() {
    use fold_ipc::{credentials, message, operation, query, schema, server};
    let conn = server::ConnectionLimits::default();
    let expected: BTreeMap<&str, u64> = [
        ("DEFAULT_MAX_FRAME", DEFAULT_MAX_FRAME as u64),
        ("MAX_ID_LEN", message::MAX_ID_LEN as u64),
        ("MAX_SECRET_LEN", message::MAX_SECRET_LEN as u64),
        ("MAX_OPERATION_LEN", message::MAX_OPERATION_LEN as u64),
        ("MAX_NAME_LEN", schema::MAX_NAME_LEN as u64),
        ("MAX_FIELDS", schema::MAX_FIELDS as u64),
        ("MAX_RECORD_ID_LEN", operation::MAX_RECORD_ID_LEN as u64),
        ("DEFAULT_LIMIT", u64::from(query::DEFAULT_LIMIT)),
        ("MAX_LIMIT", u64::from(query::MAX_LIMIT)),
        ("MAX_FILTER_DEPTH", query::MAX_FILTER_DEPTH as u64),
        ("MAX_FILTER_NODES", query::MAX_FILTER_NODES as u64),
        ("MAX_IN_VALUES", query::MAX_IN_VALUES as u64),
        (
            "MAX_FILTER_VALUE_BYTES",
            query::MAX_FILTER_VALUE_BYTES as u64,
        ),
        ("MAX_FILTER_BYTES", query::MAX_FILTER_BYTES as u64),
        ("MAX_CREDENTIALS_FILE", credentials::MAX_CREDENTIALS_FILE),
        (
            "params::MAX_PARAM_VALUES",
            fold_ipc::params::MAX_PARAM_VALUES as u64,
        ),
        ("ConnectionLimits::max_in_flight", conn.max_in_flight as u64),
        (
            "ConnectionLimits::idle_timeout",
            conn.idle_timeout.as_secs(),
        ),
        (
            "ConnectionLimits::read_timeout",
            conn.read_timeout.as_secs(),
        ),
        (
            "ConnectionLimits::write_timeout",
            conn.write_timeout.as_secs(),
        ),
    ]
    .into_iter()
    .collect();
    let mut seen = BTreeMap::new();
    for line in section("## 9. Limits").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| limit | value | `constant` |" splits into ["", limit, value, constant, ""].
        let [_, _, value, constant, _] = cells[..] else {
            continue;
        };
        let Some(constant) = constant.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        if constant == "fold_ipc` constant" {
            continue;
        }
        let number: u64 = value
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{constant}: value {value:?} does not start with a number"));
        let want = expected
            .get(constant)
            .unwrap_or_else(|| panic!("unknown constant {constant} in the limits table"));
        assert_eq!(number, *want, "{constant}");
        seen.insert(constant, number);
    }
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "limits missing from the doc: {missing:?}"
    );
}

/// Deserialises `json` as `T` and checks that nothing was dropped on the way.
fn typed_round_trip<T: DeserializeOwned + Serialize>(json: &str) {
    let value: Value = serde_json::from_str(json).expect("result example is JSON");
    let typed: T = serde_json::from_value(value.clone()).expect("result has the documented type");
    assert_eq!(serde_json::to_value(&typed).unwrap(), value, "{json}");
}

/// As [`typed_round_trip`], and `T` serialises to exactly the doc's bytes: the example is
/// what a server sends, key order included.
fn exact_round_trip<T: DeserializeOwned + Serialize>(json: &str) {
    typed_round_trip::<T>(json);
    let typed: T = serde_json::from_str(json).expect("result has the documented type");
    assert_eq!(
        serde_json::to_string(&typed).unwrap(),
        json,
        "the doc prints what the type sends"
    );
}

/// A `query` result example: the app's form reads it, and the node's form (rows kept as
/// text, as `QueryResultWriter` builds them) gives back its exact bytes.
fn query_result_round_trip(json: &str) {
    typed_round_trip::<QueryResult>(json);
    exact_round_trip::<QueryResult<Box<RawValue>>>(json);
    let page: QueryResult<Box<RawValue>> = serde_json::from_str(json).unwrap();
    let mut writer = QueryResultWriter::new();
    for row in &page.rows {
        writer.push_row(row.get());
    }
    let written = writer.finish(page.next_cursor.as_deref()).unwrap();
    assert_eq!(
        written.get(),
        json,
        "the node's page builder writes the doc's bytes"
    );
}

#[test]
fn operation_examples_parse() {
    let mut op: Option<&str> = None;
    let mut in_json = false;
    let (mut params_seen, mut results_seen) = (0, 0);
    for line in section("## 7. Operations").lines() {
        if let Some(name) = line.strip_prefix("### `").and_then(|l| l.strip_suffix('`')) {
            op = Some(name);
        }
        match line.trim_end() {
            "```json" => in_json = true,
            "```" => in_json = false,
            _ => {}
        }
        let Some(op) = op.filter(|_| in_json) else {
            continue;
        };
        if let Some(params) = line.strip_prefix("params: ") {
            let raw = (params != "(absent)")
                .then(|| RawValue::from_string(params.to_string()).expect("params is JSON"));
            Operation::parse(op, raw.as_deref())
                .unwrap_or_else(|e| panic!("{op} example params refused: {e}\n{params}"));
            params_seen += 1;
        } else if let Some(result) = line.strip_prefix("result: ") {
            match op {
                "ping" => exact_round_trip::<Pong>(result),
                "list_schemas" => exact_round_trip::<SchemaList>(result),
                "get_schema" | "create_schema" => exact_round_trip::<SchemaDef>(result),
                "query" => query_result_round_trip(result),
                "mutation" => exact_round_trip::<MutationResult>(result),
                "history" => exact_round_trip::<HistoryResult>(result),
                "delete_schema" => {
                    exact_round_trip::<DeleteSchemaResult>(result);
                    let r: DeleteSchemaResult = serde_json::from_str(result).unwrap();
                    assert!(r.deleted, "{result}");
                }
                other => panic!("no result type known for {other}"),
            }
            results_seen += 1;
        }
    }
    assert!(
        params_seen >= 11 && results_seen >= 11,
        "{params_seen} {results_seen}"
    );
}

#[test]
fn example_responses_are_well_formed() {
    let mut seen = 0;
    let examples = DOC
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("{\"request_id\":"));
    for line in examples {
        let value: Value = serde_json::from_str(line).expect("example response is JSON");
        let obj = value.as_object().unwrap();
        for key in ["request_id", "success", "result", "error"] {
            assert!(obj.contains_key(key), "{key} always present: {line}");
        }
        let response = Response::decode(line.as_bytes()).expect("decodes as a Response");
        assert_eq!(response.success, response.error.is_none(), "{line}");
        assert_eq!(response.success, response.result.is_some(), "{line}");
        if let Some(error) = response.error {
            assert_ne!(error.code, fold_ipc::ErrorCode::Unknown, "{line}");
        }
        seen += 1;
    }
    assert!(seen >= 4, "{seen}");
}

/// The session vector of section 10.4: recomputed from its seed and fields, and the one
/// `src/session.rs` unit-tests.
#[test]
fn the_session_vector_is_the_crates_and_holds() {
    const SESSION_RS: &str = include_str!("../../src/session.rs");
    let blocks = fenced_blocks(DOC, "foldclient-session-vector");
    assert_eq!(blocks.len(), 1, "one session vector");
    let v: BTreeMap<_, _> = key_values(&blocks[0]).into_iter().collect();
    let keys: Vec<_> = key_values(&blocks[0]).iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "vector",
            "seed",
            "public_key",
            "app_id",
            "server_nonce",
            "client_nonce",
            "timestamp",
            "canonical",
            "signature"
        ]
    );
    let key = signing_key(v["seed"]);
    assert_eq!(hex::encode(key.verifying_key().as_bytes()), v["public_key"]);
    let fields = fold_ipc::session::HelloFields {
        app_id: v["app_id"],
        server_nonce: v["server_nonce"],
        client_nonce: v["client_nonce"],
        timestamp: v["timestamp"].parse().unwrap(),
    };
    assert_eq!(
        hex::encode(fold_ipc::session::canonical_bytes(&fields)),
        v["canonical"]
    );
    assert_eq!(fold_ipc::session::sign(&key, &fields), v["signature"]);
    for value in [
        "seed",
        "app_id",
        "server_nonce",
        "client_nonce",
        "canonical",
        "signature",
    ] {
        assert!(
            SESSION_RS.contains(&format!("\"{}\"", v[value])),
            "src/session.rs unit-tests the doc's {value}"
        );
    }
}
