//! The training loss: latitude-weighted mean squared error over valid grid nodes, on
//! normalised residuals, with per-variable weights.

use candle_core::{DType, Result, Tensor};

use super::Objective;

/// The scalar an [`Objective`] takes gradients of, on some grid nodes.
pub enum ObjectiveScalar {
    /// `sum(w * (pred - y)^2) / denominator`.
    Mse {
        y: Tensor,
        w: Tensor,
        denominator: f64,
    },
    /// `sum(pred * g)`.
    Dot { g: Tensor },
}

impl ObjectiveScalar {
    /// The objective on all nodes, or on a patch's `nodes` counting only those `owned`
    /// (`[1, nodes, 1]`, 1 or 0).
    pub fn new(objective: Objective, patch: Option<(&Tensor, &Tensor)>) -> Result<ObjectiveScalar> {
        let select = |t: &Tensor| match patch {
            Some((nodes, owned)) => t.index_select(nodes, 1)?.broadcast_mul(owned),
            None => Ok(t.clone()),
        };
        Ok(match objective {
            Objective::Loss(target) => ObjectiveScalar::Mse {
                y: match patch {
                    Some((nodes, _)) => target.y.index_select(nodes, 1)?,
                    None => target.y.clone(),
                },
                w: select(&target.w)?,
                denominator: target.denominator,
            },
            Objective::OutputGradient(g) => ObjectiveScalar::Dot { g: select(g)? },
        })
    }

    pub fn of(&self, pred: &Tensor) -> Result<Tensor> {
        match self {
            ObjectiveScalar::Mse { y, w, denominator } => weighted_mse(pred, y, w, *denominator),
            ObjectiveScalar::Dot { g } => (pred.to_dtype(g.dtype())? * g)?.sum_all(),
        }
    }
}

/// Per-entry weights `[batch, nodes, channels]`: `valid * lat_weight[node] * var_weight[c]`,
/// and the number of valid entries.
pub fn loss_weights(
    valid: &[bool],
    lat_weight: &[f32],
    var_weight: &[f32],
    shape: (usize, usize, usize),
    device: &candle_core::Device,
) -> Result<(Tensor, usize)> {
    let (b, n, c) = shape;
    let mut w = vec![0f32; b * n * c];
    let mut count = 0usize;
    for i in 0..b * n * c {
        if valid[i] {
            let node = (i / c) % n;
            w[i] = lat_weight[node] * var_weight[i % c];
            count += 1;
        }
    }
    Ok((Tensor::from_vec(w, (b, n, c), device)?, count))
}

/// `sum(w * (pred - target)^2) / denominator`, reduced in the target's dtype (the
/// master dtype: f32 under mixed precision) whatever the prediction's. The
/// denominator is the count of valid entries (at least 1), possibly divided by a loss
/// scale or multiplied by accumulation steps, so it may be below 1.
pub fn weighted_mse(
    pred: &Tensor,
    target: &Tensor,
    weights: &Tensor,
    denominator: f64,
) -> Result<Tensor> {
    let diff = (pred.to_dtype(target.dtype())? - target)?;
    let total = (diff.sqr()? * weights)?.sum_all()?;
    total / denominator
}

/// A loss's value on the host, whatever its dtype.
pub fn scalar(loss: &Tensor) -> Result<f64> {
    loss.to_dtype(DType::F64)?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masked_entries_do_not_count() {
        let dev = Device::Cpu;
        let valid = [true, false, true, true];
        let (w, n) = loss_weights(&valid, &[1.0, 3.0], &[1.0, 0.5], (1, 2, 2), &dev).unwrap();
        assert_eq!(n, 3);
        let pred = Tensor::new(&[[[1.0f32, 100.0], [2.0, 2.0]]], &dev).unwrap();
        let target = Tensor::zeros((1, 2, 2), DType::F32, &dev).unwrap();
        let loss = weighted_mse(&pred, &target, &w, n as f64)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // (1*1*1 + 3*1*4 + 3*0.5*4) / 3
        assert!((loss - (1.0 + 12.0 + 6.0) / 3.0).abs() < 1e-6);
    }
}
