//! Small file-system helpers: private directories, atomic writes, capped reads.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and parents) if missing and sets its mode to `mode` (e.g. 0700).
///
/// # Errors
///
/// The I/O error, with the path in its message.
pub fn private_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| with_path(&e, dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(|e| with_path(&e, dir))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory with `mode`,
/// fsync, rename over `path`, fsync the directory. Readers see the old or the new content,
/// never a mix; a crash leaves at most a stray temporary file.
///
/// # Errors
///
/// The I/O error, with the path in its message.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(&e, path))
}

/// Reads a text file of at most `cap` bytes.
///
/// # Errors
///
/// The I/O error, or `InvalidData` when the file is larger than `cap` or not UTF-8.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Changes the owner of `path` (only meaningful when the daemon is root).
///
/// # Errors
///
/// The I/O error, with the path in its message.
pub fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| with_path(&e, path))
}

fn with_path(err: &std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        private_dir(&sub, 0o700).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
        let f = sub.join("x.toml");
        write_atomic(&f, b"one", 0o600).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(read_capped(&f, 10).unwrap(), "two");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert!(read_capped(&f, 2).is_err());
        assert_eq!(
            fs::read_dir(&sub).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
