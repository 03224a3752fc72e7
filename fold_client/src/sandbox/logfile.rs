//! A size-capped, rotating per-app log file, shared by every backend.
//!
//! The live file never grows past its cap: a write that would push it over renames it to
//! `<path>.1` (replacing an older one) and starts a new file, so an app's output costs at
//! most about twice the cap on disk. Output is written whole lines at a time, so stdout
//! and stderr pumped into one [`LogFile`] interleave by line, never mid-line.
//!
//! Format: app lines as `<label>: <bytes>` (e.g. `stdout: hello`; no prefix for an empty
//! label), daemon lines as `=== <text> ===`. Writes are plain blocking file writes of at
//! most one read chunk, under a std mutex that is never held across an await.

use super::capture::JobOutput;
use super::SandboxError;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept whole; longer lines are split into pieces of at most this many bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// Smallest cap accepted; smaller caps are raised to this.
pub const MIN_CAP: u64 = 4096;

/// A shared handle to one app's log file. Cloning gives another handle to the same file.
#[derive(Debug, Clone)]
pub struct LogFile {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    cap: u64,
    file: File,
    size: u64,
    pending: Vec<u8>,
    /// A job's own copy of the output, kept whole up to its cap (`app run`).
    capture: Option<JobOutput>,
}

fn log_err(path: &Path, source: std::io::Error) -> SandboxError {
    SandboxError::Log {
        path: path.to_path_buf(),
        source,
    }
}

fn open_file(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its old mode through open(); make sure it is owner-only.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// The name of the rotated-out file: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl LogFile {
    /// Opens (appending) or creates the log at `path` (mode 0600), creating a missing parent
    /// directory with mode 0700. `cap` is the most bytes the live file may hold (at least
    /// [`MIN_CAP`]).
    pub fn open(path: &Path, cap: u64) -> Result<LogFile, SandboxError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| log_err(path, e))?;
            }
        }
        let (file, size) = open_file(path).map_err(|e| log_err(path, e))?;
        let inner = Inner {
            path: path.to_path_buf(),
            cap: cap.max(MIN_CAP),
            file,
            size,
            pending: Vec::new(),
            capture: None,
        };
        Ok(LogFile {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Also keeps what [`pump`] copies in `capture` (a job's output), from now on.
    pub fn set_capture(&self, capture: Option<JobOutput>) {
        self.lock().capture = capture;
    }

    /// The live file's path.
    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    /// Writes a line from the daemon itself (not the app), framed as `=== line ===`.
    pub fn write_marker(&self, line: &str) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        let result = inner.push_line(b"=== ", format!("{line} ===").as_bytes());
        inner.finish(result)
    }

    /// Writes one line of app output (without its newline), prefixed with `label: ` when
    /// `label` is not empty. A line longer than the cap allows is split over several lines.
    pub fn write_line(&self, label: &str, line: &[u8]) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        let result = inner.push_line(prefix(label).as_bytes(), line);
        inner.finish(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn prefix(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    }
}

impl Inner {
    /// Queues one line (split if needed), rotating first if it would push the file over
    /// the cap. Records are whole lines, so concurrent writers interleave by line.
    fn push_line(&mut self, prefix: &[u8], line: &[u8]) -> std::io::Result<()> {
        // Leave room for the prefix and newline so one record always fits under the cap.
        let room = usize::try_from(self.cap).unwrap_or(usize::MAX);
        let piece = MAX_LINE.min(room.saturating_sub(prefix.len() + 1)).max(1);
        let mut pieces = line.chunks(piece);
        let mut next = Some(pieces.next().unwrap_or_default());
        while let Some(chunk) = next {
            let len = (prefix.len() + chunk.len() + 1) as u64;
            let used = self.size + self.pending.len() as u64;
            if used > 0 && used + len > self.cap {
                self.flush()?;
                self.rotate()?;
            }
            self.pending.extend_from_slice(prefix);
            self.pending.extend_from_slice(chunk);
            self.pending.push(b'\n');
            next = pieces.next();
        }
        Ok(())
    }

    /// Writes what is queued; on error the queued bytes are dropped, not kept growing.
    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.file.write_all(&self.pending);
        if result.is_ok() {
            self.size += self.pending.len() as u64;
        }
        self.pending.clear();
        result
    }

    fn finish(&mut self, queued: std::io::Result<()>) -> Result<(), SandboxError> {
        let flushed = self.flush();
        queued.and(flushed).map_err(|e| log_err(&self.path, e))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        let (file, size) = open_file(&self.path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }
}

/// Copies everything `reader` yields (a child's stdout or stderr) into `log`, line by line,
/// each line prefixed with `label: ` (no prefix when `label` is empty). Lines longer than
/// [`MAX_LINE`] are split; at most [`MAX_LINE`] bytes are buffered. A final unterminated
/// line is written at end of input. If the log cannot be written, the first error is
/// reported through `tracing` and the rest of the input is drained and dropped, so the
/// writer never blocks on a full pipe. Returns the number of bytes read.
pub async fn pump<R: AsyncRead + Unpin>(mut reader: R, log: &LogFile, label: &str) -> u64 {
    let prefix = prefix(label);
    let mut chunk = vec![0u8; 32 * 1024];
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    let (mut total, mut failed) = (0u64, false);
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(stream = label, error = %e, "app output ended with an error");
                break;
            }
        };
        total += n as u64;
        // One lock and one write per chunk read; never held across an await.
        let mut inner = log.lock();
        if let Some(capture) = &inner.capture {
            capture.write(label, &chunk[..n]);
        }
        if failed {
            continue;
        }
        let mut result = Ok(());
        let mut rest = &chunk[..n];
        while !rest.is_empty() && result.is_ok() {
            let window = &rest[..rest.len().min(MAX_LINE - line.len())];
            let newline = window.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(window.len());
            line.extend_from_slice(&window[..take]);
            rest = &rest[(take + usize::from(newline.is_some())).min(rest.len())..];
            if newline.is_some() || line.len() == MAX_LINE {
                result = inner.push_line(prefix.as_bytes(), &line);
                line.clear();
            }
        }
        if let Err(e) = inner.finish(result) {
            tracing::warn!(stream = label, error = %e, "app output dropped: log not writable");
            failed = true;
        }
    }
    if !line.is_empty() && !failed {
        if let Err(e) = log.write_line(label, &line) {
            tracing::warn!(stream = label, error = %e, "app output dropped: log not writable");
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    #[test]
    fn creates_private_dir_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("logs/app/app.log");
        let log = LogFile::open(&path, 1 << 20).unwrap();
        log.write_marker("hello").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(read(&path), "=== hello ===\n");
    }

    #[tokio::test]
    async fn pumps_lines_with_labels_and_splits_long_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let log = LogFile::open(&path, 1 << 20).unwrap();
        let mut input = b"one\ntwo\n\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\ntail");
        let n = pump(&input[..], &log, "stdout").await;
        assert_eq!(n, input.len() as u64);
        let text = read(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..3], &["stdout: one", "stdout: two", "stdout: "]);
        assert_eq!(lines[3].len(), "stdout: ".len() + MAX_LINE);
        assert_eq!(lines[4], format!("stdout: {}", "x".repeat(10)));
        assert_eq!(lines[5], "stdout: tail");
        assert_eq!(lines.len(), 6);
    }

    #[tokio::test]
    async fn rotation_bounds_disk_use_under_a_flood() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flood.log");
        let cap = 1 << 20;
        let log = LogFile::open(&path, cap).unwrap();
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let block: Vec<u8> = (0..1024 * 1024)
                .map(|i| if i % 100 == 99 { b'\n' } else { b'a' })
                .collect();
            for _ in 0..50 {
                tx.write_all(&block).await.unwrap();
            }
        });
        let (a, b) = (log.clone(), log.clone());
        let (out, err) = tokio::join!(async move { pump(rx, &a, "stdout").await }, async move {
            pump(&[b'z'; 3 * MAX_LINE][..], &b, "stderr").await
        });
        writer.await.unwrap();
        assert_eq!(out, 50 << 20);
        assert_eq!(err, 3 * MAX_LINE as u64);
        let live = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(rotated_path(&path)).unwrap().len();
        assert!(live <= cap && old <= cap, "live {live} old {old}");
        assert!(old > cap / 2, "rotated file should be nearly full: {old}");
        assert!(!tmp.path().join("flood.log.2").exists());
    }

    #[test]
    fn tiny_cap_still_bounds_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.log");
        let log = LogFile::open(&path, 10).unwrap();
        log.write_line("stderr", &[b'q'; 3 * MIN_CAP as usize])
            .unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= MIN_CAP);
        assert!(std::fs::metadata(rotated_path(&path)).unwrap().len() <= MIN_CAP);
    }

    #[test]
    fn reopening_appends_and_rotates_an_oversized_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("r.log");
        std::fs::write(&path, vec![b'o'; 10_000]).unwrap();
        let log = LogFile::open(&path, 8192).unwrap();
        log.write_marker("new run").unwrap();
        assert_eq!(read(&path), "=== new run ===\n");
        assert_eq!(
            std::fs::metadata(rotated_path(&path)).unwrap().len(),
            10_000
        );
    }
}
