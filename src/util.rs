//! Small helpers shared across concerns.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// `dir/.name.tmp-<pid>-<n>`: beside `path`, so renaming it over `path` is atomic, and
/// unique within the process, so two writers of one path never share a temporary file.
pub fn temp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        "{TEMP_PREFIX}{name}.tmp-{}-{n}",
        std::process::id()
    ))
}

/// Every temporary file of [`temp_path`] starts with this (and holds `.tmp-`).
pub const TEMP_PREFIX: &str = ".";

/// True for a file name [`temp_path`] made: left behind only by a process that died.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.contains(".tmp-")
}

/// Writes `bytes` to a temporary file, syncs it, renames it over `path` and syncs the
/// directory: a reader sees the old file or the new one, never half of one, and after
/// a power cut the new one is there once this returns. On failure the temporary file
/// is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
        .map_err(|e| write_error(path, e))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Makes renames and removals in `dir` durable (directories can be fsynced on Unix).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// An I/O error of a write, saying so plainly when the disk is full.
fn write_error(path: &Path, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::StorageFull {
        let dir = path.parent().unwrap_or(Path::new("."));
        anyhow::anyhow!("the disk holding {} is full ({e})", dir.display())
    } else {
        e.into()
    }
}

/// Writes `tensors` as safetensors to `path` through [`write_atomic`]; returns the
/// SHA-256 of the bytes written (what a sidecar records to tie files together).
pub fn save_tensors(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &Path,
) -> anyhow::Result<String> {
    use sha2::Digest;
    let bytes = safetensors::serialize(tensors.iter(), None)
        .with_context(|| format!("{}: cannot encode tensors", path.display()))?;
    write_atomic(path, &bytes)?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.bin");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
