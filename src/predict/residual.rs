//! Physical states in, physical states out: the model sees states normalised with the
//! training statistics (values, then validity flags, as in training) and predicts the
//! normalised residual, which this layer turns back into the next state.
//!
//! States live on the graph's grid nodes, node-major (`node * channels + c`), in
//! physical units.

use candle_core::{DType, Result, Tensor};

use super::{inputs, NodeExtras, Predictor};
use crate::data::time::Instant;
use crate::data::{NormStats, State};

/// One state on the graph's grid nodes, at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub values: Vec<f32>,
    pub valid: Vec<bool>,
    pub time: Instant,
}

impl NodeState {
    /// Picks the graph's grid nodes out of a full-grid dataset state (`[channel][cell]`)
    /// at `time`.
    pub fn from_state(
        (state, time): (&State, Instant),
        cells: &[u32],
        channels: usize,
        grid_cells: usize,
    ) -> NodeState {
        let mut values = Vec::with_capacity(cells.len() * channels);
        let mut valid = Vec::with_capacity(cells.len() * channels);
        for &cell in cells {
            for c in 0..channels {
                let k = c * grid_cells + cell as usize;
                values.push(state.values[k]);
                valid.push(state.valid[k]);
            }
        }
        NodeState {
            values,
            valid,
            time,
        }
    }
}

/// A predictor wrapped to take and return physical states.
pub struct NormalisedResidual<'a> {
    pub predictor: &'a dyn Predictor,
    pub stats: &'a NormStats,
    /// The forcings and static fields of the graph's grid nodes.
    pub extras: &'a NodeExtras,
}

impl NormalisedResidual<'_> {
    /// The model inputs `[B, nodes, 2F + E]` of a batch of histories (each
    /// `input_steps` states, oldest first), with the forcings of their times and of the
    /// next state's.
    pub fn inputs(&self, histories: &[Vec<NodeState>]) -> Result<Tensor> {
        let (stats, channels) = (self.stats, self.stats.channels.len());
        let steps = histories.first().map_or(0, Vec::len);
        let nodes = histories
            .first()
            .and_then(|h| h.first())
            .map_or(0, |s| s.values.len() / channels.max(1));
        let device = self.predictor.network().device();
        let times: Vec<Vec<Instant>> = histories
            .iter()
            .map(|h| {
                let mut t: Vec<Instant> = h.iter().map(|s| s.time).collect();
                t.push(self.next_time(h));
                t
            })
            .collect();
        inputs::encode(
            (histories.len(), nodes, steps * channels),
            &self.extras.for_windows(&times),
            device,
            |i, n, k| {
                let (state, c) = (&histories[i][k / channels], k % channels);
                let at = n * channels + c;
                state.valid[at]
                    .then(|| ((state.values[at] as f64 - stats.mean[c]) / stats.std[c]) as f32)
            },
        )
    }

    /// The next state of each history, valid on every graph node.
    pub fn next_states(&self, histories: &[Vec<NodeState>]) -> anyhow::Result<Vec<NodeState>> {
        let residual: Vec<f32> = self
            .predictor
            .forward(&self.inputs(histories)?)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let per_sample = residual.len() / histories.len().max(1);
        Ok(histories
            .iter()
            .zip(residual.chunks_exact(per_sample.max(1)))
            .map(|(history, r)| {
                let current = history.last().expect("non-empty history");
                add_residual(self.stats, current, r, self.next_time(history))
            })
            .collect())
    }

    /// The time of the state after `history`: one model step after its newest.
    fn next_time(&self, history: &[NodeState]) -> Instant {
        let last = history.last().expect("non-empty history").time;
        Instant {
            seconds: last.seconds + self.extras.model_step(),
        }
    }
}

/// `current + residual * diff_std` at `time`; a missing current value is, to the
/// model, the training mean.
fn add_residual(
    stats: &NormStats,
    current: &NodeState,
    residual: &[f32],
    time: Instant,
) -> NodeState {
    let channels = stats.channels.len();
    let values = residual
        .iter()
        .enumerate()
        .map(|(k, &r)| {
            let c = k % channels;
            let now = if current.valid[k] {
                current.values[k] as f64
            } else {
                stats.mean[c]
            };
            (now + r as f64 * stats.diff_std[c]) as f32
        })
        .collect();
    NodeState {
        values,
        valid: vec![true; residual.len()],
        time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_state_adds_the_scaled_residual_to_the_current_or_the_mean() {
        let stats = NormStats {
            channels: vec!["a".into(), "b".into()],
            mean: vec![10.0, 20.0],
            std: vec![1.0, 1.0],
            diff_std: vec![2.0, 0.5],
            lead_steps: 1,
            train_steps: vec![(0, 1)],
            dataset_fingerprint: String::new(),
        };
        // One node, two channels; channel b is missing now.
        let current = NodeState {
            values: vec![1.0, 0.0],
            valid: vec![true, false],
            time: Instant { seconds: 0 },
        };
        let next = add_residual(&stats, &current, &[3.0, -4.0], Instant { seconds: 60 });
        assert_eq!(next.time, Instant { seconds: 60 });
        assert_eq!(next.values, vec![1.0 + 3.0 * 2.0, 20.0 - 4.0 * 0.5]);
        assert_eq!(next.valid, vec![true, true]);
    }
}
