//! The local base image, imported from a minimal busybox-static rootfs (no registry needed).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;

use crate::docker::{connect_docker, ENGINE_TIMEOUT};
use crate::elf::is_static_elf;
use crate::util::{block_on, lock_file};

/// Name of the local base image made by [`ensure_base_image`].
pub const BASE_IMAGE: &str = "foldclient/base:latest";

const BASE_REPO: &str = "foldclient/base";
const BASE_TAG: &str = "latest";

/// Label carried by the base image; its value is the rootfs layout version. An image with
/// another value (an older layout) is re-imported.
pub const BASE_IMAGE_LABEL: &str = "io.foldclient.testkit.base";

/// Bump when the content of [`base_rootfs_tar`] changes.
const BASE_LAYOUT_VERSION: &str = "1";

/// busybox applets linked into `/bin` of the base image.
const APPLETS: &[&str] = &[
    "[", "ash", "awk", "cat", "chmod", "chown", "cp", "cut", "date", "dd", "df", "du", "echo",
    "env", "false", "find", "free", "grep", "head", "hexdump", "hostname", "id", "ifconfig", "ip",
    "kill", "ln", "ls", "mkdir", "mknod", "mount", "mv", "nc", "nproc", "nsenter", "od", "ping",
    "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq", "setpriv", "sh", "sleep",
    "sort", "stat", "su", "tail", "tee", "test", "timeout", "top", "touch", "tr", "true", "umount",
    "uname", "unshare", "wc", "wget", "which", "whoami", "xargs", "yes",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Fixed mtime for every entry, so the same busybox gives the same tar.
const MTIME: u64 = 1_700_000_000;

/// How long to wait for another process that is importing the image.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// Deadline for the import request itself.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(180);

/// Makes sure [`BASE_IMAGE`] exists in the engine and returns its name.
///
/// The image is imported (`docker import`, through the engine API) from a rootfs built in
/// memory by [`base_rootfs_tar`]: a static busybox at `/bin/busybox` with applet symlinks
/// (`/bin/sh`, `cat`, `id`, ...), `/etc/passwd`, `/etc/group`, `/tmp` (1777) and `/app`. No
/// registry is contacted. Idempotent: an existing image with the current layout label is
/// reused. Concurrent callers are serialised by a mutex within the process and by a file lock
/// across processes (`<tmp>/fold_testkit_base_image.lock`); a race with another machine
/// importing into the same engine only retags the image.
///
/// # Errors
///
/// When no engine answers, no static busybox is found (install `busybox-static` or set
/// `FOLD_BUSYBOX`), or the import fails.
pub fn ensure_base_image() -> Result<String> {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    block_on(|| async {
        let docker = connect_docker().await?;
        if base_image_is_current(&docker).await? {
            return Ok(BASE_IMAGE.to_owned());
        }
        let lock_path = std::env::temp_dir().join("fold_testkit_base_image.lock");
        let _lock = lock_file(&lock_path, LOCK_TIMEOUT)?;
        // Another process may have imported it while we waited for the lock.
        if base_image_is_current(&docker).await? {
            return Ok(BASE_IMAGE.to_owned());
        }
        let busybox = find_static_busybox()?;
        let tar = base_rootfs_tar(&busybox)?;
        let change = format!("LABEL {BASE_IMAGE_LABEL}={BASE_LAYOUT_VERSION}");
        import(&docker, tar, (BASE_REPO, BASE_TAG), &change).await?;
        if !base_image_is_current(&docker).await? {
            bail!("imported {BASE_IMAGE}, but the engine does not list it with label {BASE_IMAGE_LABEL}={BASE_LAYOUT_VERSION}");
        }
        eprintln!(
            "fold_testkit: imported {BASE_IMAGE} from {}",
            busybox.display()
        );
        Ok(BASE_IMAGE.to_owned())
    })
}

async fn base_image_is_current(docker: &Docker) -> Result<bool> {
    image_is_current(docker, BASE_IMAGE, (BASE_IMAGE_LABEL, BASE_LAYOUT_VERSION)).await
}

/// Whether the engine has `image` with label `key` = `value`.
pub(crate) async fn image_is_current(
    docker: &Docker,
    image: &str,
    (key, value): (&str, &str),
) -> Result<bool> {
    let inspected = tokio::time::timeout(ENGINE_TIMEOUT, docker.inspect_image(image))
        .await
        .map_err(|_| anyhow!("inspecting {image}: no answer within 20 s"))?;
    match inspected {
        Ok(found) => Ok(found
            .config
            .and_then(|config| config.labels)
            .and_then(|labels| labels.get(key).cloned())
            .is_some_and(|v| v == value)),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("inspecting {image}")),
    }
}

/// Imports the rootfs `tar` as `repo:tag` with one Dockerfile `change` (its label).
pub(crate) async fn import(
    docker: &Docker,
    tar: Vec<u8>,
    (repo, tag): (&str, &str),
    change: &str,
) -> Result<()> {
    let image = format!("{repo}:{tag}");
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .message("fold_testkit image")
        // One change only: bollard sends the changes as one newline-joined value, which
        // Docker splits and Podman reads as a single instruction (a LABEL whose value
        // swallowed the rest). The engines' default PATH and working directory serve.
        .changes(vec![change.to_string()])
        .build();
    let mut progress =
        docker.create_image(Some(options), Some(bollard::body_full(tar.into())), None);
    let drain = async {
        while let Some(item) = progress.next().await {
            item.with_context(|| format!("importing {image}"))?;
        }
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(IMPORT_TIMEOUT, drain)
        .await
        .map_err(|_| {
            anyhow!(
                "importing {image}: not done within {} s",
                IMPORT_TIMEOUT.as_secs()
            )
        })?
}

/// Finds a statically linked busybox: `FOLD_BUSYBOX`, else `/bin/busybox` or `/usr/bin/busybox`
/// (Debian's `busybox-static` package).
pub(crate) fn find_static_busybox() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("FOLD_BUSYBOX") {
        let path = PathBuf::from(path);
        if !is_static_elf(&path)? {
            bail!(
                "FOLD_BUSYBOX={} is dynamically linked; it cannot run in the base image",
                path.display()
            );
        }
        return Ok(path);
    }
    let candidates = ["/bin/busybox", "/usr/bin/busybox"];
    for candidate in candidates {
        let path = Path::new(candidate);
        if path.is_file() && is_static_elf(path).unwrap_or(false) {
            return Ok(path.to_path_buf());
        }
    }
    bail!(
        "no static busybox at {candidates:?}: install it (`apt-get install busybox-static`) \
         or set FOLD_BUSYBOX to a statically linked busybox"
    )
}

/// Builds the rootfs tar of the base image around the static busybox at `busybox`.
///
/// Layout: `/bin/busybox` plus applet symlinks (`/bin/sh` and others), `/usr/bin/env`,
/// `/etc/passwd` and `/etc/group` (root and nobody), `/root` (0700), `/tmp` (1777), `/app`,
/// and empty `/dev`, `/proc`, `/sys` mount points. All entries are owned by root.
///
/// # Errors
///
/// When `busybox` cannot be read.
pub fn base_rootfs_tar(busybox: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    append_base(&mut builder, busybox)?;
    builder.into_inner().context("finishing the rootfs tar")
}

/// Appends the base image's entries (see [`base_rootfs_tar`]) to `builder`.
pub(crate) fn append_base(builder: &mut tar::Builder<Vec<u8>>, busybox: &Path) -> Result<()> {
    let binary =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    for (dir, mode) in [
        ("bin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("app", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
    ] {
        let mut header = entry_header(tar::EntryType::Directory, mode, 0);
        builder.append_data(&mut header, dir, std::io::empty())?;
    }
    let mut header = entry_header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    builder.append_data(&mut header, "bin/busybox", binary.as_slice())?;
    for applet in APPLETS {
        let mut header = entry_header(tar::EntryType::Symlink, 0o777, 0);
        builder.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    let mut header = entry_header(tar::EntryType::Symlink, 0o777, 0);
    builder.append_link(&mut header, "usr/bin/env", "/bin/busybox")?;
    for (path, content) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut header = entry_header(tar::EntryType::Regular, 0o644, content.len() as u64);
        builder.append_data(&mut header, path, content.as_bytes())?;
    }
    Ok(())
}

fn entry_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_tar_has_the_expected_layout() -> Result<()> {
        // Any readable file stands in for busybox here; the layout is what is checked.
        let fake = std::env::current_exe()?;
        let tar = base_rootfs_tar(&fake)?;
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = std::collections::BTreeMap::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let link = entry.link_name()?.map(|l| l.to_string_lossy().into_owned());
            seen.insert(path, (entry.header().mode()?, link));
        }
        assert_eq!(seen["tmp"].0, 0o1777);
        assert_eq!(seen["bin/busybox"].0, 0o755);
        assert_eq!(seen["bin/sh"].1.as_deref(), Some("busybox"));
        assert_eq!(seen["bin/id"].1.as_deref(), Some("busybox"));
        assert!(seen.contains_key("app"));
        assert!(seen.contains_key("etc/passwd"));
        // Deterministic: the same input gives the same bytes.
        assert_eq!(tar, base_rootfs_tar(&fake)?);
        Ok(())
    }
}
