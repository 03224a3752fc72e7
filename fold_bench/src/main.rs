//! `fold_bench`: what FoldClient costs, side by side with the alternatives, in one run.
//!
//! ```text
//! cargo build --release -p fold_client && cargo run --release -p fold_bench
//! cargo run -p fold_bench -- --smoke        # tiny counts, no Docker, < 60 s (CI)
//! ```
//!
//! Prints one markdown table and (full runs) writes it into `docs/benchmarks.md` between
//! the `fold_bench` markers, with the machine, the load and the command. The method is
//! described in `docs/benchmarks.md`.
//!
//! Parts (the numbers of issue 9):
//! 1. request round trips: through the daemon, the floor stack, straight to the node;
//! 2. where a proxied request's time goes (the daemon's stage counters);
//! 3. launch to first answer vs `docker run --rm`;
//! 4. stopping an app that ignores SIGTERM;
//! 5. daemon memory per installed app and per running container;
//! 6. fair sharing: a victim's reads beside a hostile neighbour, memory per hostile frame.
//!
//! Flags: `--smoke`, `--no-write`, `--out FILE`, `--no-docker`, `--only rt|launch|memory|fair|tiers`
//! (repeatable). Internal: `__worker` (the load generator), `__daemon` (the daemon, when no
//! `fold_client` binary is at hand), `__frames` (part 6's hostile client, as its app's uid).

mod alloc_count;
mod fairness;
mod grpc;
mod lifecycle;
mod memory;
mod procfs;
mod report;
mod roundtrip;
mod rt;
mod stats;
mod tiers;
mod warm;
mod worker;

use anyhow::{bail, Context as _, Result};
use report::Row;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Counts allocations for "allocations per request" (off except while measuring them).
#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tiny counts, no Docker, no docs.
    pub smoke: bool,
    /// Where to write the table (`None`: nowhere).
    pub out: Option<PathBuf>,
    /// Whether to try the Docker parts.
    pub docker: bool,
    /// Parts to run (empty: all).
    pub only: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            smoke: false,
            out: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md")),
            docker: true,
            only: Vec::new(),
        };
        let mut explicit_out = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--smoke" => o.smoke = true,
                "--no-write" => {
                    o.out = None;
                    explicit_out = true;
                }
                "--out" => {
                    o.out = Some(PathBuf::from(it.next().context("--out needs a file")?));
                    explicit_out = true;
                }
                "--no-docker" => o.docker = false,
                "--only" => o
                    .only
                    .push(it.next().context("--only needs a part")?.clone()),
                "-h" | "--help" => {
                    println!("usage: fold_bench [--smoke] [--no-write | --out FILE] [--no-docker] [--only rt|launch|memory|fair|tiers]...");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        if o.smoke {
            o.docker = false;
            if !explicit_out {
                o.out = None;
            }
        }
        if !o.only.is_empty() && !explicit_out {
            // A partial run never overwrites the recorded table.
            o.out = None;
        }
        Ok(o)
    }

    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} vCPU ({cpu}), Linux {kernel}")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("__worker") => worker::serve_stdio(),
        Some("__daemon") => memory::serve_daemon(&args[1..]),
        Some("__frames") => fairness::send_frames_stdio(),
        _ => Options::parse(&args).and_then(|o| bench(&o)),
    };
    if let Err(e) = result {
        eprintln!("fold_bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn bench(o: &Options) -> Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let runtime = fold_ipc::heavy::serving_runtime()?;
    let mut rows: Vec<Row> = Vec::new();
    if o.wants("rt") {
        let sizes = if o.smoke {
            roundtrip::Sizes {
                apps: 16,
                in_flight: 8,
                records: 50,
                rounds: 2,
                seq: 20,
                per_conn: 10,
                crypto_slice: Duration::from_millis(20),
            }
        } else {
            roundtrip::Sizes {
                apps: 16,
                in_flight: 8,
                records: 1000,
                rounds: 12,
                seq: 400,
                per_conn: 250,
                crypto_slice: Duration::from_millis(200),
            }
        };
        rows.extend(roundtrip::run(&runtime, &sizes)?);
    }
    if o.wants("launch") {
        rows.extend(lifecycle::run(&runtime, o));
    }
    if o.wants("memory") {
        rows.extend(memory::run(&runtime, o));
    }
    if o.wants("fair") {
        rows.extend(fairness::run(&runtime, o));
    }
    if o.wants("tiers") {
        let setup = lifecycle::docker_setup(o);
        let cli_bin = lifecycle::fold_client_binary(o);
        rows.extend(tiers::run(&runtime, o.smoke, setup, cli_bin.as_deref()));
    }
    let load_after = loadavg();
    let table = report::markdown(&rows);
    println!("{table}");
    let command = if o.smoke {
        "cargo run -p fold_bench -- --smoke"
    } else {
        "cargo build --release -p fold_client && cargo run --release -p fold_bench"
    };
    let block = format!(
        "Recorded run: {}; load average {load_before} before, {load_after} after; {:.0} s.\n\
         Command: `{command}`.\n\n{table}",
        machine(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &o.out {
        report::write_block(path, &block)?;
        eprintln!("fold_bench: wrote {}", path.display());
    }
    Ok(())
}
