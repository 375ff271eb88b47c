//! Turning sample windows into normalised, masked batches the model consumes.
//!
//! Layout is node-major, `[batch, node, feature]`, over the canonical grid's cells,
//! because the model runs node-wise MLPs and gathers along the node axis.

use std::collections::VecDeque;
use std::sync::Arc;

use super::dataset::{Dataset, State, StepReader};
use super::samples::WindowSpec;
use super::stats::NormStats;

/// A batch of samples, normalised; masked cells hold 0 and a `false` flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `t0` of each sample (index of its last input step on the dataset's time axis).
    pub t0: Vec<usize>,
    pub nodes: usize,
    pub channels: usize,
    pub input_steps: usize,
    /// `[batch, node, input_steps * channels]`: `(x - mean) / std`, oldest step first.
    pub inputs: Vec<f32>,
    pub input_valid: Vec<bool>,
    /// Targets per sample: 1, or K for rollout training.
    pub rollout_steps: usize,
    /// `[rollout_step, batch, node, channels]`: residual targets from the current state,
    /// `(x[t0 + (k + 1) lead] - x[t0]) / diff_std` (step 0 first, so the one-step
    /// target is the first block).
    pub targets: Vec<f32>,
    /// Valid where both the target and the current state are.
    pub target_valid: Vec<bool>,
    /// Per rollout step, the windows' extra inputs `[batch, graph node, E]` (forcings,
    /// static fields), when the assembler computes them (see [`ExtrasFn`]); empty:
    /// computed where the batch is used.
    pub extras: Vec<Vec<f32>>,
}

/// The extra inputs of rollout step `k` of the samples ending at `t0s`, `[B, nodes,
/// E]`: computed where batches are assembled, on the prefetch thread when there is
/// one, so that the sun's position is not worked out on the training thread.
pub type ExtrasFn = Arc<dyn Fn(&[usize], usize) -> Vec<f32> + Send + Sync>;

impl Batch {
    pub fn len(&self) -> usize {
        self.t0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t0.is_empty()
    }

    /// Input features per node.
    pub fn input_features(&self) -> usize {
        self.input_steps * self.channels
    }
}

/// Reads the states a batch needs and assembles it. Keeps a few recent states so
/// that overlapping windows (samples one input spacing apart share `input_steps - 1`
/// states) are read once; never more than one batch's worth.
pub struct BatchAssembler {
    dataset: Arc<Dataset>,
    stats: Arc<NormStats>,
    window: WindowSpec,
    rollout_steps: usize,
    reader: StepReader,
    recent: VecDeque<(usize, Arc<State>)>,
    capacity: usize,
    extras: Option<ExtrasFn>,
}

impl BatchAssembler {
    /// Batches of `window` samples with `rollout_steps` targets each (1: one step).
    pub fn new(
        dataset: Arc<Dataset>,
        stats: Arc<NormStats>,
        (window, rollout_steps): (WindowSpec, usize),
        batch_size: usize,
    ) -> Self {
        let span = window.input_steps + window.lead_steps * rollout_steps;
        let capacity = (batch_size * (window.input_steps + rollout_steps)).clamp(span + 1, 256);
        BatchAssembler {
            dataset,
            stats,
            window,
            rollout_steps: rollout_steps.max(1),
            reader: StepReader::default(),
            recent: VecDeque::new(),
            capacity,
            extras: None,
        }
    }

    /// Computes each batch's extra inputs with `extras` as it assembles it.
    pub fn with_extras(self, extras: ExtrasFn) -> Self {
        BatchAssembler {
            extras: Some(extras),
            ..self
        }
    }

    fn state(&mut self, t: usize) -> anyhow::Result<Arc<State>> {
        if let Some((_, s)) = self.recent.iter().find(|(k, _)| *k == t) {
            return Ok(s.clone());
        }
        let s = Arc::new(self.reader.read(&self.dataset, t)?);
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back((t, s.clone()));
        Ok(s)
    }

    /// Assembles the samples ending at each of `t0s`.
    pub fn assemble(&mut self, t0s: &[usize]) -> anyhow::Result<Batch> {
        let (cells, nch) = (self.dataset.grid.len(), self.dataset.num_channels());
        let (steps, lead) = (self.window.input_steps, self.window.lead_steps);
        let feats = steps * nch;
        let (b, k_steps) = (t0s.len(), self.rollout_steps);
        let mut batch = Batch {
            t0: t0s.to_vec(),
            nodes: cells,
            channels: nch,
            input_steps: steps,
            inputs: vec![0.0; b * cells * feats],
            input_valid: vec![false; b * cells * feats],
            rollout_steps: k_steps,
            targets: vec![0.0; k_steps * b * cells * nch],
            target_valid: vec![false; k_steps * b * cells * nch],
            extras: Vec::new(),
        };
        let stats = self.stats.clone();
        for (i, &t0) in t0s.iter().enumerate() {
            for s in 0..steps {
                let state = self.state(self.window.input_time(t0, s))?;
                for c in 0..nch {
                    let (mean, std) = (stats.mean[c] as f32, stats.std[c] as f32);
                    for k in 0..cells {
                        let src = c * cells + k;
                        if state.valid[src] {
                            let dst = (i * cells + k) * feats + s * nch + c;
                            batch.inputs[dst] = (state.values[src] - mean) / std;
                            batch.input_valid[dst] = true;
                        }
                    }
                }
            }
            let now = self.state(t0)?;
            for step in 0..k_steps {
                let target = self.state(t0 + (step + 1) * lead)?;
                let block = (step * b + i) * cells;
                residual_targets(&mut batch, (&now, &target), block, &stats);
            }
        }
        // After the reads, whose errors name the samples.
        if let Some(extras) = &self.extras {
            batch.extras = (0..k_steps).map(|k| extras(t0s, k)).collect();
        }
        Ok(batch)
    }
}

/// Writes `(target - now) / diff_std` where both are valid into the batch's targets
/// from node row `block` on.
fn residual_targets(
    batch: &mut Batch,
    (now, target): (&State, &State),
    block: usize,
    stats: &NormStats,
) {
    let (cells, nch) = (batch.nodes, batch.channels);
    for c in 0..nch {
        let scale = stats.diff_std[c] as f32;
        for k in 0..cells {
            let src = c * cells + k;
            if target.valid[src] && now.valid[src] {
                let dst = (block + k) * nch + c;
                batch.targets[dst] = (target.values[src] - now.values[src]) / scale;
                batch.target_valid[dst] = true;
            }
        }
    }
}
