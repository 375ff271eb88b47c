//! `meshcast export-reference`: everything an independent implementation needs to
//! recompute one training step of meshcast and check it number by number
//! (`scripts/pytorch_reference.py` does it in plain PyTorch).
//!
//! The step comes from one of two sources:
//! - a checkpoint of `train-model` ([`Source::Checkpoint`]): its weights, AdamW moments
//!   and step count, and one real batch of the run's data (the first `batch_size`
//!   samples of a split, in time order);
//! - a benchmark case ([`Source::Synthetic`]): a model initialised from a seed (as
//!   `benchmark-graph-format` initialises its cases) on one of its grids, with a
//!   synthetic batch of the same distribution, a fresh optimizer, learning rate 1e-4 and
//!   clipping at 1 (as its timed steps).
//!
//! The step always runs plainly in f32 on the whole grid: a run's mixed precision,
//! patches and gradient checkpointing are set aside (recorded in `notes`).
//!
//! Files written to the output directory (each to a temporary name, then renamed; the
//! sidecar last):
//! - `reference.safetensors`:
//!   - `graph.{grid_nodes,mesh_nodes}.features` (`[N, NODE_FEATURES]` f32) and
//!     `graph.grid_nodes.cells` (u32, the grid cell `i_lat * nlon + i_lon` of each node);
//!   - per edge set `s` in `grid2mesh`, `mesh`, `mesh2grid`: `graph.{s}.senders`,
//!     `graph.{s}.receivers` (`[E]` u32, COO order), `graph.{s}.features`
//!     (`[E, EDGE_FEATURES]` f32), `graph.{s}.csr_offsets` (`[n_receivers + 1]` u32) and
//!     `graph.{s}.csr_edge_ids` (`[E]` u32: the COO edge ids grouped by receiver);
//!   - `batch.x` (`[B, grid_nodes, grid_input_features]`), `batch.y` (`[B, grid_nodes,
//!     C]`, normalised residual targets) and `batch.w` (`[B, grid_nodes, C]`, loss
//!     weights: validity x latitude weight x variable weight); the loss is
//!     `sum(w * (output - y)^2) / count` (`count` in the sidecar);
//!   - meshcast's results: `meshcast.output` (`[B, grid_nodes, C]`), `meshcast.loss`
//!     (`[1]`), `grad.{name}` (the gradient of every parameter, before clipping) and,
//!     after clipping and one AdamW update, `step.weight.{name}`, `step.m.{name}` and
//!     `step.v.{name}`;
//! - `weights.safetensors` (synthetic source only; a checkpoint's own weights file is
//!   referenced instead): the parameters before the step, named as in a checkpoint;
//! - `reference.json`: [`ReferenceMeta`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{Batch, BatchLoader, Dataset, Grid, NormStats, Prefetch, Split};
use crate::error::InputError;
use crate::graph::{
    default_mesh_level, load_or_build, EdgeSet, GraphOptions, WeatherGraph, EDGE_FEATURES,
    NODE_FEATURES,
};
use crate::model::layer_norm::LAYER_NORM_EPS;
use crate::model::{Aggregation, Batching, MixedPrecision, ModelConfig};
use crate::predict::{synthetic, Execution, LossTarget, Objective, Predictor, WholeGraph};
use crate::train::checkpoint;
use crate::train::optimizer::{AdamW, AdamWParams};
use crate::train::session::{variable_weights, Session};
use crate::train::step::{apply_gradients, Applied};
use crate::train::RunConfig;

/// Version of the export layout; bumped when a name or meaning changes.
pub const FORMAT_VERSION: u32 = 1;
pub const TENSORS_FILE: &str = "reference.safetensors";
pub const SIDECAR_FILE: &str = "reference.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The synthetic source's step: benchmark-graph-format's learning rate and clipping.
pub const SYNTHETIC_LEARNING_RATE: f64 = 1e-4;
pub const SYNTHETIC_GRAD_CLIP: f64 = 1.0;

/// Where the model, the batch and the optimizer state come from.
#[derive(Debug, Clone)]
pub enum Source {
    Checkpoint(CheckpointSource),
    Synthetic(SyntheticSource),
}

#[derive(Debug, Clone)]
pub struct CheckpointSource {
    /// A run directory, its `checkpoints/` directory or a sidecar `.json`.
    pub path: PathBuf,
    /// `last` or `best`.
    pub which: String,
    /// The batch is the first samples of this split, in time order.
    pub split: Split,
    /// Samples in the batch (default: the run's batch size; at most the split's samples).
    pub batch_size: Option<usize>,
    pub graph_cache: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SyntheticSource {
    /// A benchmark grid: a global spacing in degrees (`5`, `2.5`, `1`) or `storm1996`.
    pub grid: String,
    /// None: the grid's default level.
    pub mesh_level: Option<u32>,
    pub batch_size: usize,
    pub latent_size: usize,
    pub num_gnn_layers: usize,
    pub mlp_hidden_layers: usize,
    pub input_steps: usize,
    pub channels: usize,
    /// Parameters (`init_parameters`) and batch values come from it.
    pub seed: u64,
    pub batching: Batching,
    pub aggregation: Aggregation,
    pub graph_cache: Option<PathBuf>,
}

/// The checkpoint files a checkpoint-source export refers to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointFilesMeta {
    pub dir: PathBuf,
    pub name: String,
    pub step: usize,
    pub epoch: usize,
    pub weights_sha256: String,
    pub optimizer_sha256: String,
}

/// The batch of the export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchMeta {
    /// `train`, `validation`, `test` or `synthetic`.
    pub split: String,
    /// `t0` (last input step on the dataset's time axis) of each sample; empty for synthetic.
    pub t0: Vec<usize>,
    pub size: usize,
    /// The loss's denominator: valid target entries (at least 1).
    pub count: f64,
    pub channels: Vec<String>,
}

/// The optimizer step of the export: clip the gradients to `grad_clip` (global L2 norm,
/// `scale = grad_clip / (norm + 1e-6)` when `norm > grad_clip`), then AdamW at `lr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMeta {
    pub adamw: AdamWParams,
    /// Updates applied before this one (the bias corrections use `step_before + 1`).
    pub step_before: usize,
    pub lr: f64,
    /// 0: no clipping.
    pub grad_clip: f64,
    /// Global L2 norm of the gradients before clipping (f64).
    pub grad_norm: f64,
    /// Whether clipping scaled the gradients.
    pub clipped: bool,
    /// AdamW moments before the step are the checkpoint's (`m.{name}`, `v.{name}` in
    /// `optimizer_file`) or zero when None.
    pub optimizer_file: Option<PathBuf>,
}

/// `reference.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceMeta {
    pub format_version: u32,
    pub meshcast_version: String,
    pub git_revision: Option<String>,
    /// `checkpoint` or `synthetic`.
    pub source: String,
    pub checkpoint: Option<CheckpointFilesMeta>,
    /// Parameters before the step: a safetensors file named like a checkpoint's weights.
    pub weights_file: PathBuf,
    /// The model as meshcast built it (latent size, layers, MLP depth, inputs, outputs,
    /// batching, aggregation).
    pub model: ModelConfig,
    pub node_features: usize,
    pub edge_features: usize,
    pub layer_norm_eps: f64,
    /// `global-5`, `storm1996`, or the data files of the run.
    pub grid: String,
    pub mesh_level: u32,
    pub grid_nodes: usize,
    pub mesh_nodes: usize,
    pub grid2mesh_edges: usize,
    pub mesh_edges: usize,
    pub mesh2grid_edges: usize,
    pub batch: BatchMeta,
    /// meshcast's loss on the batch (the f32 value).
    pub loss: f64,
    pub step: StepMeta,
    /// Parameter names in the fixed (sorted) order.
    pub parameters: Vec<String>,
    /// Parameters the loss does not depend on (e.g. `embed.mesh` without processor
    /// layers): their `grad.*` is zero and AdamW leaves them untouched.
    #[serde(default)]
    pub no_gradient: Vec<String>,
    pub parameter_count: usize,
    /// Settings of the run set aside for the export, and similar remarks.
    pub notes: Vec<String>,
}

impl ReferenceMeta {
    /// The sidecar before the step runs: what every source shares; [`finish`] fills in
    /// the graph's sizes, the loss, the gradient norm and the parameters.
    fn pending(
        source: &str,
        model: ModelConfig,
        batch: BatchMeta,
        step: StepMeta,
    ) -> ReferenceMeta {
        ReferenceMeta {
            format_version: FORMAT_VERSION,
            meshcast_version: env!("CARGO_PKG_VERSION").into(),
            git_revision: crate::machine::BuildInfo::current().git_revision,
            source: source.into(),
            checkpoint: None,
            weights_file: PathBuf::new(),
            model,
            node_features: NODE_FEATURES,
            edge_features: EDGE_FEATURES,
            layer_norm_eps: LAYER_NORM_EPS,
            grid: String::new(),
            mesh_level: 0,
            grid_nodes: 0,
            mesh_nodes: 0,
            grid2mesh_edges: 0,
            mesh_edges: 0,
            mesh2grid_edges: 0,
            batch,
            loss: 0.0,
            step,
            parameters: Vec::new(),
            no_gradient: Vec::new(),
            parameter_count: 0,
            notes: Vec::new(),
        }
    }
}

/// What [`export`] wrote.
pub struct Exported {
    pub meta: ReferenceMeta,
    pub files: Vec<PathBuf>,
}

/// The pieces every source provides before the step is taken.
struct Prepared<'a> {
    predictor: &'a dyn Predictor,
    graph: &'a WeatherGraph,
    x: Tensor,
    target: LossTarget,
}

/// Runs one step as described in the module docs and writes the export to `out_dir`.
pub fn export(source: &Source, out_dir: &Path, device: &Device) -> anyhow::Result<Exported> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create", out_dir.display()))?;
    match source {
        Source::Checkpoint(c) => export_checkpoint(c, out_dir, device),
        Source::Synthetic(s) => export_synthetic(s, out_dir, device),
    }
}

/// A note for every setting of the run the export sets aside: it runs the whole grid
/// in f32 with plain backprop ([`Execution::PLAIN`]) and one optimizer step on one batch.
fn set_aside(run: &RunConfig) -> Vec<String> {
    let execution = run.execution();
    let mut notes = Vec::new();
    if let Some(p) = execution.patches {
        notes.push(format!(
            "the run trains on {} patches; the export runs the whole grid",
            p.n_patches
        ));
    }
    if execution.precision != MixedPrecision::Off {
        notes.push(format!(
            "the run trains with --mixed-precision {}; the export runs in f32",
            execution.precision
        ));
    }
    if execution.checkpoint_every.is_some() {
        notes.push("the run uses gradient checkpointing; the export backpropagates plainly (same gradients)".into());
    }
    if run.train.grad_accum_steps > 1 {
        notes.push(format!(
            "the run accumulates {} micro-batches per step; the export takes one optimizer step on one batch",
            run.train.grad_accum_steps
        ));
    }
    notes
}

/// The first `batch_size` samples (default: the run's) of `split`, in time order.
fn first_batch(
    session: &Session,
    run: &RunConfig,
    stats: &NormStats,
    src: &CheckpointSource,
) -> anyhow::Result<Batch> {
    let samples = session.splits.samples(src.split);
    if samples.is_empty() {
        return Err(InputError(format!(
            "{}: the {} block has no sample",
            session.dataset.file_list(),
            split_name(src.split)
        ))
        .into());
    }
    let size = src
        .batch_size
        .unwrap_or(run.train.batch_size)
        .clamp(1, samples.len());
    BatchLoader::new(
        session.batch_data.clone(),
        Arc::new(stats.clone()),
        (run.window, 1),
        &samples[..size],
        size,
        Prefetch::Off,
    )?
    .next()
    .context("the loader returned no batch")?
}

fn export_checkpoint(
    src: &CheckpointSource,
    out_dir: &Path,
    device: &Device,
) -> anyhow::Result<Exported> {
    let (dir, name) = checkpoint::locate(&src.path, &src.which)?;
    let ck = checkpoint::load(&dir, &name, device)?;
    let run = ck.meta.run.clone();
    let mut notes = set_aside(&run);
    let dataset = Arc::new(Dataset::open(&run.data)?);
    if dataset.fingerprint != ck.meta.data_fingerprint {
        notes.push("the data files changed since the checkpoint was written".into());
        tracing::warn!("the data files changed since the checkpoint was written");
    }
    let cache = src.graph_cache.as_deref();
    let session = Session::new(&run, Execution::PLAIN, dataset.clone(), cache, device)?;
    let mut optimizer = AdamW::new(session.network().vars().to_vec(), ck.meta.adamw)?;
    ck.restore(&mut optimizer)?;
    let batch = first_batch(&session, &run, &ck.meta.stats, src)?;
    let lat_w = session.node_latitude_weights();
    let var_w = variable_weights(&run, &ck.meta.stats);
    let (x, target, _) = session.tensors(&batch, &lat_w, &var_w)?;

    let f = ck.files.clone();
    let batch_meta = BatchMeta {
        split: split_name(src.split).into(),
        t0: batch.t0.clone(),
        size: batch.len(),
        count: target.denominator,
        channels: ck.meta.stats.channels.clone(),
    };
    let step = StepMeta {
        adamw: ck.meta.adamw,
        step_before: optimizer.step_t,
        lr: ck.meta.schedule.at(optimizer.step_t),
        grad_clip: run.train.grad_clip,
        grad_norm: 0.0,
        clipped: false,
        optimizer_file: Some(absolute(&f.optimizer)),
    };
    let meta = ReferenceMeta {
        checkpoint: Some(CheckpointFilesMeta {
            dir: absolute(&dir),
            name: name.clone(),
            step: ck.meta.step,
            epoch: ck.meta.epoch,
            weights_sha256: ck.meta.weights_sha256.clone(),
            optimizer_sha256: ck.meta.optimizer_sha256.clone(),
        }),
        weights_file: absolute(&f.weights),
        grid: dataset.file_list(),
        mesh_level: session.graph.options.mesh_level,
        notes,
        ..ReferenceMeta::pending("checkpoint", run.model.clone(), batch_meta, step)
    };
    let prepared = Prepared {
        predictor: session.predictor.as_ref(),
        graph: &session.graph,
        x,
        target,
    };
    finish(prepared, optimizer, meta, out_dir, false)
}

/// The named grid of a synthetic source and its graph at the requested mesh level.
fn synthetic_graph(src: &SyntheticSource) -> anyhow::Result<(String, Grid, WeatherGraph)> {
    let (grid_name, grid, valid) = crate::data::named_grid(&src.grid)?;
    let options = GraphOptions {
        mesh_level: src.mesh_level.unwrap_or_else(|| default_mesh_level(&grid)),
        ..GraphOptions::default()
    };
    if options.mesh_level > crate::graph::MAX_MESH_LEVEL {
        crate::bail_input!(
            "--mesh-level {} is above {}",
            options.mesh_level,
            crate::graph::MAX_MESH_LEVEL
        );
    }
    let (graph, outcome, secs) =
        load_or_build(&grid, &valid, &options, src.graph_cache.as_deref())?;
    tracing::info!(
        "{grid_name}: {} grid nodes, {} mesh nodes ({outcome}, {secs:.2} s)",
        graph.grid_nodes.len(),
        graph.mesh_nodes.len()
    );
    Ok((grid_name, grid, graph))
}

fn export_synthetic(
    src: &SyntheticSource,
    out_dir: &Path,
    device: &Device,
) -> anyhow::Result<Exported> {
    if src.batch_size == 0 || src.latent_size == 0 || src.input_steps == 0 || src.channels == 0 {
        crate::bail_input!(
            "--batch-size, --latent-size, --input-steps and --channels must be at least 1"
        );
    }
    let (grid_name, grid, graph) = synthetic_graph(src)?;
    let config = ModelConfig {
        latent_size: src.latent_size,
        num_gnn_layers: src.num_gnn_layers,
        mlp_hidden_layers: src.mlp_hidden_layers,
        batching: src.batching,
        aggregation: src.aggregation,
        ..ModelConfig::default()
    }
    .for_data(src.input_steps, src.channels, 0);
    let predictor = WholeGraph::initialised(
        &graph,
        config.clone(),
        MixedPrecision::Off,
        src.seed,
        device,
    )?;
    let shape = (src.batch_size, src.input_steps, src.channels);
    let seed = src.seed ^ 0x7265_6665_7265_6e63;
    let (x, target) = synthetic::batch(&graph, &grid, shape, seed, device)?;
    let optimizer = AdamW::new(predictor.network().vars().to_vec(), AdamWParams::default())?;
    let batch = BatchMeta {
        split: "synthetic".into(),
        t0: Vec::new(),
        size: src.batch_size,
        count: target.denominator,
        channels: (0..src.channels).map(|c| format!("c{c}")).collect(),
    };
    let step = StepMeta {
        adamw: AdamWParams::default(),
        step_before: 0,
        lr: SYNTHETIC_LEARNING_RATE,
        grad_clip: SYNTHETIC_GRAD_CLIP,
        grad_norm: 0.0,
        clipped: false,
        optimizer_file: None,
    };
    let meta = ReferenceMeta {
        weights_file: absolute(&out_dir.join(WEIGHTS_FILE)),
        grid: grid_name,
        mesh_level: graph.options.mesh_level,
        notes: vec![format!(
            "parameters from init_parameters(seed {}); {}",
            src.seed,
            synthetic::DESCRIPTION
        )],
        ..ReferenceMeta::pending("synthetic", config, batch, step)
    };
    let prepared = Prepared {
        predictor: &predictor,
        graph: &graph,
        x,
        target,
    };
    finish(prepared, optimizer, meta, out_dir, true)
}

/// The weights and moments after the update: `step.{weight,m,v}.{name}`.
fn insert_updated(tensors: &mut HashMap<String, Tensor>, optimizer: &AdamW) -> anyhow::Result<()> {
    for (i, slot) in optimizer.slots.iter().enumerate() {
        let (m, v) = optimizer.moments(i)?;
        let name = &slot.name;
        tensors.insert(format!("step.weight.{name}"), slot.var.as_tensor().clone());
        tensors.insert(format!("step.m.{name}"), m);
        tensors.insert(format!("step.v.{name}"), v);
    }
    Ok(())
}

/// Output, loss, gradients and one optimizer step; writes the files.
fn finish(
    p: Prepared,
    mut optimizer: AdamW,
    mut meta: ReferenceMeta,
    out_dir: &Path,
    write_weights: bool,
) -> anyhow::Result<Exported> {
    let mut files = Vec::new();
    let vars = p.predictor.network().vars();
    if write_weights {
        let weights: HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let path = out_dir.join(WEIGHTS_FILE);
        crate::util::save_tensors(&weights, &path)?;
        files.push(path);
    }
    let mut tensors = graph_tensors(p.graph)?;
    let output = p.predictor.forward(&p.x)?;
    // The gradients are exported before clipping: the optimizer gets a copy.
    let step = p
        .predictor
        .gradients(&p.x, Objective::Loss(&p.target), None)?;
    let grads = optimizer.pack(&step.grads)?;
    let Applied::Updated { norm: grad_norm } = apply_gradients(
        &mut optimizer,
        &grads,
        1.0,
        meta.step.grad_clip,
        meta.step.lr,
    )?
    else {
        anyhow::bail!(
            "the gradients are not finite (loss {}): nothing exported",
            step.loss
        );
    };
    for ((name, var), g) in vars.iter().zip(&step.grads) {
        let g = match g {
            Some(g) => g.clone(),
            None => {
                meta.no_gradient.push(name.clone());
                var.as_tensor().zeros_like()?
            }
        };
        tensors.insert(format!("grad.{name}"), g);
    }
    insert_updated(&mut tensors, &optimizer)?;
    tensors.insert("batch.x".into(), p.x.clone());
    tensors.insert("batch.y".into(), p.target.y.clone());
    tensors.insert("batch.w".into(), p.target.w.clone());
    tensors.insert("meshcast.output".into(), output);
    tensors.insert(
        "meshcast.loss".into(),
        Tensor::new(&[step.loss as f32], p.x.device())?,
    );

    meta.grid_nodes = p.graph.grid_nodes.len();
    meta.mesh_nodes = p.graph.mesh_nodes.len();
    meta.grid2mesh_edges = p.graph.grid2mesh.len();
    meta.mesh_edges = p.graph.mesh.len();
    meta.mesh2grid_edges = p.graph.mesh2grid.len();
    meta.loss = step.loss;
    meta.step.grad_norm = grad_norm;
    meta.step.clipped = meta.step.grad_clip > 0.0 && grad_norm > meta.step.grad_clip;
    meta.parameters = vars.iter().map(|(n, _)| n.clone()).collect();
    meta.parameter_count = p.predictor.network().parameter_count();

    let path = out_dir.join(TENSORS_FILE);
    crate::util::save_tensors(&tensors, &path)?;
    files.push(path);
    let path = out_dir.join(SIDECAR_FILE);
    crate::util::write_atomic(&path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    files.push(path);
    Ok(Exported { meta, files })
}

/// The graph's node and edge sets as host tensors (see the module docs for the names).
fn graph_tensors(graph: &WeatherGraph) -> anyhow::Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    for (name, nodes) in [
        ("grid_nodes", &graph.grid_nodes),
        ("mesh_nodes", &graph.mesh_nodes),
    ] {
        t.insert(
            format!("graph.{name}.features"),
            Tensor::from_slice(&nodes.features, (nodes.len(), NODE_FEATURES), &dev)?,
        );
    }
    t.insert(
        "graph.grid_nodes.cells".into(),
        Tensor::from_slice(graph.grid_map.cells(), graph.grid_map.n_nodes(), &dev)?,
    );
    let sets: [(&str, &EdgeSet); 3] = [
        ("grid2mesh", &graph.grid2mesh),
        ("mesh", &graph.mesh),
        ("mesh2grid", &graph.mesh2grid),
    ];
    for (name, set) in sets {
        let e = set.len();
        let index = |v: &[u32]| Tensor::from_slice(v, v.len(), &dev);
        t.insert(format!("graph.{name}.senders"), index(set.senders())?);
        t.insert(format!("graph.{name}.receivers"), index(set.receivers())?);
        t.insert(
            format!("graph.{name}.features"),
            Tensor::from_slice(&set.features, (e, EDGE_FEATURES), &dev)?,
        );
        t.insert(
            format!("graph.{name}.csr_offsets"),
            index(&set.by_receiver.offsets)?,
        );
        t.insert(
            format!("graph.{name}.csr_edge_ids"),
            index(&set.by_receiver.edge_ids)?,
        );
    }
    Ok(t)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

pub fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Validation => "validation",
        Split::Test => "test",
    }
}

/// `train`, `validation` (or `val`) or `test`.
pub fn parse_split(s: &str) -> Result<Split, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "train" => Ok(Split::Train),
        "validation" | "val" => Ok(Split::Validation),
        "test" => Ok(Split::Test),
        other => Err(format!(
            "unknown split '{other}' (expected train, validation or test)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn exports_a_synthetic_step_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = SyntheticSource {
            grid: "30".into(),
            mesh_level: Some(1),
            batch_size: 2,
            latent_size: 4,
            num_gnn_layers: 1,
            mlp_hidden_layers: 1,
            input_steps: 1,
            channels: 2,
            seed: 3,
            batching: Batching::Shared,
            aggregation: Aggregation::Csr,
            graph_cache: None,
        };
        let out = export(&Source::Synthetic(src), dir.path(), &Device::Cpu).unwrap();
        assert_eq!(out.files.len(), 3);
        let meta: ReferenceMeta =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(SIDECAR_FILE)).unwrap())
                .unwrap();
        assert_eq!(meta.grid, "global-30");
        assert_eq!(meta.batch.count, (2 * meta.grid_nodes * 2) as f64);
        let t =
            candle_core::safetensors::load(dir.path().join(TENSORS_FILE), &Device::Cpu).unwrap();
        let w =
            candle_core::safetensors::load(dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        assert_eq!(w.len(), meta.parameters.len());
        for name in &meta.parameters {
            assert_eq!(t[&format!("grad.{name}")].dims(), w[name].dims());
            assert_eq!(t[&format!("step.weight.{name}")].dims(), w[name].dims());
        }
        assert_eq!(t["batch.x"].dims(), &[2, meta.grid_nodes, 4]);
        assert_eq!(t["meshcast.output"].dims(), &[2, meta.grid_nodes, 2]);
        assert_eq!(t["graph.mesh.senders"].dtype(), DType::U32);
        assert_eq!(t["graph.mesh.csr_edge_ids"].dims(), &[meta.mesh_edges]);
        assert_eq!(
            t["graph.mesh2grid.csr_offsets"].dims(),
            &[meta.grid_nodes + 1]
        );
        let loss = t["meshcast.loss"].to_vec1::<f32>().unwrap()[0] as f64;
        assert_eq!(loss, meta.loss);
        assert!(loss.is_finite() && loss > 0.0);
    }

    #[test]
    fn splits_parse() {
        assert_eq!(parse_split("val"), Ok(Split::Validation));
        assert_eq!(split_name(parse_split("Test").unwrap()), "test");
        assert!(parse_split("dev").is_err());
    }
}
