//! Evaluation and forecasting from a checkpoint.
//!
//! [`evaluate`] rolls the model out from every initial time of the test block and scores
//! each variable and lead time with latitude-weighted RMSE, bias and anomaly correlation
//! (anomalies against the training block's climatology, seasonal when it spans a year), next to persistence
//! and climatology baselines. [`forecast`] writes rollouts as CF-NetCDF in the input's conventions, step by step.

mod climatology;
mod forecast;
mod period;
mod report;
mod scores_netcdf;

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

pub use forecast::{forecast, ForecastRequest};
pub use period::{EvalPeriod, ScoredSplit};
pub use report::{EvalReport, ScoreRecord};
pub use scores_netcdf::write_scores_netcdf;

use crate::data::time::format_step;
use crate::data::{DataSpec, Dataset, NormStats, StepReader, WindowSpec};
use crate::distributed::{shard, Collective};
use crate::error::InputError;
use crate::graph::PatchOptions;
use crate::predict::{Execution, NodeState, NormalisedResidual, Rollout};
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::fits::check_inference_fits;
use crate::train::session::Session;

/// A model restored from a checkpoint, with its data.
pub struct Loaded {
    /// The checkpoint's sidecar file.
    pub checkpoint: std::path::PathBuf,
    pub session: Session,
    pub stats: NormStats,
    pub meta: CheckpointMeta,
}

/// Loads checkpoint `name` found at `path`; `data` (if given) replaces the checkpoint's
/// data, which must then have the same channels and grid. Inference runs on the whole
/// grid in the run's precision, or patch by patch with `patches`, whatever the run
/// trained with (a patched run's halo may be shorter than the receptive field). The
/// ranks of `collective` find the data's valid cells together, each reading its share
/// of the time steps.
pub fn load(
    path: &Path,
    name: &str,
    data: Option<DataSpec>,
    (patches, graph_cache): (Option<PatchOptions>, Option<&Path>),
    batch_size: usize,
    (device, collective): (&Device, &dyn Collective),
) -> anyhow::Result<Loaded> {
    let (dir, name) = checkpoint::locate(path, name)?;
    let ck = checkpoint::load(&dir, &name, device)?;
    let mut run = ck.meta.run.clone();
    run.validate()
        .map_err(|e| InputError::file(&dir, format!("damaged checkpoint: {e}")))?;
    let other_data = data.is_some();
    if let Some(d) = data {
        run.data = d;
    }
    let dataset = Arc::new(Dataset::open(&run.data)?);
    if other_data {
        // The run's periods may lie outside other data: those that do are left out.
        run.split = run.split.within(&dataset.time);
    }
    if dataset.channel_names() != ck.meta.stats.channels {
        return Err(InputError(format!(
            "{}: the data has variables [{}], the checkpoint was trained on [{}]",
            dataset.file_list(),
            dataset.channel_names().join(", "),
            ck.meta.stats.channels.join(", ")
        ))
        .into());
    }
    let mut execution = Execution {
        patches: None,
        ..run.execution()
    };
    if let Some(options) = patches {
        execution = execution.with_patches(options);
    }
    let valid = crate::train::session::valid_cells(&dataset, collective)?;
    let (splits, graph) = Session::graph(&run, &dataset, &valid, graph_cache)?;
    if let Some(available) = crate::memory::available_on(device) {
        check_inference_fits(
            &run,
            &execution,
            &graph,
            &dataset.grid,
            batch_size,
            &available,
        )?;
    }
    let session = Session::with_graph(&run, execution, dataset, splits, graph, device)?;
    ck.restore_weights(session.network().vars())?;
    tracing::info!(
        "loaded {}/{name} (step {}, epoch {})",
        dir.display(),
        ck.meta.step,
        ck.meta.epoch
    );
    Ok(Loaded {
        checkpoint: checkpoint::sidecar(&dir, &name),
        session,
        stats: ck.meta.stats.clone(),
        meta: ck.meta,
    })
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

    fn fields(&self) -> [f64; 6] {
        [self.w, self.err, self.sq, self.fa_oa, self.fa2, self.oa2]
    }

    fn from_fields(f: &[f64]) -> Sums {
        Sums {
            w: f[0],
            err: f[1],
            sq: f[2],
            fa_oa: f[3],
            fa2: f[4],
            oa2: f[5],
        }
    }

    fn scores(&self) -> report::Scores {
        let w = self.w.max(1e-300);
        let denom = (self.fa2 * self.oa2).sqrt();
        report::Scores {
            rmse: (self.sq / w).sqrt(),
            bias: self.err / w,
            acc: if denom > 0.0 { self.fa_oa / denom } else { 0.0 },
        }
    }
}

/// Reads dataset time steps as states on the graph's grid nodes.
struct NodeReader<'a> {
    session: &'a Session,
    channels: usize,
    reader: StepReader,
}

impl<'a> NodeReader<'a> {
    fn new(session: &'a Session, channels: usize) -> NodeReader<'a> {
        NodeReader {
            session,
            channels,
            reader: StepReader::default(),
        }
    }

    fn read(&mut self, t: usize) -> anyhow::Result<NodeState> {
        let s = self.session;
        let state = self.reader.read(&s.dataset, t)?;
        let cells = s.graph.grid_map.cells();
        Ok(NodeState::from_state(
            (&state, s.dataset.time.instants[t]),
            cells,
            self.channels,
            s.dataset.grid.len(),
        ))
    }

    /// The input states of `window` ending at `t0`, oldest first.
    fn history(&mut self, t0: usize, window: &WindowSpec) -> anyhow::Result<Vec<NodeState>> {
        (0..window.input_steps)
            .map(|k| self.read(window.input_time(t0, k)))
            .collect()
    }
}

/// Adds one lead's forecasts of one batch (model, persistence, climatology) against
/// `truth`, weighted by latitude.
fn score_lead(
    sums: &mut [[Sums; 3]],
    lat_w: &[f32],
    (model, initial, truth, clim): (&NodeState, &NodeState, &NodeState, &NodeState),
) {
    let channels = sums.len();
    for (n, &node_w) in lat_w.iter().enumerate() {
        for (c, acc) in sums.iter_mut().enumerate() {
            let j = n * channels + c;
            if !truth.valid[j] {
                continue;
            }
            let (w, o, cl) = (node_w as f64, truth.values[j] as f64, clim.values[j] as f64);
            acc[0].add(w, model.values[j] as f64, o, cl);
            if initial.valid[j] {
                acc[1].add(w, initial.values[j] as f64, o, cl);
            }
            acc[2].add(w, cl, o, cl);
        }
    }
}

/// Rolls out `rollout_steps` model steps from every initial time of `period` that
/// leaves room for them, `batch_size` initial times at a time, and scores each lead.
/// Several ranks each roll out their share of the initial times and add their sums.
pub fn evaluate(
    loaded: &Loaded,
    (rollout_steps, batch_size): (usize, usize),
    period: &EvalPeriod,
    collective: &dyn Collective,
) -> anyhow::Result<EvalReport> {
    let s = &loaded.session;
    loaded.meta.run.window.check_rollout(rollout_steps)?;
    let inits = period.initial_times(loaded, rollout_steps)?;
    let clim = climatology::Climatology::from_training_block(loaded)?;
    let baseline = crate::memory::reset_peak_on(&s.device);
    let share = &inits[shard(inits.len(), collective.rank(), collective.size())];
    let sizes = (rollout_steps, batch_size);
    let mut sums = rollout_sums(loaded, share, sizes, &clim, collective.rank() == 0)?;
    let graph_forwards = add_over_ranks(collective, &mut sums, s.predictor.graph_forwards())?;
    let rollout_peak_bytes = crate::memory::peak_on(&s.device)
        .zip(baseline)
        .map(|(p, b)| p.saturating_sub(b) as u64);
    let scores: Vec<Vec<[report::Scores; 3]>> = sums
        .iter()
        .map(|lead| lead.iter().map(|c| c.map(|x| x.scores())).collect())
        .collect();
    let step_hours = s.dataset.time.step_seconds().unwrap_or(0) as f64 / 3600.0;
    Ok(EvalReport {
        meshcast_version: env!("CARGO_PKG_VERSION"),
        checkpoint: loaded.checkpoint.display().to_string(),
        checkpoint_step: loaded.meta.step,
        data_files: s.dataset.files(),
        period: period.clone(),
        initial_times: inits
            .iter()
            .map(|&t| s.dataset.time.datetime(t).to_string())
            .collect(),
        rollout_steps,
        climatology: clim.description,
        patches: s.execution.patch_count(),
        graph_forwards,
        rollout_peak_bytes,
        records: report::records(
            &channel_infos(&s.dataset),
            &scores,
            loaded.meta.run.window.lead_steps,
            step_hours,
        ),
    })
}

/// Adds every rank's sums (and graph forward passes, returned) to `sums`.
fn add_over_ranks(
    collective: &dyn Collective,
    sums: &mut [Vec<[Sums; 3]>],
    forwards: usize,
) -> anyhow::Result<usize> {
    if collective.size() == 1 {
        return Ok(forwards);
    }
    let each = sums.iter_mut().flatten().flatten();
    let mut flat: Vec<f64> = each.flat_map(|x| x.fields()).collect();
    flat.push(forwards as f64);
    collective.all_reduce_f64(&mut flat)?;
    for (x, f) in sums.iter_mut().flatten().flatten().zip(flat.chunks(6)) {
        *x = Sums::from_fields(f);
    }
    Ok(flat[flat.len() - 1] as usize)
}

/// Weighted error sums `[lead][channel][system]` (model, persistence, climatology)
/// of the rollouts from `inits`.
fn rollout_sums(
    loaded: &Loaded,
    inits: &[usize],
    (rollout_steps, batch_size): (usize, usize),
    clim: &climatology::Climatology,
    progress: bool,
) -> anyhow::Result<Vec<Vec<[Sums; 3]>>> {
    let s = &loaded.session;
    let window = loaded.meta.run.window;
    let channels = loaded.stats.channels.len();
    let lat_w = s.node_latitude_weights();
    let model = NormalisedResidual {
        predictor: s.predictor.as_ref(),
        stats: &loaded.stats,
        extras: &s.extras,
    };
    let mut reader = NodeReader::new(s, channels);
    let mut sums = vec![vec![[Sums::default(); 3]; channels]; rollout_steps];
    let bar = crate::util::progress_bar(progress, inits.len(), "eval: initial times");
    for chunk in inits.chunks(batch_size.max(1)) {
        bar.inc(chunk.len() as u64);
        let histories = chunk
            .iter()
            .map(|&t0| reader.history(t0, &window))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let initial: Vec<NodeState> = histories.iter().map(|h| h[h.len() - 1].clone()).collect();
        let mut rollout = Rollout::new(histories);
        for (k, lead_sums) in sums.iter_mut().enumerate() {
            rollout.step(&model)?;
            for (i, &t0) in chunk.iter().enumerate() {
                let t = t0 + (k + 1) * window.lead_steps;
                let truth = reader.read(t)?;
                let clim = clim.at(s.dataset.time.instants[t]);
                score_lead(
                    lead_sums,
                    &lat_w,
                    (rollout.current(i), &initial[i], &truth, &clim),
                );
            }
        }
    }
    Ok(sums)
}

/// Variable, level and units of each channel, for the score records.
fn channel_infos(dataset: &Dataset) -> Vec<report::ChannelInfo> {
    dataset
        .channels
        .iter()
        .map(|ch| {
            let (source, level) = ch.origin();
            let source = &dataset.sources[source];
            report::ChannelInfo {
                channel: ch.name.clone(),
                variable: source.name.clone(),
                level: source.levels.get(level).map(|l| l.value),
                units: ch.units.clone(),
            }
        })
        .collect()
}

/// The data times `text` names: one time, a comma-separated list, or `START..END`
/// (every time of the data from START to END, both included; an end date alone
/// covers its day).
pub fn find_times(dataset: &Dataset, text: &str) -> anyhow::Result<Vec<usize>> {
    if !text.contains("..") {
        return text
            .split(',')
            .map(|t| find_time(dataset, t.trim()))
            .collect();
    }
    let steps = dataset
        .time
        .steps_within(text)
        .map_err(|e| InputError(format!("--init-times {text}: {e}")))?;
    Ok(steps.collect())
}

/// Finds one `--init-times` time on the data's time axis.
fn find_time(dataset: &Dataset, text: &str) -> anyhow::Result<usize> {
    let cal = dataset.time.calendar;
    let wanted = crate::data::time::DateTime::parse(text, cal)
        .map_err(|e| InputError(format!("--init-times: {e}")))?;
    let instant = wanted.to_instant(cal);
    dataset
        .time
        .instants
        .iter()
        .position(|&t| t == instant)
        .ok_or_else(|| {
            InputError(format!(
                "--init-times {wanted} is not a time of the data ({} to {} every {})",
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
