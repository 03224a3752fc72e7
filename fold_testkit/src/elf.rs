//! A minimal ELF reader: is a binary statically linked?

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Program header type of the dynamic loader request (`PT_INTERP`).
const PT_INTERP: u32 = 3;

/// Whether `path` is a 64-bit little-endian ELF executable without a `PT_INTERP` program
/// header, i.e. the kernel runs it without a dynamic loader (static or static-pie).
///
/// Errors when the file cannot be read or is not such an ELF file.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut header = [0_u8; 64];
    file.read_exact_at(&mut header, 0)
        .with_context(|| format!("{}: too short for an ELF header", path.display()))?;
    if header[..4] != *b"\x7fELF" {
        bail!("{}: not an ELF file", path.display());
    }
    if header[4] != 2 || header[5] != 1 {
        bail!(
            "{}: only 64-bit little-endian ELF is supported",
            path.display()
        );
    }
    let phoff = u64::from_le_bytes(header[32..40].try_into()?);
    let phentsize = u64::from(u16::from_le_bytes(header[54..56].try_into()?));
    let phnum = u16::from_le_bytes(header[56..58].try_into()?);
    if phnum > 0 && phentsize < 4 {
        bail!("{}: malformed program headers", path.display());
    }
    for index in 0..u64::from(phnum) {
        let mut p_type = [0_u8; 4];
        file.read_exact_at(&mut p_type, phoff + index * phentsize)
            .with_context(|| format!("{}: truncated program headers", path.display()))?;
        if u32::from_le_bytes(p_type) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic() -> Result<()> {
        // Test binaries are built without +crt-static, so they ask for ld.so.
        assert!(!is_static_elf(&std::env::current_exe()?)?);
        Ok(())
    }

    #[test]
    fn non_elf_is_an_error() {
        let path = std::env::temp_dir().join(format!("fold_testkit_elf_{}", std::process::id()));
        std::fs::write(
            &path,
            b"#!/bin/sh\necho hi\n this is long enough for a header ......................",
        )
        .expect("write temp file");
        let err = is_static_elf(&path).expect_err("a script is not ELF");
        assert!(err.to_string().contains("not an ELF"), "{err:#}");
        let _ = std::fs::remove_file(&path);
    }
}
