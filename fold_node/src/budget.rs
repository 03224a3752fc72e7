//! The work budget of a read, and the linear-time `contains` function that counts into it.
//!
//! Every read connection carries a [`Meter`]: the work the current read has done so far, in
//! SQLite virtual-machine steps, and its budget. SQLite's progress handler adds the steps it
//! has seen ([`crate::node`] installs it on every read), and [`CONTAINS_FN`], which a
//! `contains` filter compiles to, adds one step per [`BYTES_PER_STEP`] bytes it scans, so a
//! single step over a huge field cannot escape the budget. A read over its budget is
//! interrupted and answered `too_expensive` with `limit: "max_vm_steps"`.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The SQL function a `contains` filter compiles to: `fold_contains(haystack, needle)` is 1
/// when the UTF-8 bytes of `needle` occur in those of `haystack` (case-sensitive; the empty
/// needle occurs in every string), 0 when not, NULL when either is NULL. Linear time
/// (`memchr::memmem`), where SQLite's `instr` is O(haystack x needle) on adversarial input.
pub(crate) const CONTAINS_FN: &str = "fold_contains";

/// Bytes of haystack [`CONTAINS_FN`] scans per step charged to the read's budget.
pub(crate) const BYTES_PER_STEP: u64 = 64;

/// The work done by the read running on one connection, and its budget.
#[derive(Debug)]
pub(crate) struct Meter {
    spent: AtomicU64,
    limit: AtomicU64,
}

impl Meter {
    /// A meter without a budget (connections that run no reads, until one starts).
    pub fn unlimited() -> Arc<Meter> {
        Arc::new(Meter {
            spent: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
        })
    }

    /// A read starts on this connection having already `spent` (on an earlier attempt) of
    /// its `limit`.
    pub fn start(&self, spent: u64, limit: u64) {
        self.spent.store(spent, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Adds `steps`; true when the read is now over its budget.
    pub fn charge(&self, steps: u64) -> bool {
        let spent = self
            .spent
            .fetch_add(steps, Ordering::Relaxed)
            .saturating_add(steps);
        spent > self.limit.load(Ordering::Relaxed)
    }

    /// Steps spent by the read so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }

    /// Whether the read went over its budget.
    pub fn exceeded(&self) -> bool {
        self.spent() > self.limit.load(Ordering::Relaxed)
    }
}

/// Registers [`CONTAINS_FN`] on `conn`, counting the bytes it scans into `meter`.
pub(crate) fn register(conn: &Connection, meter: Arc<Meter>) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function(CONTAINS_FN, 2, flags, move |ctx| {
        let (Some(haystack), Some(needle)) = (bytes(ctx.get_raw(0)), bytes(ctx.get_raw(1))) else {
            return Ok(None);
        };
        let steps = (haystack.len() as u64 + needle.len() as u64) / BYTES_PER_STEP + 1;
        if meter.charge(steps) {
            // Stops the statement now; the read sees the meter and answers too_expensive.
            return Err(rusqlite::Error::UserFunctionError(
                "the read's work budget is spent".into(),
            ));
        }
        Ok(Some(memchr::memmem::find(&haystack, &needle).is_some()))
    })
}

/// A value's text as bytes, as `instr` would see it; `None` for NULL.
fn bytes(v: ValueRef<'_>) -> Option<Cow<'_, [u8]>> {
    match v {
        ValueRef::Null => None,
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(Cow::Borrowed(b)),
        ValueRef::Integer(i) => Some(Cow::Owned(i.to_string().into_bytes())),
        ValueRef::Real(r) => Some(Cow::Owned(r.to_string().into_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(conn: &Connection, haystack: &str, needle: &str) -> Option<i64> {
        conn.query_row(
            &format!("SELECT {CONTAINS_FN}({haystack}, {needle})"),
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn contains_agrees_with_instr() {
        let conn = Connection::open_in_memory().unwrap();
        register(&conn, Meter::unlimited()).unwrap();
        let cases = [
            ("'hello'", "'ell'"),
            ("'hello'", "'Ell'"),
            ("'hello'", "''"),
            ("''", "''"),
            ("''", "'a'"),
            ("'wörld'", "'ö'"),
            ("'wörld'", "'örl'"),
            ("'abc'", "'abcd'"),
            ("NULL", "'a'"),
            ("'a'", "NULL"),
            ("12345", "'234'"),
        ];
        for (h, n) in cases {
            let instr: Option<i64> = conn
                .query_row(&format!("SELECT instr({h}, {n}) > 0"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(eval(&conn, h, n), instr, "{h} {n}");
        }
    }

    #[test]
    fn contains_charges_the_bytes_it_scans() {
        let conn = Connection::open_in_memory().unwrap();
        let meter = Meter::unlimited();
        register(&conn, Arc::clone(&meter)).unwrap();
        meter.start(0, 1000);
        assert_eq!(eval(&conn, "'abc'", "'b'"), Some(1));
        assert_eq!(meter.spent(), 1);
        // 64 KiB is 1,024 steps: over the budget, and the statement fails.
        let big = format!("'{}'", "a".repeat(64 * 1024));
        let e = conn
            .query_row(&format!("SELECT {CONTAINS_FN}({big}, 'b')"), [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .unwrap_err();
        assert!(meter.exceeded(), "{e}");
    }
}
