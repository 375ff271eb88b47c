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

/// A progress bar for `total` units of `what` with an ETA; drawn only when `show` and
/// stderr is a terminal (a batch job's log gets no bar).
pub fn progress_bar(show: bool, total: usize, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    // Cleared when dropped, so an early return leaves no half bar behind.
    let bar =
        indicatif::ProgressBar::new(total as u64).with_finish(indicatif::ProgressFinish::AndClear);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{pos}}/{{len}} ETA {{eta}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// A spinner saying what is being done, for work with no count (a graph build); drawn
/// only on a terminal and cleared when dropped.
pub fn spinner(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner()
        .with_finish(indicatif::ProgressFinish::AndClear)
        .with_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Refuses an output path whose directory does not exist (or is not a directory), before
/// any work: the error names it, rather than a temporary file's "permission denied".
pub fn check_output_path(path: &Path) -> Result<(), crate::error::InputError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(crate::error::InputError::file(
            path,
            format!(
                "cannot write here: the directory {} does not exist",
                dir.display()
            ),
        ));
    }
    if path.is_dir() {
        return Err(crate::error::InputError::file(path, "is a directory"));
    }
    Ok(())
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

/// Writes `bytes` as a new file: `path`, or `stem-2.ext`, `stem-3.ext`... when that
/// exists (another run's report of the same second). Never replaces a file: the
/// complete temporary file is hard-linked to a name that must not exist yet.
/// Creates a NetCDF file at `out` through a temporary name that `write` fills and that
/// is renamed over `out` only when complete; on error the temporary file is removed and
/// the error says `what` could not be written.
pub fn write_netcdf_atomic(
    out: &Path,
    what: &str,
    write: impl FnOnce(&mut netcdf::FileMut) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tmp = temp_path(out);
    let ctx = || format!("{}: cannot write {what}", out.display());
    let mut file = netcdf::create(&tmp).with_context(ctx)?;
    let written = write(&mut file)
        .and_then(|()| file.close().map_err(Into::into))
        .with_context(ctx);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).with_context(ctx)
}

pub fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let tmp = temp_path(path);
    write_atomic(&tmp, bytes)?;
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()));
    let result = (1..10_000)
        .map(|n| match n {
            1 => path.to_path_buf(),
            n => path.with_file_name(format!("{stem}-{n}{}", ext.as_deref().unwrap_or(""))),
        })
        .find_map(|candidate| match std::fs::hard_link(&tmp, &candidate) {
            Ok(()) => Some(Ok(candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
            Err(e) => Some(Err(e)),
        })
        .unwrap_or_else(|| Err(std::io::ErrorKind::AlreadyExists.into()));
    let _ = std::fs::remove_file(&tmp);
    result.with_context(|| format!("{}: cannot write", path.display()))
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
