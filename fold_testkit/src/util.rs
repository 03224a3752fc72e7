//! Small helpers: a private runtime for sync wrappers, commands and file locks with deadlines.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Runs an async job to completion on a fresh thread with its own current-thread runtime.
///
/// This makes the sync helpers of this crate callable both from plain `#[test]` functions and
/// from inside a tokio runtime (where `block_on` on the caller's thread would panic).
pub(crate) fn block_on<F, Fut, T>(make: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    let handle = thread::Builder::new()
        .name("fold_testkit".to_owned())
        .spawn(move || -> Result<T> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime for fold_testkit")?;
            runtime.block_on(make())
        })
        .context("spawning a fold_testkit helper thread")?;
    handle
        .join()
        .map_err(|_| anyhow!("fold_testkit helper thread panicked"))?
}

/// What a finished command produced.
#[derive(Debug)]
pub(crate) struct CommandOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

impl CommandOutput {
    /// The last `lines` lines of stderr, for error messages.
    pub(crate) fn stderr_tail(&self, lines: usize) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr; kills it after `timeout`.
pub(crate) fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<CommandOutput> {
    let describe = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {describe}"))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            break status;
        }
        if Instant::now() >= deadline {
            // Best effort: the process may have exited in between.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{describe} did not finish within {} s; killed",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader
            .map(|handle| handle.join().unwrap_or_default())
            .unwrap_or_default()
    };
    Ok(CommandOutput {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn drain(mut reader: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only truncates diagnostics.
        let _ = reader.read_to_end(&mut buf);
        buf
    })
}

/// An exclusive `flock` on a file, released on drop.
#[derive(Debug)]
pub(crate) struct FileLock {
    _lock: Flock<File>,
}

/// Takes an exclusive lock on `path` (created if missing), waiting at most `timeout`.
pub(crate) fn lock_file(path: &Path, timeout: Duration) -> Result<FileLock> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let deadline = Instant::now() + timeout;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(FileLock { _lock: lock }),
            Err((returned, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                if Instant::now() >= deadline {
                    bail!(
                        "lock {} still held by another process after {} s",
                        path.display(),
                        timeout.as_secs()
                    );
                }
                file = returned;
                thread::sleep(Duration::from_millis(100));
            }
            Err((_, errno)) => {
                return Err(anyhow!(errno).context(format!("locking {}", path.display())))
            }
        }
    }
}

/// Reads a duration in seconds from an environment variable, with a default.
pub(crate) fn env_secs(name: &str, default_secs: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default_secs);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_output_is_captured() -> Result<()> {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            Duration::from_secs(10),
        )?;
        assert!(out.status.success());
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_tail(5), "err");
        Ok(())
    }

    #[test]
    fn command_is_killed_at_deadline() {
        let err = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(200))
            .expect_err("sleep must be killed");
        assert!(err.to_string().contains("did not finish"), "{err:#}");
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fold_testkit_lock_{}", std::process::id()));
        let path = dir.join("x.lock");
        let first = lock_file(&path, Duration::from_secs(1))?;
        // flock locks belong to the open file description, so a second open contends.
        let err = lock_file(&path, Duration::from_millis(200)).expect_err("lock is held");
        assert!(err.to_string().contains("still held"), "{err:#}");
        drop(first);
        drop(lock_file(&path, Duration::from_secs(1))?);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn block_on_works_inside_a_runtime() -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let value = runtime.block_on(async { block_on(|| async { Ok(7) }) })?;
        assert_eq!(value, 7);
        Ok(())
    }
}
