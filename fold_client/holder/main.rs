//! `fold_holder`: the first process of a prepared (warm) container.
//!
//! The daemon creates and starts a warm container with exactly the app's hardening, mounts,
//! limits and tier, but with this program in front of the app's binary. It blocks reading
//! its stdin, a pipe only the daemon holds (the container's attach stream), and costs no
//! CPU while it waits. When a launch takes the container, the daemon writes the word: the
//! magic `FOLDGO1\n`, a 4-byte big-endian length, then that many bytes of arguments, each
//! ended by a NUL. The holder then replaces itself with `PROGRAM ARGS...` by `execve`: same
//! pid, same environment, stdin `/dev/null` (as a cold container's app has), so the app
//! cannot tell a warm start from a cold one.
//!
//! End of input before a whole word (the daemon drained the pool, or died) ends the holder
//! with status 0 and runs nothing. A malformed word ends it with status 125; a program
//! that cannot be run, with 127, as shells do.
//!
//! Built by `fold_client/build.rs` as a static executable (std only, no crates) and
//! embedded in the daemon, which writes it out and mounts it read-only into warm
//! containers. It runs inside the app's sandbox as the app's uid and trusts nothing it
//! reads except from the daemon's pipe.

use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::{exit, Command, Stdio};

/// What starts every word.
const MAGIC: &[u8; 8] = b"FOLDGO1\n";
/// Most bytes of arguments a word may carry.
const MAX_ARGS_BYTES: usize = 1 << 20;

fn fail(code: i32, message: &str) -> ! {
    eprintln!("fold_holder: {message}");
    exit(code)
}

fn main() {
    let mut argv = std::env::args_os().skip(1);
    let Some(program) = argv.next() else {
        fail(2, "usage: fold_holder PROGRAM (the arguments come on stdin)")
    };
    let mut stdin = std::io::stdin().lock();
    let mut header = [0u8; 12];
    match stdin.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => exit(0),
        Err(e) => fail(125, &format!("cannot read the word: {e}")),
    }
    if &header[..8] != MAGIC {
        fail(125, "the word does not start with the magic");
    }
    let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if len > MAX_ARGS_BYTES {
        fail(125, &format!("{len} bytes of arguments (at most {MAX_ARGS_BYTES})"));
    }
    let mut word = vec![0u8; len];
    if let Err(e) = stdin.read_exact(&mut word) {
        fail(125, &format!("cannot read the arguments: {e}"));
    }
    drop(stdin);
    let args: Vec<OsString> = match word.split_last() {
        None => Vec::new(),
        Some((0, body)) => body
            .split(|b| *b == 0)
            .map(|arg| OsString::from_vec(arg.to_vec()))
            .collect(),
        Some(_) => fail(125, "the last argument is not ended by a NUL"),
    };
    let error = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .exec();
    fail(
        127,
        &format!("cannot run {}: {error}", program.to_string_lossy()),
    )
}
