//! Peak memory of a training step, predicted from sizes, and the cheapest
//! configuration that fits a budget (`meshcast plan-memory`, `train-model --memory-budget`).
//!
//! The prediction adds what is known exactly (parameters, AdamW moments, gradients, the
//! graph tensors, the batch) to a model of the activations candle's autograd keeps for
//! the backward pass. Activations are linear in the rows each stage runs its MLPs on
//! (edges and nodes of each edge set, times the batch) and in the latent width; the
//! coefficients below were fitted to measured peaks of the counting allocator (f32,
//! bf16, with and without checkpointing, on 10- and 5-degree global grids and the
//! storm1996 grid, latent 16 and 64, batch 1 and 3; see docs/benchmarks.md), then
//! rescaled per group (plain x0.75, checkpointing x0.88 overall, low precision 0.79 -> 0.57) to
//! 16 peaks measured after the LayerNorm became one custom op (5 deg and storm1996,
//! latent 64, batch 1 and 2). On the CPU in f32 the fused kernels keep less, by a
//! factor per aggregation; a replicated batch pays the static embeddings once per copy.
//! The graph-format benchmark reports predicted against measured peaks for every case.

use candle_core::DType;
use serde::Serialize;

use crate::model::dense::fused_kernels_run;
use crate::model::{MixedPrecision, ModelConfig};

/// Without checkpointing, live latent-wide vectors (f32) per sample and edge of an
/// interaction network, with the index-add aggregation (gathered copies and partial
/// sums kept for the backward) ...
const EDGE_ROW: f64 = 8.62;
/// ... or with csr, whose one-op gather-sum keeps none of them (measured: 3.6 vectors
/// fewer per edge, 5 deg and storm1996, latent 64, batch 1 and 2) ...
const EDGE_ROW_CSR: f64 = 5.02;
/// ... per receiving node, and per grid node of the embedder and the sender update ...
const NODE_ROW: f64 = 35.29;
/// ... and per row of the static embedders (graph nodes and edges, once per batch).
const STATIC_ROW: f64 = 8.56;
/// Fixed bytes: small tensors, allocator slack.
const FIXED: f64 = 1.4e6;
/// With checkpointing (one block per segment), the same per sample: of the largest
/// stage's rows (as above: a stage is recomputed and back-propagated at once), per row
/// of the saved boundaries (mesh nodes and edges after each block, grid latents), and
/// per static row. Fitted with weights 1/peak (relative errors).
const CKPT_STAGE: f64 = 2.084;
const CKPT_BOUNDARY_ROW: f64 = 0.700;
const CKPT_STATIC_ROW: f64 = 4.009;
/// Activations with meshcast's fused CPU kernels (f32 on the CPU: dense layers that
/// keep only their input, LayerNorm fused with the residual, one product over the node
/// MLP's inputs; with csr also the edge MLP's first layer) relative to the composed ops
/// the coefficients above were fitted on, `(plain, checkpointing)`. With checkpointing
/// the factor scales the recomputed stage and the static rows, not the saved
/// boundaries, which are plain tensors either way. Measured on 10- and 5-degree grids,
/// latent 64 and 128, 4 to 16 layers, batch 1, 3 and 8, and the 1-degree step of two
/// patches (docs/benchmarks.md): csr 0.43-0.45 and 0.48-0.66, index-add 0.59-0.63 and
/// 0.64-0.74.
const FUSED_FACTORS_CSR: (f64, f64) = (0.46, 0.55);
const FUSED_FACTORS_INDEX_ADD: (f64, f64) = (0.61, 0.69);
/// Activation bytes of bf16/f16 relative to f32 (the f32 master weights' casts and the
/// f32 statistics the backward recomputes add to the half-size activations).
const LOW_PRECISION_FACTOR: f64 = 0.57;

/// Node and edge counts of the graph a step runs on (a whole grid or one patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GraphSizes {
    pub grid_nodes: usize,
    pub mesh_nodes: usize,
    pub grid2mesh_edges: usize,
    pub mesh_edges: usize,
    pub mesh2grid_edges: usize,
}

impl GraphSizes {
    pub fn of(graph: &crate::graph::WeatherGraph) -> GraphSizes {
        GraphSizes {
            grid_nodes: graph.grid_nodes.len(),
            mesh_nodes: graph.mesh_nodes.len(),
            grid2mesh_edges: graph.grid2mesh.len(),
            mesh_edges: graph.mesh.len(),
            mesh2grid_edges: graph.mesh2grid.len(),
        }
    }
}

/// The memory techniques of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Techniques {
    pub patches: usize,
    pub checkpointing: bool,
    pub precision: MixedPrecision,
}

/// What is known about a training step.
#[derive(Debug, Clone)]
pub struct StepShape {
    pub model: ModelConfig,
    pub batch_size: usize,
    /// The graph a step runs on: the whole grid, or the largest patch.
    pub step_graph: GraphSizes,
    /// Grid nodes a batch holds: all the graph's, or the rows a patch-parallel rank's
    /// patches need (the largest such window over the ranks).
    pub batch_nodes: usize,
    /// Bytes of every graph tensor resident on the device (whole graph and patches).
    pub graph_bytes: u64,
    pub techniques: Techniques,
    /// The step runs on the CPU (where f32 takes the fused kernels).
    pub on_cpu: bool,
    /// Autoregressive steps per sample (1: one-step training).
    pub rollout_steps: usize,
}

impl StepShape {
    /// Whether the step runs the fused CPU kernels: the model's rule for its activations
    /// (f32 master weights in the precision's compute dtype). On CUDA the composed ops'
    /// coefficients apply even under `--cuda-fused-ops`, whose peaks no GPU run has
    /// measured yet (they keep less: the prediction is an upper bound there).
    pub fn fused_kernels(&self) -> bool {
        fused_kernels_run(
            self.on_cpu,
            self.techniques.precision.compute_dtype(DType::F32),
        )
    }

    /// The activation factors of the step's kernels, `(plain, checkpointing)` (see
    /// `FUSED_FACTORS_CSR`; 1 for the composed ops).
    fn kernel_factors(&self) -> (f64, f64) {
        match (self.fused_kernels(), self.model.aggregation) {
            (false, _) => (1.0, 1.0),
            (true, crate::model::Aggregation::Csr) => FUSED_FACTORS_CSR,
            (true, crate::model::Aggregation::IndexAdd) => FUSED_FACTORS_INDEX_ADD,
        }
    }
}

/// A predicted peak and its parts, in bytes above what the process held before.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub weights: u64,
    pub optimizer_state: u64,
    /// Gradients (and their sum over patches).
    pub gradients: u64,
    pub graph: u64,
    /// The batch's inputs, targets and loss weights (in the master dtype).
    pub batch: u64,
    pub activations: u64,
    pub total: u64,
}

/// Parameters of `config` (the sum of [`crate::model::GraphCast`]'s MLPs).
pub fn parameter_count(config: &ModelConfig) -> usize {
    let (l, h) = (config.latent_size, config.mlp_hidden_layers);
    let mlp = |inputs: usize, out: usize, norm: bool| {
        let widths: Vec<usize> = std::iter::once(inputs)
            .chain(std::iter::repeat_n(l, h))
            .chain(std::iter::once(out))
            .collect();
        let linear: usize = widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
        linear + if norm { 2 * out } else { 0 }
    };
    use crate::graph::{EDGE_FEATURES, NODE_FEATURES};
    let interaction = |senders: bool| {
        mlp(3 * l, l, true) + mlp(2 * l, l, true) + if senders { mlp(l, l, true) } else { 0 }
    };
    mlp(config.grid_input_features + NODE_FEATURES, l, true)
        + mlp(NODE_FEATURES, l, true)
        + 3 * mlp(EDGE_FEATURES, l, true)
        + interaction(true)
        + config.num_gnn_layers * interaction(false)
        + interaction(false)
        + mlp(l, config.output_channels, false)
}

/// The optimizer's arena per parameter: AdamW's two moments (the weights are the
/// model's own parameters, counted apart).
pub const OPTIMIZER_ARENA_ROWS: u64 = 2;

/// Predicted peak bytes of one training step of `shape`.
pub fn predict(shape: &StepShape) -> Prediction {
    let t = shape.techniques;
    let master_bytes = t.precision.master_dtype().size_in_bytes() as u64;
    let params = parameter_count(&shape.model) as u64 * master_bytes;
    let gradients = if t.patches > 1 { 2 * params } else { params };
    let optimizer_state = OPTIMIZER_ARENA_ROWS * params;
    let g = shape.step_graph;
    let b = shape.batch_size as f64;
    let (grid, mesh) = (g.grid_nodes as f64, g.mesh_nodes as f64);
    let (g2m, m2m, m2g) = (
        g.grid2mesh_edges as f64,
        g.mesh_edges as f64,
        g.mesh2grid_edges as f64,
    );
    let layers = shape.model.num_gnn_layers as f64;
    // Extra hidden layers add their matmul, bias and SiLU outputs per row and MLP
    // (an extrapolation: the fit used one hidden layer).
    let extra = 3.0 * shape.model.mlp_hidden_layers.saturating_sub(1) as f64;
    let edge_base = match shape.model.aggregation {
        crate::model::Aggregation::IndexAdd => EDGE_ROW,
        crate::model::Aggregation::Csr => EDGE_ROW_CSR,
    };
    let (edge_row, node_row) = (edge_base + extra, NODE_ROW + 2.0 * extra);
    let encoder = edge_row * g2m + node_row * (2.0 * grid + mesh);
    let block = edge_row * m2m + node_row * mesh;
    let decoder = edge_row * m2g + node_row * grid;
    let latent = shape.model.latent_size as f64;
    // The static embedders run once per batch, or once per copy of a replicated graph.
    let copies = match shape.model.batching {
        crate::model::Batching::Shared => 1.0,
        crate::model::Batching::Replicated => b,
    };
    let static_rows = copies * (mesh + g2m + m2m + m2g);
    let (plain_factor, checkpointing_factor) = shape.kernel_factors();
    let vectors = if t.checkpointing {
        // One stage alive at a time, plus the saved boundaries.
        let stage = encoder.max(block).max(decoder);
        let boundaries = (layers + 1.0) * (mesh + m2m) + grid;
        checkpointing_factor * (b * CKPT_STAGE * stage + CKPT_STATIC_ROW * static_rows)
            + b * CKPT_BOUNDARY_ROW * boundaries
    } else {
        plain_factor * (b * (encoder + layers * block + decoder) + STATIC_ROW * static_rows)
    };
    let bytes_per_value = match t.precision {
        MixedPrecision::Off => 4.0,
        MixedPrecision::F64 => 8.0,
        MixedPrecision::Bf16 | MixedPrecision::F16 => 4.0 * LOW_PRECISION_FACTOR,
    };
    let activations = (bytes_per_value * latent * vectors + FIXED) as u64;
    let batch = batch_bytes(shape, b * shape.batch_nodes as f64);
    // Saturating: an absurd shape predicts "more than any machine", never wraps around.
    let total = [
        params,
        optimizer_state,
        gradients,
        shape.graph_bytes,
        batch,
        activations,
    ]
    .into_iter()
    .fold(0u64, u64::saturating_add);
    Prediction {
        weights: params,
        optimizer_state,
        gradients,
        graph: shape.graph_bytes,
        batch,
        activations,
        total,
    }
}

/// The batch on the device for `rows` (batch x grid nodes): inputs, targets and loss
/// weights; a rollout of K steps keeps K of each, every step's inputs and extra inputs
/// (bounded by the inputs' width), its residual sum and the gradient carried back. Its
/// activations are one step's: each step is recomputed in the backward pass on its own.
fn batch_bytes(shape: &StepShape, rows: f64) -> u64 {
    let (inputs, channels) = (
        shape.model.grid_input_features as f64,
        shape.model.output_channels as f64,
    );
    let per_row = match shape.rollout_steps {
        0 | 1 => inputs + 2.0 * channels,
        k => k as f64 * (2.0 * inputs + 4.0 * channels),
    };
    let bytes = shape.techniques.precision.master_dtype().size_in_bytes() as f64;
    (bytes * rows * per_row) as u64
}

/// A lower bound of the peak of one forward pass on the inference view (eval,
/// forecast): the weights, the graph, the batch, and the latents of the largest node
/// or edge set, which must exist at once. Measured inference peaks are 3-4 times
/// this (5 degrees, latent 128, 8 layers: floor 17 MB, measured 51 MB at batch 1;
/// 48 against 184 MB at batch 4), so a run refused by it would not have fitted.
pub fn inference_floor(shape: &StepShape) -> u64 {
    let g = shape.step_graph;
    let rows = [
        g.grid2mesh_edges,
        g.mesh_edges,
        g.mesh2grid_edges,
        g.grid_nodes,
        g.mesh_nodes,
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as f64;
    let bytes_per_value = shape
        .techniques
        .precision
        .compute_dtype(DType::F32)
        .size_in_bytes() as f64;
    let latents =
        (shape.batch_size as f64 * rows * shape.model.latent_size as f64 * bytes_per_value) as u64;
    let p = predict(shape);
    [p.weights, p.graph, p.batch, latents]
        .into_iter()
        .fold(0u64, u64::saturating_add)
}

/// The configurations [`choose`] tries, cheapest first: fewest patches, then
/// checkpointing before lower precision.
pub fn candidates(max_patches: usize) -> Vec<Techniques> {
    let mut out = Vec::new();
    let mut patches = 1;
    while patches <= max_patches {
        for (checkpointing, precision) in [
            (false, MixedPrecision::Off),
            (true, MixedPrecision::Off),
            (false, MixedPrecision::Bf16),
            (true, MixedPrecision::Bf16),
        ] {
            out.push(Techniques {
                patches,
                checkpointing,
                precision,
            });
        }
        patches *= 2;
    }
    out
}

/// One row of a plan: a configuration and its predicted peak.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub techniques: Techniques,
    pub prediction: Prediction,
    pub fits: bool,
}

/// Predictions for `candidates` (`shape_for` gives each one's step shape, e.g. after
/// splitting the graph into its patches) and the first that fits `budget`, if any.
/// The search ends at the first patch count the grid cannot be split into.
pub fn choose(
    budget: u64,
    candidates: &[Techniques],
    mut shape_for: impl FnMut(Techniques) -> anyhow::Result<StepShape>,
) -> anyhow::Result<(Vec<PlanRow>, Option<usize>)> {
    let mut rows = Vec::new();
    let mut chosen = None;
    for &t in candidates {
        let shape = match shape_for(t) {
            Ok(shape) => shape,
            // Candidates come by patch count: the grid cannot be split any finer.
            Err(e) if t.patches > 1 => {
                tracing::debug!("{} patches: {e:#}", t.patches);
                break;
            }
            Err(e) => return Err(e),
        };
        let prediction = predict(&shape);
        let fits = prediction.total <= budget;
        if fits && chosen.is_none() {
            chosen = Some(rows.len());
        }
        rows.push(PlanRow {
            techniques: t,
            prediction,
            fits,
        });
        if chosen.is_some() {
            break;
        }
    }
    Ok((rows, chosen))
}

/// Everything of a training step but its memory techniques: what the budget search
/// varies them on.
pub struct StepSetting<'a> {
    pub graph: &'a crate::graph::WeatherGraph,
    pub grid: &'a crate::data::Grid,
    pub model: &'a ModelConfig,
    pub batch_size: usize,
    pub patch_halo: f64,
    pub on_cpu: bool,
    pub rollout_steps: usize,
    /// Ranks of patch-parallel training, each holding its share of the patches (1:
    /// one process holds them all).
    pub patch_ranks: usize,
}

impl StepSetting<'_> {
    /// The step shape of `techniques`: the largest patch's sizes when it uses patches,
    /// and the bytes of every graph tensor the run keeps resident (the whole graph, or
    /// the subgraphs of every patch, or of the largest share of them a rank holds).
    pub fn shape(&self, techniques: Techniques) -> anyhow::Result<StepShape> {
        let (graph, model) = (self.graph, self.model);
        let cpu = candle_core::Device::Cpu;
        let bytes = |g: &crate::graph::WeatherGraph| -> anyhow::Result<u64> {
            Ok(
                crate::model::GraphTensors::new(g, &cpu, techniques.precision.master_dtype())?
                    .with_aggregation(model.aggregation)
                    .bytes() as u64,
            )
        };
        let mut step_graph = GraphSizes::of(graph);
        let mut batch_nodes = graph.grid_nodes.len();
        let graph_bytes = if techniques.patches > 1 {
            let options = crate::graph::PatchOptions {
                n_patches: techniques.patches,
                halo_deg: self.patch_halo,
            };
            let mut largest: Option<GraphSizes> = None;
            let mut each = Vec::new();
            let patches = crate::graph::split_into_patches(graph, self.grid, &options)?;
            for patch in &patches {
                let sub = patch.subgraph(graph);
                each.push(bytes(&sub)?);
                let sizes = GraphSizes::of(&sub);
                let rows = |s: &GraphSizes| s.grid2mesh_edges + s.mesh_edges + s.mesh2grid_edges;
                if largest.is_none_or(|l| rows(&sizes) > rows(&l)) {
                    largest = Some(sizes);
                }
            }
            step_graph = largest.unwrap_or(step_graph);
            let ranks = self.patch_ranks.max(1);
            let mine = |r| crate::distributed::shard(each.len(), r, ranks);
            if ranks > 1 {
                let window =
                    |r| crate::graph::RowWindow::covering(&patches[mine(r)], graph, self.grid);
                batch_nodes = (0..ranks).map(|r| window(r).nodes.len()).max().unwrap_or(0);
            }
            (0..ranks)
                .map(|r| each[mine(r)].iter().sum())
                .max()
                .unwrap_or(0)
        } else {
            bytes(graph)?
        };
        Ok(StepShape {
            model: model.clone(),
            batch_size: self.batch_size,
            step_graph,
            batch_nodes,
            graph_bytes,
            techniques,
            on_cpu: self.on_cpu,
            rollout_steps: self.rollout_steps,
        })
    }
}

/// What the budget search tried, and the first configuration that fits.
pub struct BudgetFit {
    pub budget: u64,
    pub rows: Vec<PlanRow>,
    pub chosen: Option<usize>,
}

impl BudgetFit {
    /// The chosen row, or the refusal (an input error) naming the smallest prediction;
    /// `more` says how to let the search go further, if the caller has a way.
    pub fn chosen_or_refuse(&self, more: &str) -> anyhow::Result<&PlanRow> {
        if let Some(i) = self.chosen {
            return Ok(&self.rows[i]);
        }
        let least = self
            .rows
            .iter()
            .min_by_key(|r| r.prediction.total)
            .ok_or_else(|| crate::error::InputError("no configuration to try".into()))?;
        crate::bail_input!(
            "--memory-budget {}: no configuration fits: the smallest prediction is {} ({}); raise the budget \
             or shrink the model or the batch{more}",
            human_bytes(self.budget),
            human_bytes(least.prediction.total),
            least.techniques
        )
    }
}

/// The cheapest configuration of `setting` within `budget`, trying up to `max_patches`
/// patches (the one search behind `plan-memory` and `train-model --memory-budget`).
pub fn fit_budget(
    budget: u64,
    max_patches: usize,
    setting: &StepSetting,
) -> anyhow::Result<BudgetFit> {
    let (rows, chosen) = choose(budget, &candidates(max_patches), |t| setting.shape(t))?;
    Ok(BudgetFit {
        budget,
        rows,
        chosen,
    })
}

impl Techniques {
    /// The `train-model` flags that select these techniques.
    pub fn flags(&self) -> String {
        format!(
            "--patches {} {}--mixed-precision {}",
            self.patches,
            if self.checkpointing {
                "--checkpointing "
            } else {
                ""
            },
            self.precision
        )
    }
}

impl std::fmt::Display for Techniques {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} patch{}, checkpointing {}, precision {}",
            self.patches,
            if self.patches == 1 { "" } else { "es" },
            if self.checkpointing { "on" } else { "off" },
            self.precision
        )
    }
}

/// `3.40 GB`, or `512 MB` below a gigabyte.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.0} MB", bytes as f64 / 1e6)
    }
}

/// Parses `4GB`, `3.5 GiB`, `512MB`, `2000000000` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim().to_ascii_lowercase());
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4GB, 3.5GiB, 512MB)"))?;
    let scale = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    if !(value > 0.0 && value.is_finite()) {
        return Err(format!("'{text}' must be a positive size"));
    }
    Ok((value * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::tiny_graph;
    use crate::model::{GraphCast, GraphTensors};
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn parameter_count_matches_the_model() -> anyhow::Result<()> {
        let graph = GraphTensors::new(&tiny_graph(1), &Device::Cpu, DType::F32)?;
        for (latent, layers, hidden) in [(8, 2, 1), (16, 3, 2)] {
            let config = ModelConfig {
                latent_size: latent,
                num_gnn_layers: layers,
                mlp_hidden_layers: hidden,
                grid_input_features: 20,
                output_channels: 5,
                ..Default::default()
            };
            let varmap = VarMap::new();
            GraphCast::new(
                config.clone(),
                &graph,
                VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            )?;
            assert_eq!(
                parameter_count(&config),
                crate::model::parameter_count(&varmap)
            );
        }
        Ok(())
    }

    /// A patch-parallel rank's batch holds its window's grid nodes: fewer with more
    /// ranks, all of them in one process, with or without patches.
    #[test]
    fn a_patch_parallel_ranks_batch_holds_its_rows() -> anyhow::Result<()> {
        let grid = crate::data::Grid::global_cell_centred(5.0);
        let options = crate::graph::GraphOptions {
            mesh_level: 2,
            ..Default::default()
        };
        let graph = crate::graph::build(&grid, &vec![true; grid.len()], &options)?;
        let model = ModelConfig {
            grid_input_features: 20,
            output_channels: 5,
            ..Default::default()
        };
        let setting = |patch_ranks| StepSetting {
            graph: &graph,
            grid: &grid,
            model: &model,
            batch_size: 2,
            patch_halo: 10.0,
            on_cpu: true,
            rollout_steps: 1,
            patch_ranks,
        };
        let t = |patches| Techniques {
            patches,
            checkpointing: false,
            precision: MixedPrecision::Off,
        };
        let all = graph.grid_nodes.len();
        assert_eq!(setting(1).shape(t(1))?.batch_nodes, all);
        assert_eq!(setting(1).shape(t(8))?.batch_nodes, all);
        let (two, four) = (setting(2).shape(t(8))?, setting(4).shape(t(8))?);
        assert!(four.batch_nodes < two.batch_nodes && two.batch_nodes < all);
        assert!(predict(&four).batch < predict(&two).batch);
        Ok(())
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_bytes("3.5 GiB"), Ok((3.5 * 1073741824.0) as u64));
        assert_eq!(parse_bytes("512mb"), Ok(512_000_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("4 GX").is_err());
        assert!(parse_bytes("-1GB").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    fn shape(t: Techniques) -> StepShape {
        StepShape {
            model: ModelConfig {
                latent_size: 128,
                num_gnn_layers: 16,
                grid_input_features: 20,
                output_channels: 5,
                ..Default::default()
            },
            batch_size: 1,
            step_graph: GraphSizes {
                grid_nodes: 64800 / t.patches,
                mesh_nodes: 40962 / t.patches,
                grid2mesh_edges: 110000 / t.patches,
                mesh_edges: 327660 / t.patches,
                mesh2grid_edges: 194400 / t.patches,
            },
            batch_nodes: 64800,
            graph_bytes: 50_000_000,
            techniques: t,
            // On a GPU, where low precision runs the same (composed) ops as f32.
            on_cpu: false,
            rollout_steps: 1,
        }
    }

    #[test]
    fn each_technique_lowers_the_prediction() {
        let base = Techniques {
            patches: 1,
            checkpointing: false,
            precision: MixedPrecision::Off,
        };
        let p = |t| predict(&shape(t)).total;
        assert!(
            p(Techniques {
                checkpointing: true,
                ..base
            }) < p(base) / 2
        );
        assert!(
            p(Techniques {
                precision: MixedPrecision::Bf16,
                ..base
            }) < p(base)
        );
        assert!(p(Techniques { patches: 4, ..base }) < p(base) / 2);
    }

    #[test]
    fn a_replicated_batch_pays_the_static_embeddings_once_per_copy() {
        let t = Techniques {
            patches: 1,
            checkpointing: false,
            precision: MixedPrecision::Off,
        };
        let mut s = shape(t);
        s.batch_size = 4;
        let shared = predict(&s).activations;
        s.model.batching = crate::model::Batching::Replicated;
        let replicated = predict(&s).activations;
        // Three more copies of the static rows (mesh nodes and the three edge sets).
        let g = s.step_graph;
        let static_rows =
            (g.mesh_nodes + g.grid2mesh_edges + g.mesh_edges + g.mesh2grid_edges) as f64;
        let expected = 3.0 * STATIC_ROW * static_rows * 4.0 * 128.0;
        let extra = (replicated - shared) as f64;
        assert!(
            (extra - expected).abs() < 1e-6 * expected,
            "{extra} vs {expected}"
        );
    }

    #[test]
    fn chooses_the_first_candidate_that_fits_or_none() -> anyhow::Result<()> {
        let all = candidates(16);
        assert_eq!(all.len(), 5 * 4);
        assert_eq!((all[0].patches, all[0].checkpointing), (1, false));
        assert_eq!((all[1].patches, all[1].checkpointing), (1, true));
        let budget = predict(&shape(all[1])).total;
        let (rows, chosen) = choose(budget, &all, |t| Ok(shape(t)))?;
        assert_eq!(chosen, Some(1));
        assert!(!rows[0].fits && rows[1].fits);
        let (rows, chosen) = choose(1_000, &all, |t| Ok(shape(t)))?;
        assert_eq!((rows.len(), chosen), (all.len(), None));
        Ok(())
    }
}
