//! The forecast file's layout, WeatherBench2 style and in the input's own conventions:
//! dimensions `(time, prediction_timedelta, [level,] lat, lon)` with `time` the
//! initialisation time and `prediction_timedelta` the lead, the input's coordinate
//! names, latitude order, longitude range, value types and attributes, and each
//! multi-level variable with its level dimension, as read.

use netcdf::{AttributeValue, Extent};

use crate::data::generate::FILL_VALUE;
use crate::data::source::{CoordinateType, HorizontalAxes, OutputAxis};
use crate::data::time::{Calendar, DateTime};
use crate::data::Dataset;

/// One variable of the forecast: the channels of one input variable, one per level.
pub(super) struct OutputVariable {
    pub name: String,
    /// Dataset channel of each level (one entry without a level dimension).
    pub channels: Vec<usize>,
    /// Name of its level dimension in the output, if it has one.
    pub level_dim: Option<String>,
}

/// Everything needed to define the file and place each value in it.
pub(super) struct Layout {
    pub axes: HorizontalAxes,
    pub levels: Vec<OutputAxis>,
    pub variables: Vec<OutputVariable>,
    /// Initialisation times, and the first one (the reference of every time value).
    pub reference: DateTime,
    pub calendar: Calendar,
    pub init_hours: Vec<f64>,
    pub lead_seconds: Vec<i64>,
}

impl Layout {
    /// The layout for `dataset`'s variables, initialisations `inits` (time indices) and
    /// leads `lead_seconds`.
    pub fn new(
        dataset: &Dataset,
        inits: &[usize],
        lead_seconds: Vec<i64>,
    ) -> anyhow::Result<Layout> {
        let axes = dataset.sources[0].horizontal_axes()?;
        let mut levels: Vec<OutputAxis> = Vec::new();
        let mut variables: Vec<OutputVariable> = Vec::new();
        for (c, ch) in dataset.channels.iter().enumerate() {
            let (source, level) = ch.origin();
            let name = &dataset.sources[source].name;
            if let Some(var) = variables.iter_mut().find(|v| &v.name == name) {
                var.channels.push(c);
                continue;
            }
            debug_assert_eq!(level, 0, "a variable's channels follow its levels in order");
            let level_dim = dataset.sources[source]
                .level_axis()?
                .map(|axis| add_level_axis(&mut levels, axis));
            variables.push(OutputVariable {
                name: name.clone(),
                channels: vec![c],
                level_dim,
            });
        }
        let instants = &dataset.time.instants;
        let first = instants[inits[0]].seconds;
        Ok(Layout {
            axes,
            levels,
            variables,
            reference: dataset.time.datetime(inits[0]),
            calendar: dataset.time.calendar,
            init_hours: inits
                .iter()
                .map(|&i| (instants[i].seconds - first) as f64 / 3600.0)
                .collect(),
            lead_seconds,
        })
    }

    /// Defines dimensions, coordinates and variables, and writes the coordinates.
    pub fn define(&self, file: &mut netcdf::FileMut, dataset: &Dataset) -> anyhow::Result<()> {
        let (lat, lon) = (&self.axes.lat, &self.axes.lon);
        file.add_dimension("time", self.init_hours.len())?;
        file.add_dimension("prediction_timedelta", self.lead_seconds.len())?;
        for axis in [lat, lon].into_iter().chain(&self.levels) {
            file.add_dimension(&axis.name, axis.values.len())?;
        }
        self.define_times(file)?;
        for axis in [lat, lon].into_iter().chain(&self.levels) {
            define_axis(file, axis)?;
        }
        for var in &self.variables {
            let ch = &dataset.channels[var.channels[0]];
            let mut dims = vec!["time", "prediction_timedelta"];
            dims.extend(var.level_dim.as_deref());
            dims.extend([lat.name.as_str(), lon.name.as_str()]);
            let mut v = file.add_variable::<f32>(&var.name, &dims)?;
            v.put_attribute("_FillValue", FILL_VALUE)?;
            for (key, value) in [
                ("units", &ch.units),
                ("long_name", &ch.long_name),
                ("standard_name", &ch.standard_name),
            ] {
                if let Some(value) = value {
                    v.put_attribute(key, value.as_str())?;
                }
            }
            v.put_attribute("coordinates", "valid_time")?;
        }
        Ok(())
    }

    /// `time` (initialisation), `prediction_timedelta` (lead, decoded by xarray as a
    /// timedelta) and `valid_time` (initialisation + lead) with their values.
    fn define_times(&self, file: &mut netcdf::FileMut) -> anyhow::Result<()> {
        let since = format!("hours since {}", cf_datetime(self.reference));
        let calendar = cf_calendar(self.calendar);
        let mut v = file.add_variable::<f64>("time", &["time"])?;
        v.put_attribute("standard_name", "forecast_reference_time")?;
        v.put_attribute("long_name", "initialisation time")?;
        v.put_attribute("units", since.as_str())?;
        v.put_attribute("calendar", calendar)?;
        v.put_attribute("axis", "T")?;
        v.put_values(&self.init_hours, ..)?;
        define_lead_axis(file, "prediction_timedelta", &self.lead_seconds)?;
        let mut v = file.add_variable::<f64>("valid_time", &["time", "prediction_timedelta"])?;
        v.put_attribute("standard_name", "time")?;
        v.put_attribute("long_name", "valid time")?;
        v.put_attribute("units", since.as_str())?;
        v.put_attribute("calendar", calendar)?;
        let valid: Vec<f64> = self
            .init_hours
            .iter()
            .flat_map(|i| {
                self.lead_seconds
                    .iter()
                    .map(move |&l| i + l as f64 / 3600.0)
            })
            .collect();
        v.put_values(&valid, ..)?;
        Ok(())
    }

    /// Writes one state (`values[node * channels + c]` on the graph's `cells`, valid
    /// where `valid` says so, or everywhere without it) at initialisation `i`, lead `k`.
    pub fn write_state(
        &self,
        file: &mut netcdf::FileMut,
        (i, k): (usize, usize),
        cells: &[u32],
        values: &[f32],
        valid: Option<&[bool]>,
        channels: usize,
    ) -> anyhow::Result<()> {
        let size = self.axes.lat.values.len() * self.axes.lon.values.len();
        for var in &self.variables {
            for (l, &c) in var.channels.iter().enumerate() {
                let mut field = vec![FILL_VALUE; size];
                for (n, &cell) in cells.iter().enumerate() {
                    if valid.is_none_or(|v| v[n * channels + c]) {
                        field[self.axes.output_cell(cell as usize)] = values[n * channels + c];
                    }
                }
                let mut extent = vec![Extent::from(i..i + 1), Extent::from(k..k + 1)];
                if var.level_dim.is_some() {
                    extent.push(Extent::from(l..l + 1));
                }
                extent.extend([Extent::from(..), Extent::from(..)]);
                let mut v = file.variable_mut(&var.name).expect("defined");
                v.put_values(&field, extent.as_slice())?;
            }
        }
        Ok(())
    }
}

/// Adds a level axis, reusing an identical one; a different axis of the same name
/// gets a numbered name. Returns the dimension's name.
fn add_level_axis(levels: &mut Vec<OutputAxis>, mut axis: OutputAxis) -> String {
    let same = |a: &OutputAxis, b: &OutputAxis| a.name == b.name && a.values == b.values;
    if let Some(existing) = levels.iter().find(|l| same(l, &axis)) {
        return existing.name.clone();
    }
    let base = axis.name.clone();
    let mut k = 1;
    while levels.iter().any(|l| l.name == axis.name) {
        axis.name = format!("{base}_{k}");
        k += 1;
    }
    let name = axis.name.clone();
    levels.push(axis);
    name
}

/// A coordinate variable with the input's value type and attributes.
fn define_axis(file: &mut netcdf::FileMut, axis: &OutputAxis) -> anyhow::Result<()> {
    let dims = [axis.name.as_str()];
    let mut v = match axis.value_type {
        CoordinateType::F32 => {
            let mut v = file.add_variable::<f32>(&axis.name, &dims)?;
            let values: Vec<f32> = axis.values.iter().map(|&x| x as f32).collect();
            v.put_values(&values, ..)?;
            v
        }
        CoordinateType::F64 => {
            let mut v = file.add_variable::<f64>(&axis.name, &dims)?;
            v.put_values(&axis.values, ..)?;
            v
        }
        CoordinateType::I32 => {
            let mut v = file.add_variable::<i32>(&axis.name, &dims)?;
            let values: Vec<i32> = axis.values.iter().map(|&x| x as i32).collect();
            v.put_values(&values, ..)?;
            v
        }
        CoordinateType::I64 => {
            let mut v = file.add_variable::<i64>(&axis.name, &dims)?;
            let values: Vec<i64> = axis.values.iter().map(|&x| x as i64).collect();
            v.put_values(&values, ..)?;
            v
        }
    };
    for (key, value) in &axis.attributes {
        v.put_attribute(key, AttributeValue::clone(value))?;
    }
    Ok(())
}

/// Lead-time coordinate `name` (its dimension already defined) with `lead_seconds`:
/// int64 in the largest unit that counts every lead exactly, which xarray decodes as a
/// timedelta.
pub(in crate::eval) fn define_lead_axis(
    file: &mut netcdf::FileMut,
    name: &str,
    lead_seconds: &[i64],
) -> anyhow::Result<()> {
    let (unit, seconds) = timedelta_unit(lead_seconds);
    let mut v = file.add_variable::<i64>(name, &[name])?;
    v.put_attribute("standard_name", "forecast_period")?;
    v.put_attribute("long_name", "lead time")?;
    v.put_attribute("units", unit)?;
    // What xarray writes for a timedelta, and what makes it decode one.
    v.put_attribute("dtype", "timedelta64[ns]")?;
    let leads: Vec<i64> = lead_seconds.iter().map(|l| l / seconds).collect();
    v.put_values(&leads, ..)?;
    Ok(())
}

/// The largest of hours, minutes and seconds that counts every lead exactly, and its
/// length in seconds.
fn timedelta_unit(leads: &[i64]) -> (&'static str, i64) {
    [("hours", 3600), ("minutes", 60)]
        .into_iter()
        .find(|(_, s)| leads.iter().all(|l| l % s == 0))
        .unwrap_or(("seconds", 1))
}

/// `1996-01-05 00:00:00`: the reference of CF time units.
fn cf_datetime(d: DateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        d.year, d.month, d.day, d.hour, d.minute, d.second
    )
}

fn cf_calendar(c: Calendar) -> &'static str {
    use Calendar::*;
    match c {
        ProlepticGregorian => "proleptic_gregorian",
        Julian => "julian",
        NoLeap => "noleap",
        AllLeap => "all_leap",
        Day360 => "360_day",
    }
}
