//! Invariants of ARCHITECTURE.md that a text scan of the daemon's source can check.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The product code of a source file: what comes before its unit tests.
fn product_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    if path.to_string_lossy().ends_with("_tests.rs") {
        return String::new();
    }
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// "Root never writes, chmods, chowns or reads by path inside a directory an app can
/// write": the daemon changes owners and modes, copies and writes files only through
/// `fsutil` (directory descriptors, `O_NOFOLLOW|O_EXCL`, `renameat`). (Log and audit
/// rotation rename by path, inside the daemon's own 0700 directories.)
#[test]
fn no_path_based_owner_mode_or_write_outside_fsutil() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 20, "found the sources");
    let forbidden = [
        "fs::set_permissions(",
        "fs::chown(",
        "fs::lchown(",
        "fs::copy(",
        "fs::write(",
        "fs::hard_link(",
    ];
    let mut found = Vec::new();
    for file in &files {
        let code = product_code(file);
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for pattern in forbidden {
                if line.contains(pattern) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "path-based file changes:\n{}",
        found.join("\n")
    );
}
