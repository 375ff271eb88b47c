//! The training step every caller shares (the trainer, benchmark-graph-format and
//! export-reference): gradients from the predictor, packed into one flat buffer, their
//! global norm (the step's one host sync), and one fused AdamW pass with the clip
//! folded in. The trainer accumulates micro-batches and folds the f16 unscaling into
//! the same multiplier; the others take one batch per step.

use candle_core::Tensor;

use super::optimizer::{AdamW, FlatGrads};
use crate::predict::{LossTarget, Objective, Predictor};

/// What the optimizer half did with a step's gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Applied {
    /// Updated; the global norm of the (unscaled) gradients before clipping.
    Updated { norm: f64 },
    /// Some gradient is NaN or infinite: nothing was changed.
    NotFinite,
}

/// The optimizer half: the gradients times `multiplier` (corrections such as the f16
/// loss scale's inverse; 1: none) are clipped to `grad_clip` (global L2 norm; 0: no
/// clipping) and applied by one AdamW update at `lr`. The clip scale is
/// `grad_clip / (norm + 1e-6)` when `norm > grad_clip`, as in PyTorch's
/// `clip_grad_norm_`.
pub fn apply_gradients(
    optimizer: &mut AdamW,
    grads: &FlatGrads,
    multiplier: f64,
    grad_clip: f64,
    lr: f64,
) -> anyhow::Result<Applied> {
    let norm = grads.norm()? * multiplier;
    if !norm.is_finite() {
        return Ok(Applied::NotFinite);
    }
    let clip = if grad_clip > 0.0 && norm > grad_clip {
        grad_clip / (norm + 1e-6)
    } else {
        1.0
    };
    optimizer.step(grads, lr, multiplier * clip)?;
    Ok(Applied::Updated { norm })
}

/// What one whole step gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    pub loss: f64,
    /// The gradients' global norm before clipping.
    pub norm: f64,
    /// Host seconds from the gradients to the update's return: packing, the norm, the
    /// fused AdamW. On a GPU the norm's sync also waits for the backward's queued
    /// kernels, so this is the optimizer's time on the CPU only.
    pub optimizer_seconds: f64,
}

/// One whole step on one batch.
pub fn train_step(
    predictor: &dyn Predictor,
    optimizer: &mut AdamW,
    (x, target): (&Tensor, &LossTarget),
    checkpoint_every: Option<usize>,
    grad_clip: f64,
    lr: f64,
) -> anyhow::Result<StepOutcome> {
    let step = predictor.gradients(x, Objective::Loss(target), checkpoint_every)?;
    let started = std::time::Instant::now();
    let grads = optimizer.pack(&step.grads)?;
    drop(step.grads);
    match apply_gradients(optimizer, &grads, 1.0, grad_clip, lr)? {
        Applied::Updated { norm } => Ok(StepOutcome {
            loss: step.loss,
            norm,
            optimizer_seconds: started.elapsed().as_secs_f64(),
        }),
        Applied::NotFinite => anyhow::bail!(
            "the gradients are not finite (loss {}): try a lower learning rate",
            step.loss
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::random_tensor;
    use crate::train::optimizer::{reference, AdamWParams};
    use candle_core::{DType, Var};

    /// The clip folded into the fused pass against clipping the tensors first, then
    /// the composed AdamW: f32 within 1e-6, with and without clipping.
    #[test]
    fn folded_clipping_matches_clipping_the_tensors() -> anyhow::Result<()> {
        for clip in [0.0, 1e-3, 1e6] {
            let var = Var::from_tensor(&random_tensor(&[50, 40], DType::F32, 1)?)?;
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWParams::default())?;
            let mut state = vec![reference::ParamState::new(var.as_tensor())?];
            for t in 1..=4 {
                let g = vec![Some(random_tensor(&[50, 40], DType::F32, 10 + t)?)];
                let flat = opt.pack(&g)?;
                let Applied::Updated { norm } = apply_gradients(&mut opt, &flat, 1.0, clip, 1e-2)?
                else {
                    panic!("finite gradients")
                };
                let mut clipped = g.clone();
                let before = reference::clip_by_global_norm(&mut clipped, clip)?;
                assert!((norm - before).abs() < 1e-9 * before);
                reference::step(
                    &mut state,
                    &clipped,
                    AdamWParams::default(),
                    t as usize,
                    1e-2,
                )?;
            }
            let diff = (var.as_tensor() - &state[0].weight)?.abs()?.max_all()?;
            assert!(diff.to_scalar::<f32>()? <= 1e-6, "clip {clip}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn non_finite_gradients_change_nothing() -> anyhow::Result<()> {
        let var = Var::from_tensor(&random_tensor(&[3], DType::F32, 1)?)?;
        let before = var.as_tensor().to_vec1::<f32>()?;
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWParams::default())?;
        let g = vec![Some(Tensor::new(&[1.0f32, f32::NAN, 0.0], var.device())?)];
        let flat = opt.pack(&g)?;
        let outcome = apply_gradients(&mut opt, &flat, 1.0, 1.0, 1e-2)?;
        assert_eq!(outcome, Applied::NotFinite);
        assert_eq!(var.as_tensor().to_vec1::<f32>()?, before);
        assert_eq!(opt.step_t, 0);
        Ok(())
    }
}
