//! Autoregressive rollout: the model's next state becomes an input of the step after.
//!
//! States live on the graph's grid nodes, node-major (`node * channels + c`), in
//! physical units. The model sees them normalised with the training statistics and
//! with validity flags, exactly as in training; its output is a normalised residual.

use candle_core::Tensor;

use crate::data::{NormStats, State};
use crate::train::session::Session;

/// One state on the graph's grid nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub values: Vec<f32>,
    pub valid: Vec<bool>,
}

impl NodeState {
    /// Picks the graph's grid nodes out of a full-grid dataset state (`[channel][cell]`).
    pub fn from_state(
        state: &State,
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
        NodeState { values, valid }
    }
}

/// Runs the model one step for a batch of histories (each `input_steps` states, oldest
/// first) and returns the next states, valid on every graph node.
pub fn step(
    session: &Session,
    stats: &NormStats,
    histories: &[Vec<NodeState>],
) -> anyhow::Result<Vec<NodeState>> {
    let channels = stats.channels.len();
    let nodes = session.graph.grid_map.cells().len();
    let steps = histories.first().map_or(0, Vec::len);
    let feats = steps * channels;
    let b = histories.len();
    let mut x = vec![0f32; b * nodes * 2 * feats];
    for (i, history) in histories.iter().enumerate() {
        for (s, state) in history.iter().enumerate() {
            for n in 0..nodes {
                for c in 0..channels {
                    let k = n * channels + c;
                    if state.valid[k] {
                        let base = (i * nodes + n) * 2 * feats;
                        x[base + s * channels + c] =
                            ((state.values[k] as f64 - stats.mean[c]) / stats.std[c]) as f32;
                        x[base + feats + s * channels + c] = 1.0;
                    }
                }
            }
        }
    }
    let x = Tensor::from_vec(x, (b, nodes, 2 * feats), &session.device)?;
    let residual: Vec<f32> = session
        .model
        .forward(&session.graph_tensors, &x)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    Ok(histories
        .iter()
        .enumerate()
        .map(|(i, history)| {
            let current = history.last().expect("non-empty history");
            let mut values = Vec::with_capacity(nodes * channels);
            for n in 0..nodes {
                for c in 0..channels {
                    let k = n * channels + c;
                    // A missing current value is, to the model, the training mean.
                    let now = if current.valid[k] {
                        current.values[k] as f64
                    } else {
                        stats.mean[c]
                    };
                    values.push(
                        (now + residual[(i * nodes + n) * channels + c] as f64 * stats.diff_std[c])
                            as f32,
                    );
                }
            }
            NodeState {
                values,
                valid: vec![true; nodes * channels],
            }
        })
        .collect())
}
