//! What the model sees per grid node: `F` normalised values, then their `F` validity
//! flags (1 valid, 0 missing; a missing value enters as 0), then the extra inputs
//! (forcings and static fields, `predict::extras`). The one encoder of this layout,
//! used by training batches, rollouts and synthetic benchmark batches.

use candle_core::{DType, Device, Result, Tensor};

use super::LossTarget;
use crate::data::Batch;
use crate::predict::loss::loss_weights;

/// `[batch, nodes, 2 * features + E]` from `value(sample, node, feature)`: the
/// normalised value, or None where it is missing; then the `E` extra inputs of each
/// row from `extras` (`[batch, nodes, E]`, empty for none). Visited sample by sample,
/// node by node, feature by feature.
pub fn encode(
    (batch, nodes, features): (usize, usize, usize),
    extras: &[f32],
    device: &Device,
    mut value: impl FnMut(usize, usize, usize) -> Option<f32>,
) -> Result<Tensor> {
    let rows = batch * nodes;
    let extra = extras.len().checked_div(rows).unwrap_or(0);
    let width = 2 * features + extra;
    let mut x = vec![0f32; rows * width];
    for (row, out) in x.chunks_exact_mut(width.max(1)).enumerate().take(rows) {
        let (values, rest) = out.split_at_mut(features);
        let (flags, tail) = rest.split_at_mut(features);
        for k in 0..features {
            if let Some(v) = value(row / nodes, row % nodes, k) {
                values[k] = v;
                flags[k] = 1.0;
            }
        }
        tail.copy_from_slice(&extras[row * extra..(row + 1) * extra]);
    }
    Tensor::from_vec(x, (batch, nodes, width), device)
}

/// A data batch on the graph's grid nodes `cells`: inputs `[B, nodes, 2F + E]` (with
/// the windows' extra inputs `extras`), targets `[B, nodes, C]`, and the targets'
/// validity.
fn batch_tensors(
    batch: &Batch,
    cells: &[u32],
    extras: &[f32],
    device: &Device,
) -> Result<(Tensor, Tensor, Vec<bool>)> {
    let (b, n, f, c) = (
        batch.len(),
        cells.len(),
        batch.input_features(),
        batch.channels,
    );
    let x = encode((b, n, f), extras, device, |i, node, k| {
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

/// Inputs and loss target of a data batch (`extras`: its windows' extra inputs): the
/// latitude weights `lat_w` of the grid nodes and the variable weights `var_w` make
/// the loss weights; the denominator is the count of valid target entries. All three
/// tensors on `device` in `dtype`, the model's master dtype.
pub fn batch_target(
    batch: &Batch,
    (cells, extras): (&[u32], &[f32]),
    lat_w: &[f32],
    var_w: &[f32],
    (device, dtype): (&Device, DType),
) -> Result<(Tensor, LossTarget, Vec<bool>)> {
    let (x, y, valid) = batch_tensors(batch, cells, extras, device)?;
    let (w, entries) = loss_weights(&valid, lat_w, var_w, y.dims3()?, device)?;
    let target = LossTarget::new(y.to_dtype(dtype)?, w.to_dtype(dtype)?, entries);
    Ok((x.to_dtype(dtype)?, target, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_then_validity_flags_missing_values_as_zero_then_extras() {
        // Two samples, two nodes, two features; feature 1 of node 0 of sample 1 missing.
        // One extra input per row, numbered by row.
        let extras = [7.0, 8.0, 9.0, 10.0];
        let x = encode((2, 2, 2), &extras, &Device::Cpu, |i, n, k| {
            (!(i == 1 && n == 0 && k == 1)).then_some((100 * i + 10 * n + k) as f32 + 0.5)
        })
        .unwrap();
        assert_eq!(x.dims(), &[2, 2, 5]);
        let rows: Vec<Vec<Vec<f32>>> = x.to_vec3().unwrap();
        assert_eq!(rows[0][0], vec![0.5, 1.5, 1.0, 1.0, 7.0]);
        assert_eq!(rows[0][1], vec![10.5, 11.5, 1.0, 1.0, 8.0]);
        assert_eq!(rows[1][0], vec![100.5, 0.0, 1.0, 0.0, 9.0]);
        assert_eq!(rows[1][1], vec![110.5, 111.5, 1.0, 1.0, 10.0]);
    }
}
