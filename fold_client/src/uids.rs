//! Per-app uids and gids that belong to the app alone.
//!
//! A per-app uid (its gid is the same number) is handed out only when nobody else on the
//! host can be it:
//! - no entry of `/etc/passwd`, `/etc/group`, `/etc/subuid` or `/etc/subgid` covers it
//!   ([`HostIds`]; a subordinate range lets its owner become any uid in it with
//!   `unshare --map-users`/`newuidmap`);
//! - no process on the host holds it as a real, effective, saved or file-system uid or gid,
//!   or as a supplementary group ([`live_ids`]; read from the host's `/proc`, so processes in
//!   user namespaces and containers count with their host ids);
//! - its reservation file could be created ([`Reservations`]): one file per uid in a
//!   root-only directory shared by every FoldClient daemon on the host, taken with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` and naming the daemon's state directory and the app.
//!
//! A reservation is released only when the app is removed and [`kill_all`] has made sure
//! that none of its processes remain; if some survive, the uid stays reserved for good.
//!
//! Parsing is pure (`parse_*`), so the rules are unit-tested without touching the host.

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::unlinkat;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`kill_all`] keeps killing and rescanning before it gives up.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The host's user and group databases that are checked for overlaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdFiles {
    /// `/etc/passwd`: every user's uid and primary gid.
    pub passwd: PathBuf,
    /// `/etc/group`: every group's gid.
    pub group: PathBuf,
    /// `/etc/subuid`: subordinate uid ranges (`owner:start:count`).
    pub subuid: PathBuf,
    /// `/etc/subgid`: subordinate gid ranges.
    pub subgid: PathBuf,
}

impl Default for IdFiles {
    fn default() -> IdFiles {
        IdFiles {
            passwd: PathBuf::from("/etc/passwd"),
            group: PathBuf::from("/etc/group"),
            subuid: PathBuf::from("/etc/subuid"),
            subgid: PathBuf::from("/etc/subgid"),
        }
    }
}

/// One id (or range of ids) the host has given to someone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdEntry {
    /// The file it comes from.
    pub file: PathBuf,
    /// Its line (1-based).
    pub line: usize,
    /// The user or group it belongs to (a name, or a number in subuid files).
    pub owner: String,
    /// What the ids are: `uid`, `primary gid`, `gid`, `subordinate uids`, `subordinate gids`.
    pub what: &'static str,
    /// First id.
    pub first: u32,
    /// How many ids, from `first` on.
    pub count: u64,
}

impl IdEntry {
    /// Whether `id` is one of this entry's ids.
    pub fn covers(&self, id: u32) -> bool {
        u64::from(id) >= u64::from(self.first) && u64::from(id) < u64::from(self.first) + self.count
    }
}

impl fmt::Display for IdEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: {:?} has {} ",
            self.file.display(),
            self.line,
            self.owner,
            self.what
        )?;
        if self.count == 1 {
            write!(f, "{}", self.first)
        } else {
            let last = u64::from(self.first) + self.count.saturating_sub(1);
            write!(f, "{}-{last}", self.first)
        }
    }
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Parses `/etc/passwd` (`name:x:uid:gid:...`): each user's uid and primary gid.
/// Malformed lines are skipped.
pub fn parse_passwd(text: &str, file: &Path) -> Vec<IdEntry> {
    let mut out = Vec::new();
    for (line, l) in lines(text) {
        let fields: Vec<&str> = l.split(':').collect();
        if fields.len() < 4 {
            continue;
        }
        for (field, what) in [(fields[2], "uid"), (fields[3], "primary gid")] {
            if let Ok(id) = field.parse::<u32>() {
                out.push(single(file, line, fields[0], what, id));
            }
        }
    }
    out
}

/// Parses `/etc/group` (`name:x:gid:members`). Malformed lines are skipped.
pub fn parse_group(text: &str, file: &Path) -> Vec<IdEntry> {
    lines(text)
        .filter_map(|(line, l)| {
            let fields: Vec<&str> = l.split(':').collect();
            let gid = fields.get(2)?.parse::<u32>().ok()?;
            Some(single(file, line, fields[0], "gid", gid))
        })
        .collect()
}

/// Parses `/etc/subuid` or `/etc/subgid` (`owner:start:count`, owner a name or a number).
/// `what` names the ids (`subordinate uids`). Malformed lines are skipped.
pub fn parse_subids(text: &str, file: &Path, what: &'static str) -> Vec<IdEntry> {
    lines(text)
        .filter_map(|(line, l)| {
            let mut fields = l.split(':');
            let owner = fields.next()?;
            let first = fields.next()?.trim().parse::<u32>().ok()?;
            let count = fields.next()?.trim().parse::<u64>().ok()?;
            (count > 0).then(|| IdEntry {
                file: file.to_path_buf(),
                line,
                owner: owner.to_string(),
                what,
                first,
                count,
            })
        })
        .collect()
}

fn single(file: &Path, line: usize, owner: &str, what: &'static str, id: u32) -> IdEntry {
    IdEntry {
        file: file.to_path_buf(),
        line,
        owner: owner.to_string(),
        what,
        first: id,
        count: 1,
    }
}

/// Every id the host's user databases give to someone.
#[derive(Debug, Clone, Default)]
pub struct HostIds {
    entries: Vec<IdEntry>,
}

impl HostIds {
    /// Reads the four files; a missing file has no entries.
    ///
    /// # Errors
    ///
    /// A file exists but cannot be read.
    pub fn load(files: &IdFiles) -> std::io::Result<HostIds> {
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            )),
        };
        let mut entries = parse_passwd(&read(&files.passwd)?, &files.passwd);
        entries.extend(parse_group(&read(&files.group)?, &files.group));
        entries.extend(parse_subids(
            &read(&files.subuid)?,
            &files.subuid,
            "subordinate uids",
        ));
        entries.extend(parse_subids(
            &read(&files.subgid)?,
            &files.subgid,
            "subordinate gids",
        ));
        Ok(HostIds { entries })
    }

    /// From parsed entries (tests).
    pub fn from_entries(entries: Vec<IdEntry>) -> HostIds {
        HostIds { entries }
    }

    /// Every entry covering some id from `first` to `last` (inclusive).
    pub fn overlapping(&self, first: u32, last: u32) -> Vec<&IdEntry> {
        self.entries
            .iter()
            .filter(|e| {
                u64::from(e.first) <= u64::from(last)
                    && u64::from(e.first) + e.count > u64::from(first)
            })
            .collect()
    }

    /// Every entry covering `id`. An app's uid and gid are the same number, so an id given
    /// to anyone as a uid or as a gid overlaps.
    pub fn overlaps(&self, id: u32) -> Vec<&IdEntry> {
        self.entries.iter().filter(|e| e.covers(id)).collect()
    }
}

/// The ids a process holds, from its `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcIds {
    /// Real, effective, saved and file-system uid.
    pub uids: Vec<u32>,
    /// Real, effective, saved and file-system gid.
    pub gids: Vec<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// A zombie (or dead) process: it has exited and holds nothing.
    pub exited: bool,
}

impl ProcIds {
    /// Whether the process holds `uid` as any uid, or `gid` as any gid or group.
    pub fn holds(&self, uid: u32, gid: u32) -> bool {
        !self.exited
            && (self.uids.contains(&uid) || self.gids.contains(&gid) || self.groups.contains(&gid))
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.uids
            .iter()
            .chain(&self.gids)
            .chain(&self.groups)
            .copied()
    }
}

/// Parses the `State:`, `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`.
/// `None` when the `Uid:` or `Gid:` line is missing.
pub fn parse_status(text: &str) -> Option<ProcIds> {
    let mut ids = ProcIds::default();
    let (mut saw_uid, mut saw_gid) = (false, false);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let numbers = || -> Vec<u32> {
            value
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        match key {
            "State" => {
                let state = value.trim_start();
                ids.exited = state.starts_with('Z') || state.starts_with('X');
            }
            "Uid" => {
                ids.uids = numbers();
                saw_uid = true;
            }
            "Gid" => {
                ids.gids = numbers();
                saw_gid = true;
            }
            "Groups" => ids.groups = numbers(),
            _ => {}
        }
    }
    (saw_uid && saw_gid).then_some(ids)
}

/// Every task (thread) on the host: `(pid, tid, ids)`. Tasks that exit while being read
/// are skipped.
fn scan_tasks() -> Vec<(i32, ProcIds)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let proc_dir = entry.path();
        let mut tasks: Vec<PathBuf> = std::fs::read_dir(proc_dir.join("task"))
            .map(|dir| {
                dir.flatten()
                    .map(|t| t.path().join("status"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if tasks.is_empty() {
            tasks.push(proc_dir.join("status"));
        }
        for status in tasks {
            if let Some(ids) = std::fs::read_to_string(&status)
                .ok()
                .and_then(|t| parse_status(&t))
            {
                out.push((pid, ids));
            }
        }
    }
    out
}

/// Every uid and gid (including supplementary groups) some live process on the host holds.
pub fn live_ids() -> HashSet<u32> {
    scan_tasks()
        .iter()
        .filter(|(_, ids)| !ids.exited)
        .flat_map(|(_, ids)| ids.ids().collect::<Vec<_>>())
        .collect()
}

/// The pids of live processes (any thread) holding `uid` or `gid`, as the host sees them.
pub fn processes_of(uid: u32, gid: u32) -> Vec<i32> {
    let mut pids: Vec<i32> = scan_tasks()
        .into_iter()
        .filter(|(_, ids)| ids.holds(uid, gid))
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Sends SIGKILL to `pid` through a pidfd, after checking (with the pidfd open, so the pid
/// cannot be reused in between) that it still holds `uid` or `gid`.
fn kill_checked(pid: i32, uid: u32, gid: u32) {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let Some(pidfd) = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok())
    else {
        return; // gone already
    };
    let holds = |status: PathBuf| {
        std::fs::read_to_string(status)
            .ok()
            .and_then(|t| parse_status(&t))
            .is_some_and(|ids| ids.holds(uid, gid))
    };
    let still = holds(PathBuf::from(format!("/proc/{pid}/status")))
        || std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| holds(t.path().join("status")));
    if still {
        // The pidfd names the process that was checked, even if its pid is reused by now.
        let _ = pidfd_send_signal(&pidfd, Signal::KILL);
    }
}

/// Kills every process holding `uid` or `gid` on the host (SIGKILL), rescanning until none
/// remains (a process forking meanwhile is found by the next scan), for at most `timeout`.
/// Returns how many processes were killed.
///
/// # Errors
///
/// The pids still alive after `timeout`; or, for uid/gid 0 or the caller's own ids (which
/// this must never be asked to kill), the empty list without killing anything.
pub fn kill_all(uid: u32, gid: u32, timeout: Duration) -> Result<usize, Vec<i32>> {
    let own = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if uid == 0 || gid == 0 || uid == own.0 || gid == own.1 {
        return Err(Vec::new());
    }
    let started = Instant::now();
    let mut killed = HashSet::new();
    loop {
        let pids = processes_of(uid, gid);
        if pids.is_empty() {
            return Ok(killed.len());
        }
        if started.elapsed() >= timeout {
            return Err(pids);
        }
        for pid in pids {
            kill_checked(pid, uid, gid);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Who holds a uid's reservation: a daemon (its state directory) and one of its apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The daemon's state directory.
    pub state_dir: PathBuf,
    /// The app's id.
    pub app_id: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "app {} of the daemon with state directory {}",
            self.app_id,
            self.state_dir.display()
        )
    }
}

/// The host-wide uid reservations: one file per uid (named by the number) in a root-only
/// directory every FoldClient daemon on the host shares.
#[derive(Debug)]
pub struct Reservations {
    fd: OwnedFd,
    path: PathBuf,
}

/// Largest reservation file read back.
const HOLDER_CAP: u64 = 4096;

fn io_in(path: &Path, name: &str, e: Errno) -> std::io::Error {
    let e = std::io::Error::from(e);
    std::io::Error::new(e.kind(), format!("{}/{name}: {e}", path.display()))
}

/// Checks that nobody but the daemon's owner can replace `path` or anything above it: every
/// existing ancestor is owned by root or the daemon and not writable by group or others
/// (unless sticky, like `/tmp`).
fn check_ancestors(path: &Path) -> std::io::Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    for ancestor in path.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(ancestor)?;
        let writable = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
        let owned = meta.uid() == 0 || meta.uid() == euid;
        if !owned || (writable && !meta.file_type().is_symlink()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is owned by uid {} with mode {:o}: another user could replace {}; \
                     choose a uid_reservation_dir under root-owned directories",
                    ancestor.display(),
                    meta.uid(),
                    meta.mode() & 0o7777,
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

impl Reservations {
    /// Opens the reservation directory, creating it (0700) if missing. It must be a real
    /// directory (not a symlink), owned by the daemon's uid (root), not writable by group or
    /// others; its ancestors must be root's and not writable by others.
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message; `PermissionDenied` when the directory or
    /// an ancestor is someone else's or too open.
    pub fn open(path: &Path) -> std::io::Result<Reservations> {
        use std::os::unix::fs::DirBuilderExt;
        if !path.is_absolute() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not an absolute path", path.display()),
            ));
        }
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        check_ancestors(path)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| {
            let e = std::io::Error::from(e);
            std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        })?;
        let stat = fstat(&fd).map_err(std::io::Error::from)?;
        let euid = nix::unistd::geteuid().as_raw();
        if stat.st_uid != euid || stat.st_mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is owned by uid {} with mode {:o}; it must be uid {euid}'s with mode 700: \
                     check who made it, then fix it (chown {euid} and chmod 700) or choose \
                     another uid_reservation_dir",
                    path.display(),
                    stat.st_uid,
                    stat.st_mode & 0o7777
                ),
            ));
        }
        Ok(Reservations {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory's path (messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reserves `id` for `holder`: creates its file with `O_CREAT|O_EXCL|O_NOFOLLOW`.
    /// `Ok(false)` when the id is reserved already (by anyone, this holder included).
    ///
    /// # Errors
    ///
    /// The file could not be created or written (then it is removed again).
    pub fn take(&self, id: u32, holder: &Holder) -> std::io::Result<bool> {
        let name = id.to_string();
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(
            &self.fd,
            name.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => return Ok(false),
            Err(e) => return Err(io_in(&self.path, &name, e)),
        };
        let mut file = std::fs::File::from(fd);
        let body = serde_json::to_vec(holder).map_err(std::io::Error::other)?;
        let written = file
            .write_all(&body)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .and_then(|()| nix::unistd::fsync(&self.fd).map_err(std::io::Error::from));
        if let Err(e) = written {
            let _ = unlinkat(
                &self.fd,
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(e);
        }
        Ok(true)
    }

    /// Who holds `id`; `None` when it is free.
    ///
    /// # Errors
    ///
    /// The file is not a regular file, too large, or does not name a holder (it still
    /// counts as taken).
    pub fn holder(&self, id: u32) -> std::io::Result<Option<Holder>> {
        let name = id.to_string();
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = match openat(&self.fd, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io_in(&self.path, &name, e)),
        };
        let stat = fstat(&fd).map_err(std::io::Error::from)?;
        let bad = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}/{name}: {why}", self.path.display()),
            )
        };
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(bad("not a regular file"));
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(HOLDER_CAP + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > HOLDER_CAP {
            return Err(bad("too large"));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| bad(&format!("names no holder ({e})")))
    }

    /// Releases `id` if `holder` holds it. `Ok(false)` when someone else does (or nobody).
    ///
    /// # Errors
    ///
    /// The file could not be read or removed.
    pub fn release(&self, id: u32, holder: &Holder) -> std::io::Result<bool> {
        if self.holder(id)?.as_ref() != Some(holder) {
            return Ok(false);
        }
        let name = id.to_string();
        unlinkat(
            &self.fd,
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| io_in(&self.path, &name, e))?;
        nix::unistd::fsync(&self.fd).map_err(std::io::Error::from)?;
        Ok(true)
    }

    /// Every reservation: the id and its holder (or why its file names none).
    ///
    /// # Errors
    ///
    /// The directory could not be listed.
    pub fn list(&self) -> std::io::Result<Vec<(u32, std::io::Result<Holder>)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let Some(id) = entry?
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match self.holder(id) {
                Ok(Some(holder)) => out.push((id, Ok(holder))),
                Ok(None) => {}
                Err(e) => out.push((id, Err(e))),
            }
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }
}

/// Picks per-app uids for the registry (see `registry::Registry::install`).
pub trait UidAllocator: Send + Sync + fmt::Debug {
    /// Takes the first of `candidates` (ids free in the registry) that belongs to nobody
    /// else on the host, for `app_id`; `None` when none does.
    ///
    /// # Errors
    ///
    /// The host's databases or the reservation directory could not be read or written.
    fn allocate(
        &self,
        candidates: &mut dyn Iterator<Item = u32>,
        app_id: &str,
    ) -> std::io::Result<Option<u32>>;

    /// Makes sure an installed app's uid is reserved for it (apps installed before
    /// reservations existed keep their uid).
    ///
    /// # Errors
    ///
    /// A message naming the other holder, or the I/O error.
    fn keep(&self, id: u32, app_id: &str) -> Result<(), String>;

    /// Releases the app's uid.
    ///
    /// # Errors
    ///
    /// The I/O error.
    fn release(&self, id: u32, app_id: &str) -> std::io::Result<()>;

    /// Why `id` is not the app's alone right now (a host database entry covers it, or its
    /// reservation is missing or someone else's); `None` when it is.
    fn problem(&self, id: u32, app_id: &str) -> Option<String>;
}

/// The allocator of a root daemon: host databases, live processes and the shared
/// reservation directory.
#[derive(Debug)]
pub struct HostAllocator {
    reservations: Reservations,
    files: IdFiles,
    state_dir: PathBuf,
}

impl HostAllocator {
    /// An allocator for the daemon whose state lives in `state_dir`.
    ///
    /// # Errors
    ///
    /// The reservation directory cannot be opened safely (see [`Reservations::open`]).
    pub fn new(
        reservation_dir: &Path,
        files: IdFiles,
        state_dir: &Path,
    ) -> std::io::Result<HostAllocator> {
        Ok(HostAllocator {
            reservations: Reservations::open(reservation_dir)?,
            files,
            state_dir: state_dir.to_path_buf(),
        })
    }

    fn holder(&self, app_id: &str) -> Holder {
        Holder {
            state_dir: self.state_dir.clone(),
            app_id: app_id.to_string(),
        }
    }
}

/// Decides whether one candidate id is free, given a snapshot of the host (pure).
pub fn host_free(id: u32, host: &HostIds, live: &HashSet<u32>) -> bool {
    id != 0
        && id != 65534
        && id != 65535
        && id != u32::MAX
        && host.overlaps(id).is_empty()
        && !live.contains(&id)
}

impl UidAllocator for HostAllocator {
    fn allocate(
        &self,
        candidates: &mut dyn Iterator<Item = u32>,
        app_id: &str,
    ) -> std::io::Result<Option<u32>> {
        let host = HostIds::load(&self.files)?;
        let live = live_ids();
        let holder = self.holder(app_id);
        for id in candidates {
            if !host_free(id, &host, &live) {
                continue;
            }
            if !self.reservations.take(id, &holder)? {
                continue;
            }
            // A process may have taken the id between the scan and the reservation.
            if processes_of(id, id).is_empty() {
                return Ok(Some(id));
            }
            // Keep it reserved: a process of a uid nobody owns is someone's attack.
            tracing::warn!(
                uid = id,
                "a process holds a uid no app owns; kept it reserved and skipped it"
            );
        }
        Ok(None)
    }

    fn keep(&self, id: u32, app_id: &str) -> Result<(), String> {
        let holder = self.holder(app_id);
        match self.reservations.holder(id) {
            Ok(Some(h)) if h == holder => Ok(()),
            Ok(Some(other)) => Err(format!(
                "uid {id} is reserved by {other}, not by this daemon's app {app_id}"
            )),
            Ok(None) => match self.reservations.take(id, &holder) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("uid {id} was reserved by another daemon just now")),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    fn release(&self, id: u32, app_id: &str) -> std::io::Result<()> {
        self.reservations
            .release(id, &self.holder(app_id))
            .map(drop)
    }

    fn problem(&self, id: u32, app_id: &str) -> Option<String> {
        check_ids(&self.files, &self.reservations, id, &self.holder(app_id))
    }
}

/// Why `id` is not `holder`'s alone: a host database entry covers it, or its reservation
/// is missing or someone else's. The message names the entry and the fix.
pub fn check_ids(
    files: &IdFiles,
    reservations: &Reservations,
    id: u32,
    holder: &Holder,
) -> Option<String> {
    let host = match HostIds::load(files) {
        Ok(host) => host,
        Err(e) => return Some(e.to_string()),
    };
    if let Some(entry) = host.overlaps(id).first() {
        let fix = if entry.what.starts_with("subordinate") {
            format!(
                "remove or move that range in {} (e.g. `usermod --del-subuids`/`--del-subgids`), \
                 or `fold_client app remove` the app and install it again (it gets a free uid)",
                entry.file.display()
            )
        } else {
            "`fold_client app remove` the app and install it again (it gets a free uid), or \
             give that user or group another id"
                .to_string()
        };
        return Some(format!(
            "uid/gid {id} is not the app's alone: {entry}; fix: {fix}"
        ));
    }
    match reservations.holder(id) {
        Ok(Some(h)) if &h == holder => None,
        Ok(Some(other)) => Some(format!(
            "uid/gid {id} is reserved in {} by {other}; fix: `fold_client app remove` this app \
             and install it again (it gets a free uid)",
            reservations.path().display()
        )),
        Ok(None) => Some(format!(
            "uid/gid {id} has no reservation in {} (another daemon may take it); fix: restart \
             the daemon (it reserves its apps' uids), or `fold_client app remove` the app and \
             install it again",
            reservations.path().display()
        )),
        Err(e) => Some(format!("uid/gid {id}: {e}; fix: check who wrote that file")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_give_uids_and_gids() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\n\nalice:x:1000:1001::/home/alice:/bin/sh\nbroken\nbad:x:notanumber:5\n";
        let entries = parse_passwd(passwd, Path::new("/etc/passwd"));
        let ids: Vec<_> = entries.iter().map(|e| (e.first, e.what)).collect();
        assert_eq!(
            ids,
            [
                (0, "uid"),
                (0, "primary gid"),
                (1000, "uid"),
                (1001, "primary gid"),
                (5, "primary gid")
            ]
        );
        assert_eq!(entries[2].line, 4);
        let groups = parse_group("root:x:0:\nstaff:x:50:alice,bob\nx:y\n", Path::new("/g"));
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[1].first, groups[1].owner.as_str()), (50, "staff"));
    }

    #[test]
    fn subordinate_ranges_cover_their_whole_span() {
        let text = "alice:165536:65536\n1001:300000:10\nzero:5:0\nbad:1\nbig:4294967290:100\n";
        let entries = parse_subids(text, Path::new("/etc/subuid"), "subordinate uids");
        assert_eq!(entries.len(), 3, "zero-length and malformed lines skipped");
        let host = HostIds::from_entries(entries);
        assert!(host.overlaps(165_535).is_empty());
        assert_eq!(host.overlaps(165_536).len(), 1);
        assert_eq!(host.overlaps(200_003)[0].owner, "alice");
        assert_eq!(host.overlaps(231_071).len(), 1);
        assert!(host.overlaps(231_072).is_empty());
        assert_eq!(host.overlaps(300_009)[0].owner, "1001", "numeric owners");
        assert!(host.overlaps(300_010).is_empty());
        assert_eq!(host.overlaps(u32::MAX).len(), 1, "no overflow at the top");
        assert_eq!(host.overlapping(300_009, 400_000).len(), 1);
        assert_eq!(host.overlapping(100_000, 165_536).len(), 1);
        assert!(host.overlapping(231_072, 299_999).is_empty());
        let shown = host.overlaps(200_003)[0].to_string();
        assert_eq!(
            shown,
            "/etc/subuid line 1: \"alice\" has subordinate uids 165536-231071"
        );
    }

    #[test]
    fn status_lines_give_every_id_and_zombies_hold_none() {
        let status = "Name:\tsleep\nState:\tS (sleeping)\nUid:\t1\t200003\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t9 10 \n";
        let ids = parse_status(status).unwrap();
        assert_eq!(ids.uids, [1, 200_003, 3, 4]);
        assert_eq!(ids.groups, [9, 10]);
        assert!(ids.holds(200_003, 99), "effective uid");
        assert!(ids.holds(4, 99), "fs uid");
        assert!(ids.holds(99, 7), "saved gid");
        assert!(ids.holds(99, 10), "supplementary group");
        assert!(!ids.holds(99, 99));
        let zombie = parse_status(&status.replace("S (sleeping)", "Z (zombie)")).unwrap();
        assert!(!zombie.holds(200_003, 99));
        assert!(parse_status("Name:\tx\nUid:\t1 1 1 1\n").is_none());
    }

    #[test]
    fn a_candidate_is_free_only_outside_every_entry_and_process() {
        let host = HostIds::from_entries(parse_subids(
            "alice:165536:65536\n",
            Path::new("/etc/subuid"),
            "subordinate uids",
        ));
        let live: HashSet<u32> = [2_000_000_002].into_iter().collect();
        assert!(!host_free(200_001, &host, &live));
        assert!(host_free(2_000_000_001, &host, &live));
        assert!(!host_free(2_000_000_002, &host, &live), "a live process");
        assert!(!host_free(65_534, &host, &live), "nobody");
    }

    #[test]
    fn reservations_are_exclusive_and_released_only_by_their_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uids");
        let res = Reservations::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
        let a = Holder {
            state_dir: "/srv/a".into(),
            app_id: "app_a".into(),
        };
        let b = Holder {
            state_dir: "/srv/b".into(),
            app_id: "app_b".into(),
        };
        assert!(res.take(7, &a).unwrap());
        let other = Reservations::open(&path).unwrap();
        assert!(!other.take(7, &b).unwrap(), "another daemon cannot take it");
        assert_eq!(other.holder(7).unwrap(), Some(a.clone()));
        assert!(!other.release(7, &b).unwrap(), "nor release it");
        assert_eq!(res.list().unwrap().len(), 1);
        assert!(res.release(7, &a).unwrap());
        assert_eq!(res.holder(7).unwrap(), None);
        assert!(other.take(7, &b).unwrap());

        // A symlink planted as a reservation is never followed, and counts as taken.
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&target, path.join("8")).unwrap();
        assert!(!res.take(8, &a).unwrap());
        assert!(res.holder(8).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn the_reservation_directory_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Reservations::open(&open).unwrap_err();
        assert!(err.to_string().contains("mode 777"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(Reservations::open(&link).is_err(), "a symlink is refused");
        assert!(Reservations::open(Path::new("relative")).is_err());
    }

    #[test]
    fn the_allocator_skips_subordinate_ranges_and_reserved_ids() {
        let dir = tempfile::tempdir().unwrap();
        let subuid = dir.path().join("subuid");
        std::io::Write::write_all(
            &mut std::fs::File::create(&subuid).unwrap(),
            b"mallory:3900000001:2\n",
        )
        .unwrap();
        let files = IdFiles {
            passwd: dir.path().join("passwd"),
            group: dir.path().join("group"),
            subuid,
            subgid: dir.path().join("subgid"),
        };
        let res_dir = dir.path().join("uids");
        let a = HostAllocator::new(&res_dir, files.clone(), Path::new("/srv/a")).unwrap();
        let b = HostAllocator::new(&res_dir, files, Path::new("/srv/b")).unwrap();
        let base = 3_900_000_000u32;
        let got = a.allocate(&mut (1..10).map(|n| base + n), "app_1").unwrap();
        assert_eq!(got, Some(base + 3), "the subordinate range is skipped");
        let got = b.allocate(&mut (1..10).map(|n| base + n), "app_2").unwrap();
        assert_eq!(
            got,
            Some(base + 4),
            "another daemon's reservation is skipped"
        );
        assert!(a.problem(base + 3, "app_1").is_none());
        let problem = b.problem(base + 3, "app_2").unwrap();
        assert!(problem.contains("/srv/a"), "{problem}");
        assert!(a.keep(base + 4, "app_1").is_err());
        a.keep(base + 5, "app_old").unwrap();
        b.release(base + 3, "app_2").unwrap();
        assert!(
            a.problem(base + 3, "app_1").is_none(),
            "only its holder releases it"
        );
        a.release(base + 3, "app_1").unwrap();
        assert!(a
            .problem(base + 3, "app_1")
            .unwrap()
            .contains("no reservation"));
    }
}
