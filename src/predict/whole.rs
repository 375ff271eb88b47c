//! The graph in one piece: every grid node in one forward pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use super::gradients::step_gradients;
use super::{Network, Objective, Predictor, StepGradients};
use crate::graph::WeatherGraph;
use crate::model::{GraphTensors, MixedPrecision, ModelConfig};
use crate::predict::loss::ObjectiveScalar;

pub struct WholeGraph {
    net: Arc<Network>,
    graph: GraphTensors,
    forwards: AtomicUsize,
}

impl WholeGraph {
    pub fn new(net: Arc<Network>, graph: GraphTensors) -> WholeGraph {
        WholeGraph {
            net,
            graph,
            forwards: AtomicUsize::new(0),
        }
    }

    /// `config`'s network on the whole of `graph` (placed on `device`), its parameters
    /// initialised from `seed`: how benchmarks and synthetic exports build a model.
    pub fn initialised(
        graph: &WeatherGraph,
        config: ModelConfig,
        precision: MixedPrecision,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<WholeGraph> {
        let tensors = GraphTensors::new(graph, device, precision.master_dtype())?;
        let net = Network::initialised(config, precision, &tensors, seed)?;
        Ok(WholeGraph::new(Arc::new(net), tensors))
    }

    /// The network, to run it another way too (e.g. patched).
    pub fn shared_network(&self) -> Arc<Network> {
        self.net.clone()
    }

    pub fn graph(&self) -> &GraphTensors {
        &self.graph
    }
}

impl Predictor for WholeGraph {
    fn network(&self) -> &Network {
        &self.net
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forwards.fetch_add(1, Ordering::Relaxed);
        self.net.inference().forward(&self.graph, x)
    }

    fn gradients(
        &self,
        x: &Tensor,
        objective: Objective,
        checkpoint_every: Option<usize>,
    ) -> Result<StepGradients> {
        let scalar = ObjectiveScalar::new(objective, None)?;
        let input_grad = matches!(objective, Objective::OutputGradient(_));
        step_gradients(
            self.net.model(),
            &self.graph,
            (x, input_grad),
            self.net.vars(),
            |pred| scalar.of(pred),
            checkpoint_every,
        )
    }

    fn graph_bytes(&self) -> usize {
        self.graph.bytes()
    }

    fn graph_forwards(&self) -> usize {
        self.forwards.load(Ordering::Relaxed)
    }
}
