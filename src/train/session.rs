//! What training, evaluation and forecasting share: the dataset, the graph built once
//! and placed on the device, the model and its parameters in a fixed order.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::checkpointing::{step_gradients, StepGradients};
use super::config::RunConfig;
use super::loss::weighted_mse;
use crate::data::{Batch, Dataset, NormStats, Splits};
use crate::graph::{load_or_build, split_into_patches, Patch, PatchOptions, WeatherGraph};
use crate::model::{GraphCast, GraphTensors, ModelConfig};

/// Model inputs per grid node: the normalised values and their validity flags.
pub fn grid_input_features(input_steps: usize, channels: usize) -> usize {
    2 * input_steps * channels
}

/// One spatial patch on the device: its own graph, which full-graph grid nodes it
/// holds, and which of those it owns (loss and outputs come from owned nodes only).
pub struct PatchTensors {
    pub graph: GraphTensors,
    /// Full-graph grid-node ids of the patch's grid nodes (u32).
    pub nodes: Tensor,
    /// `[1, nodes, 1]`: 1 for owned nodes, 0 for halo.
    pub owned: Tensor,
    /// Owned nodes: local ids and full-graph ids (u32).
    pub owned_local: Tensor,
    pub owned_full: Tensor,
}

pub struct Session {
    pub dataset: Arc<Dataset>,
    pub splits: Splits,
    pub graph: WeatherGraph,
    pub graph_tensors: GraphTensors,
    /// Empty unless the run trains (or infers) patch by patch.
    pub patches: Vec<PatchTensors>,
    pub model: GraphCast,
    /// The same model over detached views of the same parameter storage: forward
    /// passes through it build no autograd graph, so inference frees each activation
    /// as soon as it is used (and sees every optimizer update, which writes in place).
    inference: GraphCast,
    /// Parameters sorted by name: the order of the optimizer and the checkpoints.
    pub vars: Vec<(String, Var)>,
    pub device: Device,
}

impl Session {
    /// Opens the data, builds (or loads) the graph and builds the model for `run`.
    pub fn new(
        run: &RunConfig,
        dataset: Arc<Dataset>,
        graph_cache: Option<&Path>,
        device: &Device,
    ) -> anyhow::Result<Session> {
        let splits = Splits::new(dataset.time.len(), run.split, run.window)
            .map_err(|e| crate::error::InputError(format!("{}: {}", dataset.file_list(), e.0)))?;
        let valid = dataset.ever_valid(0..dataset.time.len())?;
        let (graph, outcome, secs) = load_or_build(&dataset.grid, &valid, &run.graph, graph_cache)?;
        tracing::info!(
            "graph: {} grid nodes, {} mesh nodes, {} mesh edges ({outcome}, {secs:.2} s)",
            graph.grid_nodes.len(),
            graph.mesh_nodes.len(),
            graph.mesh.len()
        );
        let graph_tensors = GraphTensors::new(&graph, device, DType::F32)?;
        let patches = if run.train.patches > 1 {
            let options = PatchOptions {
                n_patches: run.train.patches,
                halo_deg: run.train.patch_halo,
            };
            let patches = split_into_patches(&graph, &dataset.grid, &options)?;
            tracing::info!(
                "{} patches, halo {} deg: {} to {} grid nodes each",
                patches.len(),
                options.halo_deg,
                patches
                    .iter()
                    .map(|p| p.grid_nodes.len())
                    .min()
                    .unwrap_or(0),
                patches
                    .iter()
                    .map(|p| p.grid_nodes.len())
                    .max()
                    .unwrap_or(0)
            );
            patches
                .iter()
                .map(|p| patch_tensors(p, &graph, device))
                .collect::<anyhow::Result<_>>()?
        } else {
            Vec::new()
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let mut model = GraphCast::new(run.model.clone(), &graph_tensors, vb)?;
        model.set_precision(run.train.mixed_precision);
        let vars = crate::model::named_parameters(&varmap);
        let inference = model.detached(&vars, &graph_tensors)?;
        Ok(Session {
            dataset,
            splits,
            graph,
            graph_tensors,
            patches,
            model,
            inference,
            vars,
            device: device.clone(),
        })
    }

    /// The model's output `[B, nodes, C]` for inputs `[B, nodes, F]`, patch by patch
    /// when the run uses patches (each patch contributes its owned nodes). No gradients,
    /// and no autograd graph held while it runs.
    pub fn predict(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        if self.patches.is_empty() {
            return Ok(self.inference.forward(&self.graph_tensors, x)?);
        }
        let (b, n, _) = x.dims3()?;
        let mut out = Tensor::zeros(
            (b, n, self.model.config().output_channels),
            DType::F32,
            &self.device,
        )?;
        for p in &self.patches {
            let pred = self
                .inference
                .forward(&p.graph, &x.index_select(&p.nodes, 1)?)?;
            out = out.index_add(&p.owned_full, &pred.index_select(&p.owned_local, 1)?, 1)?;
        }
        Ok(out)
    }

    /// Loss and parameter gradients of one micro-batch: the latitude-weighted MSE with
    /// weights `w`, divided by `denominator` (valid entries x accumulation steps / loss
    /// scale); patch by patch (the losses of the owned nodes add up to the full one)
    /// when the run uses patches.
    pub fn gradients(
        &self,
        x: &Tensor,
        y: &Tensor,
        w: &Tensor,
        denominator: f64,
        checkpoint_every: Option<usize>,
    ) -> anyhow::Result<StepGradients> {
        if self.patches.is_empty() {
            let loss = |pred: &Tensor| weighted_mse(pred, y, w, denominator);
            return Ok(step_gradients(
                &self.model,
                &self.graph_tensors,
                x,
                &self.vars,
                loss,
                checkpoint_every,
            )?);
        }
        let mut total = StepGradients {
            loss: 0.0,
            grads: vec![None; self.vars.len()],
        };
        for p in &self.patches {
            let (xp, yp) = (x.index_select(&p.nodes, 1)?, y.index_select(&p.nodes, 1)?);
            let wp = w.index_select(&p.nodes, 1)?.broadcast_mul(&p.owned)?;
            let loss = |pred: &Tensor| weighted_mse(pred, &yp, &wp, denominator);
            let step = step_gradients(
                &self.model,
                &p.graph,
                &xp,
                &self.vars,
                loss,
                checkpoint_every,
            )?;
            total.loss += step.loss;
            for (acc, g) in total.grads.iter_mut().zip(step.grads) {
                if let Some(g) = g {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g,
                    });
                }
            }
        }
        Ok(total)
    }

    /// Memory of a training run: parameters, AdamW moments and gradients (f32), the
    /// graph and patch graphs on the device, against the measured peak and `baseline`.
    pub fn memory_breakdown(
        &self,
        baseline: Option<u64>,
    ) -> crate::device::memory::MemoryBreakdown {
        let params = self.parameter_count() as u64 * 4;
        let graph = self.graph_tensors.bytes()
            + self.patches.iter().map(|p| p.graph.bytes()).sum::<usize>();
        let peak = crate::device::memory::peak_on(self.graph_tensors.device()).map(|p| p as u64);
        crate::device::memory::MemoryBreakdown::new(
            params,
            2 * params,
            params,
            graph as u64,
            baseline,
            peak,
        )
    }

    pub fn parameter_count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// A batch's tensors on the graph's grid nodes: inputs `[B, nodes, 2F]` (values then
    /// validity flags), targets `[B, nodes, C]`, and target validity.
    pub fn tensors(&self, batch: &Batch) -> anyhow::Result<(Tensor, Tensor, Vec<bool>)> {
        let cells = self.graph.grid_map.cells();
        let (b, n, f, c) = (
            batch.len(),
            cells.len(),
            batch.input_features(),
            batch.channels,
        );
        let mut x = Vec::with_capacity(b * n * 2 * f);
        let mut y = Vec::with_capacity(b * n * c);
        let mut valid = Vec::with_capacity(b * n * c);
        for i in 0..b {
            for &cell in cells {
                let base = (i * batch.nodes + cell as usize) * f;
                x.extend_from_slice(&batch.inputs[base..base + f]);
                x.extend(batch.input_valid[base..base + f].iter().map(|&v| {
                    if v {
                        1.0f32
                    } else {
                        0.0
                    }
                }));
                let tb = (i * batch.nodes + cell as usize) * c;
                y.extend_from_slice(&batch.targets[tb..tb + c]);
                valid.extend_from_slice(&batch.target_valid[tb..tb + c]);
            }
        }
        Ok((
            Tensor::from_vec(x, (b, n, 2 * f), &self.device)?,
            Tensor::from_vec(y, (b, n, c), &self.device)?,
            valid,
        ))
    }

    /// Latitude weights of the graph's grid nodes (cos lat, mean 1 over them).
    pub fn node_latitude_weights(&self) -> Vec<f32> {
        let cells = self.graph.grid_map.cells();
        let mut valid = vec![false; self.dataset.grid.len()];
        for &c in cells {
            valid[c as usize] = true;
        }
        let w = self.dataset.grid.latitude_weights(&valid);
        cells.iter().map(|&c| w[c as usize]).collect()
    }
}

/// A patch's tensors on `device` (its subgraph of `full`, node maps and owned mask).
pub fn patch_tensors(
    patch: &Patch,
    full: &WeatherGraph,
    device: &Device,
) -> anyhow::Result<PatchTensors> {
    let n = patch.grid_nodes.len();
    let owned_local: Vec<u32> = (0..n as u32).filter(|&k| patch.owned[k as usize]).collect();
    let owned_full: Vec<u32> = owned_local
        .iter()
        .map(|&k| patch.grid_nodes[k as usize])
        .collect();
    let mask: Vec<f32> = patch
        .owned
        .iter()
        .map(|&o| if o { 1.0 } else { 0.0 })
        .collect();
    Ok(PatchTensors {
        graph: GraphTensors::new(&patch.subgraph(full), device, DType::F32)?,
        nodes: Tensor::from_vec(patch.grid_nodes.clone(), n, device)?,
        owned: Tensor::from_vec(mask, (1, n, 1), device)?,
        owned_local: Tensor::from_vec(owned_local.clone(), owned_local.len(), device)?,
        owned_full: Tensor::from_vec(owned_full, owned_local.len(), device)?,
    })
}

/// The model configuration for this data: inputs and outputs follow the channels.
pub fn model_config_for(base: &ModelConfig, input_steps: usize, channels: usize) -> ModelConfig {
    ModelConfig {
        grid_input_features: grid_input_features(input_steps, channels),
        output_channels: channels,
        ..base.clone()
    }
}

/// Loss weight per channel from the config (default 1).
pub fn variable_weights(run: &RunConfig, stats: &NormStats) -> Vec<f32> {
    stats
        .channels
        .iter()
        .map(|c| run.train.variable_weights.get(c).copied().unwrap_or(1.0) as f32)
        .collect()
}
