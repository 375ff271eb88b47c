//! Sample windows and the train/validation/test split by time.
//!
//! A sample is `input_steps` states ending at `t0` and the target state `lead_steps`
//! after `t0`. The time axis is cut into three splits, each one or more ranges of
//! time steps (by fractions: one contiguous block each; by date periods: any number),
//! and a window never crosses the end of a range, so no target of one split is an
//! input of another.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::time::TimeAxis;
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

    /// The `t0` of every window inside the time steps `range` whose `rollout_steps`
    /// targets (`lead`, `2 lead`, ... after `t0`) lie inside it too.
    pub fn rollout_t0s(&self, range: &Range<usize>, rollout_steps: usize) -> Range<usize> {
        let span = self.lead_steps * rollout_steps.max(1);
        range.start + self.history_span() - 1..range.end.saturating_sub(span)
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

/// How the time axis is cut: by fractions (training from the start, then validation,
/// the test block the rest) or, when `periods` is set, by dates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    #[serde(default = "default_train_fraction")]
    pub train: f64,
    #[serde(default = "default_validation_fraction")]
    pub validation: f64,
    /// Date periods per split; the fractions are then unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periods: Option<SplitPeriods>,
}

fn default_train_fraction() -> f64 {
    0.7
}

fn default_validation_fraction() -> f64 {
    0.15
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            train: default_train_fraction(),
            validation: default_validation_fraction(),
            periods: None,
        }
    }
}

impl SplitSpec {
    /// Refuses periods without a training period (before any data is read).
    pub fn validate(&self) -> Result<(), InputError> {
        match &self.periods {
            Some(p) if p.train.is_empty() => Err(InputError(
                "split periods need at least one training period (--train-period or [split.periods] train)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The fractions are unused when there are periods: reset, so that one split
    /// compares equal however it was given (flags or a config).
    pub fn normalised(self) -> SplitSpec {
        match self.periods {
            Some(_) => SplitSpec {
                periods: self.periods,
                ..SplitSpec::default()
            },
            None => self,
        }
    }

    /// The periods that hold a time step of `time`, the others left out: a run's split
    /// on other data (`eval --data`, `forecast --data`), which may lie outside its
    /// training period.
    pub fn within(mut self, time: &TimeAxis) -> SplitSpec {
        if let Some(p) = &mut self.periods {
            for list in [&mut p.train, &mut p.validation, &mut p.test] {
                list.retain(|text| time.steps_within(text).is_ok());
            }
        }
        self
    }
}

/// Inclusive periods `START..END` per split, as anemoi's dataloader dates and
/// WeatherBench2's years name them. A split may hold several periods (a test block
/// held out of the middle, training on both sides: blocked cross-validation); a
/// split without periods is empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPeriods {
    pub train: Vec<String>,
    #[serde(default)]
    pub validation: Vec<String>,
    #[serde(default)]
    pub test: Vec<String>,
}

/// The three blocks (each a list of time-index ranges on the dataset's time axis,
/// in time order) and the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    pub train: Vec<Range<usize>>,
    pub validation: Vec<Range<usize>>,
    pub test: Vec<Range<usize>>,
    pub window: WindowSpec,
}

impl Splits {
    /// Cuts `time` as `spec` says. Refuses a window longer than the data, and periods
    /// that cannot be read, hold no time step or overlap.
    pub fn new(
        time: &TimeAxis,
        spec: &SplitSpec,
        window: WindowSpec,
    ) -> Result<Splits, InputError> {
        window.validate()?;
        let n_times = time.len();
        if n_times < window.span() {
            return Err(InputError(format!(
                "one sample needs {} time steps ({} input states {} apart + {} lead) but the data has {n_times}",
                window.span(),
                window.input_steps,
                window.input_spacing,
                window.lead_steps
            )));
        }
        let splits = match &spec.periods {
            None => Splits::by_fractions(n_times, spec, window)?,
            Some(periods) => Splits::by_periods(time, periods, window)?,
        };
        splits.warn_short_blocks();
        Ok(splits)
    }

    fn by_fractions(
        n_times: usize,
        f: &SplitSpec,
        window: WindowSpec,
    ) -> Result<Splits, InputError> {
        if !(f.train > 0.0 && f.validation >= 0.0 && f.train + f.validation <= 1.0) {
            return Err(InputError(format!(
                "split fractions train={} validation={} must be positive and sum to at most 1",
                f.train, f.validation
            )));
        }
        let a = ((n_times as f64 * f.train).round() as usize).clamp(window.span(), n_times);
        let b = (a + (n_times as f64 * f.validation).round() as usize).min(n_times);
        let nonempty = |r: Range<usize>| if r.is_empty() { vec![] } else { vec![r] };
        Ok(Splits {
            train: nonempty(0..a),
            validation: nonempty(a..b),
            test: nonempty(b..n_times),
            window,
        })
    }

    fn by_periods(
        time: &TimeAxis,
        p: &SplitPeriods,
        window: WindowSpec,
    ) -> Result<Splits, InputError> {
        let mut named = Vec::new();
        let mut resolve = |name: &'static str, texts: &[String]| {
            let mut ranges = texts
                .iter()
                .map(|text| {
                    let r = time
                        .steps_within(text)
                        .map_err(|e| InputError(format!("{name} period '{text}': {e}")))?;
                    named.push((r.clone(), name, text.clone()));
                    Ok(r)
                })
                .collect::<Result<Vec<_>, InputError>>()?;
            ranges.sort_by_key(|r| r.start);
            Ok::<_, InputError>(merge_touching(ranges))
        };
        let splits = Splits {
            train: resolve("train", &p.train)?,
            validation: resolve("validation", &p.validation)?,
            test: resolve("test", &p.test)?,
            window,
        };
        named.sort_by_key(|(r, _, _)| r.start);
        for pair in named.windows(2) {
            let ((a, an, at), (b, bn, bt)) = (&pair[0], &pair[1]);
            if b.start < a.end {
                return Err(InputError(format!(
                    "{an} period '{at}' and {bn} period '{bt}' overlap (both hold {})",
                    time.datetime(b.start)
                )));
            }
        }
        Ok(splits)
    }

    fn warn_short_blocks(&self) {
        for (split, name) in [
            (Split::Train, "training"),
            (Split::Validation, "validation"),
            (Split::Test, "test"),
        ] {
            for r in self.ranges(split) {
                if r.len() < self.window.span() {
                    tracing::warn!(
                        "a {name} block ({} steps) is shorter than one sample window ({} steps): it has no samples",
                        r.len(),
                        self.window.span()
                    );
                }
            }
        }
    }

    /// The time-index ranges of `split`, in time order.
    pub fn ranges(&self, split: Split) -> &[Range<usize>] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }

    /// Every time step of `split`, in order.
    pub fn steps(&self, split: Split) -> impl Iterator<Item = usize> + '_ {
        self.ranges(split).iter().flat_map(|r| r.clone())
    }

    /// Seconds from the first to the last time of each range of `split`, added up: how
    /// much of the year the split sees (a gap between periods does not count).
    pub fn seconds_spanned(&self, split: Split, time: &TimeAxis) -> i64 {
        self.ranges(split)
            .iter()
            .map(|r| time.instants[r.end - 1].seconds - time.instants[r.start].seconds)
            .sum()
    }

    /// The `t0` (last input step) of every sample inside `split`, in time order.
    pub fn samples(&self, split: Split) -> Vec<usize> {
        self.rollout_samples(split, 1)
    }

    /// The `t0` of every sample inside one range of `split` whose `rollout_steps`
    /// targets (`lead`, `2 lead`, ... after `t0`) are inside it too, in time order.
    pub fn rollout_samples(&self, split: Split, rollout_steps: usize) -> Vec<usize> {
        self.ranges(split)
            .iter()
            .flat_map(|r| self.window.rollout_t0s(r, rollout_steps))
            .collect()
    }
}

/// Sorted ranges with touching neighbours joined (periods given day by day or year by
/// year make one range, so no sample is lost at their seams).
fn merge_touching(ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a split of one range reads best as vec![a..b]
mod tests {
    use super::*;

    #[test]
    fn windows_never_cross_splits() {
        let w = WindowSpec {
            input_steps: 2,
            lead_steps: 4,
            input_spacing: 1,
        };
        let s = Splits::new(&six_hourly(64), &SplitSpec::default(), w).unwrap();
        for split in [Split::Train, Split::Validation, Split::Test] {
            let r = s.ranges(split)[0].clone();
            for t0 in s.samples(split) {
                assert!(t0 + 1 >= r.start + w.input_steps && t0 + w.lead_steps < r.end);
            }
        }
        assert_eq!(s.train, vec![0..45]);
        assert_eq!(s.samples(Split::Train).len(), 45 - 5);
        // Three targets 4 steps apart: the last must lie inside the block too.
        let rollout = s.rollout_samples(Split::Train, 3);
        assert_eq!(rollout.len(), 45 - 1 - 12);
        assert!(rollout.iter().all(|&t0| t0 + 12 < 45));
        assert_eq!(s.test, vec![55..64]);
    }

    /// `n` steps every 6 hours from 1996-01-05 00:00.
    fn six_hourly(n: usize) -> TimeAxis {
        let cal = crate::data::time::Calendar::ProlepticGregorian;
        let t0 = crate::data::time::DateTime::parse("1996-01-05", cal)
            .unwrap()
            .to_instant(cal);
        TimeAxis {
            calendar: cal,
            instants: (0..n as i64)
                .map(|i| crate::data::time::Instant {
                    seconds: t0.seconds + i * 6 * 3600,
                })
                .collect(),
        }
    }

    fn by_periods(train: &[&str], validation: &[&str], test: &[&str]) -> SplitSpec {
        let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        SplitSpec {
            periods: Some(SplitPeriods {
                train: texts(train),
                validation: texts(validation),
                test: texts(test),
            }),
            ..SplitSpec::default()
        }
    }

    #[test]
    fn periods_cut_by_date_inclusive_and_a_date_alone_is_its_whole_day() {
        let time = six_hourly(64);
        let w = WindowSpec::lead_spaced(2, 1);
        let spec = by_periods(
            &[
                "1996-01-05..1996-01-09",
                "1996-01-15 00:00..1996-01-20 18:00",
            ],
            &["1996-01-13..1996-01-14 18:00"],
            &["1996-01-10T00..1996-01-12"],
        );
        let s = Splits::new(&time, &spec, w).unwrap();
        assert_eq!(s.train, vec![0..20, 40..64]);
        assert_eq!(s.validation, vec![32..40]);
        assert_eq!(s.test, vec![20..32]);
        assert_eq!(s.seconds_spanned(Split::Train, &time), (19 + 23) * 6 * 3600);
        // No sample of the training block spans the test period.
        assert_eq!(s.samples(Split::Train).len(), 18 + 22);
        assert!(!s.samples(Split::Train).contains(&20));
        assert_eq!(
            s.rollout_samples(Split::Test, 4),
            (21..28).collect::<Vec<_>>()
        );
        // Periods reaching past the data are clipped to it.
        let wide = by_periods(&["1990-01-01..1996-01-10 12:00"], &[], &[]);
        let s = Splits::new(&time, &wide, w).unwrap();
        assert_eq!((s.train.clone(), s.test.len()), (vec![0..23], 0));
    }

    #[test]
    fn touching_periods_of_a_split_make_one_range_and_other_data_keep_theirs() {
        let time = six_hourly(64);
        let w = WindowSpec::lead_spaced(2, 1);
        let days = by_periods(
            &["1996-01-08..1996-01-09", "1996-01-05..1996-01-07"],
            &[],
            &["1996-01-10 UTC..1996-01-11 UTC"],
        );
        let s = Splits::new(&time, &days, w).unwrap();
        assert_eq!(
            (s.train.clone(), s.test.clone()),
            (vec![0..20], vec![20..28])
        );
        assert_eq!(s.samples(Split::Train).len(), 18);
        // On data holding only part of them, the periods outside are left out.
        let later = TimeAxis {
            instants: time.instants[24..].to_vec(),
            ..time.clone()
        };
        let kept = days.within(&later).periods.unwrap();
        assert!(kept.train.is_empty() && kept.test == ["1996-01-10 UTC..1996-01-11 UTC"]);
    }

    #[test]
    fn periods_that_overlap_hold_nothing_or_cannot_be_read_are_refused() {
        let time = six_hourly(64);
        let w = WindowSpec::lead_spaced(2, 1);
        let refused = |spec: SplitSpec| Splits::new(&time, &spec, w).unwrap_err().0;
        let e = refused(by_periods(
            &["1996-01-05..1996-01-12"],
            &[],
            &["1996-01-12 18:00..1996-01-20"],
        ));
        assert!(
            e.contains("overlap") && e.contains("1996-01-12 18:00"),
            "{e}"
        );
        let e = refused(by_periods(
            &["1996-01-05..1996-01-09", "1996-01-08..1996-01-10"],
            &[],
            &[],
        ));
        assert!(e.contains("overlap"), "{e}");
        let e = refused(by_periods(&["1997-01-01..1997-02-01"], &[], &[]));
        assert!(
            e.contains("train period '1997-01-01..1997-02-01': holds no time step"),
            "{e}"
        );
        assert!(e.contains("1996-01-05 00:00 to 1996-01-20 18:00"), "{e}");
        let e = refused(by_periods(&["1996-01-09..1996-01-05"], &[], &[]));
        assert!(e.contains("starts after it ends"), "{e}");
        let e = refused(by_periods(&["1996-01-05"], &[], &[]));
        assert!(e.contains("START..END"), "{e}");
        let e = refused(by_periods(&["1996-13-05..1996-01-09"], &[], &[]));
        assert!(e.contains("not a valid date"), "{e}");
        let e = by_periods(&[], &[], &["1996-01-05..1996-01-09"])
            .validate()
            .unwrap_err()
            .0;
        assert!(e.contains("at least one training period"), "{e}");
    }

    #[test]
    fn a_split_written_before_periods_reads_as_fractions() {
        let old: SplitSpec = serde_json::from_str(r#"{"train": 0.6, "validation": 0.2}"#).unwrap();
        assert_eq!(
            (old.train, old.validation, old.periods.clone()),
            (0.6, 0.2, None)
        );
        assert!(serde_json::to_string(&old)
            .unwrap()
            .find("periods")
            .is_none());
    }

    #[test]
    fn refuses_windows_longer_than_the_data() {
        let w = WindowSpec {
            input_steps: 4,
            lead_steps: 8,
            input_spacing: 1,
        };
        let e = Splits::new(&six_hourly(10), &SplitSpec::default(), w).unwrap_err();
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
        let s = Splits::new(&six_hourly(64), &SplitSpec::default(), w).unwrap();
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
