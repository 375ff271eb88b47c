//! Normalisation statistics, computed on the training block only and saved so that
//! later runs and checkpoints reuse exactly the same numbers.

use std::ops::Range;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, StepReader};
use super::samples::{Split, Splits};
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
    /// Time-step ranges (start, end) of the training block the numbers come from
    /// (files written before training periods hold one pair, read as one range).
    #[serde(
        serialize_with = "write_ranges",
        deserialize_with = "one_or_more_ranges"
    )]
    pub train_steps: Vec<(usize, usize)>,
    pub dataset_fingerprint: String,
}

impl NormStats {
    /// One pass over the training block, holding `lead_steps + 1` states at a time.
    pub fn compute(ds: &Dataset, splits: &Splits) -> anyhow::Result<NormStats> {
        let all = 0..splits.steps(Split::Train).count();
        let sums = StatsSums::over(ds, splits, all)?;
        NormStats::from_sums(ds, splits, &sums)
    }

    /// The statistics of the sums over the whole training block (of one process, or
    /// added over the processes that each summed their part).
    pub fn from_sums(ds: &Dataset, splits: &Splits, sums: &StatsSums) -> anyhow::Result<NormStats> {
        let n = ds.num_channels();
        let mut out = NormStats {
            channels: ds.channel_names(),
            mean: vec![0.0; n],
            std: vec![1.0; n],
            diff_std: vec![1.0; n],
            lead_steps: splits.window.lead_steps,
            train_steps: train_ranges(splits),
            dataset_fingerprint: ds.fingerprint.clone(),
        };
        for c in 0..n {
            let name = &out.channels[c];
            let Some((mean, std)) = sums.states.mean_std(c) else {
                return Err(InputError(format!(
                    "variable '{name}' has no valid value in the training block (steps {})",
                    out.train_steps
                        .iter()
                        .map(|(a, b)| format!("{a}..{b}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            };
            out.mean[c] = mean;
            out.std[c] = positive_or_one(std, name, "values");
            out.diff_std[c] = positive_or_one(
                sums.diffs.mean_std(c).map_or(0.0, |(_, s)| s),
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
                && stats.train_steps == train_ranges(splits)
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

/// What the statistics are made of: per channel, the count, sum and sum of squares of
/// the valid values, and of the valid `lead_steps` differences. Sums over parts of the
/// training block add up to the block's.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSums {
    states: StateSums,
    diffs: StateSums,
}

impl StatsSums {
    /// The sums of the training steps at positions `share` of all of them, counted
    /// across the training ranges in order (what one rank of several sums).
    pub fn over(ds: &Dataset, splits: &Splits, share: Range<usize>) -> anyhow::Result<StatsSums> {
        let n = ds.num_channels();
        let mut sums = StatsSums {
            states: StateSums::new(n),
            diffs: StateSums::new(n),
        };
        let mut offset = 0;
        for block in &splits.train {
            let (lo, hi) = (share.start.max(offset), share.end.min(offset + block.len()));
            if lo < hi {
                let steps = block.start + lo - offset..block.start + hi - offset;
                sums.add_block(ds, splits.window.lead_steps, block, steps)?;
            }
            offset += block.len();
        }
        Ok(sums)
    }

    /// Adds the steps `steps` of the training range `block`: each step's values, and
    /// its difference from the step `lead` before where that step is in `block` too.
    fn add_block(
        &mut self,
        ds: &Dataset,
        lead: usize,
        block: &Range<usize>,
        steps: Range<usize>,
    ) -> anyhow::Result<()> {
        let cells = ds.grid.len();
        let first = steps.start.saturating_sub(lead).max(block.start);
        let mut recent: std::collections::VecDeque<super::State> = Default::default();
        let mut reader = StepReader::default();
        let bar = crate::util::progress_bar(true, steps.end - first, "statistics: time steps");
        for t in first..steps.end {
            bar.inc(1);
            let s = reader.read(ds, t)?;
            if t >= steps.start {
                self.states.add_valid(&s, cells);
            }
            if recent.len() == lead {
                let old = recent.pop_front().expect("lead states held");
                if t >= steps.start {
                    self.diffs.add_differences((&s, &old), cells);
                }
            }
            recent.push_back(s);
        }
        Ok(())
    }

    /// The sums as one flat buffer (for adding over processes), and back.
    pub fn to_vec(&self) -> Vec<f64> {
        [&self.states, &self.diffs]
            .iter()
            .flat_map(|s| {
                s.count
                    .iter()
                    .map(|&k| k as f64)
                    .chain(s.sum.clone())
                    .chain(s.sumsq.clone())
            })
            .collect()
    }

    pub fn from_vec(flat: &[f64]) -> StatsSums {
        let n = flat.len() / 6;
        let part = |k: usize| StateSums {
            count: flat[k * 3 * n..(k * 3 + 1) * n]
                .iter()
                .map(|&v| v as u64)
                .collect(),
            sum: flat[(k * 3 + 1) * n..(k * 3 + 2) * n].to_vec(),
            sumsq: flat[(k * 3 + 2) * n..(k * 3 + 3) * n].to_vec(),
        };
        StatsSums {
            states: part(0),
            diffs: part(1),
        }
    }
}

/// Running sums per channel (f64; the values are already f32).
#[derive(Debug, Clone, PartialEq)]
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

    /// Every valid value of state `s` (`cells` per channel).
    fn add_valid(&mut self, s: &super::State, cells: usize) {
        for c in 0..self.count.len() {
            for k in c * cells..(c + 1) * cells {
                if s.valid[k] {
                    self.add(c, s.values[k] as f64);
                }
            }
        }
    }

    /// Every difference `now - before` where both are valid.
    fn add_differences(&mut self, (now, before): (&super::State, &super::State), cells: usize) {
        for c in 0..self.count.len() {
            for k in c * cells..(c + 1) * cells {
                if now.valid[k] && before.valid[k] {
                    self.add(c, (now.values[k] - before.values[k]) as f64);
                }
            }
        }
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

/// The training ranges as (start, end) pairs: what the statistics record.
fn train_ranges(splits: &Splits) -> Vec<(usize, usize)> {
    splits.train.iter().map(|r| (r.start, r.end)).collect()
}

/// One range as `[start, end]` (what files written before training periods hold, so
/// that older meshcast versions still read it), several as `[[start, end], ...]`.
fn write_ranges<S: serde::Serializer>(ranges: &[(usize, usize)], s: S) -> Result<S::Ok, S::Error> {
    match ranges {
        [one] => one.serialize(s),
        _ => ranges.serialize(s),
    }
}

/// Reads `[start, end]` (one range, as files written before training periods have
/// it) or `[[start, end], ...]`.
fn one_or_more_ranges<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(usize, usize)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ranges {
        One((usize, usize)),
        Many(Vec<(usize, usize)>),
    }
    Ok(match Ranges::deserialize(d)? {
        Ranges::One(r) => vec![r],
        Ranges::Many(v) => v,
    })
}
