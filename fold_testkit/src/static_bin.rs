//! Static builds of workspace binaries, for use inside containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::elf::is_static_elf;
use crate::util::{env_secs, lock_file, run_with_timeout};

const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Target triple of static builds: `FOLD_STATIC_TARGET`, else `<arch>-unknown-linux-gnu`
/// (`x86_64-unknown-linux-gnu` on the build machines).
///
/// The triple is always passed explicitly so that `RUSTFLAGS` applies to the binary only and
/// not to build scripts and proc macros (which cannot be static).
pub fn static_target_triple() -> String {
    std::env::var("FOLD_STATIC_TARGET")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
}

/// Builds binary `bin` of workspace package `package` statically linked and returns its path.
///
/// Runs `RUSTFLAGS="-C target-feature=+crt-static" cargo build --target <triple> -p <package>
/// --bin <bin>` (dev profile) with its own target directory, `<target>/static` by default
/// (`FOLD_STATIC_TARGET_DIR` overrides), so the different `RUSTFLAGS` never invalidate the
/// main build cache. Results are memoised per process; concurrent builds from several test
/// processes are serialised by a file lock in that directory (and by cargo's own lock). The
/// result is checked with [`is_static_elf`](crate::is_static_elf).
///
/// The first build compiles the package's dependencies once more for the static target, so
/// it can take a few minutes; later calls are incremental.
///
/// # Errors
///
/// When cargo fails or exceeds `FOLD_STATIC_BUILD_TIMEOUT_SECS` (default 1800), or the
/// result is not a static executable.
pub fn build_static_binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<(String, String), PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|poison| poison.into_inner());
    let key = (package.to_owned(), bin.to_owned());
    if let Some(path) = built.get(&key) {
        return Ok(path.clone());
    }

    let target_dir = static_target_dir()?;
    let triple = static_target_triple();
    let _lock = lock_file(
        &target_dir.join(".fold_testkit_build.lock"),
        env_secs("FOLD_STATIC_BUILD_TIMEOUT_SECS", 1800),
    )?;
    let root = workspace_root();
    eprintln!(
        "fold_testkit: building static {package}/{bin} for {triple} in {}",
        target_dir.display()
    );
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--target", &triple, "-p", package, "--bin", bin])
        .arg("--message-format=short")
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        // These would take precedence over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    let output = run_with_timeout(&mut cmd, env_secs("FOLD_STATIC_BUILD_TIMEOUT_SECS", 1800))?;
    if !output.status.success() {
        bail!(
            "static build of {package}/{bin} failed ({}):\n{}",
            output.status,
            output.stderr_tail(60)
        );
    }
    let path = target_dir.join(&triple).join("debug").join(bin);
    if !path.is_file() {
        bail!(
            "static build of {package}/{bin} succeeded but {} is missing",
            path.display()
        );
    }
    if !is_static_elf(&path)? {
        bail!(
            "{} is dynamically linked although built with {STATIC_RUSTFLAGS}",
            path.display()
        );
    }
    built.insert(key, path.clone());
    Ok(path)
}

/// The cargo binary that runs this test (`CARGO`), else `cargo` from `PATH`.
fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// `FOLD_STATIC_TARGET_DIR`, else `<workspace target dir>/static`.
fn static_target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FOLD_STATIC_TARGET_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    Ok(cargo_target_dir()?.join("static"))
}

/// The workspace target directory as cargo sees it (honours `CARGO_TARGET_DIR` and config).
fn cargo_target_dir() -> Result<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir.clone());
    }
    let root = workspace_root();
    let output = run_with_timeout(
        Command::new(cargo())
            .current_dir(&root)
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml")),
        Duration::from_secs(120),
    )?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed ({}):\n{}",
            output.status,
            output.stderr_tail(20)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let dir = metadata
        .get("target_directory")
        .and_then(|d| d.as_str())
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")?;
    Ok(DIR.get_or_init(|| dir).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let manifest =
            std::fs::read_to_string(workspace_root().join("Cargo.toml")).expect("root Cargo.toml");
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn static_dir_is_separate_from_the_main_target_dir() -> Result<()> {
        if std::env::var_os("FOLD_STATIC_TARGET_DIR").is_some() {
            return Ok(());
        }
        let dir = static_target_dir()?;
        assert!(dir.ends_with("static"), "{}", dir.display());
        Ok(())
    }
}
