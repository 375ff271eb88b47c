//! What the model sees per grid node: `F` normalised values, then their `F` validity
//! flags (1 valid, 0 missing; a missing value enters as 0). The one encoder of this
//! layout, used by training batches, rollouts and synthetic benchmark batches.

use candle_core::{Device, Result, Tensor};

use super::LossTarget;
use crate::data::Batch;
use crate::predict::loss::loss_weights;

/// `[batch, nodes, 2 * features]` from `value(sample, node, feature)`: the normalised
/// value, or None where it is missing. Visited sample by sample, node by node, feature
/// by feature.
pub fn encode(
    (batch, nodes, features): (usize, usize, usize),
    device: &Device,
    mut value: impl FnMut(usize, usize, usize) -> Option<f32>,
) -> Result<Tensor> {
    let mut x = vec![0f32; batch * nodes * 2 * features];
    for (row, out) in x.chunks_exact_mut(2 * features).enumerate() {
        let (values, flags) = out.split_at_mut(features);
        for k in 0..features {
            if let Some(v) = value(row / nodes, row % nodes, k) {
                values[k] = v;
                flags[k] = 1.0;
            }
        }
    }
    Tensor::from_vec(x, (batch, nodes, 2 * features), device)
}

/// A data batch on the graph's grid nodes `cells`: inputs `[B, nodes, 2F]`, targets
/// `[B, nodes, C]`, and the targets' validity.
fn batch_tensors(
    batch: &Batch,
    cells: &[u32],
    device: &Device,
) -> Result<(Tensor, Tensor, Vec<bool>)> {
    let (b, n, f, c) = (
        batch.len(),
        cells.len(),
        batch.input_features(),
        batch.channels,
    );
    let x = encode((b, n, f), device, |i, node, k| {
        let at = (i * batch.nodes + cells[node] as usize) * f + k;
        batch.input_valid[at].then_some(batch.inputs[at])
    })?;
    let mut y = Vec::with_capacity(b * n * c);
    let mut valid = Vec::with_capacity(b * n * c);
    for i in 0..b {
        for &cell in cells {
            let tb = (i * batch.nodes + cell as usize) * c;
            y.extend_from_slice(&batch.targets[tb..tb + c]);
            valid.extend_from_slice(&batch.target_valid[tb..tb + c]);
        }
    }
    Ok((x, Tensor::from_vec(y, (b, n, c), device)?, valid))
}

/// Inputs and loss target of a data batch: the latitude weights `lat_w` of the grid
/// nodes and the variable weights `var_w` make the loss weights; the denominator is
/// the count of valid target entries.
pub fn batch_target(
    batch: &Batch,
    cells: &[u32],
    lat_w: &[f32],
    var_w: &[f32],
    device: &Device,
) -> Result<(Tensor, LossTarget, Vec<bool>)> {
    let (x, y, valid) = batch_tensors(batch, cells, device)?;
    let (w, denominator) = loss_weights(&valid, lat_w, var_w, y.dims3()?, device)?;
    Ok((x, LossTarget { y, w, denominator }, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_then_validity_flags_missing_values_as_zero() {
        // Two samples, two nodes, two features; feature 1 of node 0 of sample 1 missing.
        let x = encode((2, 2, 2), &Device::Cpu, |i, n, k| {
            (!(i == 1 && n == 0 && k == 1)).then_some((100 * i + 10 * n + k) as f32 + 0.5)
        })
        .unwrap();
        assert_eq!(x.dims(), &[2, 2, 4]);
        let rows: Vec<Vec<Vec<f32>>> = x.to_vec3().unwrap();
        assert_eq!(rows[0][0], vec![0.5, 1.5, 1.0, 1.0]);
        assert_eq!(rows[0][1], vec![10.5, 11.5, 1.0, 1.0]);
        assert_eq!(rows[1][0], vec![100.5, 0.0, 1.0, 0.0]);
        assert_eq!(rows[1][1], vec![110.5, 111.5, 1.0, 1.0]);
    }
}
