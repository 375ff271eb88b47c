//! The dynamic loss scaler of f16 mixed precision (as PyTorch's `GradScaler`).
//!
//! f16 flushes values below ~6e-8 to zero, which is where many gradients live; scaling
//! the loss by `scale` lifts them into range. After backward the gradients are divided
//! by `scale` (before clipping: the optimizer folds [`LossScaler::inverse`] into its
//! gradient multiplier). Non-finite gradients mean the scale was too large: the step is
//! skipped (nothing applied) and the scale halved; after `growth_interval` clean steps
//! in a row it is doubled again.

use serde::{Deserialize, Serialize};

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

    /// What the gradients of this step are multiplied by before clipping.
    pub fn inverse(&self) -> f64 {
        1.0 / self.scale
    }

    /// Records whether this step's gradients were finite (and so applied):
    /// [`ScaleOutcome::Skip`] halves the scale; enough clean steps in a row double it.
    pub fn update(&mut self, finite: bool) -> ScaleOutcome {
        if !finite {
            let from = self.scale;
            self.scale /= 2.0;
            self.clean_steps = 0;
            self.skipped_steps += 1;
            self.consecutive_skips += 1;
            return ScaleOutcome::Skip {
                from,
                to: self.scale,
            };
        }
        self.consecutive_skips = 0;
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        ScaleOutcome::Apply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_after_the_interval() {
        let mut s = LossScaler::new(1024.0, 2);
        assert_eq!(s.inverse(), 1.0 / 1024.0);
        assert_eq!(s.update(true), ScaleOutcome::Apply);
        assert_eq!(s.scale, 1024.0);
        s.update(true);
        assert_eq!((s.scale, s.clean_steps), (2048.0, 0));
    }

    #[test]
    fn skips_and_halves_on_overflow() {
        let mut s = LossScaler::new(65536.0, 2000);
        s.clean_steps = 7;
        for _ in 0..2 {
            let before = s.scale;
            assert_eq!(
                s.update(false),
                ScaleOutcome::Skip {
                    from: before,
                    to: before / 2.0
                }
            );
        }
        assert_eq!(
            (s.scale, s.clean_steps, s.skipped_steps, s.consecutive_skips),
            (16384.0, 0, 2, 2)
        );
        s.update(true);
        assert_eq!((s.skipped_steps, s.consecutive_skips), (2, 0));
    }
}
