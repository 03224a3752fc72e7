//! Reading the memory figures `/proc` gives as `Key:   N kB` lines.

/// The value of `key` (e.g. `VmRSS`, `Pss`) in the `/proc` file at `path`, in KiB.
pub fn kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
