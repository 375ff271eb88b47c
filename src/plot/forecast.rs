//! `plot forecast FC.nc --truth DATA... --variable V`: one field of a forecast file
//! (meshcast's WeatherBench2 layout) at one initialisation, lead and level, the truth
//! read from the data files at the valid time and matched point by point on the
//! coordinates, and their difference: three maps ([`super::map`]).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::map::{MapField, Maps};
use super::render;
use crate::data::source::{
    attr_numbers, attr_string, describe_variable, gridded_variables, open_file, LevelChoice,
    ReadOptions, Store,
};
use crate::data::time::{Calendar, DateTime, Instant, TimeUnits};
use crate::error::InputError;

/// Which field of the forecast file to draw.
#[derive(Debug, Clone, Default)]
pub struct ForecastPick {
    /// Variable name in the forecast file.
    pub variable: String,
    /// Its name in the truth files, when it differs (an alias given at training).
    pub truth_variable: Option<String>,
    /// Level coordinate value; needed when the variable has several levels.
    pub level: Option<f64>,
    /// Lead in hours [default: the longest].
    pub lead_hours: Option<f64>,
    /// Initialisation time [default: the first].
    pub init_time: Option<String>,
}

/// One 2-D field of the forecast file, in the file's own order (`[lat][lon]`).
struct ForecastField {
    lat: Vec<f64>,
    lon: Vec<f64>,
    /// NaN where the forecast has no value (`_FillValue`).
    values: Vec<f64>,
    units: Option<String>,
    long_name: String,
    /// The level's value and its units, when the variable has levels.
    level: Option<(f64, Option<String>)>,
    init: DateTime,
    lead_seconds: i64,
    valid: DateTime,
    calendar: Calendar,
}

/// Draws forecast, truth and error maps of `pick` to `out`.
pub fn plot_forecast(
    forecast: &Path,
    truth: &[PathBuf],
    pick: &ForecastPick,
    out: &Path,
) -> anyhow::Result<()> {
    let field = read_forecast(forecast, pick)?;
    let name = pick.truth_variable.as_deref().unwrap_or(&pick.variable);
    let truth_values = read_truth(truth, name, &field)?;
    let maps = Maps::new(
        field.lat.clone(),
        field.lon.clone(),
        MapField::new(titles(&field, pick), field.values.clone(), truth_values),
        field.units.clone(),
    );
    tracing::info!("{}", maps.error_summary());
    render(out, &maps).with_context(|| format!("{}: cannot draw the plot", out.display()))
}

/// The three panels' titles.
fn titles(field: &ForecastField, pick: &ForecastPick) -> [String; 3] {
    let level = field.level.as_ref().map_or(String::new(), |(v, units)| {
        format!(
            " {v}{}",
            units.as_deref().map_or(String::new(), |u| format!(" {u}"))
        )
    });
    let hours = field.lead_seconds as f64 / 3600.0;
    let long_name = match field.long_name == pick.variable {
        true => String::new(),
        false => format!(" ({})", field.long_name),
    };
    [
        format!(
            "forecast {}{level}{long_name}, init {} +{hours} h",
            pick.variable, field.init
        ),
        format!(
            "truth at {} ({})",
            field.valid,
            calendar_name(field.calendar)
        ),
        "forecast − truth".to_string(),
    ]
}

fn calendar_name(c: Calendar) -> &'static str {
    match c {
        Calendar::ProlepticGregorian => "gregorian",
        Calendar::Julian => "julian",
        Calendar::NoLeap => "noleap",
        Calendar::AllLeap => "all_leap",
        Calendar::Day360 => "360_day",
    }
}

/// Reads the picked field of the forecast file.
fn read_forecast(path: &Path, pick: &ForecastPick) -> anyhow::Result<ForecastField> {
    let file = open_file(path)?;
    let err = |problem: String| InputError::file(path, problem);
    let var = file.variable(&pick.variable).ok_or_else(|| {
        err(format!(
            "no variable '{}' (variables: {})",
            pick.variable,
            gridded_variables(&file).join(", ")
        ))
    })?;
    let dims: Vec<String> = var.dims().into_iter().map(|(d, _)| d).collect();
    if !(4..=5).contains(&dims.len()) || dims[0] != "time" || dims[1] != "prediction_timedelta" {
        return Err(err(format!(
            "'{}' has dimensions ({}), not a meshcast forecast's (time, prediction_timedelta, \
             [level,] latitude, longitude)",
            pick.variable,
            dims.join(", ")
        ))
        .into());
    }
    let (calendar, inits) = init_times(&file).map_err(err)?;
    let i = pick_init(&inits, calendar, pick.init_time.as_deref()).map_err(err)?;
    let leads = lead_seconds(&file).map_err(err)?;
    let k = pick_lead(&leads, pick.lead_hours).map_err(err)?;
    let level = match dims.len() {
        5 => Some(pick_level(&file, &dims[2], pick).map_err(err)?),
        _ if pick.level.is_some() => {
            return Err(err(format!("'{}' has no level dimension", pick.variable)).into())
        }
        _ => None,
    };
    let coordinate = |name: &str| coordinate(&file, name).map_err(err);
    let (lat, lon) = (
        coordinate(&dims[dims.len() - 2])?,
        coordinate(&dims[dims.len() - 1])?,
    );
    let mut ranges = vec![i..i + 1, k..k + 1];
    ranges.extend(level.as_ref().map(|(l, ..)| *l..*l + 1));
    ranges.extend([0..lat.len(), 0..lon.len()]);
    let raw: Vec<f64> = var
        .read(&ranges)
        .map_err(|e| err(format!("cannot read '{}': {e}", pick.variable)))?;
    let fill = attr_numbers(&var, "_FillValue").and_then(|f| f.first().copied());
    let init = DateTime::from_instant(inits[i], calendar);
    let valid = Instant {
        seconds: inits[i].seconds + leads[k],
    };
    Ok(ForecastField {
        lat,
        lon,
        values: raw
            .into_iter()
            .map(|v| if Some(v) == fill { f64::NAN } else { v })
            .collect(),
        units: attr_string(&var, "units"),
        long_name: attr_string(&var, "long_name").unwrap_or_else(|| pick.variable.clone()),
        level: level.map(|(_, value, units)| (value, units)),
        init,
        lead_seconds: leads[k],
        valid: DateTime::from_instant(valid, calendar),
        calendar,
    })
}

/// The values of coordinate variable `name` as f64.
fn coordinate(file: &Store, name: &str) -> Result<Vec<f64>, String> {
    let var = file
        .variable(name)
        .ok_or_else(|| format!("no coordinate variable '{name}'"))?;
    var.read_all()
        .map_err(|e| format!("cannot read coordinate '{name}': {e}"))
}

/// The calendar and the initialisation instants of the `time` coordinate.
fn init_times(file: &Store) -> Result<(Calendar, Vec<Instant>), String> {
    let var = file.variable("time").ok_or("no 'time' coordinate")?;
    let calendar = Calendar::parse(&attr_string(&var, "calendar").unwrap_or_default())?;
    let units = attr_string(&var, "units").ok_or("'time' has no units")?;
    let units = TimeUnits::parse(&units, calendar).map_err(|e| format!("'time': {e}"))?;
    let values = coordinate(file, "time")?;
    let inits = values.iter().map(|&v| units.instant(v));
    Ok((calendar, inits.collect::<Result<_, _>>()?))
}

/// The leads of `prediction_timedelta` in seconds.
fn lead_seconds(file: &Store) -> Result<Vec<i64>, String> {
    let var = file
        .variable("prediction_timedelta")
        .ok_or("no 'prediction_timedelta' coordinate")?;
    let units = attr_string(&var, "units").unwrap_or_default();
    let seconds = match units.trim() {
        "days" => 86_400.0,
        "hours" => 3600.0,
        "minutes" => 60.0,
        "seconds" => 1.0,
        other => {
            return Err(format!(
                "'prediction_timedelta' has units '{other}', not a time span"
            ))
        }
    };
    let values = coordinate(file, "prediction_timedelta")?;
    Ok(values
        .iter()
        .map(|&v| (v * seconds).round() as i64)
        .collect())
}

fn pick_init(inits: &[Instant], cal: Calendar, wanted: Option<&str>) -> Result<usize, String> {
    let Some(text) = wanted else { return Ok(0) };
    let at = DateTime::parse(text, cal)?.to_instant(cal);
    inits.iter().position(|&t| t == at).ok_or_else(|| {
        let list: Vec<String> = inits
            .iter()
            .map(|&t| DateTime::from_instant(t, cal).to_string())
            .collect();
        format!(
            "no initialisation at {text} (the file has {})",
            list.join(", ")
        )
    })
}

fn pick_lead(leads: &[i64], hours: Option<f64>) -> Result<usize, String> {
    let Some(hours) = hours else {
        let longest = leads.iter().enumerate().max_by_key(|(_, &l)| l);
        return longest
            .map(|(k, _)| k)
            .ok_or("the file has no leads".into());
    };
    let wanted = (hours * 3600.0).round() as i64;
    leads.iter().position(|&l| l == wanted).ok_or_else(|| {
        let list: Vec<String> = leads
            .iter()
            .map(|&l| format!("{}", l as f64 / 3600.0))
            .collect();
        format!("no lead of {hours} h (leads in hours: {})", list.join(", "))
    })
}

/// The index, value and units of the picked level on level dimension `dim`.
fn pick_level(
    file: &Store,
    dim: &str,
    pick: &ForecastPick,
) -> Result<(usize, f64, Option<String>), String> {
    let values = coordinate(file, dim)?;
    let units = file.variable(dim).and_then(|v| attr_string(&v, "units"));
    let list = || {
        let l: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        l.join(", ")
    };
    let index = match pick.level {
        None if values.len() == 1 => 0,
        None => {
            return Err(format!(
                "'{}' has levels {}: choose one with --level",
                pick.variable,
                list()
            ))
        }
        Some(l) => values
            .iter()
            .position(|&v| (v - l).abs() <= 1e-6 * l.abs().max(1.0))
            .ok_or_else(|| format!("'{}' has no level {l} (levels: {})", pick.variable, list()))?,
    };
    Ok((index, values[index], units))
}

/// The truth at the forecast's valid time, on the forecast's points (file order).
fn read_truth(paths: &[PathBuf], name: &str, field: &ForecastField) -> anyhow::Result<Vec<f64>> {
    let options = ReadOptions {
        levels: field
            .level
            .as_ref()
            .map(|(v, _)| LevelChoice::values(vec![*v])),
        ..Default::default()
    };
    for path in paths {
        let file = open_file(path)?;
        if file.variable(name).is_none() {
            continue;
        }
        let source = describe_variable(&file, path, name, None, &options)?;
        let valid = field.valid.to_instant(source.time.calendar);
        let Some(t) = source.time.instants.iter().position(|&i| i == valid) else {
            continue;
        };
        let err = |problem: String| InputError::file(path, problem);
        if let (Some(a), Some(b)) = (&field.units, &source.units) {
            if a != b {
                return Err(err(format!("'{name}' is in {b}, the forecast in {a}")).into());
            }
        }
        let (nlat, nlon) = source.grid_shape();
        let mut values = vec![0.0f32; nlat * nlon];
        let mut valid_cells = vec![false; nlat * nlon];
        source.read_step(&file, t, &mut values, &mut valid_cells)?;
        let lat_index = match_points(&field.lat, &source.lat.values, 0.0).map_err(err)?;
        let lon_index = match_points(&field.lon, &source.lon.values, 360.0).map_err(err)?;
        let at = |i: usize, j: usize| {
            let cell = lat_index[i] * nlon + lon_index[j];
            if valid_cells[cell] {
                values[cell] as f64
            } else {
                f64::NAN
            }
        };
        let nlon_fc = field.lon.len();
        return Ok((0..field.values.len())
            .map(|c| at(c / nlon_fc, c % nlon_fc))
            .collect());
    }
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    crate::bail_input!(
        "--truth {}: no file has '{name}' at {} (the forecast's valid time)",
        files.join(" "),
        field.valid
    )
}

/// For each forecast coordinate, the index of the same value on the truth's axis
/// (`period` 360 for longitudes, which match modulo a full turn).
fn match_points(forecast: &[f64], truth: &[f64], period: f64) -> Result<Vec<usize>, String> {
    let same = |a: f64, b: f64| {
        let d = (a - b).abs();
        let d = if period > 0.0 {
            d.rem_euclid(period)
        } else {
            d
        };
        d.min(if period > 0.0 { period - d } else { d }) < 1e-3
    };
    forecast
        .iter()
        .map(|&x| {
            truth.iter().position(|&y| same(x, y)).ok_or_else(|| {
                let axis = if period > 0.0 {
                    "longitude"
                } else {
                    "latitude"
                };
                format!("the truth grid has no point at {axis} {x} of the forecast's grid")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longitudes_match_modulo_a_full_turn_and_a_missing_point_is_named() {
        let truth = [-10.0, -5.0, 0.0, 5.0];
        assert_eq!(
            match_points(&[355.0, 0.0, 350.0], &truth, 360.0).unwrap(),
            [1, 2, 0]
        );
        let e = match_points(&[2.5], &truth, 360.0).unwrap_err();
        assert!(e.contains("longitude 2.5"), "{e}");
        assert!(match_points(&[355.0], &truth, 0.0).is_err());
    }

    #[test]
    fn the_longest_lead_is_the_default_and_a_missing_one_lists_the_leads() {
        assert_eq!(pick_lead(&[0, 21_600, 43_200], None).unwrap(), 2);
        assert_eq!(pick_lead(&[0, 21_600, 43_200], Some(6.0)).unwrap(), 1);
        let e = pick_lead(&[0, 21_600], Some(24.0)).unwrap_err();
        assert!(e.contains("0, 6"), "{e}");
    }
}
