//! Synthetic batches for benchmarks and reference exports: the numbers the model sees
//! do not change the work it does, so no data files are read.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::{inputs, LossTarget};
use crate::data::Grid;
use crate::graph::WeatherGraph;
use crate::predict::loss::loss_weights;

/// What the synthetic data of benchmarks and exports is, for their reports.
pub const DESCRIPTION: &str = "inputs uniform in [-1, 1) with validity flags 1, targets uniform in [-0.5, 0.5), all entries valid, ChaCha8 from the seed";

/// Inputs `[batch, grid_nodes, 2 * input_steps * channels]` uniform in [-1, 1) with
/// validity flags 1, and targets uniform in [-0.5, 0.5) weighted by latitude as in
/// training, every entry valid; a ChaCha8 stream from `seed`.
pub fn batch(
    graph: &WeatherGraph,
    grid: &Grid,
    (batch, input_steps, channels): (usize, usize, usize),
    seed: u64,
    device: &Device,
) -> anyhow::Result<(Tensor, LossTarget)> {
    let n = graph.grid_nodes.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = inputs::encode(
        (batch, n, input_steps * channels),
        &[],
        device,
        |_, _, _| Some(rng.random_range(-1.0f32..1.0)),
    )?;
    let y: Vec<f32> = (0..batch * n * channels)
        .map(|_| rng.random_range(-0.5f32..0.5))
        .collect();
    let lat_w = graph.grid_map.latitude_weights(grid);
    let shape = (batch, n, channels);
    let (w, entries) = loss_weights(
        &vec![true; batch * n * channels],
        &lat_w,
        &vec![1.0; channels],
        shape,
        device,
    )?;
    let y = Tensor::from_vec(y, shape, device)?;
    Ok((x, LossTarget::new(y, w, entries)))
}
