//! Sample windows and the train/validation/test split by time.
//!
//! A sample is `input_steps` consecutive states ending at `t0` and the target state
//! `lead_steps` after `t0`. The time axis is cut into three contiguous blocks and a
//! window never crosses a cut, so no target of one split is an input of another.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::InputError;

/// How many past states a sample sees and how far ahead its target lies (in time steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub input_steps: usize,
    pub lead_steps: usize,
    /// Time steps between consecutive input states. New runs take `lead_steps`, so that
    /// a rollout's history (each prediction one lead after the last) is spaced as the
    /// training inputs were (GraphCast: inputs 6 h apart, lead 6 h); runs saved before
    /// this field existed had consecutive steps (1).
    #[serde(default = "consecutive")]
    pub input_spacing: usize,
}

fn consecutive() -> usize {
    1
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec {
            input_steps: 2,
            lead_steps: 1,
            input_spacing: 1,
        }
    }
}

/// The most input or lead steps a window may have: far beyond any model of the field
/// (GraphCast: 2 inputs, 1 lead), and small enough that no size computed from them
/// can overflow.
pub const MAX_WINDOW_STEPS: usize = 10_000;

impl WindowSpec {
    /// `input_steps` states `lead_steps` apart, then the target one lead ahead: the
    /// window of a new run.
    pub fn lead_spaced(input_steps: usize, lead_steps: usize) -> WindowSpec {
        WindowSpec {
            input_steps,
            lead_steps,
            input_spacing: lead_steps,
        }
    }

    /// Time steps one sample spans.
    pub fn span(&self) -> usize {
        self.history_span() + self.lead_steps
    }

    /// Time steps from the oldest input state to the newest, that one included.
    pub fn history_span(&self) -> usize {
        (self.input_steps - 1) * self.input_spacing + 1
    }

    /// The time index of input slot `s` (0: the oldest) of the window ending at `t0`.
    pub fn input_time(&self, t0: usize, s: usize) -> usize {
        t0 + s * self.input_spacing + 1 - self.history_span()
    }

    /// Whether a rollout of several steps feeds the model histories spaced as it was
    /// trained: each prediction lies one lead after the newest state.
    pub fn rollout_consistent(&self) -> bool {
        self.input_steps == 1 || self.input_spacing == self.lead_steps
    }

    /// Refuses a rollout of `steps` the window cannot run consistently.
    pub fn check_rollout(&self, steps: usize) -> Result<(), InputError> {
        if steps <= 1 || self.rollout_consistent() {
            return Ok(());
        }
        Err(InputError(format!(
            "a rollout of {steps} steps would feed this model predictions {} steps apart, but it was trained on inputs {} step(s) apart (a run saved before inputs were spaced by the lead): use one step, or retrain",
            self.lead_steps, self.input_spacing
        )))
    }

    /// Refuses windows no data can hold: 0 steps, or more than [`MAX_WINDOW_STEPS`].
    pub fn validate(&self) -> Result<(), InputError> {
        for (flag, n) in [
            ("--input-steps", self.input_steps),
            ("--lead-steps", self.lead_steps),
            ("input spacing", self.input_spacing),
        ] {
            if !(1..=MAX_WINDOW_STEPS).contains(&n) {
                return Err(InputError(format!(
                    "{flag} {n}: must be between 1 and {MAX_WINDOW_STEPS}"
                )));
            }
        }
        Ok(())
    }
}

/// Which block of the time axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// Fractions of the time axis for training and validation; the test block gets the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions {
    pub train: f64,
    pub validation: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions {
            train: 0.7,
            validation: 0.15,
        }
    }
}

/// The three time blocks (indices on the dataset's time axis) and the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    pub train: Range<usize>,
    pub validation: Range<usize>,
    pub test: Range<usize>,
    pub window: WindowSpec,
}

impl Splits {
    /// Cuts `n_times` steps. Refuses a window that does not fit the training block.
    pub fn new(
        n_times: usize,
        fractions: SplitFractions,
        window: WindowSpec,
    ) -> Result<Splits, InputError> {
        window.validate()?;
        let f = fractions;
        if !(f.train > 0.0 && f.validation >= 0.0 && f.train + f.validation <= 1.0) {
            return Err(InputError(format!(
                "split fractions train={} validation={} must be positive and sum to at most 1",
                f.train, f.validation
            )));
        }
        if n_times < window.span() {
            return Err(InputError(format!(
                "one sample needs {} time steps ({} input states {} apart + {} lead) but the data has {n_times}",
                window.span(),
                window.input_steps,
                window.input_spacing,
                window.lead_steps
            )));
        }
        let a = ((n_times as f64 * f.train).round() as usize).clamp(window.span(), n_times);
        let b = (a + (n_times as f64 * f.validation).round() as usize).min(n_times);
        let splits = Splits {
            train: 0..a,
            validation: a..b,
            test: b..n_times,
            window,
        };
        for (split, name) in [(Split::Validation, "validation"), (Split::Test, "test")] {
            if splits.samples(split).is_empty() && !splits.range(split).is_empty() {
                tracing::warn!(
                    "the {name} block ({} steps) is shorter than one sample window ({} steps): it has no samples",
                    splits.range(split).len(),
                    window.span()
                );
            }
        }
        Ok(splits)
    }

    pub fn range(&self, split: Split) -> Range<usize> {
        match split {
            Split::Train => self.train.clone(),
            Split::Validation => self.validation.clone(),
            Split::Test => self.test.clone(),
        }
    }

    /// The `t0` (last input step) of every sample inside `split`, in time order.
    pub fn samples(&self, split: Split) -> Vec<usize> {
        self.rollout_samples(split, 1)
    }

    /// The `t0` of every sample inside `split` whose `rollout_steps` targets (`lead`,
    /// `2 lead`, ... after `t0`) are inside it too, in time order.
    pub fn rollout_samples(&self, split: Split, rollout_steps: usize) -> Vec<usize> {
        let r = self.range(split);
        let first = r.start + self.window.history_span() - 1;
        let end = r
            .end
            .saturating_sub(self.window.lead_steps * rollout_steps.max(1));
        (first..end).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_never_cross_splits() {
        let w = WindowSpec {
            input_steps: 2,
            lead_steps: 4,
            input_spacing: 1,
        };
        let s = Splits::new(64, SplitFractions::default(), w).unwrap();
        for split in [Split::Train, Split::Validation, Split::Test] {
            let r = s.range(split);
            for t0 in s.samples(split) {
                assert!(t0 + 1 >= r.start + w.input_steps && t0 + w.lead_steps < r.end);
            }
        }
        assert_eq!(s.train, 0..45);
        assert_eq!(s.samples(Split::Train).len(), 45 - 5);
        // Three targets 4 steps apart: the last must lie inside the block too.
        let rollout = s.rollout_samples(Split::Train, 3);
        assert_eq!(rollout.len(), 45 - 1 - 12);
        assert!(rollout.iter().all(|&t0| t0 + 12 < 45));
        assert_eq!(s.test.end, 64);
    }

    #[test]
    fn refuses_windows_longer_than_the_data() {
        let w = WindowSpec {
            input_steps: 4,
            lead_steps: 8,
            input_spacing: 1,
        };
        let e = Splits::new(10, SplitFractions::default(), w).unwrap_err();
        assert!(e.0.contains("needs 12 time steps"), "{}", e.0);
    }

    #[test]
    fn lead_spaced_inputs_are_one_lead_apart_and_only_they_roll_out() {
        let w = WindowSpec::lead_spaced(3, 4);
        assert_eq!((w.history_span(), w.span()), (9, 13));
        assert_eq!(
            (0..3).map(|s| w.input_time(20, s)).collect::<Vec<_>>(),
            [12, 16, 20]
        );
        let s = Splits::new(64, SplitFractions::default(), w).unwrap();
        assert_eq!(s.samples(Split::Train).first(), Some(&8));
        assert!(w.check_rollout(4).is_ok());
        let old = WindowSpec {
            input_spacing: 1,
            ..w
        };
        assert_eq!(old.input_time(20, 0), 18);
        assert!(old.check_rollout(1).is_ok());
        let e = old.check_rollout(2).unwrap_err();
        assert!(e.0.contains("predictions 4 steps apart"), "{}", e.0);
        // An old file without the field reads as consecutive inputs.
        let parsed: WindowSpec =
            serde_json::from_str(r#"{"input_steps": 2, "lead_steps": 2}"#).unwrap();
        assert_eq!(parsed.input_spacing, 1);
    }
}
