//! What training, evaluation and forecasting share: the dataset, the graph built once
//! and placed on the device, the model and its parameters in a fixed order.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::config::RunConfig;
use crate::data::{Batch, Dataset, NormStats, Splits};
use crate::graph::{load_or_build, WeatherGraph};
use crate::model::{GraphCast, GraphTensors, ModelConfig};

/// Model inputs per grid node: the normalised values and their validity flags.
pub fn grid_input_features(input_steps: usize, channels: usize) -> usize {
    2 * input_steps * channels
}

pub struct Session {
    pub dataset: Arc<Dataset>,
    pub splits: Splits,
    pub graph: WeatherGraph,
    pub graph_tensors: GraphTensors,
    pub model: GraphCast,
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
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = GraphCast::new(run.model.clone(), &graph_tensors, vb)?;
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Session {
            dataset,
            splits,
            graph,
            graph_tensors,
            model,
            vars,
            device: device.clone(),
        })
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
