//! `meshcast compare-benchmarks A.json B.json`: B against A, case by case.
//!
//! Cases are aligned on their full configuration. For each pair with timings on both
//! sides: B/A ratios of the median step time, the measured peak memory of the case
//! and the throughput, with each side's spread (min..max step time). A case is a
//! regression when B is slower than A by more than the threshold AND B's fastest
//! step is slower than A's slowest (the difference exceeds the measured spread), or
//! when its peak memory grew by more than the threshold (memory is counted, not
//! sampled, so it has no spread). Improvements mirror this; a difference beyond the
//! threshold but inside the spread is `noise`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::report::{CaseResult, Report};
use crate::error::InputError;
use crate::table::render_table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Regression,
    Improvement,
    Unchanged,
    /// Beyond the threshold but within the measured spread.
    Noise,
    /// A side has no timings (unverified or failed case).
    NotComparable,
}

/// One aligned case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseComparison {
    pub case: String,
    pub config: super::report::CaseConfig,
    pub a_step_s: Option<[f64; 3]>,
    pub b_step_s: Option<[f64; 3]>,
    /// Median step time B / A.
    pub time_ratio: Option<f64>,
    /// Case peak memory (peak - baseline) B / A.
    pub memory_ratio: Option<f64>,
    /// Samples per second B / A.
    pub throughput_ratio: Option<f64>,
    pub status: Status,
    /// Why, in words.
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub threshold: f64,
    pub cases: Vec<CaseComparison>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub regressions: usize,
    pub improvements: usize,
}

fn triple(c: &CaseResult) -> Option<[f64; 3]> {
    c.timings
        .as_ref()
        .map(|t| [t.step.median_s, t.step.min_s, t.step.max_s])
}

/// Compares two loaded reports. Refuses another machine unless `allow_different_machine`.
pub fn compare(
    a: &Report,
    b: &Report,
    names: (&Path, &Path),
    threshold: f64,
    allow_different_machine: bool,
) -> anyhow::Result<Comparison> {
    check_comparable(a, b, names, threshold, allow_different_machine)?;
    let mut cases = Vec::new();
    let mut only_in_a = Vec::new();
    for ca in &a.cases {
        match b.cases.iter().find(|cb| cb.config == ca.config) {
            Some(cb) => cases.push(compare_case(ca, cb, threshold)),
            None => only_in_a.push(ca.config.short()),
        }
    }
    let only_in_b = b
        .cases
        .iter()
        .filter(|cb| !a.cases.iter().any(|ca| ca.config == cb.config))
        .map(|c| c.config.short())
        .collect();
    if cases.is_empty() {
        crate::bail_input!(
            "no case of {} has the configuration of a case of {}: nothing to compare",
            names.0.display(),
            names.1.display()
        );
    }
    let count = |s: Status| cases.iter().filter(|c| c.status == s).count();
    Ok(Comparison {
        a: names.0.display().to_string(),
        b: names.1.display().to_string(),
        threshold,
        regressions: count(Status::Regression),
        improvements: count(Status::Improvement),
        cases,
        only_in_a,
        only_in_b,
    })
}

/// Rejects a comparison that would mislead: a bad threshold, reports of different
/// kinds, or (unless allowed) timings from different machines.
fn check_comparable(
    a: &Report,
    b: &Report,
    names: (&Path, &Path),
    threshold: f64,
    allow_different_machine: bool,
) -> anyhow::Result<()> {
    if !(threshold >= 0.0 && threshold.is_finite()) {
        crate::bail_input!("--threshold {threshold} must be a fraction >= 0 (0.05 is 5%)");
    }
    if a.kind != b.kind {
        crate::bail_input!(
            "{} is a '{}' report and {} a '{}' report",
            names.0.display(),
            a.kind,
            names.1.display(),
            b.kind
        );
    }
    for (report, name) in [(a, names.0), (b, names.1)] {
        check_timings(report, name)?;
    }
    let (ma, mb) = (a.machine.identity(), b.machine.identity());
    if ma != mb && !allow_different_machine {
        return Err(InputError(format!(
            "{} ran on '{ma}' and {} on '{mb}': timings from different machines do not compare \
             (pass --allow-different-machine to compare anyway)",
            names.0.display(),
            names.1.display()
        ))
        .into());
    }
    Ok(())
}

/// Refuses step times no measurement gives: zero, negative, not finite, or a median
/// outside its min..max (an edited or damaged report).
fn check_timings(report: &Report, name: &Path) -> anyhow::Result<()> {
    for case in &report.cases {
        let Some(t) = triple(case) else { continue };
        let [median, min, max] = t;
        if !(t.iter().all(|x| x.is_finite() && *x > 0.0) && min <= median && median <= max) {
            crate::bail_input!(
                "{}: case {} has step times median {median}, min {min}, max {max}: not a measurement",
                name.display(),
                case.config.short()
            );
        }
    }
    Ok(())
}

/// Compares one case of A with the same configuration in B: ratios and a status.
fn compare_case(ca: &CaseResult, cb: &CaseResult, threshold: f64) -> CaseComparison {
    let (ta, tb) = (triple(ca), triple(cb));
    let memory_ratio = match (
        ca.memory.and_then(|m| m.case_peak()),
        cb.memory.and_then(|m| m.case_peak()),
    ) {
        (Some(x), Some(y)) if x > 0 => Some(y as f64 / x as f64),
        _ => None,
    };
    let (time_ratio, throughput_ratio, status, note) = match (ta, tb, &ca.timings, &cb.timings) {
        (Some(ta), Some(tb), Some(xa), Some(xb)) => {
            let r = tb[0] / ta[0];
            let thr = xb.samples_per_s / xa.samples_per_s;
            let (status, note) = classify(r, ta, tb, memory_ratio, threshold);
            (Some(r), Some(thr), status, note)
        }
        // B lost what A had: it failed, or failed its verification.
        (Some(_), None, _, _) => (
            None,
            None,
            Status::Regression,
            format!(
                "B has no timings: {}",
                cb.error.as_deref().unwrap_or(if cb.verified() {
                    "no measurement"
                } else {
                    "it failed verification"
                })
            ),
        ),
        _ => (
            None,
            None,
            Status::NotComparable,
            format!(
                "no timings in {}",
                match (ta.is_none(), tb.is_none()) {
                    (true, true) => "either report",
                    (true, false) => "A",
                    _ => "B",
                }
            ),
        ),
    };
    CaseComparison {
        case: ca.config.short(),
        config: ca.config.clone(),
        a_step_s: ta,
        b_step_s: tb,
        time_ratio,
        memory_ratio,
        throughput_ratio,
        status,
        note,
    }
}

/// Status and note of a case timed on both sides, from the median step time ratio
/// `r`, each side's `[median, min, max]` step times and the peak memory ratio.
fn classify(
    r: f64,
    ta: [f64; 3],
    tb: [f64; 3],
    memory_ratio: Option<f64>,
    threshold: f64,
) -> (Status, String) {
    if r > 1.0 + threshold && tb[1] > ta[2] {
        (
            Status::Regression,
            format!("{:.1}% slower, beyond the spread", (r - 1.0) * 100.0),
        )
    } else if memory_ratio.is_some_and(|m| m > 1.0 + threshold) {
        (
            Status::Regression,
            format!(
                "peak memory {:.1}% higher",
                (memory_ratio.unwrap_or(1.0) - 1.0) * 100.0
            ),
        )
    } else if r < 1.0 - threshold && tb[2] < ta[1] {
        (
            Status::Improvement,
            format!("{:.1}% faster, beyond the spread", (1.0 - r) * 100.0),
        )
    } else if memory_ratio.is_some_and(|m| m < 1.0 - threshold) {
        (Status::Improvement, "peak memory lower".into())
    } else if (r - 1.0).abs() > threshold {
        (
            Status::Noise,
            format!("{:+.1}% but the min..max ranges overlap", (r - 1.0) * 100.0),
        )
    } else {
        (Status::Unchanged, String::new())
    }
}

/// The human-readable comparison.
pub fn render(c: &Comparison) -> String {
    let ms = |t: Option<[f64; 3]>| {
        t.map_or("-".into(), |t| {
            format!("{:.1} ({:.1}..{:.1})", t[0] * 1e3, t[1] * 1e3, t[2] * 1e3)
        })
    };
    let ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.3}"));
    let mut rows = vec![vec![
        "case".to_string(),
        "A step ms (min..max)".into(),
        "B step ms (min..max)".into(),
        "time B/A".into(),
        "peak mem B/A".into(),
        "throughput B/A".into(),
        "status".into(),
    ]];
    for k in &c.cases {
        let status = serde_json::to_value(k.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        rows.push(vec![
            k.case.clone(),
            ms(k.a_step_s),
            ms(k.b_step_s),
            ratio(k.time_ratio),
            ratio(k.memory_ratio),
            ratio(k.throughput_ratio),
            if k.note.is_empty() {
                status
            } else {
                format!("{status}: {}", k.note)
            },
        ]);
    }
    let mut out = format!(
        "A = {}\nB = {}\nthreshold {:.1}%\n\n{}",
        c.a,
        c.b,
        c.threshold * 100.0,
        render_table(&rows)
    );
    for (name, list) in [("A", &c.only_in_a), ("B", &c.only_in_b)] {
        if !list.is_empty() {
            out.push_str(&format!("\nonly in {name}: {}\n", list.join("; ")));
        }
    }
    out.push_str(&format!(
        "\n{} regression(s), {} improvement(s) in {} aligned case(s)\n",
        c.regressions,
        c.improvements,
        c.cases.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample_report;

    fn cmp(a: &Report, b: &Report) -> Comparison {
        compare(a, b, (Path::new("a"), Path::new("b")), 0.05, false).unwrap()
    }

    #[test]
    fn classifies_cases() {
        let a = sample_report(0.100);
        assert_eq!(cmp(&a, &a).cases[0].status, Status::Unchanged);
        assert_eq!(
            cmp(&a, &sample_report(0.130)).cases[0].status,
            Status::Regression
        );
        assert_eq!(
            cmp(&a, &sample_report(0.070)).cases[0].status,
            Status::Improvement
        );
        // 6% slower but A's spread is wide: noise.
        let mut wide = sample_report(0.100);
        wide.cases[0].timings.as_mut().unwrap().step.max_s = 0.2;
        assert_eq!(
            cmp(&wide, &sample_report(0.106)).cases[0].status,
            Status::Noise
        );
    }

    #[test]
    fn a_case_that_lost_its_timings_is_a_regression() {
        let a = sample_report(0.1);
        let mut b = sample_report(0.1);
        b.cases[0].timings = None;
        b.cases[0].error = Some("verification failed".into());
        let c = cmp(&a, &b);
        assert_eq!(c.cases[0].status, Status::Regression);
        assert_eq!(c.regressions, 1);
    }

    #[test]
    fn step_times_no_measurement_gives_are_refused() {
        let a = sample_report(0.1);
        for bad in [0.0, -0.1, f64::NAN] {
            let mut b = sample_report(0.1);
            b.cases[0].timings.as_mut().unwrap().step.median_s = bad;
            let err = compare(&a, &b, (Path::new("a"), Path::new("b")), 0.05, false).unwrap_err();
            assert!(crate::error::is_input_error(&err), "{bad}: {err}");
        }
    }

    #[test]
    fn lists_missing_cases_and_refuses_other_machines() {
        let (mut a, mut b) = (sample_report(0.1), sample_report(0.1));
        let with_batch = |r: &Report, n| {
            let mut case = r.cases[0].clone();
            case.config.batch_size = n;
            case
        };
        a.cases.push(with_batch(&a, 4));
        b.cases.push(with_batch(&b, 8));
        let c = cmp(&a, &b);
        assert_eq!(c.cases.len(), 1);
        assert_eq!(c.only_in_a, vec!["global-5 b4 csr-shared"]);
        assert_eq!(c.only_in_b, vec!["global-5 b8 csr-shared"]);
        // No aligned case at all: nothing was compared, which is not a pass.
        b.cases.remove(0);
        a.cases.remove(0);
        let err = compare(&a, &b, (Path::new("a"), Path::new("b")), 0.05, false).unwrap_err();
        assert!(crate::error::is_input_error(&err), "{err}");
        let a = sample_report(0.1);
        let mut other = sample_report(0.1);
        other.machine.cpu.logical_cores = 64;
        let err = compare(&a, &other, (Path::new("a"), Path::new("b")), 0.05, false).unwrap_err();
        assert!(crate::error::is_input_error(&err));
        assert!(compare(&a, &other, (Path::new("a"), Path::new("b")), 0.05, true).is_ok());
    }
}
