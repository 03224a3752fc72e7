//! Does an app binary fit its image? A glibc-dynamic binary cannot start in a musl or
//! busybox image (its loader `/lib64/ld-linux-x86-64.so.2` is not there), and fails with a
//! confusing "no such file or directory". This reads the ELF `PT_INTERP` header to warn
//! before launch.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Program header type of the dynamic loader request.
const PT_INTERP: u32 = 3;
/// Longest loader path read.
const MAX_INTERP: u64 = 256;

/// How a binary is linked, as far as its image is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// No loader needed (static or static-pie): runs in any image.
    Static,
    /// Needs this loader (`PT_INTERP`), e.g. `/lib64/ld-linux-x86-64.so.2`.
    Dynamic(String),
    /// Not a 64-bit little-endian ELF file (a script, another architecture): not checked.
    Unknown,
}

/// Reads the binary's linkage. I/O errors count as [`Linkage::Unknown`].
pub fn linkage(path: &Path) -> Linkage {
    read_linkage(path).unwrap_or(Linkage::Unknown)
}

fn read_linkage(path: &Path) -> std::io::Result<Linkage> {
    let file = File::open(path)?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0)?;
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(Linkage::Unknown);
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let phoff = u64_at(32);
    let phentsize = u64::from(u16::from_le_bytes([header[54], header[55]]));
    let phnum = u16::from_le_bytes([header[56], header[57]]);
    if phentsize < 56 {
        return Ok(Linkage::Unknown);
    }
    for index in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        file.read_exact_at(&mut ph, phoff + index * phentsize)?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_INTERP {
            continue;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&ph[8..16]);
        let offset = u64::from_le_bytes(b);
        b.copy_from_slice(&ph[32..40]);
        let size = u64::from_le_bytes(b).min(MAX_INTERP);
        let mut interp = vec![0u8; usize::try_from(size).unwrap_or(0)];
        file.read_exact_at(&mut interp, offset)?;
        let end = interp.iter().position(|&c| c == 0).unwrap_or(interp.len());
        return Ok(Linkage::Dynamic(
            String::from_utf8_lossy(&interp[..end]).into_owned(),
        ));
    }
    Ok(Linkage::Static)
}

/// Whether an image name looks like a musl or busybox image (alpine, busybox, the test
/// base image). A heuristic on the name: the engine is not asked.
pub fn is_musl_like_image(image: &str) -> bool {
    let repo = image
        .rsplit_once('/')
        .map_or(image, |(_, r)| r)
        .split([':', '@'])
        .next()
        .unwrap_or("");
    ["alpine", "busybox", "musl"]
        .iter()
        .any(|m| repo.contains(m))
        || image.starts_with("foldclient/base")
}

/// A warning, with its fix, when `binary` will not start in `image`.
pub fn image_mismatch(binary: &Path, image: &str) -> Option<String> {
    let Linkage::Dynamic(interp) = linkage(binary) else {
        return None;
    };
    let glibc = interp.contains("ld-linux") || interp.contains("ld64.so");
    let musl = interp.contains("ld-musl");
    // The loader path is the binary's bytes: escaped before it becomes a message.
    let interp = crate::terminal::escape(&interp);
    if glibc && is_musl_like_image(image) {
        return Some(format!(
            "{} is dynamically linked against glibc (loader {interp}) but image {image} is musl/busybox based: \
             it will fail to start. Rebuild it static (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build \
             --target x86_64-unknown-linux-gnu) or use a glibc image (--image debian:stable-slim)",
            binary.display()
        ));
    }
    if musl && !is_musl_like_image(image) {
        return Some(format!(
            "{} is dynamically linked against musl (loader {interp}) but image {image} does not look musl based: \
             it may fail to start. Build it static or use an alpine image",
            binary.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binary_is_glibc_dynamic_and_scripts_are_unknown() {
        let exe = std::env::current_exe().unwrap();
        match linkage(&exe) {
            Linkage::Dynamic(interp) => assert!(interp.contains("ld-"), "{interp}"),
            other => panic!("expected dynamic, got {other:?}"),
        }
        let warning = image_mismatch(&exe, "alpine:latest").unwrap();
        assert!(warning.contains("glibc") && warning.contains("crt-static"));
        assert!(image_mismatch(&exe, "debian:stable-slim").is_none());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(linkage(&script), Linkage::Unknown);
        assert_eq!(linkage(&dir.path().join("missing")), Linkage::Unknown);
    }

    #[test]
    fn musl_like_images() {
        for image in [
            "alpine:latest",
            "docker.io/library/alpine:3.20",
            "busybox",
            "foldclient/base:latest",
        ] {
            assert!(is_musl_like_image(image), "{image}");
        }
        for image in ["debian:stable-slim", "ubuntu", "registry.local:5000/app:1"] {
            assert!(!is_musl_like_image(image), "{image}");
        }
    }
}
