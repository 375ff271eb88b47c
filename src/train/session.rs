//! What training, evaluation and forecasting share: the dataset, the graph built once,
//! and the predictor that runs the model over it (whole or patch by patch).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::config::RunConfig;
use crate::data::time::Instant;
use crate::data::{Batch, Dataset, ExtrasFn, Grid, NormStats, Splits, WindowSpec};
use crate::distributed::{shard, Collective};
use crate::graph::{load_or_build, RowWindow, WeatherGraph};
use crate::model::GraphTensors;
use crate::predict::unroll::RolloutBatch;
use crate::predict::{
    inputs, Execution, LossTarget, Network, NodeExtras, Patched, Predictor, WholeGraph,
};

pub struct Session {
    pub dataset: Arc<Dataset>,
    pub splits: Splits,
    pub graph: WeatherGraph,
    /// How the run executes the model, and the model over the graph run that way.
    pub execution: Execution,
    pub predictor: Box<dyn Predictor>,
    /// Forcings and static fields of the window's grid nodes, as the model takes them.
    pub extras: Arc<NodeExtras>,
    pub device: Device,
    /// The rows and grid nodes this process's batches cover: all of them, or a
    /// patch-parallel rank's band (what its patches need).
    window: RowWindow,
    /// The data batches are read from: `dataset`, or its band of `window.rows`.
    pub batch_data: Arc<Dataset>,
    /// The cell of each of the window's grid nodes in `batch_data`'s grid.
    batch_cells: Vec<u32>,
}

impl Session {
    /// Opens the data, builds (or loads) the graph and builds the model for `run`,
    /// executed as `execution` says (parameters zero until initialised or restored).
    pub fn new(
        run: &RunConfig,
        execution: Execution,
        dataset: Arc<Dataset>,
        graph_cache: Option<&Path>,
        device: &Device,
    ) -> anyhow::Result<Session> {
        let valid = valid_cells(&dataset, &crate::distributed::Single)?;
        let (splits, graph) = Session::graph(run, &dataset, &valid, graph_cache)?;
        Session::with_graph(run, execution, dataset, splits, graph, device)
    }

    /// The run's splits and its graph over the cells `valid` in some time step
    /// ([`valid_cells`]), built once (or loaded from the cache): what a memory check
    /// needs before any model tensor exists.
    pub fn graph(
        run: &RunConfig,
        dataset: &Dataset,
        valid: &[bool],
        graph_cache: Option<&Path>,
    ) -> anyhow::Result<(Splits, WeatherGraph)> {
        let splits = Splits::new(&dataset.time, &run.split, run.window)
            .map_err(|e| crate::error::InputError(format!("{}: {}", dataset.file_list(), e.0)))?;
        let (graph, outcome, secs) = load_or_build(&dataset.grid, valid, &run.graph, graph_cache)?;
        tracing::info!(
            "graph: {} grid nodes, {} mesh nodes, {} mesh edges ({outcome}, {secs:.2} s)",
            graph.grid_nodes.len(),
            graph.mesh_nodes.len(),
            graph.mesh.len()
        );
        Ok((splits, graph))
    }

    /// The model for `run` over `graph`, executed as `execution` says.
    pub fn with_graph(
        run: &RunConfig,
        execution: Execution,
        dataset: Arc<Dataset>,
        splits: Splits,
        graph: WeatherGraph,
        device: &Device,
    ) -> anyhow::Result<Session> {
        let (predictor, window) = predictor(run, &execution, (&dataset.grid, &graph), device)?;
        let cells = &graph.grid_map.cells()[window.nodes.clone()];
        let extras = Arc::new(node_extras(run, &dataset, cells)?);
        let first_cell = window.first_cell(&dataset.grid) as u32;
        let batch_cells = cells.iter().map(|&c| c - first_cell).collect();
        let batch_data = match window.rows == (0..dataset.grid.nlat()) {
            true => dataset.clone(),
            false => {
                tracing::info!(
                    "this rank's patches need latitude rows {}..{} of {}: its batches hold {} of {} grid nodes",
                    window.rows.start,
                    window.rows.end,
                    dataset.grid.nlat(),
                    window.nodes.len(),
                    graph.grid_nodes.len()
                );
                Arc::new(dataset.latitude_band(window.rows.clone()))
            }
        };
        Ok(Session {
            dataset,
            splits,
            graph,
            execution,
            predictor,
            extras,
            device: device.clone(),
            window,
            batch_data,
            batch_cells,
        })
    }

    pub fn network(&self) -> &Network {
        self.predictor.network()
    }

    /// A batch's model inputs `[B, nodes, 2F]` and loss target on the graph's grid
    /// nodes (loss weights from the latitude weights `lat_w` and variable weights
    /// `var_w`), and the targets' validity.
    pub fn tensors(
        &self,
        batch: &Batch,
        lat_w: &[f32],
        var_w: &[f32],
    ) -> anyhow::Result<(Tensor, LossTarget, Vec<bool>)> {
        self.check_extras(batch);
        let computed;
        let extras = match batch.extras.first() {
            Some(prefetched) => prefetched,
            None => {
                computed = self.extras.for_windows(&self.rollout_times(&batch.t0, 0));
                &computed
            }
        };
        let (x, target, valid) = inputs::batch_target(
            batch,
            (&self.batch_cells, extras),
            lat_w,
            var_w,
            (&self.device, self.network().dtype()),
        )?;
        let Some(owned) = self.predictor.owned_nodes() else {
            return Ok((x, target, valid));
        };
        // A patch-parallel rank counts the entries of the nodes it owns: the ranks'
        // counts add up to the batch's, and its loss is its share of the batch's.
        let per_node = valid.len() / (batch.len() * owned.len()).max(1);
        let entries = (valid.chunks(per_node.max(1)).enumerate())
            .filter(|(row, _)| owned[row % owned.len()])
            .map(|(_, entries)| entries.iter().filter(|&&v| v).count())
            .sum();
        Ok((x, LossTarget::new(target.y, target.w, entries), valid))
    }

    /// The times of rollout step `k`'s window (its inputs, then its target) from each
    /// of `t0s`: the observed states' times, then the predictions' (`lead` apart). Step
    /// 0 is the plain sample window.
    pub fn rollout_times(&self, t0s: &[usize], k: usize) -> Vec<Vec<Instant>> {
        window_times(&self.dataset.time.instants, self.splits.window, t0s, k)
    }

    /// Extra inputs a batch brings were computed for this session's nodes and window:
    /// one block per rollout step, each `[B, nodes, E]`.
    fn check_extras(&self, batch: &Batch) {
        if batch.extras.is_empty() {
            return;
        }
        let width = self.extras.width(batch.input_steps);
        let size = batch.len() * self.batch_cells.len() * width;
        debug_assert_eq!(batch.extras.len(), batch.rollout_steps);
        debug_assert!(batch.extras.iter().all(|e| e.len() == size));
    }

    /// What the batch assembler calls to compute each batch's extra inputs (on the
    /// prefetch thread when there is one).
    pub fn extras_fn(&self) -> ExtrasFn {
        let (extras, dataset, window) = (
            self.extras.clone(),
            self.dataset.clone(),
            self.splits.window,
        );
        Arc::new(move |t0s, k| {
            extras.for_windows(&window_times(&dataset.time.instants, window, t0s, k))
        })
    }

    /// A batch with K targets as rollout-training tensors on the graph's grid nodes.
    pub fn rollout_batch(
        &self,
        batch: &Batch,
        weights: (&[f32], &[f32]),
        stats: &NormStats,
    ) -> anyhow::Result<RolloutBatch> {
        self.check_extras(batch);
        let computed: Vec<Vec<f32>>;
        let extras = match batch.extras.len() {
            0 => {
                computed = (0..batch.rollout_steps)
                    .map(|k| self.extras.for_windows(&self.rollout_times(&batch.t0, k)))
                    .collect();
                &computed
            }
            _ => &batch.extras,
        };
        Ok(RolloutBatch::new(
            batch,
            (&self.batch_cells, extras),
            weights,
            stats,
            (&self.device, self.network().dtype()),
        )?)
    }

    /// Memory of a training run: parameters, the optimizer's arena (AdamW moments) and
    /// gradients (in the master dtype), the graph (or patch graphs) on the device,
    /// against the measured peak and `baseline`.
    pub fn memory_breakdown(&self, baseline: Option<u64>) -> crate::memory::MemoryBreakdown {
        let net = self.network();
        let params = (net.parameter_count() * net.dtype().size_in_bytes()) as u64;
        let graph = self.predictor.graph_bytes() as u64;
        let peak = crate::memory::peak_on(&self.device).map(|p| p as u64);
        let arena = crate::memory::planner::OPTIMIZER_ARENA_ROWS * params;
        crate::memory::MemoryBreakdown::new(params, arena, params, graph, baseline, peak)
    }

    /// Latitude weights of the window's grid nodes (cos lat, mean 1 over all the
    /// graph's grid nodes, so that a rank's share weighs as in the whole).
    pub fn node_latitude_weights(&self) -> Vec<f32> {
        let all = self.graph.grid_map.latitude_weights(&self.dataset.grid);
        all[self.window.nodes.clone()].to_vec()
    }
}

/// The cells valid in some time step (the grid nodes of the graph), each of several
/// ranks reading its share of the steps.
pub fn valid_cells(dataset: &Dataset, c: &dyn Collective) -> anyhow::Result<Vec<bool>> {
    let mine = dataset.ever_valid(shard(dataset.time.len(), c.rank(), c.size()))?;
    if c.size() == 1 {
        return Ok(mine);
    }
    let mut counts: Vec<f64> = mine.iter().map(|&v| f64::from(u8::from(v))).collect();
    c.all_reduce_f64(&mut counts)?;
    Ok(counts.iter().map(|&n| n > 0.0).collect())
}

/// The model for `run` over `graph` (on `grid`), executed as `execution` says, and the
/// window of rows its inputs cover.
fn predictor(
    run: &RunConfig,
    execution: &Execution,
    (grid, graph): (&Grid, &WeatherGraph),
    device: &Device,
) -> anyhow::Result<(Box<dyn Predictor>, RowWindow)> {
    let precision = execution.precision;
    let Some(options) = &execution.patches else {
        let tensors = GraphTensors::new(graph, device, precision.master_dtype())?;
        let net = Network::new(run.model.clone(), precision, &tensors)?;
        let whole = WholeGraph::new(Arc::new(net), tensors);
        return Ok((Box::new(whole), RowWindow::all(graph, grid)));
    };
    let share = execution.patch_share;
    let place = (device, precision.master_dtype());
    let (patches, window) = Patched::split_share(graph, grid, options, share, place)?;
    let net = Network::new(run.model.clone(), precision, &patches[0].graph)?;
    let patched = Patched::new(Arc::new(net), patches);
    Ok(match share.1 > 1 {
        true => (Box::new(patched.partial(window.nodes.len())?), window),
        false => (Box::new(patched), window),
    })
}

/// The times of rollout step `k`'s window (its inputs, then its target) from each of
/// `t0s` on the time axis `instants`: the observed states' times (one input spacing
/// apart), then the predictions' (one lead apart).
fn window_times(
    instants: &[Instant],
    window: WindowSpec,
    t0s: &[usize],
    k: usize,
) -> Vec<Vec<Instant>> {
    let (steps, lead) = (window.input_steps, window.lead_steps);
    let timeline = |t0: usize, i: usize| match i < steps {
        true => instants[window.input_time(t0, i)],
        false => instants[t0 + (i + 1 - steps) * lead],
    };
    t0s.iter()
        .map(|&t0| (k..=k + steps).map(|i| timeline(t0, i)).collect())
        .collect()
}

/// The extra inputs of `run`'s model on the grid nodes of `cells`; refuses static
/// fields other than the model's.
fn node_extras(run: &RunConfig, dataset: &Dataset, cells: &[u32]) -> anyhow::Result<NodeExtras> {
    let statics = &dataset.statics;
    if statics.width() != run.model.static_inputs {
        crate::bail_input!(
            "{}: the model takes {} static fields, the data give {} ({})",
            dataset.file_list(),
            run.model.static_inputs / 2,
            statics.count(),
            statics.names.join(", ")
        );
    }
    let step = dataset.time.step_seconds().unwrap_or(0) * run.window.lead_steps as i64;
    let lat_lon = cells
        .iter()
        .map(|&c| dataset.grid.node_lat_lon(c as usize))
        .collect();
    Ok(NodeExtras::new(
        run.model.forcings(),
        dataset.time.calendar,
        step,
        lat_lon,
        (statics.of_cells(cells), statics.width()),
    ))
}

/// Loss weight per channel from the config (default 1).
pub fn variable_weights(run: &RunConfig, stats: &NormStats) -> Vec<f32> {
    stats
        .channels
        .iter()
        .map(|c| run.train.variable_weights.get(c).copied().unwrap_or(1.0) as f32)
        .collect()
}
