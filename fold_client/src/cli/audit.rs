//! `fold_client audit tail`.
//!
//! The daemon rotates the audit (`audit.jsonl` -> `audit.jsonl.1` -> ...), so `tail` reads
//! back into the rotated files when the live one holds fewer records than asked for, and
//! `--follow` keeps reading across a rotation, like `tail -F`.

use super::Context;
use anyhow::{Context as _, Result};
use fold_client::audit::rotated_path;
use fold_client::config::{Overrides, MAX_AUDIT_KEEP};
use fold_client::terminal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

/// The `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Print the last audit records.
    Tail {
        /// Keep printing new records.
        #[arg(short, long)]
        follow: bool,
        /// Only this app's records (name or id).
        #[arg(long)]
        app: Option<String>,
        /// How many records to show before following.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
}

/// Runs an `audit` subcommand.
pub async fn audit(ctx: &Context, cmd: AuditCommand) -> Result<()> {
    let AuditCommand::Tail { follow, app, lines } = cmd;
    // Read directly, so the audit can be read while the daemon is down: the path comes
    // from the same config loading `serve` uses (`Context::config`), so the two agree.
    let path = ctx.config(Overrides::default())?.audit_path();
    let text = tokio::fs::read_to_string(&path)
        .await
        .with_context(|| format!("cannot read the audit log {}", path.display()))?;
    let matches = |line: &str| match &app {
        None => true,
        Some(app) => serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| v["app"] == app.as_str() || v["app_id"] == app.as_str()),
    };
    let mut selected: Vec<String> = text
        .lines()
        .filter(|l| matches(l))
        .map(str::to_string)
        .collect();
    // Older records are in the rotated files, newest first; read only as many as needed.
    // The daemon's `audit_keep` may differ from this CLI's config, so go until one is missing.
    for n in 1..=MAX_AUDIT_KEEP {
        if selected.len() >= lines {
            break;
        }
        let Ok(older) = tokio::fs::read_to_string(rotated_path(&path, n)).await else {
            break;
        };
        let mut earlier: Vec<String> = older
            .lines()
            .filter(|l| matches(l))
            .map(str::to_string)
            .collect();
        earlier.drain(..earlier.len().saturating_sub(lines - selected.len()));
        earlier.append(&mut selected);
        selected = earlier;
    }
    for line in &selected[selected.len().saturating_sub(lines)..] {
        print_record(line, ctx.json);
    }
    if follow {
        let json = ctx.json;
        follow_from(&path, text.len() as u64, |line| {
            // The daemon writes the audit as JSON, so UTF-8; anything else is shown escaped.
            let line = String::from_utf8_lossy(line);
            if matches(&line) {
                print_record(&line, json);
            }
        })
        .await?;
    }
    Ok(())
}

/// Prints one audit record; every field an app could have chosen is escaped (`text`), and
/// a line that is not JSON is shown escaped as a whole.
fn print_record(line: &str, json: bool) {
    if json {
        println!("{}", terminal::escape_json(line));
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        println!("{}", terminal::escape(line));
        return;
    };
    let s = |k: &str| super::text(&v[k]);
    if v["kind"] == "request" {
        println!(
            "{} {} {} {} {} {} {} {}us",
            s("ts"),
            s("app"),
            s("verdict"),
            s("operation"),
            s("schema"),
            s("code"),
            s("reason"),
            s("latency_us")
        );
    } else {
        println!(
            "{} {} event {} {}",
            s("ts"),
            s("app"),
            s("event"),
            s("detail")
        );
    }
}

/// Prints an app's log file, then, with `follow`, what is appended to it: each line
/// escaped for the terminal (`terminal::escape_bytes`: the app wrote these bytes), or with
/// `raw` the bytes as they are.
pub async fn print_file(path: &Path, follow: bool, raw: bool) -> Result<()> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut stdout = std::io::stdout();
    for line in lines(&bytes) {
        show_line(&mut stdout, line, raw);
    }
    if follow {
        follow_from(path, bytes.len() as u64, |line| {
            show_line(&mut stdout, line, raw);
        })
        .await?;
    }
    Ok(())
}

/// The lines of `bytes` without their newlines (a last one without a newline included).
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes
        .split(|b| *b == b'\n')
        .filter(move |_| !bytes.is_empty())
}

/// Writes one line of app output to `out`: escaped, or with `raw` as it is.
pub fn show_line(out: &mut impl std::io::Write, line: &[u8], raw: bool) {
    let written = if raw {
        out.write_all(line).and_then(|()| out.write_all(b"\n"))
    } else {
        writeln!(out, "{}", terminal::escape_bytes(line))
    };
    // As `println!` does: output that cannot be written ends the command.
    written.expect("cannot write the app's output");
}

/// The identity of the file at `path` (device and inode), if it exists.
async fn file_id(path: &Path) -> Option<(u64, u64)> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The file being followed: an open handle keeps reading it even after it is renamed away.
struct Followed {
    reader: BufReader<tokio::fs::File>,
    id: (u64, u64),
    /// Bytes consumed so far (whole lines only).
    offset: u64,
}

impl Followed {
    async fn open(path: &Path, offset: u64) -> Option<Followed> {
        let mut file = tokio::fs::File::open(path).await.ok()?;
        let meta = file.metadata().await.ok()?;
        // A file shorter than where we were is another (or a truncated) one: start over.
        let offset = if meta.len() < offset { 0 } else { offset };
        file.seek(std::io::SeekFrom::Start(offset)).await.ok()?;
        Some(Followed {
            reader: BufReader::new(file),
            id: (meta.dev(), meta.ino()),
            offset,
        })
    }

    /// Hands each whole line appended since the last call to `each`; a line still being
    /// written stays in `partial` until its newline arrives.
    /// Lines are bytes: an app's log need not be UTF-8.
    async fn drain(&mut self, partial: &mut Vec<u8>, each: &mut impl FnMut(&[u8])) -> Result<()> {
        loop {
            let read = self.reader.read_until(b'\n', partial).await?;
            if read == 0 || partial.last() != Some(&b'\n') {
                return Ok(());
            }
            self.offset += partial.len() as u64;
            each(&partial[..partial.len() - 1]);
            partial.clear();
        }
    }
}

/// The rotated files of `path` newer than the one with identity `old`, newest first
/// (`<path>.1`, `<path>.2`, ... up to `old`'s). When `old` is no longer among them it was
/// rotated out past the kept ones, so every kept one is newer.
async fn rotated_since(path: &Path, old: (u64, u64)) -> Vec<std::path::PathBuf> {
    let mut newer = Vec::new();
    for n in 1..=MAX_AUDIT_KEEP {
        let rotated = rotated_path(path, n);
        match file_id(&rotated).await {
            Some(id) if id == old => break,
            Some(_) => newer.push(rotated),
            None => break,
        }
    }
    newer
}

/// Follows `path` from `offset`: each whole line appended is handed to `each`. When the file
/// is rotated (renamed to `<path>.1`, a new one created at `path`), the old one is read to
/// its end first, and any rotated out whole since, so no line written before the rotation is
/// missed; a truncated file is read again from its start.
async fn follow_from(path: &Path, offset: u64, mut each: impl FnMut(&[u8])) -> Result<()> {
    let mut followed = Followed::open(path, offset).await;
    let mut partial = Vec::new();
    loop {
        match &mut followed {
            None => followed = Followed::open(path, 0).await,
            Some(f) => {
                f.drain(&mut partial, &mut each).await?;
                match file_id(path).await {
                    Some(id) if id == f.id => {
                        let len = tokio::fs::metadata(path).await.map_or(0, |m| m.len());
                        if len < f.offset {
                            partial.clear();
                            followed = Followed::open(path, 0).await;
                        }
                    }
                    _ => {
                        // Rotated: what was appended between the drain above and the rename
                        // is still in the old file.
                        f.drain(&mut partial, &mut each).await?;
                        partial.clear();
                        // Rotated more than once since the last look: the files between the
                        // old one and the live one are read whole, oldest first.
                        for skipped in rotated_since(path, f.id).await.iter().rev() {
                            if let Some(mut between) = Followed::open(skipped, 0).await {
                                between.drain(&mut partial, &mut each).await?;
                                partial.clear();
                            }
                        }
                        followed = Followed::open(path, 0).await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
