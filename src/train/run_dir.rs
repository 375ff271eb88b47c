//! The run directory (`--output-dir`): one training process at a time (an advisory
//! lock held for the run's lifetime), nothing of an old run deleted before the new one
//! is certain to start, and what a killed process left behind cleaned up.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::checkpoint;
use super::config::RunConfig;
use crate::error::InputError;

/// The lock file inside a run directory; it holds the PID of the process that owns it.
pub const LOCK_FILE: &str = ".meshcast.lock";

/// A run directory locked by this process until the value is dropped (the kernel
/// releases the lock when the process dies, however it dies).
pub struct RunDir {
    pub path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates `path` if needed and takes its lock; a second process is refused with
    /// the holder's PID.
    pub fn lock(path: &Path) -> anyhow::Result<RunDir> {
        std::fs::create_dir_all(path).map_err(|e| {
            InputError::file(path, format!("cannot create the output directory: {e}"))
        })?;
        let lock_path = path.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| InputError::file(&lock_path, format!("cannot open: {e}")))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(InputError::file(
                path,
                format!(
                    "in use by another meshcast process (PID {}): wait for it to end, or choose another --output-dir",
                    holder.trim()
                ),
            )
            .into());
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(RunDir {
            path: path.to_path_buf(),
            _lock: file,
        })
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// Refuses what cannot start before anything is built: an existing run without
    /// --resume or --overwrite, a resume without a checkpoint.
    pub fn check_start(&self, resume: bool, overwrite: bool) -> anyhow::Result<()> {
        if self.path.join("run.json").exists() && !resume && !overwrite {
            return Err(InputError::file(
                &self.path,
                "already holds a training run: pass --resume to continue it or --overwrite to start over",
            )
            .into());
        }
        if resume && !checkpoint::sidecar(&self.checkpoints(), "last").exists() {
            return Err(InputError::file(
                &self.path,
                "has no checkpoint to resume (checkpoints/last.json)",
            )
            .into());
        }
        Ok(())
    }

    /// Called once the new run is certain to start: removes an old run (--overwrite)
    /// or a killed save's leftovers (--resume), and writes run.json.
    pub fn start(&self, run: &RunConfig, overwrite: bool) -> anyhow::Result<()> {
        if overwrite {
            for name in ["run.json", "stats.json", "metrics.jsonl"] {
                let path = self.path.join(name);
                if path.exists() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("{}: cannot remove", path.display()))?;
                }
            }
            let checkpoints = self.checkpoints();
            if checkpoints.exists() {
                std::fs::remove_dir_all(&checkpoints)
                    .with_context(|| format!("{}: cannot remove", checkpoints.display()))?;
            }
        }
        let stale = checkpoint::remove_stale_files(&self.checkpoints())?;
        if stale > 0 {
            tracing::info!("removed {stale} files of an interrupted checkpoint save");
        }
        crate::util::write_atomic(
            &self.path.join("run.json"),
            serde_json::to_string_pretty(run)?.as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunDir::lock(dir.path()).unwrap();
        let err = RunDir::lock(dir.path()).err().unwrap().to_string();
        assert!(err.contains("in use by another meshcast process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        RunDir::lock(dir.path()).unwrap();
    }
}
