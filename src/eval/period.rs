//! Which forecasts `eval` scores: the initial times of a split of the data (test,
//! validation or all of it, for an independent file), optionally within a period.

use serde::Serialize;

use super::Loaded;
use crate::data::time::{parse_end, Calendar, DateTime, Instant};
use crate::data::Split;
use crate::error::InputError;

/// The block of the data whose forecasts are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoredSplit {
    Test,
    Validation,
    /// Every time of the data: for a file the model never saw.
    All,
}

impl ScoredSplit {
    pub const NAMES: &'static [&'static str] = &["test", "validation", "all"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl std::str::FromStr for ScoredSplit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "test" => Ok(ScoredSplit::Test),
            "validation" => Ok(ScoredSplit::Validation),
            "all" => Ok(ScoredSplit::All),
            _ => Err(format!("unknown split '{s}': test, validation or all")),
        }
    }
}

/// The split, and a period (`YYYY-MM-DD hh:mm` texts) every scored forecast must lie
/// in, from its initial time to its last lead.
#[derive(Debug, Clone, Serialize)]
pub struct EvalPeriod {
    pub split: ScoredSplit,
    pub start: Option<String>,
    pub end: Option<String>,
}

impl Default for EvalPeriod {
    fn default() -> Self {
        EvalPeriod {
            split: ScoredSplit::Test,
            start: None,
            end: None,
        }
    }
}

impl EvalPeriod {
    /// Initial times (data indices) whose `rollout_steps`-step forecast, from the input
    /// history to the last verifying time, lies inside the split and the period.
    pub fn initial_times(
        &self,
        loaded: &Loaded,
        rollout_steps: usize,
    ) -> anyhow::Result<Vec<usize>> {
        let (s, window) = (&loaded.session, loaded.meta.run.window);
        let time = &s.dataset.time;
        let all = 0..time.len();
        let blocks = match self.split {
            ScoredSplit::Test => s.splits.ranges(Split::Test),
            ScoredSplit::Validation => s.splits.ranges(Split::Validation),
            ScoredSplit::All => std::slice::from_ref(&all),
        };
        let (start, end) = (
            self.instant(&self.start, loaded, |t, cal| {
                DateTime::parse(t, cal).map(|d| d.to_instant(cal))
            })?,
            self.instant(&self.end, loaded, parse_end)?,
        );
        let inside = |t: usize| {
            start.is_none_or(|a| time.instants[t] >= a) && end.is_none_or(|b| time.instants[t] <= b)
        };
        let span = rollout_steps * window.lead_steps;
        let inits: Vec<usize> = blocks
            .iter()
            .flat_map(|block| window.rollout_t0s(block, rollout_steps))
            .filter(|&t0| inside(window.input_time(t0, 0)) && inside(t0 + span))
            .collect();
        if inits.is_empty() {
            let steps: Vec<String> = blocks
                .iter()
                .map(|b| format!("{}..{}", b.start, b.end))
                .collect();
            crate::bail_input!(
                "{}: no {rollout_steps}-step forecast fits in {} ({}{}) with {} input steps at lead {}",
                s.dataset.file_list(),
                self.describe_split(),
                match steps.len() {
                    0 => "empty: the run has no such period in these data".to_string(),
                    _ => format!("steps {} of the data", steps.join(", ")),
                },
                self.describe_period(),
                window.input_steps,
                window.lead_steps
            );
        }
        Ok(inits)
    }

    /// `text` read by `parse` (an end date alone covers its day).
    fn instant(
        &self,
        text: &Option<String>,
        loaded: &Loaded,
        parse: impl Fn(&str, Calendar) -> Result<Instant, String>,
    ) -> anyhow::Result<Option<Instant>> {
        let cal = loaded.session.dataset.time.calendar;
        text.as_deref()
            .map(|t| {
                parse(t, cal).map_err(|e| InputError(format!("--start/--end {t}: {e}")).into())
            })
            .transpose()
    }

    fn describe_split(&self) -> &'static str {
        match self.split {
            ScoredSplit::Test => "the test block",
            ScoredSplit::Validation => "the validation block",
            ScoredSplit::All => "the whole data",
        }
    }

    fn describe_period(&self) -> String {
        match (&self.start, &self.end) {
            (None, None) => String::new(),
            (a, b) => format!(
                ", between {} and {}",
                a.as_deref().unwrap_or("the start"),
                b.as_deref().unwrap_or("the end")
            ),
        }
    }
}
