//! The dynamic loss scaler of f16 mixed precision (as PyTorch's `GradScaler`).
//!
//! f16 flushes values below ~6e-8 to zero, which is where many gradients live; scaling
//! the loss by `scale` lifts them into range. After backward the gradients are divided
//! by `scale` (before clipping). Non-finite gradients mean the scale was too large: the
//! step is skipped (nothing applied) and the scale halved; after `growth_interval`
//! clean steps in a row it is doubled again.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::optimizer::global_norm;

/// Consecutive skipped steps after which training stops: scaling cannot cure an
/// overflow of the activations themselves.
pub const MAX_CONSECUTIVE_SKIPS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_interval: usize,
    /// Clean steps since the last change of scale.
    pub clean_steps: usize,
    /// Steps skipped over the whole run, and in a row just now.
    pub skipped_steps: usize,
    pub consecutive_skips: usize,
}

/// What [`LossScaler::unscale`] decided for one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScaleOutcome {
    /// Gradients are finite and unscaled: apply them.
    Apply,
    /// Gradients overflowed: skip the step; the scale went from `from` to `to`.
    Skip { from: f64, to: f64 },
}

impl LossScaler {
    pub fn new(initial_scale: f64, growth_interval: usize) -> LossScaler {
        LossScaler {
            scale: initial_scale,
            growth_interval,
            clean_steps: 0,
            skipped_steps: 0,
            consecutive_skips: 0,
        }
    }

    /// Divides `grads` by the scale in place and updates the scale: [`ScaleOutcome::Skip`]
    /// (gradients left as they are, to be discarded) when any gradient is not finite.
    pub fn unscale(&mut self, grads: &mut [Option<Tensor>]) -> Result<ScaleOutcome> {
        if !global_norm(grads)?.is_finite() {
            let from = self.scale;
            self.scale /= 2.0;
            self.clean_steps = 0;
            self.skipped_steps += 1;
            self.consecutive_skips += 1;
            return Ok(ScaleOutcome::Skip {
                from,
                to: self.scale,
            });
        }
        let inverse = 1.0 / self.scale;
        for g in grads.iter_mut().flatten() {
            *g = (&*g * inverse)?;
        }
        self.consecutive_skips = 0;
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        Ok(ScaleOutcome::Apply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grads(values: &[f32]) -> Vec<Option<Tensor>> {
        vec![Some(Tensor::new(values, &Device::Cpu).unwrap()), None]
    }

    #[test]
    fn unscales_finite_gradients_and_grows_after_the_interval() -> Result<()> {
        let mut s = LossScaler::new(1024.0, 2);
        let mut g = grads(&[1024.0, -2048.0]);
        assert_eq!(s.unscale(&mut g)?, ScaleOutcome::Apply);
        assert_eq!(g[0].as_ref().unwrap().to_vec1::<f32>()?, vec![1.0, -2.0]);
        assert_eq!(s.scale, 1024.0);
        s.unscale(&mut grads(&[1.0]))?;
        assert_eq!((s.scale, s.clean_steps), (2048.0, 0));
        Ok(())
    }

    #[test]
    fn skips_and_halves_on_overflow() -> Result<()> {
        let mut s = LossScaler::new(65536.0, 2000);
        s.clean_steps = 7;
        for bad in [f32::INFINITY, f32::NAN] {
            let mut g = grads(&[1.0, bad]);
            let before = s.scale;
            assert_eq!(
                s.unscale(&mut g)?,
                ScaleOutcome::Skip {
                    from: before,
                    to: before / 2.0
                }
            );
            // Left untouched: nothing was unscaled.
            assert_eq!(g[0].as_ref().unwrap().to_vec1::<f32>()?[0], 1.0);
        }
        assert_eq!(
            (s.scale, s.clean_steps, s.skipped_steps, s.consecutive_skips),
            (16384.0, 0, 2, 2)
        );
        s.unscale(&mut grads(&[1.0]))?;
        assert_eq!((s.skipped_steps, s.consecutive_skips), (2, 0));
        Ok(())
    }
}
