//! Layer normalisation over the last dimension, built from basic tensor ops.
//!
//! candle-nn's `LayerNorm` (and `ops::layer_norm`) dispatch to a fused kernel
//! that has no backward pass on contiguous inputs: gradients silently stop at
//! it. This version is a handful of differentiable ops, so autograd reaches the
//! layers below and the norm's own weight and bias.

use candle_core::{Result, Tensor, D};
use candle_nn::{Init, Module, VarBuilder};

/// Added to the variance before the square root, as in PyTorch's default.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
///
/// Parameters: `weight` (`[dim]`, initialised to 1) and `bias` (`[dim]`, 0),
/// the names and layout of PyTorch's `nn.LayerNorm`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(LayerNorm { weight, bias })
    }
}

impl Module for LayerNorm {
    /// Statistics and affine map in the parameters' dtype (f32 under mixed precision,
    /// where a bf16 variance loses too much); the result in the input's dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x_dtype = x.dtype();
        let x = x.to_dtype(self.weight.dtype())?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let std = (centred.sqr()?.mean_keepdim(D::Minus1)? + LAYER_NORM_EPS)?.sqrt()?;
        centred
            .broadcast_div(&std)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(x_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{check_gradients, random_tensor};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn normalises_like_the_definition() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let norm = LayerNorm::new(5, vb)?;
        let x = random_tensor(&[3, 5], DType::F64, 1)?;
        let y = norm.forward(&x)?.to_vec2::<f64>()?;
        for (row, out) in x.to_vec2::<f64>()?.iter().zip(&y) {
            let mean = row.iter().sum::<f64>() / 5.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
            for (v, o) in row.iter().zip(out) {
                let expected = (v - mean) / (var + LAYER_NORM_EPS).sqrt();
                assert!((o - expected).abs() < 1e-12, "{o} vs {expected}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let norm = LayerNorm::new(6, vb)?;
        // Move weight and bias off their 1/0 initialisation so every term matters.
        for var in varmap.all_vars() {
            var.set(&random_tensor(var.dims(), DType::F64, 7)?)?;
        }
        let x = random_tensor(&[2, 3, 6], DType::F64, 2)?;
        check_gradients(&varmap, &x, |x| norm.forward(x), &["weight", "bias"])
    }
}
