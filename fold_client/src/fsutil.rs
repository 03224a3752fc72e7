//! File-system helpers: private directories, and files made through a directory's file
//! descriptor so that nobody can redirect them.
//!
//! The daemon runs as root and apps are other uids, so every path it acts on is a possible
//! trap: a symlink planted where a file is about to be written, a directory swapped between
//! a check and a use. The rule (docs/security.md, "Files") is that the daemon opens each
//! directory once without following symlinks ([`Dir::open`]), checks who owns it, and from
//! then on works only relative to that descriptor: files are created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`, their owner and mode set on the open descriptor, then renamed
//! into place (`renameat`). Nothing is chowned, chmodded or read by path.

use nix::dir::Dir as DirStream;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use std::fs::{self, DirBuilder};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Who owns a file or directory the daemon makes, and its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Owner uid and gid; `None` keeps the daemon's own.
    pub owner: Option<(u32, u32)>,
    /// Permission bits (e.g. 0o640).
    pub mode: u32,
}

impl Access {
    /// The daemon's own uid and gid with `mode`.
    pub fn private(mode: u32) -> Access {
        Access { owner: None, mode }
    }
}

/// A directory opened once, without following symlinks; everything inside is reached
/// through its descriptor.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl Dir {
    /// Opens `path` (its last component must not be a symlink).
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message (`ELOOP` when it is a symlink).
    pub fn open(path: &Path) -> std::io::Result<Dir> {
        let fd = nix::fcntl::open(path, dir_flags(), Mode::empty())
            .map_err(|e| with_path(&errno_io(e), path))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened at (for messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own status.
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn stat(&self) -> std::io::Result<FileStat> {
        fstat(&self.fd).map_err(|e| self.err(e))
    }

    /// Sets the directory's owner and mode on its descriptor.
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn set_access(&self, access: Access) -> std::io::Result<()> {
        set_access(self.fd.as_fd(), access).map_err(|e| self.err(e))
    }

    /// Opens the child directory `name`, creating it if missing; it must be a real
    /// directory (not a symlink). Owner and mode are set on its descriptor.
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn child_dir(&self, name: &str, access: Access) -> std::io::Result<Dir> {
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.err_in(name, e)),
        }
        let fd =
            openat(&self.fd, name, dir_flags(), Mode::empty()).map_err(|e| self.err_in(name, e))?;
        let child = Dir {
            fd,
            path: self.path.join(name),
        };
        child.set_access(access)?;
        Ok(child)
    }

    /// Writes `bytes` as `name` atomically: a new temporary file (`O_EXCL|O_NOFOLLOW`, so
    /// nothing already there is reused), owner and mode set on its descriptor, fsync,
    /// `renameat` over `name`, fsync the directory. Readers see the old or the new content.
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message; no temporary file is left.
    pub fn write_file(&self, name: &str, bytes: &[u8], access: Access) -> std::io::Result<()> {
        self.write_with(name, access, |file| file.write_all(bytes))
    }

    /// Like [`Dir::write_file`], with the content written by `fill`.
    ///
    /// # Errors
    ///
    /// The I/O error from `fill` or the file system; no temporary file is left.
    pub fn write_with(
        &self,
        name: &str,
        access: Access,
        fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let tmp = format!(".{name}.tmp{:016x}", rand::random::<u64>());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            &self.fd,
            tmp.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.err_in(&tmp, e))?;
        let result = (|| {
            set_access(fd.as_fd(), access).map_err(errno_io)?;
            let mut file = fs::File::from(fd);
            fill(&mut file)?;
            file.sync_all()?;
            renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(errno_io)?;
            self.sync()
        })();
        if result.is_err() {
            let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result.map_err(|e| with_path(&e, &self.path.join(name)))
    }

    /// Reads the regular file `name` (not through a symlink), at most `cap` bytes.
    ///
    /// # Errors
    ///
    /// The I/O error, or `InvalidData` when it is not a regular file or larger than `cap`.
    pub fn read_file(&self, name: &str, cap: u64) -> std::io::Result<Vec<u8>> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(&self.fd, name, flags, Mode::empty()).map_err(|e| self.err_in(name, e))?;
        let stat = fstat(&fd).map_err(|e| self.err_in(name, e))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(invalid(&self.path.join(name), "not a regular file"));
        }
        let mut bytes = Vec::new();
        fs::File::from(fd).take(cap + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > cap {
            return Err(invalid(
                &self.path.join(name),
                &format!("larger than {cap} bytes"),
            ));
        }
        Ok(bytes)
    }

    /// The status of `name` itself (a symlink is reported as one, never followed).
    ///
    /// # Errors
    ///
    /// The I/O error (`NotFound` when missing).
    pub fn stat_entry(&self, name: &str) -> std::io::Result<FileStat> {
        fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.err_in(name, e))
    }

    /// Sets owner and mode of the entry `name`. Only for entries of a directory nobody
    /// but the daemon can write (so the entry cannot be swapped): the socket a `bind` just
    /// made, whose own descriptor cannot change the file's inode. Refuses a symlink.
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn set_entry_access(&self, name: &str, access: Access) -> std::io::Result<()> {
        let kind = SFlag::from_bits_truncate(self.stat_entry(name)?.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            return Err(invalid(&self.path.join(name), "is a symlink"));
        }
        if let Some((uid, gid)) = access.owner {
            nix::unistd::fchownat(
                &self.fd,
                name,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.err_in(name, e))?;
        }
        nix::sys::stat::fchmodat(
            &self.fd,
            name,
            Mode::from_bits_truncate(access.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| self.err_in(name, e))
    }

    /// Removes the entry `name` (a file, socket or symlink; never what a symlink points
    /// to). Missing counts as done.
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.err_in(name, e)),
        }
    }

    /// The names in the directory (without `.` and `..`).
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let mut stream = DirStream::openat(&self.fd, ".", dir_flags(), Mode::empty())
            .map_err(|e| self.err(e))?;
        Ok(stream
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .collect())
    }

    /// Fsyncs the directory (after a rename or removal inside it).
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn sync(&self) -> std::io::Result<()> {
        nix::unistd::fsync(&self.fd).map_err(|e| self.err(e))
    }

    fn err(&self, e: Errno) -> std::io::Error {
        with_path(&errno_io(e), &self.path)
    }

    fn err_in(&self, name: &str, e: Errno) -> std::io::Error {
        with_path(&errno_io(e), &self.path.join(name))
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn set_access(fd: BorrowedFd<'_>, access: Access) -> nix::Result<()> {
    if let Some((uid, gid)) = access.owner {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    fchmod(fd, Mode::from_bits_truncate(access.mode))
}

/// Creates `dir` (and parents) if missing, opens it without following a symlink, checks
/// that the daemon owns it (another user may have made it first, e.g. under `/tmp`), and
/// sets its mode on the descriptor.
///
/// # Errors
///
/// The I/O error, with the path in its message; `PermissionDenied` when someone else owns it.
pub fn private_dir(dir: &Path, mode: u32) -> std::io::Result<Dir> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| with_path(&e, dir))?;
    let handle = Dir::open(dir)?;
    let owner = handle.stat()?.st_uid;
    let euid = nix::unistd::geteuid().as_raw();
    if owner != euid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {owner}, not by the daemon (uid {euid}): another user may \
                 have made it; remove it or choose another directory",
                dir.display()
            ),
        ));
    }
    handle.set_access(Access::private(mode))?;
    Ok(handle)
}

/// Writes `bytes` to `path` atomically with `mode` (see [`Dir::write_file`]); the parent
/// directory must not be a symlink.
///
/// # Errors
///
/// The I/O error, with the path in its message.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, name) = split(path)?;
    Dir::open(dir)?.write_file(name, bytes, Access::private(mode))
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
        return Err(invalid(path, &format!("larger than {cap} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| invalid(path, "not UTF-8"))
}

fn split(path: &Path) -> std::io::Result<(&Path, &str)> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("path has no UTF-8 file name"))?;
    Ok((dir, name))
}

fn invalid(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
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

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"root's file").unwrap();
        let d = private_dir(&dir.path().join("d"), 0o700).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("d/creds")).unwrap();
        assert!(d.read_file("creds", 100).is_err(), "reads refuse a symlink");
        d.write_file("creds", b"new", Access::private(0o640))
            .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert_eq!(fs::read(dir.path().join("d/creds")).unwrap(), b"new");
        assert!(!fs::symlink_metadata(dir.path().join("d/creds"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(d.read_file("creds", 100).unwrap(), b"new");
        assert!(d.read_file("creds", 2).is_err(), "cap");
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        assert!(Dir::open(&dir.path().join("link")).is_err());
        assert!(private_dir(&dir.path().join("link"), 0o700).is_err());
        let parent = Dir::open(dir.path()).unwrap();
        assert!(parent.child_dir("link", Access::private(0o700)).is_err());
        let child = parent.child_dir("new", Access::private(0o750)).unwrap();
        assert_eq!(child.stat().unwrap().st_mode & 0o777, 0o750);
        assert_eq!(parent.names().unwrap().len(), 3);
    }
}
