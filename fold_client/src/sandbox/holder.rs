//! The holder: the first process of a prepared (warm) container, a static executable built
//! from `fold_client/holder/main.rs` (by `build.rs`) and embedded here. The daemon writes it
//! to its state directory ([`install`]); the Docker backend mounts it read-only into warm
//! containers and, when a launch takes one, sends it [`word`]: the launch's arguments, on
//! which it `execve`s the app's binary.

use crate::fsutil::Access;
use std::path::{Path, PathBuf};

/// The holder's bytes; `None` when the build had no static C library to link it with.
#[cfg(not(fold_holder_missing))]
const HOLDER: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/fold_holder")));
#[cfg(fold_holder_missing)]
const HOLDER: Option<&[u8]> = None;

/// Where the holder is mounted (read-only) in a warm container.
pub const HOLDER_MOUNT: &str = "/.fold_holder";

/// What starts every word (as `holder/main.rs` expects it).
const MAGIC: &[u8; 8] = b"FOLDGO1\n";

/// Most bytes of arguments a word may carry (as `holder/main.rs` accepts them).
pub const MAX_ARGS_BYTES: usize = 1 << 20;

/// File name of the holder in the directory [`install`] writes it to.
const FILE_NAME: &str = "fold_holder";

/// Writes the holder into `dir` (created 0755 if missing, and the daemon's own) unless an
/// identical copy is there, and returns its path. The file is replaced by a rename, so a
/// container that mounted an older copy keeps it; it is 0755 and owned by the daemon, so an
/// app can run but never change it.
///
/// # Errors
///
/// This build has no holder, or the file cannot be written.
pub fn install(dir: &Path) -> Result<PathBuf, String> {
    let bytes = HOLDER.ok_or(
        "this fold_client was built without the warm-start holder (static glibc was missing \
         at build time: apt-get install libc6-dev, then rebuild)",
    )?;
    let path = dir.join(FILE_NAME);
    let write = || -> std::io::Result<()> {
        let handle = crate::fsutil::private_dir(dir, 0o755)?;
        if handle
            .read_file(FILE_NAME, bytes.len() as u64 + 1)
            .is_ok_and(|now| now == bytes)
        {
            return Ok(());
        }
        handle.write_file(FILE_NAME, bytes, Access::private(0o755))
    };
    write().map_err(|e| format!("cannot write the holder to {}: {e}", path.display()))?;
    Ok(path)
}

/// The word that lets a holder run its program with `args`.
///
/// # Errors
///
/// An argument holds a NUL (no program could receive it), or they are too long.
pub fn word(args: &[String]) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(args.iter().map(|a| a.len() + 1).sum());
    for arg in args {
        if arg.as_bytes().contains(&0) {
            return Err(format!("argument {arg:?} holds a NUL byte"));
        }
        body.extend_from_slice(arg.as_bytes());
        body.push(0);
    }
    if body.len() > MAX_ARGS_BYTES {
        return Err(format!(
            "the arguments take {} bytes (at most {MAX_ARGS_BYTES})",
            body.len()
        ));
    }
    let len = u32::try_from(body.len()).map_err(|_| "arguments too long".to_string())?;
    let mut word = Vec::with_capacity(12 + body.len());
    word.extend_from_slice(MAGIC);
    word.extend_from_slice(&len.to_be_bytes());
    word.extend_from_slice(&body);
    Ok(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn run_holder(holder: &Path, program: &str, input: &[u8]) -> std::process::Output {
        let mut child = Command::new(holder)
            .arg(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn the_holder_runs_its_program_with_the_words_arguments_and_nothing_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let holder = install(dir.path()).unwrap();
        assert!(matches!(
            crate::sandbox::docker::linkage(&holder),
            crate::sandbox::docker::Linkage::Static
        ));
        // Installing again leaves the identical copy in place.
        assert_eq!(install(dir.path()).unwrap(), holder);
        let args = [
            "-c",
            "printf '%s|' \"$0\" \"$@\"; read x || echo eof",
            "zero",
            "a b",
            "",
        ]
        .map(String::from);
        let out = run_holder(&holder, "/bin/sh", &word(&args).unwrap());
        assert!(out.status.success(), "{out:?}");
        // Every argument arrives whole (spaces, empty ones); stdin is /dev/null afterwards.
        assert_eq!(String::from_utf8_lossy(&out.stdout), "zero|a b||eof\n");
        // Released without a word: nothing runs, status 0.
        let out = run_holder(&holder, "/bin/sh", b"");
        assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 0));
        // A malformed word runs nothing.
        let out = run_holder(&holder, "/bin/sh", b"FOLDGO2\n\0\0\0\0");
        assert_eq!(out.status.code(), Some(125));
        let mut unended = word(&["x".to_string()]).unwrap();
        unended.pop();
        unended[11] -= 1;
        let out = run_holder(&holder, "/bin/sh", &unended);
        assert_eq!(out.status.code(), Some(125));
        let out = run_holder(&holder, "/nonexistent", &word(&[]).unwrap());
        assert_eq!(out.status.code(), Some(127));
    }

    #[test]
    fn a_word_refuses_what_no_program_could_receive() {
        assert!(word(&["a\0b".to_string()]).unwrap_err().contains("NUL"));
        assert!(word(&["x".repeat(MAX_ARGS_BYTES)]).is_err());
        assert_eq!(word(&[]).unwrap(), b"FOLDGO1\n\0\0\0\0");
    }
}
