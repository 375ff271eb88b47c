//! `forecast`: one rollout from an initial time, written as CF-NetCDF step by step.

use std::path::{Path, PathBuf};

use anyhow::Context;
use netcdf::Extent;

use super::{Loaded, NodeReader};
use crate::data::generate::FILL_VALUE;
use crate::predict::{NormalisedResidual, Rollout};

/// Writes a `steps`-step forecast from `init` (index on the data's time axis) to `out`:
/// CF-NetCDF with time, lat, lon and every variable (with units, `_FillValue` where the
/// grid cell is not a graph node), one time step written as soon as it is computed.
pub fn forecast(loaded: &Loaded, init: usize, steps: usize, out: &Path) -> anyhow::Result<PathBuf> {
    let s = &loaded.session;
    let window = loaded.meta.run.window;
    if init + 1 < window.input_steps {
        crate::bail_input!(
            "the initial time needs {} earlier steps of data",
            window.input_steps - 1
        );
    }
    let (cells, channels, grid) = (
        s.graph.grid_map.cells(),
        loaded.stats.channels.len(),
        &s.dataset.grid,
    );
    let history = NodeReader::new(s, channels).history(init, window.input_steps)?;
    let mut rollout = Rollout::new(vec![history]);
    let model = NormalisedResidual {
        predictor: s.predictor.as_ref(),
        stats: &loaded.stats,
    };
    let tmp = crate::util::temp_path(out);
    let ctx = || format!("{}: cannot write the forecast", out.display());
    let mut file = netcdf::create(&tmp).with_context(ctx)?;
    let step_hours =
        (s.dataset.time.step_seconds().unwrap_or(0) * window.lead_steps as i64) as f64 / 3600.0;
    define_forecast(&mut file, loaded, init)?;
    let bar = crate::util::progress_bar(true, steps, "forecast: steps");
    for k in 0..steps {
        bar.inc(1);
        rollout.step(&model)?;
        let next = rollout.current(0);
        file.variable_mut("time")
            .expect("defined")
            .put_values(&[(k + 1) as f64 * step_hours], k..k + 1)?;
        for (c, ch) in s.dataset.channels.iter().enumerate() {
            let mut field = vec![FILL_VALUE; grid.len()];
            for (n, &cell) in cells.iter().enumerate() {
                field[cell as usize] = next.values[n * channels + c];
            }
            let extent = [Extent::from(k..k + 1), (..).into(), (..).into()];
            file.variable_mut(&ch.name)
                .expect("defined")
                .put_values(&field, extent)
                .with_context(ctx)?;
        }
        tracing::info!(
            "forecast step {}/{steps} (+{} h) written",
            k + 1,
            (k + 1) as f64 * step_hours
        );
    }
    file.close().with_context(ctx)?;
    std::fs::rename(&tmp, out).with_context(ctx)?;
    Ok(out.to_path_buf())
}

/// Attributes, dimensions, coordinates and variables of the forecast file.
fn define_forecast(file: &mut netcdf::FileMut, loaded: &Loaded, init: usize) -> anyhow::Result<()> {
    let s = &loaded.session;
    let grid = &s.dataset.grid;
    let init_time = s.dataset.time.datetime(init);
    file.add_attribute("Conventions", "CF-1.8")?;
    file.add_attribute("title", "meshcast forecast")?;
    file.add_attribute(
        "source",
        format!(
            "meshcast {} checkpoint step {}",
            env!("CARGO_PKG_VERSION"),
            loaded.meta.step
        ),
    )?;
    file.add_attribute("forecast_reference_time", init_time.to_string())?;
    file.add_unlimited_dimension("time")?;
    file.add_dimension("lat", grid.nlat())?;
    file.add_dimension("lon", grid.nlon())?;
    let mut v = file.add_variable::<f64>("time", &["time"])?;
    v.put_attribute("standard_name", "time")?;
    v.put_attribute("units", format!("hours since {init_time}:00"))?;
    v.put_attribute("calendar", cf_calendar(s.dataset.time.calendar))?;
    v.put_attribute("axis", "T")?;
    let mut v = file.add_variable::<f64>("lat", &["lat"])?;
    v.put_attribute("standard_name", "latitude")?;
    v.put_attribute("units", "degrees_north")?;
    let mut v = file.add_variable::<f64>("lon", &["lon"])?;
    v.put_attribute("standard_name", "longitude")?;
    v.put_attribute("units", "degrees_east")?;
    for ch in &s.dataset.channels {
        let mut v = file.add_variable::<f32>(&ch.name, &["time", "lat", "lon"])?;
        v.put_attribute("_FillValue", FILL_VALUE)?;
        if let Some(u) = &ch.units {
            v.put_attribute("units", u.as_str())?;
        }
        if let Some(l) = &ch.long_name {
            v.put_attribute("long_name", l.as_str())?;
        }
    }
    file.enddef()?;
    file.variable_mut("lat")
        .expect("defined")
        .put_values(&grid.lat, ..)?;
    file.variable_mut("lon")
        .expect("defined")
        .put_values(&grid.lon, ..)?;
    Ok(())
}

fn cf_calendar(c: crate::data::time::Calendar) -> &'static str {
    use crate::data::time::Calendar::*;
    match c {
        ProlepticGregorian => "proleptic_gregorian",
        Julian => "julian",
        NoLeap => "noleap",
        AllLeap => "all_leap",
        Day360 => "360_day",
    }
}
