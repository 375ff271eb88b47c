//! The climatology `eval` scores against (the ACC's reference and the climatology
//! forecast): when the training block spans at least a year (its periods' spans added
//! up), per-cell monthly means
//! interpolated linearly between month centres to the day, so that it has a seasonal
//! cycle; otherwise the per-cell mean of the training block. The report says which.

use super::{Loaded, NodeReader};
use crate::data::time::{Calendar, DateTime, Instant};
use crate::data::Split;
use crate::predict::NodeState;

/// The shortest training block with a seasonal climatology.
const YEAR_SECONDS: i64 = 365 * 86_400;

pub(super) struct Climatology {
    /// Twelve monthly states (seasonal) or one (the mean).
    states: Vec<NodeState>,
    calendar: Calendar,
    /// What it is, in words, for the report.
    pub description: String,
}

impl Climatology {
    /// From the training block of the loaded data.
    pub fn from_training_block(loaded: &Loaded) -> anyhow::Result<Climatology> {
        let s = &loaded.session;
        let channels = loaded.stats.channels.len();
        let size = s.graph.grid_map.cells().len() * channels;
        let time = &s.dataset.time;
        if s.splits.train.is_empty() {
            return Ok(Climatology::training_means(loaded, size));
        }
        let seasonal = s.splits.seconds_spanned(Split::Train, time) >= YEAR_SECONDS;
        let groups = if seasonal { 12 } else { 1 };
        let (mut sum, mut count) = (vec![0f64; groups * size], vec![0u32; groups * size]);
        let mut reader = NodeReader::new(s, channels);
        for t in s.splits.steps(Split::Train) {
            let group = if seasonal {
                time.datetime(t).month as usize - 1
            } else {
                0
            };
            let state = reader.read(t)?;
            for k in (0..size).filter(|&k| state.valid[k]) {
                sum[group * size + k] += state.values[k] as f64;
                count[group * size + k] += 1;
            }
        }
        let fallback = |k: usize| loaded.stats.mean[k % channels] as f32;
        let mut states = means(&sum, &count, size, groups, fallback);
        if seasonal {
            // A cell never valid in some month takes its mean over the whole block.
            let overall = means(&fold(&sum, size), &fold(&count, size), size, 1, fallback);
            for state in &mut states {
                for k in 0..size {
                    if !state.valid[k] {
                        state.values[k] = overall[0].values[k];
                        state.valid[k] = overall[0].valid[k];
                    }
                }
            }
        }
        let span = s
            .splits
            .train
            .iter()
            .map(|r| format!("{} to {}", time.datetime(r.start), time.datetime(r.end - 1)))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Climatology {
            states,
            calendar: time.calendar,
            description: if seasonal {
                format!("per-cell monthly means of the training block ({span}), interpolated to the day")
            } else {
                format!("per-cell mean of the training block ({span}; shorter than a year, so no seasonal cycle)")
            },
        })
    }

    /// Each variable's training mean everywhere: for data that hold none of the run's
    /// training periods.
    fn training_means(loaded: &Loaded, size: usize) -> Climatology {
        let channels = loaded.stats.channels.len();
        let mean = NodeState {
            values: (0..size)
                .map(|k| loaded.stats.mean[k % channels] as f32)
                .collect(),
            valid: vec![true; size],
            time: Instant { seconds: 0 },
        };
        Climatology {
            states: vec![mean],
            calendar: loaded.session.dataset.time.calendar,
            description:
                "each variable's mean over the run's training period (these data hold none of it)"
                    .into(),
        }
    }

    /// The climatology at `t`.
    pub fn at(&self, t: Instant) -> NodeState {
        if self.states.len() == 1 {
            return NodeState {
                time: t,
                ..self.states[0].clone()
            };
        }
        let (m0, m1, w) = month_weights(DateTime::from_instant(t, self.calendar), self.calendar);
        let (a, b) = (&self.states[m0], &self.states[m1]);
        NodeState {
            values: a
                .values
                .iter()
                .zip(&b.values)
                .map(|(&x, &y)| ((1.0 - w) * x as f64 + w * y as f64) as f32)
                .collect(),
            valid: a
                .valid
                .iter()
                .zip(&b.valid)
                .map(|(&x, &y)| x && y)
                .collect(),
            time: t,
        }
    }
}

/// The two months (0-based) whose centres surround `d`, and the weight of the second:
/// mid-January is all January, the turn of January and February half each.
fn month_weights(d: DateTime, calendar: Calendar) -> (usize, usize, f64) {
    let length = calendar.month_lengths(d.year)[d.month as usize - 1] as f64;
    let day = (d.day - 1) as f64 + (d.hour * 3600 + d.minute * 60 + d.second) as f64 / 86_400.0;
    let position = (d.month - 1) as f64 + day / length - 0.5;
    let below = position.floor();
    let m0 = (below as i64).rem_euclid(12) as usize;
    (m0, (m0 + 1) % 12, position - below)
}

/// Means of `groups` groups of `size` sums; a value without any count takes `fallback`.
fn means(
    sum: &[f64],
    count: &[u32],
    size: usize,
    groups: usize,
    fallback: impl Fn(usize) -> f32,
) -> Vec<NodeState> {
    (0..groups)
        .map(|g| {
            let (sum, count) = (
                &sum[g * size..(g + 1) * size],
                &count[g * size..(g + 1) * size],
            );
            NodeState {
                values: (0..size)
                    .map(|k| match count[k] {
                        0 => fallback(k),
                        n => (sum[k] / n as f64) as f32,
                    })
                    .collect(),
                valid: count.iter().map(|&n| n > 0).collect(),
                // A mean over many times: `Climatology::at` stamps the time asked for.
                time: Instant { seconds: 0 },
            }
        })
        .collect()
}

/// Sums over the twelve monthly groups.
fn fold<T: Copy + Default + std::ops::Add<Output = T>>(values: &[T], size: usize) -> Vec<T> {
    let mut out = vec![T::default(); size];
    for chunk in values.chunks(size) {
        for (o, &v) in out.iter_mut().zip(chunk) {
            *o = *o + v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(month: u32, day: u32, hour: u32) -> (usize, usize, f64) {
        let d = DateTime {
            year: 2001,
            month,
            day,
            hour,
            minute: 0,
            second: 0,
        };
        month_weights(d, Calendar::ProlepticGregorian)
    }

    #[test]
    fn month_weights_interpolate_between_month_centres() {
        // 16 January 12:00 is 15.5 of 31 days in: January's centre.
        let (m0, m1, w) = at(1, 16, 12);
        assert_eq!((m0, m1), (0, 1));
        assert!(w.abs() < 1e-12, "{w}");
        // The turn of the month: half January, half February.
        let (m0, m1, w) = at(2, 1, 0);
        assert_eq!((m0, m1), (0, 1));
        assert!((w - 0.5).abs() < 1e-12, "{w}");
        // New Year wraps: half December, half January.
        let (m0, m1, w) = at(1, 1, 0);
        assert_eq!((m0, m1), (11, 0));
        assert!((w - 0.5).abs() < 1e-12, "{w}");
        // Late December leans towards January.
        let (m0, _, w) = at(12, 31, 0);
        assert_eq!(m0, 11);
        assert!(w > 0.45 && w < 0.5, "{w}");
    }

    #[test]
    fn fold_sums_the_groups() {
        assert_eq!(fold(&[1u32, 2, 10, 20, 100, 200], 2), [111, 222]);
    }
}
