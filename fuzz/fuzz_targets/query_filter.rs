//! The query filter parser: `query::Query` and `query::Filter` from arbitrary JSON, then
//! `Query::validate` and `Filter::check_limits`.
//!
//! Checked: parsing never panics or overflows the stack; the limits agree with a depth and
//! node count computed here independently; whatever parses survives a serialise/parse round
//! trip unchanged, with the same verdict.
#![no_main]

use fold_ipc::query::{
    Filter, Query, MAX_FILTER_BYTES, MAX_FILTER_DEPTH, MAX_FILTER_NODES, MAX_FILTER_VALUE_BYTES,
    MAX_IN_VALUES,
};
use serde_json::Value;
use libfuzzer_sys::fuzz_target;

/// A value's size as the limits count it: a string's bytes, else its minified JSON.
fn size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        other => serde_json::to_string(other).unwrap().len(),
    }
}

/// (depth, nodes, largest `in` list, longest value, all values' bytes), computed without
/// `check_limits`.
fn shape(filter: &Filter) -> (usize, usize, usize, usize, usize) {
    let mut stack = vec![(filter, 1usize)];
    let (mut depth, mut nodes, mut widest, mut longest, mut bytes) = (0, 0, 0, 0, 0);
    let mut value = |len: usize| {
        longest = longest.max(len);
        bytes += len;
    };
    while let Some((f, d)) = stack.pop() {
        depth = depth.max(d);
        nodes += 1;
        match f {
            Filter::And { filters } | Filter::Or { filters } => {
                stack.extend(filters.iter().map(|c| (c, d + 1)));
            }
            Filter::Not { filter } => stack.push((filter, d + 1)),
            Filter::In { values, .. } => {
                widest = widest.max(values.len());
                values.iter().for_each(|v| value(size(v)));
            }
            Filter::Eq { value: v, .. }
            | Filter::Ne { value: v, .. }
            | Filter::Lt { value: v, .. }
            | Filter::Lte { value: v, .. }
            | Filter::Gt { value: v, .. }
            | Filter::Gte { value: v, .. } => value(size(v)),
            Filter::Contains { value: v, .. } | Filter::Prefix { value: v, .. } => value(v.len()),
        }
    }
    (depth, nodes, widest, longest, bytes)
}

fn within_limits(filter: &Filter) -> bool {
    let (depth, nodes, widest, longest, bytes) = shape(filter);
    depth <= MAX_FILTER_DEPTH
        && nodes <= MAX_FILTER_NODES
        && widest <= MAX_IN_VALUES
        && longest <= MAX_FILTER_VALUE_BYTES
        && bytes <= MAX_FILTER_BYTES
}

fuzz_target!(|data: &[u8]| {
    if let Ok(filter) = serde_json::from_slice::<Filter>(data) {
        let verdict = filter.check_limits();
        assert_eq!(verdict.is_ok(), within_limits(&filter), "{verdict:?}");
        let text = serde_json::to_string(&filter).expect("a filter serialises");
        let back: Filter = serde_json::from_str(&text).expect("a serialised filter parses");
        assert_eq!(back, filter);
        assert_eq!(back.check_limits(), verdict);
    }
    if let Ok(query) = serde_json::from_slice::<Query>(data) {
        let verdict = query.validate();
        if verdict.is_ok() {
            assert!(query.filter.as_ref().is_none_or(within_limits));
            assert!(query
                .limit
                .is_none_or(|l| (1..=fold_ipc::query::MAX_LIMIT).contains(&l)));
            assert!(query.offset.is_none() || query.cursor.is_none());
        }
        let text = serde_json::to_string(&query).expect("a query serialises");
        let back: Query = serde_json::from_str(&text).expect("a serialised query parses");
        assert_eq!(back, query);
        assert_eq!(back.validate(), verdict);
    }
});
