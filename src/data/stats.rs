//! Normalisation statistics, computed on the training block only and saved so that
//! later runs and checkpoints reuse exactly the same numbers.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, StepReader};
use super::samples::Splits;
use crate::error::InputError;

/// Per-channel mean and std of the states, and std of the `lead_steps` differences
/// (the scale of residual targets). Masked cells are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    pub channels: Vec<String>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub diff_std: Vec<f64>,
    pub lead_steps: usize,
    /// Time steps (start, end) of the training block the numbers come from.
    pub train_steps: (usize, usize),
    pub dataset_fingerprint: String,
}

impl NormStats {
    /// One pass over the training block, holding `lead_steps + 1` states at a time.
    pub fn compute(ds: &Dataset, splits: &Splits) -> anyhow::Result<NormStats> {
        let lead = splits.window.lead_steps;
        let (cells, n) = (ds.grid.len(), ds.num_channels());
        let mut states = StateSums::new(n);
        let mut diffs = StateSums::new(n);
        let mut recent: std::collections::VecDeque<super::State> = Default::default();
        let mut reader = StepReader::default();
        let bar = crate::util::progress_bar(true, splits.train.len(), "statistics: time steps");
        for t in splits.train.clone() {
            bar.inc(1);
            let s = reader.read(ds, t)?;
            for c in 0..n {
                for k in c * cells..(c + 1) * cells {
                    if s.valid[k] {
                        states.add(c, s.values[k] as f64);
                    }
                }
            }
            if recent.len() == lead {
                let old = recent.pop_front().expect("lead states held");
                for c in 0..n {
                    for k in c * cells..(c + 1) * cells {
                        if s.valid[k] && old.valid[k] {
                            diffs.add(c, (s.values[k] - old.values[k]) as f64);
                        }
                    }
                }
            }
            recent.push_back(s);
        }
        let mut out = NormStats {
            channels: ds.channel_names(),
            mean: vec![0.0; n],
            std: vec![1.0; n],
            diff_std: vec![1.0; n],
            lead_steps: lead,
            train_steps: (splits.train.start, splits.train.end),
            dataset_fingerprint: ds.fingerprint.clone(),
        };
        for c in 0..n {
            let name = &out.channels[c];
            let Some((mean, std)) = states.mean_std(c) else {
                return Err(InputError(format!(
                    "variable '{name}' has no valid value in the training period (steps {}..{})",
                    splits.train.start, splits.train.end
                ))
                .into());
            };
            out.mean[c] = mean;
            out.std[c] = positive_or_one(std, name, "values");
            out.diff_std[c] = positive_or_one(
                diffs.mean_std(c).map_or(0.0, |(_, s)| s),
                name,
                "time differences",
            );
        }
        Ok(out)
    }

    /// Loads `path` when it exists and belongs to this dataset and window; else computes and saves.
    pub fn load_or_compute(
        path: &Path,
        ds: &Dataset,
        splits: &Splits,
    ) -> anyhow::Result<NormStats> {
        if path.exists() {
            let stats = NormStats::load(path)?;
            if stats.dataset_fingerprint == ds.fingerprint
                && stats.lead_steps == splits.window.lead_steps
                && stats.train_steps == (splits.train.start, splits.train.end)
            {
                tracing::info!("normalisation statistics loaded from {}", path.display());
                return Ok(stats);
            }
            tracing::info!(
                "{} belongs to other data or another split: recomputing",
                path.display()
            );
        }
        let stats = NormStats::compute(ds, splits)?;
        stats.save(path)?;
        Ok(stats)
    }

    pub fn load(path: &Path) -> anyhow::Result<NormStats> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let stats: NormStats = serde_json::from_str(&text).map_err(|e| {
            InputError::file(path, format!("not valid normalisation statistics: {e}"))
        })?;
        stats.check().map_err(|problem| {
            InputError::file(
                path,
                format!("not valid normalisation statistics: {problem}"),
            )
        })?;
        Ok(stats)
    }

    /// What makes statistics unusable (an edited or damaged file): one entry per
    /// channel in every list, finite means, positive finite scales.
    pub fn check(&self) -> Result<(), String> {
        let n = self.channels.len();
        if n == 0 || self.mean.len() != n || self.std.len() != n || self.diff_std.len() != n {
            return Err(format!(
                "{} channels but {} means, {} std and {} diff_std",
                n,
                self.mean.len(),
                self.std.len(),
                self.diff_std.len()
            ));
        }
        for (c, name) in self.channels.iter().enumerate() {
            let scales = [self.std[c], self.diff_std[c]];
            if !self.mean[c].is_finite() || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(format!(
                    "channel '{name}' has mean {}, std {}, diff_std {}: scales must be positive and finite",
                    self.mean[c], self.std[c], self.diff_std[c]
                ));
            }
        }
        Ok(())
    }

    /// Atomic write: temp file in the same directory, then rename.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::util::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

fn positive_or_one(std: f64, name: &str, what: &str) -> f64 {
    if std > 1e-12 && std.is_finite() {
        std
    } else {
        tracing::warn!(
            "variable '{name}': {what} are constant over the training period; scaling by 1"
        );
        1.0
    }
}

/// Running sums per channel (f64; the values are already f32).
struct StateSums {
    count: Vec<u64>,
    sum: Vec<f64>,
    sumsq: Vec<f64>,
}

impl StateSums {
    fn new(n: usize) -> Self {
        StateSums {
            count: vec![0; n],
            sum: vec![0.0; n],
            sumsq: vec![0.0; n],
        }
    }

    fn add(&mut self, c: usize, v: f64) {
        self.count[c] += 1;
        self.sum[c] += v;
        self.sumsq[c] += v * v;
    }

    fn mean_std(&self, c: usize) -> Option<(f64, f64)> {
        let n = self.count[c];
        (n > 0).then(|| {
            let mean = self.sum[c] / n as f64;
            (
                mean,
                (self.sumsq[c] / n as f64 - mean * mean).max(0.0).sqrt(),
            )
        })
    }
}
