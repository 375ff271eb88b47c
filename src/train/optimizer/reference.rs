//! The slow reference of the fused update: AdamW and clipping composed of candle ops,
//! one small chain per parameter tensor, operation for operation as candle-nn's `AdamW`
//! (the optimizer meshcast used before the arena). Tests hold the fused kernel to it,
//! and the optimizer benchmark times the two side by side.

use candle_core::{DType, Result, Tensor};

use super::AdamWParams;

/// One parameter's weights and moments, updated in place by [`step`].
pub struct ParamState {
    pub weight: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

impl ParamState {
    /// A parameter before its first step: a copy of `weight`, zero moments.
    pub fn new(weight: &Tensor) -> Result<ParamState> {
        Ok(ParamState {
            weight: weight.copy()?,
            m: weight.zeros_like()?,
            v: weight.zeros_like()?,
        })
    }
}

/// AdamW update number `t` (from 1) at `lr` with `grads[i]` for `states[i]` (None:
/// parameter untouched).
pub fn step(
    states: &mut [ParamState],
    grads: &[Option<Tensor>],
    p: AdamWParams,
    t: usize,
    lr: f64,
) -> Result<()> {
    let scale_m = 1f64 / (1f64 - p.beta1.powi(t as i32));
    let scale_v = 1f64 / (1f64 - p.beta2.powi(t as i32));
    for (s, g) in states.iter_mut().zip(grads) {
        let Some(g) = g else { continue };
        let next_m = ((&s.m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
        let next_v = ((&s.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
        let m_hat = (&next_m * scale_m)?;
        let v_hat = (&next_v * scale_v)?;
        let theta = (&s.weight * (1f64 - lr * p.weight_decay))?;
        let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
        s.weight = (theta - (adjusted * lr)?)?;
        s.m = next_m;
        s.v = next_v;
    }
    Ok(())
}

/// Scales the gradients down so that their global L2 norm (f64) is at most `max_norm`
/// (0: no clipping); returns the norm before clipping.
pub fn clip_by_global_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sum = 0.0;
    for g in grads.iter().flatten() {
        sum += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = sum.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}
