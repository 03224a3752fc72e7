//! What a removed container can leave on the host, killed.
//!
//! Measured with gVisor (`runsc` 20221219 under Docker 20.10): a start that fails after
//! the runtime booted (for example a runtime registered without `--network=none` asked for
//! a container without network) leaves `runsc-sandbox` and `runsc-gofer` running in the
//! container's cgroup, and the `containerd-shim` that served them, after the engine has
//! removed the container. Nothing else would ever stop them.
//!
//! After every removal the daemon kills (SIGKILL, through a pidfd opened before the check,
//! so a reused pid is never hit) every process whose cgroup names the removed container
//! exactly (`sandbox::cgroup::names`) and every root-owned `containerd-shim` whose
//! arguments name it (`-id <full id>`). Under runc the scan finds nothing: the runtime
//! cleans up after itself.

use super::engine::{self, Engine};
use crate::sandbox::{cgroup_names, SandboxError};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Host pids of the processes container `id` left behind.
pub fn leftovers(id: &str) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| belongs(*pid, id))
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether process `pid` is one container `id` left: in its cgroup, or its shim.
fn belongs(pid: i32, id: &str) -> bool {
    let proc_dir = format!("/proc/{pid}");
    let in_cgroup = crate::fsutil::read_capped(Path::new(&format!("{proc_dir}/cgroup")), 64 << 10)
        .is_ok_and(|text| cgroup_names(&text, id));
    in_cgroup || is_shim_of(pid, id)
}

/// A root-owned `containerd-shim*` whose arguments are `... -id <id> ...`.
fn is_shim_of(pid: i32, id: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let proc_dir = format!("/proc/{pid}");
    let root_owned = std::fs::metadata(&proc_dir).is_ok_and(|m| m.uid() == 0);
    let Ok(cmdline) = std::fs::read(format!("{proc_dir}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_shim = args.first().is_some_and(|argv0| {
        Path::new(std::ffi::OsStr::from_bytes(argv0))
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("containerd-shim"))
    });
    root_owned
        && is_shim
        && args
            .windows(2)
            .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
}

/// Kills what container `id` left behind, rescanning until nothing is left or `timeout`
/// has passed. Returns how many processes were killed, and the pids still there.
pub fn reap(id: &str, timeout: Duration) -> (usize, Vec<i32>) {
    if id.len() < 12 {
        return (0, Vec::new());
    }
    let started = Instant::now();
    let mut killed = std::collections::HashSet::new();
    loop {
        let pids = leftovers(id);
        if pids.is_empty() || started.elapsed() >= timeout {
            return (killed.len(), pids);
        }
        for pid in pids {
            let Some(pidfd) =
                Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok())
            else {
                continue; // gone already
            };
            // Checked again with the pidfd open: the pidfd names the process checked.
            if belongs(pid, id) && pidfd_send_signal(&pidfd, Signal::KILL).is_ok() {
                killed.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes container `id` through the engine, then kills what it left on the host.
///
/// # Errors
///
/// The engine did not remove it.
pub async fn remove(docker: &Engine, timeout: Duration, id: &str) -> Result<(), SandboxError> {
    let removed = engine::remove(docker, timeout, id).await;
    let container = id.to_string();
    let reaped =
        tokio::task::spawn_blocking(move || reap(&container, Duration::from_secs(2))).await;
    if let Ok((killed, left)) = reaped {
        if killed > 0 || !left.is_empty() {
            tracing::warn!(
                container = %&id[..id.len().min(12)],
                killed,
                ?left,
                "killed processes the removed container left on the host"
            );
        }
    }
    removed
}
