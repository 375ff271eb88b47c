//! `eval --output scores.nc`: the scores in WeatherBench2's results layout, so the
//! plotting code written for WeatherBench2 reads them: one data variable per variable,
//! dimensions `(system, metric, region, lead_time[, level])`, `lead_time` decoded by
//! xarray as a timedelta, one `level` coordinate for every multi-level variable, and
//! the report's header as global attributes. WeatherBench2 writes one file per forecast
//! system; here `system` (model, persistence, climatology) is a dimension of one file.

use std::path::Path;

use super::forecast::layout::define_lead_axis;
use super::report::{EvalReport, ScoreRecord, SYSTEMS};

/// The metrics, in the file's order.
const METRICS: [&str; 3] = ["rmse", "bias", "acc"];

/// Writes `report` to `out`; `region` names the scored grid (`global`, or `region` for
/// a regional grid).
pub fn write_scores_netcdf(report: &EvalReport, region: &str, out: &Path) -> anyhow::Result<()> {
    crate::util::write_netcdf_atomic(out, "the scores", |file| {
        define_and_write(report, region, file)
    })
}

/// The coordinates: leads in seconds, levels (empty when no variable has levels) and
/// the variables in the order first scored.
struct ScoreAxes {
    lead_seconds: Vec<i64>,
    levels: Vec<f64>,
    variables: Vec<String>,
}

impl ScoreAxes {
    fn of(records: &[ScoreRecord]) -> ScoreAxes {
        let mut axes = ScoreAxes {
            lead_seconds: Vec::new(),
            levels: Vec::new(),
            variables: Vec::new(),
        };
        for r in records {
            let lead = (r.lead_hours * 3600.0).round() as i64;
            if !axes.lead_seconds.contains(&lead) {
                axes.lead_seconds.push(lead);
            }
            if let Some(l) = r.level.filter(|l| !axes.levels.contains(l)) {
                axes.levels.push(l);
            }
            if !axes.variables.contains(&r.variable) {
                axes.variables.push(r.variable.clone());
            }
        }
        axes.lead_seconds.sort_unstable();
        axes
    }
}

fn define_and_write(
    report: &EvalReport,
    region: &str,
    file: &mut netcdf::FileMut,
) -> anyhow::Result<()> {
    let axes = ScoreAxes::of(&report.records);
    let labels: [(&str, &[&str]); 3] = [
        ("system", &SYSTEMS),
        ("metric", &METRICS),
        ("region", &[region]),
    ];
    for (name, values) in labels {
        file.add_dimension(name, values.len())?;
        let mut v = file.add_string_variable(name, &[name])?;
        for (i, value) in values.iter().enumerate() {
            v.put_string(value, [i])?;
        }
    }
    file.add_dimension("lead_time", axes.lead_seconds.len())?;
    define_lead_axis(file, "lead_time", &axes.lead_seconds)?;
    if !axes.levels.is_empty() {
        file.add_dimension("level", axes.levels.len())?;
        let mut v = file.add_variable::<f64>("level", &["level"])?;
        v.put_attribute("axis", "Z")?;
        v.put_values(&axes.levels, ..)?;
    }
    for variable in &axes.variables {
        write_variable(file, &axes, report, variable)?;
    }
    write_header(file, report)
}

/// One variable's scores; NaN where a score is undefined (the climatology's ACC) or a
/// variable lacks a level.
fn write_variable(
    file: &mut netcdf::FileMut,
    axes: &ScoreAxes,
    report: &EvalReport,
    variable: &str,
) -> anyhow::Result<()> {
    let records = || report.records.iter().filter(|r| r.variable == variable);
    let has_levels = records().any(|r| r.level.is_some());
    let mut dims = vec!["system", "metric", "region", "lead_time"];
    let levels = if has_levels {
        dims.push("level");
        axes.levels.len()
    } else {
        1
    };
    let size = SYSTEMS.len() * METRICS.len() * axes.lead_seconds.len() * levels;
    let mut values = vec![f64::NAN; size];
    for r in records() {
        let position = |list: &[&str], x: &str| list.iter().position(|&y| y == x);
        let lead = (r.lead_hours * 3600.0).round() as i64;
        let (Some(s), Some(m), Some(k)) = (
            position(&SYSTEMS, r.system),
            position(&METRICS, r.metric),
            axes.lead_seconds.iter().position(|&l| l == lead),
        ) else {
            continue;
        };
        let l = r
            .level
            .and_then(|l| axes.levels.iter().position(|&x| x == l))
            .unwrap_or(0);
        let index = ((s * METRICS.len() + m) * axes.lead_seconds.len() + k) * levels + l;
        values[index] = r.value;
    }
    let mut v = file.add_variable::<f64>(variable, &dims)?;
    v.put_attribute("_FillValue", f64::NAN)?;
    let units = records()
        .find(|r| r.metric == "rmse")
        .and_then(|r| r.units.clone());
    if let Some(units) = units {
        v.put_attribute("units", units.as_str())?;
    }
    v.put_attribute("comment", "rmse and bias in units; acc dimensionless")?;
    v.put_values(&values, ..)?;
    Ok(())
}

/// What was scored, as global attributes.
fn write_header(file: &mut netcdf::FileMut, report: &EvalReport) -> anyhow::Result<()> {
    let first_last = |v: &[String]| match (v.first(), v.last()) {
        (Some(a), Some(b)) => format!("{a} to {b}"),
        _ => String::new(),
    };
    let text = [
        ("title", "meshcast eval scores".to_string()),
        ("source", format!("meshcast {}", report.meshcast_version)),
        ("checkpoint", report.checkpoint.clone()),
        ("data_files", report.data_files.join(" ")),
        ("split", report.period.split.name().to_string()),
        ("start", report.period.start.clone().unwrap_or_default()),
        ("end", report.period.end.clone().unwrap_or_default()),
        ("initial_times", first_last(&report.initial_times)),
        ("climatology", report.climatology.clone()),
    ];
    for (key, value) in text.iter().filter(|(_, v)| !v.is_empty()) {
        file.add_attribute(key, value.as_str())?;
    }
    file.add_attribute("checkpoint_step", report.checkpoint_step as i64)?;
    file.add_attribute("initial_time_count", report.initial_times.len() as i64)?;
    Ok(())
}
