//! `inspect-data`: what the loader found, with statistics over every time step.

use std::fmt;

use serde::Serialize;

use super::dataset::{Channel, Dataset, StepReader};
use super::grid::Grid;
use super::samples::{Split, Splits};
use super::time::{format_step, TimeAxis};
use crate::error::InputError;

#[derive(Debug, Clone, Serialize)]
pub struct GridReport {
    pub nlat: usize,
    pub nlon: usize,
    pub lat_min: f64,
    pub lat_max: f64,
    pub lon_min: f64,
    pub lon_max: f64,
    pub lat_spacing: f64,
    pub lon_spacing: f64,
    pub global: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeReport {
    pub steps: usize,
    pub start: String,
    pub end: String,
    pub step_seconds: Option<i64>,
    pub step: Option<String>,
    pub regular: bool,
    pub calendar: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariableReport {
    pub name: String,
    pub file: String,
    pub file_variable: String,
    pub units: Option<String>,
    pub long_name: Option<String>,
    pub dimensions: Vec<String>,
    pub fill_fraction: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    pub time_note: Option<String>,
}

/// Samples per split for the window the user asked about.
#[derive(Debug, Clone, Serialize)]
pub struct SamplesReport {
    pub input_steps: usize,
    pub lead_steps: usize,
    pub train: SplitSamples,
    pub validation: SplitSamples,
    pub test: SplitSamples,
}

/// A split's time-step ranges `[start, end)` and how many samples they hold.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSamples {
    pub steps: Vec<(usize, usize)>,
    pub samples: usize,
}

impl fmt::Display for SplitSamples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .steps
            .iter()
            .map(|(a, b)| format!("{a}..{b}"))
            .collect();
        match ranges.len() {
            0 => write!(f, "{} (no steps)", self.samples),
            _ => write!(f, "{} (steps {})", self.samples, ranges.join(", ")),
        }
    }
}

impl SamplesReport {
    pub fn new(splits: &Splits) -> Self {
        let count = |s: Split| SplitSamples {
            steps: splits.ranges(s).iter().map(|r| (r.start, r.end)).collect(),
            samples: splits.samples(s).len(),
        };
        SamplesReport {
            input_steps: splits.window.input_steps,
            lead_steps: splits.window.lead_steps,
            train: count(Split::Train),
            validation: count(Split::Validation),
            test: count(Split::Test),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub grid: GridReport,
    pub time: TimeReport,
    pub variables: Vec<VariableReport>,
    /// Static fields given with `--static`: name and the fraction of cells missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_fields: Vec<(String, f64)>,
    pub samples: Option<SamplesReport>,
    /// Why no sample fits the data (too few time steps for the window): the file is
    /// still described, but training could not use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_samples: Option<String>,
}

/// Reads every time step once and reports grid, time axis and per-channel statistics.
/// A channel that is missing everywhere is an input error.
pub fn inspect(ds: &Dataset) -> anyhow::Result<InspectReport> {
    let stats = channel_stats(ds)?;
    let total = (ds.grid.len() * ds.time.len()) as f64;
    let variables = ds
        .channels
        .iter()
        .zip(&stats)
        .map(|(ch, s)| variable_report(ds, ch, s, total))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(InspectReport {
        grid: grid_report(&ds.grid),
        time: time_report(&ds.time),
        variables,
        static_fields: static_fill(ds),
        samples: None,
        no_samples: None,
    })
}

/// Each static field's name and fraction of cells without a value.
fn static_fill(ds: &Dataset) -> Vec<(String, f64)> {
    let (statics, cells) = (&ds.statics, ds.grid.len().max(1));
    let width = statics.width();
    statics
        .names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let flag = |cell: usize| statics.features[cell * width + statics.count() + k];
            let valid: f64 = (0..cells).map(|c| flag(c) as f64).sum();
            (name.clone(), 1.0 - valid / cells as f64)
        })
        .collect()
}

/// Running sums of one channel's valid values, from which the report's mean and
/// standard deviation come.
struct ChannelStats {
    count: u64,
    sum: f64,
    sumsq: f64,
    min: f64,
    max: f64,
}

impl ChannelStats {
    fn new() -> Self {
        ChannelStats {
            count: 0,
            sum: 0.0,
            sumsq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.sumsq += v * v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// Reads every time step once, accumulating statistics of each channel's valid cells.
fn channel_stats(ds: &Dataset) -> anyhow::Result<Vec<ChannelStats>> {
    let cells = ds.grid.len();
    let mut stats: Vec<ChannelStats> = (0..ds.num_channels())
        .map(|_| ChannelStats::new())
        .collect();
    let mut reader = StepReader::default();
    for t in 0..ds.time.len() {
        let state = reader.read(ds, t)?;
        for (c, s) in stats.iter_mut().enumerate() {
            for k in c * cells..(c + 1) * cells {
                if state.valid[k] {
                    s.add(state.values[k] as f64);
                }
            }
        }
    }
    Ok(stats)
}

/// Describes one channel and the file variable it comes from; `total` is the number
/// of cells over all time steps. A channel with no valid value is an input error.
fn variable_report(
    ds: &Dataset,
    ch: &Channel,
    stats: &ChannelStats,
    total: f64,
) -> anyhow::Result<VariableReport> {
    let source = ds
        .sources
        .iter()
        .find(|s| s.channel_names().contains(&ch.name) || s.name == ch.name)
        .expect("channel has a source");
    if stats.count == 0 {
        return Err(InputError::file(
            &source.path,
            format!("variable '{}' has no valid value (every cell is _FillValue, missing or out of valid range)", source.var_name),
        )
        .into());
    }
    let k = stats.count as f64;
    let mean = stats.sum / k;
    Ok(VariableReport {
        name: ch.name.clone(),
        file: source.path.display().to_string(),
        file_variable: source.var_name.clone(),
        units: ch.units.clone(),
        long_name: ch.long_name.clone(),
        dimensions: source
            .dims
            .iter()
            .map(|(d, l)| format!("{d}={l}"))
            .collect(),
        fill_fraction: 1.0 - k / total,
        min: stats.min,
        max: stats.max,
        mean,
        std: (stats.sumsq / k - mean * mean).max(0.0).sqrt(),
        time_note: source.time_note.clone(),
    })
}

/// Size, extent and spacing of the grid.
fn grid_report(g: &Grid) -> GridReport {
    GridReport {
        nlat: g.nlat(),
        nlon: g.nlon(),
        lat_min: g.lat[0],
        lat_max: g.lat[g.nlat() - 1],
        lon_min: g.lon[0],
        lon_max: g.lon[g.nlon() - 1],
        lat_spacing: g.lat_spacing(),
        lon_spacing: g.lon_spacing(),
        global: g.global,
    }
}

/// Length, span, step and calendar of the time axis.
fn time_report(time: &TimeAxis) -> TimeReport {
    let step_seconds = time.step_seconds();
    TimeReport {
        steps: time.len(),
        start: time.datetime(0).to_string(),
        end: time.datetime(time.len() - 1).to_string(),
        step_seconds,
        step: step_seconds.map(format_step),
        regular: time.is_regular(),
        calendar: format!("{:?}", time.calendar),
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.grid;
        writeln!(
            f,
            "grid: {} x {} ({}), lat {:.3}..{:.3} every {:.4} deg, lon {:.3}..{:.3} every {:.4} deg",
            g.nlat,
            g.nlon,
            if g.global { "global" } else { "regional" },
            g.lat_min,
            g.lat_max,
            g.lat_spacing,
            g.lon_min,
            g.lon_max,
            g.lon_spacing
        )?;
        let t = &self.time;
        writeln!(
            f,
            "time: {} steps every {}{} from {} to {} ({} calendar)",
            t.steps,
            t.step.as_deref().unwrap_or("-"),
            if t.regular { "" } else { " (irregular)" },
            t.start,
            t.end,
            t.calendar
        )?;
        writeln!(
            f,
            "{:<10} {:<8} {:>7} {:>12} {:>12} {:>12} {:>12}  source",
            "variable", "units", "fill%", "min", "max", "mean", "std"
        )?;
        for v in &self.variables {
            writeln!(
                f,
                "{:<10} {:<8} {:>6.1}% {:>12.5} {:>12.5} {:>12.5} {:>12.5}  {}:{} ({})",
                v.name,
                v.units.as_deref().unwrap_or("-"),
                100.0 * v.fill_fraction,
                v.min,
                v.max,
                v.mean,
                v.std,
                v.file,
                v.file_variable,
                v.dimensions.join(", ")
            )?;
        }
        for (name, fill) in &self.static_fields {
            writeln!(f, "static field {name}: {:.1}% fill", 100.0 * fill)?;
        }
        if let Some(s) = &self.samples {
            writeln!(
                f,
                "samples ({} input steps, lead {}): train {}, validation {}, test {}",
                s.input_steps, s.lead_steps, s.train, s.validation, s.test
            )?;
        }
        if let Some(why) = &self.no_samples {
            writeln!(
                f,
                "samples: none fit, so training could not use this data: {why}"
            )?;
        }
        for note in self
            .variables
            .iter()
            .filter_map(|v| v.time_note.as_ref())
            .collect::<std::collections::BTreeSet<_>>()
        {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}
