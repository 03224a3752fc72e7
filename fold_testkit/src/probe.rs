//! What a process can see of its own confinement; reported by the `fold_probe` binary.
//!
//! `fold_probe` prints one [`ProbeReport`] as a single line of JSON on stdout. Tests run it
//! inside a hardened container and assert on the fields.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Facts about the current process and its environment (Linux `/proc` and `/sys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Process id (1 when the probe is a container's init process).
    pub pid: u32,
    /// Real uid (`Uid:` in `/proc/self/status`).
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Real gid (`Gid:` in `/proc/self/status`).
    pub gid: u32,
    /// Whether a new file could be created in `/`.
    pub can_write_root: bool,
    /// The error of that attempt, e.g. "Read-only file system (os error 30)".
    pub write_root_error: Option<String>,
    /// Whether a new file could be created in `/tmp`.
    pub can_write_tmp: bool,
    /// The error of that attempt.
    pub write_tmp_error: Option<String>,
    /// Network interface names from `/proc/net/dev`, sorted.
    pub interfaces: Vec<String>,
    /// Effective capability set (`CapEff:`), as a number.
    pub cap_eff: u64,
    /// Bounding capability set (`CapBnd:`).
    pub cap_bnd: u64,
    /// `NoNewPrivs:` (1 when set).
    pub no_new_privs: u8,
    /// `Seccomp:` mode (2 = filter), if the kernel reports it.
    pub seccomp: Option<u8>,
    /// Memory limit of the cgroup in bytes (cgroup v1 or v2), if any.
    pub memory_limit_bytes: Option<u64>,
    /// Pids limit of the cgroup, if any.
    pub pids_limit: Option<u64>,
}

impl ProbeReport {
    /// Collects the report for the current process.
    ///
    /// # Errors
    ///
    /// When `/proc/self/status` cannot be read or lacks an expected field.
    pub fn collect() -> io::Result<Self> {
        let status = fs::read_to_string("/proc/self/status")?;
        let uids = id_fields(&status, "Uid:")?;
        let gids = id_fields(&status, "Gid:")?;
        let (can_write_root, write_root_error) = try_create(Path::new("/"));
        let (can_write_tmp, write_tmp_error) = try_create(Path::new("/tmp"));
        Ok(Self {
            pid: std::process::id(),
            uid: uids[0],
            euid: uids[1],
            gid: gids[0],
            can_write_root,
            write_root_error,
            can_write_tmp,
            write_tmp_error,
            interfaces: interfaces(&fs::read_to_string("/proc/net/dev").unwrap_or_default()),
            cap_eff: hex_field(&status, "CapEff:")?,
            cap_bnd: hex_field(&status, "CapBnd:")?,
            no_new_privs: field(&status, "NoNewPrivs:")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| missing("NoNewPrivs:"))?,
            seccomp: field(&status, "Seccomp:").and_then(|v| v.parse().ok()),
            memory_limit_bytes: first_limit(&[
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory.max",
            ]),
            pids_limit: first_limit(&["/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"]),
        })
    }
}

fn missing(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/self/status has no usable {name} line"),
    )
}

/// The value after `name` on its line of a `/proc/<pid>/status` text.
fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
}

fn id_fields(status: &str, name: &str) -> io::Result<Vec<u32>> {
    let ids: Vec<u32> = field(status, name)
        .ok_or_else(|| missing(name))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| missing(name))?;
    if ids.len() < 2 {
        return Err(missing(name));
    }
    Ok(ids)
}

fn hex_field(status: &str, name: &str) -> io::Result<u64> {
    field(status, name)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| missing(name))
}

/// Tries to create (and then removes) a fresh file in `dir`.
fn try_create(dir: &Path) -> (bool, Option<String>) {
    let path = dir.join(format!(".fold_probe_{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => {
            let _ = fs::remove_file(&path);
            (true, None)
        }
        Err(e) => (false, Some(e.to_string())),
    }
}

/// Interface names from the text of `/proc/net/dev` (two header lines, then `name: counters`).
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names
}

/// The first of `paths` that holds a number ("max" or a missing file means no limit).
fn first_limit(paths: &[&str]) -> Option<u64> {
    paths
        .iter()
        .find_map(|path| fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tfold_probe\nUid:\t200001\t200001\t200001\t200001\n\
                          Gid:\t200002\t200002\t200002\t200002\nCapEff:\t0000000000000000\n\
                          CapBnd:\t00000000a80425fb\nNoNewPrivs:\t1\nSeccomp:\t2\n";

    #[test]
    fn status_fields_parse() -> io::Result<()> {
        assert_eq!(id_fields(STATUS, "Uid:")?, vec![200_001; 4]);
        assert_eq!(id_fields(STATUS, "Gid:")?[0], 200_002);
        assert_eq!(hex_field(STATUS, "CapEff:")?, 0);
        assert_eq!(hex_field(STATUS, "CapBnd:")?, 0xa804_25fb);
        assert_eq!(field(STATUS, "NoNewPrivs:"), Some("1"));
        assert!(hex_field(STATUS, "CapPrm:").is_err());
        Ok(())
    }

    #[test]
    fn net_dev_names_parse() {
        let text = "Inter-|   Receive\n face |bytes    packets\n    lo: 0 0 0\n  eth0: 1 2 3\n";
        assert_eq!(interfaces(text), vec!["eth0".to_owned(), "lo".to_owned()]);
    }

    #[test]
    fn collect_works_on_the_host_and_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let report = ProbeReport::collect()?;
        assert!(report.interfaces.iter().any(|i| i == "lo"));
        let json = serde_json::to_string(&report)?;
        assert!(!json.contains('\n'));
        assert_eq!(serde_json::from_str::<ProbeReport>(&json)?, report);
        Ok(())
    }
}
