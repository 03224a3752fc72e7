//! Builds `holder/main.rs`, the first process of a warm container, as a static executable
//! and leaves it in `OUT_DIR` for `sandbox::holder` to embed. It must be static: it runs in
//! whatever image the app names (busybox, alpine, scratch). Without static glibc
//! (`libc6-dev`) the daemon is still built, without warm pools (`--warm` then says why).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=holder/main.rs");
    println!("cargo::rustc-check-cfg=cfg(fold_holder_missing)");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let holder = out.join("fold_holder");
    let built = Command::new(rustc)
        .args(["--edition", "2021", "--crate-name", "fold_holder"])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "--target", &target])
        .arg("-o")
        .arg(&holder)
        .arg("holder/main.rs")
        .output();
    match built {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stderr.lines().find(|l| l.contains("error")).unwrap_or("");
            println!(
                "cargo::warning=warm pools disabled: the static holder did not build \
                 (install static glibc: apt-get install libc6-dev): {first}"
            );
            println!("cargo::rustc-cfg=fold_holder_missing");
        }
        Err(e) => {
            println!("cargo::warning=warm pools disabled: cannot run rustc for the holder: {e}");
            println!("cargo::rustc-cfg=fold_holder_missing");
        }
    }
}
