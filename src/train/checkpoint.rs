//! Checkpoints: weights in safetensors (the names are the model's VarMap keys), the
//! optimizer moments in a second safetensors file, and a JSON sidecar with everything
//! needed to continue or evaluate: run config, normalisation, step, epoch, position in
//! the epoch, schedule, and the SHA-256 of both tensor files (so a set whose files do
//! not belong together, e.g. after a crash between two renames, is refused).
//!
//! A save writes a new set of uniquely named tensor files and then switches the
//! sidecar (the pointer) to them with one atomic rename; files and directory are
//! fsynced, and the old set is removed only after the switch. At every instant the old
//! or the new checkpoint loads; stale files of a killed save go at the next start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::RunConfig;
use super::optimizer::{AdamW, AdamWParams};
use super::schedule::LrSchedule;
use crate::data::NormStats;
use crate::error::InputError;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub meshcast_version: String,
    /// Optimizer steps taken.
    pub step: usize,
    /// Epoch in progress (0-based) and micro-batches of it already consumed; a finished
    /// epoch is stored as the next epoch at position 0.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub run: RunConfig,
    pub stats: NormStats,
    pub adamw: AdamWParams,
    pub schedule: LrSchedule,
    /// Sample order is a pure function of (seed, epoch): ChaCha8 seeded with both.
    pub rng: String,
    pub data_fingerprint: String,
    /// The f16 loss scaler's state (absent without f16), restored on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<super::loss_scale::LossScaler>,
    pub weights_sha256: String,
    pub optimizer_sha256: String,
    /// The tensor files of this set, beside the sidecar (absent in sets written before
    /// versioned names: `<name>.safetensors`, `<name>.optimizer.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_file: Option<String>,
    /// Bytes of `metrics.jsonl` when this set was written: a resumed run cuts the
    /// file back to here, so rows of steps it repeats are not written twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_bytes: Option<u64>,
}

/// The files of one checkpoint set.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub weights: PathBuf,
    pub optimizer: PathBuf,
    /// The sidecar `<name>.json`: the pointer that makes a set current, switched last.
    pub meta: PathBuf,
}

/// The sidecar of checkpoint `name` (`last` or `best`) in `dir`.
pub fn sidecar(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

impl CheckpointMeta {
    /// The files this sidecar points at (format 1 sets before versioned names:
    /// `<name>.safetensors` and `<name>.optimizer.safetensors`).
    pub fn files(&self, dir: &Path, name: &str) -> CheckpointFiles {
        let or_legacy =
            |file: &Option<String>, legacy: String| dir.join(file.clone().unwrap_or(legacy));
        CheckpointFiles {
            weights: or_legacy(&self.weights_file, format!("{name}.safetensors")),
            optimizer: or_legacy(
                &self.optimizer_file,
                format!("{name}.optimizer.safetensors"),
            ),
            meta: sidecar(dir, name),
        }
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Refuses NaN or infinite values: a diverged run must never become a checkpoint.
fn check_finite(what: &str, name: &str, t: &Tensor) -> anyhow::Result<()> {
    let max = t
        .to_dtype(candle_core::DType::F64)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    if !max.is_finite() {
        anyhow::bail!("{what} '{name}' is NaN or infinite");
    }
    Ok(())
}

/// Writes checkpoint `name` crash-safely: the tensors go to new, uniquely named files;
/// the sidecar, renamed over the old one last, switches to them; then the old set is
/// removed. A crash or a full disk at any point leaves the old or the new checkpoint
/// loadable. Refuses (and writes nothing) if any weight or moment is NaN or infinite.
pub fn save(
    dir: &Path,
    name: &str,
    optimizer: &AdamW,
    meta: &mut CheckpointMeta,
) -> anyhow::Result<()> {
    let (weights, moments) = tensors_to_save(optimizer)
        .map_err(|e| anyhow::anyhow!("{e:#} at step {}: no checkpoint written (the run diverged; try a lower --learning-rate)", meta.step))?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let previous = read_meta(&sidecar(dir, name))
        .ok()
        .map(|old| old.files(dir, name));
    let set = unique_set_name(name, meta.step);
    let (weights_file, optimizer_file) = (
        format!("{set}.safetensors"),
        format!("{set}.optimizer.safetensors"),
    );
    let written = (|| {
        meta.weights_sha256 = crate::util::save_tensors(&weights, &dir.join(&weights_file))?;
        meta.optimizer_sha256 = crate::util::save_tensors(&moments, &dir.join(&optimizer_file))?;
        (meta.weights_file, meta.optimizer_file) =
            (Some(weights_file.clone()), Some(optimizer_file.clone()));
        crate::util::write_atomic(
            &sidecar(dir, name),
            serde_json::to_string_pretty(meta)?.as_bytes(),
        )
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(dir.join(&weights_file));
        let _ = std::fs::remove_file(dir.join(&optimizer_file));
        return Err(e.context(format!(
            "checkpoint '{name}' not saved; the previous one in {} is kept",
            dir.display()
        )));
    }
    let links = link_current(dir, name, &meta.files(dir, name))?;
    if let Some(old) = previous {
        for path in [old.weights, old.optimizer] {
            if !links.contains(&path) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    crate::util::sync_dir(dir).with_context(|| format!("{}: cannot sync", dir.display()))
}

/// Points the stable names `<name>.safetensors` and `<name>.optimizer.safetensors` at
/// the current set (relative symbolic links, each swapped by one rename), for people
/// and tools that open the weights without reading the sidecar. The sidecar stays the
/// authority: a link a crash left behind is renewed at the next start.
fn link_current(dir: &Path, name: &str, set: &CheckpointFiles) -> anyhow::Result<[PathBuf; 2]> {
    let links = [
        dir.join(format!("{name}.safetensors")),
        dir.join(format!("{name}.optimizer.safetensors")),
    ];
    for (link, target) in links.iter().zip([&set.weights, &set.optimizer]) {
        if link == target {
            continue;
        }
        let tmp = crate::util::temp_path(link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(target.file_name().unwrap_or_default(), &tmp)
            .and_then(|()| std::fs::rename(&tmp, link))
            .with_context(|| format!("{}: cannot link", link.display()))?;
    }
    Ok(links)
}

/// The weights and the moments of every parameter, each checked finite.
type NamedTensors = HashMap<String, Tensor>;
fn tensors_to_save(optimizer: &AdamW) -> anyhow::Result<(NamedTensors, NamedTensors)> {
    let (mut weights, mut moments) = (HashMap::new(), HashMap::new());
    for (i, slot) in optimizer.slots.iter().enumerate() {
        let w = slot.var.as_tensor().clone();
        let (m, v) = optimizer.moments(i)?;
        check_finite("weight", &slot.name, &w)?;
        check_finite("optimizer moment m of", &slot.name, &m)?;
        check_finite("optimizer moment v of", &slot.name, &v)?;
        weights.insert(slot.name.clone(), w);
        moments.insert(format!("m.{}", slot.name), m);
        moments.insert(format!("v.{}", slot.name), v);
    }
    Ok((weights, moments))
}

/// `<name>.<step>-<pid><nanos>`: a new name for every save, so a new set never
/// overwrites the files the current sidecar points at (even at the same step).
fn unique_set_name(name: &str, step: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}.{step:08}-{:x}{nanos:x}", std::process::id())
}

/// Removes what a process killed inside a save left behind: temporary files and tensor
/// files no sidecar points at. Keeps everything when a sidecar cannot be read.
pub fn remove_stale_files(dir: &Path) -> anyhow::Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut current = Vec::new();
    for name in ["last", "best"] {
        let path = sidecar(dir, name);
        if path.exists() {
            let Ok(meta) = read_meta(&path) else {
                return Ok(0);
            };
            let f = meta.files(dir, name);
            current.extend(link_current(dir, name, &f)?);
            current.extend([f.weights, f.optimizer]);
        }
    }
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let ours = (file.starts_with("last.") || file.starts_with("best."))
            && file.ends_with(".safetensors");
        if crate::util::is_temp_name(&file) || (ours && !current.contains(&entry.path())) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("{}: cannot remove", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A loaded checkpoint: sidecar, weights and moments (on `device`).
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub files: CheckpointFiles,
    pub weights: HashMap<String, Tensor>,
    pub moments: HashMap<String, Tensor>,
}

fn read_meta(path: &Path) -> anyhow::Result<CheckpointMeta> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::file(path, format!("cannot read checkpoint: {e}")))?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .map_err(|e| InputError::file(path, format!("not a meshcast checkpoint: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(InputError::file(
            path,
            format!(
                "checkpoint format {} is not this meshcast's {FORMAT_VERSION}",
                meta.format_version
            ),
        )
        .into());
    }
    if let Err(problem) = meta.stats.check() {
        return Err(InputError::file(path, format!("damaged checkpoint: {problem}")).into());
    }
    Ok(meta)
}

/// Reads checkpoint `name` from `dir`, checking version, that the files belong
/// together, and that every weight and moment is finite.
pub fn load(dir: &Path, name: &str, device: &Device) -> anyhow::Result<Checkpoint> {
    let meta = read_meta(&sidecar(dir, name))?;
    let f = meta.files(dir, name);
    for (path, want) in [
        (&f.weights, &meta.weights_sha256),
        (&f.optimizer, &meta.optimizer_sha256),
    ] {
        let got = sha256_file(path).map_err(|e| InputError::file(path, format!("{e:#}")))?;
        if &got != want {
            return Err(InputError::file(
                path,
                "does not match its checkpoint sidecar (incomplete or altered checkpoint)",
            )
            .into());
        }
    }
    let read = |path: &Path, what: &str| -> anyhow::Result<NamedTensors> {
        let tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| InputError::file(path, format!("cannot read {what}: {e}")))?;
        for (name, t) in &tensors {
            check_finite(what, name, t).map_err(|e| InputError::file(path, e))?;
        }
        Ok(tensors)
    };
    Ok(Checkpoint {
        weights: read(&f.weights, "weight")?,
        moments: read(&f.optimizer, "optimizer state")?,
        meta,
        files: f,
    })
}

impl Checkpoint {
    /// Copies the weights into `vars`; every parameter must be present with its shape.
    pub fn restore_weights(&self, vars: &[(String, Var)]) -> anyhow::Result<()> {
        if self.weights.len() != vars.len() {
            return Err(InputError(format!(
                "checkpoint has {} parameters, the model {}: another model shape",
                self.weights.len(),
                vars.len()
            ))
            .into());
        }
        for (name, var) in vars {
            let w = self.weights.get(name).ok_or_else(|| {
                InputError(format!(
                    "checkpoint has no parameter '{name}': another model shape"
                ))
            })?;
            if w.shape() != var.shape() {
                return Err(InputError(format!(
                    "checkpoint parameter '{name}' has shape {:?}, the model {:?}: another model shape",
                    w.dims(),
                    var.dims()
                ))
                .into());
            }
            var.set(&w.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Weights, optimizer moments and step count, to continue training.
    pub fn restore(&self, optimizer: &mut AdamW) -> anyhow::Result<()> {
        let vars: Vec<(String, Var)> = optimizer
            .slots
            .iter()
            .map(|s| (s.name.clone(), s.var.clone()))
            .collect();
        self.restore_weights(&vars)?;
        let moments = vars
            .iter()
            .map(|(name, var)| {
                let get = |k: &str| {
                    let m = self.moments.get(&format!("{k}.{name}")).ok_or_else(|| {
                        InputError(format!("checkpoint has no optimizer state for '{name}'"))
                    })?;
                    if m.dims() != var.dims() {
                        return Err(InputError(format!(
                            "checkpoint optimizer state '{k}.{name}' has shape {:?}, the model {:?}",
                            m.dims(),
                            var.dims()
                        )));
                    }
                    Ok(m.clone())
                };
                Ok((get("m")?, get("v")?))
            })
            .collect::<Result<Vec<_>, InputError>>()?;
        optimizer.load(moments)?;
        optimizer.step_t = self.meta.step;
        Ok(())
    }
}

/// Finds a checkpoint from what a user points at: a run directory, its `checkpoints/`
/// directory, or a sidecar `.json`; `name` (best or last) picks within a directory.
pub fn locate(path: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(InputError(format!(
            "--which '{name}': a checkpoint name (best or last), not a path; point at another run with its directory"
        ))
        .into());
    }
    if path.extension().is_some_and(|e| e == "json") && path.is_file() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok((path.parent().unwrap_or(Path::new(".")).to_path_buf(), stem));
    }
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        if sidecar(&dir, name).exists() {
            return Ok((dir, name.to_string()));
        }
    }
    Err(InputError::file(
        path,
        format!("no checkpoint '{name}' here (expected checkpoints/{name}.json)"),
    )
    .into())
}

/// How often `train-model --checkpoint-interval` saves `last` inside an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckpointInterval {
    Steps(usize),
    Every(std::time::Duration),
}

impl CheckpointInterval {
    /// `500` (optimizer steps) or `90s`, `30m`, `2h`.
    pub fn parse(text: &str) -> Result<CheckpointInterval, String> {
        let bad = || format!("'{text}': a number of steps (500) or a time (90s, 30m, 2h)");
        let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => text.split_at(at),
            None => (text, ""),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!("'{text}': must be at least 1"));
        }
        let seconds = match unit {
            "" => return usize::try_from(n).map(Self::Steps).map_err(|_| bad()),
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        n.checked_mul(seconds)
            .map(|s| Self::Every(std::time::Duration::from_secs(s)))
            .ok_or_else(bad)
    }

    /// Whether a save is due after `step`, `since` the last save.
    pub fn due(&self, step: usize, since: std::time::Duration) -> bool {
        match *self {
            Self::Steps(n) => step.is_multiple_of(n),
            Self::Every(every) => since >= every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn checkpoint_intervals_are_steps_or_times() {
        let parse = CheckpointInterval::parse;
        assert_eq!(parse("500"), Ok(CheckpointInterval::Steps(500)));
        assert_eq!(
            parse("30m"),
            Ok(CheckpointInterval::Every(Duration::from_secs(1800)))
        );
        assert_eq!(
            parse("2h"),
            Ok(CheckpointInterval::Every(Duration::from_secs(7200)))
        );
        for bad in ["0", "", "m", "1.5h", "-3", "10d", "99999999999999999999"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let every = CheckpointInterval::Every(Duration::from_secs(60));
        assert!(every.due(7, Duration::from_secs(61)));
        assert!(!every.due(7, Duration::from_secs(59)));
        assert!(CheckpointInterval::Steps(5).due(10, Duration::ZERO));
        assert!(!CheckpointInterval::Steps(5).due(11, Duration::ZERO));
    }
}
