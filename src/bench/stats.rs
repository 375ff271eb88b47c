//! Summaries of repeated timings.

use serde::{Deserialize, Serialize};

/// Median, minimum and maximum of repeated measurements (seconds), with the raw values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// Every measurement, in the order taken.
    pub samples_s: Vec<f64>,
}

impl Summary {
    /// None for no measurements. The median of an even count is the mean of the two middle values.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        };
        Some(Summary {
            median_s: median,
            min_s: sorted[0],
            max_s: sorted[n - 1],
            samples_s: samples.to_vec(),
        })
    }
}

/// Times `f` `repeats` times.
pub fn time_repeats<T>(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = std::time::Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median_s, s.min_s, s.max_s), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median_s, 2.5);
        assert!(Summary::of(&[]).is_none());
    }
}
