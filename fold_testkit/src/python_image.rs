//! A Python image built offline from the host's own Python: the base image (static busybox)
//! plus the host's `python3`, the shared libraries it loads, and its standard library, at
//! the paths they have on the host. No registry is contacted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::docker::connect_docker;
use crate::image::{append_base, find_static_busybox, image_is_current, import};
use crate::util::{block_on, lock_file};

/// Name of the image made by [`ensure_python_image`].
pub const PYTHON_IMAGE: &str = "foldclient/python:test";

/// Label carried by the image: the host Python's version and this layout's version.
const PYTHON_IMAGE_LABEL: &str = "io.foldclient.testkit.python";

/// Bump when the layout of the image changes.
const LAYOUT_VERSION: &str = "1";

/// Where the host's Python is: the interpreter, its standard library, its version.
struct HostPython {
    executable: PathBuf,
    stdlib: PathBuf,
    version: String,
}

fn host_python() -> Result<HostPython> {
    // The system interpreter, not a user's shim (pyenv and the like).
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no python3 in /usr/bin or /usr/local/bin (apt-get install python3)")?;
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, sysconfig; print(sys.executable); \
             print(sysconfig.get_paths()['stdlib']); print(sys.version.split()[0])",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    let (Some(executable), Some(stdlib), Some(version)) =
        (lines.next(), lines.next(), lines.next())
    else {
        bail!("unexpected answer from {}: {text}", python.display());
    };
    Ok(HostPython {
        executable: std::fs::canonicalize(executable)?,
        stdlib: PathBuf::from(stdlib),
        version: version.to_string(),
    })
}

/// The shared libraries `binary` loads, and its loader, as `ldd` names them.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Makes sure [`PYTHON_IMAGE`] exists in the engine and returns its name. Idempotent, and
/// serialised as [`crate::ensure_base_image`] is.
///
/// # Errors
///
/// No engine, no host Python or static busybox, or the import fails.
pub fn ensure_python_image() -> Result<String> {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let python = host_python()?;
    let version = format!("{}-{LAYOUT_VERSION}", python.version);
    block_on(move || async move {
        let label = (PYTHON_IMAGE_LABEL, version.as_str());
        let docker = connect_docker().await?;
        if image_is_current(&docker, PYTHON_IMAGE, label).await? {
            return Ok(PYTHON_IMAGE.to_owned());
        }
        let lock_path = std::env::temp_dir().join("fold_testkit_python_image.lock");
        let _lock = lock_file(&lock_path, std::time::Duration::from_secs(300))?;
        if image_is_current(&docker, PYTHON_IMAGE, label).await? {
            return Ok(PYTHON_IMAGE.to_owned());
        }
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        append_base(&mut builder, &find_static_busybox()?)?;
        let strip = |p: &Path| p.strip_prefix("/").map(Path::to_path_buf);
        for file in std::iter::once(python.executable.clone()).chain(libraries(&python.executable)?)
        {
            let real = std::fs::canonicalize(&file)?;
            builder.append_path_with_name(&real, strip(&file)?)?;
        }
        builder.append_dir_all(strip(&python.stdlib)?, &python.stdlib)?;
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        builder.append_link(&mut link, "usr/bin/python3", &python.executable)?;
        let tar = builder.into_inner()?;
        let change = format!("LABEL {PYTHON_IMAGE_LABEL}={version}");
        import(&docker, tar, ("foldclient/python", "test"), &change).await?;
        eprintln!(
            "fold_testkit: imported {PYTHON_IMAGE} from the host's Python {}",
            python.version
        );
        Ok(PYTHON_IMAGE.to_owned())
    })
}
