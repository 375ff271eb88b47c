//! `metrics.jsonl`: one JSON object per line, tagged by `kind` (step, skip, epoch,
//! summary), so `pandas.read_json(path, lines=True)` loads it in one call.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::memory::MemoryBreakdown;
use crate::model::MixedPrecision;

/// One line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record<'a> {
    /// An optimizer step taken.
    Step {
        step: usize,
        epoch: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        samples_per_s: f64,
        /// The f16 loss scale (null without one).
        loss_scale: Option<f64>,
    },
    /// An optimizer step skipped because f16 gradients overflowed.
    Skip {
        step: usize,
        epoch: usize,
        reason: &'static str,
        loss: f64,
        loss_scale_from: f64,
        loss_scale_to: f64,
    },
    /// An epoch ended, with its validation.
    Epoch {
        epoch: usize,
        step: usize,
        train_loss: f64,
        val_loss: Option<f64>,
        best_val_loss: Option<f64>,
        seconds: f64,
        peak_host_bytes: Option<usize>,
        peak_device_bytes: Option<usize>,
        val_rmse: Option<&'a BTreeMap<String, f64>>,
        persistence_rmse: Option<&'a BTreeMap<String, f64>>,
    },
    /// The run ended.
    Summary {
        steps: usize,
        seconds: f64,
        skipped_steps: usize,
        mixed_precision: MixedPrecision,
        samples_per_s: f64,
        memory: &'a MemoryBreakdown,
    },
}

/// `metrics.jsonl` of a run directory, opened for appending (a resumed run continues it).
pub struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    pub fn open(output_dir: &Path) -> anyhow::Result<MetricsLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output_dir.join("metrics.jsonl"))
            .with_context(|| format!("{}: cannot open metrics.jsonl", output_dir.display()))?;
        Ok(MetricsLog { file })
    }

    pub fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(record)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_tagged_by_kind() {
        let r = Record::Skip {
            step: 3,
            epoch: 1,
            reason: "non-finite gradients",
            loss: f64::NAN,
            loss_scale_from: 8.0,
            loss_scale_to: 4.0,
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v["kind"], "skip");
        assert_eq!(v["loss_scale_to"], 4.0);
        assert!(v["loss"].is_null());
    }
}
