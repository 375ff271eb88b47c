//! One case: its model built from the seed, verified against the reference format on
//! the inference view, then timed (forward passes and training steps) with its memory.

use candle_core::{DType, Device, Tensor};

use super::plan::{plan_grid_key, precision_name, BenchPlan};
use super::LEARNING_RATE;
use crate::bench::report::{
    CaseConfig, CaseResult, Format, GraphInfo, ModelSize, PatchBoundaryError, Timings, Verification,
};
use crate::bench::stats::{time_repeats, Summary};
use crate::data::Grid;
use crate::graph::WeatherGraph;
use crate::memory::{self, MemoryBreakdown};
use crate::model::{MixedPrecision, ModelConfig};
use crate::predict::loss::{scalar, weighted_mse};
use crate::predict::{synthetic, LossTarget, Patched, Predictor, WholeGraph};
use crate::train::optimizer::{AdamW, AdamWParams};
use crate::train::step::train_step;
use crate::verify::tolerance::{allclose, tolerances};

/// One synthetic batch on the graph's grid nodes.
pub(super) struct SyntheticBatch {
    x: Tensor,
    target: LossTarget,
}

impl SyntheticBatch {
    /// `cfg`'s batch, from a seed of the plan's, the grid's size and the batch size.
    pub(super) fn new(
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
}

/// The model of `cfg`'s format on the whole of `graph`, parameters from `seed`.
fn build_model(
    graph: &WeatherGraph,
    cfg: &CaseConfig,
    seed: u64,
    device: &Device,
) -> anyhow::Result<WholeGraph> {
    let config = case_model(cfg);
    WholeGraph::initialised(graph, config, case_precision(cfg)?, seed, device)
}

fn case_model(cfg: &CaseConfig) -> ModelConfig {
    ModelConfig {
        latent_size: cfg.latent_size,
        num_gnn_layers: cfg.num_gnn_layers,
        mlp_hidden_layers: cfg.mlp_hidden_layers,
        batching: cfg.format.batching(),
        aggregation: cfg.format.aggregation(),
        ..ModelConfig::default()
    }
    .for_data(cfg.input_steps, cfg.channels, 0)
}

/// The result of a case not run because its predicted peak exceeds the memory free
/// on `device` (checked before its batch, reference or model is allocated: a case the
/// kernel kills would lose the whole benchmark); None when it fits.
pub(super) fn skipped_for_memory(
    cfg: &CaseConfig,
    info: &GraphInfo,
    device: &Device,
) -> anyhow::Result<Option<CaseResult>> {
    let Some(available) = memory::available_on(device) else {
        return Ok(None);
    };
    // The graph in every format: an upper bound of what the case holds.
    let estimate = GraphInfo {
        case_bytes: info.feature_bytes
            + info.coo_index_bytes
            + info.csr_index_bytes
            + info.csc_index_bytes,
        ..info.clone()
    };
    let predicted = predicted_peak(cfg, &estimate, &case_model(cfg))?;
    if predicted <= available.bytes {
        return Ok(None);
    }
    let human = crate::memory::planner::human_bytes;
    Ok(Some(CaseResult {
        skipped: Some(format!(
            "predicted peak {} exceeds the {} {}",
            human(predicted),
            human(available.bytes),
            available.source
        )),
        predicted_peak: Some(predicted),
        ..empty_result(cfg, info)
    }))
}

/// A case's result before anything is measured.
fn empty_result(cfg: &CaseConfig, info: &GraphInfo) -> CaseResult {
    CaseResult {
        config: cfg.clone(),
        graph: info.clone(),
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
        skipped: None,
    }
}

fn case_precision(cfg: &CaseConfig) -> anyhow::Result<MixedPrecision> {
    cfg.precision.parse().map_err(anyhow::Error::msg)
}

/// The reference format's output (flattened) and loss.
pub(super) struct Reference {
    output: Vec<f32>,
    loss: f64,
}

impl Reference {
    /// The reference format (coo-shared, f32) run on `batch` with `cfg`'s model size.
    pub(super) fn of(
        graph: &WeatherGraph,
        batch: &SyntheticBatch,
        seed: u64,
        cfg: &CaseConfig,
        device: &Device,
    ) -> anyhow::Result<Reference> {
        let ref_cfg = CaseConfig {
            format: Format::REFERENCE,
            precision: precision_name(MixedPrecision::Off).into(),
            ..cfg.clone()
        };
        let model = build_model(graph, &ref_cfg, seed, device)?;
        let (pred, loss) = forward_loss(&model, batch)?;
        Ok(Reference {
            output: pred.flatten_all()?.to_vec1()?,
            loss: loss.to_scalar::<f32>()? as f64,
        })
    }
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
pub(super) struct CaseInputs<'a> {
    pub graph: &'a WeatherGraph,
    pub info: &'a GraphInfo,
    pub batch: &'a SyntheticBatch,
    pub reference: &'a Reference,
}

/// Runs one case after the graph and batch exist.
pub(super) fn run_case(
    cfg: &CaseConfig,
    plan: &BenchPlan,
    inputs: &CaseInputs,
    device: &Device,
) -> CaseResult {
    let baseline = memory::reset_peak_on(device);
    let mut result = empty_result(cfg, inputs.info);
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
    let param_bytes = net.parameter_count() * net.dtype().size_in_bytes();
    result.model = ModelSize {
        parameters: net.parameter_count(),
        bytes: param_bytes,
    };
    result.graph.case_bytes = case_graph_bytes(&predictor, cfg)?;
    result.predicted_peak = Some(predicted_peak(cfg, &result.graph, net.config())?);
    // Verification, then the timed forward passes, on the inference view: its peak
    // is what a forecast of this batch needs (weights, graph, activations).
    let verification = verify(&predictor, cfg, inputs)?;
    let verified = verification.verified;
    result.verification = Some(verification);
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
        scalar(&loss)?;
        Ok(())
    })?;
    result.inference_peak = memory::peak_on(device)
        .zip(baseline)
        .map(|(p, b)| p.saturating_sub(b) as u64);
    // The peak of the training steps only, from the level the case holds now.
    memory::reset_peak_on(device);
    let times = time_steps(&predictor, cfg, plan, inputs.batch)?;
    let peak = memory::peak_on(device);
    let step = Summary::of(&times.steps).expect("at least one timed step");
    let edges = edge_updates_per_sample(&result.graph, cfg.num_gnn_layers);
    result.timings = Some(Timings {
        forward: Summary::of(&forward_times).expect("at least one forward"),
        samples_per_s: cfg.batch_size as f64 / step.median_s,
        edges_per_s: (cfg.batch_size * edges) as f64 / step.median_s,
        step,
        optimizer: device
            .is_cpu()
            .then(|| Summary::of(&times.optimizer))
            .flatten(),
        warmup_steps: plan.warmup_steps,
        final_loss: times.final_loss,
    });
    result.memory = Some(MemoryBreakdown::new(
        param_bytes,
        memory::planner::OPTIMIZER_ARENA_ROWS * param_bytes,
        param_bytes,
        graph_bytes,
        baseline.map(|b| b as u64),
        peak.map(|p| p as u64),
    ));
    Ok(())
}

/// The case's output and loss against the reference format's.
fn verify(
    predictor: &dyn Predictor,
    cfg: &CaseConfig,
    inputs: &CaseInputs,
) -> anyhow::Result<Verification> {
    let (pred, loss) = forward_loss(predictor, inputs.batch)?;
    let out: Vec<f32> = pred.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let loss_value = scalar(&loss)?;
    let reference = inputs.reference;
    let precision = case_precision(cfg)?;
    let tf32 = crate::device::tf32_enabled() && precision == MixedPrecision::Off;
    let (rtol, atol_fraction) = match tf32 {
        true => crate::verify::tolerance::TF32_TOLERANCES,
        false => tolerances(precision),
    };
    let scale = reference
        .output
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let atol = atol_fraction * scale.max(f64::MIN_POSITIVE);
    let (mut out_ok, max_diff) = allclose(&out, &reference.output, rtol, atol);
    if !matches!(precision, MixedPrecision::Off | MixedPrecision::F64) || tf32 {
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

/// The timed steps of a case: each step's time, the optimizer's part of each, and the
/// last loss.
struct StepTimes {
    steps: Vec<f64>,
    optimizer: Vec<f64>,
    final_loss: f64,
}

/// `warmup_steps` untimed training steps, then the timed ones.
fn time_steps(
    predictor: &dyn Predictor,
    cfg: &CaseConfig,
    plan: &BenchPlan,
    batch: &SyntheticBatch,
) -> anyhow::Result<StepTimes> {
    let mut optimizer = AdamW::new(predictor.network().vars().to_vec(), AdamWParams::default())?;
    let (mut last_loss, mut optimizer_times) = (f64::NAN, Vec::new());
    let checkpoint_every = cfg.checkpointing.then_some(1);
    let mut step = || -> anyhow::Result<()> {
        let data = (&batch.x, &batch.target);
        let outcome = train_step(
            predictor,
            &mut optimizer,
            data,
            checkpoint_every,
            1.0,
            LEARNING_RATE,
        )?;
        last_loss = outcome.loss;
        optimizer_times.push(outcome.optimizer_seconds);
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
    let steps = time_repeats(steps, &mut step)?;
    let timed = optimizer_times.split_off(optimizer_times.len() - steps.len());
    Ok(StepTimes {
        steps,
        optimizer: timed,
        final_loss: last_loss,
    })
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
        batch_nodes: g.grid_nodes,
        graph_bytes: g.case_bytes as u64,
        techniques: Techniques {
            patches: cfg.patches,
            checkpointing: cfg.checkpointing,
            precision: case_precision(cfg)?,
        },
        on_cpu: cfg.device == "cpu",
        rollout_steps: 1,
    });
    Ok(p.total - p.batch)
}

/// Patched against whole-grid forward passes of `cfg`'s model (f32, batch of one) on
/// `graph`, for every halo of the plan.
pub(super) fn patch_boundary_errors(
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
    let x = SyntheticBatch::new(graph, grid, plan.seed, &cfg, device)?.x;
    let whole = whole_graph.forward(&x)?;
    let mut out = Vec::new();
    for &halo_deg in &plan.patch_halos {
        let options = crate::graph::PatchOptions {
            n_patches: plan.boundary_patches,
            halo_deg,
        };
        let patches = Patched::split(
            graph,
            grid,
            &options,
            (device, whole_graph.network().dtype()),
        )?;
        let largest = patches
            .iter()
            .map(|p| p.graph.grid_nodes.count)
            .max()
            .unwrap_or(0);
        let n_patches = patches.len();
        let patched = Patched::new(whole_graph.shared_network(), patches).forward(&x)?;
        let diff = (&patched - &whole)?;
        let max_abs_error = scalar(&diff.abs()?.max_all()?)?;
        let rms = |t: &Tensor| -> anyhow::Result<f64> { Ok(scalar(&t.sqr()?.mean_all()?)?.sqrt()) };
        out.push(PatchBoundaryError {
            grid: cfg.grid.clone(),
            patches: n_patches,
            halo_deg,
            largest_patch_nodes: largest,
            max_abs_error,
            relative_error: max_abs_error
                / scalar(&whole.abs()?.max_all()?)?.max(f64::MIN_POSITIVE),
            relative_rms_error: rms(&diff)? / rms(&whole)?.max(f64::MIN_POSITIVE),
        });
    }
    Ok(out)
}
