//! Invariants of ARCHITECTURE.md that a text scan of the workspace's source can check.
//!
//! Each check reads the product code (what comes before a file's unit tests) of the crates
//! it concerns, and each exception it allows is listed here with the reason it is sound, so
//! a new one is a visible decision in review rather than a drift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root (this crate is one level below it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // Unit-test modules in their own directory (`client/tests/`) are test code.
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The product code of a source file: what comes before its unit tests.
fn product_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.to_string_lossy();
    if name.ends_with("_tests.rs") || name.ends_with("/tests.rs") {
        return String::new();
    }
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Product source files of `crate_dir/src`, as paths relative to the workspace, with their
/// product code, comment lines blanked (so prose never counts as code).
fn product_files(crate_dir: &str) -> Vec<(String, String)> {
    let root = workspace();
    let mut files = Vec::new();
    sources(&root.join(crate_dir).join("src"), &mut files);
    assert!(!files.is_empty(), "found the sources of {crate_dir}");
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let code = product_code(&path)
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("//") {
                        ""
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, code)
        })
        .collect()
}

/// `file:line: text` for each line of `code` containing `pattern`.
fn hits(file: &str, code: &str, pattern: &str) -> Vec<String> {
    code.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(pattern))
        .map(|(n, line)| format!("{file}:{}: {}", n + 1, line.trim()))
        .collect()
}

/// "Root never writes, chmods, chowns or reads by path inside a directory an app can
/// write": the daemon changes owners and modes, copies and writes files only through
/// `fsutil` (directory descriptors, `O_NOFOLLOW|O_EXCL`, `renameat`). (Log and audit
/// rotation rename by path, inside the daemon's own 0700 directories.)
#[test]
fn no_path_based_owner_mode_or_write_outside_fsutil() {
    let files = product_files("fold_client");
    assert!(files.len() > 20, "found the sources");
    let forbidden = [
        "fs::set_permissions(",
        "fs::chown(",
        "fs::lchown(",
        "fs::copy(",
        "fs::write(",
        "fs::hard_link(",
    ];
    let found: Vec<String> = files
        .iter()
        .flat_map(|(file, code)| forbidden.iter().flat_map(|p| hits(file, code, p)))
        .collect();
    assert!(
        found.is_empty(),
        "path-based file changes:\n{}",
        found.join("\n")
    );
}

/// "Only `sandbox/docker.rs` and its submodules `sandbox/docker/*` import bollard."
#[test]
fn bollard_is_used_only_by_the_docker_backend() {
    let found: Vec<String> = product_files("fold_client")
        .iter()
        .filter(|(file, _)| {
            !(file == "fold_client/src/sandbox/docker.rs"
                || file.starts_with("fold_client/src/sandbox/docker/"))
        })
        .flat_map(|(file, code)| hits(file, code, "bollard"))
        .collect();
    assert!(
        found.is_empty(),
        "bollard outside sandbox/docker:\n{}",
        found.join("\n")
    );
}

/// Task and thread spawns that are not on a `TaskTracker` or `JoinSet`, with why each is
/// sound: (file, pattern, how many, reason).
const UNTRACKED_SPAWNS: &[(&str, &str, usize, &str)] = &[
    (
        "fold_client/src/audit.rs",
        "tokio::spawn(",
        1,
        "the audit writer: its JoinHandle goes to the daemon, which awaits it at shutdown",
    ),
    (
        "fold_client/src/sandbox/direct.rs",
        "tokio::spawn(",
        1,
        "a direct child's reaper: it ends when the child is reaped; its guard kills the \
         process group if the task is dropped",
    ),
    (
        "fold_client/src/sandbox/fake.rs",
        "tokio::spawn(",
        1,
        "the fake backend's scripted run: test support only (`cfg(test)` or `test-support`), \
         never in the daemon",
    ),
    (
        "fold_client/src/cli/run.rs",
        "tokio::spawn(",
        1,
        "the CLI's log tail for `app run`: a CLI process, awaited before it exits",
    ),
    (
        "fold_client/src/apps.rs",
        "spawn_blocking(",
        1,
        "killing a removed app's processes: awaited by the removal",
    ),
    (
        "fold_client/src/sandbox/docker/reap.rs",
        "spawn_blocking(",
        1,
        "killing what a removed container left behind: awaited by the removal",
    ),
    (
        "fold_client/src/nonce_journal.rs",
        "spawn_blocking(",
        1,
        "the journal's fsync: awaited by its caller",
    ),
    (
        "fold_ipc/src/mux.rs",
        "tokio::spawn(",
        2,
        "a client connection's writer and reader: they end with the connection, which the \
         reader's owner closes on drop",
    ),
    (
        "fold_ipc/src/server.rs",
        "tokio::spawn(",
        1,
        "a connection's response writer: awaited before `serve_connection` returns",
    ),
    (
        "fold_ipc/src/heavy.rs",
        "thread::spawn(",
        1,
        "the probe of whether this process may raise its priority: joined at once",
    ),
    (
        "fold_node/src/node.rs",
        "spawn_blocking(",
        1,
        "a read on the blocking pool: awaited by the request, and stopped at its deadline",
    ),
];

/// "Every long-lived task is tracked": a spawn outside a tracker is one of
/// [`UNTRACKED_SPAWNS`], and every entry there still exists.
#[test]
fn every_untracked_spawn_is_listed_with_its_reason() {
    let patterns = ["tokio::spawn(", "spawn_blocking(", "thread::spawn("];
    let mut counts: BTreeMap<(String, &str), Vec<String>> = BTreeMap::new();
    for krate in ["fold_client", "fold_ipc", "fold_node"] {
        for (file, code) in product_files(krate) {
            for pattern in patterns {
                let found = hits(&file, &code, pattern);
                if !found.is_empty() {
                    counts.insert((file.clone(), pattern), found);
                }
            }
        }
    }
    let mut problems = Vec::new();
    for ((file, pattern), found) in &counts {
        let allowed = UNTRACKED_SPAWNS
            .iter()
            .find(|(f, p, _, _)| f == file && p == pattern)
            .map_or(0, |(_, _, n, _)| *n);
        if found.len() != allowed {
            problems.push(format!(
                "{file}: {} `{pattern}` where {allowed} are listed:\n  {}",
                found.len(),
                found.join("\n  ")
            ));
        }
    }
    for (file, pattern, _, _) in UNTRACKED_SPAWNS {
        if !counts.contains_key(&(file.to_string(), *pattern)) {
            problems.push(format!("{file}: listed `{pattern}` no longer exists"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Where `unsafe` is allowed (the workspace denies it): (file, reason).
const UNSAFE_ALLOWED: &[(&str, &str)] = &[
    (
        "fold_client/src/lib.rs",
        "mallopt before any thread starts: the allocator returns large buffers",
    ),
    (
        "fold_client/src/sandbox/direct.rs",
        "pre_exec in the forked child: async-signal-safe calls only (setsid, setrlimit)",
    ),
    (
        "fold_ipc/src/heavy.rs",
        "sched_getattr and sched_setattr on the calling thread: no wrapper in nix, rustix or libc",
    ),
    (
        "fold_bench/src/alloc_count.rs",
        "the counting global allocator of the benchmark, delegating to System",
    ),
];

/// "`unsafe` only where listed": every `allow(unsafe_code)` is in [`UNSAFE_ALLOWED`].
#[test]
fn unsafe_code_only_where_listed() {
    let mut found = BTreeSet::new();
    for krate in [
        "fold_client",
        "fold_ipc",
        "fold_node",
        "fold_bench",
        "fold_testkit",
    ] {
        for (file, code) in product_files(krate) {
            if code.contains("allow(unsafe_code)") {
                found.insert(file);
            }
        }
    }
    let listed: BTreeSet<String> = UNSAFE_ALLOWED.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(found, listed, "files allowing unsafe_code");
}

/// Serde types outside `fold_ipc`, and where their bytes go: (file, type, destination).
/// None crosses an app or node socket; admin types cross only between the `fold_client`
/// binary and itself (ARCHITECTURE.md, "Boundary").
const SERDE_OUTSIDE_FOLD_IPC: &[(&str, &str, &str)] = &[
    (
        "fold_client/src/app_limits.rs",
        "LimitSettings",
        "config file, registry file, admin socket",
    ),
    ("fold_client/src/audit.rs", "RequestLine", "the audit log"),
    (
        "fold_client/src/cli/doctor.rs",
        "Check",
        "`doctor --json` on stdout",
    ),
    ("fold_client/src/config.rs", "FileConfig", "the config file"),
    (
        "fold_client/src/config.rs",
        "ContainerSettings",
        "the config file",
    ),
    (
        "fold_client/src/sandbox/isolation.rs",
        "Isolation",
        "the admin socket (ps, launch and app views)",
    ),
    (
        "fold_client/src/sandbox/isolation.rs",
        "IsolationRequest",
        "registry file, admin socket",
    ),
    (
        "fold_client/src/registry/mod.rs",
        "AuthMode",
        "the admin socket",
    ),
    (
        "fold_client/src/registry/mod.rs",
        "Placement",
        "the admin socket",
    ),
    (
        "fold_client/src/registry/store.rs",
        "StoredApp",
        "the registry file",
    ),
    (
        "fold_client/src/registry/store.rs",
        "StoredLimits",
        "the registry file",
    ),
    (
        "fold_client/src/sandbox/docker/report.rs",
        "EngineReport",
        "`doctor --json`, admin socket",
    ),
    (
        "fold_client/src/sandbox/docker/report.rs",
        "StorageSupport",
        "`doctor --json`, admin socket",
    ),
    (
        "fold_client/src/sandbox/docker/warm.rs",
        "TakenRecord",
        "the record of a taken warm container (<state>/warm/runs, 0600)",
    ),
    (
        "fold_client/src/uids.rs",
        "Holder",
        "a uid reservation file",
    ),
    (
        "fold_node/src/cursor.rs",
        "CursorData",
        "inside the opaque cursor string only the node reads",
    ),
    (
        "fold_node/src/cursor.rs",
        "Key",
        "inside the opaque cursor string only the node reads",
    ),
];

/// Files whose serde types are the admin protocol (daemon and CLI of one binary).
fn is_admin_protocol(file: &str) -> bool {
    file == "fold_client/src/admin.rs" || file.starts_with("fold_client/src/admin/")
}

/// `(type name)` of every struct or enum deriving `Serialize` or `Deserialize` in `code`.
fn serde_types(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = false;
    for line in code.lines() {
        let line = line.trim();
        if line.starts_with("#[derive(")
            && (line.contains("Serialize") || line.contains("Deserialize"))
        {
            pending = true;
            continue;
        }
        if !pending || line.starts_with("#[") || line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .collect();
        if let Some(at) = words.iter().position(|w| *w == "struct" || *w == "enum") {
            if let Some(name) = words.get(at + 1) {
                out.push(name.to_string());
            }
        }
        pending = false;
    }
    out
}

/// "Only `fold_ipc` defines types that cross an app or node socket": every serde type of
/// the daemon and the node is listed with where its bytes go, or is the admin protocol.
#[test]
fn serde_types_outside_fold_ipc_are_listed_with_where_they_go() {
    let mut found = BTreeSet::new();
    for krate in ["fold_client", "fold_node"] {
        for (file, code) in product_files(krate) {
            if is_admin_protocol(&file) {
                continue;
            }
            for name in serde_types(&code) {
                found.insert((file.clone(), name));
            }
        }
    }
    let listed: BTreeSet<(String, String)> = SERDE_OUTSIDE_FOLD_IPC
        .iter()
        .map(|(f, t, _)| (f.to_string(), t.to_string()))
        .collect();
    let unlisted: Vec<_> = found.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&found).collect();
    assert!(
        unlisted.is_empty() && gone.is_empty(),
        "serde types not listed: {unlisted:?}; listed but gone: {gone:?}"
    );
}

/// "Docker tests are visible when they cannot run": every test that needs an engine
/// (`need_docker()`, directly or through a `setup()` that calls it) is `#[ignore]`d with
/// its reason, so a run without an engine reports it ignored rather than passed.
#[test]
fn every_docker_test_is_ignored_with_its_reason() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["fold_client/tests/it", "fold_testkit/tests/it"] {
        sources(&root.join(dir), &mut files);
    }
    let mut docker_tests = 0;
    let mut unmarked = Vec::new();
    for path in files.into_iter().filter(|p| !p.ends_with("tidy.rs")) {
        let text = std::fs::read_to_string(&path).unwrap();
        // The `setup()` of a file that calls `need_docker()` needs an engine too.
        let setup_needs_docker = text.contains("fn setup()") && text.contains("need_docker()");
        let in_docker_dir = path.components().any(|c| c.as_os_str() == "docker");
        let mut attributes: Vec<&str> = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if line.starts_with("#[") {
                attributes.push(line);
                continue;
            }
            let is_test = attributes.iter().any(|a| a.contains("test"));
            if is_test && (line.starts_with("async fn ") || line.starts_with("fn ")) {
                let mut body = String::new();
                for next in lines.by_ref() {
                    if next == "}" {
                        break;
                    }
                    body.push_str(next);
                    body.push('\n');
                }
                let needs = body.contains("need_docker()")
                    || ((setup_needs_docker || in_docker_dir) && body.contains("setup()"));
                if needs {
                    docker_tests += 1;
                    if !attributes
                        .iter()
                        .any(|a| a.starts_with("#[ignore = \"needs"))
                    {
                        unmarked.push(format!("{}: {line}", path.display()));
                    }
                }
            }
            attributes.clear();
        }
    }
    assert!(
        docker_tests >= 15,
        "found the Docker tests ({docker_tests})"
    );
    assert!(
        unmarked.is_empty(),
        "Docker tests without #[ignore = \"needs ...\"]:\n{}",
        unmarked.join("\n")
    );
}
/// The daemon's top-level module a product file belongs to (`supervisor/watcher.rs` is
/// `supervisor`).
fn module_of(file: &str) -> Option<String> {
    let rest = file.strip_prefix("fold_client/src/")?;
    let first = rest.split('/').next()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Which of the daemon's modules each module names (`crate::x`), from its product code.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in product_files("fold_client") {
        let Some(module) = module_of(&file) else {
            continue;
        };
        if module == "main" || module == "lib" || module == "cli" {
            continue;
        }
        let edges = graph.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                edges.insert(name);
            }
        }
    }
    graph
}

/// The modules the issue of one owner per concern names: no cycle among them.
const CORE_MODULES: [&str; 6] = ["daemon", "admin", "supervisor", "ipc", "config", "registry"];

/// "No import cycle between `daemon`, `admin`, `supervisor`, `ipc`, `config` and
/// `registry`", and none of the lower four reaches up into `daemon` or `admin` (nor
/// `config` into `supervisor`).
#[test]
fn the_daemon_modules_form_no_cycle() {
    let graph = module_graph();
    let core = |m: &str| CORE_MODULES.contains(&m);
    let mut upward = Vec::new();
    for (module, names) in &graph {
        for name in names {
            let forbidden = match module.as_str() {
                "supervisor" | "ipc" | "registry" => name == "daemon" || name == "admin",
                "config" => name == "daemon" || name == "admin" || name == "supervisor",
                _ => false,
            };
            if forbidden {
                upward.push(format!("{module} -> {name}"));
            }
        }
    }
    // Depth-first search for a cycle among the core modules.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        core: &dyn Fn(&str) -> bool,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            cycles.push(format!("{} -> {m}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            if core(next) {
                visit(next, graph, core, path, done, cycles);
            }
        }
        path.pop();
    }
    let mut cycles = Vec::new();
    for m in CORE_MODULES {
        visit(
            m,
            &graph,
            &core,
            &mut Vec::new(),
            &mut BTreeSet::new(),
            &mut cycles,
        );
    }
    cycles.sort();
    cycles.dedup();
    assert!(
        upward.is_empty() && cycles.is_empty(),
        "modules that reach their callers: {upward:?}; cycles: {cycles:?}"
    );
}
