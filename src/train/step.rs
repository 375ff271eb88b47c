//! The training step every caller shares (the trainer, benchmark-graph-format and
//! export-reference): gradients from the predictor, clipping by global norm, AdamW.
//! The trainer accumulates micro-batches and unscales f16 gradients between the two
//! halves; the others take one batch per step.

use candle_core::Tensor;

use super::optimizer::{clip_by_global_norm, AdamW};
use crate::predict::{LossTarget, Objective, Predictor};

/// The optimizer half: clips `grads` to `grad_clip` (0: no clipping) and applies one
/// AdamW update at `lr`. Returns the global norm before clipping.
pub fn apply_gradients(
    optimizer: &mut AdamW,
    grads: &mut [Option<Tensor>],
    grad_clip: f64,
    lr: f64,
) -> anyhow::Result<f64> {
    let norm = clip_by_global_norm(grads, grad_clip)?;
    optimizer.step(grads, lr)?;
    Ok(norm)
}

/// One whole step on one batch: returns the loss and the gradients' global norm. The
/// gradients are clipped in place, so no second copy is alive during the update.
pub fn train_step(
    predictor: &dyn Predictor,
    optimizer: &mut AdamW,
    (x, target): (&Tensor, &LossTarget),
    checkpoint_every: Option<usize>,
    grad_clip: f64,
    lr: f64,
) -> anyhow::Result<(f64, f64)> {
    let mut step = predictor.gradients(x, Objective::Loss(target), checkpoint_every)?;
    let norm = apply_gradients(optimizer, &mut step.grads, grad_clip, lr)?;
    Ok((step.loss, norm))
}
