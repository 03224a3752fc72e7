//! The nonce journal: what the replay check needs to survive a restart.
//!
//! `auth` refuses a nonce it has seen inside the timestamp window, but its [`NonceCache`]s
//! live in memory. This module keeps one daemon-wide, append-only file in the state
//! directory (`nonces.journal`, 0600) with a line per accepted signed request: app id,
//! nonce, and when the nonce may be forgotten. The handler appends the line, with one
//! `write(2)`, after the nonce passed the cache and **before** the request goes anywhere,
//! so a request is never applied whose nonce a restarted daemon would not load: once
//! `write` returned, the line is in the kernel and survives a SIGKILL of the daemon. A
//! failed write refuses the request (`internal`), it never lets it through.
//!
//! Power loss can still drop what the kernel had not written out. Three things cover it
//! (docs/security.md, "Replay across restarts"):
//!
//! - the file is fsynced every [`SYNC_INTERVAL`], at compaction and at shutdown;
//! - after a start that did not follow a clean shutdown, the daemon refuses timestamps from
//!   before its own start ([`NonceJournal::floor_ms`]): a lost line belonged to a request
//!   accepted before the crash, and stamped before it unless stamped ahead of the clock;
//! - a request stamped ahead of the daemon's clock (inside the window) is the one the
//!   floor would miss, so its line is fsynced before the request goes on.
//!
//! A clean shutdown ends the file with a `clean` line (written after the last fsync, with
//! the floor still in force); a start that finds it applies that floor instead of its own
//! start time, so a graceful restart refuses nothing a client signed before it.
//!
//! The file is bounded: it is rewritten with only the live entries (those the nonce caches
//! hold) at every start and whenever the lines appended since the last rewrite exceed the
//! live count at that rewrite (at least [`COMPACT_MIN`]). The rewrite goes through
//! [`fsutil::Dir::write_with`] (new temporary file `O_EXCL|O_NOFOLLOW`, fsync, `renameat`,
//! fsync of the directory); requests keep being appended while the live entries are
//! written, and are copied into the new file before the rename.
//!
//! Lines are `n1 <app id> <expires ms> <nonce hex> <check>`, where `check` is the FNV-1a
//! hash of the rest: a torn or corrupted line (a crash in the middle of a write, a disk
//! error) is reported and skipped, the rest kept. Lines of apps no longer installed are
//! dropped at the start's rewrite.
//!
//! Lock order: the journal's lock may be held while an app's nonce cache is locked (to copy
//! its live entries), never the other way round; the request path takes them one after the
//! other.
//!
//! [`NonceCache`]: crate::auth::NonceCache

use crate::fsutil::{self, Access};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The journal's file name in the state directory.
pub const FILE: &str = "nonces.journal";

/// How often the journal is fsynced while the daemon runs.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The fewest appended lines that trigger a rewrite.
pub const COMPACT_MIN: usize = 16_384;

/// A line longer than this is corrupt (a nonce is at most 128 bytes, 256 hex digits).
const MAX_LINE: usize = 1024;

/// One remembered nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The app that used it.
    pub app_id: String,
    /// The nonce, as the request carried it.
    pub nonce: String,
    /// When it may be forgotten (ms since the epoch): the window rejects its timestamp from
    /// then on.
    pub expires_ms: u64,
}

/// A line the loader skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: &'static str,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// What [`NonceJournal::open`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Live entries of known apps, to put back into the nonce caches.
    pub entries: Vec<Entry>,
    /// Corrupt or torn lines, skipped.
    pub skipped: Vec<Skipped>,
    /// Live entries dropped because their app is not installed.
    pub unknown_apps: usize,
    /// Whether the file ended with a clean shutdown.
    pub clean: bool,
}

/// Why a nonce could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Writing or syncing the file failed.
    #[error("cannot record the nonce in the journal: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon is shutting down; the journal was closed.
    #[error("the nonce journal is closed: the daemon is shutting down")]
    Closed,
    /// The app id cannot be written as a journal field.
    #[error("app id {0:?} cannot be journaled")]
    BadAppId(String),
}

/// The open journal. See the module documentation.
#[derive(Debug)]
pub struct NonceJournal {
    dir: fsutil::Dir,
    inner: Mutex<Inner>,
    /// Timestamps before this are refused (see [`NonceJournal::floor_ms`]).
    floor_ms: u64,
    compact_min: usize,
    /// Wakes [`maintain`] when a rewrite is due.
    compact_due: Notify,
}

#[derive(Debug)]
struct Inner {
    file: Arc<File>,
    /// Lines in the file (or, during a rewrite, in the file the rewrite makes).
    lines: usize,
    /// Lines the last rewrite kept.
    live_at_rewrite: usize,
    /// A write failed part way: the next append starts a fresh line, so that the torn
    /// bytes cannot join it.
    torn: bool,
    /// Lines appended since the last fsync.
    dirty: bool,
    closed: bool,
    /// While a rewrite writes the live entries: lines appended meanwhile, for the new file.
    pending: Option<Vec<u8>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// FNV-1a, 64 bits: detects torn and corrupted lines (not an adversary: only the daemon
/// can write the file).
fn check(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn valid_app_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Appends the line for one entry to `out`.
fn encode(out: &mut Vec<u8>, app_id: &str, nonce: &str, expires_ms: u64) {
    let start = out.len();
    out.extend_from_slice(b"n1 ");
    out.extend_from_slice(app_id.as_bytes());
    out.extend_from_slice(format!(" {expires_ms} ").as_bytes());
    out.extend_from_slice(hex::encode(nonce.as_bytes()).as_bytes());
    let sum = check(&out[start..]);
    out.extend_from_slice(format!(" {sum:016x}\n").as_bytes());
}

fn encode_clean(floor_ms: u64) -> Vec<u8> {
    let body = format!("clean {floor_ms}");
    format!("{body} {:016x}\n", check(body.as_bytes())).into_bytes()
}

/// A parsed line.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Entry(Entry),
    /// A clean shutdown, with the floor then in force.
    Clean(u64),
}

fn parse(line: &[u8]) -> Result<Line, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let (body, sum) = text.rsplit_once(' ').ok_or("no checksum")?;
    let sum = u64::from_str_radix(sum, 16).map_err(|_| "bad checksum field")?;
    if sum != check(body.as_bytes()) {
        return Err("checksum mismatch (torn or corrupted)");
    }
    let fields: Vec<&str> = body.split(' ').collect();
    match fields.as_slice() {
        ["n1", app_id, expires, nonce] => {
            if !valid_app_id(app_id) {
                return Err("bad app id");
            }
            let expires_ms = expires.parse().map_err(|_| "bad expiry")?;
            let nonce = hex::decode(nonce).map_err(|_| "bad nonce hex")?;
            let nonce = String::from_utf8(nonce).map_err(|_| "nonce not UTF-8")?;
            Ok(Line::Entry(Entry {
                app_id: (*app_id).to_string(),
                nonce,
                expires_ms,
            }))
        }
        ["clean", floor] => Ok(Line::Clean(floor.parse().map_err(|_| "bad floor")?)),
        _ => Err("unknown line"),
    }
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// Opens the journal for appending: `O_APPEND|O_NOFOLLOW|O_CLOEXEC`, created 0600, must be
/// a regular file of the daemon's.
fn open_append(dir: &fsutil::Dir) -> std::io::Result<File> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, FILE, flags, Mode::from_bits_truncate(0o600)).map_err(errno_io)?;
    let stat = fstat(&fd).map_err(errno_io)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG
        || stat.st_uid != nix::unistd::geteuid().as_raw()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: not a regular file of the daemon's",
                dir.path().join(FILE).display()
            ),
        ));
    }
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o600)).map_err(errno_io)?;
    Ok(File::from(fd))
}

/// Reads every line of the existing journal (none if there is no file).
fn read_existing(dir: &fsutil::Dir) -> std::io::Result<(Vec<Line>, Vec<Skipped>, bool)> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(dir, FILE, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok((Vec::new(), Vec::new(), false)),
        Err(e) => return Err(errno_io(e)),
    };
    let stat = fstat(&fd).map_err(errno_io)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a regular file", dir.path().join(FILE).display()),
        ));
    }
    let mut reader = BufReader::new(File::from(fd));
    let (mut lines, mut skipped) = (Vec::new(), Vec::new());
    let mut buf = Vec::new();
    let mut number = 0;
    // Whether the last thing in the file is a complete `clean` line.
    let mut clean_at_end = false;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        let Some(line) = buf.strip_suffix(b"\n") else {
            skipped.push(Skipped {
                line: number,
                reason: "torn last line (no newline)",
            });
            clean_at_end = false;
            break;
        };
        if line.is_empty() {
            // An append after a failed write starts with a newline; nothing lost here.
            continue;
        }
        if line.len() > MAX_LINE {
            skipped.push(Skipped {
                line: number,
                reason: "line too long",
            });
            clean_at_end = false;
            continue;
        }
        match parse(line) {
            Ok(parsed) => {
                clean_at_end = matches!(parsed, Line::Clean(_));
                lines.push(parsed);
            }
            Err(reason) => {
                skipped.push(Skipped {
                    line: number,
                    reason,
                });
                clean_at_end = false;
            }
        }
    }
    Ok((lines, skipped, clean_at_end))
}

impl NonceJournal {
    /// Opens (or creates) the journal in `state_dir`, loads it, and rewrites it with only
    /// the live entries (expiring at or after `now_ms`) of apps `known` accepts. The floor
    /// is the one a clean shutdown recorded, else `now_ms` (this start).
    ///
    /// # Errors
    ///
    /// The state directory or the journal cannot be opened, read or rewritten. Corrupt
    /// lines are not errors: they are skipped and listed in [`Loaded::skipped`].
    pub fn open(
        state_dir: &Path,
        now_ms: u64,
        known: impl Fn(&str) -> bool,
    ) -> std::io::Result<(NonceJournal, Loaded)> {
        Self::open_with(state_dir, now_ms, known, COMPACT_MIN)
    }

    /// [`NonceJournal::open`] with another rewrite threshold (tests).
    ///
    /// # Errors
    ///
    /// See [`NonceJournal::open`].
    pub fn open_with(
        state_dir: &Path,
        now_ms: u64,
        known: impl Fn(&str) -> bool,
        compact_min: usize,
    ) -> std::io::Result<(NonceJournal, Loaded)> {
        let dir = fsutil::Dir::open(state_dir)?;
        // Temporary files of a rewrite interrupted by a crash.
        let temp_prefix = format!(".{FILE}.tmp");
        for name in dir.names()? {
            if name.starts_with(&temp_prefix) {
                dir.remove(&name)?;
            }
        }
        let (lines, skipped, clean) = read_existing(&dir)?;
        let mut loaded = Loaded {
            skipped,
            clean,
            ..Loaded::default()
        };
        let mut floor_ms = now_ms;
        for line in lines {
            match line {
                Line::Entry(e) if e.expires_ms < now_ms => {}
                Line::Entry(e) if !known(&e.app_id) => loaded.unknown_apps += 1,
                Line::Entry(e) => loaded.entries.push(e),
                Line::Clean(floor) => floor_ms = floor,
            }
        }
        if !clean {
            floor_ms = now_ms;
        }
        let mut bytes = Vec::new();
        for e in &loaded.entries {
            encode(&mut bytes, &e.app_id, &e.nonce, e.expires_ms);
        }
        dir.write_file(FILE, &bytes, Access::private(0o600))?;
        let file = open_append(&dir)?;
        let journal = NonceJournal {
            dir,
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                lines: loaded.entries.len(),
                live_at_rewrite: loaded.entries.len(),
                torn: false,
                dirty: false,
                closed: false,
                pending: None,
            }),
            floor_ms,
            compact_min,
            compact_due: Notify::new(),
        };
        Ok((journal, loaded))
    }

    /// Timestamps before this are refused: this daemon's start time, unless the journal
    /// ended with a clean shutdown (then the floor that shutdown still had, often 0). Only
    /// matters for a window after it; see the module documentation.
    pub fn floor_ms(&self) -> u64 {
        self.floor_ms
    }

    /// Records that `app_id` used `nonce`, remembered until `expires_ms`. Returns once the
    /// line is in the kernel (one `write`); with `durable` (the request is stamped ahead of
    /// the daemon's clock), once it is on disk (`fdatasync`).
    ///
    /// # Errors
    ///
    /// The write or sync failed, the journal is closed, or the app id is malformed: the
    /// request must be refused.
    pub fn append(
        &self,
        app_id: &str,
        nonce: &str,
        expires_ms: u64,
        durable: bool,
    ) -> Result<(), JournalError> {
        if !valid_app_id(app_id) {
            return Err(JournalError::BadAppId(app_id.to_string()));
        }
        let mut line = Vec::with_capacity(64 + 2 * nonce.len());
        encode(&mut line, app_id, nonce, expires_ms);
        let file = {
            let mut inner = lock(&self.inner);
            if inner.closed {
                return Err(JournalError::Closed);
            }
            let result = if inner.torn {
                let mut fresh = Vec::with_capacity(line.len() + 1);
                fresh.push(b'\n');
                fresh.extend_from_slice(&line);
                (&*inner.file).write_all(&fresh)
            } else {
                (&*inner.file).write_all(&line)
            };
            if let Err(e) = result {
                inner.torn = true;
                return Err(e.into());
            }
            inner.torn = false;
            inner.dirty = true;
            if let Some(pending) = &mut inner.pending {
                pending.extend_from_slice(&line);
            }
            inner.lines += 1;
            if inner.pending.is_none() && self.rewrite_due(&inner) {
                self.compact_due.notify_one();
            }
            durable.then(|| Arc::clone(&inner.file))
        };
        if let Some(file) = file {
            // Outside the lock: other apps' appends do not wait for this app's fsync.
            file.sync_data()?;
        }
        Ok(())
    }

    fn rewrite_due(&self, inner: &Inner) -> bool {
        inner.lines - inner.live_at_rewrite.min(inner.lines)
            > inner.live_at_rewrite.max(self.compact_min)
    }

    /// Whether enough lines were appended since the last rewrite to rewrite again.
    pub fn needs_rewrite(&self) -> bool {
        let inner = lock(&self.inner);
        inner.pending.is_none() && self.rewrite_due(&inner)
    }

    /// Lines in the file now.
    pub fn lines(&self) -> usize {
        lock(&self.inner).lines
    }

    /// Fsyncs what was appended since the last sync.
    ///
    /// # Errors
    ///
    /// The sync failed.
    pub fn sync(&self) -> std::io::Result<()> {
        let file = {
            let mut inner = lock(&self.inner);
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            Arc::clone(&inner.file)
        };
        file.sync_data()
    }

    /// Rewrites the file with the live entries `live` lists (it calls its argument once per
    /// entry; called without the journal's lock, after appends started being copied for
    /// the new file). Lines appended meanwhile are added before the rename.
    ///
    /// # Errors
    ///
    /// Writing the new file failed; the old one is still in use and complete.
    pub fn rewrite(
        &self,
        live: impl FnOnce(&mut dyn FnMut(&str, &str, u64)),
    ) -> std::io::Result<()> {
        {
            let mut inner = lock(&self.inner);
            if inner.closed || inner.pending.is_some() {
                return Ok(());
            }
            inner.pending = Some(Vec::new());
        }
        let mut kept = 0usize;
        let mut guard: Option<MutexGuard<'_, Inner>> = None;
        let result = self.dir.write_with(FILE, Access::private(0o600), |file| {
            let mut out = BufWriter::with_capacity(1 << 16, &mut *file);
            let mut line = Vec::with_capacity(512);
            let mut failed = None;
            live(&mut |app_id, nonce, expires_ms| {
                if failed.is_some() || !valid_app_id(app_id) {
                    return;
                }
                line.clear();
                encode(&mut line, app_id, nonce, expires_ms);
                match out.write_all(&line) {
                    Ok(()) => kept += 1,
                    Err(e) => failed = Some(e),
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            out.flush()?;
            drop(out);
            file.sync_data()?;
            // From here to the swap, appends wait: copy what came in meanwhile.
            let inner = guard.insert(lock(&self.inner));
            let pending = inner.pending.take().unwrap_or_default();
            file.write_all(&pending)?;
            kept += pending.iter().filter(|b| **b == b'\n').count();
            Ok(())
        });
        let mut inner = guard.unwrap_or_else(|| lock(&self.inner));
        inner.pending = None;
        result?;
        inner.file = Arc::new(open_append(&self.dir)?);
        inner.lines = kept;
        inner.live_at_rewrite = kept;
        inner.torn = false;
        inner.dirty = false;
        Ok(())
    }

    /// At shutdown, after the last request: fsyncs, ends the file with a `clean` line
    /// carrying the floor still in force at `now_ms` (0 once a window has passed since
    /// it), fsyncs again, and refuses appends from then on.
    ///
    /// # Errors
    ///
    /// A write or sync failed (the next start then applies its own floor).
    pub fn close(&self, now_ms: u64, window: Duration) -> std::io::Result<()> {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Ok(());
        }
        inner.closed = true;
        inner.file.sync_data()?;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let floor = if self.floor_ms.saturating_add(window_ms) >= now_ms {
            self.floor_ms
        } else {
            0
        };
        let mut line = encode_clean(floor);
        if inner.torn {
            line.insert(0, b'\n');
        }
        (&*inner.file).write_all(&line)?;
        inner.file.sync_data()
    }
}

/// Runs until `shutdown`: fsyncs the journal every [`SYNC_INTERVAL`] and rewrites it when
/// due, with the live entries `live` lists (see [`NonceJournal::rewrite`]). The file work
/// runs on the blocking pool.
pub async fn maintain<F>(journal: Arc<NonceJournal>, live: F, shutdown: CancellationToken)
where
    F: Fn(&mut dyn FnMut(&str, &str, u64)) + Send + Sync + 'static,
{
    let live = Arc::new(live);
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            () = journal.compact_due.notified() => {}
        }
        let (journal, live) = (Arc::clone(&journal), Arc::clone(&live));
        let work = tokio::task::spawn_blocking(move || {
            if journal.needs_rewrite() {
                let before = journal.lines();
                journal
                    .rewrite(|visit| live(visit))
                    .map(|()| Some((before, journal.lines())))
            } else {
                journal.sync().map(|()| None)
            }
        });
        match work.await {
            Ok(Ok(Some((before, after)))) => {
                tracing::debug!(before, after, "nonce journal rewritten");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("nonce journal: {e}"),
            Err(e) => tracing::error!("nonce journal task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const NOW: u64 = 1_700_000_000_000;
    const APP: &str = "app_000000000001";

    fn open(dir: &Path, now: u64) -> (NonceJournal, Loaded) {
        NonceJournal::open(dir, now, |id| id.starts_with("app_")).unwrap()
    }

    fn nonces(loaded: &Loaded) -> Vec<&str> {
        loaded.entries.iter().map(|e| e.nonce.as_str()).collect()
    }

    fn text(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(FILE)).unwrap()
    }

    #[test]
    fn entries_survive_a_crash_and_expired_or_unknown_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let (j, loaded) = open(dir.path(), NOW);
        assert!(loaded.entries.is_empty() && !loaded.clean);
        assert_eq!(
            j.floor_ms(),
            NOW,
            "no clean shutdown: this start is the floor"
        );
        j.append(APP, "a", NOW + 60_000, false).unwrap();
        j.append(APP, "odd nonce\nwith newline \u{e9}", NOW + 60_000, true)
            .unwrap();
        j.append(APP, "expired", NOW + 10, false).unwrap();
        j.append("other_app", "x", NOW + 60_000, false).unwrap();
        drop(j); // a crash: no close
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);

        let (j, loaded) = open(dir.path(), NOW + 20);
        assert_eq!(nonces(&loaded), ["a", "odd nonce\nwith newline \u{e9}"]);
        assert_eq!(loaded.unknown_apps, 1);
        assert!(loaded.skipped.is_empty() && !loaded.clean);
        assert_eq!(j.floor_ms(), NOW + 20);
        assert_eq!(
            j.lines(),
            2,
            "rewritten at start with the live entries only"
        );
        assert_eq!(text(dir.path()).lines().count(), 2);
    }

    #[test]
    fn a_torn_or_corrupt_line_is_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), NOW);
        for n in ["one", "two", "three"] {
            j.append(APP, n, NOW + 60_000, false).unwrap();
        }
        drop(j);
        let mut lines: Vec<String> = text(dir.path()).lines().map(str::to_string).collect();
        // A flipped byte in the second line, and a last write cut in the middle.
        lines[1] = lines[1].replacen("n1 app_0", "n1 app_9", 1);
        let torn = lines[2][..lines[2].len() / 2].to_string();
        let mut bytes = format!("{}\n{}\ngarbage\n{torn}", lines[0], lines[1]);
        bytes.insert(0, '\n');
        std::fs::write(dir.path().join(FILE), bytes).unwrap();

        let (_j, loaded) = open(dir.path(), NOW);
        assert_eq!(nonces(&loaded), ["one"]);
        let reasons: Vec<_> = loaded.skipped.iter().map(|s| (s.line, s.reason)).collect();
        assert_eq!(
            reasons,
            [
                (3, "checksum mismatch (torn or corrupted)"),
                (4, "no checksum"),
                (5, "torn last line (no newline)")
            ]
        );
    }

    #[test]
    fn a_failed_write_refuses_and_cannot_glue_onto_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), NOW);
        // A full disk: the journal's file is swapped for /dev/full.
        let real = Arc::clone(&lock(&j.inner).file);
        lock(&j.inner).file = Arc::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        assert!(matches!(
            j.append(APP, "lost", NOW + 60_000, false),
            Err(JournalError::Io(_))
        ));
        // Back on the real file, with torn bytes left by the failed write.
        (&*real).write_all(b"n1 app_00000").unwrap();
        lock(&j.inner).file = real;
        j.append(APP, "kept", NOW + 60_000, false).unwrap();
        assert!(matches!(
            j.append("bad id", "x", NOW, false),
            Err(JournalError::BadAppId(_))
        ));
        drop(j);
        let (_j, loaded) = open(dir.path(), NOW);
        assert_eq!(nonces(&loaded), ["kept"]);
        assert_eq!(loaded.skipped.len(), 1);
    }

    #[test]
    fn a_clean_shutdown_keeps_its_floor_and_refuses_later_appends() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(60);
        let (j, _) = open(dir.path(), NOW);
        j.append(APP, "a", NOW + 60_000, false).unwrap();
        j.close(NOW + 1_000, window).unwrap();
        assert!(matches!(
            j.append(APP, "b", NOW + 60_000, false),
            Err(JournalError::Closed)
        ));
        drop(j);
        // Restarted within a window of the first start: that start's floor still holds
        // (nonces lost before it are still refused), not this one's.
        let (j, loaded) = open(dir.path(), NOW + 2_000);
        assert!(loaded.clean);
        assert_eq!(nonces(&loaded), ["a"]);
        assert_eq!(j.floor_ms(), NOW);
        j.close(NOW + 2_000 + 61_000, window).unwrap();
        drop(j);
        let (j, loaded) = open(dir.path(), NOW + 70_000);
        assert!(loaded.clean);
        assert_eq!(
            j.floor_ms(),
            0,
            "a window after the floor, it refuses nothing"
        );
        drop(j);
        // A crash after the clean line (a line appended, no new clean line): not clean.
        let (j, _) = open(dir.path(), NOW + 80_000);
        j.append(APP, "c", NOW + 140_000, false).unwrap();
        drop(j);
        let (j, loaded) = open(dir.path(), NOW + 90_000);
        assert!(!loaded.clean);
        assert_eq!(j.floor_ms(), NOW + 90_000);
    }

    #[test]
    fn rewrite_keeps_live_entries_and_appends_made_meanwhile_and_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = NonceJournal::open_with(dir.path(), NOW, |_| true, 4).unwrap();
        let mut live = Vec::new();
        for n in 0..5 {
            let nonce = format!("n{n}");
            j.append(APP, &nonce, NOW + 60_000, false).unwrap();
            live.push(nonce);
        }
        assert!(j.needs_rewrite(), "5 appended lines > max(0 live, 4)");
        // Only the last two are live now; one more request arrives during the rewrite.
        j.rewrite(|visit| {
            for n in &live[3..] {
                visit(APP, n, NOW + 60_000);
            }
            j.append(APP, "during", NOW + 60_000, false).unwrap();
        })
        .unwrap();
        assert_eq!(j.lines(), 3);
        assert!(!j.needs_rewrite());
        j.append(APP, "after", NOW + 60_000, false).unwrap();
        drop(j);
        let (_j, loaded) = open(dir.path(), NOW);
        assert_eq!(nonces(&loaded), ["n3", "n4", "during", "after"]);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left");
    }

    #[test]
    fn a_symlink_in_place_of_the_journal_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join(FILE)).unwrap();
        assert!(NonceJournal::open(&state, NOW, |_| true).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
