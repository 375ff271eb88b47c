//! The GraphCast-style model: embed, encode grid -> mesh, process on the mesh,
//! decode mesh -> grid, read out.
//!
//! ```text
//! grid inputs [B, Ng, F] + static grid features -> embed.grid_nodes -> grid latents
//! static mesh features                          -> embed.mesh_nodes -> mesh latents
//! edge features of each edge set                -> embed.{grid2mesh, mesh, mesh2grid}
//! encoder   (grid2mesh): mesh latents from grid; grid latents through their own MLP
//! processor (mesh) x num_gnn_layers, each with its own parameters, residual
//! decoder   (mesh2grid): grid latents from mesh
//! output MLP (no LayerNorm) -> [B, Ng, output_channels]
//! ```
//!
//! The stages ([`GraphCast::encode`], [`GraphCast::process_block`],
//! [`GraphCast::decode`]) are public so a caller can run the processor block
//! by block, e.g. to recompute activations in the backward pass.
//!
//! Parameter names (VarMap keys), each an [`Mlp`] (`layers.{i}.weight|bias`,
//! `norm.weight|bias`) or an [`InteractionNetwork`] (`edge_mlp`, `node_mlp`,
//! `sender_mlp`):
//! `embed.grid_nodes` (input `[grid inputs, static grid features]`),
//! `embed.mesh_nodes`, `embed.grid2mesh`, `embed.mesh`, `embed.mesh2grid`,
//! `encoder`, `processor.{k}` for `k = 0..num_gnn_layers`, `decoder`, `output`
//! (the only MLP without `norm`).

use std::sync::Mutex;

use candle_core::{bail, DType, Result, Tensor, Var};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};

use super::graph_tensors::Aggregation;
use super::graph_tensors::GraphTensors;
use super::interaction::InteractionNetwork;
use super::mlp::Mlp;
use super::precision::MixedPrecision;
use crate::data::forcings::Forcing;
use crate::graph::{EDGE_FEATURES, NODE_FEATURES};

/// How a batch of samples is run over the one graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// Node tensors carry a batch dimension `[B, N, L]`; graph indices and
    /// static embeddings exist once and broadcast over it.
    #[default]
    Shared,
    /// The PyTorch Geometric baseline: the batch becomes one block-diagonal graph
    /// of B disjoint copies (`[1, B * N, L]`), indices and static features
    /// replicated. Same results as `Shared`, more memory and work.
    Replicated,
}

impl Batching {
    /// The spellings of flags, configs and JSON, in declaration order.
    pub const NAMES: &'static [&'static str] = &["shared", "replicated"];
}

impl std::fmt::Display for Batching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Batching::NAMES[*self as usize])
    }
}

impl std::str::FromStr for Batching {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            "shared" => Ok(Batching::Shared),
            "replicated" => Ok(Batching::Replicated),
            other => Err(format!(
                "unknown batching '{other}' (expected shared or replicated)"
            )),
        }
    }
}

/// Model hyperparameters (the `[model]` table of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Width of every node and edge latent and of every MLP's hidden layers.
    pub latent_size: usize,
    /// Processor interaction networks (message-passing steps on the mesh).
    pub num_gnn_layers: usize,
    /// Hidden layers per MLP (GraphCast: 1).
    pub mlp_hidden_layers: usize,
    /// Input features per grid node, excluding the static node features the
    /// model adds itself; set by the caller from the data.
    pub grid_input_features: usize,
    /// Outputs per grid node; set by the caller from the data.
    pub output_channels: usize,
    pub batching: Batching,
    /// How edge messages are summed into receivers (`index-add` or `csr`, the
    /// default; configs and checkpoints without the field get `csr`, which computes
    /// the same sums).
    #[serde(default)]
    pub aggregation: Aggregation,
    /// Forcings computed for every grid node at the input times and the target time
    /// (see `data::forcings`). None in runs saved before forcings existed (they had
    /// none); a new run without a choice gets every forcing (`ModelConfig::resolved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forcings: Option<Vec<Forcing>>,
    /// Static-field inputs per grid node (a value and a validity flag per field); set
    /// by the caller from the data.
    #[serde(default)]
    pub static_inputs: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            latent_size: 128,
            num_gnn_layers: 8,
            mlp_hidden_layers: 1,
            grid_input_features: 0,
            output_channels: 0,
            batching: Batching::Shared,
            aggregation: Aggregation::Csr,
            forcings: None,
            static_inputs: 0,
        }
    }
}

/// Upper bounds on a model's shape: far beyond the field's models (GraphCast: latent
/// 512, 16 layers, 1 hidden layer), low enough that sizes computed from them never
/// overflow and an absurd value is refused before anything is allocated.
pub const MAX_LATENT_SIZE: usize = 16_384;
pub const MAX_GNN_LAYERS: usize = 1_024;
pub const MAX_MLP_HIDDEN_LAYERS: usize = 64;

impl ModelConfig {
    /// Refuses a shape outside 1..=the bounds above (0 processor layers is allowed).
    pub fn validate(&self) -> std::result::Result<(), crate::error::InputError> {
        for (flag, value, min, max) in [
            ("--latent-size", self.latent_size, 1, MAX_LATENT_SIZE),
            ("--num-gnn-layers", self.num_gnn_layers, 0, MAX_GNN_LAYERS),
            (
                "--mlp-hidden-layers",
                self.mlp_hidden_layers,
                0,
                MAX_MLP_HIDDEN_LAYERS,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(crate::error::InputError(format!(
                    "{flag} {value}: must be between {min} and {max}"
                )));
            }
        }
        Ok(())
    }

    /// This architecture for data of `input_steps` states of `channels` variables and
    /// `static_fields` static fields: per grid node the normalised values and their
    /// validity flags, the forcings at each input time and the target time, each static
    /// field's value and flag in (see `predict::inputs`); one normalised residual per
    /// channel out.
    pub fn for_data(
        &self,
        input_steps: usize,
        channels: usize,
        static_fields: usize,
    ) -> ModelConfig {
        let forcing_features = crate::data::forcings::width(self.forcings());
        ModelConfig {
            grid_input_features: 2 * input_steps * channels
                + forcing_features * (input_steps + 1)
                + 2 * static_fields,
            output_channels: channels,
            static_inputs: 2 * static_fields,
            ..self.clone()
        }
    }

    /// The forcings this model takes (none for a run saved before forcings existed).
    pub fn forcings(&self) -> &[Forcing] {
        self.forcings.as_deref().unwrap_or(&[])
    }

    /// A new run's model: every forcing unless the flags or config chose, except the
    /// year progress when the training block spans less than a year (`training_days`):
    /// then the later blocks' values of it were never seen in training, and the model
    /// extrapolates (a drifting bias on the demo's 40 days).
    pub fn resolved(mut self, training_days: f64) -> ModelConfig {
        self.forcings.get_or_insert_with(|| {
            let short = training_days < 365.0;
            if short {
                tracing::info!(
                    "forcings: year_progress left out, the training block spans {training_days:.0} days (< 1 year); --forcings all keeps it"
                );
            }
            Forcing::ALL
                .into_iter()
                .filter(|f| !(short && *f == Forcing::YearProgress))
                .collect()
        });
        self
    }
}

/// Latents between the stages.
#[derive(Debug, Clone)]
pub struct Latents {
    /// `[B, grid_nodes, latent]`.
    pub grid: Tensor,
    /// `[B, mesh_nodes, latent]`.
    pub mesh: Tensor,
    /// `[1 or B, mesh_edges, latent]`: 1 until the first processor block.
    pub mesh_edges: Tensor,
}

#[derive(Debug)]
pub struct GraphCast {
    config: ModelConfig,
    embed_grid_nodes: Mlp,
    embed_mesh_nodes: Mlp,
    embed_grid2mesh: Mlp,
    embed_mesh: Mlp,
    embed_mesh2grid: Mlp,
    encoder: InteractionNetwork,
    processor: Vec<InteractionNetwork>,
    decoder: InteractionNetwork,
    output: Mlp,
    /// The parameters' dtype; outputs are returned in it.
    master_dtype: DType,
    /// The dtype activations run in (see [`MixedPrecision`]).
    compute_dtype: DType,
    /// `Batching::Replicated`: the replicated graph of the last (graph id, batch size).
    replicated: Mutex<Option<(u64, usize, GraphTensors)>>,
}

impl GraphCast {
    /// Parameters come from `vb` (created, or loaded, in its dtype and device);
    /// `graph` must be in the same dtype and device.
    pub fn new(config: ModelConfig, graph: &GraphTensors, vb: VarBuilder) -> Result<GraphCast> {
        let c = &config;
        if c.latent_size == 0 || c.grid_input_features == 0 || c.output_channels == 0 {
            bail!("model config needs latent_size, grid_input_features and output_channels > 0, got {c:?}");
        }
        if graph.dtype() != vb.dtype() {
            bail!(
                "graph tensors are {:?} but the model is {:?}",
                graph.dtype(),
                vb.dtype()
            );
        }
        let (l, h) = (c.latent_size, c.mlp_hidden_layers);
        let embed = vb.pp("embed");
        let embedder =
            |inputs: &[usize], name: &str| Mlp::new(inputs, l, l, h, true, embed.pp(name));
        let processor = vb.pp("processor");
        Ok(GraphCast {
            embed_grid_nodes: embedder(&[c.grid_input_features, NODE_FEATURES], "grid_nodes")?,
            embed_mesh_nodes: embedder(&[NODE_FEATURES], "mesh_nodes")?,
            embed_grid2mesh: embedder(&[EDGE_FEATURES], "grid2mesh")?,
            embed_mesh: embedder(&[EDGE_FEATURES], "mesh")?,
            embed_mesh2grid: embedder(&[EDGE_FEATURES], "mesh2grid")?,
            encoder: InteractionNetwork::new(l, h, true, vb.pp("encoder"))?,
            processor: (0..c.num_gnn_layers)
                .map(|k| InteractionNetwork::new(l, h, false, processor.pp(k)))
                .collect::<Result<_>>()?,
            decoder: InteractionNetwork::new(l, h, false, vb.pp("decoder"))?,
            output: Mlp::new(&[l], l, c.output_channels, h, false, vb.pp("output"))?,
            replicated: Mutex::new(None),
            master_dtype: vb.dtype(),
            compute_dtype: vb.dtype(),
            config,
        })
    }

    /// The same model over detached views of its parameters `vars` (the same storage,
    /// so it follows every optimizer step). Forward passes through it build no autograd
    /// graph, so inference frees each activation once the next op has read it.
    pub fn detached(&self, vars: &[(String, Var)], graph: &GraphTensors) -> Result<GraphCast> {
        let views = vars
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
            .collect();
        let vb = VarBuilder::from_tensors(views, self.master_dtype, graph.device());
        let mut model = GraphCast::new(self.config.clone(), graph, vb)?;
        model.compute_dtype = self.compute_dtype;
        Ok(model)
    }

    /// The parameters' dtype: the dtype of every prediction.
    pub fn master_dtype(&self) -> DType {
        self.master_dtype
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs activations in `precision`'s dtype from now on (parameters unchanged).
    pub fn set_precision(&mut self, precision: MixedPrecision) {
        self.compute_dtype = precision.compute_dtype(self.master_dtype);
    }

    /// `t` in the activations' dtype (inputs and static graph features enter here).
    fn low(&self, t: &Tensor) -> Result<Tensor> {
        t.to_dtype(self.compute_dtype)
    }

    /// `[B, grid_nodes, grid_input_features] -> [B, grid_nodes, output_channels]`,
    /// batched as the config says.
    pub fn forward(&self, graph: &GraphTensors, grid_inputs: &Tensor) -> Result<Tensor> {
        let graph = &graph.with_aggregation(self.config.aggregation);
        let (batch, nodes, features) = grid_inputs.dims3()?;
        if nodes != graph.grid_nodes.count || features != self.config.grid_input_features {
            bail!(
                "grid inputs are {:?}, expected [batch, {}, {}]",
                grid_inputs.dims(),
                graph.grid_nodes.count,
                self.config.grid_input_features
            );
        }
        let (run_graph, inputs) = self.batched(graph, grid_inputs)?;
        let out = self.forward_on(&run_graph, &inputs)?;
        self.unbatched(out, batch, nodes)
    }

    /// The graph and inputs a batch runs on, as the config batches it: `Shared` as
    /// given; `Replicated` on the block-diagonal graph of `B` copies, inputs reshaped
    /// to `[1, B * grid_nodes, F]`.
    pub fn batched(&self, graph: &GraphTensors, inputs: &Tensor) -> Result<(GraphTensors, Tensor)> {
        match self.config.batching {
            Batching::Shared => Ok((graph.clone(), inputs.clone())),
            Batching::Replicated => {
                let (batch, nodes, features) = inputs.dims3()?;
                let replicated = self.replicated_graph(graph, batch)?;
                Ok((replicated, inputs.reshape((1, batch * nodes, features))?))
            }
        }
    }

    /// Outputs of a [`GraphCast::batched`] run back to `[batch, nodes, output_channels]`.
    pub fn unbatched(&self, out: Tensor, batch: usize, nodes: usize) -> Result<Tensor> {
        match self.config.batching {
            Batching::Shared => Ok(out),
            Batching::Replicated => out.reshape((batch, nodes, self.config.output_channels)),
        }
    }

    /// All stages on `graph` as given, with no batching conversion.
    fn forward_on(&self, graph: &GraphTensors, grid_inputs: &Tensor) -> Result<Tensor> {
        let mut latents = self.encode(graph, grid_inputs)?;
        for k in 0..self.processor.len() {
            latents = self.process_block(k, graph, latents)?;
        }
        self.decode(graph, &latents)
    }

    /// The graph `Batching::Replicated` runs a batch of `batch` samples on (cached
    /// for the last graph and batch size). The stages run on it with inputs
    /// reshaped to `[1, batch * grid_nodes, F]`.
    pub fn replicated_graph(&self, graph: &GraphTensors, batch: usize) -> Result<GraphTensors> {
        let mut cache = self
            .replicated
            .lock()
            .expect("replicated-graph cache poisoned");
        if let Some((id, b, g)) = cache.as_ref() {
            if *id == graph.id() && *b == batch {
                return Ok(g.clone());
            }
        }
        let g = graph
            .replicated(batch)?
            .with_aggregation(self.config.aggregation);
        *cache = Some((graph.id(), batch, g.clone()));
        Ok(g)
    }

    /// Embedding and encoder: grid inputs `[B, grid_nodes, grid_input_features]` to latents.
    pub fn encode(&self, graph: &GraphTensors, grid_inputs: &Tensor) -> Result<Latents> {
        let graph = &graph.with_aggregation(self.config.aggregation);
        let static_grid = self.low(&graph.grid_nodes.features.unsqueeze(0)?)?;
        let grid = self
            .embed_grid_nodes
            .forward_parts(&[&self.low(grid_inputs)?, &static_grid], None)?;
        let mesh = self
            .embed_mesh_nodes
            .forward(&self.low(&graph.mesh_nodes.features.unsqueeze(0)?)?)?;
        let g2m_edges = self
            .embed_grid2mesh
            .forward(&self.low(&graph.grid2mesh.features.unsqueeze(0)?)?)?;
        // The encoder's updated edge latents are not used again (as in GraphCast).
        let (mesh, _) = self
            .encoder
            .forward(&graph.grid2mesh, &grid, &mesh, &g2m_edges)?;
        Ok(Latents {
            grid: self.encoder.update_senders(&grid)?,
            mesh,
            mesh_edges: self
                .embed_mesh
                .forward(&self.low(&graph.mesh.features.unsqueeze(0)?)?)?,
        })
    }

    /// The processor blocks, in order.
    pub fn processor_blocks(&self) -> &[InteractionNetwork] {
        &self.processor
    }

    /// Processor block `k` on the mesh latents; grid latents pass through.
    pub fn process_block(
        &self,
        k: usize,
        graph: &GraphTensors,
        latents: Latents,
    ) -> Result<Latents> {
        let graph = &graph.with_aggregation(self.config.aggregation);
        let (mesh, mesh_edges) = self.processor[k].forward(
            &graph.mesh,
            &latents.mesh,
            &latents.mesh,
            &latents.mesh_edges,
        )?;
        Ok(Latents {
            mesh,
            mesh_edges,
            ..latents
        })
    }

    /// Decoder and output MLP: `[B, grid_nodes, output_channels]`, in the
    /// parameters' dtype (so the loss is computed in f32 under mixed precision).
    pub fn decode(&self, graph: &GraphTensors, latents: &Latents) -> Result<Tensor> {
        let graph = &graph.with_aggregation(self.config.aggregation);
        let m2g_edges = self
            .embed_mesh2grid
            .forward(&self.low(&graph.mesh2grid.features.unsqueeze(0)?)?)?;
        let (grid, _) =
            self.decoder
                .forward(&graph.mesh2grid, &latents.mesh, &latents.grid, &m2g_edges)?;
        self.output.forward(&grid)?.to_dtype(self.master_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{check_gradients, random_tensor, tiny_graph, tiny_graph_masked};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    #[test]
    fn runs_saved_before_forcings_have_none_and_new_runs_get_them() {
        let old: ModelConfig = serde_json::from_str(
            r#"{"latent_size": 8, "grid_input_features": 20, "output_channels": 5}"#,
        )
        .unwrap();
        assert_eq!(old.forcings, None);
        assert!(old.forcings().is_empty());
        let new = ModelConfig::default().resolved(30.0);
        assert_eq!(
            new.forcings(),
            [
                Forcing::CosZenith,
                Forcing::ToaRadiation,
                Forcing::LocalTime
            ]
        );
        assert_eq!(
            ModelConfig::default().resolved(3650.0).forcings(),
            Forcing::ALL
        );
        // Given forcings are kept: a config's empty list means none.
        let chosen = ModelConfig {
            forcings: Some(vec![]),
            ..Default::default()
        };
        assert!(chosen.resolved(3650.0).forcings().is_empty());
        // 2 x 2 x 5 values and flags, 6 x 3 forcing features, 2 x 1 static features.
        let sized = ModelConfig::default().resolved(3650.0).for_data(2, 5, 1);
        assert_eq!(
            (sized.grid_input_features, sized.static_inputs),
            (20 + 18 + 2, 2)
        );
    }

    fn config(batching: Batching) -> ModelConfig {
        ModelConfig {
            latent_size: 8,
            num_gnn_layers: 2,
            mlp_hidden_layers: 1,
            grid_input_features: 5,
            output_channels: 3,
            batching,
            aggregation: Aggregation::IndexAdd,
            ..Default::default()
        }
    }

    fn model(varmap: &VarMap, graph: &GraphTensors, batching: Batching) -> Result<GraphCast> {
        model_with(varmap, graph, batching, Aggregation::IndexAdd)
    }

    fn model_with(
        varmap: &VarMap,
        graph: &GraphTensors,
        batching: Batching,
        aggregation: Aggregation,
    ) -> Result<GraphCast> {
        let vb = VarBuilder::from_varmap(varmap, graph.dtype(), &Device::Cpu);
        GraphCast::new(
            ModelConfig {
                aggregation,
                ..config(batching)
            },
            graph,
            vb,
        )
    }

    #[test]
    fn config_defaults_and_serde() {
        let c: ModelConfig =
            serde_json::from_str(r#"{"output_channels": 4, "batching": "replicated"}"#).unwrap();
        assert_eq!(c.latent_size, 128);
        assert_eq!(c.num_gnn_layers, 8);
        assert_eq!(c.mlp_hidden_layers, 1);
        assert_eq!(c.output_channels, 4);
        assert_eq!(c.batching, Batching::Replicated);
        // Configs written before the aggregation field still load (with the same sums).
        assert_eq!(c.aggregation, Aggregation::Csr);
        let index_add: ModelConfig =
            serde_json::from_str(r#"{"aggregation": "index-add"}"#).unwrap();
        assert_eq!(index_add.aggregation, Aggregation::IndexAdd);
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<ModelConfig>(r#"{"latnet_size": 4}"#).is_err());
    }

    #[test]
    fn shapes_on_a_masked_grid() -> Result<()> {
        // Every fifth cell is absent from the graph; the model only sees graph nodes.
        let graph = tiny_graph_masked(1, |c| c % 5 != 0);
        let n = graph.grid_nodes.len();
        assert!(n < 72);
        let graph = GraphTensors::new(&graph, &Device::Cpu, DType::F32)?;
        let varmap = VarMap::new();
        let m = model(&varmap, &graph, Batching::Shared)?;
        let x = random_tensor(&[2, n, 5], DType::F32, 1)?;
        let y = m.forward(&graph, &x)?;
        assert_eq!(y.dims(), &[2, n, 3]);
        assert!(y
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite()));
        assert!(m
            .forward(&graph, &random_tensor(&[2, 72, 5], DType::F32, 1)?)
            .is_err());
        assert_eq!(m.processor_blocks().len(), 2);

        let mut keys: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        keys.sort();
        for key in [
            "embed.grid_nodes.layers.0.weight",
            "embed.mesh2grid.norm.bias",
            "encoder.sender_mlp.layers.1.weight",
            "processor.1.edge_mlp.layers.0.weight",
            "decoder.node_mlp.norm.weight",
            "output.layers.1.bias",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.starts_with("output.norm")));
        assert!(!keys.iter().any(|k| k.starts_with("decoder.sender_mlp")));
        let dims = |k: &str| varmap.data().lock().unwrap()[k].dims().to_vec();
        assert_eq!(
            dims("embed.grid_nodes.layers.0.weight"),
            vec![8, 5 + NODE_FEATURES]
        );
        assert_eq!(dims("processor.0.edge_mlp.layers.0.weight"), vec![8, 24]);
        assert_eq!(dims("decoder.node_mlp.layers.0.weight"), vec![8, 16]);
        assert_eq!(dims("output.layers.1.weight"), vec![3, 8]);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(0), &Device::Cpu, DType::F64)?;
        let varmap = VarMap::new();
        let m = model(&varmap, &graph, Batching::Shared)?;
        for (k, var) in varmap.all_vars().iter().enumerate() {
            if var.rank() == 1 {
                // Biases and LayerNorm weights off their initial constants.
                var.set(&random_tensor(var.dims(), DType::F64, 100 + k as u64)?)?;
            }
        }
        let x = random_tensor(&[2, graph.grid_nodes.count, 5], DType::F64, 2)?;
        let params = [
            "embed.grid_nodes.layers.0.weight",
            "embed.grid_nodes.layers.1.bias",
            "embed.grid_nodes.norm.weight",
            "embed.mesh_nodes.layers.0.weight",
            "embed.mesh_nodes.norm.bias",
            "embed.grid2mesh.layers.0.weight",
            "embed.grid2mesh.layers.1.weight",
            "embed.mesh.layers.0.bias",
            "embed.mesh.norm.weight",
            "embed.mesh2grid.layers.0.weight",
            "embed.mesh2grid.norm.bias",
            "encoder.edge_mlp.layers.0.weight",
            "encoder.edge_mlp.norm.weight",
            "encoder.node_mlp.layers.1.weight",
            "encoder.sender_mlp.layers.0.weight",
            "encoder.sender_mlp.norm.bias",
            "processor.0.edge_mlp.layers.0.weight",
            "processor.0.node_mlp.layers.1.bias",
            "processor.0.node_mlp.norm.weight",
            "processor.1.edge_mlp.layers.1.weight",
            "processor.1.edge_mlp.norm.bias",
            "processor.1.node_mlp.layers.0.weight",
            "decoder.edge_mlp.layers.0.weight",
            "decoder.edge_mlp.norm.weight",
            "decoder.node_mlp.layers.0.bias",
            "decoder.node_mlp.norm.bias",
            "output.layers.0.weight",
            "output.layers.1.weight",
            "output.layers.1.bias",
        ];
        check_gradients(&varmap, &x, |x| m.forward(&graph, x), &params)
    }

    /// Output and parameter gradients (sorted by name) of `loss = sum(output * r)`.
    fn run(
        m: &GraphCast,
        graph: &GraphTensors,
        varmap: &VarMap,
        x: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let y = m.forward(graph, x)?;
        let r = random_tensor(y.dims(), y.dtype(), 3)?;
        let grads = (&y * r)?.sum_all()?.backward()?;
        let mut named: Vec<(String, Var)> =
            varmap.data().lock().unwrap().clone().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = vec![y];
        for (name, var) in named {
            let g = grads.get(var.as_tensor());
            out.push(g.unwrap_or_else(|| panic!("{name}: no gradient")).clone());
        }
        Ok(out)
    }

    /// Largest difference between Shared and Replicated batching (batch of 3),
    /// relative to the largest entry, over the output (first) and every
    /// parameter gradient (sorted by name).
    fn batching_differences(dtype: DType) -> Result<Vec<f64>> {
        let graph = GraphTensors::new(&tiny_graph(1), &Device::Cpu, dtype)?;
        let varmap = VarMap::new();
        let shared = model(&varmap, &graph, Batching::Shared)?;
        // The same VarMap: the second model reuses the first one's variables.
        let replicated = model(&varmap, &graph, Batching::Replicated)?;
        let x = random_tensor(&[3, graph.grid_nodes.count, 5], dtype, 4)?;
        let s = run(&shared, &graph, &varmap, &x)?;
        let r = run(&replicated, &graph, &varmap, &x)?;
        s.iter()
            .zip(&r)
            .map(|(s, r)| {
                let max = |t: Tensor| t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>();
                Ok(max((r - s)?)? / max(s.clone())?)
            })
            .collect()
    }

    #[test]
    fn replicated_batching_matches_shared() -> Result<()> {
        // Exactly the same function: equal to F64 rounding.
        let f64_diffs = batching_differences(DType::F64)?;
        assert!(f64_diffs.iter().all(|&d| d < 1e-12), "{f64_diffs:?}");
        // In F32 the two sum in different orders. Outputs agree to 1e-6; some
        // gradients (e.g. of the edge embedders, whose features nearly cancel
        // over a symmetric grid) are ill-conditioned sums and only to ~1e-6.
        let f32_diffs = batching_differences(DType::F32)?;
        assert!(f32_diffs[0] < 1e-6, "outputs differ by {}", f32_diffs[0]);
        assert!(f32_diffs.iter().all(|&d| d < 1e-5), "{f32_diffs:?}");
        Ok(())
    }

    #[test]
    fn detached_view_computes_the_same_output_without_an_autograd_graph() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(1), &Device::Cpu, DType::F32)?;
        let varmap = VarMap::new();
        let m = model_with(&varmap, &graph, Batching::Shared, Aggregation::Csr)?;
        let vars = crate::model::named_parameters(&varmap);
        let view = m.detached(&vars, &graph)?;
        let x = random_tensor(&[2, graph.grid_nodes.count, 5], DType::F32, 4)?;
        let (trained, inferred) = (m.forward(&graph, &x)?, view.forward(&graph, &x)?);
        assert!(trained.track_op(), "the trainable model records its ops");
        assert!(!inferred.track_op(), "the view keeps no autograd graph");
        let diff = (&trained - &inferred)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // The view shares the parameters' storage: an update shows through.
        let (name, var) = &vars[0];
        var.set(&(var.as_tensor() + 1.0)?)?;
        let moved = (m.forward(&graph, &x)? - view.forward(&graph, &x)?)?;
        assert_eq!(moved.abs()?.max_all()?.to_scalar::<f32>()?, 0.0, "{name}");
        Ok(())
    }

    #[test]
    fn caches_the_replicated_graph_per_graph_and_batch_size() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(0), &Device::Cpu, DType::F32)?;
        let m = model(&VarMap::new(), &graph, Batching::Replicated)?;
        let a = m.replicated_graph(&graph, 3)?;
        assert_eq!(a.id(), m.replicated_graph(&graph, 3)?.id());
        assert_ne!(a.id(), m.replicated_graph(&graph, 2)?.id());
        let other = GraphTensors::new(&tiny_graph(0), &Device::Cpu, DType::F32)?;
        assert_ne!(a.id(), m.replicated_graph(&other, 3)?.id());
        Ok(())
    }

    /// Largest relative difference between IndexAdd and Csr aggregation (batch of 3,
    /// `batching`), over the output and every parameter gradient.
    fn aggregation_differences(dtype: DType, batching: Batching) -> Result<Vec<f64>> {
        let graph = GraphTensors::new(&tiny_graph(1), &Device::Cpu, dtype)?;
        let varmap = VarMap::new();
        let a = model_with(&varmap, &graph, batching, Aggregation::IndexAdd)?;
        let c = model_with(&varmap, &graph, batching, Aggregation::Csr)?;
        let x = random_tensor(&[3, graph.grid_nodes.count, 5], dtype, 4)?;
        let ra = run(&a, &graph, &varmap, &x)?;
        let rc = run(&c, &graph, &varmap, &x)?;
        ra.iter()
            .zip(&rc)
            .map(|(a, c)| {
                let max = |t: Tensor| t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>();
                Ok(max((c - a)?)? / max(a.clone())?)
            })
            .collect()
    }

    #[test]
    fn csr_aggregation_matches_index_add() -> Result<()> {
        for batching in [Batching::Shared, Batching::Replicated] {
            let d64 = aggregation_differences(DType::F64, batching)?;
            assert!(d64.iter().all(|&d| d < 1e-12), "{batching:?} {d64:?}");
            // In f32 the paths differ by rounding: csr adds the edge MLP's first-layer
            // parts in another order (gathered node rows first, see edge_input.rs).
            // Outputs agree to 1e-5; some gradients are ill-conditioned sums that
            // reached 2.4e-5 in one CI run of 1e-5 (f64 above is the exactness check).
            let d32 = aggregation_differences(DType::F32, batching)?;
            assert!(d32[0] < 1e-5, "{batching:?} outputs differ by {}", d32[0]);
            assert!(d32.iter().all(|&d| d < 1e-4), "{batching:?} {d32:?}");
        }
        Ok(())
    }

    #[test]
    fn csr_model_gradients_match_finite_differences() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(0), &Device::Cpu, DType::F64)?;
        let varmap = VarMap::new();
        let m = model_with(&varmap, &graph, Batching::Shared, Aggregation::Csr)?;
        for (k, var) in varmap.all_vars().iter().enumerate() {
            if var.rank() == 1 {
                var.set(&random_tensor(var.dims(), DType::F64, 200 + k as u64)?)?;
            }
        }
        let x = random_tensor(&[2, graph.grid_nodes.count, 5], DType::F64, 7)?;
        check_gradients(
            &varmap,
            &x,
            |x| m.forward(&graph, x),
            &[
                "embed.grid2mesh.layers.0.weight",
                "encoder.edge_mlp.layers.0.weight",
                "processor.0.edge_mlp.layers.0.weight",
                "processor.1.node_mlp.layers.0.weight",
                "decoder.edge_mlp.layers.1.weight",
            ],
        )
    }

    /// Mixed precision keeps outputs and gradients in the master dtype (f32) and close to
    /// the f32 model, and really runs in low precision (the results differ). Stated
    /// tolerances, relative to the f32 results: outputs (largest entry) bf16 2%, f16
    /// 0.3%; all parameter gradients as one vector (L2) bf16 3%, f16 1% (measured:
    /// 0.5% and 0.85% in bf16, 0.06% and 0.23% in f16). Single small
    /// gradients are ill-conditioned sums (e.g. a bias just before a LayerNorm) and may
    /// differ by much more in bf16.
    #[test]
    fn mixed_precision_tracks_f32_in_the_master_dtype() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(1), &Device::Cpu, DType::F32)?;
        let sq = |t: &Tensor| t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>();
        let max = |t: &Tensor| t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>();
        for aggregation in [Aggregation::IndexAdd, Aggregation::Csr] {
            for (precision, out_tol, grad_tol) in [
                (MixedPrecision::Bf16, 2e-2, 3e-2),
                (MixedPrecision::F16, 3e-3, 1e-2),
            ] {
                let varmap = VarMap::new();
                let full = model_with(&varmap, &graph, Batching::Shared, aggregation)?;
                let mut low = model_with(&varmap, &graph, Batching::Shared, aggregation)?;
                low.set_precision(precision);
                // candle's initialisation is unseeded: fixed weights make the figures repeatable.
                for (k, (_, var)) in crate::model::named_parameters(&varmap).iter().enumerate() {
                    let scale = 1.0 / (*var.dims().last().unwrap() as f64).sqrt();
                    var.set(&(random_tensor(var.dims(), DType::F32, 100 + k as u64)? * scale)?)?;
                }
                let x = random_tensor(&[2, graph.grid_nodes.count, 5], DType::F32, 4)?;
                let reference = run(&full, &graph, &varmap, &x)?;
                let mixed = run(&low, &graph, &varmap, &x)?;
                assert!(mixed.iter().all(|t| t.dtype() == DType::F32));
                let out_err = max(&(&mixed[0] - &reference[0])?)? / max(&reference[0])?;
                let (mut diff, mut norm) = (0.0, 0.0);
                for (a, b) in reference[1..].iter().zip(&mixed[1..]) {
                    diff += sq(&(b - a)?)?;
                    norm += sq(a)?;
                }
                let grad_err = (diff / norm).sqrt();
                let what =
                    format!("{precision} {aggregation:?}: output {out_err}, gradients {grad_err}");
                assert!(out_err < out_tol && grad_err < grad_tol, "{what}");
                assert!(out_err > 1e-6 && grad_err > 1e-6, "ran in f32: {what}");
            }
        }
        Ok(())
    }
}
