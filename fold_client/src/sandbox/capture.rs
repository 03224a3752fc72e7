//! A job's output, kept whole up to a cap: `app run` returns every byte its app wrote to
//! stdout and stderr up to the cap, each stream in a file of its own, and says exactly how
//! many bytes past the cap it dropped.
//!
//! The app's log file is another matter: it rotates at its own cap and interleaves the
//! streams by line (`logfile`); a job's capture never rotates, so a reader following the
//! file (the CLI) cannot miss what was written while it looked away.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The default cap of each stream of a job, in bytes.
pub const DEFAULT_OUTPUT_CAP: u64 = 8 << 20;

/// What one stream of a job left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamCount {
    /// Bytes kept in the stream's file.
    pub captured: u64,
    /// Bytes written past the cap, not kept.
    pub dropped: u64,
}

/// One stream's capture file.
#[derive(Debug)]
struct Stream {
    path: PathBuf,
    file: Option<File>,
    count: StreamCount,
}

impl Stream {
    fn write(&mut self, cap: u64, bytes: &[u8]) {
        let room = usize::try_from(cap.saturating_sub(self.count.captured)).unwrap_or(usize::MAX);
        let (keep, drop) = bytes.split_at(bytes.len().min(room));
        if !keep.is_empty() {
            let written = self.file.as_mut().map(|f| f.write_all(keep));
            match written {
                Some(Ok(())) => self.count.captured += keep.len() as u64,
                Some(Err(e)) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "job output not writable: the rest is dropped");
                    self.file = None;
                    self.count.dropped += keep.len() as u64;
                }
                None => self.count.dropped += keep.len() as u64,
            }
        }
        self.count.dropped += drop.len() as u64;
    }
}

/// A job's stdout and stderr capture. Cloning gives another handle to the same files.
#[derive(Debug, Clone)]
pub struct JobOutput {
    inner: Arc<Mutex<Inner>>,
}

/// Two handles are equal when they share the same files.
impl PartialEq for JobOutput {
    fn eq(&self, other: &JobOutput) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for JobOutput {}

#[derive(Debug)]
struct Inner {
    cap: u64,
    stdout: Stream,
    stderr: Stream,
}

/// Where a job's output goes, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSummary {
    /// The cap of each stream.
    pub cap: u64,
    /// The stdout file and its count.
    pub stdout: (PathBuf, StreamCount),
    /// The stderr file and its count.
    pub stderr: (PathBuf, StreamCount),
}

impl JobOutput {
    /// Creates `dir` (0700, parents too) and, in it, empty `stdout` and `stderr` files
    /// (0600; older ones replaced), each to hold at most `cap` bytes.
    ///
    /// # Errors
    ///
    /// The directory or a file cannot be created.
    pub fn create(dir: &Path, cap: u64) -> std::io::Result<JobOutput> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let open = |name: &str| -> std::io::Result<Stream> {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            Ok(Stream {
                path,
                file: Some(file),
                count: StreamCount::default(),
            })
        };
        Ok(JobOutput {
            inner: Arc::new(Mutex::new(Inner {
                cap,
                stdout: open("stdout")?,
                stderr: open("stderr")?,
            })),
        })
    }

    /// Keeps `bytes` of the stream `label` (`stdout` or `stderr`; anything else is
    /// stdout's) as far as its cap allows, and counts the rest as dropped.
    pub fn write(&self, label: &str, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let cap = inner.cap;
        let stream = if label == "stderr" {
            &mut inner.stderr
        } else {
            &mut inner.stdout
        };
        stream.write(cap, bytes);
    }

    /// The files and what they hold now.
    pub fn summary(&self) -> OutputSummary {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        OutputSummary {
            cap: inner.cap,
            stdout: (inner.stdout.path.clone(), inner.stdout.count),
            stderr: (inner.stderr.path.clone(), inner.stderr.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn every_byte_up_to_the_cap_is_kept_and_the_rest_counted() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobOutput::create(&dir.path().join("runs/app"), 10).unwrap();
        job.write("stdout", b"hello ");
        job.write("stderr", b"oops");
        job.write("stdout", b"world, and more");
        let s = job.summary();
        assert_eq!(std::fs::read(&s.stdout.0).unwrap(), b"hello worl");
        assert_eq!(std::fs::read(&s.stderr.0).unwrap(), b"oops");
        assert_eq!(
            s.stdout.1,
            StreamCount {
                captured: 10,
                dropped: 11
            }
        );
        assert_eq!(
            s.stderr.1,
            StreamCount {
                captured: 4,
                dropped: 0
            }
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.stdout.0), 0o600);
        assert_eq!(mode(&dir.path().join("runs/app")), 0o700);
    }

    #[test]
    fn a_new_job_replaces_the_last_ones_output() {
        let dir = tempfile::tempdir().unwrap();
        let first = JobOutput::create(dir.path(), 100).unwrap();
        first.write("stdout", b"first run");
        let second = JobOutput::create(dir.path(), 100).unwrap();
        second.write("stdout", b"2");
        assert_eq!(std::fs::read(dir.path().join("stdout")).unwrap(), b"2");
    }
}
