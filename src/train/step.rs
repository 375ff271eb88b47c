//! The training step every caller shares (the trainer, benchmark-graph-format and
//! export-reference): gradients from the predictor, clipping by global norm, AdamW.
//! The trainer accumulates micro-batches and unscales f16 gradients between the two
//! halves; the others take one batch per step.

use candle_core::Tensor;

use super::optimizer::{clip_by_global_norm, AdamW};
use crate::predict::{LossTarget, Predictor, StepGradients};

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

/// One whole step on one batch. Returns the loss and the gradients before clipping,
/// and the global norm they had.
pub fn train_step(
    predictor: &dyn Predictor,
    optimizer: &mut AdamW,
    (x, target): (&Tensor, &LossTarget),
    checkpoint_every: Option<usize>,
    grad_clip: f64,
    lr: f64,
) -> anyhow::Result<(StepGradients, f64)> {
    let step = predictor.gradients(x, target, checkpoint_every)?;
    let mut grads = step.grads.clone();
    let norm = apply_gradients(optimizer, &mut grads, grad_clip, lr)?;
    Ok((step, norm))
}
