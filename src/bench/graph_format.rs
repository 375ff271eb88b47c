//! `meshcast benchmark-graph-format`: the same GraphCast-style model trained over the
//! same graph stored and batched in different ways, case by case.
//!
//! A case is grid x batch size x format (`coo-replicated`, `coo-shared`, `csr-shared`)
//! x precision x checkpointing (patches are recorded so later reports align; the cases
//! run whole grids). For each grid the graph is built (timed, repeated) and loaded
//! from an on-disk cache in a temporary directory (timed, repeated). For each batch
//! size one synthetic batch is made and the reference format (coo-shared, f32) runs it
//! once. Then each case:
//!
//! 1. resets the allocator's peak and builds its graph tensors and model (parameters
//!    initialised from the seed, so identical across formats);
//! 2. on the model's inference view (detached parameters, no autograd graph) runs the
//!    forward pass and loss and compares them with the reference
//!    (elementwise `|a - b| <= atol + rtol |b|`); a case that differs records
//!    `verified: false` and gets no timings; then times `forward_repeats` forward
//!    passes and records their peak (`inference_peak`);
//! 3. creates the AdamW state, runs `warmup_steps` training steps (forward, loss,
//!    backward, clipping, AdamW), then times `timed_steps` steps;
//! 4. reads the peak of the counting allocator and fills the memory breakdown.
//!
//! Inputs are synthetic: uniform values in [-1, 1) for the normalised input states,
//! validity flags of 1, and uniform targets, from a ChaCha stream seeded by the run's
//! seed, the grid and the batch size. The numbers the model sees do not change the
//! work it does, so no data files are read.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::report::{
    CaseConfig, CaseResult, Format, GraphInfo, ModelSize, PatchBoundaryError, Report, RunSettings,
    Timings, Verification, SCHEMA_VERSION,
};
use super::stats::{time_repeats, Summary};
use crate::data::{named_grid, Grid};
use crate::error::InputError;
use crate::graph::{self, GraphOptions, WeatherGraph};
use crate::machine::{BackendInfo, BuildInfo, MachineInfo};
use crate::memory::{self, MemoryBreakdown};
use crate::model::{GraphTensors, MixedPrecision, ModelConfig};
use crate::predict::loss::weighted_mse;
use crate::predict::{synthetic, LossTarget, Network, Patched, Predictor, WholeGraph};
use crate::table::render_table;
use crate::train::optimizer::{AdamW, AdamWParams};
use crate::train::step::train_step;
use crate::verify::tolerance::{allclose, tolerances, ATOL, RTOL};

/// Learning rate of the timed steps (small: the weights should barely move).
const LEARNING_RATE: f64 = 1e-4;

/// Per-grid changes to the plan (a config's `[overrides."1"]` table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GridOverride {
    pub batch_sizes: Option<Vec<usize>>,
    pub latent_size: Option<usize>,
    pub num_gnn_layers: Option<usize>,
    pub mesh_level: Option<u32>,
    pub timed_steps: Option<usize>,
}

/// What to run: a config file (`configs/bench-*.toml`) or flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchPlan {
    /// The report's label (and the start of its file name).
    pub label: String,
    /// Global cell-centred grids by spacing in degrees (`5`, `2.5`, `1`) and/or
    /// `storm1996` (33 x 36 regional, corners masked like the real files).
    pub grids: Vec<String>,
    pub batch_sizes: Vec<usize>,
    pub formats: Vec<Format>,
    /// Gradient checkpointing of every processor block, off and/or on.
    pub checkpointing: Vec<bool>,
    /// Mixed precision of the activations (`off` is f32).
    pub precisions: Vec<MixedPrecision>,
    pub latent_size: usize,
    pub num_gnn_layers: usize,
    pub mlp_hidden_layers: usize,
    /// Mesh level for every grid; None: the grid's default (5 deg: 4, 2.5: 5, 1: 6).
    pub mesh_level: Option<u32>,
    pub input_steps: usize,
    /// Variables per state (5, as the synthetic datasets).
    pub channels: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub forward_repeats: usize,
    /// Graph builds and cache loads timed per grid.
    pub graph_repeats: usize,
    pub seed: u64,
    /// Keyed by the grid as written in `grids`.
    pub overrides: BTreeMap<String, GridOverride>,
    /// Halos (degrees) at which a forward pass over `boundary_patches` patches is
    /// compared with the whole grid, per grid (empty: not measured).
    pub patch_halos: Vec<f64>,
    pub boundary_patches: usize,
}

impl Default for BenchPlan {
    fn default() -> Self {
        BenchPlan {
            label: "graph-format".into(),
            grids: vec!["5".into()],
            batch_sizes: vec![1, 4],
            formats: Format::ALL.to_vec(),
            checkpointing: vec![false],
            precisions: vec![MixedPrecision::Off],
            latent_size: 128,
            num_gnn_layers: 8,
            mlp_hidden_layers: 1,
            mesh_level: None,
            input_steps: 2,
            channels: 5,
            warmup_steps: 2,
            timed_steps: 10,
            forward_repeats: 5,
            graph_repeats: 3,
            seed: 0,
            overrides: BTreeMap::new(),
            patch_halos: Vec::new(),
            boundary_patches: 4,
        }
    }
}

impl BenchPlan {
    /// `--quick`: seconds in a debug build on 2 cores (CI): two small grids, a tiny
    /// model, few steps.
    pub fn quick() -> BenchPlan {
        BenchPlan {
            label: "quick".into(),
            grids: vec!["5".into(), "storm1996".into()],
            batch_sizes: vec![1, 2],
            formats: Format::ALL.to_vec(),
            checkpointing: vec![false, true],
            precisions: vec![MixedPrecision::Off],
            latent_size: 16,
            num_gnn_layers: 2,
            mlp_hidden_layers: 1,
            mesh_level: Some(2),
            input_steps: 2,
            channels: 5,
            warmup_steps: 1,
            timed_steps: 3,
            forward_repeats: 3,
            graph_repeats: 2,
            seed: 0,
            overrides: BTreeMap::new(),
            patch_halos: vec![10.0, 180.0],
            boundary_patches: 4,
        }
    }

    /// Reads a TOML or JSON plan (unknown keys are refused).
    pub fn load(path: &Path) -> anyhow::Result<BenchPlan> {
        let value = crate::config::load_value(path)?;
        serde_json::from_value(value).map_err(|e| InputError::file(path, e).into())
    }

    /// Refuses plans that cannot run, before any work.
    pub fn validate(&self) -> Result<(), InputError> {
        let bad = |m: String| Err(InputError(m));
        if self.grids.is_empty()
            || self.batch_sizes.is_empty()
            || self.formats.is_empty()
            || self.checkpointing.is_empty()
            || self.precisions.is_empty()
        {
            return bad(
                "the benchmark needs at least one grid, batch size, format, checkpointing and precision setting".into(),
            );
        }
        for g in &self.grids {
            named_grid(g)?;
        }
        if let Some(k) = self.overrides.keys().find(|k| !self.grids.contains(k)) {
            return bad(format!(
                "override for grid '{k}', which is not in grids {:?}",
                self.grids
            ));
        }
        let sizes = self
            .overrides
            .values()
            .filter_map(|o| o.batch_sizes.as_ref())
            .flatten();
        if self.batch_sizes.iter().chain(sizes).any(|&b| b == 0) {
            return bad("batch sizes must be at least 1".into());
        }
        if self.latent_size == 0 || self.timed_steps == 0 || self.forward_repeats == 0 {
            return bad("latent size, timed steps and forward repeats must be at least 1".into());
        }
        if self.input_steps == 0 || self.channels == 0 || self.graph_repeats == 0 {
            return bad("input steps, channels and graph repeats must be at least 1".into());
        }
        if !self.patch_halos.is_empty()
            && (self.boundary_patches < 2
                || self.patch_halos.iter().any(|h| h.is_nan() || *h < 0.0))
        {
            return bad("patch_halos need boundary_patches >= 2 and halos >= 0 degrees".into());
        }
        if let Some(l) = self.mesh_level.filter(|&l| l > graph::MAX_MESH_LEVEL) {
            return bad(format!(
                "--mesh-level {l} is above {}",
                graph::MAX_MESH_LEVEL
            ));
        }
        Ok(())
    }

    /// The cases, in run order.
    pub fn cases(&self, device: &Device) -> anyhow::Result<Vec<CaseConfig>> {
        let dev = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut out = Vec::new();
        for g in &self.grids {
            let o = self.overrides.get(g).cloned().unwrap_or_default();
            let (name, grid, _) = named_grid(g)?;
            let mesh_level = o
                .mesh_level
                .or(self.mesh_level)
                .unwrap_or_else(|| graph::default_mesh_level(&grid));
            for &b in o.batch_sizes.as_ref().unwrap_or(&self.batch_sizes) {
                for (&format, &checkpointing, &precision) in self.formats.iter().flat_map(|f| {
                    self.checkpointing
                        .iter()
                        .flat_map(move |c| self.precisions.iter().map(move |p| (f, c, p)))
                }) {
                    out.push(CaseConfig {
                        grid: name.clone(),
                        mesh_level,
                        batch_size: b,
                        format,
                        precision: precision_name(precision).into(),
                        checkpointing,
                        patches: 1,
                        latent_size: o.latent_size.unwrap_or(self.latent_size),
                        num_gnn_layers: o.num_gnn_layers.unwrap_or(self.num_gnn_layers),
                        mlp_hidden_layers: self.mlp_hidden_layers,
                        input_steps: self.input_steps,
                        channels: self.channels,
                        device: dev.into(),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// One synthetic batch on the graph's grid nodes.
struct SyntheticBatch {
    x: Tensor,
    target: LossTarget,
}

/// `cfg`'s batch, from a seed of the plan's, the grid's size and the batch size.
fn synthetic_batch(
    graph: &WeatherGraph,
    grid: &Grid,
    plan_seed: u64,
    cfg: &CaseConfig,
    device: &Device,
) -> anyhow::Result<SyntheticBatch> {
    let (b, n) = (cfg.batch_size, graph.grid_nodes.len());
    let seed = plan_seed ^ (n as u64).wrapping_mul(0x9E37_79B9) ^ ((b as u64) << 40);
    let shape = (b, cfg.input_steps, cfg.channels);
    let (x, target) = synthetic::batch(graph, grid, shape, seed, device)?;
    Ok(SyntheticBatch { x, target })
}

/// The model of `cfg`'s format on the whole of `graph`, parameters from `seed`.
fn build_model(
    graph: &WeatherGraph,
    cfg: &CaseConfig,
    seed: u64,
    device: &Device,
) -> anyhow::Result<WholeGraph> {
    let tensors = GraphTensors::new(graph, device, DType::F32)?;
    let config = ModelConfig {
        latent_size: cfg.latent_size,
        num_gnn_layers: cfg.num_gnn_layers,
        mlp_hidden_layers: cfg.mlp_hidden_layers,
        batching: cfg.format.batching(),
        aggregation: cfg.format.aggregation(),
        ..ModelConfig::default()
    }
    .for_data(cfg.input_steps, cfg.channels);
    let net = Network::initialised(config, case_precision(cfg)?, &tensors, seed)?;
    Ok(WholeGraph::new(Arc::new(net), tensors))
}

/// How a case's precision is written in reports (`f32` for no mixed precision).
pub fn precision_name(p: MixedPrecision) -> &'static str {
    match p {
        MixedPrecision::Off => "f32",
        other => other.name(),
    }
}

fn case_precision(cfg: &CaseConfig) -> anyhow::Result<MixedPrecision> {
    cfg.precision.parse().map_err(anyhow::Error::msg)
}

/// The reference format's output (flattened) and loss.
struct Reference {
    output: Vec<f32>,
    loss: f64,
}

/// Output and loss of `predictor` on `batch`, on its inference view: no autograd graph
/// is kept.
fn forward_loss(
    predictor: &dyn Predictor,
    batch: &SyntheticBatch,
) -> anyhow::Result<(Tensor, Tensor)> {
    let pred = predictor.forward(&batch.x)?;
    let t = &batch.target;
    let loss = weighted_mse(&pred, &t.y, &t.w, t.denominator)?;
    Ok((pred, loss))
}

fn edge_updates_per_sample(g: &GraphInfo, layers: usize) -> usize {
    g.grid2mesh_edges + layers * g.mesh_edges + g.mesh2grid_edges
}

/// What a case runs on: the graph and its sizes, the batch, and the reference's result.
struct CaseInputs<'a> {
    graph: &'a WeatherGraph,
    info: &'a GraphInfo,
    batch: &'a SyntheticBatch,
    reference: &'a Reference,
}

/// Runs one case after the graph and batch exist.
fn run_case(
    cfg: &CaseConfig,
    plan: &BenchPlan,
    inputs: &CaseInputs,
    device: &Device,
) -> CaseResult {
    let baseline = memory::reset_peak_on(device);
    let mut result = CaseResult {
        config: cfg.clone(),
        graph: inputs.info.clone(),
        model: ModelSize {
            parameters: 0,
            bytes: 0,
        },
        verification: None,
        timings: None,
        memory: None,
        predicted_peak: None,
        inference_peak: None,
        error: None,
    };
    if let Err(e) = measure_case(cfg, plan, inputs, device, baseline, &mut result) {
        result.error = Some(format!("{e:#}"));
        result.timings = None;
    }
    result
}

/// Verification, then (if verified) timed forward passes and training steps, memory.
fn measure_case(
    cfg: &CaseConfig,
    plan: &BenchPlan,
    inputs: &CaseInputs,
    device: &Device,
    baseline: Option<usize>,
    result: &mut CaseResult,
) -> anyhow::Result<()> {
    let predictor = build_model(inputs.graph, cfg, plan.seed, device)?;
    let net = predictor.network();
    let param_bytes = net.parameter_count() * DType::F32.size_in_bytes();
    result.model = ModelSize {
        parameters: net.parameter_count(),
        bytes: param_bytes,
    };
    // Verification, then the timed forward passes, on the inference view: its peak
    // is what a forecast of this batch needs (weights, graph, activations).
    let verification = verify(&predictor, cfg, inputs)?;
    let verified = verification.verified;
    result.verification = Some(verification);
    result.graph.case_bytes = case_graph_bytes(&predictor, cfg)?;
    let (param_bytes, graph_bytes) = (param_bytes as u64, result.graph.case_bytes as u64);
    if !verified {
        result.memory = Some(MemoryBreakdown::new(
            param_bytes,
            0,
            0,
            graph_bytes,
            None,
            None,
        ));
        return Ok(());
    }
    let forward_times = time_repeats(plan.forward_repeats, || {
        let (_, loss) = forward_loss(&predictor, inputs.batch)?;
        loss.to_scalar::<f32>()?;
        Ok(())
    })?;
    result.inference_peak = memory::peak_on(device)
        .zip(baseline)
        .map(|(p, b)| p.saturating_sub(b) as u64);
    // The peak of the training steps only, from the level the case holds now.
    memory::reset_peak_on(device);
    let (step_times, final_loss) = time_steps(&predictor, cfg, plan, inputs.batch)?;
    let peak = memory::peak_on(device);
    let step = Summary::of(&step_times).expect("at least one timed step");
    let edges = edge_updates_per_sample(&result.graph, cfg.num_gnn_layers);
    result.timings = Some(Timings {
        forward: Summary::of(&forward_times).expect("at least one forward"),
        samples_per_s: cfg.batch_size as f64 / step.median_s,
        edges_per_s: (cfg.batch_size * edges) as f64 / step.median_s,
        step,
        warmup_steps: plan.warmup_steps,
        final_loss,
    });
    result.memory = Some(MemoryBreakdown::new(
        param_bytes,
        2 * param_bytes,
        param_bytes,
        graph_bytes,
        baseline.map(|b| b as u64),
        peak.map(|p| p as u64),
    ));
    result.predicted_peak = Some(predicted_peak(cfg, &result.graph, net.config())?);
    Ok(())
}

/// The case's output and loss against the reference format's.
fn verify(
    predictor: &dyn Predictor,
    cfg: &CaseConfig,
    inputs: &CaseInputs,
) -> anyhow::Result<Verification> {
    let (pred, loss) = forward_loss(predictor, inputs.batch)?;
    let out: Vec<f32> = pred.flatten_all()?.to_vec1()?;
    let loss_value = loss.to_scalar::<f32>()? as f64;
    let reference = inputs.reference;
    let precision = case_precision(cfg)?;
    let (rtol, atol_fraction) = tolerances(precision);
    let scale = reference
        .output
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let atol = atol_fraction * scale.max(f64::MIN_POSITIVE);
    let (mut out_ok, max_diff) = allclose(&out, &reference.output, rtol, atol);
    if precision != MixedPrecision::Off {
        // Low precision: normwise, against the largest reference output.
        out_ok = out.len() == reference.output.len() && max_diff <= atol + rtol * scale;
    }
    let loss_diff = (loss_value - reference.loss).abs();
    let loss_ok = loss_diff <= atol + rtol * reference.loss.abs();
    Ok(Verification {
        verified: out_ok && loss_ok && loss_value.is_finite(),
        max_output_diff: max_diff,
        loss_diff,
        rtol,
        atol,
        reference: Format::REFERENCE,
    })
}

/// The graph as the case holds it (the replica of coo-replicated is cached by the model).
fn case_graph_bytes(predictor: &WholeGraph, cfg: &CaseConfig) -> anyhow::Result<usize> {
    let graph = predictor.graph();
    let mut bytes = graph.with_aggregation(cfg.format.aggregation()).bytes();
    if cfg.format.batching() == crate::model::Batching::Replicated {
        let model = predictor.network().model();
        bytes += model.replicated_graph(graph, cfg.batch_size)?.bytes();
    }
    Ok(bytes)
}

/// `warmup_steps` untimed training steps, then the timed ones: their times and the
/// last loss.
fn time_steps(
    predictor: &dyn Predictor,
    cfg: &CaseConfig,
    plan: &BenchPlan,
    batch: &SyntheticBatch,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let mut optimizer = AdamW::new(predictor.network().vars().to_vec(), AdamWParams::default())?;
    let mut last_loss = f64::NAN;
    let checkpoint_every = cfg.checkpointing.then_some(1);
    let mut step = || -> anyhow::Result<()> {
        let data = (&batch.x, &batch.target);
        let (step, _) = train_step(
            predictor,
            &mut optimizer,
            data,
            checkpoint_every,
            1.0,
            LEARNING_RATE,
        )?;
        last_loss = step.loss;
        Ok(())
    };
    for _ in 0..plan.warmup_steps {
        step()?;
    }
    let steps = plan
        .overrides
        .get(&plan_grid_key(plan, cfg))
        .and_then(|o| o.timed_steps)
        .unwrap_or(plan.timed_steps);
    let times = time_repeats(steps, &mut step)?;
    Ok((times, last_loss))
}

/// The planner's prediction for a case (its batch was allocated before the baseline).
fn predicted_peak(
    cfg: &CaseConfig,
    g: &GraphInfo,
    model: &crate::model::ModelConfig,
) -> anyhow::Result<u64> {
    use crate::memory::planner::{predict, GraphSizes, StepShape, Techniques};
    let p = predict(&StepShape {
        model: model.clone(),
        batch_size: cfg.batch_size,
        step_graph: GraphSizes {
            grid_nodes: g.grid_nodes,
            mesh_nodes: g.mesh_nodes,
            grid2mesh_edges: g.grid2mesh_edges,
            mesh_edges: g.mesh_edges,
            mesh2grid_edges: g.mesh2grid_edges,
        },
        graph_bytes: g.case_bytes as u64,
        techniques: Techniques {
            patches: cfg.patches,
            checkpointing: cfg.checkpointing,
            precision: case_precision(cfg)?,
        },
        on_cpu: cfg.device == "cpu",
    });
    Ok(p.total - p.batch)
}

/// Patched against whole-grid forward passes of `cfg`'s model (f32, batch of one) on
/// `graph`, for every halo of the plan.
fn patch_boundary_errors(
    plan: &BenchPlan,
    cfg: &CaseConfig,
    grid: &Grid,
    graph: &WeatherGraph,
    device: &Device,
) -> anyhow::Result<Vec<PatchBoundaryError>> {
    let cfg = CaseConfig {
        batch_size: 1,
        format: Format::REFERENCE,
        precision: precision_name(MixedPrecision::Off).into(),
        ..cfg.clone()
    };
    let whole_graph = build_model(graph, &cfg, plan.seed, device)?;
    let x = synthetic_batch(graph, grid, plan.seed, &cfg, device)?.x;
    let whole = whole_graph.forward(&x)?;
    let mut out = Vec::new();
    for &halo_deg in &plan.patch_halos {
        let options = crate::graph::PatchOptions {
            n_patches: plan.boundary_patches,
            halo_deg,
        };
        let patches = Patched::split(graph, grid, &options, device)?;
        let largest = patches
            .iter()
            .map(|p| p.graph.grid_nodes.count)
            .max()
            .unwrap_or(0);
        let n_patches = patches.len();
        let patched = Patched::new(whole_graph.shared_network(), patches).forward(&x)?;
        let scalar = |t: Tensor| -> anyhow::Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        let diff = (&patched - &whole)?;
        let max_abs_error = scalar(diff.abs()?.max_all()?)?;
        let rms = |t: &Tensor| -> anyhow::Result<f64> { Ok(scalar(t.sqr()?.mean_all()?)?.sqrt()) };
        out.push(PatchBoundaryError {
            grid: cfg.grid.clone(),
            patches: n_patches,
            halo_deg,
            largest_patch_nodes: largest,
            max_abs_error,
            relative_error: max_abs_error / scalar(whole.abs()?.max_all()?)?.max(f64::MIN_POSITIVE),
            relative_rms_error: rms(&diff)? / rms(&whole)?.max(f64::MIN_POSITIVE),
        });
    }
    Ok(out)
}

/// The key of `cfg`'s grid in `plan.grids` (the text the user wrote).
fn plan_grid_key(plan: &BenchPlan, cfg: &CaseConfig) -> String {
    plan.grids
        .iter()
        .find(|g| named_grid(g).is_ok_and(|(name, _, _)| name == cfg.grid))
        .cloned()
        .unwrap_or_default()
}

/// A fresh temporary directory for the graph cache of one grid.
fn temp_cache_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "meshcast-bench-cache-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Builds the graph of one grid `repeats` times and loads it from a fresh cache
/// `repeats` times: the graph and its sizes and timings.
fn graph_for(
    grid: &Grid,
    valid: &[bool],
    mesh_level: u32,
    repeats: usize,
) -> anyhow::Result<(WeatherGraph, GraphInfo)> {
    let options = GraphOptions {
        mesh_level,
        ..GraphOptions::default()
    };
    let mut graph = None;
    let build = time_repeats(repeats, || {
        graph = Some(graph::build(grid, valid, &options)?);
        Ok(())
    })?;
    let graph = graph.expect("built at least once");
    let dir = temp_cache_dir()?;
    let loads = (|| -> anyhow::Result<Vec<f64>> {
        graph::load_or_build(grid, valid, &options, Some(&dir))?; // writes the file
        let mut loads = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let t = Instant::now();
            let (_, outcome, _) = graph::load_or_build(grid, valid, &options, Some(&dir))?;
            loads.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(
                outcome == graph::CacheOutcome::Hit,
                "the graph cache in {} did not load back ({outcome})",
                dir.display()
            );
        }
        Ok(loads)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let loads = loads?;
    let sets = [&graph.grid2mesh, &graph.mesh, &graph.mesh2grid];
    let fb: Vec<_> = sets.iter().map(|s| s.format_bytes()).collect();
    let feature_bytes = 4
        * (graph.grid_nodes.features.len()
            + graph.mesh_nodes.features.len()
            + sets.iter().map(|s| s.features.len()).sum::<usize>());
    let info = GraphInfo {
        grid_cells: grid.len(),
        grid_nodes: graph.grid_nodes.len(),
        mesh_nodes: graph.mesh_nodes.len(),
        grid2mesh_edges: graph.grid2mesh.len(),
        mesh_edges: graph.mesh.len(),
        mesh2grid_edges: graph.mesh2grid.len(),
        coo_index_bytes: fb.iter().map(|b| b.coo).sum(),
        csr_index_bytes: fb.iter().map(|b| b.csr).sum(),
        csc_index_bytes: fb.iter().map(|b| b.csc).sum(),
        feature_bytes,
        case_bytes: 0,
        build: Summary::of(&build).expect("repeats >= 1"),
        cache_load: Summary::of(&loads).expect("repeats >= 1"),
    };
    Ok((graph, info))
}

/// Runs the plan and returns the report (not yet saved).
pub fn run(
    plan: &BenchPlan,
    device: &Device,
    command: Vec<String>,
    progress: bool,
) -> anyhow::Result<Report> {
    plan.validate()?;
    let cases = plan.cases(device)?;
    let bar = if progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(cases.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "[{elapsed_precise}] [{bar:30}] {pos}/{len} cases: {msg}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut results = Vec::with_capacity(cases.len());
    let mut patch_boundary = Vec::new();
    // Cases come grouped by grid, then batch size: build each graph and batch once.
    let mut graph: Option<(String, u32, Grid, WeatherGraph, GraphInfo)> = None;
    let mut batch: Option<(usize, usize, usize, SyntheticBatch, Reference)> = None;
    for cfg in &cases {
        bar.set_message(format!("{} (graph)", cfg.short()));
        let same_graph = graph
            .as_ref()
            .is_some_and(|(g, l, ..)| *g == cfg.grid && *l == cfg.mesh_level);
        if !same_graph {
            // Free the previous grid's graph and batch before building the next.
            drop(batch.take());
            drop(graph.take());
            let (_, grid, valid) = named_grid(&plan_grid_key(plan, cfg))?;
            let (g, info) = graph_for(&grid, &valid, cfg.mesh_level, plan.graph_repeats)?;
            tracing::info!(
                "{}: {} grid nodes, {} mesh nodes (level {}), {} + {} + {} edges; built in {:.3} s, cache load {:.3} s",
                cfg.grid,
                info.grid_nodes,
                info.mesh_nodes,
                cfg.mesh_level,
                info.grid2mesh_edges,
                info.mesh_edges,
                info.mesh2grid_edges,
                info.build.median_s,
                info.cache_load.median_s
            );
            if !plan.patch_halos.is_empty() {
                bar.set_message(format!("{} (patch boundary error)", cfg.grid));
                patch_boundary.extend(patch_boundary_errors(plan, cfg, &grid, &g, device)?);
            }
            graph = Some((cfg.grid.clone(), cfg.mesh_level, grid, g, info));
        }
        let (_, _, grid, g, info) = graph.as_ref().expect("set above");
        let key = (cfg.batch_size, cfg.latent_size, cfg.num_gnn_layers);
        if batch
            .as_ref()
            .is_none_or(|(b, l, k, ..)| (*b, *l, *k) != key)
        {
            drop(batch.take());
            bar.set_message(format!("{} (reference)", cfg.short()));
            let sb = synthetic_batch(g, grid, plan.seed, cfg, device)?;
            let ref_cfg = CaseConfig {
                format: Format::REFERENCE,
                precision: precision_name(MixedPrecision::Off).into(),
                ..cfg.clone()
            };
            let reference_model = build_model(g, &ref_cfg, plan.seed, device)?;
            let (pred, loss) = forward_loss(&reference_model, &sb)?;
            let reference = Reference {
                output: pred.flatten_all()?.to_vec1()?,
                loss: loss.to_scalar::<f32>()? as f64,
            };
            batch = Some((key.0, key.1, key.2, sb, reference));
        }
        let (_, _, _, sb, reference) = batch.as_ref().expect("set above");
        bar.set_message(cfg.short());
        let inputs = CaseInputs {
            graph: g,
            info,
            batch: sb,
            reference,
        };
        let r = run_case(cfg, plan, &inputs, device);
        match (&r.error, &r.verification) {
            (Some(e), _) => tracing::error!("{}: {e}", cfg.short()),
            (None, Some(v)) if !v.verified => tracing::error!(
                "{}: differs from {} (max output difference {:.3e}, loss difference {:.3e}): no timings",
                cfg.short(),
                v.reference,
                v.max_output_diff,
                v.loss_diff
            ),
            _ => {}
        }
        results.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        kind: "graph-format".into(),
        label: plan.label.clone(),
        created_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command,
        meshcast: BuildInfo::current(),
        backend: BackendInfo::current(),
        machine: MachineInfo::detect(),
        settings: RunSettings {
            warmup_steps: plan.warmup_steps,
            timed_steps: plan.timed_steps,
            forward_repeats: plan.forward_repeats,
            graph_repeats: plan.graph_repeats,
            seed: plan.seed,
            learning_rate: LEARNING_RATE,
            rtol: RTOL,
            atol: ATOL,
            data: "synthetic: inputs uniform in [-1, 1) with validity flags 1, targets uniform in [-0.5, 0.5), ChaCha8 from the seed".into(),
        },
        cases: results,
        patch_boundary,
    })
}

/// `<dir>/<label>_<UTC timestamp>.json`.
pub fn report_path(dir: &Path, report: &Report) -> PathBuf {
    let stamp = chrono::DateTime::parse_from_rfc3339(&report.created_utc)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| "unknown-time".into());
    let label: String = report
        .label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{label}_{stamp}.json"))
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

/// The patch boundary errors as a table (empty when none were measured).
pub fn patch_boundary_table(report: &Report) -> String {
    if report.patch_boundary.is_empty() {
        return String::new();
    }
    let mut rows = vec![vec![
        "grid".to_string(),
        "patches".into(),
        "halo deg".into(),
        "largest patch nodes".into(),
        "max |patched - whole|".into(),
        "relative (max)".into(),
        "relative (rms)".into(),
    ]];
    for p in &report.patch_boundary {
        rows.push(vec![
            p.grid.clone(),
            p.patches.to_string(),
            format!("{}", p.halo_deg),
            p.largest_patch_nodes.to_string(),
            format!("{:.2e}", p.max_abs_error),
            format!("{:.2e}", p.relative_error),
            format!("{:.2e}", p.relative_rms_error),
        ]);
    }
    render_table(&rows)
}

/// The table printed at the end of a run: one row per case.
pub fn summary_table(report: &Report) -> String {
    let mut rows = vec![vec![
        "grid".to_string(),
        "mesh".into(),
        "batch".into(),
        "format".into(),
        "ckpt".into(),
        "precision".into(),
        "verified (max diff)".into(),
        "forward ms".into(),
        "step ms median (min..max)".into(),
        "samples/s".into(),
        "Medges/s".into(),
        "case peak MiB".into(),
        "predicted MiB".into(),
        "activations MiB".into(),
        "graph MiB".into(),
        "inference peak MiB".into(),
    ]];
    for c in &report.cases {
        let v = match (&c.verification, &c.error) {
            (_, Some(_)) => "error".to_string(),
            (Some(v), None) => format!(
                "{} ({:.1e})",
                if v.verified { "yes" } else { "NO" },
                v.max_output_diff
            ),
            (None, None) => "-".into(),
        };
        let (fwd, step, sps, eps) = match &c.timings {
            Some(t) => (
                format!("{:.1}", t.forward.median_s * 1e3),
                format!(
                    "{:.1} ({:.1}..{:.1})",
                    t.step.median_s * 1e3,
                    t.step.min_s * 1e3,
                    t.step.max_s * 1e3
                ),
                format!("{:.2}", t.samples_per_s),
                format!("{:.2}", t.edges_per_s / 1e6),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let (peak, act) = match &c.memory {
            Some(m) => (
                m.case_peak().map_or("-".into(), mib),
                m.activations.map_or("-".into(), mib),
            ),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            c.config.grid.clone(),
            c.config.mesh_level.to_string(),
            c.config.batch_size.to_string(),
            c.config.format.to_string(),
            if c.config.checkpointing { "yes" } else { "no" }.into(),
            c.config.precision.clone(),
            v,
            fwd,
            step,
            sps,
            eps,
            peak,
            c.predicted_peak.map_or("-".into(), mib),
            act,
            mib(c.graph.case_bytes as u64),
            c.inference_peak.map_or("-".into(), mib),
        ]);
    }
    render_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_expand_to_cases() {
        let mut plan = BenchPlan {
            grids: vec!["5".into(), "1".into()],
            batch_sizes: vec![1, 4],
            ..BenchPlan::default()
        };
        plan.overrides.insert(
            "1".into(),
            GridOverride {
                batch_sizes: Some(vec![1]),
                num_gnn_layers: Some(2),
                ..Default::default()
            },
        );
        plan.validate().unwrap();
        let cases = plan.cases(&Device::Cpu).unwrap();
        assert_eq!(cases.len(), 2 * 3 + 3);
        assert!(cases[..6]
            .iter()
            .all(|c| c.mesh_level == 4 && c.num_gnn_layers == 8));
        assert!(cases[6..]
            .iter()
            .all(|c| c.mesh_level == 6 && c.batch_size == 1 && c.num_gnn_layers == 2));
        plan.overrides.insert("2.5".into(), GridOverride::default());
        assert!(plan.validate().is_err());
    }

    #[test]
    fn quick_plan_runs_and_verifies() {
        let plan = BenchPlan {
            grids: vec!["storm1996".into()],
            batch_sizes: vec![2],
            latent_size: 8,
            num_gnn_layers: 1,
            timed_steps: 2,
            forward_repeats: 1,
            graph_repeats: 1,
            ..BenchPlan::quick()
        };
        let report = run(&plan, &Device::Cpu, vec![], false).unwrap();
        // Three formats, each without and with checkpointing.
        assert_eq!(report.cases.len(), 6);
        for c in &report.cases {
            assert!(c.verified(), "{:?}", c.verification);
            let t = c.timings.as_ref().unwrap();
            assert_eq!(t.step.samples_s.len(), 2);
            assert!(t.final_loss.is_finite());
            // No counting allocator in unit tests: measured parts are null.
            assert!(c.memory.unwrap().peak.is_none());
        }
        let replicated = &report.cases[0];
        assert_eq!(replicated.config.format, Format::CooReplicated);
        let shared = report
            .cases
            .iter()
            .find(|c| c.config.format == Format::CooShared)
            .unwrap();
        assert!(replicated.graph.case_bytes > shared.graph.case_bytes);
        assert!(summary_table(&report).contains("csr-shared"));
        // Patch boundary error: a halo covering the globe reproduces the whole grid; a
        // 10-degree halo, shorter than the coarse mesh's edges, does not.
        let by_halo = |h: f64| {
            report
                .patch_boundary
                .iter()
                .find(|p| p.halo_deg == h)
                .unwrap()
        };
        assert_eq!(report.patch_boundary.len(), 2);
        assert!(by_halo(180.0).relative_error < 1e-5, "{:?}", by_halo(180.0));
        assert!(by_halo(10.0).relative_error > 1e-4, "{:?}", by_halo(10.0));
        assert!(by_halo(10.0).largest_patch_nodes < by_halo(180.0).largest_patch_nodes);
    }
}
