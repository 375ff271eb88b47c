//! Evaluation and forecasting from a checkpoint.
//!
//! [`evaluate`] rolls the model out from every initial time of the test block and scores
//! each variable and lead time with latitude-weighted RMSE, bias and anomaly correlation
//! (anomalies against the training block's per-cell climatology), next to persistence
//! and climatology baselines. [`forecast`] writes one rollout as CF-NetCDF, step by step.

pub mod rollout;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use netcdf::Extent;
use serde::Serialize;

use crate::data::time::format_step;
use crate::data::{DataSpec, Dataset, NormStats, Split, StepReader};
use crate::error::InputError;
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::session::Session;
use rollout::{step, NodeState};

/// A model restored from a checkpoint, with its data.
pub struct Loaded {
    pub session: Session,
    pub stats: NormStats,
    pub meta: CheckpointMeta,
}

/// Loads checkpoint `name` found at `path`; `data` (if given) replaces the checkpoint's
/// data, which must then have the same channels and grid; `patches` (count, halo in
/// degrees) runs inference patch by patch, whatever the run trained with.
pub fn load(
    path: &Path,
    name: &str,
    data: Option<DataSpec>,
    patches: Option<(usize, f64)>,
    graph_cache: Option<&Path>,
    device: &Device,
) -> anyhow::Result<Loaded> {
    let (dir, name) = checkpoint::locate(path, name)?;
    let ck = checkpoint::load(&dir, &name, device)?;
    let mut run = ck.meta.run.clone();
    if let Some(d) = data {
        run.data = d;
    }
    if let Some((n, halo)) = patches {
        (run.train.patches, run.train.patch_halo) = (n, halo);
    }
    let dataset = Arc::new(Dataset::open(&run.data)?);
    if dataset.channel_names() != ck.meta.stats.channels {
        return Err(InputError(format!(
            "{}: the data has variables [{}], the checkpoint was trained on [{}]",
            dataset.file_list(),
            dataset.channel_names().join(", "),
            ck.meta.stats.channels.join(", ")
        ))
        .into());
    }
    let session = Session::new(&run, dataset, graph_cache, device)?;
    ck.restore_weights(&session.vars)?;
    tracing::info!(
        "loaded {}/{name} (step {}, epoch {})",
        dir.display(),
        ck.meta.step,
        ck.meta.epoch
    );
    Ok(Loaded {
        session,
        stats: ck.meta.stats.clone(),
        meta: ck.meta,
    })
}

/// Scores of one forecast system for one variable at one lead.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub rmse: f64,
    pub bias: f64,
    pub acc: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeadScores {
    pub lead_steps: usize,
    pub lead_hours: f64,
    pub model: Scores,
    pub persistence: Scores,
    pub climatology: Scores,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub checkpoint_step: usize,
    pub initial_times: Vec<String>,
    pub rollout_steps: usize,
    pub variables: BTreeMap<String, Vec<LeadScores>>,
}

/// Weighted sums from which RMSE, bias and ACC follow.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    w: f64,
    err: f64,
    sq: f64,
    fa_oa: f64,
    fa2: f64,
    oa2: f64,
}

impl Sums {
    fn add(&mut self, w: f64, forecast: f64, truth: f64, clim: f64) {
        let (fa, oa) = (forecast - clim, truth - clim);
        self.w += w;
        self.err += w * (forecast - truth);
        self.sq += w * (forecast - truth).powi(2);
        self.fa_oa += w * fa * oa;
        self.fa2 += w * fa * fa;
        self.oa2 += w * oa * oa;
    }

    fn scores(&self) -> Scores {
        let w = self.w.max(1e-300);
        let denom = (self.fa2 * self.oa2).sqrt();
        Scores {
            rmse: (self.sq / w).sqrt(),
            bias: self.err / w,
            acc: if denom > 0.0 { self.fa_oa / denom } else { 0.0 },
        }
    }
}

/// Per-cell mean of every channel over the training block (the climatology), on graph nodes.
fn climatology(loaded: &Loaded) -> anyhow::Result<NodeState> {
    let s = &loaded.session;
    let (cells, channels, grid_cells) = (
        s.graph.grid_map.cells(),
        loaded.stats.channels.len(),
        s.dataset.grid.len(),
    );
    let (mut sum, mut count) = (
        vec![0f64; cells.len() * channels],
        vec![0u32; cells.len() * channels],
    );
    let mut reader = StepReader::default();
    for t in s.splits.train.clone() {
        let state =
            NodeState::from_state(&reader.read(&s.dataset, t)?, cells, channels, grid_cells);
        for k in 0..sum.len() {
            if state.valid[k] {
                sum[k] += state.values[k] as f64;
                count[k] += 1;
            }
        }
    }
    Ok(NodeState {
        values: (0..sum.len())
            .map(|k| {
                if count[k] > 0 {
                    (sum[k] / count[k] as f64) as f32
                } else {
                    loaded.stats.mean[k % channels] as f32
                }
            })
            .collect(),
        valid: count.iter().map(|&n| n > 0).collect(),
    })
}

/// Rolls out `rollout_steps` model steps from every initial time of the test block that
/// leaves room for them, `batch_size` initial times at a time.
pub fn evaluate(
    loaded: &Loaded,
    rollout_steps: usize,
    batch_size: usize,
) -> anyhow::Result<EvalReport> {
    let s = &loaded.session;
    let window = loaded.meta.run.window;
    let lead = window.lead_steps;
    let test = s.splits.range(Split::Test);
    let inits: Vec<usize> = s
        .splits
        .samples(Split::Test)
        .into_iter()
        .filter(|&t0| t0 + rollout_steps * lead < test.end)
        .collect();
    if inits.is_empty() {
        return Err(InputError(format!(
            "{}: the test block (steps {}..{}) is too short for {} input steps and a {rollout_steps}-step rollout at lead {lead}",
            s.dataset.file_list(),
            test.start,
            test.end,
            window.input_steps
        ))
        .into());
    }
    let (cells, channels, grid_cells) = (
        s.graph.grid_map.cells(),
        loaded.stats.channels.len(),
        s.dataset.grid.len(),
    );
    let lat_w = s.node_latitude_weights();
    let clim = climatology(loaded)?;
    let mut reader = StepReader::default();
    let mut read = |t: usize| -> anyhow::Result<NodeState> {
        Ok(NodeState::from_state(
            &reader.read(&s.dataset, t)?,
            cells,
            channels,
            grid_cells,
        ))
    };
    // sums[lead][channel][system]: model, persistence, climatology.
    let mut sums = vec![vec![[Sums::default(); 3]; channels]; rollout_steps];
    for chunk in inits.chunks(batch_size.max(1)) {
        let mut histories: Vec<Vec<NodeState>> = chunk
            .iter()
            .map(|&t0| {
                (0..window.input_steps)
                    .map(|k| read(t0 + 1 + k - window.input_steps))
                    .collect()
            })
            .collect::<anyhow::Result<_>>()?;
        let initial: Vec<NodeState> = histories
            .iter()
            .map(|h| h.last().expect("history").clone())
            .collect();
        for (k, lead_sums) in sums.iter_mut().enumerate() {
            let next = step(s, &loaded.stats, &histories)?;
            for (i, &t0) in chunk.iter().enumerate() {
                let truth = read(t0 + (k + 1) * lead)?;
                for (n, &node_w) in lat_w.iter().enumerate() {
                    for (c, acc) in lead_sums.iter_mut().enumerate() {
                        let j = n * channels + c;
                        if !truth.valid[j] {
                            continue;
                        }
                        let (w, o, cl) =
                            (node_w as f64, truth.values[j] as f64, clim.values[j] as f64);
                        acc[0].add(w, next[i].values[j] as f64, o, cl);
                        if initial[i].valid[j] {
                            acc[1].add(w, initial[i].values[j] as f64, o, cl);
                        }
                        acc[2].add(w, cl, o, cl);
                    }
                }
                histories[i].remove(0);
                histories[i].push(next[i].clone());
            }
        }
    }
    let step_hours = s.dataset.time.step_seconds().unwrap_or(0) as f64 / 3600.0;
    let variables = loaded
        .stats
        .channels
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let leads = (0..rollout_steps)
                .map(|k| LeadScores {
                    lead_steps: (k + 1) * lead,
                    lead_hours: ((k + 1) * lead) as f64 * step_hours,
                    model: sums[k][c][0].scores(),
                    persistence: sums[k][c][1].scores(),
                    climatology: sums[k][c][2].scores(),
                })
                .collect();
            (name.clone(), leads)
        })
        .collect();
    Ok(EvalReport {
        checkpoint_step: loaded.meta.step,
        initial_times: inits
            .iter()
            .map(|&t| s.dataset.time.datetime(t).to_string())
            .collect(),
        rollout_steps,
        variables,
    })
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} forecasts from {} to {}, checkpoint step {}",
            self.initial_times.len(),
            self.initial_times.first().map_or("-", String::as_str),
            self.initial_times.last().map_or("-", String::as_str),
            self.checkpoint_step
        )?;
        writeln!(
            f,
            "{:<8} {:>6} {:>11} {:>11} {:>11} {:>9} {:>7} {:>7} {:>7}",
            "variable",
            "lead",
            "RMSE model",
            "persist.",
            "climat.",
            "bias",
            "ACC",
            "ACC p.",
            "ACC c."
        )?;
        for (name, leads) in &self.variables {
            for l in leads {
                writeln!(
                    f,
                    "{:<8} {:>5}h {:>11.4} {:>11.4} {:>11.4} {:>9.4} {:>7.3} {:>7.3} {:>7.3}",
                    name,
                    l.lead_hours,
                    l.model.rmse,
                    l.persistence.rmse,
                    l.climatology.rmse,
                    l.model.bias,
                    l.model.acc,
                    l.persistence.acc,
                    l.climatology.acc
                )?;
            }
        }
        Ok(())
    }
}

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
    let mut reader = StepReader::default();
    let mut history: Vec<NodeState> = (0..window.input_steps)
        .map(|k| {
            Ok(NodeState::from_state(
                &reader.read(&s.dataset, init + 1 + k - window.input_steps)?,
                cells,
                channels,
                grid.len(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let tmp = crate::util::temp_path(out);
    let ctx = || format!("{}: cannot write the forecast", out.display());
    let mut file = netcdf::create(&tmp).with_context(ctx)?;
    let init_time = s.dataset.time.datetime(init);
    let step_hours =
        (s.dataset.time.step_seconds().unwrap_or(0) * window.lead_steps as i64) as f64 / 3600.0;
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
        v.put_attribute("_FillValue", crate::data::generate::FILL_VALUE)?;
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
    for k in 0..steps {
        let next = step(s, &loaded.stats, std::slice::from_ref(&history))?.remove(0);
        file.variable_mut("time")
            .expect("defined")
            .put_values(&[(k + 1) as f64 * step_hours], k..k + 1)?;
        for (c, ch) in s.dataset.channels.iter().enumerate() {
            let mut field = vec![crate::data::generate::FILL_VALUE; grid.len()];
            for (n, &cell) in cells.iter().enumerate() {
                field[cell as usize] = next.values[n * channels + c];
            }
            let extent = [Extent::from(k..k + 1), (..).into(), (..).into()];
            file.variable_mut(&ch.name)
                .expect("defined")
                .put_values(&field, extent)
                .with_context(ctx)?;
        }
        history.remove(0);
        history.push(next);
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

/// Finds `--init-time` on the data's time axis.
pub fn find_time(dataset: &Dataset, text: &str) -> anyhow::Result<usize> {
    let cal = dataset.time.calendar;
    let wanted = crate::data::time::DateTime::parse(text, cal)
        .map_err(|e| InputError(format!("--init-time: {e}")))?;
    let instant = wanted.to_instant(cal);
    dataset
        .time
        .instants
        .iter()
        .position(|&t| t == instant)
        .ok_or_else(|| {
            InputError(format!(
                "--init-time {wanted} is not a time of the data ({} to {} every {})",
                dataset.time.datetime(0),
                dataset.time.datetime(dataset.time.len() - 1),
                dataset
                    .time
                    .step_seconds()
                    .map(format_step)
                    .unwrap_or_default()
            ))
            .into()
        })
}
