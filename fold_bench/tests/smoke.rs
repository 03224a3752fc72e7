//! The benchmark builds and runs: `fold_bench --smoke` (tiny counts, no Docker, nothing
//! written) exits 0 and prints the table with every row.

use std::process::Command;

/// The start of every row the table must have, parts 1 to 7.
const ROWS: &[&str] = &[
    "| 1. point read by id, 1 app sequential",
    "| 1. the same read, through the daemon vs sent straight to the node",
    "| 1. the same, with the client on a thread",
    "| 1. 16 apps × 8 in flight: signed requests per second through the daemon vs the machine's crypto bound",
    "| 1. 16 apps × 8 in flight: through the daemon vs the floor",
    "| 1. 16 apps × 8 in flight: through the daemon vs straight to the node",
    "| 1. crypto, one core",
    "| 1. batch verification",
    "| 2. proxied request, mean per request: read",
    "| 2. proxied request, mean per request: parse",
    "| 2. proxied request, mean per request: dispatch",
    "| 2. proxied request, mean per request: verify",
    "| 2. proxied request, mean per request: policy",
    "| 2. proxied request, mean per request: node",
    "| 2. proxied request, mean per request: audit",
    "| 2. proxied request, mean per request: encode",
    "| 2. proxied request, mean per request: queue",
    "| 1. point read by id, 1 app sequential: on a session",
    "| 1. the same read on a session vs signed",
    "| 1. the same read on a session vs an unauthenticated gRPC unary echo",
    "| 1. 16 apps × 8 in flight: session requests per second",
    "| 2. proxied request, mean per request: write",
    "| 2. sum of the server stages",
    "| 2. heap allocations per request",
    "| 2. responses per socket `write`",
    "| 2. signatures per verification",
    "| 2. cost of the stage counters",
    "| 3. launch: `fold_client app launch`",
    "| 3. warm launch: `fold_client app launch`",
    "| 3. launch vs `docker run --rm`",
    "| 3. one-off jobs per second, sequential: `fold_client run`",
    "| 3. one-off jobs per second, sequential, with prepared slots",
    "| 3. one pooled job end to end",
    "| 3. memory per idle prepared container",
    "| 4. stop an app that ignores SIGTERM",
    "| 4. the same, direct backend",
    "| 5. daemon memory (VmRSS) per idle installed app",
    "| 5. daemon memory per running container",
    "| 6. victim's p99 point read beside a hostile neighbour",
    "| 6. daemon peak RSS growth per 4 MiB hostile frame",
    "| 7. launch under gvisor",
    "| 7. launch until the first answer: gvisor vs container",
    "| 7. signed point read p50, timed inside the app",
];

#[test]
fn smoke_run_prints_every_row() {
    let out = Command::new(env!("CARGO_BIN_EXE_fold_bench"))
        .arg("--smoke")
        .output()
        .expect("run fold_bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fold_bench --smoke failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for row in ROWS {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "missing row {row:?} in:\n{stdout}"
        );
    }
    // Every measured row has figures; the ones not measured say why.
    for line in stdout.lines().filter(|l| {
        l.starts_with("| 1.")
            || l.starts_with("| 2.")
            || l.starts_with("| 5. daemon memory (VmRSS)")
            || l.starts_with("| 6.")
    }) {
        assert!(!line.contains("not measured"), "{line}");
        assert!(line.chars().any(|c| c.is_ascii_digit()), "{line}");
    }
}
