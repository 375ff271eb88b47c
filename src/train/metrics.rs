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
        /// Variables with no valid target in the validation samples (no RMSE).
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        val_unscored: &'a [String],
        /// Autoregressive steps the epoch trained on (1: one step).
        rollout_steps: usize,
    },
    /// The run ended.
    Summary {
        steps: usize,
        seconds: f64,
        skipped_steps: usize,
        mixed_precision: MixedPrecision,
        samples_per_s: f64,
        memory: &'a MemoryBreakdown,
        /// Processes that trained together (data or patch parallelism), and the
        /// seconds rank 0 spent summing gradients over them (waiting included).
        ranks: usize,
        exchange_seconds: f64,
    },
}

/// What a resumed run keeps of `metrics.jsonl`: the rows written up to its checkpoint.
#[derive(Debug, Clone, Copy)]
pub enum MetricsCut {
    /// The file's length when the checkpoint was saved.
    Bytes(u64),
    /// Rows of steps up to this one (checkpoints written before they recorded a length).
    ThroughStep(usize),
}

/// `metrics.jsonl` of a run directory, opened for appending (a resumed run continues it).
pub struct MetricsLog {
    /// None on the ranks of a data-parallel run other than 0: only rank 0 writes.
    file: Option<std::fs::File>,
    bytes: u64,
}

impl MetricsLog {
    /// Opens the log; a resumed run first cuts it back to its checkpoint, and a last
    /// line a killed process left half-written is dropped.
    pub fn open(output_dir: &Path, cut: Option<MetricsCut>) -> anyhow::Result<MetricsLog> {
        let path = output_dir.join("metrics.jsonl");
        if path.exists() {
            let text =
                std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            let kept = kept_rows(&text, cut);
            if kept.len() != text.len() {
                crate::util::write_atomic(&path, kept)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let bytes = file.metadata()?.len();
        Ok(MetricsLog {
            file: Some(file),
            bytes,
        })
    }

    /// A log that writes nothing (a rank other than 0).
    pub fn discarding() -> MetricsLog {
        MetricsLog {
            file: None,
            bytes: 0,
        }
    }

    /// One row, with the wall-clock time it was written.
    pub fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut row = serde_json::to_value(record)?;
        if let Some(fields) = row.as_object_mut() {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            fields.insert("time".into(), now.into());
        }
        let line = format!("{}\n", serde_json::to_string(&row)?);
        file.write_all(line.as_bytes())?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// The file's length: what a checkpoint records as its [`MetricsCut::Bytes`].
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The prefix of `text` a resumed run keeps: complete lines only, up to the cut.
fn kept_rows(text: &[u8], cut: Option<MetricsCut>) -> &[u8] {
    let complete = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&text[..0], |end| &text[..=end]);
    match cut {
        None => complete,
        Some(MetricsCut::Bytes(n)) => &complete[..(n as usize).min(complete.len())],
        Some(MetricsCut::ThroughStep(last)) => {
            let mut end = 0;
            for line in complete.split_inclusive(|&b| b == b'\n') {
                let step = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|row| row["step"].as_u64());
                if step.is_some_and(|s| s as usize > last) {
                    break;
                }
                end += line.len();
            }
            &complete[..end]
        }
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

    #[test]
    fn a_resumed_log_keeps_complete_rows_up_to_its_checkpoint() {
        let text = b"{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"ste";
        let row = b"{\"step\":1}\n".len();
        assert_eq!(kept_rows(text, None), &text[..3 * row]);
        assert_eq!(
            kept_rows(text, Some(MetricsCut::Bytes(2 * row as u64))),
            &text[..2 * row]
        );
        assert_eq!(
            kept_rows(text, Some(MetricsCut::Bytes(999))),
            &text[..3 * row]
        );
        assert_eq!(
            kept_rows(text, Some(MetricsCut::ThroughStep(2))),
            &text[..2 * row]
        );
    }

    #[test]
    fn rows_carry_the_wall_clock_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), None).unwrap();
        let r = Record::Skip {
            step: 3,
            epoch: 1,
            reason: "x",
            loss: 1.0,
            loss_scale_from: 8.0,
            loss_scale_to: 4.0,
        };
        log.write(&r).unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(log.bytes(), text.len() as u64);
        let row: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert!(row["time"].as_str().unwrap().ends_with('Z'), "{row}");
    }
}
