//! `forecast`: rollouts from one or many initial times, written as CF-NetCDF in the
//! WeatherBench2 layout and the input's own conventions ([`layout`]), lead by lead, so
//! memory stays bounded by one state whatever the number of steps and initialisations.

pub(super) mod layout;

use std::path::{Path, PathBuf};

use super::{Loaded, NodeReader};
use crate::predict::{NormalisedResidual, Rollout};
use layout::Layout;

/// What to forecast: initial times (indices on the data's time axis), model steps from
/// each, and whether the initial state is written at lead 0.
#[derive(Debug, Clone)]
pub struct ForecastRequest {
    pub inits: Vec<usize>,
    pub steps: usize,
    pub include_initial: bool,
}

/// Writes the forecasts of `request` to `out` (through a temporary file renamed at
/// the end, so an interrupted run leaves no half file under the final name).
pub fn forecast(loaded: &Loaded, request: &ForecastRequest, out: &Path) -> anyhow::Result<PathBuf> {
    let s = &loaded.session;
    let window = loaded.meta.run.window;
    check_inits(loaded, &request.inits)?;
    window.check_rollout(request.steps)?;
    let Some(step_seconds) = s.dataset.time.step_seconds() else {
        crate::bail_input!("the data has a single time step: no lead time to forecast");
    };
    let model_step = step_seconds * window.lead_steps as i64;
    let first_lead = usize::from(!request.include_initial);
    let leads = (first_lead..=request.steps).map(|k| k as i64 * model_step);
    let layout = Layout::new(&s.dataset, &request.inits, leads.collect())?;

    crate::util::write_netcdf_atomic(out, "the forecast", |file| {
        define_and_write(loaded, request, &layout, file)
    })?;
    Ok(out.to_path_buf())
}

/// Refuses initial times without the history the model needs, naming the earliest.
fn check_inits(loaded: &Loaded, inits: &[usize]) -> anyhow::Result<()> {
    let earlier = loaded.meta.run.window.history_span() - 1;
    let time = &loaded.session.dataset.time;
    if inits.is_empty() {
        crate::bail_input!("no initial time given");
    }
    if let Some(&bad) = inits.iter().find(|&&i| i < earlier) {
        crate::bail_input!(
            "initial time {} needs {earlier} earlier steps of data; the earliest possible is {}",
            time.datetime(bad),
            time.datetime(earlier)
        );
    }
    Ok(())
}

/// Defines the file, then rolls out from each initial time, writing every lead as it
/// is computed.
fn define_and_write(
    loaded: &Loaded,
    request: &ForecastRequest,
    layout: &Layout,
    file: &mut netcdf::FileMut,
) -> anyhow::Result<()> {
    let s = &loaded.session;
    let channels = loaded.stats.channels.len();
    let cells = s.graph.grid_map.cells();
    layout.define(file, &s.dataset)?;
    let model = NormalisedResidual {
        predictor: s.predictor.as_ref(),
        stats: &loaded.stats,
        extras: &s.extras,
    };
    let mut reader = NodeReader::new(s, channels);
    let total = request.inits.len() * request.steps;
    let bar = crate::util::progress_bar(true, total, "forecast: steps");
    for (i, &init) in request.inits.iter().enumerate() {
        let history = reader.history(init, &loaded.meta.run.window)?;
        let mut rollout = Rollout::new(vec![history]);
        if request.include_initial {
            let state = rollout.current(0);
            layout.write_state(
                file,
                (i, 0),
                cells,
                &state.values,
                Some(&state.valid),
                channels,
            )?;
        }
        for k in 1..=request.steps {
            bar.inc(1);
            rollout.step(&model)?;
            let lead = k - usize::from(!request.include_initial);
            let state = rollout.current(0);
            layout.write_state(file, (i, lead), cells, &state.values, None, channels)?;
            tracing::info!(
                "forecast from {}: step {k}/{} (+{} h) written",
                s.dataset.time.datetime(init),
                request.steps,
                layout.lead_seconds[lead] as f64 / 3600.0
            );
        }
    }
    Ok(())
}
