//! Checkpoints: weights in safetensors (the names are the model's VarMap keys), the
//! optimizer moments in a second safetensors file, and a JSON sidecar with everything
//! needed to continue or evaluate: run config, normalisation, step, epoch, position in
//! the epoch, schedule, and the SHA-256 of both tensor files (so a set whose files do
//! not belong together, e.g. after a crash between two renames, is refused).
//!
//! Each file is written to a temporary name and renamed into place; the sidecar last.

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
}

/// Paths of checkpoint `name` (`last` or `best`) in `dir`.
pub struct CheckpointFiles {
    pub weights: PathBuf,
    pub optimizer: PathBuf,
    pub meta: PathBuf,
}

pub fn files(dir: &Path, name: &str) -> CheckpointFiles {
    CheckpointFiles {
        weights: dir.join(format!("{name}.safetensors")),
        optimizer: dir.join(format!("{name}.optimizer.safetensors")),
        meta: dir.join(format!("{name}.json")),
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Writes checkpoint `name`. Refuses (and writes nothing) if any weight is NaN or infinite.
pub fn save(
    dir: &Path,
    name: &str,
    optimizer: &AdamW,
    meta: &mut CheckpointMeta,
) -> anyhow::Result<()> {
    let mut weights = HashMap::new();
    let mut moments = HashMap::new();
    for slot in &optimizer.slots {
        let w = slot.var.as_tensor().clone();
        let finite = w
            .to_dtype(candle_core::DType::F64)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?
            .is_finite();
        if !finite {
            anyhow::bail!(
                "weight '{}' is NaN or infinite at step {}: no checkpoint written",
                slot.name,
                meta.step
            );
        }
        weights.insert(slot.name.clone(), w);
        moments.insert(format!("m.{}", slot.name), slot.m.clone());
        moments.insert(format!("v.{}", slot.name), slot.v.clone());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let f = files(dir, name);
    crate::util::save_tensors(&weights, &f.weights)?;
    crate::util::save_tensors(&moments, &f.optimizer)?;
    meta.weights_sha256 = sha256_file(&f.weights)?;
    meta.optimizer_sha256 = sha256_file(&f.optimizer)?;
    crate::util::write_atomic(&f.meta, serde_json::to_string_pretty(meta)?.as_bytes())
}

/// A loaded checkpoint: sidecar, weights and moments (on `device`).
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub weights: HashMap<String, Tensor>,
    pub moments: HashMap<String, Tensor>,
}

/// Reads checkpoint `name` from `dir`, checking version and that the files belong together.
pub fn load(dir: &Path, name: &str, device: &Device) -> anyhow::Result<Checkpoint> {
    let f = files(dir, name);
    let text = std::fs::read_to_string(&f.meta)
        .map_err(|e| InputError::file(&f.meta, format!("cannot read checkpoint: {e}")))?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .map_err(|e| InputError::file(&f.meta, format!("not a meshcast checkpoint: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(InputError::file(
            &f.meta,
            format!(
                "checkpoint format {} is not this meshcast's {FORMAT_VERSION}",
                meta.format_version
            ),
        )
        .into());
    }
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
    let weights = candle_core::safetensors::load(&f.weights, device)
        .map_err(|e| InputError::file(&f.weights, format!("cannot read weights: {e}")))?;
    let moments = candle_core::safetensors::load(&f.optimizer, device)
        .map_err(|e| InputError::file(&f.optimizer, format!("cannot read optimizer state: {e}")))?;
    Ok(Checkpoint {
        meta,
        weights,
        moments,
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
        for slot in &mut optimizer.slots {
            let get = |k: &str| {
                self.moments
                    .get(&format!("{k}.{}", slot.name))
                    .cloned()
                    .ok_or_else(|| {
                        InputError(format!(
                            "checkpoint has no optimizer state for '{}'",
                            slot.name
                        ))
                    })
            };
            slot.m = get("m")?;
            slot.v = get("v")?;
        }
        optimizer.step_t = self.meta.step;
        Ok(())
    }
}

/// Finds a checkpoint from what a user points at: a run directory, its `checkpoints/`
/// directory, or a sidecar `.json`; `name` (best or last) picks within a directory.
pub fn locate(path: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    if path.extension().is_some_and(|e| e == "json") && path.is_file() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok((path.parent().unwrap_or(Path::new(".")).to_path_buf(), stem));
    }
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        if files(&dir, name).meta.exists() {
            return Ok((dir, name.to_string()));
        }
    }
    Err(InputError::file(
        path,
        format!("no checkpoint '{name}' here (expected checkpoints/{name}.json)"),
    )
    .into())
}
